"""The Python worker's per-request path in-process, without sockets or a scheduler.

    python3 bench/workerbench/hotpath.py [--alternate] [--callgrind] RUNTIME...

Loads each berth_worker.py given, serves bench/apps/hello.py through its Worker._serve_conn on
a fake socket that hands it the packet berth's proxy sends for `GET /` (compact vars, as in
workerbench) and drops the responses, and prints the CPU time per request (best of 5 runs of
200,000 requests). With --callgrind it prints instead the instructions per request under
valgrind's callgrind (two runs, 2,000 and 12,000 requests, differenced, PYTHONHASHSEED=0): the
same on every run, so an A/B of a small change reads the same on a busy machine.
--alternate sends two packets of the same size whose var names differ, in turn.

A complement to workerbench, which measures a real worker but whose figures move with the
machine's load. Standard library only; run it with the interpreter the workers use.
"""

import importlib.util
import os
import re
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True

HERE = os.path.dirname(os.path.abspath(__file__))
APPS = os.path.join(HERE, '..', 'apps')

# What proxy/uwsgi's appendCompact sends for wrk's `GET /` (Host only), with a request ID.
VARS = [('QUERY_STRING', ''), ('REQUEST_METHOD', 'GET'), ('CONTENT_TYPE', ''), ('CONTENT_LENGTH', ''),
        ('REQUEST_URI', '/'), ('PATH_INFO', '/'), ('DOCUMENT_ROOT', ''), ('SERVER_PROTOCOL', 'HTTP/1.1'),
        ('REQUEST_SCHEME', 'http'), ('REMOTE_ADDR', '127.0.0.1'), ('REMOTE_PORT', '50312'),
        ('SERVER_PORT', '8080'), ('SERVER_NAME', '127.0.0.1'), ('HTTP_HOST', '127.0.0.1:8080'),
        ('HTTP_X_REQUEST_ID', '4f0c1e0b8a6d4c9e9a3b2f1d0c5e7a61'), ('BERTH_KEEPALIVE', '1')]


def compact(kv):
    body = b''.join(k.encode('latin-1') + b'\0' + v.encode('latin-1') + b'\0' for k, v in kv)
    return bytes([0xBE, len(body) & 255, len(body) >> 8, 0]) + body


class FakeSock:
    """recv_into hands out one whole packet per call, n times, then EOF; sendall drops."""

    def __init__(self, packets, n):
        self.packets = packets
        self.n = n
        self.sent = 0

    def recv_into(self, mv, nbytes=0):
        if self.n == 0:
            return 0
        self.n -= 1
        p = self.packets[self.n % len(self.packets)]
        mv[:len(p)] = p
        return len(p)

    def sendall(self, data):
        self.sent += 1


def load(path):
    spec = importlib.util.spec_from_file_location('berth_worker_under_test', path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def server(path, alternate):
    bw = load(path)
    sys.path.insert(0, APPS)
    import hello
    packets = [compact(VARS)]
    if alternate:
        packets.append(compact([(k if k != 'HTTP_X_REQUEST_ID' else 'HTTP_USER_AGENT', v) for k, v in VARS]))
    w = bw.Worker(hello.application, 'hotpath', '/nonexistent', 1)
    st = bw.ThreadState()
    buf = bytearray(bw.BUFSIZE)
    mv = memoryview(buf)

    def run(n):
        s = FakeSock(packets, n)
        w._serve_conn(bw.Conn(s, buf, mv), st)
        if s.sent != n:
            raise SystemExit('%s: %d responses for %d requests' % (path, s.sent, n))

    run(1000)
    return run


def instructions(path, alternate):
    counts = []
    for n in (2000, 12000):
        with tempfile.NamedTemporaryFile() as out:
            cmd = ['valgrind', '--tool=callgrind', '--callgrind-out-file=' + out.name, sys.executable,
                   os.path.abspath(__file__), '--once', str(n)] + (['--alternate'] if alternate else []) + [path]
            r = subprocess.run(cmd, env=dict(os.environ, PYTHONHASHSEED='0'), capture_output=True, text=True)
        m = re.search(r'Collected : (\d+)', r.stderr)
        if r.returncode != 0 or not m:
            raise SystemExit('%s\n%s' % (' '.join(cmd), r.stderr[-2000:]))
        counts.append(int(m.group(1)))
    return (counts[1] - counts[0]) / 10000


def main(argv):
    alternate = '--alternate' in argv
    callgrind = '--callgrind' in argv
    once = None
    if '--once' in argv:
        i = argv.index('--once')
        once = int(argv[i + 1])
        del argv[i:i + 2]
    paths = [a for a in argv if not a.startswith('--')]
    if not paths:
        sys.stderr.write(__doc__)
        return 2
    for path in paths:
        if once is not None:
            server(path, alternate)(once)
        elif callgrind:
            print('%s: %.0f instructions per request' % (path, instructions(path, alternate)))
        else:
            run = server(path, alternate)
            best = None
            for _ in range(5):
                t = time.thread_time()
                run(200000)
                d = (time.thread_time() - t) / 200000 * 1e6
                best = d if best is None else min(best, d)
            print('%s: %.2f µs per request (CPU, best of 5)' % (path, best))
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
