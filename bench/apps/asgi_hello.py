"""The ASGI apps the berth and uvicorn stacks serve in the ASGI scenarios.

    application   raw ASGI: /  14-byte "Hello, world!"; /ws  websocket echo
    app           Starlette: /json  a small JSON document; /ws  websocket echo
"""
HELLO = b"Hello, world!\n"
HELLO_HEADERS = [(b"content-type", b"text/plain"), (b"content-length", b"14")]


async def application(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] == "websocket":
        await echo(receive, send)
        return
    await send({"type": "http.response.start", "status": 200, "headers": HELLO_HEADERS})
    await send({"type": "http.response.body", "body": HELLO})


async def echo(receive, send):
    msg = await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    while True:
        msg = await receive()
        if msg["type"] == "websocket.disconnect":
            return
        if msg.get("text") is not None:
            await send({"type": "websocket.send", "text": msg["text"]})
        else:
            await send({"type": "websocket.send", "bytes": msg["bytes"]})


try:
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route, WebSocketRoute

    DOC = {"id": 42, "name": "berth", "tags": ["asgi", "bench"], "ok": True, "ratio": 0.5}

    async def json_endpoint(request):
        return JSONResponse(DOC)

    async def ws_endpoint(websocket):
        await websocket.accept()
        try:
            while True:
                await websocket.send_text(await websocket.receive_text())
        except Exception:
            return

    app = Starlette(routes=[Route("/json", json_endpoint), WebSocketRoute("/ws", ws_endpoint)])
except ImportError:  # the raw app needs no Starlette
    app = None

