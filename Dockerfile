FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# The runtime part of requirements.txt: the tests' tools stay out of the image.
COPY requirements.txt .
RUN sed '/^# Tests and checks/,$d' requirements.txt > /tmp/runtime.txt \
    && pip install -r /tmp/runtime.txt \
    && rm /tmp/runtime.txt

RUN useradd --create-home --uid 10001 realtime \
    && mkdir -p /data/uploads \
    && chown -R realtime /data
COPY . .

USER realtime
ENV PORT=8000 \
    DATABASE_URL=sqlite:////data/realtime.db \
    UPLOAD_DIR=/data/uploads
VOLUME /data
EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=5s \
    CMD python -c "import os, urllib.request; urllib.request.urlopen(f'http://127.0.0.1:{os.environ[\"PORT\"]}/healthz', timeout=3)"

# The Procfile's command; exec, so that uvicorn gets SIGTERM and closes sockets with 1012.
CMD ["sh", "-c", "exec uvicorn server:app --host 0.0.0.0 --port ${PORT} --ws websockets-sansio --ws-max-size 262144 --proxy-headers --http realtime.transport.guard:http_protocol --log-config logging.json"]
