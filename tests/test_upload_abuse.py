"""`POST /chat/messages/file/` under attack: hostile names, content that lies
about its type, uploads cut off mid-body, malformed or crowded multipart,
wrong content types, injected room ids, cross-site posts. Nothing escapes the
upload directory, no partial file stays, and a refused upload stores nothing."""

from __future__ import annotations

import asyncio
import logging
import re
import socket
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Server, token

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
GIF = b"GIF89a" + b"\x00" * 32
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 32
WEBP = b"RIFF\x24\x00\x00\x00WEBPVP8 " + b"\x00" * 32
PDF = b"%PDF-1.4\n%hello"
HTML = b"<html><script>alert(document.cookie)</script></html>"
SVG = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'
BOUNDARY = "x-b0undary"
SERVED = re.compile(r"/files/[0-9a-f]{24}\.(png|jpg|gif|webp|bin)")


def part(name: str, value: bytes, filename: bytes | None = None, kind: str = "application/octet-stream") -> bytes:
    disposition = f'Content-Disposition: form-data; name="{name}"'.encode()
    if filename is not None:
        disposition += b'; filename="' + filename + b'"\r\nContent-Type: ' + kind.encode()
    return b"--" + BOUNDARY.encode() + b"\r\n" + disposition + b"\r\n\r\n" + value + b"\r\n"


def body(*parts: bytes) -> bytes:
    return b"".join(parts) + b"--" + BOUNDARY.encode() + b"--\r\n"


async def post(server: Server, content: bytes, user_id: int = 1, **headers: str) -> httpx.Response:
    sent = {"content-type": f"multipart/form-data; boundary={BOUNDARY}", "authorization": f"Bearer {token(user_id)}"}
    sent |= {key.replace("_", "-"): value for key, value in headers.items()}
    async with httpx.AsyncClient() as client:
        return await client.post(f"{server.http}/chat/messages/file/", content=content, headers=sent, timeout=10)


def upload_of(name: bytes, data: bytes = PNG, room: bytes = b"r1") -> bytes:
    return body(part("room_id", room), part("file", data, name))


async def stored(server: Server) -> tuple[int, int]:
    row = await server.runtime.db.fetch_one(
        "SELECT (SELECT COUNT(*) FROM messages), (SELECT COUNT(*) FROM stream_events)"
    )
    assert row is not None
    return int(row[0]), int(row[1])


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def refused(response: httpx.Response, status: int = 400) -> None:
    """A clean refusal: the status, and the JSON error every route answers with."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json", response.text
    error = response.json()
    assert error["error"] and error["message"], error


NAMES = [
    (b"../../../../tmp/evil.png", "evil.png"),
    (b"/etc/passwd", "passwd"),
    (b"C:\\\\Windows\\\\System32\\\\evil.png", "evil.png"),
    (b"..", ".."),
    (b"", "file"),
    (b"a\x00b.png", "ab.png"),
    (b"tab\there.png", "tabhere.png"),
    ("사진.png".encode(), "사진.png"),
    ("صورة.png".encode(), "صورة.png"),
    ("照片 😀.png".encode(), "照片 😀.png"),
    ("\u202egnp.exe".encode(), "gnp.exe"),
    (b"%2e%2e%2fevil.png", "%2e%2e%2fevil.png"),
    (b"x" * 300, "x" * 255),
]


async def test_hostile_names_are_display_only(server: Server, tmp_path: Path) -> None:
    await server.room("r1", [1])
    before = files_under(tmp_path)
    for raw, shown in NAMES:
        response = await post(server, upload_of(raw))
        assert response.status_code == 201, (raw, response.text)
        message = response.json()["message"]
        assert message["file_name"] == shown, raw
        assert SERVED.fullmatch(httpx.URL(message["file_url"]).path), message["file_url"]
    uploads = server.settings.upload_dir
    new = files_under(tmp_path) - before
    assert all(p.parent == uploads for p in new if p.suffix in (".png", ".bin", ".part")), new
    assert len(list(uploads.iterdir())) == len(NAMES)
    assert all(re.fullmatch(r"[0-9a-f]{24}\.png", p.name) for p in uploads.iterdir())
    assert not await asyncio.to_thread(Path("/tmp/evil.png").exists)


@pytest.mark.parametrize(
    "raw",
    [b"x" * 10_000, "가".encode() * 4000, b"evil.png\r\nContent-Type: text/html", b'a"; name="room_id'],
    ids=["10000-chars", "12000-bytes-hangul", "crlf-injection", "quote-injection"],
)
async def test_names_that_break_the_multipart_headers_are_refused_or_cut(server: Server, raw: bytes) -> None:
    await server.room("r1", [1])
    response = await post(server, upload_of(raw))
    if response.status_code == 201:
        name = response.json()["message"]["file_name"]
        assert len(name) <= 255 and name.isprintable() and "/" not in name and "\r" not in name
    else:
        refused(response)
        assert await stored(server) == (0, 0)
        assert not server.settings.upload_dir.exists() or not list(server.settings.upload_dir.iterdir())


CONTENT = [
    ("report.png", PDF, "file", "application/octet-stream"),
    ("setup.exe", PNG, "image", "image/png"),
    ("page.html", GIF, "image", "image/gif"),
    ("photo.png", JPEG, "image", "image/jpeg"),
    ("sticker.txt", WEBP, "image", "image/webp"),
    ("cute.png", HTML, "file", "application/octet-stream"),
    ("logo.svg", SVG, "file", "application/octet-stream"),
    ("empty.png", b"", "file", "application/octet-stream"),
]


@pytest.mark.parametrize(("name", "data", "kind", "served_as"), CONTENT, ids=[c[0] for c in CONTENT])
async def test_the_bytes_decide_the_kind(server: Server, name: str, data: bytes, kind: str, served_as: str) -> None:
    await server.room("r1", [1])
    response = await post(server, body(part("room_id", b"r1"), part("file", data, name.encode(), "image/png")))
    assert response.status_code == 201, response.text
    message = response.json()["message"]
    assert message["message_type"] == kind and message["file_name"] == name
    async with httpx.AsyncClient() as client:
        served = await client.get(message["file_url"])
    assert served.status_code == 200 and served.content == data
    assert served.headers["content-type"] == served_as
    assert served.headers["x-content-type-options"] == "nosniff"
    if kind == "file":  # never rendered inline, whatever it claims to be
        assert served.headers["content-disposition"].startswith("attachment")


def cut_off(port: int, declared: int, sent: bytes) -> None:
    """Send the headers and part of a body, then hang up."""
    head = (
        f"POST /chat/messages/file/ HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token(1)}\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {declared}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port)) as raw:
        raw.sendall(head + sent)


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


async def test_an_upload_cut_off_leaves_nothing(server: Server) -> None:
    await server.room("r1", [1])
    errors, uvicorn_log = Records(), logging.getLogger("uvicorn.error")
    uvicorn_log.addHandler(errors)
    try:
        whole = upload_of(b"big.png", PNG + b"\x00" * 2_000_000)
        for sent in (whole[:40], whole[:200], whole[:1_500_000], whole[:-10]):
            await asyncio.to_thread(cut_off, server.port, len(whole), sent)
        await asyncio.sleep(0.5)
    finally:
        uvicorn_log.removeHandler(errors)
    assert await stored(server) == (0, 0)
    uploads = server.settings.upload_dir
    assert not uploads.exists() or not list(uploads.iterdir()), list(uploads.iterdir())
    # A client hanging up is not a server error.
    assert errors.lines == []
    assert (await post(server, upload_of(b"after.png"))).status_code == 201


async def test_crowded_or_malformed_multipart_is_refused_cleanly(server: Server) -> None:
    await server.room("r1", [1])
    cases: list[tuple[bytes, dict[str, Any]]] = [
        (body(part("room_id", b"r1"), part("file", PNG, b"a.png"), part("file", PNG, b"b.png")), {}),
        (body(part("room_id", b"r1"), part("file", PNG, b"a.png"), part("also", PNG, b"b.png")), {}),
        (body(part("room_id", b"r1"), part("file", PNG, b"a.png"), *[part(f"f{i}", b"x") for i in range(10)]), {}),
        (body(part("room_id", b"r1"), part("content", b"x" * 1_100_000), part("file", PNG, b"a.png")), {}),
        (b"--" + BOUNDARY.encode() + b"\r\ngarbage without headers", {}),
        (b"not multipart at all", {}),
        (upload_of(b"a.png"), {"content_type": "multipart/form-data"}),
        (upload_of(b"a.png"), {"content_type": "multipart/form-data; boundary=other"}),
        (b'{"room_id": "r1", "file": "iVBORw0KGgo="}', {"content_type": "application/json"}),
        (b"room_id=r1&file=x", {"content_type": "application/x-www-form-urlencoded"}),
        (upload_of(b"a.png"), {"content_type": "text/plain"}),
        (body(part("file", PNG, b"a.png")), {}),
        (body(part("room_id", b"r1"), part("file", b"not a file")), {}),
        (body(part("room_id", b"r1"), part("content", b"a\x00b"), part("file", PNG, b"a.png")), {}),
    ]
    for index, (content, headers) in enumerate(cases):
        response = await post(server, content, **headers)
        assert response.status_code in (400, 413), (index, response.status_code, response.text)
        refused(response, response.status_code)
    assert await stored(server) == (0, 0)
    assert not server.settings.upload_dir.exists() or not list(server.settings.upload_dir.iterdir())


async def test_room_ids_that_try_injection_are_not_found(server: Server) -> None:
    await server.room("r1", [1])
    await server.room("r2", [2])
    for room in (
        b"r1' OR '1'='1",
        b"r1; DROP TABLE messages; --",
        b"../r1",
        b"r1\x00",
        b"r1 ",
        b"R1",
        b"%72%31",
        "r\uff11".encode(),  # a fullwidth digit one
        b"x" * 10_000,
        b"",
    ):
        response = await post(server, upload_of(b"a.png", room=room))
        assert response.status_code in (400, 404), (room[:40], response.text)
        refused(response, response.status_code)
    # Two room ids: whichever one is taken, membership is checked on it.
    response = await post(server, body(part("room_id", b"r2"), part("room_id", b"r1"), part("file", PNG, b"a.png")))
    assert response.status_code in (201, 403), response.text
    assert await server.runtime.db.fetch_all("SELECT id FROM messages WHERE room_id = 'r2'") == []
    assert await server.runtime.db.fetch_one("SELECT COUNT(*) FROM rooms") == (2,)


async def test_only_a_bearer_header_or_the_cookie_authenticates(server: Server) -> None:
    await server.room("r1", [1])
    content = upload_of(b"a.png")
    no_header = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}
    async with httpx.AsyncClient(base_url=server.http) as client:
        url = "/chat/messages/file/"
        assert (await client.post(f"{url}?token={token(1)}", content=content, headers=no_header)).status_code == 401
        for value in (
            "Basic " + token(1),
            "Bearer",
            "Bearer " + token(1, exp=1),
            "Bearer " + token(1, secret="x" * 32),
        ):
            response = await client.post(url, content=content, headers={**no_header, "authorization": value})
            refused(response, 401)
        cookie = {**no_header, "cookie": f"access_token={token(1)}"}
        assert (await client.post(url, content=content, headers=cookie)).status_code == 201
    assert (await stored(server))[0] == 1


@pytest.mark.settings(allowed_origins=("https://app.example",))
async def test_a_cross_site_post_is_refused(server: Server) -> None:
    """A form on another site posts with the browser's cookie: the same origin check as the sockets."""
    await server.room("r1", [1])
    content = upload_of(b"a.png")
    headers = {"content-type": f"multipart/form-data; boundary={BOUNDARY}", "cookie": f"access_token={token(1)}"}
    async with httpx.AsyncClient(base_url=server.http) as client:
        url = "/chat/messages/file/"
        evil = await client.post(url, content=content, headers={**headers, "origin": "https://evil.example"})
        refused(evil, 403)
        assert await stored(server) == (0, 0)
        good = await client.post(url, content=content, headers={**headers, "origin": "https://app.example"})
        assert good.status_code == 201, good.text
        assert (await client.post(url, content=content, headers=headers)).status_code == 201  # no Origin: no browser
