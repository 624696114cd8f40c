bind = '127.0.0.1:8000'
wsgi_app = 'app.wsgi:application'
