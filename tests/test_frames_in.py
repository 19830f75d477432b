"""Received frames as a raw client writes them: split anywhere, several in one
write, fragmented, with control frames between, and malformed, through the
receiving side that transport/uvicorn.py takes over from uvicorn."""

from __future__ import annotations

import asyncio
import json
import os
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Server, base_settings, running, token

pytestmark = pytest.mark.anyio

TEXT, BINARY, CONT, CLOSE, PING, PONG = 0x1, 0x2, 0x0, 0x8, 0x9, 0xA


@pytest.fixture(params=["websockets-sansio", "websockets"])
async def srv(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Server]:
    """uvicorn's sans-I/O protocol, whose receiving side the endpoints take
    over, and its legacy one, where they do not: the same answers."""
    async with running(base_settings(tmp_path), ws_impl=request.param) as server:
        await server.room("r1", [1, 2])
        yield server


def frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bool = True, rsv: int = 0) -> bytes:
    head = bytes([(0x80 if fin else 0) | rsv | opcode])
    size = len(payload)
    flag = 0x80 if mask else 0
    if size < 126:
        head += bytes([flag | size])
    elif size < 1 << 16:
        head += bytes([flag | 126]) + struct.pack("!H", size)
    else:
        head += bytes([flag | 127]) + struct.pack("!Q", size)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def text(obj: dict[str, Any]) -> bytes:
    return frame(TEXT, json.dumps(obj, ensure_ascii=False).encode())


class Raw:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def write(self, data: bytes, piece: int | None = None) -> None:
        step = piece or len(data)
        for at in range(0, len(data), step):
            self.writer.write(data[at : at + step])
            await self.writer.drain()
            if piece:
                await asyncio.sleep(0)

    async def next(self, timeout: float = 5.0) -> tuple[int, bytes]:
        head = await asyncio.wait_for(self.reader.readexactly(2), timeout)
        size = head[1] & 0x7F
        if size == 126:
            (size,) = struct.unpack("!H", await self.reader.readexactly(2))
        elif size == 127:
            (size,) = struct.unpack("!Q", await self.reader.readexactly(8))
        return head[0] & 0x0F, await self.reader.readexactly(size)

    async def event(self, kind: str) -> dict[str, Any]:
        while True:
            opcode, payload = await self.next()
            assert opcode == TEXT, (opcode, payload)
            data = json.loads(payload)
            if data["type"] == kind:
                return data

    async def close_code(self) -> int:
        while True:
            opcode, payload = await self.next()
            if opcode == CLOSE:
                return int(struct.unpack("!H", payload[:2])[0])


async def connect(server: Server, user_id: int = 1) -> Raw:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(
        (
            f"GET /ws/chat/r1/?token={token(user_id)} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    response = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert response.startswith(b"HTTP/1.1 101"), response
    raw = Raw(reader, writer)
    await raw.event("message_history")
    return raw


async def test_frames_split_anywhere_or_sent_together_are_read_whole(srv: Server) -> None:
    raw = await connect(srv)
    batch = b"".join(text({"type": "chat_message", "content": f"m{i} 안녕"}) for i in range(3))
    batch += text({"type": "ping"})
    for piece in (None, 1, 7):
        await raw.write(batch, piece)
        contents = [(await raw.event("chat_message"))["message"]["content"] for _ in range(3)]
        assert contents == ["m0 안녕", "m1 안녕", "m2 안녕"]
        await raw.event("pong")


async def test_a_large_frame_arriving_in_pieces(srv: Server) -> None:
    raw = await connect(srv)
    content = "가" * 3_000  # 9,000 bytes of UTF-8, written in 1 KiB pieces
    await raw.write(text({"type": "chat_message", "content": content}), 1024)
    assert (await raw.event("chat_message"))["message"]["content"] == content
    await raw.write(text({"type": "ping"}))
    await raw.event("pong")


async def test_fragments_with_a_ping_between_are_one_message(srv: Server) -> None:
    raw = await connect(srv)
    whole = json.dumps({"type": "chat_message", "content": "in three parts"}).encode()
    parts = [whole[:10], whole[10:20], whole[20:]]
    await raw.write(
        frame(TEXT, parts[0], fin=False)
        + frame(PING, b"hi")
        + frame(CONT, parts[1], fin=False)
        + frame(CONT, parts[2])
        + text({"type": "ping"})
    )
    assert await raw.next() == (PONG, b"hi")
    assert (await raw.event("chat_message"))["message"]["content"] == "in three parts"
    await raw.event("pong")


async def test_a_binary_frame_gets_an_error_frame_and_the_socket_goes_on(srv: Server) -> None:
    raw = await connect(srv)
    await raw.write(frame(BINARY, b"\x00\x01") + text({"type": "ping"}))
    error = await raw.event("error")
    assert error["code"] == "invalid_payload"
    await raw.event("pong")


@pytest.mark.parametrize(
    ("bad", "code"),
    [
        (frame(TEXT, b'{"type":"ping"}', mask=False), 1002),  # clients must mask
        (frame(TEXT, b'{"type":"ping"}', rsv=0x40), 1002),  # no extension was agreed
        (frame(0x3, b"x"), 1002),  # a reserved opcode
        (frame(CONT, b"x"), 1002),  # a continuation of nothing
        (frame(TEXT, b'{"type":"ping","x":"\xff"}'), 1007),  # not UTF-8
        (frame(TEXT, b"x" * (256 * 1024 + 1)), 1009),  # over the server's frame limit
    ],
)
async def test_malformed_frames_close_with_the_protocol_code(srv: Server, bad: bytes, code: int) -> None:
    raw = await connect(srv)
    await raw.write(text({"type": "ping"}))
    await raw.event("pong")
    # The header of the oversized one is enough: its length is refused before
    # the payload is read (a server closing with unread bytes would reset).
    await raw.write(bad if len(bad) < 1024 else bad[:32])
    assert await raw.close_code() == code
    await connect(srv, 2)  # the server goes on
