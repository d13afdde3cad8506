"""The smallest WSGI app, to have something for gunicorn to serve: replace it with yours."""


def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok\n"]
