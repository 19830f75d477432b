"""The server API as an OpenAPI 3.1 document, generated from the code:
`GET /openapi.json`.

Every mounted `/api` route has its entry in `OPERATIONS` (the app factory
refuses to build an app where a route and the table disagree). Request bodies
and query parameters are the structs the routes decode with; the answers are
`endpoints/api_schema.py`'s; msgspec turns all of them into JSON Schemas
(draft 2020-12, which OpenAPI 3.1 uses as it is). `docs/generate.py` writes a
copy to `docs/openapi.json`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from msgspec import Struct
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from ..events.protocol.chat import FetchHistory
from . import api_schema as answers
from .api import MAX_BODY, DisconnectBody, RoomBody, RoomId, UserBody, UserId
from .consultation_api import ConsultationBody, ReasonBody
from .messages_api import MessageBody
from .notifications_api import NotificationBody
from .presence_api import PresenceQuery

VERSION = "3.1.0"
REF = "#/components/schemas/{name}"
PARAMETER = re.compile(r"\{(\w+)\}")
PREFIX = "/api/"

ERRORS: dict[int, str] = {
    400: "Bad input (`invalid_json`, `invalid_payload`, a NUL character in any text included); nothing changed.",
    401: "`unauthorized`: no `Authorization: Bearer <SERVICE_KEY>`, or another key.",
    403: "`forbidden`.",
    404: "`not_found`.",
    409: "`conflict`.",
    413: f"`too_large`: a body over {MAX_BODY} bytes.",
    503: "`unavailable`: `SERVICE_KEY` is not set, or the store is away for now (then with `Retry-After`).",
}
# Every route checks the key and may meet a store that is away.
ALWAYS = (401, 503)

PATH_PARAMETERS: dict[str, tuple[Any, str]] = {
    "user_id": (UserId, "a user id, as the main backend's"),
    "room_id": (RoomId, "a room id"),
    "consultation_id": (RoomId, "a consultation id"),
}


@dataclass(frozen=True)
class Operation:
    tag: str
    summary: str
    status: int  # the answer when it works
    answer: tuple[type[Struct], ...]  # its body: one of these; none: no body
    errors: tuple[int, ...] = ()  # besides ALWAYS; a 403/404/409 with the case it stands for
    cases: dict[int, str] = field(default_factory=dict)  # what an error status (or another success) means here
    body: type[Struct] | None = None
    body_optional: bool = False  # no body at all is the struct's defaults
    query: type[Struct] | None = None
    description: str = ""


OPERATIONS: dict[tuple[str, str], Operation] = {
    ("PUT", "/api/users/{user_id}"): Operation(
        "users",
        "Create or update a user's profile",
        200,
        (answers.UserAnswer,),
        (400, 404, 413),
        {404: "not a user id"},
        body=UserBody,
        description="What the protocol shows for a user whose token carries no `name`, `role` or `profile_image`.",
    ),
    ("POST", "/api/users/{user_id}/disconnect"): Operation(
        "users",
        "Close a user's sockets on every process",
        202,
        (answers.DisconnectAnswer,),
        (400, 404, 413),
        {404: "not a user id"},
        body=DisconnectBody,
        body_optional=True,
        description="Their sockets close with 4001. With `revoke: true`, their tokens issued up to now are refused "
        "from then on, across restarts.",
    ),
    ("GET", "/api/users/{user_id}/sockets"): Operation(
        "presence",
        "A user's open sockets, on every process",
        200,
        (answers.UserSockets,),
        (404,),
        {404: "not a user id"},
        description="With `BROKER_URL=redis://` every process's (from the per-user socket slots; while Redis "
        "cannot be reached, the answering process's only); with `memory://` the one process's.",
    ),
    ("POST", "/api/rooms"): Operation(
        "rooms",
        "Create a chat room",
        201,
        (answers.RoomAnswer,),
        (400, 409, 413),
        {409: "a room with this id exists"},
        body=RoomBody,
    ),
    ("PUT", "/api/rooms/{room_id}/members/{user_id}"): Operation(
        "rooms",
        "Add a member",
        204,
        (),
        (404,),
        {404: "no such room"},
    ),
    ("DELETE", "/api/rooms/{room_id}/members/{user_id}"): Operation(
        "rooms",
        "Remove a member",
        204,
        (),
        (404,),
        {404: "no such room, or not a member"},
        description="Their chat sockets on the room close with 4003 on every process; a frame of theirs handled "
        "after the removal is refused.",
    ),
    ("POST", "/api/rooms/{room_id}/messages"): Operation(
        "messages",
        "Post a chat message, as a member or as the system",
        201,
        (answers.MessageAnswer,),
        (400, 403, 404, 413),
        {
            200: "A repeated `client_msg_id` (from the same sender in the same room): the original message; "
            "nothing is stored or sent again.",
            403: "`user_id` is not a member of the room",
            404: "no such room",
        },
        body=MessageBody,
        description="The fields of the socket's `chat_message` frame, checked as that frame is. Delivered as a "
        "message sent on a socket: stored, `chat_message` to every member's sockets on every process, and a "
        "notification to the members away from the room. Without `user_id` the sender is the system "
        '(`{"id": 0, "name": "System"}`).',
    ),
    ("GET", "/api/rooms/{room_id}/messages"): Operation(
        "messages",
        "Read a room's history",
        200,
        (answers.HistoryAnswer,),
        (400, 404),
        {404: "no such room"},
        query=FetchHistory,
        description="As the socket's `fetch_history`: the messages before `before_seq` (the newest without it), "
        "oldest first. A blank value is no value.",
    ),
    ("POST", "/api/consultations"): Operation(
        "consultations",
        "Book a consultation",
        201,
        (answers.ConsultationAnswer,),
        (400, 409, 413),
        {409: "a consultation with this id exists"},
        body=ConsultationBody,
        description="`scheduled_start` without an offset is UTC.",
    ),
    ("GET", "/api/consultations/{consultation_id}"): Operation(
        "consultations",
        "Read a consultation",
        200,
        (answers.ConsultationAnswer,),
        (404,),
        {404: "no such consultation"},
    ),
    ("POST", "/api/consultations/{consultation_id}/start"): Operation(
        "consultations",
        "Start a consultation now",
        200,
        (answers.ConsultationAnswer,),
        (404, 409),
        {404: "no such consultation", 409: "not in a state it can start from"},
        description="Both participants' sockets get `consultation_started`.",
    ),
    ("POST", "/api/consultations/{consultation_id}/end"): Operation(
        "consultations",
        "End a consultation",
        200,
        (answers.ConsultationAnswer,),
        (400, 404, 409, 413),
        {404: "no such consultation", 409: "not in progress"},
        body=ReasonBody,
        body_optional=True,
        description="`reason` defaults to `ended_by_platform`; the sockets get `consultation_ended`.",
    ),
    ("POST", "/api/consultations/{consultation_id}/cancel"): Operation(
        "consultations",
        "Cancel a consultation before it starts",
        200,
        (answers.ConsultationAnswer,),
        (400, 404, 409, 413),
        {404: "no such consultation", 409: "started or over already"},
        body=ReasonBody,
        body_optional=True,
    ),
    ("POST", "/api/notifications"): Operation(
        "notifications",
        "Notify one user or many",
        201,
        (answers.NotificationsAnswer,),
        (400, 413),
        body=NotificationBody,
        description="Exactly one of `user_id` and `user_ids`; stored in one write, then `new_notification` to "
        "each user's sockets on every process.",
    ),
    ("GET", "/api/presence"): Operation(
        "presence",
        "Who is connected: a room's, a consultation's, or one user",
        200,
        (answers.RoomPresence, answers.ConsultationPresence, answers.UserPresence),
        (400, 404),
        {400: "not exactly one of `room`, `consultation`, `user`, or a bad value", 404: "no such room or consultation"},
        query=PresenceQuery,
        description="Exactly one of: `room` (its members with a chat socket open on it), `consultation` (its "
        "participants present), `user` (whether they have any socket open, and on which channels). Every "
        "process's, with `BROKER_URL=redis://`.",
    ),
}


def mounted(routes: Iterable[BaseRoute]) -> set[tuple[str, str]]:
    """(method, path) of every server API route among `routes`."""
    return {
        (method, route.path)
        for route in routes
        if isinstance(route, Route) and route.path.startswith(PREFIX)
        for method in route.methods or ()
        if method != "HEAD"
    }


def check(routes: Iterable[BaseRoute]) -> None:
    """Every mounted route is documented, and every documented one is mounted."""
    found = mounted(routes)
    if found != set(OPERATIONS):
        undocumented, unmounted = sorted(found - set(OPERATIONS)), sorted(set(OPERATIONS) - found)
        raise ValueError(f"endpoints/openapi.py: undocumented routes {undocumented}, unmounted {unmounted}")


def _structs() -> list[Any]:
    structs: list[Any] = [answers.ErrorAnswer]
    for op in OPERATIONS.values():
        structs += [s for s in (op.body, op.query, *op.answer) if s is not None]
    return list(dict.fromkeys(structs))


def _parameters(path: str, op: Operation, queries: dict[Any, dict[str, Any]]) -> list[dict[str, Any]]:
    parameters = []
    for name in PARAMETER.findall(path):
        kind, description = PATH_PARAMETERS[name]
        schema = msgspec.json.schema(kind)
        parameters.append({"name": name, "in": "path", "required": True, "description": description, "schema": schema})
    if op.query is not None:
        query = queries[op.query]
        required = set(query.get("required", []))
        for name, schema in query["properties"].items():
            parameters.append({"name": name, "in": "query", "required": name in required, "schema": schema})
    return parameters


def _json(refs: list[str]) -> dict[str, Any]:
    schemas = [{"$ref": REF.format(name=name)} for name in refs]
    return {"application/json": {"schema": schemas[0] if len(schemas) == 1 else {"oneOf": schemas}}}


def _responses(op: Operation, refs: dict[Any, str]) -> dict[str, Any]:
    answer = [refs[s] for s in op.answer]
    ok: dict[str, Any] = {"description": op.summary}
    if answer:
        ok["content"] = _json(answer)
    responses: dict[str, Any] = {str(op.status): ok}
    for status, case in op.cases.items():
        if status < 300:
            responses[str(status)] = {"description": case, **({"content": _json(answer)} if answer else {})}
    for status in sorted({*op.errors, *ALWAYS}):
        description = ERRORS[status]
        if status in op.cases:
            description += f" Here: {op.cases[status]}."
        responses[str(status)] = {"description": description, "content": _json([refs[answers.ErrorAnswer]])}
    return dict(sorted(responses.items()))


def _operation_id(method: str, path: str) -> str:
    words = [part.strip("{}") for part in path.removeprefix(PREFIX).split("/")]
    return "_".join([method.lower(), *words])


def document(server_url: str = "/") -> dict[str, Any]:
    structs = _structs()
    schemas, components = msgspec.json.schema_components(structs, ref_template=REF)
    refs = {struct: schema["$ref"].rsplit("/", 1)[1] for struct, schema in zip(structs, schemas, strict=True)}
    # A query struct's fields become parameters: its own component is referred to by nothing.
    queries = {op.query: components.pop(refs[op.query]) for op in OPERATIONS.values() if op.query is not None}
    paths: dict[str, dict[str, Any]] = {}
    for (method, path), op in OPERATIONS.items():
        operation: dict[str, Any] = {
            "operationId": _operation_id(method, path),
            "tags": [op.tag],
            "summary": op.summary,
        }
        if op.description:
            operation["description"] = op.description
        parameters = _parameters(path, op, queries)
        if parameters:
            operation["parameters"] = parameters
        if op.body is not None:
            operation["requestBody"] = {
                "required": not op.body_optional,
                "content": _json([refs[op.body]]),
            }
            if op.body_optional:
                operation["requestBody"]["description"] = "Optional: no body is the defaults."
        operation["responses"] = _responses(op, refs)
        paths.setdefault(path, {})[method.lower()] = operation
    return {
        "openapi": VERSION,
        "info": {
            "title": "realtime server API",
            "version": "1",
            "description": "For the platform's main backend: users, rooms and members, chat messages, "
            "consultations, notifications, presence. Every route needs `Authorization: Bearer <SERVICE_KEY>`. "
            "A change made here reaches the sockets on every process as the same frames a socket's action "
            "sends. The WebSocket protocol is the AsyncAPI document at `/asyncapi.json`.",
        },
        "servers": [{"url": server_url}],
        "security": [{"serviceKey": []}],
        "tags": [{"name": tag} for tag in dict.fromkeys(op.tag for op in OPERATIONS.values())],
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": dict(sorted(components.items())),
            "securitySchemes": {
                "serviceKey": {"type": "http", "scheme": "bearer", "description": "the `SERVICE_KEY` setting"}
            },
        },
    }


def routes(api_routes: Iterable[BaseRoute]) -> list[Route]:
    """`GET /openapi.json` for the mounted `api_routes` (checked against the document now)."""
    check(api_routes)
    cache: dict[str, dict[str, Any]] = {}

    async def openapi(request: Request) -> Response:
        # Under a host app's prefix (embedding) the routes are under it too.
        root = request.scope.get("root_path", "") or "/"
        if root not in cache:
            if len(cache) > 16:
                cache.clear()
            cache[root] = document(root)
        return JSONResponse(cache[root])

    return [Route("/openapi.json", openapi)]
