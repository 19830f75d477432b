"""The AsyncAPI document: valid AsyncAPI 3.0, served as generated, and true:
every frame a scripted session on every channel really receives validates
against the document's schema for that channel, and every frame the document
declares is seen."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from jsonschema import Draft7Validator
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from realtime.endpoints import asyncapi, base
from realtime.endpoints.asyncapi import document
from realtime.events.node import control
from realtime.events.protocol import errors, schema
from realtime.server import SOCKETS
from realtime.transport.asgi import SLOW_CONSUMER
from tests.conftest import Client, Server, token
from tests.test_agora import APP_CERT, APP_ID

ROOT = Path(__file__).resolve().parent.parent
DOC = document(SOCKETS)
SPEC = json.loads((ROOT / "tests" / "data" / "asyncapi-3.0.0.schema.json").read_text())
KEY = re.compile(r"^[\w.\-]+$")


def resolve(ref: str, doc: dict[str, Any] = DOC) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def validator(ref: str) -> Draft7Validator:
    """A validator for one schema of the document, its `$ref`s resolved in the document."""
    return Draft7Validator({"$ref": ref, "components": DOC["components"]})


def payload_ref(channel: str, action: str, type_: str) -> str:
    """The payload schema of the `type_` message of one operation; fails if it has none."""
    for ref in DOC["operations"][f"{channel}.{action}"]["messages"]:
        message = resolve(resolve(ref["$ref"])["$ref"])
        if message["name"] == type_:
            return message["payload"]["$ref"]
    raise AssertionError(f"{channel} does not declare a {action} message {type_!r}")


def declared(channel: str, action: str) -> set[str]:
    return {
        resolve(resolve(ref["$ref"])["$ref"])["name"] for ref in DOC["operations"][f"{channel}.{action}"]["messages"]
    }


# ---- the document itself -----------------------------------------------------------


def test_the_document_is_valid_asyncapi_3() -> None:
    problems = [f"{list(e.absolute_path)}: {e.message[:200]}" for e in Draft7Validator(SPEC).iter_errors(DOC)]
    assert not problems, "\n".join(problems)
    assert DOC["asyncapi"] == "3.0.0" and DOC["info"]["title"] and DOC["info"]["version"]


def test_every_reference_resolves_and_operations_stay_in_their_channel() -> None:
    refs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                refs.append(node["$ref"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(DOC)
    assert refs
    for ref in refs:
        resolve(ref)
    for key, operation in DOC["operations"].items():
        assert KEY.match(key)
        channel = operation["channel"]["$ref"]
        # AsyncAPI 3: an operation's messages are those of its channel.
        for message in operation["messages"]:
            assert message["$ref"].startswith(channel + "/messages/"), (key, message)
    for schema_ in DOC["components"]["schemas"].values():
        Draft7Validator.check_schema(schema_)
        # The default schema format is draft 07: no keywords of later drafts.
        assert not {"$defs", "prefixItems", "unevaluatedProperties", "dependentRequired"} & set(json.dumps(schema_))


def test_channels_are_the_socket_routes_and_receive_what_the_decoder_takes() -> None:
    addresses = {channel["address"] for channel in DOC["channels"].values()}
    assert addresses == {path.rstrip("/") + "/" for path, _ in SOCKETS}
    for path, endpoint in SOCKETS:
        key = next(k for k, c in DOC["channels"].items() if c["address"] == path.rstrip("/") + "/")
        assert declared(key, "receive") == set(endpoint.kinds)
        assert declared(key, "send") == {s.__struct_config__.tag for s in schema.SENDS[endpoint.channel]}
        assert set(DOC["channels"][key].get("parameters", {})) == set(re.findall(r"\{(\w+)\}", path))


def test_every_close_code_and_error_code_is_documented() -> None:
    used = {value for name, value in vars(base).items() if name.isupper() and isinstance(value, int)}
    used |= {SLOW_CONSUMER, control.REVOKED, 1012}
    assert used <= set(schema.CLOSE_CODES), used - set(schema.CLOSE_CODES)
    assert set(DOC["info"]["x-close-codes"]) == {str(code) for code in schema.CLOSE_CODES}
    assert set(schema.ERRORS) == set(errors.CODES)
    code = resolve("#/components/schemas/Error")["properties"]["code"]
    assert resolve(code["$ref"])["enum"] == list(errors.CODES)


PASCAL = re.compile(r"^[A-Z][a-z0-9]+(?:[A-Z][a-z0-9]*)*$")


def named_schemas(node: Any, path: str = "#") -> list[tuple[str, dict[str, Any]]]:
    """Every schema of an object or an enumeration anywhere in a document, with where it is."""
    found: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        if "properties" in node or "enum" in node or node.get("type") == "object":
            found.append((path, node))
        for key, value in node.items():
            found += named_schemas(value, f"{path}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += named_schemas(value, f"{path}/{index}")
    return found


def test_every_object_and_enumeration_has_a_unique_pascal_case_title() -> None:
    """What generators (frames.ts, AsyncAPI's own) name their types after: no
    `AnonymousSchema_9`, one name for one shape."""
    doc = json.loads((ROOT / "docs" / "asyncapi.json").read_text())
    schemas = doc["components"]["schemas"]
    for name, schema_ in schemas.items():
        assert schema_.get("title") == name, f"component {name} is titled {schema_.get('title')!r}"
    shapes: dict[str, set[str]] = {}
    found = named_schemas(doc)
    assert len(found) > len(schemas)  # the components, and the channels' query objects
    for path, schema_ in found:
        title = schema_.get("title")
        assert isinstance(title, str), f"{path} has no title"
        assert PASCAL.match(title), f"{path}: {title!r} is not PascalCase"
        shapes.setdefault(title, set()).add(json.dumps(schema_, sort_keys=True))
    twice = sorted(title for title, seen in shapes.items() if len(seen) > 1)
    assert not twice, f"titles naming two shapes: {twice}"
    # Enumerations are components, referenced where used; a type tag is a `const`.
    inline = [path for path, s in found if "enum" in s and not re.fullmatch(r"#/components/schemas/\w+", path)]
    assert not inline, inline
    assert schemas["Pong"]["properties"]["type"] == {"const": "pong"}
    assert schemas["ChatMessageRecord"]["properties"]["message_type"] == {"$ref": "#/components/schemas/MessageType"}


def test_one_title_for_two_shapes_is_refused() -> None:
    components = {
        "A": {"title": "A", "type": "object", "properties": {"x": {"title": "Kind", "enum": ["a"]}}},
        "B": {"title": "B", "type": "object", "properties": {"y": {"title": "Kind", "enum": ["b"]}}},
    }
    with pytest.raises(ValueError, match="Kind"):
        asyncapi._hoist_titled(components)
    same = {
        "A": {"title": "A", "properties": {"x": {"title": "Kind", "enum": ["a"], "description": "one"}}},
        "B": {"title": "B", "properties": {"y": {"anyOf": [{"title": "Kind", "enum": ["a"]}, {"type": "null"}]}}},
    }
    asyncapi._hoist_titled(same)
    assert same["Kind"] == {"title": "Kind", "enum": ["a"]}
    assert same["A"]["properties"]["x"] == {"$ref": "#/components/schemas/Kind", "description": "one"}
    assert same["B"]["properties"]["y"]["anyOf"][0] == {"$ref": "#/components/schemas/Kind"}


def test_client_schemas_refuse_what_the_decoder_refuses() -> None:
    cases = [
        ("chat", "chat_message", {"type": "chat_message", "message_type": "video", "content": "x"}),
        ("chat", "fetch_history", {"type": "fetch_history", "limit": 500}),
        ("consultation", "request_extension", {"type": "request_extension", "duration_minutes": 0}),
        ("reservation", "expert_message", {"type": "expert_message", "message": "hi"}),
        ("notifications", "mark_read", {"type": "mark_read"}),
        ("chat", "ping", {"type": "pong"}),
    ]
    for channel, type_, frame in cases:
        assert not validator(payload_ref(channel, "receive", type_)).is_valid(frame), frame
    # Unknown fields are ignored by the decoder, and so by the schema.
    assert validator(payload_ref("chat", "receive", "ping")).is_valid({"type": "ping", "extra": 1})


def test_the_generated_docs_are_up_to_date() -> None:
    result = subprocess.run(
        [sys.executable, "docs/generate.py", "--check"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


async def test_the_server_serves_the_document_for_its_own_host(server: Server) -> None:
    async with httpx.AsyncClient() as client:
        served = (await client.get(f"{server.http}/asyncapi.json")).json()
    assert served == document(SOCKETS, f"127.0.0.1:{server.port}", "ws")
    assert served["servers"]["realtime"]["host"] == f"127.0.0.1:{server.port}"


# ---- a real session on every channel -------------------------------------------------


class Recorded(Client):
    """A client whose every frame, in and out, is kept with its channel."""

    def __init__(self, conn: Any, channel: str, session: Session) -> None:
        super().__init__(conn)
        self.channel = channel
        self.session = session

    async def send(self, frame: Any) -> None:
        if isinstance(frame, dict):
            self.session.sent.append((self.channel, frame))
        await super().send(frame)

    async def recv(self, timeout: float = 5.0) -> dict[str, Any]:
        frame = await super().recv(timeout)
        self.session.received.append((self.channel, frame))
        return frame

    async def until(self, type_: str, timeout: float = 10.0) -> dict[str, Any]:
        """Read (and keep) frames until one of `type_` arrives."""
        deadline = time.monotonic() + timeout
        while True:
            frame = await self.recv(max(0.01, deadline - time.monotonic()))
            if frame["type"] == type_:
                return frame

    async def drain(self) -> None:
        # A socket the server closed (a finished consultation) has nothing more to drain.
        with contextlib.suppress(TimeoutError, ConnectionClosed):
            while True:
                await self.recv(0.2)


class Session:
    def __init__(self, server: Server) -> None:
        self.server = server
        self.received: list[tuple[str, dict[str, Any]]] = []
        self.sent: list[tuple[str, dict[str, Any]]] = []

    @contextlib.asynccontextmanager
    async def socket(self, channel: str, path: str, user: int | None = None, **query: Any) -> AsyncIterator[Recorded]:
        if user is not None:
            query.setdefault("token", token(user, name=f"user{user}", role=query.pop("role", None)))
        async with connect(self.server.ws_url(path, **query), open_timeout=5, close_timeout=2) as conn:
            client = Recorded(conn, channel, self)
            try:
                yield client
            finally:
                await client.drain()

    @contextlib.asynccontextmanager
    async def expiring(self, channel: str, path: str, user: int, first: str, **claims: Any) -> AsyncIterator[Recorded]:
        """A socket that authenticates with an `auth` frame and a token about to expire."""
        async with self.socket(channel, path) as client:
            await client.send({"type": "auth", "token": token(user, exp=time.time() + 3, **claims)})
            await client.expect("auth_ok")
            await client.until(first)
            yield client

    async def common(self, client: Recorded) -> None:
        await client.send({"type": "ping"})
        await client.until("pong")
        await client.send("{oops")
        await client.until("error")
        await client.send([{"type": "nope", "client_msg_id": "q1"}, {"type": "ping", "client_msg_id": 7}])
        await client.until("error")


async def chat_session(s: Session) -> None:
    await s.server.room("r", [1, 2])
    path = "/ws/chat/r/"
    async with (
        s.socket("chat", path, 1) as a,
        s.socket("chat", path, 2) as b,
        s.expiring("chat", path, 1, "message_history", name="one") as short,
    ):
        await a.expect("message_history")
        await b.expect("message_history")
        await a.send({"type": "chat_message", "content": "hello", "client_msg_id": "m1"})
        message = (await b.until("chat_message"))["message"]
        await a.send({"type": "chat_message", "message_type": "image", "file_url": "/files/x.png", "file_name": "x"})
        await b.until("chat_message")
        await a.send({"type": "typing_start"})
        await b.until("typing_start")
        await a.send({"type": "typing_stop"})
        await b.until("typing_stop")
        await b.send({"type": "mark_read", "message_id": message["id"]})
        await a.until("message_read")
        await a.send({"type": "fetch_history", "limit": 10})
        await a.until("history_page")
        await a.send({"type": "delete_message", "message_id": message["id"]})
        await b.until("message_deleted")
        await s.common(a)
        async with s.socket("chat", path, 2, since=999) as ahead:
            await ahead.expect("resync_required")
            await ahead.expect("message_history")
        async with s.socket("chat", path, 2, since=0) as resumed:
            await resumed.until("message_deleted")
            await resumed.send({"type": "sync", "since": 1})
            await resumed.until("message_deleted")
        await short.until("token_expiring")


async def consultation_session(s: Session) -> None:
    async with s.server.api() as api:
        for cid in ("c1", "c2"):
            response = await api.post("/api/consultations", json={"id": cid, "expert_id": 3, "client_id": 4})
            assert response.status_code == 201, response.text
    path = "/ws/consultation/c1/"
    async with (
        s.socket("consultation", path, 3, role="expert") as expert,
        s.expiring("consultation", path, 3, "consultation_status", role="expert") as short,
    ):
        await expert.expect("consultation_status")
        async with s.socket("consultation", path, 4, role="client") as client:
            await client.expect("consultation_status")
            await expert.until("participant_joined")
            await expert.send({"type": "start_consultation"})
            await client.until("consultation_started")
            await client.send({"type": "request_extension", "duration_minutes": 10})
            asked = await expert.until("extension_requested")
            async with s.socket("consultation", path, 4, role="client") as second_tab:
                status = (await second_tab.expect("consultation_status"))["status_data"]
                assert status["pending_extension"]["request_id"] == asked["request_id"] and status["agora_token"]
            await expert.send({"type": "respond_extension", "request_id": asked["request_id"], "accept": True})
            await client.until("consultation_extended")
            await client.send({"type": "request_extension", "duration_minutes": 5})
            asked = await expert.until("extension_requested")
            await expert.send({"type": "respond_extension", "request_id": asked["request_id"], "accept": False})
            await client.until("extension_rejected")
            await client.send({"type": "presence_update"})
            await s.common(client)
        await expert.until("participant_left")
        # Before the end: the end closes every socket of the consultation.
        await short.until("token_expiring")
        await expert.send({"type": "end_consultation"})
        await expert.until("consultation_ended")
    async with s.socket("consultation", "/ws/consultation/c2/", 4, role="client") as client:
        await client.expect("consultation_status")
        await client.send({"type": "cancel_consultation", "reason": "sick"})
        await client.until("consultation_cancelled")


async def reservation_session(s: Session) -> None:
    path = "/ws/reservation-chat/5/"
    day = (datetime.now(UTC) + timedelta(days=3)).date().isoformat()

    def request(cmid: str) -> dict[str, Any]:
        return {
            "type": "reservation_request",
            "child_name": "Minji",
            "requested_date": day,
            "requested_time": "10:30",
            "concern_summary": "sleep",
            "client_msg_id": cmid,
        }

    async with (
        s.socket("reservation", path, 5, role="expert") as expert,
        s.socket("reservation", path, 6, role="client") as client,
        s.expiring("reservation", path, 6, "reservation_state", role="client") as short,
    ):
        await expert.expect("reservation_state")
        await client.expect("reservation_state")
        await client.send(request("q1"))
        first = (await expert.until("reservation_request"))["request"]
        await client.until("request_created")
        await client.send({"type": "client_message", "message": "hello", "client_msg_id": "cm1"})
        await expert.until("client_message")
        await expert.send({"type": "expert_message", "client_id": 6, "message": "welcome"})
        await client.until("expert_message")
        await expert.send({"type": "accept_request", "request_id": first["id"]})
        await client.until("request_accepted")
        await client.send(request("q2"))
        second = (await expert.until("reservation_request"))["request"]
        await expert.send({"type": "reject_request", "request_id": second["id"], "reason": "full"})
        await client.until("request_rejected")
        await client.send(request("q3"))
        third = (await expert.until("reservation_request"))["request"]
        await client.send({"type": "cancel_request", "request_id": third["id"]})
        await expert.until("request_cancelled")
        await s.common(expert)
        async with s.socket("reservation", path, 6, role="client") as again:
            state = await again.expect("reservation_state")
            assert state["requests"] and state["messages"]
        await short.until("token_expiring")


async def notifications_session(s: Session, channel: str, path: str, user: int) -> None:
    async def notify(title: str) -> None:
        async with s.server.api() as api:
            body = {"user_id": user, "type": "system", "title": title, "body": "b", "action_url": "/x"}
            assert (await api.post("/api/notifications", json=body)).status_code == 201

    async with (
        s.socket(channel, path, user) as n,
        s.expiring(channel, path, user, "bulk_update") as short,
    ):
        await n.expect("bulk_update")
        await notify("first")
        created = (await n.until("new_notification"))["notification"]
        await n.send({"type": "mark_read", "notification_id": created["id"]})
        await n.until("notification_read")
        await notify("second")
        await n.until("new_notification")
        await n.send({"type": "mark_all_read"})
        assert "seq" in await n.until("bulk_update")
        # Two chat messages while away: a chat notification, then its update.
        await s.server.room(f"n{user}", [user, 100 + user])
        async with s.socket("chat", f"/ws/chat/n{user}/", 100 + user) as sender:
            await sender.until("message_history")
            for text in ("one", "two"):
                await sender.send({"type": "chat_message", "content": text})
                await sender.until("chat_message")
        await n.until("new_notification")
        assert (await n.until("notification_updated"))["notification"]["count"] == 2
        await s.common(n)
        async with s.socket(channel, path, user, since=999) as ahead:
            await ahead.expect("resync_required")
            await ahead.expect("bulk_update")
            await ahead.send({"type": "sync", "since": 0})
            await ahead.until("notification_read")
        await short.until("token_expiring")


@pytest.mark.settings(
    token_expiry="close",
    token_grace=60.0,
    agora_app_id=APP_ID,
    agora_app_certificate=APP_CERT,
    rate_limit=1000.0,
    rate_burst=1000.0,
)
async def test_every_frame_of_a_real_session_matches_the_document(server: Server) -> None:
    s = Session(server)
    await asyncio.gather(
        chat_session(s),
        consultation_session(s),
        reservation_session(s),
        notifications_session(s, "notifications", "/ws/notifications/", 8),
        notifications_session(s, "notifications-user_id", "/ws/notifications/9/", 9),
    )
    problems = []
    for channel, frame in s.received:
        for error in validator(payload_ref(channel, "send", frame["type"])).iter_errors(frame):
            problems.append(f"{channel} {frame['type']}: {error.message[:200]} in {json.dumps(frame)[:300]}")
    for channel, frame in s.sent:
        for error in validator(payload_ref(channel, "receive", frame["type"])).iter_errors(frame):
            problems.append(f"{channel} sent {frame['type']}: {error.message[:200]}")
    assert not problems, "\n".join(problems)
    # Nothing the document declares goes unseen: it describes what the server does, no more.
    seen = {(channel, frame["type"]) for channel, frame in s.received}
    for key in DOC["channels"]:
        unseen = declared(key, "send") - {t for c, t in seen if c == key}
        assert not unseen, f"{key}: never received {sorted(unseen)}"
        unsent = declared(key, "receive") - {f["type"] for c, f in s.sent if c == key}
        assert not unsent, f"{key}: never sent {sorted(unsent)}"
