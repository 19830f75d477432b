"""A host Starlette app with the realtime server mounted under `/realtime`.

    pip install .        # the package `realtime`, imported under that one name
    JWT_SECRET=... SERVICE_KEY=... python examples/embed.py

From a checkout's root, `uvicorn examples.embed:app` runs it without installing.

The host's lifespan runs the realtime app's (Starlette never runs a mounted
app's lifespan by itself), and the host's own routes call the realtime server
from Python: a notification when an order is paid, a system message in a chat
room. Clients connect to `ws://host/realtime/ws/chat/{room_id}/` and so on.

The host app has its own middleware (GZip here), which wraps the server's
`send`; the realtime sockets would then take the plain ASGI path. The app the
server runs is therefore `transport.raw_send(host)`: outermost, it hands the
server's own `send` through the host's middleware to the realtime app, and
under uvicorn (`--ws websockets-sansio`) the fast path stays in effect (see
docs/deploy.md, "ASGI servers"). `uvicorn examples.embed:app` runs it too.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route

from realtime.embedding import Realtime
from realtime.settings import Settings, from_env
from realtime.store.errors import NotFound
from realtime.transport import RawSend, raw_send


def build(settings: Settings) -> tuple[Starlette, Realtime]:
    """The host app (to be served wrapped in `raw_send`) and its realtime server."""
    realtime = Realtime(settings)

    async def home(request: Request) -> Response:
        return PlainTextResponse("the host app; the realtime server is under /realtime")

    async def order_paid(request: Request) -> Response:
        order_id = request.path_params["order_id"]
        user_id = int(request.query_params["user_id"])
        created = await realtime.notify(
            [user_id], "payment", "결제가 완료되었습니다", f"주문 {order_id}", action_url=f"/orders/{order_id}"
        )
        return JSONResponse({"notifications": created})

    async def booking_confirmed(request: Request) -> Response:
        # The host's own booking flow: the consultation and its chat room, made from Python.
        data = await request.json()
        try:
            booking = await realtime.create_consultation(
                data["expert_id"], data["client_id"], consultation_id=request.path_params["booking_id"]
            )
            room = await realtime.create_room(
                [data["expert_id"], data["client_id"]], room_id=booking["id"], consultation_id=booking["id"]
            )
        except ValueError as exc:
            return JSONResponse({"error": "invalid_payload", "message": str(exc)}, status_code=400)
        return JSONResponse({"consultation": booking, "room": room}, status_code=201)

    async def announce(request: Request) -> Response:
        data = await request.json()
        try:
            message = await realtime.publish(data["room_id"], data["content"])
        except NotFound:
            return JSONResponse({"error": "not_found"}, status_code=404)
        except ValueError as exc:
            return JSONResponse({"error": "invalid_payload", "message": str(exc)}, status_code=400)
        return JSONResponse({"message": message}, status_code=201)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # The host's own start-up and shutdown go around the realtime server's.
        async with realtime.lifespan():
            yield

    app = Starlette(
        routes=[
            Route("/", home),
            Route("/orders/{order_id}/paid", order_paid, methods=["POST"]),
            Route("/bookings/{booking_id}/confirmed", booking_confirmed, methods=["POST"]),
            Route("/announce", announce, methods=["POST"]),
            Mount("/realtime", app=realtime.app),
        ],
        middleware=[Middleware(GZipMiddleware, minimum_size=1000)],
        lifespan=lifespan,
    )
    return app, realtime


def __getattr__(name: str) -> RawSend | Starlette:
    # `uvicorn examples.embed:app`: built from the environment on first access.
    # `bare` is the host app without the wrapper (the fast path then turns itself off).
    if name in ("app", "bare"):
        host, _ = build(from_env())
        return raw_send(host) if name == "app" else host
    raise AttributeError(name)


if __name__ == "__main__":
    import uvicorn

    host, _ = build(from_env())
    uvicorn.run(raw_send(host), host="127.0.0.1", port=int(os.environ.get("PORT", "8000")), ws="websockets-sansio")
