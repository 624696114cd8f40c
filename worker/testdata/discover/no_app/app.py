"""Docs mention it:
app = Flask(__name__)
"""
import flask

def make():
    app = flask.Flask(__name__)
    return app

app == None  # a comparison, not a binding
# app = 1
x = "app = 2"
