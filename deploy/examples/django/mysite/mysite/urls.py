import os

from django.http import JsonResponse
from django.urls import path


def index(request):
    return JsonResponse({"app": "django example", "pid": os.getpid(), "path": request.path})


def visit(request):
    # Handed to the Celery worker berth runs beside the web workers.
    from mysite.celery_app import record_visit
    r = record_visit.delay(request.path)
    return JsonResponse({"queued": r.id})


urlpatterns = [path("", index), path("visit", visit)]
