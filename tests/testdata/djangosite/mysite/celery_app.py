"""The Celery app of berth's Django test site: a task the web workers
enqueue and a companion program (berth's `programs:`) runs. Imported only by
the Celery views and by `celery -A mysite.celery_app worker`."""
import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")
url = os.environ.get("TEST_BROKER_URL", "redis://127.0.0.1:6379/0")
app = Celery("mysite", broker=url, backend=url)
app.conf.update(broker_connection_retry_on_startup=True, task_track_started=False)


@app.task
def add(x, y):
    return x + y
