import os

from django.http import JsonResponse
from django.urls import path


def index(request):
    return JsonResponse({"app": "django example", "pid": os.getpid(), "path": request.path})


urlpatterns = [path("", index)]
