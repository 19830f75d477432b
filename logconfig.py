"""Logging: text or JSON lines, and no secret in any line.

uvicorn logs each request and WebSocket handshake with its query string, where
the seed client puts its token: every record is scrubbed before it is written.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time

SECRET = re.compile(
    r"((?:[?&;]|\b)(?:token|access_token|jwt)=)[^&\s\"']+"
    r"|((?:authorization|cookie)[\"']?\s*[:=]\s*[\"']?)[^\"'\n]+"
    r"|(eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*)",
    re.IGNORECASE,
)


def scrub(text: str) -> str:
    def hide(match: re.Match[str]) -> str:
        prefix = match.group(1) or match.group(2)
        return f"{prefix}[redacted]" if prefix else "[redacted]"

    return SECRET.sub(hide, text)


class Redact(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = scrub(message)
        if clean != message:
            record.msg, record.args = clean, ()
        if record.exc_info and not record.exc_text:
            # Formatters reuse `exc_text`: the traceback is written scrubbed too.
            record.exc_text = scrub(_TRACEBACKS.formatException(record.exc_info))
        return True


_TRACEBACKS = logging.Formatter()


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            # Structured fields of the record (a socket's user, channel, close code), never overriding the above.
            line.update((key, value) for key, value in fields.items() if key not in line)
        if record.exc_info:
            line["exc"] = scrub(self.formatException(record.exc_info))
        return json.dumps(line, ensure_ascii=False)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def formatter_from_env() -> logging.Formatter:
    """For `--log-config logging.json`: the format LOG_FORMAT names, for uvicorn's
    supervisor too, which logs before any worker has read the settings."""
    if os.environ.get("LOG_FORMAT", "").strip().lower() == "json":
        return JsonFormatter()
    return logging.Formatter(TEXT_FORMAT)


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler `configure` installs; the next call replaces it."""


def configure(level: str, fmt: str) -> None:
    handler = _Handler()
    handler.addFilter(Redact())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    # On the root logger: the libraries' records (the Redis backend, asyncio)
    # come out in the same format as ours, at WARNING and above.
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    for name in ("realtime", "events"):
        ours = logging.getLogger(name)
        ours.setLevel(level.upper())
        ours.propagate = True
    # uvicorn's own handlers: scrub what they print too.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, Redact) for f in logger.filters):
            logger.addFilter(Redact())
        for existing in logger.handlers:
            if not any(isinstance(f, Redact) for f in existing.filters):
                existing.addFilter(Redact())
        if fmt == "json":
            for existing in logger.handlers:
                existing.setFormatter(JsonFormatter())
