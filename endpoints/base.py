"""The base of every WebSocket endpoint: authentication, frame decoding,
dispatch by `type`, error frames, the outbound queue, and catch-up on a stream.

A subclass names its frames (`kinds`), checks who may join (`authorize`),
lists its topics, sends its snapshot, and defines `handle_<type>` methods.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, ClassVar

from starlette.endpoints import WebSocketEndpoint
from starlette.responses import PlainTextResponse
from starlette.websockets import WebSocket

from ..events.node.auth import AuthError, Identity, cookie_origin_allowed, credential_from_scope
from ..events.node.hub import Delivery
from ..events.node.limits import CHEAP, AbuseMeter, TokenBucket
from ..events.node.node import Runtime
from ..events.protocol import errors, outbound
from ..events.protocol.frames import COMMON, Auth, BadFrame, Decoded, Frame, Ping, decode
from ..store import streams
from ..store.errors import AccessEnded, StoreError, StoreUnavailable
from ..transport import RAW_SEND, Outbound, attach
from ..transport.uvicorn import drop_connection

log = logging.getLogger("realtime.ws")

NORMAL = 1000
ABNORMAL = 1006  # no close frame: what a dropped connection reports
POLICY = 1008
TOO_BIG = 1009
SERVER_ERROR = 1011
RESTARTING = 1012
TRY_AGAIN = 1013
NOT_AUTHENTICATED = 4001
FORBIDDEN = 4003
NOT_FOUND = 4004

Handler = Callable[[Any, Any], Awaitable[None]]


class Refused(Exception):
    """Close the socket with `code` (authorization failed at connect)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class BaseEndpoint(WebSocketEndpoint):
    channel: ClassVar[str] = ""
    kinds: ClassVar[Mapping[str, type[Frame]]] = COMMON
    _handlers: ClassVar[dict[str, Handler]] = {}

    # Set per connection.
    rt: Runtime
    out: Outbound
    user: dict[str, Any]
    user_id: int = 0
    identity: Identity
    stream: str | None = None  # the one seq-carrying stream this socket follows, if any
    last_seq: int = 0
    epoch: str | None = None  # the stream's, once read (`stream_epoch`)
    buffer: list[Delivery] | None = None
    # The channel this socket's access is to (`control.end_access` closes it), set by `authorize`.
    access: str | None = None
    slot: str | None = None  # its place under the per-user socket limit, once reserved
    # Why a session cookie sent with the handshake was not taken (the 4001's reason); set only then.
    cookie_refused: str | None = None
    registered_at: float = 0.0  # when it joined `Runtime.sockets` (epoch seconds, for the server API)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        missing = [t for t in cls.kinds if not hasattr(cls, f"handle_{t}")]
        if missing:
            raise TypeError(f"{cls.__name__} has no handler for {missing}")
        cls._handlers = {t: getattr(cls, f"handle_{t}") for t in cls.kinds}

    # ---- the connection's life -------------------------------------------------

    async def dispatch(self) -> None:
        websocket = WebSocket(self.scope, receive=self.receive, send=self.send)
        self.rt = websocket.app.state.runtime
        self.topics: list[str] = []
        self.joined: list[str] = []
        self.tasks: set[asyncio.Task[Any]] = set()
        self.bucket = TokenBucket(self.rt.settings.rate_limit, self.rt.settings.rate_burst)
        self.abuse = AbuseMeter()
        self.expiry: asyncio.TimerHandle | None = None
        self.opened_at = time.monotonic()
        self.close_code = NORMAL
        if self.rt.draining:
            await _refuse_while_draining(websocket)
            return
        # Accept first: a close before accept reaches a browser as a bare HTTP 403.
        sessions = self.rt.sessions
        await websocket.accept(headers=sessions.on_handshake(websocket) if sessions is not None else None)
        # After the handshake: only then can a server adapter's fast path be had.
        self.out, self.receive, server, fast = attach(
            self.scope, self.send, self.receive, self.rt.settings.outbound_queue
        )
        self.rt.metrics.transport_socket(server, fast)
        self.out.on_closed = self._lost
        self.out.on_push = self.rt.metrics.frame_out
        try:
            origin, host = websocket.headers.get("origin"), websocket.headers.get("host")
            allowed = self.rt.settings.allowed_origins
            # With ALLOWED_ORIGINS set, every browser origin is held to the cookie rule, whatever it sends.
            if allowed and not cookie_origin_allowed(origin, host, allowed):
                raise Refused(POLICY, "origin not allowed")
            credential = credential_from_scope(websocket.query_params, websocket.headers)
            if credential is not None and credential.via_cookie and not cookie_origin_allowed(origin, host, allowed):
                # Cross-site WebSocket hijacking: the cookie would authenticate another site's page.
                raise Refused(POLICY, "cookie authentication is not allowed from this origin")
            token = credential.token if credential is not None else None
            session = self._session_identity(websocket) if token is None else None
            del websocket  # its parsed headers and query would otherwise live as long as the socket
            via_frame = token is None and session is None
            if via_frame:
                token = await self._first_frame_token()
            if session is None and token is None:
                return
            # A few sockets at a time between their credential and their first frames: a storm
            # of reconnects waits its turn here, and the event loop keeps serving open sockets.
            async with self.rt.admission:
                if not await self._open(session, token, via_frame):
                    return
            await self._serve()
        except Refused as refusal:
            self._close(refusal.code, refusal.reason)
        except StoreUnavailable:
            # Not a bug: the store is away for now; the client reconnects later (with `?since=`).
            self._close(TRY_AGAIN, "store unavailable; try again later")
        except Exception:
            log.exception("%s socket of user %s failed", self.channel, self.user_id or "?")
            self._close(SERVER_ERROR, "server error")
        finally:
            await self._cleanup()

    async def _open(self, session: Identity | None, token: str | None, via_frame: bool) -> bool:
        """Authenticate, authorize, join, send the first frames; False when refused with a close."""
        if self.rt.draining:
            # Its turn came after the shutdown drain began: the drain no longer sees it.
            raise Refused(RESTARTING, "server restarting")
        identity = session or (self._verify(token) if token is not None else None)
        if identity is None:
            return False
        self.identity = identity
        self.user_id = identity.user_id
        self._log("connect")
        await self._reserve_slot()
        if await self.rt.revocations.refuses(self.rt.db, identity):
            raise Refused(NOT_AUTHENTICATED, "token revoked")
        self.user = await self.rt.profile(identity)
        if via_frame:
            self.out.push(outbound.auth_ok(self.user))
        self._watch_expiry()
        await self.authorize()
        if self.slot is not None:
            # Its access is known now: the server API lists it so on every process.
            await self.rt.slots.update(self.user_id, self.slot, self.describe())
        await self._join()
        await self.opened()
        return True

    def _session_identity(self, websocket: WebSocket) -> Identity | None:
        """The identity in the session cookie, if there is one and it may be used here;
        else None, with the reason kept for the 4001 should no `auth` frame follow."""
        try:
            return self.rt.sessions.authenticate(websocket) if self.rt.sessions is not None else None
        except AuthError as exc:
            self.cookie_refused = _reason(exc)
            return None

    def _verify(self, token: str) -> Identity | None:
        try:
            return self.rt.verifier.verify(token)
        except AuthError as exc:
            self._close(NOT_AUTHENTICATED, _reason(exc))
            return None

    async def _reserve_slot(self) -> None:
        limit = self.rt.settings.max_sockets_per_user
        # Counted and registered before the first `await`: simultaneous handshakes
        # cannot all pass the count. Registered, the socket is also within reach of
        # `disconnect` and revocations from now on; `_cleanup` gives it back.
        sockets = self.rt.sockets[self.user_id]
        if len(sockets) >= limit:
            raise Refused(POLICY, "too many sockets for this user")
        sockets.add(self)
        self.registered_at = time.time()
        if len(sockets) == 1:
            self.rt.sockets_changed(self.user_id)
        self.slot = await self.rt.slots.reserve(self.user_id, limit, self.describe())
        if self.slot is None:
            raise Refused(POLICY, "too many sockets for this user")

    async def _first_frame_token(self) -> str | None:
        rt = self.rt
        if rt.pending_auth >= rt.settings.max_pending_auth:
            self._close(TRY_AGAIN, "too many unauthenticated sockets")
            return None
        # Per client address too (through a trusted proxy, the one it forwarded):
        # one client cannot take every waiting place.
        host = (self.scope.get("client") or ("",))[0]
        if host and not rt.pending_per_address.take(host):
            self._close(TRY_AGAIN, "too many unauthenticated sockets from this address")
            return None
        rt.pending_auth += 1
        try:
            message = await asyncio.wait_for(self.receive(), rt.settings.auth_timeout)
        except TimeoutError:
            self._close(NOT_AUTHENTICATED, self.cookie_refused or "no token")
            return None
        finally:
            rt.pending_auth -= 1
            if host:
                rt.pending_per_address.release(host)
        if message["type"] != "websocket.receive":
            self.close_code = int(message.get("code") or NORMAL)
            return None
        text = message.get("text") or ""
        limit = rt.settings.max_frame_bytes
        if len(text) > limit // 4 and len(text.encode()) > limit:
            # The same limit as after authentication: a stranger's frame is not decoded either.
            self._close(TOO_BIG, f"frame over {limit} bytes")
            return None
        items = decode(text, {"auth": Auth})
        first = items[0] if len(items) == 1 else None
        if isinstance(first, Decoded) and isinstance(first.frame, Auth):
            return first.frame.token
        self._close(NOT_AUTHENTICATED, "authenticate first")
        return None

    async def _join(self) -> None:
        if self.stream is not None:
            # Live events wait from the moment the socket follows its stream
            # until `catch_up` has sent what came before them.
            self.buffer = []
        for topic in self.topics:
            await self.rt.hub.join(topic, self)
            self.joined.append(topic)

    async def _serve(self) -> None:
        limit = self.rt.settings.max_frame_bytes
        while True:
            message = await self.receive()
            kind = message["type"]
            if kind == "websocket.disconnect":
                self.close_code = int(message.get("code") or NORMAL)
                return
            if self.out.closed:
                continue
            text = message.get("text")
            if text is None:
                self.reply_error(errors.INVALID_PAYLOAD, "binary frames are not supported; send JSON text")
                continue
            if len(text) > limit // 4 and len(text.encode()) > limit:
                self._close(TOO_BIG, f"frame over {limit} bytes")
                return
            for item in decode(text, self.kinds):
                if self.out.closed:
                    break  # closed mid-array (access ended, revoked): the rest is not handled
                self.rt.metrics.frame_in(self.channel, item)
                if not self._allow(item):
                    if self.abuse.reject():
                        self._close(POLICY, "rate limit exceeded")
                        return
                    self.reply_error(errors.RATE_LIMITED, "too many frames; slow down", _type_of(item))
                elif isinstance(item, BadFrame):
                    self.reply_error(item.code, item.message, item.request_type, item.client_msg_id)
                elif self.rt.draining and item.type != "ping":
                    # Read after the shutdown drain began: not done, and the client is told so.
                    self.reply_error(
                        errors.UNAVAILABLE, "the server is restarting; send it again", item.type, item.client_msg_id
                    )
                else:
                    self.rt.handling += 1
                    try:
                        await self._handle(item)
                    finally:
                        self.rt.handling -= 1

    def _allow(self, item: Decoded | BadFrame) -> bool:
        cost = CHEAP.get(_type_of(item) or "", 1.0)
        return self.bucket.take(cost) and self.rt.user_bucket(self.user_id).take(cost)

    async def _handle(self, item: Decoded) -> None:
        try:
            await self._handlers[item.type](self, item.frame)
        except StoreError as exc:
            self.reply_error(exc.code, str(exc), item.type, item.client_msg_id)
            if isinstance(exc, AccessEnded):
                # Removed meanwhile: the `ctl` command may not have arrived yet.
                self._close(FORBIDDEN, _reason(exc))

    async def _cleanup(self) -> None:
        try:
            await self.closing()
        except Exception:
            log.exception("%s socket cleanup failed", self.channel)
        if self.expiry is not None:
            self.expiry.cancel()
        for task in list(self.tasks):
            task.cancel()
        if self.slot is not None:
            slot, self.slot = self.slot, None
            await self.rt.slots.release(self.user_id, slot)
        for topic in self.joined:
            await self.rt.hub.leave(topic, self)
        self.joined.clear()
        sockets = self.rt.sockets.get(self.user_id)
        if sockets is not None:
            sockets.discard(self)
            if not sockets:
                del self.rt.sockets[self.user_id]
                self.rt.user_buckets.pop(self.user_id, None)
                self.rt.sockets_changed(self.user_id)
        await self.out.drained(timeout=2.0)
        self.rt.metrics.closed(self.close_code, self.out.dropped)
        if self.rt.sweep is not None:
            self.rt.sweep.closed(len(self.rt.sockets))
        if self.user_id:
            self._log("disconnect", duration=round(time.monotonic() - self.opened_at, 3), code=self.close_code)
        # The outbound side calls back into this object: without the references both ways
        # the socket's state is freed when the connection ends, not by a later full collection.
        self.out.on_closed = self.out.on_push = None

    def _log(self, event: str, **more: Any) -> None:
        """One line per connect and disconnect; its fields are JSON keys with LOG_FORMAT=json."""
        fields = {"channel": self.channel, "user": self.user_id, "path": self.scope["path"], **more}
        text = " ".join(f"{key}={value}" for key, value in fields.items())
        log.info("%s %s", event, text, extra={"fields": {"event": event, **fields}})

    def _watch_expiry(self) -> None:
        """With TOKEN_EXPIRY=close, an `exp` that passes during the connection
        is honoured: `token_expiring`, a grace period for a fresh `auth`, then 4001."""
        if self.rt.settings.token_expiry != "close":
            return
        if self.expiry is not None:
            self.expiry.cancel()
        loop = asyncio.get_running_loop()
        delay = max(0.0, self.identity.expires_at - time.time())
        self.expiry = loop.call_later(delay, self._token_expired)

    def _token_expired(self) -> None:
        grace = self.rt.settings.token_grace
        self.out.push(outbound.token_expiring(self.identity.expires_at, grace))
        self.expiry = asyncio.get_running_loop().call_later(grace, self._close, NOT_AUTHENTICATED, "token expired")

    def end_for_restart(self) -> bool:
        """Shutdown: 1012 to a client that said it resumes after one (`?since=`
        or `?resume=1`); any other (the platform's client reconnects only after
        an unclean close) loses the connection without a close frame. Where
        the server gives no transport to drop, 1012 for all. True for a 1012."""
        if not _resumes(self.scope.get("query_string", b"")) and drop_connection(self.scope.get(RAW_SEND)):
            self.close_code = ABNORMAL
            self.out.closed = True
            return False
        self._close(RESTARTING, "server restarting")
        return True

    def describe(self) -> dict[str, Any]:
        """What the server API shows of an open socket (`GET /api/users/{id}/sockets`)."""
        return {"channel": self.channel, "access": self.access, "opened_at": round(self.registered_at, 3)}

    def close_for(self, code: int, reason: str) -> None:
        """Close from outside the socket's own task (the server API, shutdown)."""
        self._close(code, reason)

    def _close(self, code: int, reason: str) -> None:
        self.close_code = code
        self.out.close(code, reason)

    def _lost(self) -> None:
        """The outbound side gave up (slow consumer or dead peer): stop receiving events."""
        self.close_code = self.close_code if self.close_code != NORMAL else 1013
        self.spawn(self._leave_all())

    async def _leave_all(self) -> None:
        joined, self.joined = self.joined, []
        for topic in joined:
            await self.rt.hub.leave(topic, self)

    def spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # ---- what subclasses fill in -----------------------------------------------

    async def authorize(self) -> None:
        """Check the path against the user; raise `Refused`; set `topics` and `stream`."""

    async def opened(self) -> None:
        """Send what a new socket gets first (a snapshot)."""

    async def closing(self) -> None:
        """Undo per-socket state (typing, presence) before the topics are left."""

    async def still_allowed(self) -> bool:
        """Whether the store still grants this socket its channel (asked after a
        broker outage, when a command that ended the access may have been lost)."""
        return True

    async def snapshot(self) -> int:
        """Send a fresh snapshot of `stream`; return the seq it covers."""
        raise NotImplementedError

    # ---- events in and out -----------------------------------------------------

    def deliver(self, delivery: Delivery) -> None:
        if self.buffer is not None:
            self.buffer.append(delivery)
            return
        if delivery.seq:
            if delivery.seq <= self.last_seq:
                return
            self.last_seq = delivery.seq
        self.out.relay(delivery.frame, delivery.data)

    def resync(self) -> None:
        self.spawn(self._resync())

    async def _resync(self) -> None:
        try:
            await self.catch_up(None)
        except StoreUnavailable:
            # No snapshot to fill the gap: the client reconnects with `?since=` once the store is back.
            self._close(TRY_AGAIN, "store unavailable; reconnect to resume")

    async def stream_epoch(self) -> str:
        """The stream's epoch (store/streams.py); it never changes while the stream's row lives."""
        assert self.stream is not None
        if self.epoch is None:
            self.epoch = await self.rt.stream_epoch(self.stream)
        return self.epoch

    async def stream_last_seq(self) -> int:
        """The stream's last seq as far as this socket is concerned: what this process
        has delivered on it (the socket follows it, so anything later reaches it live),
        else the store's."""
        assert self.stream is not None
        head = self.rt.stream_head(self.stream)
        return head if head is not None else await streams.last_seq(self.rt.db, self.stream)

    async def catch_up(self, since: int | None, epoch: str | None = None) -> None:
        """Replay the stream after `since` (or send a snapshot), holding live events back meanwhile.
        A `since` from another epoch than the stream's (a database reset or restore) is a resync;
        a client that sends no epoch (or a blank one) is taken at its word, as before epochs."""
        assert self.stream is not None
        epoch = epoch or None
        db, limit = self.rt.db, self.rt.settings.replay_limit
        if self.buffer is None:
            self.buffer = []
        try:
            if since is not None:
                stale = epoch is not None and epoch != await self.stream_epoch()
                last = self.rt.stream_head(self.stream)
                if last is None or since > last:
                    # Ahead of what this process delivered: the store says whether it exists.
                    last = await streams.last_seq(db, self.stream)
                if stale or since > last:
                    events = None
                elif since == last > 0:
                    # Current: nothing to read (a reconnect that missed nothing). Not at 0,
                    # which is also what a stream whose row was lost (a restore) reads as.
                    events = []
                else:
                    events = await streams.since(db, self.stream, since, limit, last)
                if events is not None:
                    for _seq, frame in events:
                        self.out.push(frame)
                    self.last_seq = max(self.last_seq, since, events[-1][0] if events else 0)
                    return
                self.out.push(outbound.resync_required(last, await self.stream_epoch()))
            self.last_seq = max(self.last_seq, await self.snapshot())
        finally:
            held, self.buffer = self.buffer, None
            for delivery in held:
                self.deliver(delivery)

    def epoch_param(self) -> str | None:
        """`?epoch=`: the epoch of the client's `since`; absent or blank, none (as before epochs)."""
        raw = self.scope.get("query_string", b"").decode("latin-1")
        for part in raw.split("&"):
            key, _, value = part.partition("=")
            if key == "epoch" and value:
                return value[:64]
        return None

    def since_param(self) -> int | None:
        raw = self.scope.get("query_string", b"").decode("latin-1")
        for part in raw.split("&"):
            key, _, value = part.partition("=")
            if key == "since":
                if value.isascii() and value.isdigit() and len(value) < 17:
                    return int(value)
                self.reply_error(errors.INVALID_PAYLOAD, "`since` must be a non-negative integer; sent a snapshot")
                return None
        return None

    async def publish(self, topic: str, type_: str, frame: str, seq: int = 0, exclude: int = 0) -> None:
        await self.rt.publish(topic, type_, frame, seq, exclude)

    def reply_error(self, code: str, message: str, request_type: str | None = None, client_msg_id: Any = None) -> None:
        self.rt.metrics.error(code)
        self.out.push(outbound.error(code, message, request_type, client_msg_id))

    # ---- frames every endpoint takes ----------------------------------------------

    async def handle_ping(self, frame: Ping) -> None:
        self.out.push(outbound.pong())

    async def handle_auth(self, frame: Auth) -> None:
        """A fresh token for the same user (say, before the old one expires)."""
        identity = self._verify(frame.token)
        if identity is None:
            return
        if identity.user_id != self.user_id:
            self.reply_error(errors.FORBIDDEN, "the token is for another user", "auth")
            return
        if await self.rt.revocations.refuses(self.rt.db, identity):
            self._close(NOT_AUTHENTICATED, "token revoked")
            return
        self.identity = identity
        self._watch_expiry()
        self.out.push(outbound.auth_ok(self.user))


async def _refuse_while_draining(websocket: WebSocket) -> None:
    """HTTP 503 to a handshake during the shutdown drain (a 403, by closing
    before accept, where the server cannot send a response of its own)."""
    response = PlainTextResponse("server restarting", status_code=503, headers={"Retry-After": "1"})
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(response)
    else:
        await websocket.close(RESTARTING)


def _resumes(query_string: bytes) -> bool:
    """`?since=` or `?resume=1`: the client handles 1012 (reconnects and resumes)."""
    for part in query_string.split(b"&"):
        key, _, value = part.partition(b"=")
        if key == b"since" or (key == b"resume" and value == b"1"):
            return True
    return False


def _type_of(item: Decoded | BadFrame) -> str | None:
    return item.type if isinstance(item, Decoded) else item.request_type


def _reason(exc: Exception) -> str:
    # Close reasons are limited to 123 bytes.
    return str(exc)[:120] or "invalid token"
