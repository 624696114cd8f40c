"""WSGI app mounted at /app by the container tests (tests/container_test.go).

GET  /                   "fixture app" (header X-App: fixture)
GET  /slow?secs=N&mark=M creates $FIXTURE_SHARED/M (the test sees the request
                         is in flight), sleeps N seconds, answers "slept N"
POST /echo               answers the number of body bytes read
GET  /whoami             uid and pid of the worker, as JSON
"""
import json
import os
import time
from urllib.parse import parse_qs


def application(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    query = parse_qs(environ.get("QUERY_STRING", ""))
    if path == "/slow":
        secs = float(query.get("secs", ["2"])[0])
        mark = query.get("mark", [""])[0]
        shared = os.environ.get("FIXTURE_SHARED", "")
        if mark and shared:
            with open(os.path.join(shared, os.path.basename(mark)), "w") as f:
                f.write(str(os.getpid()))
        time.sleep(secs)
        body = ("slept %g\n" % secs).encode()
    elif path == "/echo":
        n = int(environ.get("CONTENT_LENGTH") or 0)
        data = environ["wsgi.input"].read(n) if n else b""
        body = ("%d\n" % len(data)).encode()
    elif path == "/whoami":
        body = json.dumps({"uid": os.getuid(), "pid": os.getpid()}).encode()
    else:
        body = b"fixture app\n"
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body))),
                              ("X-App", "fixture")])
    return [body]
