"""No secret in any log line, at any level, in either format: a server process
runs at LOG_LEVEL=debug (uvicorn itself at trace, which logs every ASGI scope),
every way a token, a cookie or the service key can travel is used, valid and
invalid, including a request that fails with a logged traceback; then the whole
output is searched for each secret and for each token's signature."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from tests.conftest import SERVICE_KEY, token, ws
from tests.procs import Proc, ready, start

OPAQUE = {
    "query": "opaque-query-secret-Q1w2e3",
    "header": "opaque-header-secret-H4r5t6",
    "cookie": "opaque-cookie-secret-C7y8u9",
    "frame": "opaque-frame-secret-F0i1o2",
    "service": "wrong-service-key-S3p4a5",
}


def valid_tokens() -> dict[str, str]:
    """One token per way in, each distinct (a claim names the way), all valid."""
    ways = ("query", "header", "cookie", "frame", "refresh", "upload", "upload_cookie", "failing")
    return {way: token(1, name="Kim", role="expert", way=way) for way in ways}


async def exercise(proc: Proc, tokens: dict[str, str]) -> None:
    async with proc.api() as api:
        assert (await api.put("/api/users/1", json={"name": "Kim", "role": "expert"})).status_code == 200
        assert (await api.post("/api/rooms", json={"id": "r1", "member_ids": [1, 2]})).status_code == 201
    async with httpx.AsyncClient(base_url=proc.http) as client:
        wrong = {"authorization": f"Bearer {OPAQUE['service']}"}
        assert (await client.post("/api/rooms", json={"member_ids": [1]}, headers=wrong)).status_code == 401
    chat = "/ws/chat/r1/"
    async with ws(proc.ws_url(chat, since="x", token=tokens["query"])) as client:  # the token after another field
        assert (await client.expect("error"))["code"] == "invalid_payload"
        await client.expect("message_history")
        await client.send({"type": "auth", "token": tokens["refresh"]})
        await client.expect("auth_ok")
        await client.send({"type": "auth", "token": token(2)})  # another user's: forbidden, stays open
        assert (await client.expect("error"))["code"] == "forbidden"
        await client.send({"type": "chat_message", "content": "hello"})
        await client.expect("chat_message")
    async with ws(proc.ws_url(chat), additional_headers={"Authorization": f"Bearer {tokens['header']}"}) as client:
        await client.expect("message_history")
    async with ws(proc.ws_url(chat), additional_headers={"Cookie": f"access_token={tokens['cookie']}"}) as client:
        await client.expect("message_history")
    async with ws(proc.ws_url(chat)) as client:
        await client.send({"type": "auth", "token": tokens["frame"]})
        await client.expect("auth_ok")
    refusals = [
        ws(proc.ws_url(chat, token=OPAQUE["query"])),
        ws(proc.ws_url(chat), additional_headers={"Authorization": f"Bearer {OPAQUE['header']}"}),
        ws(proc.ws_url(chat), additional_headers={"Cookie": f"theme=dark; access_token={OPAQUE['cookie']}"}),
    ]
    for refusal in refusals:
        async with refusal as client:
            assert await client.closed() == 4001
    async with ws(proc.ws_url(chat)) as client:
        await client.send({"type": "auth", "token": OPAQUE["frame"]})
        assert await client.closed() == 4001
    async with ws(proc.ws_url(chat, token=tokens["query"])) as client:
        await client.expect("message_history")
        await client.send({"type": "auth", "token": OPAQUE["frame"] + "-later"})  # an open socket: 4001 too
        assert await client.closed() == 4001
    files = {"file": ("a.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 16, "image/png")}
    query = f"/chat/messages/file/?token={tokens['failing']}"
    attempts = [
        # UPLOAD_DIR is a file: storing fails, and the server logs the traceback.
        (query, {"authorization": f"Bearer {tokens['failing']}"}, 500),
        ("/chat/messages/file/", {"cookie": f"access_token={tokens['upload_cookie']}"}, 500),
        ("/chat/messages/file/", {"authorization": f"Bearer {tokens['upload']}"}, 500),
        (query, {"authorization": f"Bearer {OPAQUE['header']}"}, 401),
    ]
    for target, headers, status in attempts:
        # A connection each: the server drops one after a 500.
        async with httpx.AsyncClient(base_url=proc.http, timeout=10) as client:
            response = await client.post(target, files=files, data={"room_id": "r1"}, headers=headers)
        assert response.status_code == status, response.text


@pytest.mark.parametrize("log_format", ["text", "json"])
async def test_no_secret_reaches_the_logs(tmp_path: Path, log_format: str) -> None:
    not_a_dir = tmp_path / "uploads"
    not_a_dir.write_text("a file where the upload directory should be")
    env = {
        "DATABASE_URL": f"sqlite:///{tmp_path}/logs.db",
        "UPLOAD_DIR": str(not_a_dir),
        "LOG_LEVEL": "debug",
        "LOG_FORMAT": log_format,
        "UVICORN_LOG_LEVEL": "trace",
    }
    proc = start(env, tmp_path / "server.log")
    tokens = valid_tokens()
    try:
        await ready(proc)
        await exercise(proc, tokens)
    finally:
        proc.terminate()
        proc.wait()
    output = proc.output()
    # The flows were logged (so the search below searched something): the ASGI trace, the
    # handshakes, the disconnects, the failed upload's traceback.
    assert "ASGI [" in output and "WebSocket /ws/chat/r1/" in output and "disconnect" in output, output[-3000:]
    assert ("FileExistsError" in output) and ("Exception in ASGI application" in output), output[-3000:]
    secrets = {**OPAQUE, "service_key": SERVICE_KEY}
    for way, value in tokens.items():
        secrets[way] = value
        secrets[f"{way} signature"] = value.rsplit(".", 1)[1]
        secrets[f"{way} claims"] = value.split(".")[1]
    leaks = {name for name, value in secrets.items() if value in output}
    assert not leaks, [line for line in output.splitlines() if any(secrets[name] in line for name in leaks)][:5]
    if log_format == "json":  # every line, uvicorn's included, is one JSON object
        records = [json.loads(line) for line in output.splitlines() if line.strip()]
        assert {"trace", "debug", "info", "error"} <= {record["level"] for record in records}
        assert any(record["logger"].startswith("realtime") for record in records)
