"""The example's Celery app. The broker is Kombu's filesystem transport in
MYSITE_DATA/broker, so the example needs no second container; set
CELERY_BROKER_URL (e.g. redis://redis:6379/0) for a real one."""
import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")
data = os.environ.get("MYSITE_DATA", "/var/lib/mysite")
broker = os.environ.get("CELERY_BROKER_URL", "filesystem://")
app = Celery("mysite", broker=broker)
if broker == "filesystem://":
    folder = os.path.join(data, "broker")
    os.makedirs(folder, exist_ok=True)
    app.conf.broker_transport_options = {"data_folder_in": folder, "data_folder_out": folder}
app.conf.broker_connection_retry_on_startup = True


@app.task
def record_visit(path):
    print("visit to %s recorded by the Celery worker" % path)
    return path
