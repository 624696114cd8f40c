bind = "unix:/run/gunicorn.sock"
workers = 3
timeout = 120
forwarded_allow_ips = "127.0.0.1"
raw_env = ["DJANGO_SETTINGS_MODULE=shop.settings"]
