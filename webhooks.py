"""Webhook signatures: how the server signs a delivery, and `verify` for the
receiver (docs/webhooks.md).

A delivery is an HTTP POST whose body is JSON, `{"events": [...]}`, with:

- `X-Realtime-Timestamp`: Unix seconds when it was signed (each attempt anew);
- `X-Realtime-Signature`: `v1=` and the hex HMAC-SHA256, keyed with
  `WEBHOOK_SECRET`, of the timestamp, a `.`, and the body's exact bytes
  (`f"{timestamp}.{body}"`); several comma-separated `v1=` values may come
  (rotation), and one matching is enough;
- `X-Realtime-Delivery`: the delivery's id, the same on every attempt of the
  same events (a replay or a retry of what was processed can be answered 2xx
  at once). Each event has its own `id` too: deduplicate by that.

This module imports nothing but the standard library, so a receiver can
import it (`from realtime.webhooks import verify`) or copy it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any

TIMESTAMP_HEADER = "X-Realtime-Timestamp"
SIGNATURE_HEADER = "X-Realtime-Signature"
DELIVERY_HEADER = "X-Realtime-Delivery"
SCHEME = "v1"
# Seconds a delivery's timestamp may be away from the receiver's clock.
DEFAULT_TOLERANCE = 300


class WebhookVerificationError(ValueError):
    """The delivery is not one this server signed with the secret, or it is too old (a replay)."""


def _bytes(value: str | bytes) -> bytes:
    return value.encode() if isinstance(value, str) else value


def signature(secret: str | bytes, timestamp: int, body: str | bytes) -> str:
    """The hex HMAC-SHA256 of `f"{timestamp}.{body}"` keyed with `secret`."""
    message = str(timestamp).encode() + b"." + _bytes(body)
    return hmac.new(_bytes(secret), message, hashlib.sha256).hexdigest()


def sign(secret: str | bytes, body: bytes, delivery_id: str, timestamp: int | None = None) -> dict[str, str]:
    """The headers of one delivery of `body` (the server's side)."""
    now = int(time.time()) if timestamp is None else timestamp
    return {
        TIMESTAMP_HEADER: str(now),
        SIGNATURE_HEADER: f"{SCHEME}={signature(secret, now, body)}",
        DELIVERY_HEADER: delivery_id,
    }


def verify(
    secret: str | bytes,
    headers: Mapping[str, str],
    body: str | bytes,
    tolerance: float = DEFAULT_TOLERANCE,
) -> dict[str, Any]:
    """Check a delivery and return its decoded body, `{"events": [...]}`.

    `headers`: the request's headers, any case (Django's `request.headers`, a
    plain dict); `body`: its raw bytes, as received (`request.body`), never
    re-encoded JSON. `tolerance`: seconds the timestamp may be off from now.
    Raises `WebhookVerificationError` when a header is missing or malformed,
    no signature matches, or the timestamp is out of tolerance.
    """
    lowered = {key.lower(): value for key, value in headers.items()}
    raw_timestamp = lowered.get(TIMESTAMP_HEADER.lower())
    raw_signatures = lowered.get(SIGNATURE_HEADER.lower())
    if not raw_timestamp or not raw_signatures:
        raise WebhookVerificationError(f"missing {TIMESTAMP_HEADER} or {SIGNATURE_HEADER}")
    try:
        timestamp = int(raw_timestamp)
    except ValueError:
        raise WebhookVerificationError(f"{TIMESTAMP_HEADER} is not a whole number of seconds") from None
    if abs(time.time() - timestamp) > tolerance:
        raise WebhookVerificationError(f"{TIMESTAMP_HEADER} is more than {tolerance:g}s away from now")
    expected = signature(secret, timestamp, body).encode()
    offered = [
        value.strip()[len(SCHEME) + 1 :].encode()
        for value in raw_signatures.split(",")
        if value.strip().startswith(f"{SCHEME}=")
    ]
    # compare_digest on each: the time taken tells nothing of the expected value.
    if not any(hmac.compare_digest(expected, candidate) for candidate in offered):
        raise WebhookVerificationError("no signature matches: wrong secret, or the body was changed")
    try:
        payload = json.loads(_bytes(body))
    except ValueError:
        raise WebhookVerificationError("the body is not JSON") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("events"), list):
        raise WebhookVerificationError('the body is not {"events": [...]}')
    return payload
