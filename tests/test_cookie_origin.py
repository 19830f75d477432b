"""Cookie authentication is ambient: the browser sends the cookie whichever
page opens the socket or posts the form. Without ALLOWED_ORIGINS only the
server's own origin may use it; tokens the page holds itself work from anywhere."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from realtime.events.node.auth import cookie_origin_allowed
from tests.conftest import Server, base_settings, running, token, ws
from tests.test_upload_abuse import BOUNDARY, refused, stored, upload_of

EVIL = "https://evil.example"
APP = "https://app.example"


@pytest.mark.parametrize(
    ("origin", "host", "allowed", "expected"),
    [
        (None, "rt.example", (), True),  # not a browser: no ambient cookie to abuse
        ("https://rt.example", "rt.example", (), True),
        ("http://127.0.0.1:8000", "127.0.0.1:8000", (), True),
        ("https://RT.example", "rt.example", (), True),
        ("https://rt.example:443", "rt.example", (), True),
        ("https://rt.example", "rt.example:443", (), True),
        ("https://rt.example:8443", "rt.example", (), False),
        ("https://user@rt.example", "rt.example", (), False),
        ("https://rt.example/path", "rt.example", (), False),
        ("ftp://rt.example", "rt.example", (), False),
        ("https://rt.example:99999", "rt.example", (), False),
        ("https://evil.example", "rt.example", (), False),
        ("https://rt.example.evil.example", "rt.example", (), False),
        ("http://127.0.0.1:8001", "127.0.0.1:8000", (), False),
        ("null", "rt.example", (), False),
        ("https://rt.example", None, (), False),
        ("", "rt.example", (), False),
        ("https://app.example", "rt.example", ("https://app.example",), True),
        ("https://evil.example", "rt.example", ("https://app.example",), False),
        ("https://rt.example", "rt.example", ("https://app.example",), True),
    ],
)
def test_cookie_origin_allowed(origin: str | None, host: str | None, allowed: tuple[str, ...], expected: bool) -> None:
    assert cookie_origin_allowed(origin, host, allowed) is expected


@pytest.fixture
async def srv(tmp_path: Path) -> AsyncIterator[Server]:
    async with running(base_settings(tmp_path)) as server:
        await server.room("r1", [1])
        yield server


def own(server: Server) -> str:
    return f"http://127.0.0.1:{server.port}"


def cookie(user_id: int = 1) -> dict[str, str]:
    return {"Cookie": f"access_token={token(user_id)}"}


async def test_a_cookie_socket_from_another_site_is_refused_by_default(srv: Server) -> None:
    url = srv.ws_url("/ws/chat/r1/")
    for origin in (EVIL, "null"):
        async with ws(url, origin=origin, additional_headers=cookie()) as client:
            assert await client.closed() == 1008
    async with ws(srv.ws_url("/ws/notifications/"), origin=EVIL, additional_headers=cookie()) as client:
        assert await client.closed() == 1008


async def test_a_cookie_socket_from_the_own_origin_or_without_origin_works(srv: Server) -> None:
    url = srv.ws_url("/ws/chat/r1/")
    async with ws(url, origin=own(srv), additional_headers=cookie()) as client:
        await client.expect("message_history")
    async with ws(url, additional_headers=cookie()) as client:
        await client.expect("message_history")


async def test_tokens_the_page_holds_work_from_any_origin_by_default(srv: Server) -> None:
    async with ws(srv.ws_url("/ws/chat/r1/", token=token(1)), origin=EVIL) as client:
        await client.expect("message_history")
    bearer = {"Authorization": f"Bearer {token(1)}"}
    async with ws(srv.ws_url("/ws/chat/r1/"), origin=EVIL, additional_headers=bearer) as client:
        await client.expect("message_history")
    async with ws(srv.ws_url("/ws/chat/r1/"), origin=EVIL) as client:
        await client.send({"type": "auth", "token": token(1)})
        await client.expect("auth_ok")
        await client.expect("message_history")


async def test_listed_origins_may_use_the_cookie_and_others_may_not(tmp_path: Path) -> None:
    async with running(base_settings(tmp_path, allowed_origins=(APP,))) as server:
        await server.room("r1", [1])
        url = server.ws_url("/ws/chat/r1/")
        for origin in (APP, own(server)):
            async with ws(url, origin=origin, additional_headers=cookie()) as client:
                await client.expect("message_history")
        async with ws(url, origin=EVIL, additional_headers=cookie()) as client:
            assert await client.closed() == 1008
        # With a list, any other browser origin is refused whatever it authenticates with.
        async with ws(server.ws_url("/ws/chat/r1/", token=token(1)), origin=EVIL) as client:
            assert await client.closed() == 1008


HEADERS = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}


async def test_a_cross_site_cookie_upload_is_refused_by_default(srv: Server) -> None:
    content = upload_of(b"a.png")
    async with httpx.AsyncClient(base_url=srv.http) as client:
        url = "/chat/messages/file/"
        with_cookie = {**HEADERS, "cookie": f"access_token={token(1)}"}
        for origin in (EVIL, "null"):
            refused(await client.post(url, content=content, headers={**with_cookie, "origin": origin}), 403)
        assert await stored(srv) == (0, 0)
        assert not any(srv.settings.upload_dir.glob("*"))
        good = await client.post(url, content=content, headers={**with_cookie, "origin": own(srv)})
        assert good.status_code == 201, good.text
        bearer = {**HEADERS, "authorization": f"Bearer {token(1)}", "origin": EVIL}
        assert (await client.post(url, content=content, headers=bearer)).status_code == 201
    assert (await stored(srv))[0] == 2
