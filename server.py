"""The ASGI app: settings, the lifespan (store, broker, hub), routes.

`uvicorn server:app` reads the settings from the environment; `create_app`
takes them explicitly (tests, embedding).
"""

from __future__ import annotations

if not __package__:
    # From a checkout, `uvicorn server:app` (the Procfile) imports this file as the
    # top-level module `server`. It becomes `realtime.server` (realtime/__init__.py
    # points that package at this directory), so the relative imports below resolve
    # and the package holds one copy of this module, not two.
    import importlib.util as _util
    import sys as _sys

    __spec__ = _util.spec_from_file_location("realtime.server", __file__)
    __package__ = "realtime"
    _sys.modules["realtime.server"] = _sys.modules[__name__]

import asyncio
import contextlib
import gc
import logging
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlparse

from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute

from . import logconfig
from .endpoints import (
    api,
    asyncapi,
    consultation_api,
    dev,
    files,
    messages_api,
    metrics_api,
    notifications_api,
    openapi,
    presence_api,
)
from .endpoints.base import BaseEndpoint
from .endpoints.chat import ChatEndpoint
from .endpoints.consultation import ConsultationEndpoint
from .endpoints.notifications import NotificationsEndpoint
from .endpoints.reservation import ReservationEndpoint
from .events.node import control, metrics, metrics_shared, presence, redis_client, socket_slots, webhooks
from .events.node.auth import TokenVerifier
from .events.node.broker import Broker, MemoryBroker
from .events.node.chat_notices import ChatNotices
from .events.node.consultation_rules import describe_agora
from .events.node.hub import Hub
from .events.node.node import Runtime
from .events.node.notification_texts import NotificationTexts
from .events.node.retention import Pruner
from .events.node.scheduler import Scheduler
from .events.node.session import for_settings as session_cookies
from .events.node.sweep import SocketSweep
from .settings import Settings, SettingsError, from_env
from .store import streams
from .store.db import Db
from .store.errors import StoreUnavailable
from .store.migrate import MigrationError
from .store.outbox import Outbox
from .store.streams import StreamLog
from .transport import compression, guard
from .transport.asgi import SocketRoutes
from .transport.drain import Drain
from .transport.lifespan import StartOnFirstUse

log = logging.getLogger("realtime.server")
READY_TIMEOUT = 2.0

SOCKETS: list[tuple[str, type[BaseEndpoint]]] = [
    ("/ws/chat/{room_id}", ChatEndpoint),
    ("/ws/consultation/{consultation_id}", ConsultationEndpoint),
    ("/ws/reservation-chat/{expert_id}", ReservationEndpoint),
    ("/ws/notifications", NotificationsEndpoint),
    ("/ws/notifications/{user_id}", NotificationsEndpoint),
]


def broker(url: str) -> Broker:
    if urlparse(url).scheme in redis_client.SCHEMES:
        from .events.node.redis_broker import RedisBackend

        return RedisBackend(url)
    return MemoryBroker()


def socket_routes() -> list[BaseRoute]:
    # Both spellings: the seed client adds a trailing slash, others may not.
    routes: list[BaseRoute] = []
    for path, endpoint in SOCKETS:
        routes += [WebSocketRoute(path + "/", endpoint), WebSocketRoute(path, endpoint)]
    return routes


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


def _observed(task: asyncio.Future[Any]) -> None:
    """Retrieve a detached task's outcome, so asyncio does not log it as never retrieved."""
    if not task.cancelled():
        task.exception()


async def readyz(request: Request) -> Response:
    rt: Runtime = request.app.state.runtime
    problems = []
    if rt.draining:
        problems.append("draining: the server is shutting down")
    # Writes first: a store that answers reads but cannot commit is not ready.
    writer = rt.db.writer
    failing = writer.status() if writer is not None else "writer: not started"
    if failing is not None:
        problems.append(f"store {failing}")
    # Bounded: a store that hangs (a partition) must not hang the probe. Not
    # `wait_for`, which waits for the cancelled read to finish, and asyncpg's
    # cancellation of a query itself waits on the partitioned connection.
    ping = asyncio.ensure_future(rt.db.ping())
    await asyncio.wait({ping}, timeout=READY_TIMEOUT)
    if not ping.done():
        ping.cancel()
        ping.add_done_callback(_observed)
        problems.append(f"store: no answer within {READY_TIMEOUT:g}s")
    elif ping.exception() is not None:
        problems.append(f"store: {ping.exception()!r}")
    if rt.hub.problem is not None:
        problems.append(f"broker: {rt.hub.problem}")
    if problems:
        return JSONResponse({"status": "unavailable", "problems": problems}, status_code=503)
    return JSONResponse({"status": "ready"})


async def store_unavailable(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StoreUnavailable)
    return api.unavailable(exc)


def create_app(settings: Settings, *, configure_logging: bool = True, tune_gc: bool = True) -> Starlette:
    """The app; `configure_logging=False` leaves logging to a host app that embeds it,
    `tune_gc=False` the garbage collector's thresholds (GC_THRESHOLDS)."""
    settings = settings.checked()
    if configure_logging:
        logconfig.configure(settings.log_level, settings.log_format)
    texts = NotificationTexts.for_settings(settings)
    shared_metrics = settings.prometheus_multiproc_dir
    if shared_metrics is not None and not metrics_shared.active(shared_metrics):
        raise SettingsError(
            "PROMETHEUS_MULTIPROC_DIR: must be in the environment when the process starts "
            "(prometheus_client reads it when it is first imported)"
        )
    if tune_gc and settings.gc_thresholds is not None:
        # Each socket is a few hundred tracked objects that live as long as it does: at Python's
        # thresholds a storm of connects spends a quarter of its CPU in full collections over them,
        # and a closed socket's objects (cycles) wait longer for a collection at higher ones.
        gc.set_threshold(*settings.gc_thresholds)
    # Per app: several apps in one process (tests, embedding) keep their own numbers.
    app_metrics = metrics.Metrics(CollectorRegistry(), shared_metrics)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        # Every service is stopped by the stack, in the reverse order of its start,
        # also when a later one fails to start (an embedding host lives on after that).
        async with contextlib.AsyncExitStack() as stack:
            yield await start_services(app, stack)

    async def start_services(app: Starlette, stack: contextlib.AsyncExitStack) -> dict[str, Any]:
        db = Db(settings.database_url, busy_timeout=settings.store_busy_timeout)
        try:
            await db.connect()
        except MigrationError as exc:
            raise SystemExit(f"realtime: DATABASE_URL={db.shown_url}: {exc}") from None
        stack.push_async_callback(db.disconnect)
        await streams.ensure_table_epoch(db)
        if not redis_client.uses_redis(settings) and not await db.claim_sole_process():
            raise SystemExit(
                "realtime: another server process already uses this database with BROKER_URL=memory://; "
                "it would split every room between processes: set BROKER_URL=redis://... to run several"
            )
        hub = Hub(broker(settings.broker_url), StreamLog(db), presence.namespace(settings), Outbox(db))
        if hub.outbox is not None:
            db.use_outbox()
        await hub.start()
        stack.push_async_callback(hub.stop)
        verifier = TokenVerifier(
            settings.jwt_key,
            list(settings.jwt_algorithms),
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
            max_lifetime=settings.jwt_max_lifetime,
        )
        # One Redis client (one pool) for presence, slots and tick locks; the broker keeps its own.
        redis = redis_client.for_settings(settings)
        if redis is not None:
            stack.push_async_callback(redis.close)
        runtime = Runtime(
            settings,
            db,
            hub,
            verifier,
            presence=presence.for_settings(settings, redis),
            chat_notices=ChatNotices(settings.chat_notification_window),
            texts=texts,
            metrics=app_metrics,
            slots=socket_slots.for_settings(settings, redis),
            redis=redis,
            sessions=session_cookies(settings, verifier),
            pending_per_address=guard.PendingPerAddress(settings.max_pending_per_ip),
            sweep=SocketSweep() if tune_gc and settings.gc_thresholds is not None else None,
        )
        stack.push_async_callback(runtime.slots.close)
        stack.push_async_callback(runtime.presence.close)
        stack.push_async_callback(runtime.chat_notices.close)
        if runtime.sessions is None:
            log.warning(
                "session cookies off: JWT_PUBLIC_KEY is set and SESSION_SECRET is not; the platform's client "
                "cannot reconnect without its token (set SESSION_SECRET, the same on every node)"
            )
        runtime.webhooks = webhooks.for_settings(runtime)
        if runtime.webhooks is not None:
            runtime.webhooks.start()
            stack.push_async_callback(runtime.webhooks.stop)
        app.state.runtime = runtime
        app_metrics.watch(runtime, [endpoint.channel for _, endpoint in SOCKETS])
        stack.push_async_callback(app_metrics.close)
        if settings.workers > 1 and shared_metrics is None:
            log.warning(
                "%d workers without PROMETHEUS_MULTIPROC_DIR: /metrics shows the worker that answers only "
                "(run uvicorn with --log-config logging.json, or set it)",
                settings.workers,
            )
        commands = await control.listen(runtime)
        stack.push_async_callback(commands.close)
        describe_agora(settings)
        if not settings.allowed_origins and not settings.dev_mode:
            log.info(
                "ALLOWED_ORIGINS is not set: the access_token cookie is taken only from this server's own "
                "origin; a web app on another origin must be listed there to use it"
            )
        if settings.dev_mode:
            port = os.environ.get("PORT", "8000")
            await dev.seed(runtime, f"ws://127.0.0.1:{port}")
        scheduler = Scheduler(runtime)
        scheduler.start()
        stack.push_async_callback(scheduler.stop)
        pruner = app.state.pruner = Pruner(settings, db)
        pruner.start()
        stack.push_async_callback(pruner.stop)
        drain = Drain(runtime, settings.drain_timeout)
        drain.install()
        stack.callback(drain.uninstall)
        guard.AcceptErrors.install(asyncio.get_running_loop())
        # The lifespan state reaches `--http realtime.transport.guard:http_protocol` through uvicorn.
        return guard.state(settings, runtime.pending_per_address)

    sockets = socket_routes()
    api_routes: list[BaseRoute] = [
        *api.routes,
        *messages_api.routes,
        *consultation_api.routes,
        *notifications_api.routes,
        *presence_api.routes,
    ]
    routes: list[BaseRoute] = [
        *sockets,
        *api_routes,
        *openapi.routes(api_routes),
        *files.routes,
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        *metrics_api.routes,
        *asyncapi.routes(SOCKETS),
    ]
    if settings.dev_mode:
        routes += dev.routes
    return Starlette(
        routes=routes,
        lifespan=lifespan,
        # Outermost: under a server without lifespan (daphne) the services start on the first request.
        middleware=[
            Middleware(StartOnFirstUse, started=lambda app: hasattr(app.state, "runtime")),
            Middleware(
                SocketRoutes,
                routes=sockets,
                prepare=compression(settings.ws_compression, settings.ws_compression_min_bytes),
            ),
        ],
        # Every HTTP route, wrapped by `api.service` or not (uploads): a store fault is 503, not 500.
        exception_handlers={StoreUnavailable: store_unavailable},
    )


def _app_from_env() -> Starlette:
    try:
        return create_app(from_env())
    except SettingsError as exc:
        # One clear line and a non-zero exit, not a traceback. uvicorn's start-up
        # failure status: its supervisor (--workers) then stops instead of restarting us.
        from uvicorn.config import STARTUP_FAILURE

        print(f"realtime: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(STARTUP_FAILURE) from None


# For servers that load `module:factory()` and not a module's `__getattr__` (hypercorn "server:app_from_env()").
app_from_env = _app_from_env


def __getattr__(name: str) -> Any:
    # `uvicorn server:app` builds the app from the environment on first access,
    # so importing this module (tests, embedding) reads no environment.
    if name == "app":
        app = _app_from_env()
        globals()["app"] = app
        return app
    raise AttributeError(name)
