import os
import time

from django.http import HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.csrf import csrf_exempt


def plain(request):
    return HttpResponse("Hello from Django\n", content_type="text/plain")


def template(request):
    items = [{"n": i, "name": "item %d" % i} for i in range(20)]
    return render(request, "page.html", {"title": "berth template view", "items": items})


@csrf_exempt
def echo(request):
    return JsonResponse({
        "method": request.method,
        "path": request.path,
        "query": request.GET.dict(),
        "body_len": len(request.body),
        "remote": request.META.get("REMOTE_ADDR"),
        "scheme": request.scheme,
        "host": request.get_host(),
    })


def slow(request):
    time.sleep(float(request.GET.get("s", "1")))
    return HttpResponse("slept\n", content_type="text/plain")


def pid(request):
    return HttpResponse("%d\n" % os.getpid(), content_type="text/plain")


def enqueue(request):
    from mysite.celery_app import add
    r = add.delay(int(request.GET.get("x", "2")), int(request.GET.get("y", "3")))
    return HttpResponse(r.id, content_type="text/plain")


def result(request):
    from mysite.celery_app import app
    r = app.AsyncResult(request.GET["id"])
    return HttpResponse("%s %s" % (r.state, r.result if r.ready() else ""), content_type="text/plain")


# The response cache and compression (tests/edge_test.go).
from django.views.decorators.cache import cache_control  # noqa: E402

_served = {"n": 0}


@cache_control(max_age=60, public=True)
def cached(request):
    _served["n"] += 1
    return HttpResponse("cached view, rendered %d times by pid %d\n" % (_served["n"], os.getpid()), content_type="text/plain")


@cache_control(max_age=60)
def cached_cookie(request):
    _served["n"] += 1
    resp = HttpResponse("sets a cookie %d\n" % _served["n"], content_type="text/plain")
    resp.set_cookie("flavour", "oat")
    return resp


def served(request):
    return HttpResponse("%d\n" % _served["n"], content_type="text/plain")


def page(request):
    # About 50 KB of HTML, as a real page is.
    rows = "".join("<tr><td>row %d</td><td>some text that repeats a little</td></tr>\n" % i for i in range(800))
    return HttpResponse("<!doctype html><html><body><table>\n%s</table></body></html>\n" % rows)


@cache_control(max_age=1, public=True)
def micro(request):
    # The microcache bench scenario: a full Django view, fresh for 1 s.
    return render(request, "page.html", {"title": "microcached", "items": [{"n": i, "name": "item %d" % i} for i in range(20)]})


def request_id(request):
    # What the app sees of request tracing: berth's ID and the W3C context.
    return JsonResponse({
        "request_id": request.META.get("HTTP_X_REQUEST_ID"),
        "traceparent": request.META.get("HTTP_TRACEPARENT"),
    })
