"""The server API for chat messages: the main backend posts into a room and
reads its history.

`POST /api/rooms/{room_id}/messages` takes the fields of the socket's
`chat_message` frame, validated by the same struct, and the message goes the
same way as one sent on a socket (`Node.post_message`: stored, published on
the room's stream, the members away from the room notified).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..events.node import operations
from ..events.node.node import Runtime
from ..events.protocol.chat import ChatMessage, FetchHistory
from .api import UserId, body, path_room, query, service


class MessageBody(ChatMessage, forbid_unknown_fields=True):
    """A `chat_message` frame's fields, and who sends it: `user_id`, a member of
    the room (shown with their stored profile), or nobody: the system (id 0).
    No other field is taken: a misspelt or unsupported one (`sender`, `type`) is refused."""

    user_id: UserId | None = None


@service
async def post_message(request: Request, rt: Runtime) -> Response:
    room_id = path_room(request)
    data = await body(request, MessageBody)
    posted = await operations.post_message(
        rt,
        room_id,
        data.content,
        user_id=data.user_id,
        message_type=data.message_type,
        file_url=data.file_url,
        file_name=data.file_name,
        client_msg_id=data.client_msg_id,
    )
    # No frame: this `client_msg_id` was stored before, and this is the original.
    return JSONResponse({"message": posted.message}, status_code=201 if posted.frame is not None else 200)


@service
async def get_messages(request: Request, rt: Runtime) -> Response:
    room_id = path_room(request)
    page = query(request, FetchHistory)
    listed, has_more = await operations.history(rt, room_id, page.before_seq, page.limit)
    return JSONResponse({"messages": listed, "has_more": has_more})


routes = [
    Route("/api/rooms/{room_id}/messages", post_message, methods=["POST"]),
    Route("/api/rooms/{room_id}/messages", get_messages, methods=["GET"]),
]
