"""A webhook receiver for the tests: a real HTTP server (Starlette under
uvicorn, in the test's event loop) that checks every delivery's signature with
`realtime.webhooks.verify` and records what it took.

Its answer is scripted (`answers`: statuses or `HANG`, one per request, then
200), and each request may be held (`hold`) so that two deliveries of one
stream at the same time show up as an overlap."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from realtime.webhooks import DELIVERY_HEADER, WebhookVerificationError, verify
from tests.conftest import serving

SECRET = "webhook-secret-for-tests-of-32-bytes-or-more"
HANG = -1  # an answer: hold the request far past the sender's timeout


class Receiver:
    def __init__(self, secret: str = SECRET) -> None:
        self.secret = secret
        self.url = ""
        self.answers: list[int] = []
        self.answer: Callable[[dict[str, Any]], int] | None = None  # decides when `answers` is empty
        self.hold = 0.0
        self.hang = 30.0
        self.requests = 0  # every POST, whatever came of it
        self.in_flight = 0
        self.bad_signatures = 0
        self.overlaps = 0  # a request arrived while another one of the same stream was being answered
        self.busy: Counter[str] = Counter()
        self.tried: list[dict[str, Any]] = []  # every event of every well-signed request
        self.events: list[dict[str, Any]] = []  # events of the requests answered 2xx, in order
        self.delivery_ids: list[str] = []

    async def handle(self, request: Request) -> Response:
        self.requests += 1
        body = await request.body()
        try:
            payload = verify(self.secret, request.headers, body)
        except WebhookVerificationError:
            self.bad_signatures += 1
            return Response(status_code=401)
        events = payload["events"]
        self.tried += events
        streams = {event["stream"] for event in events}
        if any(self.busy[stream] for stream in streams):
            self.overlaps += 1
        self.busy.update(streams)
        self.in_flight += 1
        try:
            status = self.answers.pop(0) if self.answers else self.answer(payload) if self.answer else 200
            if status == HANG:
                await asyncio.sleep(self.hang)
                status = 200
            if self.hold:
                await asyncio.sleep(self.hold)
        finally:
            self.in_flight -= 1
            self.busy.subtract(streams)
        if 200 <= status < 300:
            self.events += events
            self.delivery_ids.append(request.headers[DELIVERY_HEADER])
        return Response(status_code=status)

    def of(self, type_: str, events: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        return [event for event in (self.events if events is None else events) if event["type"] == type_]

    def duplicates(self) -> list[str]:
        counts = Counter(event["id"] for event in self.events)
        return [event_id for event_id, n in counts.items() if n > 1]

    async def wait_for(self, check: Callable[[Receiver], bool], timeout: float = 10.0, what: str = "events") -> None:
        deadline = time.monotonic() + timeout
        while not check(self):
            if time.monotonic() > deadline:
                types = Counter(event["type"] for event in self.events)
                raise AssertionError(f"no {what} within {timeout}s; received {dict(types)}")
            await asyncio.sleep(0.02)

    async def wait_types(self, *types: str, timeout: float = 10.0) -> None:
        """Until each of `types` was received at least once."""
        await self.wait_for(lambda r: all(r.of(t) for t in types), timeout, what=", ".join(types))


@contextlib.asynccontextmanager
async def receiving(secret: str = SECRET) -> AsyncIterator[Receiver]:
    receiver = Receiver(secret)
    app = Starlette(routes=[Route("/hook", receiver.handle, methods=["POST"])])
    async with serving(app, timeout_graceful_shutdown=1) as port:
        receiver.url = f"http://127.0.0.1:{port}/hook"
        yield receiver
