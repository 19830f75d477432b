"""permessage-deflate as a browser negotiates it (WS_COMPRESSION, transport/uvicorn.py).

The client here speaks the protocol by hand, as Chromium does: it offers
`permessage-deflate; client_max_window_bits`, reads the server's answer and
each frame's RSV1 bit, and inflates what was compressed."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import zlib
from pathlib import Path
from typing import Any

import pytest

from realtime.settings import WS_COMPRESSION_MODES, SettingsError, from_env
from realtime.transport import COMPRESSION_MODES
from tests.conftest import base_settings, chat, running, token

pytestmark = pytest.mark.anyio

CHROMIUM_OFFER = "permessage-deflate; client_max_window_bits"


class Browser:
    """A WebSocket client written out by hand: the handshake's answer and each frame as it came."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, extensions: str | None) -> None:
        self.reader, self.writer, self.extensions = reader, writer, extensions

    @classmethod
    async def open(cls, port: int, path: str, offer: str | None = CHROMIUM_OFFER) -> Browser:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        key = base64.b64encode(os.urandom(16)).decode()
        head = [
            f"GET {path} HTTP/1.1",
            f"Host: 127.0.0.1:{port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
        ]
        if offer is not None:
            head.append(f"Sec-WebSocket-Extensions: {offer}")
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode())
        response = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).decode()
        assert response.startswith("HTTP/1.1 101"), response
        extensions = None
        for line in response.split("\r\n")[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "sec-websocket-extensions":
                extensions = value.strip()
        return cls(reader, writer, extensions)

    async def frame(self) -> tuple[bool, dict[str, Any]]:
        """The next text message: (whether it came compressed, its JSON)."""
        first, second = await asyncio.wait_for(self.reader.readexactly(2), 5)
        assert first & 0x0F == 0x1 and first & 0x80, hex(first)  # one whole text frame
        size = second & 0x7F
        if size == 126:
            size = int.from_bytes(await self.reader.readexactly(2), "big")
        elif size == 127:
            size = int.from_bytes(await self.reader.readexactly(8), "big")
        payload = await self.reader.readexactly(size)
        compressed = bool(first & 0x40)
        if compressed:
            # No context kept: each message inflates alone.
            payload = zlib.decompressobj(wbits=-15).decompress(payload + b"\x00\x00\xff\xff")
        return compressed, json.loads(payload)

    async def send(self, message: dict[str, Any], compress: bool = False) -> None:
        payload = json.dumps(message).encode()
        first = 0x81
        if compress:
            encoder = zlib.compressobj(wbits=-15)
            payload = (encoder.compress(payload) + encoder.flush(zlib.Z_SYNC_FLUSH))[:-4]
            first |= 0x40
        mask = os.urandom(4)
        size = len(payload)
        head = bytes((first, 0x80 | size)) if size < 126 else bytes((first, 0x80 | 126)) + size.to_bytes(2, "big")
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.writer.write(head + mask + masked)
        await self.writer.drain()

    def close(self) -> None:
        self.writer.close()


def chat_path(room: str, user: int) -> str:
    return f"/ws/chat/{room}/?token={token(user, name=f'user{user}')}"


async def test_a_browser_gets_stateless_compression_and_big_frames_compressed(tmp_path: Path) -> None:
    async with running(base_settings(tmp_path, ws_compression_min_bytes=200)) as srv:
        await srv.room("r1", [1, 2, 3])
        browser = await Browser.open(srv.port, chat_path("r1", 1))
        plain = await Browser.open(srv.port, chat_path("r1", 3), offer=None)
        try:
            assert (await plain.frame())[1]["type"] == "message_history"
            assert browser.extensions == "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
            compressed, history = await browser.frame()
            assert history["type"] == "message_history" and not compressed  # under 200 bytes
            # A message sent compressed (no context) is read, and comes back to every member.
            await browser.send({"type": "chat_message", "content": "짧은 메시지"}, compress=True)
            compressed, echo = await browser.frame()
            assert echo["message"]["content"] == "짧은 메시지" and compressed  # a chat_message is over 200 bytes
            async with chat(srv, "r1", 2) as other:  # a client of the websockets library, inflating by itself
                await other.expect("message_history")
                await browser.send({"type": "chat_message", "content": "x" * 40})
                assert (await other.expect("chat_message"))["message"]["content"] == "x" * 40
                compressed, echo = await browser.frame()
                assert compressed and echo["message"]["content"] == "x" * 40
                # One fan-out, two kinds of socket: the plain one gets the frame as it is.
                await plain.frame()  # the first message
                compressed, same = await plain.frame()
                assert not compressed and same == echo
                await browser.send({"type": "ping"})
                compressed, pong = await browser.frame()
                assert pong["type"] == "pong" and not compressed
        finally:
            browser.close()
            plain.close()


async def test_with_compression_off_a_browser_gets_none(tmp_path: Path) -> None:
    async with running(base_settings(tmp_path, ws_compression="off")) as srv:
        await srv.room("r1", [1])
        browser = await Browser.open(srv.port, chat_path("r1", 1))
        try:
            assert browser.extensions is None
            await browser.frame()
            await browser.send({"type": "chat_message", "content": "y" * 500})
            compressed, echo = await browser.frame()
            assert not compressed and echo["message"]["content"] == "y" * 500
        finally:
            browser.close()


async def test_the_servers_own_compression_is_left_as_it_negotiated_it(tmp_path: Path) -> None:
    async with running(base_settings(tmp_path, ws_compression="server")) as srv:
        await srv.room("r1", [1])
        browser = await Browser.open(srv.port, chat_path("r1", 1))
        try:
            # uvicorn's own answer (context kept, 4 KiB windows): the client here cannot inflate it alone.
            assert browser.extensions == "permessage-deflate; server_max_window_bits=12; client_max_window_bits=12"
        finally:
            browser.close()


async def test_no_compression_is_added_where_the_server_negotiated_none(tmp_path: Path) -> None:
    async with running(base_settings(tmp_path), ws_per_message_deflate=False) as srv:
        await srv.room("r1", [1])
        browser = await Browser.open(srv.port, chat_path("r1", 1))
        try:
            assert browser.extensions is None
            assert (await browser.frame())[1]["type"] == "message_history"
        finally:
            browser.close()


async def test_a_client_that_offers_nothing_gets_plain_frames(tmp_path: Path) -> None:
    async with running(base_settings(tmp_path, ws_compression_min_bytes=0)) as srv:
        await srv.room("r1", [1])
        browser = await Browser.open(srv.port, chat_path("r1", 1), offer=None)
        try:
            assert browser.extensions is None
            compressed, history = await browser.frame()
            assert history["type"] == "message_history" and not compressed
        finally:
            browser.close()


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"WS_COMPRESSION": "gzip"}, "WS_COMPRESSION: 'gzip' is not one of off, stateless, server"),
        ({"WS_COMPRESSION_MIN_BYTES": "-1"}, "WS_COMPRESSION_MIN_BYTES: must be an integer number of bytes"),
        ({"WS_COMPRESSION_MIN_BYTES": "1k"}, "WS_COMPRESSION_MIN_BYTES: '1k' is not an integer number of bytes"),
    ],
)
def test_a_bad_compression_setting_names_itself(env: dict[str, str], says: str) -> None:
    with pytest.raises(SettingsError) as caught:
        from_env({"JWT_SECRET": "s" * 40, **env})
    assert str(caught.value).startswith(says), caught.value


def test_compression_defaults_and_modes() -> None:
    settings = from_env({"JWT_SECRET": "s" * 40})
    assert (settings.ws_compression, settings.ws_compression_min_bytes) == ("stateless", 256)
    assert WS_COMPRESSION_MODES == COMPRESSION_MODES  # settings.py names them without importing transport/


@pytest.mark.parametrize("size", [0, 10, 300, 70_000])
def test_a_frame_compressed_once_reads_back_with_websockets_own_decoder(size: int) -> None:
    from websockets.extensions.permessage_deflate import PerMessageDeflate
    from websockets.frames import Frame
    from websockets.streams import StreamReader

    from realtime.transport.uvicorn import deflated

    text = json.dumps({"type": "message_history", "messages": ["안녕하세요"] * (size // 20), "pad": "x" * (size % 20)})
    reader = StreamReader()
    reader.feed_data(deflated(text.encode()))
    parser = Frame.parse(
        reader.read_exact, mask=False, max_size=None, extensions=[PerMessageDeflate(True, True, 15, 15)]
    )
    try:
        next(parser)
    except StopIteration as done:
        frame = done.value
    assert frame.rsv1 is False and frame.data.decode() == text  # RSV1 consumed by the extension
