"""Servers that run no ASGI lifespan (daphne): start the app on first use.

Under such a server the app's start-up (the store, the broker, the runtime)
would never run and every request would fail. `StartOnFirstUse` notices that
a request came before any lifespan event, with the app not started (`started`,
given the app: a host app that embeds this one runs its lifespan itself), and
runs the app's lifespan start-up then, once, with the others waiting; its
shutdown never runs there (the server never says it stops), which is logged.
Under a server that does run the lifespan it only watches the `lifespan`
scope go by.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

log = logging.getLogger("realtime.transport")


class StartOnFirstUse:
    def __init__(self, app: ASGIApp, started: Callable[[Any], bool]) -> None:
        self.app = app
        self.app_started = started
        self.lifespan_seen = False
        self.started = False
        self._lock: asyncio.Lock | None = None
        # Held open for the process's life: the server never asks for the shutdown.
        self._stack = contextlib.AsyncExitStack()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            self.lifespan_seen = True
        elif not self.lifespan_seen and not self.started:
            # Once a start is under way, every request waits for it (the app's state is set part-way).
            if self._lock is not None or not self.app_started(scope["app"]):
                await self._start(scope["app"])
        await self.app(scope, receive, send)

    async def _start(self, app: Any) -> None:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self.started:
                return
            log.warning(
                "the ASGI server ran no lifespan start-up: services started on the first request; "
                "their shutdown will not run (use a server with lifespan support for a graceful stop)"
            )
            try:
                await self._stack.enter_async_context(app.router.lifespan_context(app))
            except SystemExit as exc:
                # The start-up refused (one line, as at a lifespan start-up): every request fails until fixed.
                log.error("%s", exc)
                raise RuntimeError(str(exc)) from None
            self.started = True
