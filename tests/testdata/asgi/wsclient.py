"""The python3-websockets client of tests/asgi_test.go: one JSON line of results on stdout."""
import asyncio
import json
import sys

import websockets

BASE = sys.argv[1]  # ws://host:port


async def main():
    out = {}
    async with websockets.connect(BASE + '/ws', subprotocols=['echo.v1']) as ws:
        out['subprotocol'] = ws.subprotocol
        out['x_gen'] = ws.response_headers.get('x-gen')
        out['hello'] = await ws.recv()
        await ws.send('text message ü')
        out['text'] = await ws.recv()
        await ws.send(bytes(range(256)))
        b = await ws.recv()
        out['binary_ok'] = b == bytes(range(256))
        await ws.send('y' * 300000)
        out['big_len'] = len(await ws.recv())
        await ws.send('close 4001 app says bye')
        try:
            await ws.recv()
        except websockets.ConnectionClosed as e:
            out['app_close'] = [e.rcvd.code, e.rcvd.reason] if e.rcvd else None
    async with websockets.connect(BASE + '/ws-client-close') as ws:
        await ws.close(4002, 'client says bye')
    try:
        async with websockets.connect(BASE + '/ws-refuse') as ws:
            out['refused'] = 'accepted'
    except websockets.InvalidStatusCode as e:
        out['refused'] = e.status_code
    print(json.dumps(out))


asyncio.run(main())
