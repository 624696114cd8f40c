import asyncio
import os

from django.http import JsonResponse, StreamingHttpResponse


async def hello(request):
    await asyncio.sleep(0.01)  # an async view really awaits
    return JsonResponse({'view': 'async', 'path': request.path, 'q': request.GET.get('q', ''),
                         'pid': os.getpid()})


def _ticks(n):
    for i in range(n):
        yield ('tick %d\n' % i).encode()


async def stream(request):
    # Django's ASGI handler sends a StreamingHttpResponse piece by piece (an async iterator
    # needs Django 4.2; Debian bookworm has 3.2, whose ASGI handler iterates a sync one).
    return StreamingHttpResponse(_ticks(int(request.GET.get('n', '5'))), content_type='text/plain')
