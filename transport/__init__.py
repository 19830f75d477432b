"""The seam between ASGI servers and sockets.

Every socket gets the plain ASGI path (transport/asgi.py): correct and bounded
on any ASGI server. Under uvicorn's sans-I/O WebSocket protocol, on a tested
uvicorn version, the uvicorn adapter (transport/uvicorn.py) adds its fast
path. `attach` picks, per socket; the choice is logged once per process and
kind of server, and counted in `realtime_transport_sockets{server,fast_path}`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter
from starlette.types import Receive, Scope

from .asgi import RAW_SEND, Outbound, RawSend, raw_send
from .uvicorn import COMPRESSION_MODES, VERSION_TEXT, adopt, direct_writer, negotiate, why_not

__all__ = [
    "COMPRESSION_MODES",
    "RAW_SEND",
    "Outbound",
    "RawSend",
    "attach",
    "compression",
    "raw_send",
    "server_of",
    "socket_counter",
]

log = logging.getLogger("realtime.transport")

# The servers a `send` is recognised as coming from (a bounded metric label).
KNOWN = ("uvicorn", "hypercorn", "granian", "daphne")
_logged: set[tuple[str, bool]] = set()


def server_of(send: Any) -> str:
    """Which server's `send` this is: a name from KNOWN, `wrapped` (by middleware), or `other`."""
    owner = getattr(send, "__self__", None)
    module = type(owner).__module__ if owner is not None else getattr(send, "__module__", None) or ""
    top = module.split(".")[0]
    if top in KNOWN:
        return top
    if top in ("starlette", "fastapi"):
        return "wrapped"
    return "other"


# The scope key under which `compression` leaves the size from which frames are compressed.
COMPRESS_FROM = "realtime.compress_from"


def compression(mode: str, compress_from: int) -> Callable[[Scope], None]:
    """Called with each socket's scope before its handshake is answered
    (`SocketRoutes`): its permessage-deflate as WS_COMPRESSION says (under
    uvicorn's sans-I/O protocol; other servers negotiate by themselves), and
    from which size the fast path compresses (WS_COMPRESSION_MIN_BYTES)."""

    def prepare(scope: Scope) -> None:
        negotiate(scope.get(RAW_SEND), mode)
        scope[COMPRESS_FROM] = compress_from

    return prepare


def attach(scope: Scope, send: Any, receive: Receive, limit: int) -> tuple[Outbound, Receive, str, bool]:
    """A socket's outbound side and `receive`, once its handshake is done:
    (outbound, receive, server, fast path in effect)."""
    raw = scope.get(RAW_SEND, send)
    direct = direct_writer(raw, scope.get(COMPRESS_FROM, 0))
    server = server_of(raw)
    if direct is None:
        # The plain path: through the `send` the endpoint was given, middleware and all.
        _log_once(server, False, why_not(raw))
        return Outbound(send, limit), receive, server, False
    _log_once(server, True, "")
    return Outbound(raw, limit, direct), adopt(raw) or receive, server, True


def _log_once(server: str, fast: bool, why: str) -> None:
    if (server, fast) in _logged:
        return
    _logged.add((server, fast))
    if fast:
        log.info("transport: uvicorn fast path in effect (websockets-sansio, uvicorn %s)", VERSION_TEXT)
    else:
        log.info("transport: plain ASGI sends (server: %s); uvicorn fast path off: %s", server, why)


def socket_counter(registry: CollectorRegistry) -> Callable[[str, bool], None]:
    """`count(server, fast)`: one socket opened; `realtime_transport_sockets_total` in `registry`."""
    counter = Counter(
        "realtime_transport_sockets",
        "Sockets opened, by the server their `send` came from and whether the uvicorn fast path was in effect.",
        ["server", "fast_path"],
        registry=registry,
    )

    def count(server: str, fast: bool) -> None:
        counter.labels(server, "yes" if fast else "no").inc()

    return count
