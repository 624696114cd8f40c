package importer

import (
	"reflect"
	"strings"
	"testing"

	"github.com/berth-dev/berth/config"
)

// TestUwsgiCompanions: attach-daemon, cron and hooks become programs, cron
// and before-start tasks that berth check accepts, with the commands as
// uWSGI ran them.
func TestUwsgiCompanions(t *testing.T) {
	res := importFiles(t, [2]string{"u.ini", `[uwsgi]
module = app
hook-pre-app = exec:python manage.py migrate --noinput
exec-asap = python manage.py collectstatic --noinput
hook-as-root = exec:chown -R app /data
hook-pre-app = mount:proc none /proc
hook-post-app = exec:echo loaded
attach-daemon = celery -A mysite worker -l info
attach-daemon = celery -A mysite beat
smart-attach-daemon = /tmp/rq.pid rq worker --pid /tmp/rq.pid
attach-daemon = celery -A mysite worker --detach
attach-daemon2 = cmd=python -m mysite.poller,freq=5
attach-daemon = ./manage.py sendalerts >> /var/log/alerts.log 2>&1
cron = -15 -1 -1 -1 -1 python manage.py clearsessions
unique-cron = 30 4 -1 -1 1 DJANGO_SETTINGS_MODULE=x python manage.py report
cron = 5 oops -1 -1 -1 true
cron2 = minute=5,unique=1 true
`})
	c, err := config.Parse("berth.yaml", res.YAML)
	if err != nil {
		t.Fatal(err)
	}
	var tasks, programs, jobs [][]string
	for _, x := range c.Tasks.BeforeStart {
		tasks = append(tasks, append([]string{x.Name}, x.Command...))
	}
	for _, x := range c.Programs {
		programs = append(programs, append([]string{x.Name}, x.Command...))
	}
	for _, x := range c.Cron {
		jobs = append(jobs, append([]string{x.Name, x.Schedule}, x.Command...))
	}
	want := func(what string, got, want [][]string) {
		t.Helper()
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s:\n got %q\nwant %q\n%s", what, got, want, res.YAML)
		}
	}
	want("tasks", tasks, [][]string{
		{"migrate", "python", "manage.py", "migrate", "--noinput"},
		{"collectstatic", "python", "manage.py", "collectstatic", "--noinput"},
	})
	want("programs", programs, [][]string{
		{"celery-worker", "celery", "-A", "mysite", "worker", "-l", "info"},
		{"celery-beat", "celery", "-A", "mysite", "beat"},
		{"rq", "rq", "worker", "--pid", "/tmp/rq.pid"},
		{"mysite.poller", "python", "-m", "mysite.poller"},
		{"sendalerts", "sh", "-c", "./manage.py sendalerts >> /var/log/alerts.log 2>&1"},
	})
	want("cron", jobs, [][]string{
		{"clearsessions", "*/15 * * * *", "python", "manage.py", "clearsessions"},
		{"report", "30 4 * * 1", "sh", "-c", "DJANGO_SETTINGS_MODULE=x python manage.py report"},
	})
	listed := map[string]Reason{}
	for _, s := range res.Skipped {
		listed[s.Key+" = "+s.Value] = s.Reason
	}
	for k, r := range map[string]Reason{
		"hook-as-root = exec:chown -R app /data":           NeedsDecision,
		"hook-pre-app = mount:proc none /proc":             NoEquivalent,
		"hook-post-app = exec:echo loaded":                 NoEquivalent,
		"attach-daemon = celery -A mysite worker --detach": NeedsDecision,
		"cron = 5 oops -1 -1 -1 true":                      NeedsDecision,
		"cron2 = minute=5,unique=1 true":                   NeedsDecision,
	} {
		if got, ok := listed[k]; !ok || got != r {
			t.Errorf("%s: listed %v (%v), want %v", k, ok, got, r)
		}
	}
}

func TestGunicornLogFormat(t *testing.T) {
	for _, tc := range []struct{ in, want, approx, err string }{
		{`%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"`, "combined", "%(b)s", ""},
		{`%(h)s %({x-forwarded-for}i)s %({Content-Type}o)s %(L)s 100%%`, "$remote_addr $http_x_forwarded_for $sent_http_content_type $request_time 100%", "%(L)s", ""},
		{`%(h)s %({REMOTE_USER}e)s`, "", "", "WSGI environ variable"},
		{`%(h)s %(X)s`, "", "", "no equivalent of the atom %(X)s"},
		{`$%(h)s`, "", "", "literal $"},
	} {
		f, approx, err := gunicornLogFormat(tc.in)
		if err == nil {
			f, err = logFormatValue(f)
		}
		switch {
		case tc.err != "":
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: error %v, want %q", tc.in, err, tc.err)
			}
		case err != nil || f != tc.want || !strings.Contains(strings.Join(approx, ";"), tc.approx):
			t.Errorf("%q = %q %q %v, want %q with %q", tc.in, f, approx, err, tc.want, tc.approx)
		}
	}
}

// TestNginxLogFormat: access_log naming a log_format becomes the custom
// format, escape= included; a format with a variable berth cannot write,
// or conditional logging, is listed.
func TestNginxLogFormat(t *testing.T) {
	for _, tc := range []struct{ conf, want, listed string }{
		{`log_format j escape=json '{"ip":"$remote_addr",' '"id":"$request_id"}'; access_log /var/log/a.log j buffer=32k;`,
			`escape=json {"ip":"$remote_addr","id":"$request_id"}`, ""},
		{`log_format c '$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent "$http_referer" "$http_user_agent"'; access_log /x c;`,
			"combined", ""},
		{`log_format b '$remote_addr $bytes_sent'; access_log /x b;`, "", "$bytes_sent is not supported"},
		{`log_format m '$remote_addr'; access_log /x m if=$loggable;`, "", "no conditional logging"},
		{`access_log /x nosuch;`, "", "no log_format nosuch"},
	} {
		res := importFiles(t, [2]string{"n.conf", "http { " + tc.conf + " server { listen 80; location / { uwsgi_pass unix:/s; } } }"})
		c, err := config.Parse("berth.yaml", res.YAML)
		if err != nil {
			t.Fatal(err)
		}
		if tc.want != "" && c.Proxy.AccessLog != tc.want {
			t.Errorf("%s: access_log %q, want %q", tc.conf, c.Proxy.AccessLog, tc.want)
		}
		if tc.listed != "" && !strings.Contains(string(res.YAML), tc.listed) {
			t.Errorf("%s: not listed with %q:\n%s", tc.conf, tc.listed, res.YAML)
		}
	}
}
