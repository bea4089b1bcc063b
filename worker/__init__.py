"""The consumer side: the Celery app, the generate task and the providers."""
