"""WSGI app driven by the worker tests (worker/worker_test.go); `validated` is the same app
wrapped in wsgiref.validate.validator, which asserts PEP 3333 on both sides."""

import hashlib
import io
import json
import os
import random
import sys
import threading
import time
from urllib.parse import parse_qs
from wsgiref.validate import validator

TEXT = [('Content-Type', 'text/plain')]
PATTERN = bytes(range(256)) * 4096  # 1 MiB; the Go side hashes the same bytes
BARRIER = threading.Barrier(4)


def query(environ):
    return {k: v[0] for k, v in parse_qs(environ.get('QUERY_STRING', '')).items()}


def wait_for(path, seconds=20.0):
    deadline = time.monotonic() + seconds
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def body_length(environ):
    return int(environ.get('CONTENT_LENGTH') or 0)


def r_hello(environ, start_response):
    start_response('200 OK', list(TEXT))
    return [b'hello']


def r_multi(environ, start_response):
    start_response('200 OK', list(TEXT))
    return [b'a', b'', b'bc', b'def']


def r_environ(environ, start_response):
    out = {k: v for k, v in environ.items() if isinstance(v, str)}
    for k in ('wsgi.version', 'wsgi.url_scheme', 'wsgi.multithread', 'wsgi.multiprocess',
              'wsgi.run_once', 'wsgi.input_terminated'):
        out[k] = environ[k]
    out['errors_is_stderr'] = environ['wsgi.errors'] is sys.stderr
    out['has_file_wrapper'] = callable(environ.get('wsgi.file_wrapper'))
    body = json.dumps(out).encode()
    start_response('200 OK', [('Content-Type', 'application/json')])
    return [body]


def r_echo(environ, start_response):
    data = environ['wsgi.input'].read(body_length(environ))
    assert environ['wsgi.input'].read(1) == b''
    start_response('200 OK', [('Content-Type', environ.get('CONTENT_TYPE') or 'text/plain'),
                              ('X-Method', environ['REQUEST_METHOD'])])
    return [data]


def r_upload(environ, start_response):
    q = query(environ)
    inp = environ['wsgi.input']
    h = hashlib.sha256()
    n = 0
    mode = q.get('mode', 'chunks')
    if mode == 'all':
        data = inp.read()
        h.update(data)
        n = len(data)
    elif mode == 'lines':
        for line in inp:
            h.update(line)
            n += len(line)
    else:
        size = int(q.get('chunk', '65536'))
        while True:
            data = inp.read(size)
            if not data:
                break
            h.update(data)
            n += len(data)
    body = json.dumps({'sha256': h.hexdigest(), 'size': n}).encode()
    start_response('200 OK', [('Content-Type', 'application/json')])
    return [body]


def r_lines(environ, start_response):
    inp = environ['wsgi.input']
    out = {'first': inp.readline().decode(), 'limited': inp.readline(3).decode(),
           'rest_of_line': inp.readline().decode()}
    it = iter(inp)
    out['iterated'] = [next(it).decode(), next(it).decode()]
    out['readlines'] = [x.decode() for x in inp.readlines()]
    out['after'] = inp.read(10).decode() + inp.readline().decode()
    body = json.dumps(out).encode()
    start_response('200 OK', [('Content-Type', 'application/json')])
    return [body]


def r_stream(environ, start_response):
    q = query(environ)
    start_response('200 OK', list(TEXT))
    yield b'first'
    if 'release' in q:
        yield b'second' if wait_for(q['release']) else b'timeout'
    else:
        yield b''
        yield b'second'


def r_write(environ, start_response):
    write = start_response('200 OK', list(TEXT))
    write(b'written,')
    write(b'')
    write(b'again,')
    return [b'returned']


def r_download(environ, start_response):
    q = query(environ)
    size = int(q['size'])
    headers = list(TEXT)
    if q.get('cl') == '1':
        headers.append(('Content-Length', str(size)))
    start_response('200 OK', headers)

    def gen():
        left = size
        while left > 0:
            chunk = PATTERN if left >= len(PATTERN) else PATTERN[:left]
            left -= len(chunk)
            yield chunk
    return gen()


def r_file(environ, start_response):
    q = query(environ)
    f = open(q['path'], 'rb')
    if q.get('bytesio') == '1':
        data = f.read()
        f.close()
        f = io.BytesIO(data)
    skip = int(q.get('offset', '0'))
    if skip:
        f.read(skip)
    start_response('200 OK', [('Content-Type', 'application/octet-stream')])
    return environ['wsgi.file_wrapper'](f, 65536)


def r_error_before(environ, start_response):
    raise RuntimeError('boom before')


def r_error_after(environ, start_response):
    start_response('200 OK', list(TEXT))
    yield b'partial'
    raise RuntimeError('boom after')


def r_excinfo(environ, start_response):
    start_response('200 OK', list(TEXT))
    try:
        raise ValueError('replaced')
    except ValueError:
        start_response('503 Service Unavailable', list(TEXT), sys.exc_info())
    return [b'replaced']


def r_excinfo_late(environ, start_response):
    start_response('200 OK', list(TEXT))
    yield b'sent'
    try:
        raise ValueError('too late')
    except ValueError:
        start_response('500 Internal Server Error', list(TEXT), sys.exc_info())
    yield b'never'


def r_hop(environ, start_response):
    start_response('200 OK', TEXT + [('Connection', 'close')])
    return [b'hop']


BAD = {
    'space-in-name': ('200 OK', [('Bad Name', 'x')]),
    'newline-in-value': ('200 OK', [('X-A', 'a\r\nX-Injected: 1')]),
    'bytes-value': ('200 OK', [('X-A', b'x')]),
    'no-reason': ('200', []),
    'bad-code': ('2x0 OK', []),
    'transfer-encoding': ('200 OK', [('Transfer-Encoding', 'chunked')]),
    'bad-content-length': ('200 OK', [('Content-Length', '-1')]),
    'not-latin1': ('200 OK', [('X-A', '\u20ac')]),
    'low-code': ('099 Low', [('X-Accel-Buffering', 'no')]),
    'interim-code': ('103 Early Hints', []),
    'switching': ('101 Switching Protocols', [('Upgrade', 'websocket')]),
}


def r_bad(environ, start_response):
    status, headers = BAD[query(environ)['kind']]
    start_response(status, headers)
    return [b'must not be sent']


def r_twice(environ, start_response):
    start_response('200 OK', list(TEXT))
    start_response('200 OK', list(TEXT))
    return [b'must not be sent']


def r_str_body(environ, start_response):
    start_response('200 OK', list(TEXT))
    return ['text, not bytes']


def r_status(environ, start_response):
    code = query(environ)['code']
    start_response(code + ' Whatever', [])
    return [b'must not be sent']


def r_cl_short(environ, start_response):
    start_response('200 OK', TEXT + [('Content-Length', '10')])
    return iter([b'12345'])


def r_cl_long(environ, start_response):
    start_response('200 OK', TEXT + [('Content-Length', '3')])
    return iter([b'12', b'345678'])


def r_gen_empty(environ, start_response):
    start_response('200 OK', list(TEXT))
    yield b''
    yield b''


def r_unread(environ, start_response):
    start_response('200 OK', list(TEXT))
    return [b'ignored']


def r_barrier(environ, start_response):
    time.sleep(0.3)
    try:
        BARRIER.wait(timeout=5)
        status, body = '200 OK', b'ok'
    except threading.BrokenBarrierError:
        status, body = '500 Internal Server Error', b'not concurrent'
    start_response(status, list(TEXT))
    return [body]


def berth_test_blocked_route(environ, start_response):
    q = query(environ)
    open(q['entered'], 'w').close()
    ok = wait_for(q['release'])
    start_response('200 OK', list(TEXT))
    return [b'released' if ok else b'timeout']


def r_pid(environ, start_response):
    start_response('200 OK', [('Content-Type', 'application/json')])
    return [json.dumps({'pid': os.getpid(), 'ppid': os.getppid(),
                        'random': random.random()}).encode()]


ROUTES = {
    '/hello': r_hello, '/multi': r_multi, '/environ': r_environ, '/echo': r_echo,
    '/upload': r_upload, '/lines': r_lines, '/stream': r_stream, '/write': r_write,
    '/download': r_download, '/file': r_file, '/error-before': r_error_before,
    '/error-after': r_error_after, '/excinfo': r_excinfo, '/excinfo-late': r_excinfo_late,
    '/hop': r_hop, '/status': r_status, '/cl-short': r_cl_short, '/cl-long': r_cl_long,
    '/gen-empty': r_gen_empty, '/unread': r_unread, '/barrier': r_barrier,
    '/block': berth_test_blocked_route, '/pid': r_pid, '/bad': r_bad, '/twice': r_twice,
    '/str-body': r_str_body,
}


def application(environ, start_response):
    route = ROUTES.get(environ['PATH_INFO'])
    if route is None:
        start_response('404 Not Found', list(TEXT))
        return [b'no route ' + environ['PATH_INFO'].encode('latin-1')]
    return route(environ, start_response)


validated = validator(application)


def hello(environ, start_response):
    """The smallest app: what the throughput benchmark measures."""
    start_response('200 OK', [('Content-Type', 'text/plain')])
    return [b'Hello, World!']


def recording(environ, start_response):
    """Appends what reached the app, as one JSON line, to $BERTH_TEST_CALLS, then answers the
    same line: the malformed-packet tests (worker/badpacket_test.go) assert that nothing did."""
    rec = {k: v for k, v in environ.items() if isinstance(v, str)}
    try:
        rec['body'] = environ['wsgi.input'].read().decode('latin-1')
    except Exception as e:
        rec['read_error'] = type(e).__name__
        raise
    finally:
        with open(os.environ['BERTH_TEST_CALLS'], 'a') as f:
            f.write(json.dumps(rec) + '\n')
    start_response('200 OK', [('Content-Type', 'application/json')])
    return [json.dumps(rec).encode()]
