"""gunicorn settings for the web process.

Used as `gunicorn -c api/gunicorn_conf.py 'api.app:create_app()'`.

The gevent worker holds thousands of long-lived WebSocket and SSE connections per process;
a threaded worker would hold one thread per connection (gunicorn#908).
"""

from shared.settings import Settings

# Every value below is a setting (the `web` group, and LOG_FORMAT): declared, defaulted and
# checked once, in shared/settings.py.
settings = Settings.from_env()
web = settings.web
bind = f"{web.host}:{web.port}"
# gunicorn's gevent worker, whose parser errors are JSON and logged without the request
# line; `logger_class` keeps credentials and client-written line breaks out of the access
# log (api/gunicorn_worker.py, api/gunicorn_logging.py).
worker_class = "api.gunicorn_worker.GeventWorker"
logger_class = "api.gunicorn_logging.Logger"
workers = web.concurrency
worker_connections = web.worker_connections
graceful_timeout = web.graceful_timeout_s
timeout = 30
# An idle keep-alive connection holds a worker's graceful exit for up to this long.
keepalive = web.keepalive_s
accesslog = web.access_log or None
# The path without its query string: browsers pass stream tokens as `?token=`.
access_log_format = '%(h)s %(l)s %(u)s %(t)s "%(m)s %(U)s %(H)s" %(s)s %(b)s "%(a)s"'
errorlog = "-"
loglevel = web.log_level.lower()
if settings.log_format == "json":
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
forwarded_allow_ips = web.forwarded_allow_ips


def post_worker_init(worker: object) -> None:
    """Keep the app out of the garbage collector's full passes; on SIGTERM, tell
    followers to reconnect elsewhere before gunicorn drains them."""
    import gc
    import signal
    import threading

    from api import shutdown

    # What the app loaded lives as long as the process. Left to the collector, each full
    # pass walks it all (some 64,000 objects: tens of milliseconds, `python -m
    # bench.gc_pause`), and under gevent that stalls every connection of the process at
    # once; frozen, a pass walks only what came after.
    gc.freeze()

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
