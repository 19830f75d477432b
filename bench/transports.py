"""The project's app with the uvicorn fast path off, for `--targets project-plain`.

`uvicorn bench.transports:plain` serves `server:app` behind a middleware that
wraps `send` (as a host app's middleware would): the uvicorn adapter then
declines and every socket takes the plain ASGI path, on the same server,
protocol and flags as `project`.
"""

from __future__ import annotations

from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class WrappedSend:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def wrapped(message: Message) -> None:
            await send(message)

        await self.app(scope, receive, wrapped)


def __getattr__(name: str) -> Any:
    if name == "plain":
        from realtime import server

        app = WrappedSend(server.app)
        globals()["plain"] = app
        return app
    raise AttributeError(name)
