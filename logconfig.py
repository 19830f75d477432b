"""Logging: text or JSON lines, and no secret in any line.

uvicorn logs each request and WebSocket handshake with its query string, where
the seed client puts its token: every record is scrubbed before it is written.
"""

from __future__ import annotations

import json
import logging
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
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exc"] = scrub(self.formatException(record.exc_info))
        return json.dumps(line, ensure_ascii=False)


def configure(level: str, fmt: str) -> None:
    handler = logging.StreamHandler()
    handler.addFilter(Redact())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("realtime")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
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
