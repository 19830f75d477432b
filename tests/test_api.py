"""The server API: the service key, users, rooms, members."""

from __future__ import annotations

from tests.conftest import Server, base_settings, chat, get, post, running


async def test_routes_answer_503_without_a_service_key(tmp_path) -> None:
    async with running(base_settings(tmp_path, service_key=None)) as srv:
        response = await post(f"{srv.http}/api/rooms", json={"member_ids": [1]}, headers={"Authorization": "Bearer x"})
        assert response.status_code == 503


async def test_routes_need_the_right_key(server: Server) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic x"}):
        response = await post(f"{server.http}/api/rooms", json={"member_ids": [1]}, headers=headers)
        assert response.status_code == 401


async def test_rooms_and_members(server: Server) -> None:
    async with server.api() as api:
        created = await api.post("/api/rooms", json={"member_ids": [1, 2, 2]})
        assert created.status_code == 201
        room = created.json()["room"]
        assert room["member_ids"] == [1, 2] and room["id"]
        assert (await api.post("/api/rooms", json={"id": room["id"], "member_ids": []})).status_code == 409
        assert (await api.put(f"/api/rooms/{room['id']}/members/3")).status_code == 204
        assert (await api.put("/api/rooms/nope/members/3")).status_code == 404
        assert (await api.delete(f"/api/rooms/{room['id']}/members/3")).status_code == 204
        assert (await api.delete(f"/api/rooms/{room['id']}/members/3")).status_code == 404
        assert (await api.put(f"/api/rooms/{room['id']}/members/abc")).status_code == 404
    async with chat(server, room["id"], 3) as removed:
        assert await removed.closed() == 4003
    async with chat(server, room["id"], 2) as member:
        await member.expect("message_history")


async def test_bad_bodies_are_400(server: Server) -> None:
    async with server.api() as api:
        for body in (
            b"{",
            b"[]",
            b'{"member_ids": "1"}',
            b'{"member_ids": [0]}',
            b'{"member_ids": [1], "id": "a b"}',
            b'{"member_ids": [true]}',
        ):
            response = await api.post("/api/rooms", content=body)
            assert response.status_code == 400, body
            assert response.json()["error"] in ("invalid_json", "invalid_payload")
        assert (await api.put("/api/users/1", json={"name": ""})).status_code == 400
        assert (await api.put("/api/users/1", json={"name": "A", "role": "admin"})).status_code == 400
        assert (await api.put("/api/users/0", json={"name": "A"})).status_code == 404


async def test_users_are_upserted(server: Server) -> None:
    async with server.api() as api:
        first = await api.put("/api/users/5", json={"name": "Kim", "role": "expert", "profile_image": "/k.png"})
        assert first.status_code == 200
        assert first.json()["user"] == {"id": 5, "name": "Kim", "role": "expert", "profile_image": "/k.png"}
        assert (await api.put("/api/users/5", json={"name": "Dr. Kim"})).status_code == 200
    from realtime.store import users

    stored = await users.get(server.runtime.db, 5)
    assert stored == {"id": 5, "name": "Dr. Kim", "role": "client", "profile_image": None}


async def test_health(server: Server) -> None:
    assert (await get(f"{server.http}/healthz")).json() == {"status": "ok"}
    assert (await get(f"{server.http}/readyz")).json() == {"status": "ready"}
