"""Connection limits under uvicorn (endpoints/guard.py), over raw loopback
sockets: deadlines for heads and handshakes, pending connections per client
address, the global cap, large headers, and running out of descriptors.

Other loopback addresses (127.0.0.2, ...) stand for other clients: the
server listens on 127.0.0.1, and uvicorn trusts proxy headers from 127.0.0.1
only (FORWARDED_ALLOW_IPS' default), so 127.0.0.2 is a client of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import InvalidStatus

from realtime.settings import SettingsError, from_env
from realtime.transport import guard
from realtime.transport.guard import PendingPerAddress, address_key
from tests.conftest import GUARDED_HTTP, SECRET, Client, base_settings, running, serving, token, ws
from tests.procs import ready, start

pytestmark = pytest.mark.anyio

WS_IMPLS = ["websockets-sansio", "websockets", "wsproto"]
ATTACKER = "127.0.0.2"
OTHER = "127.0.0.3"
UPGRADE = (
    "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
)


async def tcp(port: int, source: str = "127.0.0.1") -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


async def until_closed(reader: asyncio.StreamReader, timeout: float) -> bytes:
    """All the server sends until it closes; fails if it has not closed within `timeout`."""
    data = b""
    try:
        async with asyncio.timeout(timeout):
            while chunk := await reader.read(65536):
                data += chunk
    except ConnectionResetError:
        pass
    except TimeoutError:
        raise AssertionError(f"still open after {timeout}s; got {data[:80]!r}") from None
    return data


async def still_open(reader: asyncio.StreamReader, wait: float = 0.3) -> bool:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(wait):
            return await reader.read(1) != b""
    return True


async def timed_close(reader: asyncio.StreamReader, timeout: float) -> tuple[bytes, float]:
    started = time.monotonic()
    data = await until_closed(reader, timeout)
    return data, time.monotonic() - started


def socket_from(source: str, port: int) -> socket.socket:
    sock = socket.socket()
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


@contextlib.asynccontextmanager
async def holding(port: int, count: int, source: str) -> AsyncIterator[list[asyncio.StreamReader]]:
    """`count` silent connections from `source`."""
    pairs = [await tcp(port, source) for _ in range(count)]
    try:
        yield [reader for reader, _ in pairs]
    finally:
        for _, writer in pairs:
            writer.close()


async def honest_clients_get_in(srv: Any, source: str = "127.0.0.1") -> None:
    """A query-token client and an `auth`-frame client, both from `source`."""
    url = srv.ws_url("/ws/chat/r1/", token=token(1))
    async with ws(url, sock=socket_from(source, srv.port)) as client:
        await client.expect("message_history")
    async with ws(srv.ws_url("/ws/chat/r1/"), sock=socket_from(source, srv.port)) as client:
        await client.send({"type": "auth", "token": token(1)})
        await client.expect("auth_ok")
        await client.expect("message_history")


# ---- deadlines -------------------------------------------------------------------


@pytest.mark.parametrize("ws_impl", WS_IMPLS)
async def test_silent_slow_and_half_sent_connections_are_closed_by_their_deadlines(
    tmp_path: Path, ws_impl: str
) -> None:
    settings = base_settings(tmp_path, header_timeout=4.0, idle_timeout=0.5)
    async with running(settings, ws_impl) as srv:
        await srv.room("r1", [1])

        async def silent() -> tuple[bytes, float]:
            reader, _ = await tcp(srv.port, ATTACKER)
            return await timed_close(reader, 10)

        async def half_sent_upgrade() -> tuple[bytes, float]:
            reader, writer = await tcp(srv.port, ATTACKER)
            writer.write(UPGRADE.format(path="/ws/chat/r1/", extra="")[:-10].encode())
            return await timed_close(reader, 10)

        async def drip(head: str, writer: asyncio.StreamWriter) -> None:
            # One byte every 0.2 s: never idle for IDLE_TIMEOUT, never done within HEADER_TIMEOUT.
            with contextlib.suppress(ConnectionError):
                for byte in head.encode():
                    writer.write(bytes([byte]))
                    await writer.drain()
                    await asyncio.sleep(0.2)

        async def dripping(head: str, first: bytes = b"") -> tuple[bytes, float]:
            reader, writer = await tcp(srv.port, ATTACKER)
            if first:  # a keep-alive connection: one quick request, then a slow one
                writer.write(first)
                assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
                await reader.readexactly(len(b'{"status":"ok"}'))
            task = asyncio.create_task(drip(head, writer))
            try:
                return await timed_close(reader, 10)
            finally:
                task.cancel()

        slow_get = "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n" + "X-Pad: " + "a" * 60 + "\r\n\r\n"
        slow_upgrade = UPGRADE.format(path="/ws/chat/r1/", extra="X-Pad: " + "a" * 40 + "\r\n")
        quick = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        attacks = asyncio.gather(
            silent(), half_sent_upgrade(), dripping(slow_get), dripping(slow_upgrade), dripping(slow_get, quick)
        )
        # Meanwhile, from another address and from the attacker's own, honest clients get in.
        await honest_clients_get_in(srv, OTHER)
        await honest_clients_get_in(srv, ATTACKER)
        (silent_answer, silent_after), (half_answer, half_after), *slow = await attacks
        # Nothing sent: closed at IDLE_TIMEOUT, long before HEADER_TIMEOUT, with 408.
        assert silent_after < 3 and silent_answer.startswith(b"HTTP/1.1 408"), (silent_after, silent_answer)
        assert half_after < 3 and half_answer.startswith(b"HTTP/1.1 408"), (half_after, half_answer)
        # Bytes trickling in: closed at HEADER_TIMEOUT (4 s), with 408.
        for answer, after in slow:
            assert 3.5 < after < 8 and answer.startswith(b"HTTP/1.1 408"), (after, answer)
        await honest_clients_get_in(srv, ATTACKER)
        assert srv.runtime.pending_per_address.counts == {}


def stalling_app(settings: Any) -> Any:
    """An app whose lifespan installs the guard and that never answers a WebSocket handshake."""
    pending = PendingPerAddress(settings.max_pending_per_ip)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await receive()
            scope["state"].update(guard.state(settings, pending))
            await send({"type": "lifespan.startup.complete"})
            await receive()
            await send({"type": "lifespan.shutdown.complete"})
        elif scope["type"] == "websocket":
            await receive()
            await asyncio.sleep(settings.header_timeout + 1)  # then returns: uvicorn refuses it

    return app


@pytest.mark.parametrize("ws_impl", WS_IMPLS)
async def test_a_handshake_the_app_never_answers_is_closed_at_the_deadline(tmp_path: Path, ws_impl: str) -> None:
    settings = base_settings(tmp_path, header_timeout=1.0, idle_timeout=0.5)
    async with serving(stalling_app(settings), ws_impl, lifespan="on", http=GUARDED_HTTP) as port:
        reader, writer = await tcp(port, ATTACKER)
        writer.write(UPGRADE.format(path="/", extra="").encode())
        answer, after = await timed_close(reader, 6)
        # The head was complete (no idle close at 0.5 s): the handshake deadline closed it.
        assert 0.8 < after < 4 and answer == b"", (after, answer)


# ---- large headers -----------------------------------------------------------------


@pytest.mark.parametrize("ws_impl", WS_IMPLS)
async def test_an_upgrade_with_a_10_kb_header_gets_a_prompt_answer(tmp_path: Path, ws_impl: str) -> None:
    async with running(base_settings(tmp_path), ws_impl) as srv:
        await srv.room("r1", [1])
        reader, writer = await tcp(srv.port)
        cookie = "Cookie: session=" + "a" * 10_240 + "\r\n"
        writer.write(UPGRADE.format(path="/ws/chat/r1/?token=" + token(1), extra=cookie).encode())
        async with asyncio.timeout(5):
            status_line = await reader.readline()
        # websockets-sansio refuses it (431), the legacy websockets too (400), wsproto takes it.
        status = int(status_line.split()[1])
        assert status == {"websockets-sansio": 431, "websockets": 400, "wsproto": 101}[ws_impl], status_line
        if status != 101:
            await until_closed(reader, 5)
        writer.close()
        await honest_clients_get_in(srv)


# ---- pending connections per address, and the global cap --------------------------------


async def test_one_address_holds_at_most_its_pending_slots_and_is_refused_with_503(tmp_path: Path) -> None:
    async with running(base_settings(tmp_path, max_pending_per_ip=5)) as srv:
        await srv.room("r1", [1])
        async with holding(srv.port, 5, ATTACKER) as held:
            assert all([await still_open(reader) for reader in held])
            reader, writer = await tcp(srv.port, ATTACKER)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            refused = await until_closed(reader, 3)
            assert refused.startswith(b"HTTP/1.1 503 "), refused
            with pytest.raises(InvalidStatus) as caught:
                async with ws(srv.ws_url("/ws/chat/r1/", token=token(1)), sock=socket_from(ATTACKER, srv.port)):
                    pass
            assert caught.value.response.status_code == 503
            # Another address, and the trusted proxy's (whose clients the app counts), get in.
            await honest_clients_get_in(srv, OTHER)
            await honest_clients_get_in(srv, "127.0.0.1")
        # The slots come back when the connections go.
        await asyncio.sleep(0.2)
        await honest_clients_get_in(srv, ATTACKER)


async def test_a_kept_alive_connection_counts_again_while_its_next_head_arrives(tmp_path: Path) -> None:
    """Quick requests first, then a trickled second head on each connection:
    those heads hold the address's pending slots like new connections do."""
    async with running(base_settings(tmp_path, max_pending_per_ip=3)) as srv:
        pairs = [await tcp(srv.port, ATTACKER) for _ in range(3)]
        try:
            for reader, writer in pairs:
                for _ in range(2):  # kept alive: the second request is served like the first
                    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
                    assert head.startswith(b"HTTP/1.1 200 "), head
                    await asyncio.wait_for(reader.readuntil(b"}"), 3)  # the body
            for _, writer in pairs:
                writer.write(b"GET /healthz HTTP/1.1\r\nX-Slow: ")
            await asyncio.sleep(0.2)
            reader, writer = await tcp(srv.port, ATTACKER)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            refused = await until_closed(reader, 3)
            assert refused.startswith(b"HTTP/1.1 503 "), refused
        finally:
            for _, writer in pairs:
                writer.close()


async def test_above_max_connections_every_connection_gets_503_until_one_closes(tmp_path: Path) -> None:
    async with running(base_settings(tmp_path, max_connections=6)) as srv:
        await srv.room("r1", [1])
        async with ws(srv.ws_url("/ws/chat/r1/", token=token(1))) as member:
            await member.expect("message_history")
            async with holding(srv.port, 5, ATTACKER) as held:
                assert all([await still_open(reader) for reader in held])
                for source in (OTHER, "127.0.0.1"):
                    reader, _ = await tcp(srv.port, source)
                    assert (await until_closed(reader, 3)).startswith(b"HTTP/1.1 503 ")
                with pytest.raises(InvalidStatus) as caught:
                    async with ws(srv.ws_url("/ws/chat/r1/", token=token(2))):
                        pass
                assert caught.value.response.status_code == 503
                # What is open stays served.
                await member.send({"type": "ping"})
                await member.expect("pong")
            await asyncio.sleep(0.2)
            await honest_clients_get_in(srv, OTHER)


async def waiting_for_auth(
    stack: contextlib.AsyncExitStack, srv: Any, count: int, source: str, forwarded: str | None = None
) -> list[int | None]:
    """`count` sockets from `source` that never send their `auth` frame; for each,
    None while it waits, or how it was refused: 1013 (the app), 503 (the guard)."""
    headers = {"X-Forwarded-For": forwarded} if forwarded else None
    url = srv.ws_url("/ws/chat/r1/")
    clients: list[Client | int] = []
    for _ in range(count):
        try:
            clients.append(
                await stack.enter_async_context(ws(url, sock=socket_from(source, srv.port), additional_headers=headers))
            )
        except InvalidStatus as refused:
            clients.append(refused.response.status_code)
    await asyncio.sleep(0.5)
    return [client if isinstance(client, int) else client.conn.close_code for client in clients]


async def test_auth_frame_and_token_clients_get_in_while_one_address_fills_the_waiting_room(tmp_path: Path) -> None:
    settings = base_settings(tmp_path, max_pending_auth=10, max_pending_per_ip=4, auth_timeout=10)
    async with running(settings) as srv:
        await srv.room("r1", [1])
        async with contextlib.AsyncExitStack() as stack:
            codes = await waiting_for_auth(stack, srv, 10, ATTACKER)
            # Its first four wait; the rest are refused, at the handshake or after it.
            assert codes[:4] == [None] * 4 and set(codes[4:]) <= {503, 1013}, codes
            await honest_clients_get_in(srv, OTHER)
            await honest_clients_get_in(srv, "127.0.0.1")


async def test_behind_a_trusted_proxy_the_forwarded_address_is_counted(tmp_path: Path) -> None:
    settings = base_settings(tmp_path, max_pending_auth=10, max_pending_per_ip=4, auth_timeout=10)
    async with running(settings) as srv:
        await srv.room("r1", [1])
        # Through the trusted proxy (127.0.0.1) one forwarded client waits in 4 places at most ...
        async with contextlib.AsyncExitStack() as stack:
            codes = await waiting_for_auth(stack, srv, 6, "127.0.0.1", forwarded="203.0.113.9")
            assert codes == [None] * 4 + [1013] * 2, codes
            # ... and an untrusted peer's X-Forwarded-For is not believed: it counts as itself.
            codes = await waiting_for_auth(stack, srv, 6, ATTACKER, forwarded="198.51.100.7")
            assert codes[:4] == [None] * 4 and set(codes[4:]) <= {503, 1013}, codes
            url = srv.ws_url("/ws/chat/r1/")
            async with ws(url, additional_headers={"X-Forwarded-For": "198.51.100.7"}) as client:
                await client.send({"type": "auth", "token": token(1)})
                await client.expect("auth_ok")
            async with ws(url, additional_headers={"X-Forwarded-For": "203.0.113.9"}) as client:
                assert await client.closed() == 1013


# ---- out of descriptors ---------------------------------------------------------------


async def hold_many(port: int, count: int) -> list[socket.socket]:
    socks = []
    for i in range(count):
        sock = socket.socket()
        sock.setblocking(False)
        sock.bind((f"127.0.0.{10 + i % 4}", 0))
        with contextlib.suppress(BlockingIOError):
            sock.connect(("127.0.0.1", port))
        socks.append(sock)
    return socks


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
async def test_running_out_of_descriptors_is_logged_at_most_once_a_second(tmp_path: Path, loop: str) -> None:
    # MAX_CONNECTIONS at the limit itself: the server's own descriptors make accept() fail first.
    # asyncio (the image has no uvloop) reports each failed accept; libuv closes them silently.
    if loop == "uvloop":
        pytest.importorskip("uvloop")
    env = {
        "UVICORN_LOOP": loop,
        "DATABASE_URL": f"sqlite:///{tmp_path}/test.db",
        "MAX_CONNECTIONS": "120",
        "MAX_PENDING_PER_IP": "1000",
        "HEADER_TIMEOUT": "60",
        "IDLE_TIMEOUT": "60",
    }
    proc = start(env, tmp_path / "server.log", open_files=120)
    try:
        await ready(proc)
        socks = await hold_many(proc.port, 200)
        try:
            await asyncio.sleep(3.5)
        finally:
            for sock in socks:
                sock.close()
        async with httpx.AsyncClient() as client:
            for _ in range(50):
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"{proc.http}/healthz", timeout=2)).status_code == 200:
                        break
                await asyncio.sleep(0.2)
            else:
                raise AssertionError("the server did not recover")
    finally:
        proc.terminate()
        proc.wait(10)
    output = proc.output()
    lines = [line for line in output.splitlines() if "accepting a connection" in line or "socket.accept" in line]
    assert "Traceback" not in output, output[-3000:]
    # About one line a second over ~4 s, plus the count of those left out.
    assert len(lines) <= 8, lines
    if loop == "asyncio":
        assert any("Too many open files" in line for line in lines), output[-2000:]
        assert any(re.search(r"failed \d+ more times", line) for line in lines), lines


async def test_by_default_the_cap_stays_below_the_descriptor_limit(tmp_path: Path) -> None:
    env = {"DATABASE_URL": f"sqlite:///{tmp_path}/test.db", "MAX_PENDING_PER_IP": "1000"}
    proc = start(env, tmp_path / "server.log", open_files=160)  # the cap: 160 - 64 = 96
    try:
        await ready(proc)
        socks = await hold_many(proc.port, 140)
        try:
            await asyncio.sleep(1.0)
            async with httpx.AsyncClient() as client:
                response = await client.get(f"{proc.http}/healthz", timeout=3)
            assert response.status_code == 503
        finally:
            for sock in socks:
                sock.close()
        await asyncio.sleep(0.3)
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"{proc.http}/healthz", timeout=3)).status_code == 200
        async with ws(proc.ws_url("/ws/notifications/", token=token(1))) as client:
            await client.expect("bulk_update")
    finally:
        proc.terminate()
        proc.wait(10)
    output = proc.output()
    assert "Too many open files" not in output, output[-2000:]


# ---- settings and small parts ------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("HEADER_TIMEOUT", "0", "HEADER_TIMEOUT: must be a number of seconds above 0 up to 86400, got 0"),
        ("HEADER_TIMEOUT", "soon", "HEADER_TIMEOUT: 'soon' is not a number of seconds"),
        ("IDLE_TIMEOUT", "-1", "IDLE_TIMEOUT: must be a number of seconds above 0"),
        ("MAX_PENDING_PER_IP", "0", "MAX_PENDING_PER_IP: must be an integer number of connections from 1 to"),
        ("MAX_PENDING_PER_IP", "many", "MAX_PENDING_PER_IP: 'many' is not an integer number of connections"),
        ("MAX_CONNECTIONS", "0", "MAX_CONNECTIONS: must be an integer number of connections from 1 to"),
        ("MAX_CONNECTIONS", "100000000", "MAX_CONNECTIONS: must be at most"),
    ],
)
def test_bad_connection_settings_stop_start_up_with_one_line(name: str, value: str, message: str) -> None:
    with pytest.raises(SettingsError) as caught:
        from_env({"JWT_SECRET": SECRET, name: value})
    assert str(caught.value).startswith(message), caught.value
    assert "\n" not in str(caught.value)


def test_addresses_are_counted_per_ipv4_address_and_per_ipv6_64() -> None:
    assert address_key("203.0.113.9") == "203.0.113.9"
    assert address_key("2001:db8:1:2:aaaa::1") == address_key("2001:db8:1:2:bbbb::2") == "2001:db8:1:2::/64"
    assert address_key("::ffff:203.0.113.9") == "203.0.113.9"
    pending = PendingPerAddress(2)
    assert pending.take("2001:db8::1") and pending.take("2001:db8::2") and not pending.take("2001:db8::3")
    assert pending.take("2001:db8:0:1::1")
    pending.release("2001:db8::1")
    assert pending.take("2001:db8::4")
