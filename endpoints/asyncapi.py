"""The protocol as an AsyncAPI 3.0 document, generated from the code:
`GET /asyncapi.json`.

Channels are the socket routes (`server.SOCKETS`); what a client may send on
each is its endpoint's `kinds` (the structs the decoder validates with); what
the server sends is `events.protocol.schema.SENDS`. msgspec turns both into JSON Schemas.
Operations are from the server's side: it `receive`s client frames and `send`s
its own. `docs/generate.py` renders the same document as `docs/asyncapi.md`.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..events.protocol import schema
from ..events.protocol.frames import MAX_BATCH, Frame

VERSION = "3.0.0"
REF = "#/components/schemas/{name}"
PARAMETER = re.compile(r"\{(\w+)\}")


class SocketClass(Protocol):
    """What the document reads off a socket channel's class (server.SOCKETS passes them in)."""

    channel: str
    kinds: Mapping[str, type[msgspec.Struct]]


Sockets = Sequence[tuple[str, type[SocketClass]]]


def _own_doc(obj: Any) -> str | None:
    """The first paragraph of the docstring written on this class or module itself, on one line."""
    text = obj.__dict__.get("__doc__")
    return " ".join(inspect.cleandoc(text).split("\n\n")[0].split()) if text else None


def _channel_keys(sockets: Sockets) -> list[str]:
    keys: list[str] = []
    for path, endpoint in sockets:
        params = PARAMETER.findall(path)
        key = endpoint.channel
        if key in keys:
            key = "-".join([key, *params]) if params else f"{key}-{len(keys)}"
        keys.append(key)
    return keys


def document(sockets: Sockets, host: str = "localhost:8000", protocol: str = "ws") -> dict[str, Any]:
    client_kinds: dict[type[Frame], str] = {}
    for _, endpoint in sockets:
        for type_, struct in endpoint.kinds.items():
            if client_kinds.setdefault(struct, type_) != type_:
                raise ValueError(f"{struct.__name__} is registered under two types")
    server_structs = sorted({s for sends in schema.SENDS.values() for s in sends}, key=_tag)
    structs = [*client_kinds, *server_structs]
    refs, components = msgspec.json.schema_components(structs, ref_template=REF)
    ref_of = {struct: ref["$ref"] for struct, ref in zip(structs, refs, strict=True)}

    # Client frames carry their `type` in the frame, not in the struct: add it.
    for struct, type_ in client_kinds.items():
        component = components[ref_of[struct].rsplit("/", 1)[1]]
        component["properties"] = {"type": {"const": type_}, **component.get("properties", {})}
        component["required"] = ["type", *component.get("required", [])]
    # A server frame's tag, which msgspec writes as a one-value enum, is a `const` too:
    # a literal, as generators read it, not an enumeration to be named.
    for struct in server_structs:
        components[ref_of[struct].rsplit("/", 1)[1]]["properties"]["type"] = {"const": _tag(struct)}
    _hoist_titled(components)

    messages: dict[str, Any] = {}
    client_message_key: dict[tuple[str, type[Frame]], str] = {}
    by_type: dict[str, set[type[Frame]]] = {}
    for _, endpoint in sockets:
        for type_, struct in endpoint.kinds.items():
            by_type.setdefault(type_, set()).add(struct)
    for _, endpoint in sockets:
        for type_, struct in endpoint.kinds.items():
            shared = len(by_type[type_]) == 1
            key = f"client.{type_}" if shared else f"client.{endpoint.channel}.{type_}"
            client_message_key[(endpoint.channel, struct)] = key
            about = schema.CLIENT_FRAMES.get(f"{endpoint.channel}.{type_}") or schema.CLIENT_FRAMES[type_]
            messages.setdefault(key, _message(type_, struct, ref_of[struct], "client", about))
    server_message_key: dict[type[msgspec.Struct], str] = {}
    for struct in server_structs:
        type_ = _tag(struct)
        key = f"server.{type_}"
        if key in messages:
            raise ValueError(f"two server frames are tagged {type_!r}")
        server_message_key[struct] = key
        messages[key] = _message(type_, struct, ref_of[struct], "server", _own_doc(struct))

    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for key, (path, endpoint) in zip(_channel_keys(sockets), sockets, strict=True):
        received = [client_message_key[(endpoint.channel, s)] for s in endpoint.kinds.values()]
        sent = [server_message_key[s] for s in schema.SENDS[endpoint.channel]]
        address = path.rstrip("/") + "/"
        channel: dict[str, Any] = {
            "address": address,
            "title": f"{endpoint.channel} ({address})",
            "messages": {m: {"$ref": f"#/components/messages/{m}"} for m in [*received, *sent]},
            "bindings": {"ws": {"method": "GET", "query": _query(endpoint), "bindingVersion": "0.1.0"}},
        }
        description = _own_doc(inspect.getmodule(endpoint))
        if description:
            channel["description"] = description + " The trailing slash is optional."
        params = PARAMETER.findall(path)
        if params:
            channel["parameters"] = {p: {"description": schema.PARAMETERS[p]} for p in params}
        channels[key] = channel
        for action, names in (("receive", received), ("send", sent)):
            operations[f"{key}.{action}"] = {
                "action": action,
                "channel": {"$ref": f"#/channels/{key}"},
                "summary": ("Frames a client sends on " if action == "receive" else "Frames the server sends on ")
                + address,
                "messages": [{"$ref": f"#/channels/{key}/messages/{m}"} for m in names],
            }

    return {
        "asyncapi": VERSION,
        "info": {
            "title": "realtime",
            "version": "1",
            "description": _description(),
            "x-close-codes": {str(code): meaning for code, meaning in schema.CLOSE_CODES.items()},
            "x-error-codes": dict(schema.ERRORS),
        },
        "defaultContentType": "application/json",
        "servers": {
            "realtime": {
                "host": host,
                "protocol": protocol,
                "description": "This server. Authenticate with one of the security schemes or a first `auth` frame.",
                "security": [{"$ref": f"#/components/securitySchemes/{name}"} for name in SECURITY],
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {"schemas": components, "messages": messages, "securitySchemes": SECURITY},
    }


SECURITY: dict[str, Any] = {
    "queryToken": {"type": "httpApiKey", "name": "token", "in": "query", "description": "The JWT as `?token=`."},
    "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
    "cookie": {"type": "httpApiKey", "name": "access_token", "in": "cookie", "description": "The JWT as a cookie."},
}


# What stays beside a `$ref` when a titled schema moves to the components: what
# the field says about itself, not the type's shape.
PER_USE = ("description", "default", "examples")


def _hoist_titled(components: dict[str, Any]) -> None:
    """Every titled schema inside a component (an enumeration: `Annotated[Literal[...],
    Meta(title=...)]`) becomes a component of that name, referenced where it was used,
    so that it is named once and generators name their types after it. Two shapes
    under one title are refused."""

    def visit(schema: dict[str, Any], at_root: bool) -> dict[str, Any]:
        schema = dict(schema)
        if "properties" in schema:
            schema["properties"] = {name: visit(value, False) for name, value in schema["properties"].items()}
        if "items" in schema:
            schema["items"] = visit(schema["items"], False)
        for key in ("anyOf", "oneOf", "allOf"):
            if key in schema:
                schema[key] = [visit(option, False) for option in schema[key]]
        if at_root or "title" not in schema:
            return schema
        shape = {key: value for key, value in schema.items() if key not in PER_USE}
        title = shape["title"]
        if components.setdefault(title, shape) != shape:
            raise ValueError(f"two schemas are titled {title!r}")
        return {"$ref": REF.format(name=title), **{key: schema[key] for key in PER_USE if key in schema}}

    for name in list(components):
        components[name] = visit(components[name], True)


def _tag(struct: type[msgspec.Struct]) -> str:
    tag = struct.__struct_config__.tag
    assert isinstance(tag, str), struct
    return tag


def _message(type_: str, struct: type[msgspec.Struct], ref: str, side: str, about: str | None) -> dict[str, Any]:
    message: dict[str, Any] = {
        "name": type_,
        "title": f"{type_} ({'client → server' if side == 'client' else 'server → client'})",
        "contentType": "application/json",
        "payload": {"$ref": ref},
    }
    if about:
        message["description"] = about
    return message


def _query(endpoint: type[SocketClass]) -> dict[str, Any]:
    token = {
        "type": "string",
        "description": "the JWT; or an `Authorization: Bearer` header, an `access_token` cookie, a first `auth` frame",
    }
    properties: dict[str, Any] = {"token": token}
    if "sync" in endpoint.kinds:
        properties["since"] = {
            "type": "integer",
            "minimum": 0,
            "description": "resume: the events after this seq replace the snapshot",
        }
        properties["epoch"] = {
            "type": "string",
            "maxLength": 64,
            "description": "the epoch `since` belongs to (from the snapshot); another one than the stream's "
            "gets `resync_required`; absent or blank: `since` is taken as it is",
        }
    # A title, as every object schema of the document has: `ChatQuery`, `NotificationsQuery`...
    return {"title": f"{endpoint.channel.title()}Query", "type": "object", "properties": properties}


def _description() -> str:
    codes = "\n".join(f"| {code} | {meaning} |" for code, meaning in schema.CLOSE_CODES.items())
    errors = "\n".join(f"| `{code}` | {meaning} |" for code, meaning in schema.ERRORS.items())
    return (
        "WebSocket text frames, each one JSON object with a string `type`. A client may also send an array of "
        f"up to {MAX_BATCH} frames, handled in order; the server always sends single objects. Unknown fields "
        "in client frames are ignored. Bad input gets an `error` frame and the connection stays usable.\n\n"
        "Authenticate with a JWT as `?token=`, an `Authorization: Bearer` header, an `access_token` cookie, or a "
        'first frame `{"type": "auth", "token": ...}` within AUTH_TIMEOUT (10 s).\n\n'
        f"Close codes:\n\n| code | when |\n|---|---|\n{codes}\n\n"
        f"Error codes (`error.code`):\n\n| code | when |\n|---|---|\n{errors}"
    )


def routes(sockets: Sockets) -> list[Route]:
    cache: dict[tuple[str, str], dict[str, Any]] = {}

    async def asyncapi(request: Request) -> Response:
        # The document names the host it was asked on, as ws:// or wss://.
        protocol = "wss" if request.url.scheme == "https" else "ws"
        key = (request.url.netloc, protocol)
        if key not in cache:
            if len(cache) > 16:
                cache.clear()
            cache[key] = document(sockets, request.url.netloc, protocol)
        return JSONResponse(cache[key])

    return [Route("/asyncapi.json", asyncapi)]
