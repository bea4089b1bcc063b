FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY api ./api
COPY worker ./worker
COPY rstreams ./rstreams
# With the [monitoring] extra: the compose file's optional Flower service runs this image too.
RUN pip install '.[monitoring]' && useradd --create-home app
USER app
EXPOSE 8000
CMD ["gunicorn", "-c", "api/gunicorn_conf.py", "api.app:create_app()"]
