"""The Starlette app of tests/asgi_test.go: JSON, a body read in chunks, server-sent events,
websockets and lifespan, each endpoint saying which worker generation (GEN) served it."""
import asyncio
import os
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocketDisconnect

GEN = os.environ.get('GEN', '')
MARKS = os.environ.get('MARKS', '')  # a directory: lifespan events leave files there
STARTED = {'count': 0}


def mark(name):
    if MARKS:
        with open(os.path.join(MARKS, '%s.%d' % (name, os.getpid())), 'w') as f:
            f.write(GEN)


@asynccontextmanager
async def lifespan(app):
    STARTED['count'] += 1
    mark('startup')
    yield
    mark('shutdown')


async def hello(request):
    return JSONResponse({'hello': 'world', 'gen': GEN, 'started': STARTED['count'],
                         'pid': os.getpid(), 'query': request.url.query,
                         'client': request.client.host if request.client else None})


async def echo_json(request):
    data = await request.json()
    return JSONResponse({'got': data, 'gen': GEN})


async def upload(request):
    n = chunks = 0
    async for c in request.stream():
        n += len(c)
        chunks += 1
    return JSONResponse({'bytes': n, 'chunks': chunks})


async def events(request):
    count = int(request.query_params.get('n', '3'))
    every = float(request.query_params.get('every', '1'))

    async def gen():
        for i in range(count):
            yield 'id: %d\ndata: {"n": %d, "gen": "%s"}\n\n' % (i, i, GEN)
            if i + 1 < count:
                await asyncio.sleep(every)
    return StreamingResponse(gen(), media_type='text/event-stream')


async def fail(request):
    raise RuntimeError('boom')


async def ws_echo(websocket):
    subs = websocket.scope.get('subprotocols') or []
    await websocket.accept(subprotocol='echo.v1' if 'echo.v1' in subs else None,
                           headers=[(b'x-gen', GEN.encode())])
    await websocket.send_text('hello ' + GEN)
    tag = websocket.query_params.get('tag')
    received = 0
    try:
        while True:
            msg = await websocket.receive()
            if msg['type'] == 'websocket.disconnect':
                return
            text = msg.get('text')
            received += 1
            if text is not None:
                if text.startswith('close '):
                    _, code, reason = text.split(' ', 2)
                    await websocket.close(int(code), reason)
                    return
                await websocket.send_text(text)
            else:
                await websocket.send_bytes(msg['bytes'])
    except WebSocketDisconnect:
        return
    finally:
        if tag and MARKS:
            # How many messages this connection handed the app: the test
            # checks the client got an answer to each. Written whole, then
            # renamed: the test may look as soon as the name exists.
            path = os.path.join(MARKS, 'ws.' + tag)
            with open(path + '.tmp', 'w') as f:
                f.write(str(received))
            os.rename(path + '.tmp', path)


async def ws_refuse(websocket):
    await websocket.close(code=1008)


async def ws_client_close(websocket):
    """Reports, on /ws-last, the close code and reason the client sent."""
    await websocket.accept()
    msg = await websocket.receive()
    LAST['close'] = [msg.get('code'), msg.get('reason', '')]


LAST = {}


async def ws_last(request):
    return JSONResponse(LAST)


app = Starlette(routes=[
    Route('/', hello),
    Route('/json', echo_json, methods=['POST']),
    Route('/upload', upload, methods=['POST']),
    Route('/events', events),
    Route('/fail', fail),
    Route('/ws-last', ws_last),
    WebSocketRoute('/ws', ws_echo),
    WebSocketRoute('/ws-refuse', ws_refuse),
    WebSocketRoute('/ws-client-close', ws_client_close),
], lifespan=lifespan)
