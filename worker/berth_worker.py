"""berth worker runtime: serves one WSGI (PEP 3333) app over the uwsgi protocol.

Started by the berth supervisor as ``python3 -u berth_worker.py serve|zygote``. The contract
(environment variables, modes, signals, the uwsgi protocol and berth's keep-alive extension) is
docs/internals.md, "Worker runtime". Standard library only, Python >= 3.9.
"""

import atexit
import errno
import faulthandler
import gc
import importlib
import io
import json
import os
import random
import re
import signal
import socket
import stat
import struct
import sys
import threading
import time
import traceback
from urllib.parse import unquote_to_bytes

EXIT_IMPORT = 4  # the app failed to import: fatal for the whole server, never respawned
EXIT_USAGE = 2  # bad command line or environment: a supervisor bug, not an app bug

BACKLOG = 1024
# One buffer per thread holds the largest possible uwsgi header (4 + 65535 bytes) at once, so the
# request head is always parsed from one contiguous buffer, usually filled by a single recv.
BUFSIZE = 4 + 65535 + 1
# Responses and chunks up to this size are joined into one buffer and sent with one syscall.
JOIN_MAX = 65536
# Longest wait, when closing, for a request body the app did not read.
LINGER = 2.0
# Reads up to this size go through the connection buffer (few big recvs instead of many small).
SMALL_READ = 32768

HOP_BY_HOP = frozenset((
    'connection', 'keep-alive', 'proxy-authenticate', 'proxy-authorization', 'proxy-connection',
    'te', 'trailer', 'trailers', 'transfer-encoding', 'upgrade',
))

_unpack_head = struct.Struct('<BHB').unpack_from
# modifier1 of berth's compact vars: every key and value followed by a NUL (proxy/uwsgi.go).
MOD_COMPACT = 0xBE

# An HTTP field name is a token (RFC 9110 5.1).
_token = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z").match
# uwsgi var names already found valid (CGI meta-variable names are tokens, RFC 3875 4.1): a
# front sends the same few dozen names every time, so one set look-up checks them all.
_good_names = set()
# Request methods already found to be tokens: a regex match costs more than a set look-up.
_good_methods = set()
# RFC 9110 5.5: a recipient must reject (or replace) NUL, CR and LF in a field value.
_nul_cr_lf = re.compile('[\0\r\n]').search
_digits = re.compile(r'[0-9]+\Z').match
# Vars that make _read_request adjust the environ (so does a missing PATH_INFO).
_ADJUSTED = frozenset(('HTTP_CONTENT_TYPE', 'HTTP_CONTENT_LENGTH', 'SCRIPT_NAME', 'HTTPS',
                       'UWSGI_SCHEME'))
MAX_CONTENT_LENGTH = (1 << 63) - 1  # as nginx's and Go's: any larger length is an attack or a bug
# Header names already validated, mapped to their lower-case form: apps repeat a few names.
_header_names = {}
# Statuses already validated, mapped to (status line, no body): apps answer with a few, and the
# checks below cost more than the rest of start_response.
_statuses = {}


def _check_status(status):
    if type(status) is not str:
        raise TypeError('status must be a str, not %s' % type(status).__name__)
    if len(status) < 4 or status[3] != ' ' or not status[:3].isdigit() or \
            '\n' in status or '\r' in status:
        raise ValueError('status %r: want "NNN Reason"' % status)
    code = int(status[:3])
    if code < 200:
        # 1xx are interim answers the server owns (a proxy would wait for the final one
        # after it), and codes under 100 are no HTTP status at all.
        raise ValueError('status %r: want a final status, 200 or above' % status)
    st = ('HTTP/1.1 ' + status + '\r\n', code == 204 or code == 304)
    if len(_statuses) < 1024:
        _statuses[status] = st
    return st


def _check_header_name(name):
    if type(name) is not str or not _token(name):
        raise ValueError('header name %r is not an HTTP token' % (name,))
    lname = name.lower()
    if lname in HOP_BY_HOP:
        raise ValueError('header %r: hop-by-hop headers are not allowed from a WSGI app '
                         '(PEP 3333); the server frames the response' % name)
    if len(_header_names) < 1024:
        _header_names[name] = lname
    return lname

ERROR_500 = (b'HTTP/1.1 500 Internal Server Error\r\n'
             b'Content-Type: text/plain; charset=utf-8\r\n'
             b'Content-Length: 22\r\n\r\n')
ERROR_500_BODY = b'Internal Server Error\n'
# Connection: close, or berth's proxy would pool the connection the worker is closing, and the
# next request sent on it would get no answer (a 502, for a POST).
ERROR_400 = (b'HTTP/1.1 400 Bad Request\r\n'
             b'Content-Type: text/plain; charset=utf-8\r\n'
             b'Connection: close\r\n'
             b'Content-Length: 12\r\n\r\nBad Request\n')

_log_prefix = 'berth worker %s: ' % os.environ.get('BERTH_WORKER_ID', '?')


def log(msg):
    """Write one message to stderr in a single write, so threads never interleave lines."""
    if not msg.endswith('\n'):
        msg += '\n'
    try:
        sys.stderr.write(_log_prefix + msg)
    except Exception:
        pass


def log_exc(msg):
    log(msg + '\n' + traceback.format_exc())


def set_log_id(wid):
    global _log_prefix
    _log_prefix = 'berth worker %s: ' % wid


def notify(msg):
    """Send one sd_notify datagram to $NOTIFY_SOCKET (absent: nothing to tell)."""
    addr = os.environ.get('NOTIFY_SOCKET')
    if not addr:
        return
    if addr[0] == '@':
        addr = '\0' + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(msg.encode(), addr)
    except OSError as e:
        log('cannot notify %s: %s' % (os.environ.get('NOTIFY_SOCKET'), e))


class ClientGone(Exception):
    """The peer (proxy or nginx) closed the connection: nothing more can be sent."""


class BadRequest(Exception):
    pass


class FileWrapper:
    """wsgi.file_wrapper: the server sends a real file with os.sendfile, anything else by reads."""

    def __init__(self, filelike, blksize=8192):
        self.filelike = filelike
        self.blksize = blksize
        if hasattr(filelike, 'close'):
            self.close = filelike.close

    def __iter__(self):
        return self

    def __next__(self):
        data = self.filelike.read(self.blksize)
        if data:
            return data
        raise StopIteration

    def _regular_fd(self):
        """(fd, offset, size left) when the file is a regular file with a real fd, else None."""
        f = self.filelike
        try:
            fd = f.fileno()
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return None
            # tell() accounts for what a buffered file object has read ahead.
            offset = f.tell() if hasattr(f, 'tell') else os.lseek(fd, 0, os.SEEK_CUR)
        except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
            return None
        return fd, offset, max(0, st.st_size - offset)


class Conn:
    """One accepted connection: a receive buffer shared by the request head and wsgi.input."""

    __slots__ = ('sock', 'buf', 'mv', 'pos', 'end')

    def __init__(self, sock, buf, mv):
        self.sock = sock
        self.buf = buf
        self.mv = mv
        self.pos = 0
        self.end = 0

    def fill(self, need):
        """Make `need` bytes available at buf[pos:]. False on EOF before the first byte."""
        avail = self.end - self.pos
        if avail >= need:
            return True
        if self.pos + need > len(self.buf):
            data = bytes(self.mv[self.pos:self.end])
            self.buf[:avail] = data
            self.pos = 0
            self.end = avail
        recv_into = self.sock.recv_into
        mv = self.mv
        while self.end - self.pos < need:
            n = recv_into(mv[self.end:])
            if not n:
                if self.end == self.pos:
                    return False
                raise ClientGone('connection closed in the middle of a request')
            self.end += n
        return True

    def discard(self, n):
        """Skip n body bytes (an unread request body) so the stream stays framed."""
        recv_into = self.sock.recv_into
        while True:
            avail = self.end - self.pos
            if avail >= n:
                self.pos += n
                return
            n -= avail
            self.pos = self.end = 0
            got = recv_into(self.mv)
            if not got:
                raise ClientGone('connection closed in the middle of a request body')
            self.end = got


class Input:
    """wsgi.input: exactly CONTENT_LENGTH bytes of body, then b''."""

    __slots__ = ('conn', 'remaining')

    def __init__(self, conn, length):
        self.conn = conn
        self.remaining = length

    def read(self, size=-1):
        rem = self.remaining
        if size is None or size < 0 or size > rem:
            size = rem
        if size <= 0:
            return b''
        c = self.conn
        if c.end - c.pos < size and size <= SMALL_READ:
            c.fill(size)
        p = c.pos
        avail = c.end - p
        if avail >= size:
            c.pos = p + size
            self.remaining = rem - size
            return bytes(c.mv[p:p + size])
        # A big read: receive straight into the result instead of through the buffer.
        out = bytearray(size)
        omv = memoryview(out)
        omv[:avail] = c.mv[p:c.end]
        c.pos = c.end = 0
        got = avail
        recv_into = c.sock.recv_into
        while got < size:
            n = recv_into(omv[got:])
            if not n:
                self.remaining = 0
                raise ClientGone('client closed the connection before sending the whole body')
            got += n
        self.remaining = rem - size
        return bytes(out)

    def readline(self, size=-1):
        limit = self.remaining
        if size is not None and 0 <= size < limit:
            limit = size
        if limit <= 0:
            return b''
        c = self.conn
        parts = None
        while True:
            if c.end == c.pos:
                c.pos = c.end = 0
                n = c.sock.recv_into(c.mv)
                if not n:
                    self.remaining = 0
                    raise ClientGone('client closed the connection before sending the whole body')
                c.end = n
            p = c.pos
            stop = min(c.end, p + limit)
            i = c.buf.find(b'\n', p, stop)
            take = (i + 1 if i >= 0 else stop) - p
            chunk = bytes(c.mv[p:p + take])
            c.pos = p + take
            self.remaining -= take
            limit -= take
            if i >= 0 or limit == 0:
                if parts is None:
                    return chunk
                parts.append(chunk)
                return b''.join(parts)
            if parts is None:
                parts = [chunk]
            else:
                parts.append(chunk)

    def readlines(self, hint=-1):
        lines = []
        total = 0
        while True:
            line = self.readline()
            if not line:
                return lines
            lines.append(line)
            total += len(line)
            if hint is not None and 0 < hint <= total:
                return lines

    def __iter__(self):
        return self

    def __next__(self):
        line = self.readline()
        if line:
            return line
        raise StopIteration


# wsgi.input of every request without a body: with nothing remaining, an Input never touches
# its connection nor changes, so one serves them all.
_NO_BODY = Input(None, 0)


class Response:
    """State of one response: start_response, write() and the framing on the wire."""

    __slots__ = ('sock', 'keepalive', 'head_req', 'status', 'head', 'cl', 'no_body', 'sent',
                 'chunked', 'count', 'close')

    def __init__(self, sock, keepalive, head_req):
        self.sock = sock
        self.keepalive = keepalive
        self.head_req = head_req
        self.status = None
        self.head = None  # status line, headers and the blank line that ends them
        self.cl = None  # the app's Content-Length, when it gave one
        self.no_body = head_req
        self.sent = False  # headers are on the wire
        self.chunked = False
        self.count = 0  # body bytes sent
        self.close = False  # the connection cannot carry another request

    def start_response(self, status, headers, exc_info=None):
        if exc_info is not None:
            try:
                if self.sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self.status is not None:
            raise AssertionError('start_response() called a second time without exc_info')
        # A str subclass equal to a cached status must still be refused by _check_status.
        st = _statuses.get(status) if type(status) is str else None
        if st is None:
            st = _check_status(status)
        cl = None
        lines = [st[0]]
        names = _header_names
        for name, value in headers:
            lname = names.get(name)
            if lname is None:
                lname = _check_header_name(name)
            if type(value) is not str:
                raise TypeError('header %s: value %r is not a str' % (name, value))
            if '\n' in value or '\r' in value:
                raise ValueError('header %s: value %r holds CR or LF' % (name, value))
            if lname == 'content-length':
                cl = int(value) if value.isdigit() else -1
                if cl < 0:
                    raise ValueError('header Content-Length: %r is not a length' % value)
            lines += (name, ': ', value, '\r\n')
        lines.append('\r\n')
        self.status = status
        # Encoding here makes a non-latin-1 header fail inside start_response, like any other
        # invalid header, before anything was sent.
        self.head = ''.join(lines).encode('latin-1')
        self.cl = cl
        self.no_body = self.head_req or st[1]
        return self.write

    def _head(self, framing):
        if not framing:
            return self.head
        return self.head[:-2] + framing + b'\r\n'

    def _send(self, data):
        try:
            self.sock.sendall(data)
        except OSError as e:
            self.close = True
            raise ClientGone(str(e)) from None

    def write(self, data):
        """The write() callable, also used for each chunk of the returned iterable."""
        t = type(data)
        if t is not bytes and t is not bytearray:
            raise TypeError('response body must be bytes, not %s' % t.__name__)
        if not self.sent:
            if self.status is None:
                raise AssertionError('response body sent before start_response() was called')
            if not data:
                return
            self.sent = True
            if self.no_body:
                self._send(self._head(b''))
                return
            if self.cl is not None:
                data = self._clip(data)
                head = self._head(b'')
            elif self.keepalive:
                self.chunked = True
                self.count += len(data)
                if len(data) <= JOIN_MAX:
                    self._send(self._head(b'Transfer-Encoding: chunked\r\n') +
                               (b'%x\r\n' % len(data)) + data + b'\r\n')
                else:
                    self._send(self._head(b'Transfer-Encoding: chunked\r\n') +
                               (b'%x\r\n' % len(data)))
                    self._send(data)
                    self._send(b'\r\n')
                return
            else:
                self.count += len(data)
                head = self._head(b'')
            if len(data) <= JOIN_MAX:
                self._send(head + data)
            else:
                self._send(head)
                self._send(data)
            return
        if not data or self.no_body:
            return
        if self.chunked:
            self.count += len(data)
            if len(data) <= JOIN_MAX:
                self._send((b'%x\r\n' % len(data)) + data + b'\r\n')
            else:
                self._send(b'%x\r\n' % len(data))
                self._send(data)
                self._send(b'\r\n')
            return
        if self.cl is not None:
            data = self._clip(data)
            if not data:
                return
        else:
            self.count += len(data)
        self._send(data)

    def _clip(self, data):
        """Never send more than the app's Content-Length: the next response would be corrupt."""
        left = self.cl - self.count
        if len(data) > left:
            if not self.close:
                log('app sent more than its Content-Length %d; response cut, connection closed'
                    % self.cl)
            self.close = True
            data = data[:left]
        self.count += len(data)
        return data

    def finish(self):
        """The iterable is exhausted: send what is still owed and note whether framing held."""
        if not self.sent:
            if self.status is None:
                raise AssertionError('the app returned without calling start_response()')
            self.sent = True
            if self.no_body or self.cl is not None:
                self._send(self._head(b''))
            else:
                self._send(self._head(b'Content-Length: 0\r\n'))
        elif self.chunked:
            self._send(b'0\r\n\r\n')
        if self.cl is not None and self.count < self.cl and not self.no_body:
            self.close = True

    def send_list(self, result):
        """Fast path for a list/tuple of bytes: one sendall with an exact Content-Length."""
        if len(result) == 1:
            # Most apps answer with one buffer: skip the loop.
            body = result[0]
            if type(body) is not bytes:
                return False
            total = len(body)
            cl = self.cl
            if cl is not None and total <= JOIN_MAX and not self.no_body:
                if cl != total:
                    return False
                self.sent = True
                self.count = total
                try:
                    self.sock.sendall(self.head + body)
                except OSError as e:
                    self.close = True
                    raise ClientGone(str(e)) from None
                return True
        else:
            total = 0
            for b in result:
                if type(b) is not bytes:
                    return False
                total += len(b)
        cl = self.cl
        if cl is not None and cl != total:
            return False
        if self.no_body:
            framing = b'' if cl is not None or not self.head_req else b'Content-Length: %d\r\n' % total
            self.sent = True
            self._send(self._head(framing))
            return True
        framing = b'' if cl is not None else b'Content-Length: %d\r\n' % total
        self.sent = True
        self.count = total
        if total <= JOIN_MAX:
            n = len(result)
            if n == 1:
                self._send(self._head(framing) + result[0])
            else:
                self._send(self._head(framing) + b''.join(result))
        else:
            self._send(self._head(framing))
            for b in result:
                if b:
                    self._send(b)
        return True

    def send_file(self, wrapper):
        """Zero-copy path for wsgi.file_wrapper around a regular file."""
        info = wrapper._regular_fd()
        if info is None:
            return False
        fd, offset, size = info
        cl = self.cl
        count = size if cl is None else min(cl, size)
        framing = b'Content-Length: %d\r\n' % size if cl is None else b''
        self.sent = True
        if self.no_body:
            if not self.head_req:
                framing = b''
            self._send(self._head(framing))
            return True
        self._send(self._head(framing))
        out = self.sock.fileno()
        sent = 0
        try:
            while sent < count:
                n = os.sendfile(out, fd, offset + sent, count - sent)
                if not n:
                    break  # the file shrank under us
                sent += n
        except OSError as e:
            self.close = True
            raise ClientGone(str(e)) from None
        self.count = sent
        if sent < count or cl is not None and sent < cl:
            self.close = True
        return True


class ThreadState:
    """What SIGTERM needs to know about a serving thread: is it idle on a kept-alive connection."""

    __slots__ = ('sock', 'idle')

    def __init__(self):
        self.sock = None
        self.idle = False


class Worker:
    def __init__(self, app, wid, sock_path, threads):
        self.app = app
        self.wid = wid
        self.sock_path = sock_path
        self.threads = threads
        self.lsock = None
        self.sock_ino = None
        self.stopping = False
        self.states = []
        # var count -> up to 4 (var names of a request served, with the final '', its environ as
        # built before anything else touched it, the vars' values blanked, whether it needed no
        # adjustment after that), the newest first: see _read_request.
        self.layouts = {}
        self.base = {
            'wsgi.version': (1, 0),
            'wsgi.url_scheme': 'http',
            'wsgi.errors': sys.stderr,
            'wsgi.multithread': threads > 1,
            'wsgi.multiprocess': True,
            'wsgi.run_once': False,
            'wsgi.file_wrapper': FileWrapper,
            'wsgi.input_terminated': True,
            'SCRIPT_NAME': '',
            'QUERY_STRING': '',
            'SERVER_NAME': 'localhost',
            'SERVER_PORT': '80',
            'SERVER_PROTOCOL': 'HTTP/1.1',
        }

    # -- life cycle ---------------------------------------------------------------------------

    def bind(self):
        self.lsock, self.sock_ino = bind_socket(self.sock_path)

    def serve(self):
        """Serve until SIGTERM (graceful) or SIGINT/SIGQUIT (now); never returns."""
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, _exit_now)
        signal.signal(signal.SIGQUIT, _exit_now)
        notify('READY=1\nBERTH_WORKER=%s\nMAINPID=%d' % (self.wid, os.getpid()))
        threads = []
        for i in range(self.threads):
            st = ThreadState()
            self.states.append(st)
            t = threading.Thread(target=self._accept_loop, args=(st,),
                                 name='berth-%d' % i, daemon=True)
            t.start()
            threads.append(t)
        # The main thread only waits, so that it is free to run the signal handlers.
        for t in threads:
            t.join()
        self._cleanup()
        try:
            atexit._run_exitfuncs()
        except Exception:
            pass
        _flush()
        os._exit(0)

    def _on_term(self, signum, frame):
        if self.stopping:
            return
        self.stopping = True
        # shutdown(), unlike close(), wakes every thread blocked in accept() (EINVAL) and makes
        # new connects fail at once.
        try:
            self.lsock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        for st in self.states:
            s = st.sock
            if st.idle and s is not None:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _cleanup(self):
        try:
            self.lsock.close()
        except OSError:
            pass
        # Remove the socket only if it is still ours, never a successor's at the same path.
        try:
            if os.stat(self.sock_path).st_ino == self.sock_ino:
                os.unlink(self.sock_path)
        except OSError:
            pass

    def _accept_loop(self, st):
        buf = bytearray(BUFSIZE)
        mv = memoryview(buf)
        lsock = self.lsock
        while not self.stopping:
            try:
                sock, _ = lsock.accept()
            except OSError as e:
                if self.stopping:
                    return
                if e.errno in (errno.ECONNABORTED, errno.EINTR):
                    continue
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log('accept: %s; retrying' % e)
                    time.sleep(0.1)
                    continue
                log('accept: %s; thread stops' % e)
                return
            try:
                self._serve_conn(Conn(sock, buf, mv), st)
            except Exception:
                log_exc('internal error')
            finally:
                st.sock = None
                st.idle = False
                try:
                    sock.close()
                except OSError:
                    pass

    def _serve_conn(self, conn, st):
        st.sock = conn.sock
        while True:
            st.idle = True
            if self.stopping:
                return
            try:
                env = self._read_request(conn)
            except (ClientGone, OSError):
                return
            except BadRequest as e:
                log('bad request: %s' % e)
                try:
                    conn.sock.sendall(ERROR_400)
                except OSError:
                    return
                # Whatever follows the packet (a body, or a next packet) is unread: linger,
                # so the peer gets the 400 and a FIN rather than a reset.
                self._linger(conn, 1 << 62)
                return
            st.idle = False
            if env is None:
                return
            if not self._handle(conn, env):
                return

    # -- one request --------------------------------------------------------------------------

    def _read_request(self, conn):
        # Usually one recv brings the whole head: Conn.fill only when it did not.
        p = conn.pos
        avail = conn.end - p
        if not avail:
            p = conn.pos = 0
            avail = conn.end = conn.sock.recv_into(conn.mv)
            if not avail:
                return None
        if avail < 4:
            if not conn.fill(4):
                return None
            p = conn.pos
            avail = conn.end - p
        mod1, size, mod2 = _unpack_head(conn.buf, p)
        if mod1 == MOD_COMPACT:
            # berth's proxy's NUL-separated vars (docs/internals.md)
            if avail < 4 + size:
                if not conn.fill(4 + size):
                    raise ClientGone('closed in request head')
                p = conn.pos
            p += 4
            conn.pos = e = p + size
            # PEP 3333: environ strings are bytes-as-latin-1
            s = conn.buf[p:e].decode('latin-1')
            parts = s.split('\0')
            n = len(parts) >> 1
            if len(parts) & 1 == 0 or parts[-1]:
                raise BadRequest('compact vars: %d strings, not key/value pairs each ending in NUL'
                                 % (len(parts) - 1))
            # A proxy sends the same var names in the same order request after request: when they
            # equal those of a request already served (so they are valid names, each once), the
            # environ is a copy of that request's, its values replaced. Copying a dict that
            # already holds every key, and updating keys whose hashes are known, costs less than
            # building the vars dict, checking its names and merging it into the base environ.
            keys = parts[::2]
            same = self.layouts.get(n)
            layout = None
            if same is not None:
                if same[0][0] == keys:
                    layout = same[0]
                else:
                    for c in same:
                        if c[0] == keys:
                            layout = c
                            break
            # No key or value holds a NUL here, and a key with CR or LF is no token: one scan of
            # the whole block for CR and LF replaces joining the values.
            if layout is not None and '\r' not in s and '\n' not in s:
                env = layout[1].copy()
                env.update(zip(layout[0], parts[1::2]))
                _check_vars(env)  # none of the vars it reads is in self.base
                if layout[2]:
                    return env  # none of the adjustments below applies to these names
            else:
                it = iter(parts)
                d = dict(zip(it, it))
                if len(d) != n:
                    raise BadRequest('compact vars: a key is given twice')
                if '\r' in s or '\n' in s or not _good_names.issuperset(d):
                    _check_each_var(d)
                _check_vars(d)
                env = self.base.copy()
                env.update(d)
                if layout is None and (same is not None or len(self.layouts) < 64):
                    # Blanked: a cached environ must not keep a request's cookies alive.
                    tmpl = env.copy()
                    tmpl.update(dict.fromkeys(d, ''))
                    # A few per count: two kinds of clients whose header sets differ only by
                    # name must not evict each other on every request. A new tuple, not an
                    # insert, so that another thread's loop over the old one is undisturbed.
                    plain = 'PATH_INFO' in d and _ADJUSTED.isdisjoint(d)
                    self.layouts[n] = ((keys, tmpl, plain),) + (same or ())[:3]
        else:
            # modifier1 30 is nginx's old "strip SCRIPT_NAME" request, which berth always does.
            if mod1 != 0 and mod1 != 30:
                raise BadRequest('uwsgi modifier1 %d is not WSGI (want 0)' % mod1)
            if not conn.fill(4 + size):
                raise ClientGone('closed in request head')
            p = conn.pos + 4
            conn.pos = p + size
            data = bytes(conn.mv[p:p + size])
            s = data.decode('latin-1')  # PEP 3333: environ strings are bytes-as-latin-1
            d = {}
            i = n = 0
            try:
                while i < size:
                    j = i + 2 + (data[i] | data[i + 1] << 8)
                    e = j + 2 + (data[j] | data[j + 1] << 8)
                    d[s[i + 2:j]] = s[j + 2:e]
                    i = e
                    n += 1
            except IndexError:
                i = -1
            if i != size:
                raise BadRequest('uwsgi var %d runs past the end of the %d-byte vars block' % (n + 1, size))
            if len(d) != n:
                d = _merge_repeated(data, s)
            values = ''.join(d.values())
            if not _good_names.issuperset(d) or '\0' in values or '\r' in values or '\n' in values:
                _check_each_var(d)
            _check_vars(d)
            env = self.base.copy()
            env.update(d)
        # nginx passes Content-Type/-Length twice (also as HTTP_*); PEP 3333 wants them once.
        if 'HTTP_CONTENT_TYPE' in env:
            del env['HTTP_CONTENT_TYPE']
        if 'HTTP_CONTENT_LENGTH' in env:
            del env['HTTP_CONTENT_LENGTH']
        if 'PATH_INFO' not in env:
            uri = env.get('REQUEST_URI', '/')
            path, _, query = uri.partition('?')
            env['PATH_INFO'] = unquote_to_bytes(path.encode('latin-1')).decode('latin-1')
            if '\0' in env['PATH_INFO']:
                raise BadRequest('REQUEST_URI %r decodes to a path with NUL' % uri[:100])
            if query and not env['QUERY_STRING']:
                env['QUERY_STRING'] = query
        sn = env['SCRIPT_NAME']
        if sn:
            sn = sn.rstrip('/')
            env['SCRIPT_NAME'] = sn
            pi = env['PATH_INFO']
            n = len(sn)
            if pi.startswith(sn) and (len(pi) == n or pi[n] == '/'):
                env['PATH_INFO'] = pi[n:]
        if 'HTTPS' in env:
            if env['HTTPS'].lower() in ('on', '1', 'true', 'yes'):
                env['wsgi.url_scheme'] = 'https'
        if 'UWSGI_SCHEME' in env:
            if env['UWSGI_SCHEME'] in ('http', 'https'):
                env['wsgi.url_scheme'] = env['UWSGI_SCHEME']
        return env

    def _handle(self, conn, env):
        """Run the app for one request; True when the connection can carry another."""
        keepalive = env.pop('BERTH_KEEPALIVE', None) == '1'
        clen = env.get('CONTENT_LENGTH')
        length = int(clen) if clen else 0  # _check_vars saw digits only
        inp = Input(conn, length) if length else _NO_BODY
        env['wsgi.input'] = inp
        resp = Response(conn.sock, keepalive, env['REQUEST_METHOD'] == 'HEAD')
        result = t = None
        try:
            result = self.app(env, resp.start_response)
            t = type(result)
            if (t is list or t is tuple) and not resp.sent and resp.status is not None and \
                    resp.send_list(result):
                pass
            elif t is FileWrapper and not resp.sent and resp.status is not None and \
                    resp.send_file(result):
                pass
            else:
                write = resp.write
                for data in result:
                    if data:
                        write(data)
                resp.finish()
        except ClientGone:
            resp.close = True
        except BaseException:
            self._app_error(env, resp)
        finally:
            if not keepalive:
                resp.close = True
            if t is not list and result is not None and hasattr(result, 'close'):
                try:
                    result.close()
                except BaseException:
                    log_exc('error closing the response of %s' % _what(env))
        left = inp.remaining
        if left:
            # An app still holding wsgi.input must never read into the next request.
            inp.remaining = 0
        if resp.close:
            if left:
                self._linger(conn, left)
            return False
        if left:
            try:
                conn.discard(left)
            except (ClientGone, OSError):
                return False
        return not self.stopping

    def _app_error(self, env, resp):
        log_exc('error in app handling %s' % _what(env))
        if resp.sent:
            resp.close = True  # a truncated response is the only honest signal left
            return
        try:
            resp.sock.sendall(ERROR_500 if resp.head_req else ERROR_500 + ERROR_500_BODY)
        except OSError:
            resp.close = True

    def _linger(self, conn, remaining):
        """Before closing with unread body bytes: tell the peer we are done, then read the rest
        (for at most LINGER seconds), so the kernel sends FIN rather than RST, which would make
        nginx drop the response it has already received."""
        s = conn.sock
        deadline = time.monotonic() + LINGER
        try:
            s.shutdown(socket.SHUT_WR)
            remaining -= min(remaining, conn.end - conn.pos)
            while remaining > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                s.settimeout(left)
                n = s.recv_into(conn.mv, min(remaining, len(conn.mv)))
                if not n:
                    return
                remaining -= n
        except OSError:
            pass


def _merge_repeated(data, s):
    """Vars with repeated names (a header sent twice): join them as HTTP does."""
    d = {}
    i = 0
    while i < len(data):
        j = i + 2 + (data[i] | data[i + 1] << 8)
        e = j + 2 + (data[j] | data[j + 1] << 8)
        k, v = s[i + 2:j], s[j + 2:e]
        i = e
        if k in d:
            if k[:5] == 'HTTP_':
                v = d[k] + ('; ' if k == 'HTTP_COOKIE' else ', ') + v
            elif k == 'CONTENT_LENGTH' and v != d[k]:
                # Which one frames the body? Guessing is how requests get smuggled.
                raise BadRequest('CONTENT_LENGTH sent twice, %r and %r' % (d[k][:30], v[:30]))
        d[k] = v
    return d


def _check_vars(d):
    """Raise BadRequest unless the vars of one request may reach the app (docs/internals.md,
    "Malformed packets"), once each name and value has passed _check_each_var or the caller's
    C-speed scans that stand for it."""
    method = d.get('REQUEST_METHOD')
    if method not in _good_methods:
        if method is None:
            raise BadRequest('no REQUEST_METHOD')
        if not _token(method):
            raise BadRequest('REQUEST_METHOD %r is not an HTTP method (a token)' % method[:30])
        if len(_good_methods) < 64:
            _good_methods.add(method)
    if 'PATH_INFO' not in d and 'REQUEST_URI' not in d:
        raise BadRequest('neither PATH_INFO nor REQUEST_URI is set')
    clen = d.get('CONTENT_LENGTH')
    # 1*DIGIT (RFC 9110 8.6): int() alone would take '+5', ' 5', '5_0' and unbounded lengths.
    if clen and not (_digits(clen) and len(clen.lstrip('0')) <= 19 and int(clen) <= MAX_CONTENT_LENGTH):
        raise BadRequest('CONTENT_LENGTH %r is not a length (digits only, at most 2^63-1)' % clen[:30])


def _check_each_var(d):
    """The slow path of _check_vars: find the var at fault and say why."""
    for k, v in d.items():
        if not k:
            raise BadRequest('uwsgi var with an empty name')
        if not _token(k):
            raise BadRequest('uwsgi var name %r is not a CGI variable name (an HTTP token)' % k[:60])
        if k.startswith('wsgi.'):
            raise BadRequest('uwsgi var %r: the wsgi. names are the server\'s own (PEP 3333)' % k[:60])
        if len(_good_names) < 1024:
            _good_names.add(k)
        if k == 'PATH_INFO' or k == 'SCRIPT_NAME':
            # nginx sends them percent-decoded: CR and LF were escaped on the wire (%0D, %0A);
            # a NUL nginx refuses itself (400 for %00).
            if '\0' in v:
                raise BadRequest('%s %r holds NUL' % (k, v[:100]))
        elif _nul_cr_lf(v):
            raise BadRequest('uwsgi var %s: value %r holds NUL, CR or LF' % (k, v[:100]))


def _what(env):
    return '%s %s' % (env.get('REQUEST_METHOD', '?'), env.get('REQUEST_URI') or
                      env.get('SCRIPT_NAME', '') + env.get('PATH_INFO', ''))


def _flush():
    for f in (sys.stdout, sys.stderr):
        try:
            f.flush()
        except Exception:
            pass


def _exit_now(signum, frame):
    _flush()
    os._exit(0)


# -- start-up -------------------------------------------------------------------------------------

def setup_path():
    chdir = os.environ.get('BERTH_CHDIR', '')
    extra = [p for p in os.environ.get('BERTH_PYTHONPATH', '').split(os.pathsep) if p]
    if chdir:
        os.chdir(chdir)
        extra.insert(0, os.getcwd())
    for p in reversed(extra):
        sys.path.insert(0, p)


def load_app(spec):
    """Import `module:callable` (callable may be dotted; default `application`) or exit 4."""
    module, _, attr = spec.partition(':')
    attr = attr or 'application'
    try:
        obj = importlib.import_module(module)
        for part in attr.split('.'):
            obj = getattr(obj, part)
        if not callable(obj):
            raise TypeError('%s is a %s, not a WSGI callable' % (spec, type(obj).__name__))
    except BaseException:
        log('cannot load the app %r (set app.module, app.chdir or app.pythonpath):\n%s'
            % (spec, traceback.format_exc()))
        _flush()
        os._exit(EXIT_IMPORT)
    return obj


def app_interface(app, spec):
    """'wsgi' or 'asgi' for the loaded callable, by BERTH_INTERFACE (wsgi, asgi or auto).

    auto: a coroutine function (or an object whose __call__ is one) or a callable taking three
    positional arguments (scope, receive, send) is ASGI; one taking two (environ, start_response)
    is WSGI; otherwise a module named asgi means ASGI. A forced interface the callable plainly
    does not speak exits 4, as an import error does: every request would fail."""
    want = os.environ.get('BERTH_INTERFACE', 'auto') or 'auto'
    if want not in ('auto', 'wsgi', 'asgi'):
        log('BERTH_INTERFACE=%r: want auto, wsgi or asgi' % want)
        _flush()
        os._exit(EXIT_USAGE)
    seen = _callable_kind(app)
    if want != 'auto':
        if seen is not None and seen != want:
            log('app.interface is %s, but %s looks like a%s %s callable (%s); set app.interface to '
                '%s or auto' % (want, spec, 'n' if seen == 'asgi' else '', seen.upper(),
                                'async, (scope, receive, send)' if seen == 'asgi'
                                else '(environ, start_response)', seen))
            _flush()
            os._exit(EXIT_IMPORT)
        return want
    if seen is not None:
        return seen
    module = spec.partition(':')[0]
    return 'asgi' if module.rpartition('.')[2] == 'asgi' else 'wsgi'


def _callable_kind(app):
    import inspect
    call = app if inspect.isfunction(app) or inspect.ismethod(app) else getattr(app, '__call__', None)
    if inspect.isclass(app):
        call = getattr(app, '__init__', None)  # a class called per request: its instances answer
    if inspect.iscoroutinefunction(call) or inspect.iscoroutinefunction(app):
        return 'asgi'
    try:
        params = inspect.signature(call if call is not None else app).parameters.values()
    except (TypeError, ValueError):
        return None
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
                  and p.name != 'self']
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return None
    if len(positional) == 3:
        return 'asgi'
    if len(positional) == 2:
        return 'wsgi'
    return None


def bind_socket(path):
    """Bind and listen on the unix socket path, born 0600 (only the proxy, the same user, may
    connect); returns (socket, inode) so the socket is removed at exit only if still ours."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        s.bind(path)
    finally:
        os.umask(old)
    s.listen(BACKLOG)
    return s, os.stat(path).st_ino


def serve_asgi(app, wid, lsock):
    """Hand the bound socket to the asyncio worker (berth_asgi.py, next to this file)."""
    import berth_asgi
    berth_asgi._log_prefix = _log_prefix
    berth_asgi.serve(app, wid, lsock, notify)


def threads_from_env():
    raw = os.environ.get('BERTH_THREADS', '1') or '1'
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if n < 1:
        log('BERTH_THREADS=%r: want a number >= 1' % raw)
        _flush()
        os._exit(EXIT_USAGE)
    return n


def need_env(name):
    v = os.environ.get(name, '')
    if not v:
        log('%s is not set (the supervisor sets it)' % name)
        _flush()
        os._exit(EXIT_USAGE)
    return v


def main_serve():
    wid = need_env('BERTH_WORKER_ID')
    set_log_id(wid)
    path = need_env('BERTH_SOCKET')
    threads = threads_from_env()
    spec = need_env('BERTH_APP')
    app = load_app(spec)
    kind = app_interface(app, spec)
    w = Worker(app, wid, path, threads)
    try:
        w.bind()
    except OSError as e:
        log('cannot listen on %s: %s' % (path, e))
        _flush()
        os._exit(1)
    if kind == 'asgi':
        serve_asgi(app, wid, w.lsock)
    w.serve()


def main_zygote():
    set_log_id('zygote')
    try:
        fd = int(need_env('BERTH_ZYGOTE_FD'))
        zsock = socket.socket(fileno=fd)
    except (ValueError, OSError) as e:
        log('BERTH_ZYGOTE_FD: %s' % e)
        _flush()
        os._exit(EXIT_USAGE)
    threads = threads_from_env()
    spec = need_env('BERTH_APP')
    app = load_app(spec)
    kind = app_interface(app, spec)
    if kind == 'asgi':
        import asyncio  # noqa: F401  (imported once here, shared by every forked worker)
        import berth_asgi  # noqa: F401
    global _prctl
    _prctl = _load_prctl()
    _warm_django()
    # Objects imported so far are never touched again by the collector: forked workers keep
    # sharing those pages copy-on-write.
    gc.freeze()
    notify('READY=1\nBERTH_ZYGOTE=1\nMAINPID=%d' % os.getpid())
    rfile = zsock.makefile('rb')
    for line in rfile:
        if not line.strip():
            continue
        wid = ''
        try:
            cmd = json.loads(line)
            wid = str(cmd.get('id', ''))
            if not wid or not cmd.get('socket'):
                raise ValueError('command needs "id" and "socket"')
            # The supervisor moves the worker into its cgroup (it may write
            # cgroup.procs; this process, as app.user, may not).
            reply = {'id': wid, 'pid': fork_worker(app, threads, zsock, rfile, wid,
                                                   str(cmd['socket']), kind)}
        except Exception as e:
            reply = {'id': wid, 'error': str(e) or type(e).__name__}
            log('cannot start worker %s: %s' % (wid or '?', reply['error']))
        try:
            zsock.sendall(json.dumps(reply).encode() + b'\n')
        except OSError as e:
            log('cannot answer the supervisor: %s' % e)
            break
    _flush()
    os._exit(0)


def _warm_django():
    """Import a Django project's URLconf (and so its views) in the zygote.

    Django resolves its URLconf lazily, on a process's first request: every
    forked worker would pay for it (2-3 ms, and the copy-on-write faults of
    the modules it imports) on each recycle or roll. Importing is what that
    first request would do anyway; a failure is left for it to report."""
    if 'django' not in sys.modules:
        return
    try:
        from django.urls import get_resolver
        get_resolver().url_patterns
    except Exception:
        pass


def _load_prctl():
    try:
        import ctypes
        return ctypes.CDLL(None, use_errno=True).prctl
    except Exception:
        return None


# Loaded in the zygote, before any fork: a worker pays nothing for it.
_prctl = None


def _die_with_supervisor(intermediate):
    """Ask the kernel to SIGKILL this worker when the supervisor dies.

    The intermediate parent of the double fork exits at once; the death
    signal must be set only after we are reparented to the supervisor, or
    that exit would deliver it."""
    deadline = time.monotonic() + 1.0
    while os.getppid() == intermediate and time.monotonic() < deadline:
        time.sleep(0.0005)
    if _prctl is not None:
        _prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


def fork_worker(app, threads, zsock, rfile, wid, path, kind='wsgi'):
    """Double-fork a worker; return its pid once it listens (or raise with its error)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            # The worker must know this process's pid: asking getppid() after the
            # fork races with this process's exit, and a worker that read the
            # supervisor's pid there waited a second for a reparenting that had
            # already happened.
            intermediate = os.getpid()
            if os.fork() == 0:
                _worker_child(app, threads, zsock, rfile, w, wid, path, kind, intermediate)
            os._exit(0)  # the worker is orphaned and reparented to the supervisor
        except BaseException as e:
            try:
                os.write(w, ('fork: %s' % e).encode())
            finally:
                os._exit(1)
    os.close(w)
    chunks = []
    while True:
        b = os.read(r, 4096)
        if not b:
            break
        chunks.append(b)
    os.close(r)
    os.waitpid(pid, 0)
    msg = b''.join(chunks).decode(errors='replace').strip()
    if msg.isdigit():
        return int(msg)
    raise RuntimeError(msg or 'worker died before it could listen')


def _worker_child(app, threads, zsock, rfile, w, wid, path, kind, intermediate):
    try:
        set_log_id(wid)
        os.environ['BERTH_WORKER_ID'] = wid
        rfile.close()
        zsock.close()
        random.seed()
        worker = Worker(app, wid, path, threads)
        worker.bind()
        os.write(w, str(os.getpid()).encode())
        os.close(w)
        _die_with_supervisor(intermediate)
    except BaseException as e:
        try:
            os.write(w, ('worker %s: %s' % (wid, e)).encode())
        finally:
            _flush()
            os._exit(1)
    try:
        if kind == 'asgi':
            serve_asgi(app, wid, worker.lsock)
        worker.serve()
    finally:
        os._exit(1)


def main(argv):
    mode = argv[1] if len(argv) == 2 else ''
    if mode not in ('serve', 'zygote'):
        sys.stderr.write('usage: berth_worker.py serve|zygote (started by berth run)\n')
        return EXIT_USAGE
    faulthandler.enable(file=sys.stderr, all_threads=True)
    faulthandler.register(signal.SIGUSR2, file=sys.stderr, all_threads=True)
    # Until serving starts there is nothing in progress to finish: any stop signal exits now.
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
        signal.signal(sig, _exit_now)
    setup_path()
    if mode == 'serve':
        main_serve()
    else:
        main_zygote()
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv))
