"""berth's built-in demo app: served when /app holds no WSGI app, so the image alone shows it works."""

import html
import os
import platform
import sys

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>berth is running</title>
<style>
  :root {{ color-scheme: light dark; --accent: #0b7a75; }}
  body {{ font: 16px/1.55 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0;
         background: Canvas; color: CanvasText; }}
  main {{ max-width: 42rem; margin: 3rem auto; padding: 0 1.25rem; }}
  h1 {{ font-size: 2rem; margin: 0 0 .25rem; }}
  h1 span {{ color: var(--accent); }}
  .lead {{ margin-top: 0; opacity: .8; }}
  h2 {{ font-size: 1.1rem; margin-top: 2rem; }}
  dl {{ display: grid; grid-template-columns: max-content 1fr; gap: .25rem 1rem; }}
  dt {{ font-weight: 600; }}
  dd {{ margin: 0; font-family: ui-monospace, monospace; }}
  code, pre {{ font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: .9em; }}
  pre {{ background: color-mix(in srgb, CanvasText 7%, Canvas); padding: .9rem 1rem;
        border-radius: 8px; overflow-x: auto; border-left: 3px solid var(--accent); }}
  footer {{ margin-top: 2.5rem; font-size: .85rem; opacity: .65; }}
</style>
</head>
<body>
<main>
<h1><span>&#9875;</span> berth is running</h1>
<p class="lead">This is berth's built-in demo app: no WSGI app was found in <code>/app</code>.</p>

<p>berth serves Python WSGI apps (Django, Flask, any PEP&nbsp;3333 app) from one container: a single
Go binary is PID&nbsp;1, supervises Python workers, and fronts them with its own HTTP proxy
&mdash; no nginx, Gunicorn or entrypoint script needed.</p>

<dl>
  <dt>Python</dt><dd>{python}</dd>
  <dt>Worker pid</dt><dd>{pid}</dd>
  <dt>Served path</dt><dd>{path}</dd>
</dl>

<h2>Serve your app</h2>
<p>Mount it at <code>/app</code>; berth finds a Django project (<code>*/wsgi.py</code>) or a
<code>wsgi.py</code> / <code>app.py</code> with an <code>application</code> or <code>app</code> callable:</p>
<pre>podman run -p 8080:8080 -v ./mysite:/app berth</pre>

<h2>Configure it</h2>
<p>Put a config at <code>/etc/berth/berth.yaml</code>; edits apply live, without dropping a request:</p>
<pre>listen: [":8080"]
app:
  module: "mysite.wsgi:application"
  env: {{DJANGO_SETTINGS_MODULE: mysite.settings}}
workers:
  count: auto
static:
  - {{url: /static/, dir: /app/static}}
tasks:                    # before the first worker, instead of an entrypoint script
  before_start:
    - {{name: migrate, command: [python3, manage.py, migrate, --noinput]}}
    - {{name: collectstatic, command: [python3, manage.py, collectstatic, --noinput]}}
programs:                 # beside the workers, instead of supervisord
  - {{name: celery, command: [python3, -m, celery, -A, mysite, worker]}}
cron:
  - {{name: clearsessions, schedule: "0 3 * * *", command: [python3, manage.py, clearsessions]}}</pre>
<p>Check it with <code>berth check</code>, watch it with <code>berth status</code>.</p>

<footer>berth &middot; {system}</footer>
</main>
</body>
</html>
"""


def application(environ, start_response):
    body = PAGE.format(
        python=html.escape('%s %s' % (platform.python_implementation(), sys.version.split()[0])),
        pid=os.getpid(),
        path=html.escape(environ.get('SCRIPT_NAME', '') + environ.get('PATH_INFO', '')),
        system=html.escape(platform.system() + ' ' + platform.machine()),
    ).encode('utf-8')
    start_response('200 OK', [
        ('Content-Type', 'text/html; charset=utf-8'),
        ('Content-Length', str(len(body))),
        ('Cache-Control', 'no-store'),
    ])
    return [body]  # the server drops the body of a HEAD response
