import flask
app: flask.Flask = flask.Flask(__name__)
application = app
