from django.contrib import admin
from django.urls import path

from . import views

urlpatterns = [
    path("", views.plain),
    path("hello", views.plain),
    path("template", views.template),
    path("echo", views.echo),
    path("slow", views.slow),
    path("pid", views.pid),
    path("cached", views.cached),
    path("cached-cookie", views.cached_cookie),
    path("served", views.served),
    path("page", views.page),
    path("micro", views.micro),
    path("request-id", views.request_id),
    path("celery/enqueue", views.enqueue),
    path("celery/result", views.result),
    path("admin/", admin.site.urls),
]
