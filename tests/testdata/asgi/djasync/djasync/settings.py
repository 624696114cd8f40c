"""A minimal Django project served through Django's ASGI handler (asgi.py, no wsgi.py)."""
SECRET_KEY = 'berth-tests-only'
DEBUG = False
ALLOWED_HOSTS = ['*']
ROOT_URLCONF = 'djasync.urls'
INSTALLED_APPS = []
MIDDLEWARE = []
DATABASES = {}
USE_TZ = True
