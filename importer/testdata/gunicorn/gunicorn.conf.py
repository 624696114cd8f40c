# A Gunicorn config as Django deployments write them: Python, so some values
# are computed when Gunicorn starts.
import multiprocessing
import os

wsgi_app = "mysite.wsgi:application"
chdir = "/srv/mysite"
bind = ["0.0.0.0:8000"]
workers = multiprocessing.cpu_count() * 2 + 1
worker_class = "gthread"
threads = 4
timeout = 60
graceful_timeout = 20
keepalive = 5
max_requests = 1000
max_requests_jitter = 50
preload_app = True

raw_env = [
    "DJANGO_SETTINGS_MODULE=mysite.settings.production",
    "SENTRY_ENVIRONMENT=" + os.environ.get("SENTRY_ENV", "production"),
]
forwarded_allow_ips = "10.0.0.0/8,192.168.1.10"

accesslog = "-"
access_log_format = '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s" %(D)s'
errorlog = "-"
loglevel = "info"
user = "www-data"
group = "www-data"
limit_request_line = 8190
_helper = "not a setting"


def post_fork(server, worker):
    server.log.info("worker %s spawned", worker.pid)
