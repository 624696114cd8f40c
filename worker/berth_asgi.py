"""berth ASGI worker: serves one ASGI 3 app (HTTP, WebSocket and lifespan) on one asyncio event loop.

berth_worker.py imports this module once it knows the app is ASGI (app.interface, or "auto" and the
callable takes (scope, receive, send)); the zygote, the fork and the signals are berth_worker.py's.
The proxy talks to the worker over its unix socket with berth's multiplexed framing: many requests
and websockets on one connection, each a stream of frames, with a credit window per stream in each
direction so that neither a slow client nor a slow app makes the other side buffer without bound.
The contract is docs/internals.md, "ASGI workers". Standard library only, Python >= 3.9.
"""

import asyncio
import collections
import os
import signal
import struct
import sys
import traceback

# Frame types (docs/internals.md, "ASGI framing").
REQUEST = 1     # proxy -> worker: a new stream: flags byte, then NUL-separated head fields
BODY = 2        # both: data, more follows (request body / response body)
END = 3         # both: the last data of the sender's half
TEXT = 4        # both: one websocket text message (UTF-8)
BINARY = 5      # both: one websocket binary message
WINDOW = 6      # both: u32 credit, bytes of BODY/END/TEXT/BINARY payload the peer may send more
DISCONNECT = 7  # proxy -> worker: u16 code + reason: the client went away; the proxy forgot the stream
GOAWAY = 8      # proxy -> worker: u16 code: end this websocket or stream (a drain), answer CLOSE/END
START = 9       # worker -> proxy: u16 status, then NUL-separated header names and values
ACCEPT = 10     # worker -> proxy: subprotocol, then NUL-separated header names and values
CLOSE = 11      # worker -> proxy: u16 code + reason: the app closed the websocket (before accept: 403)
ABORT = 12      # worker -> proxy: the app failed: 500 before START/ACCEPT, else the connection is cut

FLAG_WEBSOCKET = 1  # REQUEST flags: a websocket handshake, not an HTTP request
FLAG_BODY = 2       # REQUEST flags: BODY/END frames follow (else the request has no body)

_hdr = struct.Struct('>IBI')  # length of what follows the length field, type, stream id
_u16 = struct.Struct('>H')
_u32 = struct.Struct('>I')
HDR = _hdr.size

# Credit each side starts with per stream, per direction. Both sides use the same constant.
WINDOW_SIZE = 256 * 1024
# A response body or message larger than this is sent in frames of this size, each within the window.
SEND_CHUNK = 256 * 1024
# A frame longer than this is a protocol error: the connection is dropped.
MAX_FRAME = 64 << 20

HEAD_FIELDS = 10  # method, scheme, raw_path, path, query, client host/port, server host/port, version

_log_prefix = 'berth worker %s: ' % os.environ.get('BERTH_WORKER_ID', '?')


def log(msg):
    if not msg.endswith('\n'):
        msg += '\n'
    try:
        sys.stderr.write(_log_prefix + msg)
    except Exception:
        pass


def _flush():
    for f in (sys.stdout, sys.stderr):
        try:
            f.flush()
        except Exception:
            pass


class ClientDisconnected(OSError):
    """send() on a websocket the client (or a drain) has closed, as the ASGI spec asks (an OSError)."""


class LifespanFailed(Exception):
    pass


ASGI_VERSION = {'version': '3.0', 'spec_version': '2.3'}
HTTP_DISCONNECT = {'type': 'http.disconnect'}


def _flat_headers(headers):
    """ASGI headers as NUL-joined bytes; a NUL, CR or LF inside one would break the framing."""
    flat = []
    for pair in headers:
        name, value = pair
        if type(name) is not bytes:
            name = bytes(name)
        if type(value) is not bytes:
            value = bytes(value)
        flat.append(name)
        flat.append(value)
    joined = b'\0'.join(flat)
    if flat and (joined.count(b'\0') != len(flat) - 1 or b'\r' in joined or b'\n' in joined):
        raise ValueError('response header with NUL, CR or LF: %r' % (flat,))
    return joined


class Stream:
    """One HTTP request or websocket on a multiplexed connection."""

    __slots__ = ('mux', 'sid', 'ws', 'events', 'waiter', 'window', 'credit_waiter', 'gone',
                 'started', 'finished', 'accepted', 'closed', 'start_payload', 'goaway', 'task',
                 'disconnect_sent')

    def __init__(self, mux, sid, ws):
        self.mux = mux
        self.sid = sid
        self.ws = ws
        self.events = collections.deque()
        self.waiter = None  # future a receive() waits on
        self.window = WINDOW_SIZE  # what we may still send
        self.credit_waiter = None
        self.gone = False  # the proxy forgot the stream (DISCONNECT) or the connection is lost
        self.started = False  # http: START sent (or held in start_payload)
        self.finished = False  # http: END sent; ws: CLOSE sent
        self.accepted = False
        self.closed = False  # ws: the app sent websocket.close
        self.start_payload = None  # http.response.start held until the first body
        self.goaway = 0  # a drain asked this stream to end with this code
        self.task = None
        self.disconnect_sent = False  # the app has been given its disconnect event

    # -- from the proxy ---------------------------------------------------------------------------

    def push(self, ev):
        self.events.append(ev)
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    def credit(self, n):
        self.window += n
        w = self.credit_waiter
        if w is not None and not w.done():
            w.set_result(None)

    def lost(self, code, reason=''):
        """The client is gone: the app's next receive() says so, its sends are dropped."""
        if self.gone:
            return
        self.gone = True
        if self.ws:
            self.push({'type': 'websocket.disconnect', 'code': code, 'reason': reason})
        else:
            self.push(HTTP_DISCONNECT)
        w = self.credit_waiter
        if w is not None and not w.done():
            w.set_result(None)

    # -- the app's receive ------------------------------------------------------------------------

    async def receive(self):
        while True:
            ev = self._next()
            if ev is not None:
                return ev
            self.waiter = self.mux.loop.create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None

    def _next(self):
        events = self.events
        if events:
            ev = events.popleft()
            if type(ev) is tuple:
                kind, data = ev
                if kind == BODY:
                    if data:
                        self.mux.send_frame(WINDOW, self.sid, _u32.pack(len(data)))
                    return {'type': 'http.request', 'body': data, 'more_body': True}
                if kind == END:
                    return {'type': 'http.request', 'body': data, 'more_body': False}
                self.mux.send_frame(WINDOW, self.sid, _u32.pack(len(data)))
                if kind == TEXT:
                    return {'type': 'websocket.receive', 'text': data.decode('utf-8', 'replace')}
                return {'type': 'websocket.receive', 'bytes': data}
            t = ev['type']
            if t == 'websocket.disconnect' or t == 'http.disconnect':
                self.disconnect_sent = True
                # Every later receive() says the same.
                events.append(ev)
            return ev
        if not self.ws and self.finished and not self.gone:
            # The response is complete: the request is over for the app too.
            self.disconnect_sent = True
            return HTTP_DISCONNECT
        return None

    # -- the app's send ---------------------------------------------------------------------------

    async def send(self, msg):
        t = msg['type']
        if t == 'http.response.body':
            await self._body(msg.get('body', b''), msg.get('more_body', False))
        elif t == 'http.response.start':
            if self.started:
                raise RuntimeError('http.response.start sent twice')
            status = msg['status']
            if type(status) is not int or not 100 <= status <= 999:
                raise ValueError('http.response.start: status %r is not an HTTP status' % (status,))
            if status < 200:
                raise ValueError('http.response.start: status %d: want a final status' % status)
            self.start_payload = _u16.pack(status) + _flat_headers(msg.get('headers', ()))
            self.started = True
        elif t == 'websocket.accept':
            await self._accept(msg)
        elif t == 'websocket.send':
            await self._ws_send(msg)
        elif t == 'websocket.close':
            self._ws_close(msg.get('code', 1000), msg.get('reason') or '')
        elif t == 'http.response.trailers':
            pass  # not asked for: the scope offers no extensions
        else:
            raise ValueError('unknown ASGI message type %r for a %s scope'
                             % (t, 'websocket' if self.ws else 'http'))

    async def _wait_credit(self):
        while self.window <= 0 and not self.gone:
            self.credit_waiter = self.mux.loop.create_future()
            try:
                await self.credit_waiter
            finally:
                self.credit_waiter = None
        if self.mux.paused and not self.gone:
            await self.mux.drained()

    async def _body(self, body, more):
        if self.ws:
            raise ValueError('http.response.body on a websocket scope')
        if not self.started:
            raise RuntimeError('http.response.body sent before http.response.start')
        if self.finished:
            raise RuntimeError('http.response.body sent after the response was complete')
        if type(body) is not bytes:
            body = bytes(body)
        if self.gone:
            return  # the client left: nothing to do (uvicorn drops these too)
        mux = self.mux
        head = self.start_payload
        if head is not None:
            self.start_payload = None
            if not more and len(body) <= SEND_CHUNK:
                # The common case: status, headers and the whole body in one write.
                self.finished = True
                mux.send_frames2(START, head, END, self.sid, body)
                self._done_http()
                return
            mux.send_frame(START, self.sid, head)
        while len(body) > SEND_CHUNK:
            await self._wait_credit()
            if self.gone:
                return
            piece, body = body[:SEND_CHUNK], body[SEND_CHUNK:]
            self.window -= len(piece)
            mux.send_frame(BODY, self.sid, piece)
        if more:
            if not body:
                return
            await self._wait_credit()
            if self.gone:
                return
            self.window -= len(body)
            mux.send_frame(BODY, self.sid, body)
            return
        if self.gone:
            return
        self.finished = True
        mux.send_frame(END, self.sid, body)
        self._done_http()

    def _done_http(self):
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)  # a receive() waiting for the disconnect gets it now

    async def _accept(self, msg):
        if not self.ws:
            raise ValueError('websocket.accept on an http scope')
        if self.accepted or self.closed:
            raise RuntimeError('websocket.accept after the websocket was accepted or closed')
        sub = (msg.get('subprotocol') or '').encode('latin-1')
        if b'\0' in sub:
            raise ValueError('websocket.accept: subprotocol %r holds NUL' % sub)
        headers = msg.get('headers') or ()
        payload = sub + b'\0' + _flat_headers(headers) if headers else sub
        self.accepted = True
        if self.gone:
            return
        self.mux.send_frame(ACCEPT, self.sid, payload)

    async def _ws_send(self, msg):
        if not self.accepted:
            raise RuntimeError('websocket.send before websocket.accept')
        if self.closed or self.gone or self.finished:
            raise ClientDisconnected('websocket.send on a closed websocket')
        text = msg.get('text')
        if text is not None:
            typ, data = TEXT, text.encode('utf-8')
        else:
            data = msg.get('bytes')
            if data is None:
                raise ValueError('websocket.send needs text or bytes')
            typ = BINARY
        await self._wait_credit()
        if self.gone:
            raise ClientDisconnected('websocket.send on a closed websocket')
        self.window -= len(data)
        self.mux.send_frame(typ, self.sid, data)

    def _ws_close(self, code, reason):
        if not self.ws:
            raise ValueError('websocket.close on an http scope')
        if self.closed:
            return
        self.closed = True
        if self.gone or self.finished:
            return
        self.finished = True
        self.mux.send_frame(CLOSE, self.sid, _u16.pack(code) + reason.encode('utf-8'))

    # -- the app's end ----------------------------------------------------------------------------

    def done(self, task):
        mux = self.mux
        mux.streams.pop(self.sid, None)
        exc = None
        if not task.cancelled():
            exc = task.exception()
        if exc is not None and not (self.gone and isinstance(exc, OSError)):
            log('error in app handling %s:\n%s' % (
                'websocket' if self.ws else 'request',
                ''.join(traceback.format_exception(type(exc), exc, exc.__traceback__))))
        if not self.gone and not self.finished:
            if self.ws:
                if exc is not None or task.cancelled():
                    mux.send_frame(ABORT, self.sid, b'')
                elif not self.accepted:
                    # Returned without accepting: the handshake is refused (403).
                    mux.send_frame(CLOSE, self.sid, _u16.pack(1000))
                else:
                    mux.send_frame(CLOSE, self.sid, _u16.pack(self.goaway or 1000))
            elif exc is None and self.started and self.start_payload is None and self.goaway:
                # A stream the app ended because of a drain: end it cleanly.
                mux.send_frame(END, self.sid, b'')
            else:
                if exc is None:
                    log('app returned without %s the response' % (
                        'completing' if self.started else 'starting'))
                if self.start_payload is not None or not self.started:
                    mux.send_frame(START, self.sid, ERROR_500_HEAD)
                    mux.send_frame(END, self.sid, b'Internal Server Error\n')
                else:
                    mux.send_frame(ABORT, self.sid, b'')
            self.finished = True
        mux.worker.stream_ended()


ERROR_500_HEAD = _u16.pack(500) + b'content-type\0text/plain; charset=utf-8'


class Mux(asyncio.Protocol):
    """One connection from a proxy, carrying many streams."""

    def __init__(self, worker):
        self.worker = worker
        self.app = worker.app
        self.loop = worker.loop
        self.transport = None
        self.buf = None
        self.streams = {}
        self.paused = False
        self.drain_waiters = []

    def connection_made(self, transport):
        self.transport = transport
        self.worker.conns.add(self)

    def connection_lost(self, exc):
        self.worker.conns.discard(self)
        for s in list(self.streams.values()):
            s.lost(1006)
        self.streams.clear()
        self.paused = False
        self._wake_drain()

    def pause_writing(self):
        self.paused = True

    def resume_writing(self):
        self.paused = False
        self._wake_drain()

    def _wake_drain(self):
        ws, self.drain_waiters = self.drain_waiters, []
        for f in ws:
            if not f.done():
                f.set_result(None)

    async def drained(self):
        f = self.loop.create_future()
        self.drain_waiters.append(f)
        await f

    def send_frame(self, typ, sid, payload):
        t = self.transport
        if t is None or t.is_closing():
            return
        t.write(_hdr.pack(len(payload) + 5, typ, sid) + payload)

    def send_frames2(self, t1, p1, t2, sid, p2):
        t = self.transport
        if t is None or t.is_closing():
            return
        t.write(b''.join((_hdr.pack(len(p1) + 5, t1, sid), p1, _hdr.pack(len(p2) + 5, t2, sid), p2)))

    def data_received(self, data):
        if self.buf:
            self.buf += data
            data = self.buf
        n = len(data)
        pos = 0
        unpack = _hdr.unpack_from
        try:
            while n - pos >= HDR:
                length, typ, sid = unpack(data, pos)
                if length < 5 or length > MAX_FRAME:
                    raise ValueError('frame length %d' % length)
                end = pos + 4 + length
                if end > n:
                    break
                self.frame(typ, sid, bytes(data[pos + HDR:end]))
                pos = end
        except Exception:
            log('protocol error from the proxy; dropping its connection:\n' + traceback.format_exc())
            self.transport.abort()
            self.buf = None
            return
        if pos == n:
            self.buf = None
        elif type(data) is bytearray:
            del data[:pos]
        else:
            self.buf = bytearray(data[pos:])

    def frame(self, typ, sid, payload):
        if typ == REQUEST:
            self.request(sid, payload)
            return
        s = self.streams.get(sid)
        if s is None:
            return  # a stream that ended meanwhile (a late WINDOW, say)
        if typ == WINDOW:
            s.credit(_u32.unpack(payload)[0])
        elif typ == BODY or typ == END or typ == TEXT or typ == BINARY:
            s.push((typ, payload))
        elif typ == DISCONNECT:
            self.streams.pop(sid, None)
            if len(payload) >= 2:
                s.lost(_u16.unpack_from(payload)[0], payload[2:].decode('utf-8', 'replace'))
            else:
                s.lost(1006)
        elif typ == GOAWAY:
            code = _u16.unpack(payload)[0] if len(payload) >= 2 else 1012
            s.goaway = code
            if s.ws:
                s.push({'type': 'websocket.disconnect', 'code': code})
            else:
                s.push(HTTP_DISCONNECT)
        else:
            raise ValueError('unknown frame type %d' % typ)

    def request(self, sid, payload):
        flags = payload[0]
        parts = payload[1:].split(b'\0')
        if len(parts) < HEAD_FIELDS or (len(parts) - HEAD_FIELDS) % 2:
            raise ValueError('request head with %d fields' % len(parts))
        method, scheme, raw_path, path, query, chost, cport, shost, sport, version = parts[:HEAD_FIELDS]
        headers = list(zip(parts[HEAD_FIELDS::2], parts[HEAD_FIELDS + 1::2]))
        ws = flags & FLAG_WEBSOCKET
        scope = {
            'type': 'websocket' if ws else 'http',
            'asgi': ASGI_VERSION,
            'http_version': version.decode('latin-1'),
            'scheme': scheme.decode('latin-1'),
            'path': path.decode('utf-8', 'replace'),
            'raw_path': raw_path,
            'query_string': query,
            'root_path': '',
            'headers': headers,
            'client': (chost.decode('latin-1'), int(cport)) if cport else None,
            'server': (shost.decode('latin-1'), int(sport)) if sport else None,
        }
        state = self.worker.state
        if state is not None:
            scope['state'] = state.copy()
        s = Stream(self, sid, ws)
        if ws:
            subs = []
            for k, v in headers:
                if k == b'sec-websocket-protocol':
                    subs.extend(p.strip().decode('latin-1') for p in v.split(b',') if p.strip())
            scope['subprotocols'] = subs
            s.events.append({'type': 'websocket.connect'})
        else:
            scope['method'] = method.decode('latin-1')
            if not flags & FLAG_BODY:
                s.events.append((END, b''))
        self.streams[sid] = s
        self.worker.stream_started()
        task = self.loop.create_task(self.app(scope, s.receive, s.send))
        s.task = task
        task.add_done_callback(s.done)


class Worker:
    def __init__(self, app, wid, lsock):
        self.app = app
        self.wid = wid
        self.lsock = lsock
        self.loop = None
        self.conns = set()
        self.active = 0
        self.state = None  # lifespan state, copied into each scope
        self.stopping = False
        self.idle = None  # future set when the last stream ends during a stop
        self.lifespan = None

    def stream_started(self):
        self.active += 1

    def stream_ended(self):
        self.active -= 1
        if self.active == 0 and self.idle is not None and not self.idle.done():
            self.idle.set_result(None)

    async def run(self, notify):
        self.loop = asyncio.get_running_loop()
        self.lifespan = Lifespan(self.app)
        try:
            await self.lifespan.startup()
        except LifespanFailed as e:
            log('lifespan startup failed: %s' % e)
            _flush()
            os._exit(4)  # EXIT_IMPORT: the app cannot serve; respawning would fail the same way
        self.state = self.lifespan.state if self.lifespan.supported else None
        server = await self.loop.create_unix_server(lambda: Mux(self), sock=self.lsock)
        stop = self.loop.create_future()
        self.loop.add_signal_handler(signal.SIGTERM, lambda: stop.done() or stop.set_result(None))
        notify('READY=1\nBERTH_WORKER=%s\nMAINPID=%d\nBERTH_INTERFACE=asgi' % (self.wid, os.getpid()))
        await stop
        # SIGTERM: the proxy sends nothing new (the worker was drained, or berth stops). Open
        # websockets (left past the drain) are told to close with 1012; requests finish.
        self.stopping = True
        server.close()
        for c in list(self.conns):
            for s in list(c.streams.values()):
                if s.ws and not s.gone:
                    s.goaway = s.goaway or 1012
                    s.push({'type': 'websocket.disconnect', 'code': s.goaway})
        if self.active:
            self.idle = self.loop.create_future()
            await self.idle
        await self.lifespan.shutdown()
        for c in list(self.conns):
            if c.transport is not None:
                c.transport.close()


class Lifespan:
    """The lifespan protocol (asgiref lifespan.rst), "auto": an app that raises on the lifespan
    scope before answering does not support it, which is fine (Django's does not)."""

    def __init__(self, app):
        self.app = app
        self.state = {}
        self.supported = True
        self.inbox = None
        self.answer = None
        self.task = None

    async def startup(self):
        loop = asyncio.get_running_loop()
        self.inbox = asyncio.Queue()
        self.answer = loop.create_future()
        scope = {'type': 'lifespan', 'asgi': ASGI_VERSION, 'state': self.state}
        self.task = loop.create_task(self._run(scope))
        await self.inbox.put({'type': 'lifespan.startup'})
        await self.answer

    async def _run(self, scope):
        try:
            await self.app(scope, self.inbox.get, self._send)
        except BaseException as e:
            if self.answer is not None and not self.answer.done():
                self.supported = False
                log('the app does not support the lifespan protocol (%s: %s); going on without it'
                    % (type(e).__name__, e))
                self.answer.set_result(None)
            else:
                log('error in the app\'s lifespan handler:\n' + traceback.format_exc())
        else:
            if self.answer is not None and not self.answer.done():
                self.supported = False
                self.answer.set_result(None)

    async def _send(self, msg):
        t = msg['type']
        a = self.answer
        if a is None or a.done():
            return
        if t in ('lifespan.startup.complete', 'lifespan.shutdown.complete'):
            a.set_result(None)
        elif t in ('lifespan.startup.failed', 'lifespan.shutdown.failed'):
            a.set_exception(LifespanFailed(msg.get('message', '') or t))
        else:
            raise ValueError('unknown lifespan message type %r' % t)

    async def shutdown(self):
        if not self.supported or self.task is None or self.task.done():
            return
        self.answer = asyncio.get_running_loop().create_future()
        await self.inbox.put({'type': 'lifespan.shutdown'})
        try:
            await asyncio.wait_for(self.answer, 30)
        except LifespanFailed as e:
            log('lifespan shutdown failed: %s' % e)
        except asyncio.TimeoutError:
            log('lifespan shutdown did not finish within 30s')


def loop_policy():
    """uvloop's event loop when the app's Python has it (as Uvicorn's loop "auto" does), else
    asyncio's; BERTH_ASGI_LOOP=asyncio keeps asyncio's. berth itself needs only the stdlib."""
    if os.environ.get('BERTH_ASGI_LOOP', 'auto') == 'asyncio':
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.EventLoopPolicy()


def serve(app, wid, lsock, notify):
    """Serve on the bound, listening socket lsock until SIGTERM; never returns."""
    lsock.setblocking(False)
    policy = loop_policy()
    if policy is not None:
        asyncio.set_event_loop_policy(policy)
    worker = Worker(app, wid, lsock)
    try:
        asyncio.run(worker.run(notify))
    except BaseException:
        log('worker loop failed:\n' + traceback.format_exc())
        _flush()
        os._exit(1)
    _flush()
    os._exit(0)
