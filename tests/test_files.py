"""`POST /chat/messages/file/`: members upload, everyone sees the message."""

from __future__ import annotations

import httpx

from tests.conftest import Server, base_settings, chat, get, post, running, token

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


async def upload(
    server: Server, user_id: int, data: bytes, name: str = "a.png", room: str = "r1", **form: str
) -> httpx.Response:
    files = {"file": (name, data, "application/octet-stream")}
    headers = {"Authorization": f"Bearer {token(user_id)}"}
    async with httpx.AsyncClient() as client:
        return await client.post(
            f"{server.http}/chat/messages/file/",
            files=files,
            data={"room_id": room, **form},
            headers=headers,
            timeout=10,
        )


async def test_upload_round_trip(server: Server) -> None:
    await server.room("r1", [1, 2])
    async with chat(server, "r1", 2) as other:
        await other.expect("message_history")
        async with httpx.AsyncClient() as client:
            response = await client.post(
                f"{server.http}/chat/messages/file/",
                files={"file": ("../../etc/photo.txt", PNG, "text/plain")},
                data={"room_id": "r1", "content": "look"},
                headers={"Authorization": f"Bearer {token(1)}"},
            )
            assert response.status_code == 201, response.text
            message = response.json()["message"]
            assert message["message_type"] == "image"  # decided from the bytes, not the name or type
            assert message["file_name"] == "photo.txt"
            assert message["content"] == "look"
            live = (await other.expect("chat_message"))["message"]
            assert live == message
            served = await client.get(message["file_url"])
            assert served.status_code == 200
            assert served.content == PNG
            assert served.headers["content-type"] == "image/png"
            assert served.headers["x-content-type-options"] == "nosniff"
    stored = list((server.settings.upload_dir).iterdir())
    assert len(stored) == 1 and not stored[0].name.startswith(".")


async def test_a_non_image_is_a_file_served_as_an_attachment(server: Server) -> None:
    await server.room("r1", [1])
    response = await upload(server, 1, b"%PDF-1.4 hello", name="report.png")
    assert response.status_code == 201
    message = response.json()["message"]
    assert message["message_type"] == "file" and message["file_name"] == "report.png"
    served = await get(message["file_url"])
    assert served.headers["content-type"] == "application/octet-stream"
    assert served.headers["content-disposition"].startswith("attachment")


async def test_upload_too_large_is_413_and_leaves_nothing(tmp_path) -> None:
    async with running(base_settings(tmp_path, max_upload_bytes=1000)) as srv:
        await srv.room("r1", [1])
        assert (await upload(srv, 1, b"x" * 1001)).status_code == 413
        assert (await upload(srv, 1, b"x" * 200_000)).status_code == 413
        assert (await upload(srv, 1, b"x" * 1000)).status_code == 201
        assert len(list(srv.settings.upload_dir.iterdir())) == 1


async def test_upload_by_a_non_member_or_stranger_is_refused(server: Server) -> None:
    await server.room("r1", [1])
    assert (await upload(server, 2, PNG)).status_code == 403
    assert (await upload(server, 1, PNG, room="nope")).status_code == 404
    no_auth = await post(f"{server.http}/chat/messages/file/", files={"file": ("a", PNG)}, data={"room_id": "r1"})
    assert no_auth.status_code == 401
    bad = await post(
        f"{server.http}/chat/messages/file/",
        files={"file": ("a", PNG)},
        data={"room_id": "r1"},
        headers={"Authorization": "Bearer nope"},
    )
    assert bad.status_code == 401
    missing = await post(
        f"{server.http}/chat/messages/file/", data={"room_id": "r1"}, headers={"Authorization": f"Bearer {token(1)}"}
    )
    assert missing.status_code == 400
    assert not server.settings.upload_dir.exists() or not list(server.settings.upload_dir.iterdir())


async def test_served_names_cannot_escape_the_upload_directory(server: Server) -> None:
    for name in ("..%2F..%2Fetc%2Fpasswd", "x.png", "../server.py", "%2e%2e"):
        assert (await get(f"{server.http}/files/{name}")).status_code == 404
