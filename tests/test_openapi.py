"""The OpenAPI document of the server API: valid OpenAPI 3.1, covering every
mounted `/api` route and nothing else, served as generated, and true: every
answer of a session that calls every route (successes and refusals)
validates against the schema the document gives for its route and status."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator
from starlette.routing import Route

from realtime.endpoints import openapi
from realtime.server import create_app
from tests.conftest import Server, base_settings, chat, token, ws

ROOT = Path(__file__).resolve().parent.parent
DOC = openapi.document()
SPEC = json.loads((ROOT / "tests" / "data" / "openapi-3.1.schema.json").read_text())


def test_the_document_is_valid_openapi_3_1() -> None:
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in Draft202012Validator(SPEC).iter_errors(DOC)]
    assert errors == []
    # The meta-schema leaves schema objects alone: each is checked as JSON Schema 2020-12.
    for schema in DOC["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)
    for path, methods in DOC["paths"].items():
        for method, operation in methods.items():
            for parameter in operation.get("parameters", []):
                Draft202012Validator.check_schema(parameter["schema"])
            # Every path parameter is declared, and only those.
            declared = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
            assert declared == set(openapi.PARAMETER.findall(path)), (method, path)


def test_every_mounted_api_route_is_documented_and_nothing_else(tmp_path: Path) -> None:
    app = create_app(base_settings(tmp_path), configure_logging=False)
    mounted = {
        (method.lower(), route.path)
        for route in app.routes
        if isinstance(route, Route) and route.path.startswith("/api")
        for method in route.methods or ()
        if method != "HEAD"
    }
    documented = {(method, path) for path, methods in DOC["paths"].items() for method in methods}
    assert len(mounted) == 15 and mounted == documented

    # A route without its entry stops the app from being built.
    async def extra(request: Any) -> Any: ...

    with pytest.raises(ValueError, match="undocumented"):
        openapi.routes([*app.routes, Route("/api/extra", extra, methods=["GET"])])
    with pytest.raises(ValueError, match="unmounted"):
        openapi.routes([r for r in app.routes if getattr(r, "path", "") != "/api/presence"])


def test_request_bodies_and_queries_come_from_the_structs_the_routes_decode_with() -> None:
    schemas = DOC["components"]["schemas"]
    message = DOC["paths"]["/api/rooms/{room_id}/messages"]
    body = message["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/MessageBody"}
    fields = schemas["MessageBody"]["properties"]
    assert set(fields) == {"content", "message_type", "file_url", "file_name", "client_msg_id", "user_id"}
    assert fields["content"]["maxLength"] == 10_000 and schemas["MessageBody"]["additionalProperties"] is False
    history = {p["name"]: p for p in message["get"]["parameters"]}
    assert history["limit"]["schema"]["maximum"] == 100 and history["room_id"]["in"] == "path"
    presence = {p["name"] for p in DOC["paths"]["/api/presence"]["get"]["parameters"]}
    assert presence == {"room", "consultation", "user"}
    assert set(message["post"]["responses"]) == {"200", "201", "400", "401", "403", "404", "413", "503"}


async def test_the_server_serves_the_document(server: Server) -> None:
    async with httpx.AsyncClient() as client:
        served = (await client.get(f"{server.http}/openapi.json")).json()
    assert served == openapi.document("/")


def answer_schema(method: str, path: str, status: int) -> Draft202012Validator:
    """A validator for the documented body of one route's `status`; fails if it has none."""
    responses = DOC["paths"][path][method]["responses"]
    assert str(status) in responses, f"{method} {path} does not document {status}"
    schema = responses[str(status)]["content"]["application/json"]["schema"]
    return Draft202012Validator({**schema, "components": DOC["components"]})


class Checked:
    """A service-key client whose every answer is checked against the document."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.seen: set[tuple[str, str, int]] = set()

    async def call(self, method: str, route: str, url: str, **kwargs: Any) -> httpx.Response:
        response = await self.client.request(method.upper(), url, **kwargs)
        self.seen.add((method, route, response.status_code))
        responses = DOC["paths"][route][method]["responses"]
        assert str(response.status_code) in responses, (method, url, response.status_code, response.text)
        if "content" in responses[str(response.status_code)]:
            errors = [
                e.message for e in answer_schema(method, route, response.status_code).iter_errors(response.json())
            ]
            assert errors == [], (method, url, response.json())
        else:
            assert response.content == b""
        return response


@pytest.mark.settings(max_sockets_per_user=5)
async def test_real_answers_validate_against_the_document(server: Server) -> None:
    async with server.api() as client:
        api = Checked(client)
        put_user = "/api/users/{user_id}"
        assert (await api.call("put", put_user, "/api/users/1", json={"name": "Kim", "role": "expert"})).is_success
        await api.call("put", put_user, "/api/users/2", json={"name": "Minji", "profile_image": "/m.png"})
        await api.call("put", put_user, "/api/users/0", json={"name": "x"})
        await api.call("put", put_user, "/api/users/1", content=b"{")
        rooms = "/api/rooms"
        await api.call("post", rooms, rooms, json={"id": "r", "member_ids": [1, 2], "consultation_id": "c1"})
        await api.call("post", rooms, rooms, json={"member_ids": [3]})
        await api.call("post", rooms, rooms, json={"id": "r", "member_ids": [1]})
        member = "/api/rooms/{room_id}/members/{user_id}"
        await api.call("put", member, "/api/rooms/r/members/3")
        await api.call("delete", member, "/api/rooms/r/members/3")
        await api.call("delete", member, "/api/rooms/r/members/3")
        messages = "/api/rooms/{room_id}/messages"
        await api.call("post", messages, "/api/rooms/r/messages", json={"content": "hi", "client_msg_id": "a"})
        await api.call("post", messages, "/api/rooms/r/messages", json={"content": "hi", "client_msg_id": "a"})
        image = {"message_type": "file", "file_url": "https://x.test/f.pdf", "file_name": "f.pdf", "user_id": 2}
        await api.call("post", messages, "/api/rooms/r/messages", json=image)
        await api.call("post", messages, "/api/rooms/r/messages", json={"content": "x", "user_id": 9})
        await api.call("post", messages, "/api/rooms/nope/messages", json={"content": "x"})
        await api.call("get", messages, "/api/rooms/r/messages?limit=1")
        await api.call("get", messages, "/api/rooms/r/messages?limit=0")
        consultations = "/api/consultations"
        booked = {"id": "c1", "expert_id": 1, "client_id": 2, "scheduled_start": "2030-01-01T10:00:00"}
        await api.call("post", consultations, consultations, json=booked)
        await api.call("post", consultations, consultations, json=booked)
        one = "/api/consultations/{consultation_id}"
        await api.call("get", one, "/api/consultations/c1")
        await api.call("get", one, "/api/consultations/nope")
        presence = "/api/presence"
        sockets = "/api/users/{user_id}/sockets"
        async with (
            chat(server, "r", 1) as room,
            ws(server.ws_url("/ws/consultation/c1/", token=token(1))) as call,
        ):
            await room.expect("message_history")
            await call.expect("consultation_status")
            await api.call("post", one + "/start", "/api/consultations/c1/start")
            await api.call("post", one + "/start", "/api/consultations/c1/start")
            await api.call("get", presence, "/api/presence?room=r")
            await api.call("get", presence, "/api/presence?consultation=c1")
            await api.call("get", presence, "/api/presence?user=1")
            await api.call("get", presence, "/api/presence?user=1&room=r")
            await api.call("get", presence, "/api/presence?room=nope")
            listed = await api.call("get", sockets, "/api/users/1/sockets")
            assert len(listed.json()["sockets"]) == 2
            await api.call("get", sockets, "/api/users/x/sockets")
            await api.call("post", one + "/end", "/api/consultations/c1/end", json={"reason": "done"})
        await api.call("post", one + "/end", "/api/consultations/c1/end")
        await api.call("post", consultations, consultations, json={"id": "c2", "expert_id": 1, "client_id": 2})
        await api.call("post", one + "/cancel", "/api/consultations/c2/cancel")
        await api.call("post", one + "/cancel", "/api/consultations/c2/cancel", json={"reason": ""})
        notifications = "/api/notifications"
        note = {"user_ids": [1, 2], "type": "system", "title": "Hi", "body": "there"}
        await api.call("post", notifications, notifications, json=note)
        await api.call("post", notifications, notifications, json={**note, "user_id": 1})
        await api.call("post", notifications, notifications, content=b"x" * (1024 * 1024 + 1))
        disconnect = "/api/users/{user_id}/disconnect"
        await api.call("post", disconnect, "/api/users/2/disconnect")
        await api.call("post", disconnect, "/api/users/2/disconnect", json={"revoke": True})
    # Every documented route was called and answered with a documented body, refusals included.
    documented = {(method, path) for path, methods in DOC["paths"].items() for method in methods}
    assert {(method, route) for method, route, _ in api.seen} == documented
    assert {400, 403, 404, 409, 413} <= {status for _, _, status in api.seen}
    async with httpx.AsyncClient(base_url=server.http) as anonymous:
        refused = await Checked(anonymous).call("get", presence, "/api/presence?user=1")
        assert refused.status_code == 401
