"""Dev mode hands out working tokens; no token ever reaches the logs."""

from __future__ import annotations

import re
from pathlib import Path

import httpx

from realtime.logconfig import scrub
from tests.conftest import Client, ws
from tests.procs import ready, start


def test_scrub_hides_tokens_in_every_form() -> None:
    jwt_like = "eyJhbGciOiJIUzI1NiJ9.eyJ1c2VyX2lkIjoxfQ.c2lnbmF0dXJl"
    lines = [
        f'127.0.0.1:5000 - "WebSocket /ws/chat/r1/?token={jwt_like}" [accepted]',
        f'"GET /x?since=3&token={jwt_like}&a=b HTTP/1.1" 200',
        f"Authorization: Bearer {jwt_like}",
        f"cookie: access_token={jwt_like}",
        f"a bare {jwt_like} in a message",
    ]
    for line in lines:
        assert "c2lnbmF0dXJl" not in scrub(line), line
    assert scrub("GET /x?since=3 200") == "GET /x?since=3 200"


async def test_dev_mode_tokens_work_and_never_leak_into_access_logs(tmp_path: Path) -> None:
    env = {
        "DEV_MODE": "1",
        "JWT_SECRET": "",
        "DATABASE_URL": f"sqlite:///{tmp_path}/dev.db",
        "UPLOAD_DIR": str(tmp_path / "up"),
        "LOG_LEVEL": "debug",
    }
    proc = start(env, tmp_path / "dev.log")
    try:
        await ready(proc)
        async with httpx.AsyncClient() as client:
            demo = (await client.get(f"{proc.http}/dev/tokens")).json()
        first, second = demo["users"][0], demo["users"][1]
        assert demo["room_id"] == "demo"
        async with (
            ws(proc.ws_url("/ws/chat/demo/", token=first["token"])) as a,
            ws(proc.ws_url("/ws/chat/demo/", token=second["token"])) as b,
        ):
            clients: tuple[Client, Client] = (a, b)
            for client in clients:
                await client.expect("message_history")
            await a.send({"type": "chat_message", "content": "hello from dev mode"})
            assert (await b.expect("chat_message"))["message"]["sender"]["name"] == first["name"]
    finally:
        proc.terminate()
        proc.wait()
    output = proc.output()
    assert "anyone can mint tokens" in output  # the loud warning
    banner_tokens = set(re.findall(r"token=([\w.-]+)'", output))
    assert banner_tokens, output  # dev mode prints its tokens on purpose...
    log_lines = [line for line in output.splitlines() if "WebSocket" in line or "HTTP/1.1" in line]
    assert log_lines, output
    for line in log_lines:  # ...but uvicorn's own lines never carry one
        assert first["token"] not in line and second["token"] not in line
        assert "token=[redacted]" in line or "token=" not in line


def test_tracebacks_are_scrubbed_in_text_logs() -> None:
    import io
    import logging

    from realtime.logconfig import Redact

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(Redact())
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("realtime.test-tracebacks")
    logger.addHandler(handler)
    logger.propagate = False
    secret = "eyJhbGciOiJIUzI1NiJ9.eyJ1c2VyX2lkIjoxfQ.c2lnbmF0dXJlc2VjcmV0"
    try:
        raise ValueError(f"bad token {secret}")
    except ValueError:
        logger.exception("request failed")
    assert "ValueError" in stream.getvalue()
    assert "c2lnbmF0dXJlc2VjcmV0" not in stream.getvalue()


async def test_production_without_allowed_origins_warns_at_start_up(tmp_path: Path) -> None:
    outputs = []
    for name, extra in (("open", {}), ("closed", {"ALLOWED_ORIGINS": "https://app.example"})):
        env = {"DATABASE_URL": f"sqlite:///{tmp_path}/{name}.db", "UPLOAD_DIR": str(tmp_path / "up"), **extra}
        proc = start(env, tmp_path / f"{name}.log")
        try:
            await ready(proc)
        finally:
            proc.terminate()
            proc.wait()
        outputs.append(proc.output())
    assert "ALLOWED_ORIGINS is not set" in outputs[0]
    assert "ALLOWED_ORIGINS is not set" not in outputs[1]
