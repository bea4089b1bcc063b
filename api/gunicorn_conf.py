"""gunicorn settings for the web process.

Used as `gunicorn -c api/gunicorn_conf.py 'api.app:create_app()'`.

The gevent worker holds thousands of long-lived WebSocket and SSE connections per process;
a threaded worker would hold one thread per connection (gunicorn#908).
"""

import os

bind = f"{os.environ.get('HOST', '0.0.0.0')}:{os.environ.get('PORT', '8000')}"
# gunicorn's gevent worker, whose parser errors are JSON and logged without the request
# line; `logger_class` keeps credentials and client-written line breaks out of the access
# log (api/gunicorn_worker.py, api/gunicorn_logging.py).
worker_class = "api.gunicorn_worker.GeventWorker"
logger_class = "api.gunicorn_logging.Logger"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_connections = int(os.environ.get("WEB_WORKER_CONNECTIONS", "2000"))
# Heroku sends SIGKILL 30 s after SIGTERM.
graceful_timeout = int(os.environ.get("WEB_GRACEFUL_TIMEOUT_S", "20"))
timeout = 30
# An idle keep-alive connection holds a worker's graceful exit for up to this long.
keepalive = int(os.environ.get("WEB_KEEPALIVE_S", "5"))
accesslog = os.environ.get("WEB_ACCESS_LOG") or None
# The path without its query string: browsers pass stream tokens as `?token=`.
access_log_format = '%(h)s %(l)s %(u)s %(t)s "%(m)s %(U)s %(H)s" %(s)s %(b)s "%(a)s"'
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()
if os.environ.get("LOG_FORMAT", "").strip().lower() == "json":
    # gunicorn's error and access logs and the app's loggers (root), one JSON object a line
    # (shared/logs.py); LOG_FORMAT=text keeps gunicorn's own format.
    logconfig_dict = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "shared.logs.JsonFormatter"}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stderr",
            },
            "stdout": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stdout",
            },
        },
        "root": {"level": loglevel.upper(), "handlers": ["stderr"]},
        "loggers": {
            "gunicorn.error": {
                "level": loglevel.upper(),
                "handlers": ["stderr"],
                "propagate": False,
                "qualname": "gunicorn.error",
            },
            "gunicorn.access": {
                "level": "INFO",
                "handlers": ["stdout"],
                "propagate": False,
                "qualname": "gunicorn.access",
            },
        },
    }
# Behind Heroku's router or another proxy, trust its X-Forwarded-Proto for wss:// URLs.
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1,::1")


def post_worker_init(worker: object) -> None:
    """On SIGTERM, tell followers to reconnect elsewhere before gunicorn drains them."""
    import signal
    import threading

    from api import shutdown

    previous = signal.getsignal(signal.SIGTERM)
    if any("gevent" in kind.__module__ for kind in type(worker).__mro__):
        import gevent

        spawn = gevent.spawn
    else:  # GUNICORN_CMD_ARGS="--worker-class api.gunicorn_worker.ThreadWorker ..."
        spawn = lambda fn: threading.Thread(target=fn, daemon=True).start()  # noqa: E731

    def on_term(signum: int, frame: object) -> None:
        spawn(shutdown.begin)
        if callable(previous):
            previous(signum, frame)  # type: ignore[arg-type]

    signal.signal(signal.SIGTERM, on_term)


def worker_exit(server: object, worker: object) -> None:
    """Add this process's last deliveries to the metrics, and take its followers out of
    the gauge at once (`api/metrics.py`)."""
    from api import metrics

    metrics.close()
