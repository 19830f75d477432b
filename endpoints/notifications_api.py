"""`POST /api/notifications`: the main backend notifies one user or many.

`{user_id | user_ids, type, title, body, action_url?}` → 201. Up to 10,000
users per call, stored in one write and published to each user's stream.
"""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta, Struct
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..events.node.node import Runtime
from ..events.protocol.links import safe_url
from .api import ApiError, UserId, body, service

MAX_RECIPIENTS = 10_000


class NotificationBody(Struct):
    type: Literal["consultation", "message", "payment", "system"]
    title: Annotated[str, Meta(min_length=1, max_length=200)]
    body: Annotated[str, Meta(max_length=2_000)]
    user_id: UserId | None = None
    user_ids: Annotated[list[UserId], Meta(min_length=1, max_length=MAX_RECIPIENTS)] | None = None
    action_url: Annotated[str, Meta(min_length=1, max_length=2_048)] | None = None


def notification_problem(data: NotificationBody) -> str | None:
    """What the struct's own constraints cannot say (the route and the Python API both ask)."""
    if not data.title.strip():
        return "`title` must not be blank"
    if data.action_url is not None and not safe_url(data.action_url):
        return "`action_url` must be an http(s) URL or a path on the site"
    return None


@service
async def post_notification(request: Request, rt: Runtime) -> Response:
    data = await body(request, NotificationBody)
    if (data.user_id is None) == (data.user_ids is None):
        raise ApiError(400, "invalid_payload", "give exactly one of `user_id` and `user_ids`")
    if (problem := notification_problem(data)) is not None:
        raise ApiError(400, "invalid_payload", problem)
    recipients = [data.user_id] if data.user_id is not None else data.user_ids or []
    created = await rt.notify(recipients, data.type, data.title, data.body, data.action_url)
    listed = [{"user_id": c.user_id, "id": c.notification["id"], "seq": c.seq} for c in created]
    return JSONResponse({"count": len(listed), "notifications": listed}, status_code=201)


routes = [Route("/api/notifications", post_notification, methods=["POST"])]
