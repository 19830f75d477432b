"""The dev-mode demo page in a real browser (the system's Chromium through
Playwright): two windows, two demo users, every channel, and the JavaScript
client's reconnection against a server that restarts."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, BrowserContext, Page, async_playwright, expect
from websockets.asyncio.server import serve

from tests.conftest import IN_CI, SERVICE_KEY, free_port, token, ws
from tests.procs import REDIS_URL, Proc, ready, require, start
from tests.seed_client import MANAGER_FILE, ORIGINAL, SEED, manager_script, strip_types, typescript_block

CHROMIUM = Path("/usr/bin/chromium")
# No sandbox (root in CI), no GPU, and nothing that phones home or updates itself.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
VIEWPORT = {"width": 1280, "height": 900}
WAIT_MS = 10_000

pytestmark = pytest.mark.timeout(240)


def dev_env(tmp_path: Path) -> dict[str, str]:
    return {
        "DEV_MODE": "1",
        "JWT_SECRET": "",
        "DATABASE_URL": f"sqlite:///{tmp_path}/demo.db",
        "UPLOAD_DIR": str(tmp_path / "uploads"),
    }


@contextlib.asynccontextmanager
async def dev_server(tmp_path: Path, name: str = "server", port: int | None = None) -> AsyncIterator[Proc]:
    proc = start(dev_env(tmp_path), tmp_path / f"{name}.log", port)
    try:
        await ready(proc)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except Exception:
            proc.kill()


def require_chromium() -> None:
    """Skip without the system's Chromium, except in CI, where it must be there."""
    if CHROMIUM.exists():
        return
    if IN_CI:
        pytest.fail(f"{CHROMIUM} is missing and CI=true (.ci/run installs it)")
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    require_chromium()
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


class Window:
    """One browser context (its own session storage) showing the demo as one user."""

    def __init__(self, context: BrowserContext, page: Page) -> None:
        self.context = context
        self.page = page
        self.problems: list[str] = []
        page.on("pageerror", lambda exc: self.problems.append(f"page error: {exc}"))
        page.on("console", self._console)

    def _console(self, message: Any) -> None:
        # The browser's own note on a refused connection (a server restarting) is expected.
        if message.type == "error" and not message.text.startswith("WebSocket connection to"):
            self.problems.append(f"console: {message.text}")

    def panel(self, name: str) -> Any:
        return self.page.locator(f"#{name}")

    async def live(self, *panels: str) -> None:
        for name in panels:
            await expect(self.panel(name).locator(".pill")).to_have_text("live", timeout=WAIT_MS)


async def open_window(browser: Browser, proc: Proc, name: str) -> Window:
    context = await browser.new_context(viewport=VIEWPORT)
    window = Window(context, await context.new_page())
    await window.page.goto(f"{proc.http}/")
    await window.page.locator(".person", has_text=name).click()
    await expect(window.page.locator("#me-name")).to_have_text(name)
    return window


async def screenshot(window: Window, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    await window.page.screenshot(path=str(path), full_page=True)
    return path


def bubbles(window: Window) -> Any:
    return window.page.locator("#messages .msg .bubble")


async def say(window: Window, text: str) -> None:
    await window.page.fill("#chat-input", text)
    await window.page.click("#chat-send")


async def test_root_is_the_demo_page_only_in_dev_mode(tmp_path: Path) -> None:
    async with dev_server(tmp_path) as proc, httpx.AsyncClient(base_url=proc.http) as client:
        page = await client.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert '<script type="module" src="static/demo.js">' in page.text
        for asset in ("demo.js", "demo.css", "realtime-client.js"):
            assert (await client.get(f"/static/{asset}")).status_code == 200, asset
        assert (await client.get("/static/../server.py")).status_code == 404
        info = (await client.get("/dev/tokens")).json()
        assert info["consultation_id"] == "demo-1" and info["expert_id"] == 1
        # The newest consultation is still waiting: asking for the next one gives the same.
        again = (await client.post("/dev/consultations")).json()["consultation"]
        assert again["id"] == "demo-1" and (again["expert_id"], again["client_id"]) == (1, 2)
    production = {**dev_env(tmp_path), "DEV_MODE": "0", "JWT_SECRET": "x" * 40}
    proc = start(production, tmp_path / "prod.log")
    try:
        await ready(proc)
        async with httpx.AsyncClient(base_url=proc.http) as client:
            for path in ("/", "/static/demo.js", "/dev/tokens"):
                assert (await client.get(path)).status_code == 404, path
            assert (await client.post("/dev/consultations")).status_code == 404
    finally:
        proc.terminate()
        proc.wait(15)


async def test_demo_seed_survives_restarts(tmp_path: Path) -> None:
    for _ in range(2):
        async with dev_server(tmp_path) as proc, httpx.AsyncClient(base_url=proc.http) as client:
            info = (await client.get("/dev/tokens")).json()
            assert info["consultation_id"] == "demo-1"
            kim = info["users"][0]["token"]
            async with ws(proc.ws_url("/ws/consultation/demo-1/", token=kim)) as c:
                assert (await c.expect("consultation_status"))["status_data"]["status"] == "waiting"
            async with ws(proc.ws_url("/ws/reservation-chat/1/", token=kim)) as r:
                await r.expect("reservation_state")
    assert "anyone can mint tokens" in proc.output() and "Demo page: open http://" in proc.output()


async def test_two_windows_chat(tmp_path: Path, browser: Browser) -> None:
    async with dev_server(tmp_path) as proc:
        kim = await open_window(browser, proc, "Dr. Kim")
        minji = await open_window(browser, proc, "Minji")
        for window in (kim, minji):
            await window.live("chat", "consultation", "reservation", "notifications")

        await say(kim, "Hello Minji, how is Haneul today?")
        await expect(bubbles(minji)).to_have_text(["Hello Minji, how is Haneul today?"], timeout=WAIT_MS)
        # Minji's window is open on the room: she reads it, Dr. Kim sees the receipt.
        await expect(kim.page.locator("#messages .msg.mine .receipt")).to_have_text("✓✓ Read by Minji")

        await minji.page.locator("#chat-input").press_sequentially("Much better")
        await expect(kim.page.locator("#typing")).to_have_text("Minji is typing…", timeout=WAIT_MS)
        await minji.page.click("#chat-send")
        await expect(kim.page.locator("#typing")).to_have_text("")
        await expect(bubbles(kim)).to_have_text(["Hello Minji, how is Haneul today?", "Much better"])
        await expect(minji.page.locator("#messages .msg.mine .bubble")).to_have_text(["Much better"])

        # Delete own: gone from both windows; nobody else gets a delete button.
        await say(minji, "oops, wrong room")
        await expect(bubbles(kim)).to_have_count(3)
        await expect(kim.page.locator("#messages .msg:not(.mine) .delete")).to_have_count(0)
        await minji.page.locator("#messages .msg.mine", has_text="oops").locator(".delete").click()
        await expect(bubbles(kim)).to_have_text(["Hello Minji, how is Haneul today?", "Much better"])
        await expect(bubbles(minji)).to_have_count(2)

        # A reload shows the history, in order.
        await minji.page.reload()
        await minji.live("chat")
        await expect(bubbles(minji)).to_have_text(["Hello Minji, how is Haneul today?", "Much better"])

        # Jisoo is in the room but not in the consultation between Dr. Kim and Minji.
        jisoo = await open_window(browser, proc, "Jisoo")
        await jisoo.live("chat", "reservation", "notifications")
        await expect(jisoo.panel("consultation").locator(".pill")).to_have_text("refused 4003", timeout=WAIT_MS)
        await expect(jisoo.panel("consultation").locator(".notice")).to_contain_text("not a participant")
        await expect(jisoo.panel("consultation").locator("#c-start")).to_be_hidden()
        await expect(bubbles(jisoo)).to_have_count(2)

        kim_shot = await screenshot(kim, "demo-dr-kim.png")
        minji_shot = await screenshot(minji, "demo-minji.png")
        assert kim_shot.stat().st_size > 10_000 and minji_shot.stat().st_size > 10_000
        for window in (kim, minji, jisoo):
            assert window.problems == [], window.problems


async def test_consultation_in_two_windows(tmp_path: Path, browser: Browser) -> None:
    async with dev_server(tmp_path) as proc:
        kim = await open_window(browser, proc, "Dr. Kim")
        minji = await open_window(browser, proc, "Minji")
        await kim.live("consultation")
        await minji.live("consultation")
        status = {w: w.page.locator("#c-status") for w in (kim, minji)}
        for window in (kim, minji):
            await expect(status[window]).to_have_text("waiting")
            await expect(window.page.locator("#c-participants li")).to_have_count(2, timeout=WAIT_MS)
        # Only the expert starts.
        await expect(minji.page.locator("#c-start")).to_be_disabled()
        await kim.page.click("#c-start")
        for window in (kim, minji):
            await expect(status[window]).to_have_text("in progress", timeout=WAIT_MS)
            await expect(window.page.locator("#c-clock")).to_have_text(re.compile(r"1[45]:\d\d left"))

        # Minji asks for ten more minutes, Dr. Kim accepts.
        await minji.page.select_option("#c-minutes", "10")
        await minji.page.click("#c-extend")
        await expect(minji.page.locator("#c-extension-text")).to_contain_text("waiting for an answer")
        await expect(kim.page.locator("#c-extension-text")).to_have_text(
            "Minji asks for 10 more minutes", timeout=WAIT_MS
        )
        await kim.page.click("#c-accept")
        for window in (kim, minji):
            await expect(window.page.locator("#c-log li").first).to_contain_text("extended by 10 minutes")
            await expect(window.page.locator("#c-clock")).to_have_text(re.compile(r"2[45]:\d\d left"))
            await expect(window.page.locator("#c-extension")).to_be_hidden()

        await kim.page.click("#c-end")
        for window in (kim, minji):
            await expect(status[window]).to_have_text("completed", timeout=WAIT_MS)
            await expect(window.page.locator("#c-time")).to_contain_text("ended by expert")
        # The next demo consultation: both windows end up on the same new one.
        for window in (kim, minji):
            await window.page.click("#c-next")
            await expect(window.page.locator("#c-id")).to_have_text("· demo-2", timeout=WAIT_MS)
            await expect(status[window]).to_have_text("waiting", timeout=WAIT_MS)
        await minji.page.click("#c-cancel")
        await expect(status[kim]).to_have_text("cancelled", timeout=WAIT_MS)
        await screenshot(kim, "demo-consultation-dr-kim.png")
        for window in (kim, minji):
            assert window.problems == [], window.problems


async def test_reservation_and_notifications(tmp_path: Path, browser: Browser) -> None:
    async with dev_server(tmp_path) as proc:
        kim = await open_window(browser, proc, "Dr. Kim")
        minji = await open_window(browser, proc, "Minji")
        jisoo = await open_window(browser, proc, "Jisoo")
        for window in (kim, minji, jisoo):
            await window.live("reservation", "notifications")
        await expect(kim.page.locator("#r-form")).to_be_hidden()

        await minji.page.fill("#r-child", "Haneul")
        await minji.page.fill("#r-concern", "Trouble sleeping")
        await minji.page.click("#r-send")
        await expect(minji.page.locator("#r-requests .request .badge")).to_have_text(["pending"], timeout=WAIT_MS)
        request = kim.page.locator("#r-requests .request", has_text="Haneul")
        await expect(request).to_contain_text("Minji", timeout=WAIT_MS)
        await expect(request).to_contain_text("Trouble sleeping")
        # The new request notifies the expert.
        await expect(kim.page.locator("#n-unread")).to_have_text("1", timeout=WAIT_MS)
        await expect(kim.page.locator("#n-list .note.unread .title")).to_have_text(["새로운 상담 예약 요청"])
        # Another client never sees it.
        await expect(jisoo.page.locator("#r-requests .request")).to_have_count(0)

        # Messages both ways.
        await minji.page.fill("#r-message", "Is Tuesday possible too?")
        await minji.page.click("#r-message-send")
        await expect(kim.page.locator("#r-thread .bubble")).to_have_text(["Is Tuesday possible too?"], timeout=WAIT_MS)
        await kim.page.fill("#r-message", "Yes, Tuesday works.")
        await kim.page.click("#r-message-send")
        await expect(minji.page.locator("#r-thread .bubble")).to_have_text(
            ["Is Tuesday possible too?", "Yes, Tuesday works."], timeout=WAIT_MS
        )
        await expect(jisoo.page.locator("#r-thread .bubble")).to_have_count(0)

        await request.locator("button.accept").click()
        await expect(minji.page.locator("#r-requests .request .badge")).to_have_text(["accepted"], timeout=WAIT_MS)
        await expect(request.locator(".badge")).to_have_text("accepted")
        # The answer notifies the client: mark read one by one...
        await expect(minji.page.locator("#n-unread")).to_have_text("1", timeout=WAIT_MS)
        await minji.page.locator("#n-list .note.unread button").click()
        await expect(minji.page.locator("#n-unread")).to_have_text("0", timeout=WAIT_MS)
        await expect(minji.page.locator("#n-list .note.read")).to_have_count(1)

        # ...a second request, rejected with a reason, and mark all read.
        await minji.page.fill("#r-child", "Haneul")
        await minji.page.click("#r-send")
        pending = kim.page.locator("#r-requests .request", has=kim.page.locator(".badge.pending"))
        await expect(pending).to_have_count(1, timeout=WAIT_MS)
        await pending.locator("input").fill("Fully booked that day")
        await pending.locator("button.reject").click()
        await expect(minji.page.locator("#r-requests .request", has_text="Fully booked")).to_contain_text("rejected")
        await expect(kim.page.locator("#n-unread")).to_have_text("2", timeout=WAIT_MS)
        await kim.page.click("#n-all")
        await expect(kim.page.locator("#n-unread")).to_have_text("0", timeout=WAIT_MS)
        await expect(kim.page.locator("#n-list .note.unread")).to_have_count(0)
        await expect(kim.page.locator("#n-all")).to_be_disabled()

        await screenshot(kim, "demo-reservation-dr-kim.png")
        await screenshot(minji, "demo-reservation-minji.png")
        for window in (kim, minji, jisoo):
            assert window.problems == [], window.problems


async def chat_urls(proc: Proc) -> list[str]:
    return re.findall(r'"WebSocket (/ws/chat/demo/\?[^"]*)"', proc.output())


async def test_client_resumes_after_a_restart_and_stops_on_refusal(tmp_path: Path, browser: Browser) -> None:
    async with dev_server(tmp_path, "first") as first:
        port = first.port
        kim = await open_window(browser, first, "Dr. Kim")
        minji = await open_window(browser, first, "Minji")
        for window in (kim, minji):
            await window.live("chat")
        await say(kim, "before the restart")
        await expect(bubbles(minji)).to_have_text(["before the restart"], timeout=WAIT_MS)
        # Minji's receipt is the room's second event (seq 2): both windows have seen it.
        await expect(kim.page.locator("#messages .receipt")).to_have_text("✓✓ Read by Minji", timeout=WAIT_MS)
        for window in (kim, minji):
            await window.page.wait_for_function("realtimeDemo.conns[0].lastSeq === 2", timeout=WAIT_MS)
            await window.page.evaluate(
                "void realtimeDemo.conns[0].on('disconnected', (e) => { (window.closes ??= []).push(e.code); })"
            )
        async with httpx.AsyncClient() as client:
            info = (await client.get(f"{first.http}/dev/tokens")).json()
    # The server is gone (1012, then refused connections): the pages keep trying.
    await expect(minji.panel("chat").locator(".pill")).to_contain_text("reconnecting", timeout=WAIT_MS)
    # It said it comes back after a 1012 (`resume=1`): the drain closed it cleanly with one.
    assert (await minji.page.evaluate("window.closes"))[0] == 1012

    # Meanwhile, on another port: a message the windows miss.
    other = free_port()
    while other == port:
        other = free_port()
    async with dev_server(tmp_path, "elsewhere", other) as elsewhere:
        jisoo = info["users"][2]["token"]
        async with ws(elsewhere.ws_url("/ws/chat/demo/", token=jisoo)) as c:
            await c.expect("message_history")
            await c.send({"type": "chat_message", "content": "while you were away"})
            await c.expect("chat_message")

    async with dev_server(tmp_path, "second", port) as second:
        for window in (kim, minji):
            await window.live("chat")
        expected = ["before the restart", "while you were away"]
        await expect(bubbles(minji)).to_have_text(expected, timeout=WAIT_MS)
        await expect(bubbles(kim)).to_have_text(expected)
        # They came back with their token and resumed after the last seq they had seen.
        resumed = await chat_urls(second)
        assert len(resumed) == 2, second.output()
        for url in resumed:
            assert "token=[redacted]" in url and re.search(r"since=\d+", url), url
        assert sorted(re.findall(r"since=(\d+)", " ".join(resumed))) == ["2", "2"]

        await say(minji, "after the restart")
        await expect(bubbles(kim)).to_have_text([*expected, "after the restart"], timeout=WAIT_MS)

        # 4001 (the platform revokes Minji): reported, never retried. Her other
        # channels first come back too (a revocation does not outlaw new sockets).
        await minji.live("consultation", "reservation", "notifications")
        async with httpx.AsyncClient(base_url=second.http) as api:
            reply = await api.post("/api/users/2/disconnect", headers={"Authorization": f"Bearer {SERVICE_KEY}"})
            assert reply.status_code < 300, reply.text
        for panel in ("chat", "consultation", "reservation", "notifications"):
            await expect(minji.panel(panel).locator(".pill")).to_have_text("refused 4001", timeout=WAIT_MS)
        before = len(await chat_urls(second))
        await minji.page.wait_for_timeout(1500)
        assert len(await chat_urls(second)) == before
        assert await minji.page.evaluate("realtimeDemo.conns.every((c) => !c.isConnected())")
        await kim.live("chat")
        for window in (kim, minji):
            assert window.problems == [], window.problems


class ScriptedPeer:
    """A WebSocket peer that plays one script entry per connection (frames to
    send, then a close code) and records each connection's path and frames."""

    def __init__(self, script: list[tuple[list[dict[str, Any]], int]]) -> None:
        self.script = script
        self.paths: list[str] = []
        self.received: list[list[dict[str, Any]]] = []

    async def handler(self, conn: Any) -> None:
        index = len(self.paths)
        self.paths.append(conn.request.path)
        self.received.append([])
        frames, code = self.script[index] if index < len(self.script) else ([], 4003)

        async def read() -> None:
            with contextlib.suppress(Exception):
                async for text in conn:
                    self.received[index].append(json.loads(text))

        reader = asyncio.ensure_future(read())
        for frame in frames:
            await conn.send(json.dumps(frame))
        await asyncio.sleep(0.4)  # long enough for queued frames and a heartbeat
        await conn.close(code, "scripted")
        await reader


def query(path: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in path.partition("?")[2].split("&") if part)


async def test_client_reconnects_resumes_and_deduplicates(tmp_path: Path, browser: Browser) -> None:
    peer = ScriptedPeer(
        [
            ([{"type": "message_history", "messages": [], "last_seq": 3}, {"type": "chat_message", "seq": 4}], 1012),
            ([{"type": "chat_message", "seq": s} for s in (3, 4, 5)], 1013),
            ([{"type": "resync_required", "last_seq": 2}, {"type": "message_history", "last_seq": 2}], 1011),
            ([], 4003),
        ]
    )
    async with dev_server(tmp_path) as proc, serve(peer.handler, "127.0.0.1", 0) as peer_server:
        peer_url = f"ws://127.0.0.1:{peer_server.sockets[0].getsockname()[1]}/ws/chat/demo/"
        context = await browser.new_context()
        page = await context.new_page()
        await page.goto(f"{proc.http}/static/realtime-client.js")
        await page.evaluate(
            """async (url) => {
                const { WebSocketConnection } = await import(location.href);
                const log = (window.events = []);
                const c = (window.conn = new WebSocketConnection(url, {
                    token: "first-token", baseDelayMs: 50, maxDelayMs: 200, heartbeatMs: 150,
                }));
                for (const type of ["chat_message", "disconnected", "reconnecting", "refused"]) {
                    c.on(type, (d) => log.push([type, d.seq ?? d.code ?? d.delayMs]));
                }
                let opened = 0;
                c.on("connected", () => { if (++opened === 2) c.setToken("second-token"); });
                c.on("disconnected", () => c.send({ type: "queued" }));
                c.connect();
            }""",
            peer_url,
        )
        await page.wait_for_function("events.some(([type]) => type === 'refused')", timeout=WAIT_MS)
        await page.wait_for_timeout(800)  # time enough for a retry that must not come
        events = await page.evaluate("events")

    by_type: dict[str, list[Any]] = {}
    for type_, value in events:
        by_type.setdefault(type_, []).append(value)
    # Replayed seqs (3 and 4 again) were dropped; nothing after the refusal.
    assert by_type["chat_message"] == [4, 5]
    assert by_type["disconnected"] == [1012, 1013, 1011, 4003]
    assert by_type["refused"] == [4003]
    assert len(by_type["reconnecting"]) == 3 and all(0 <= d < 200 for d in by_type["reconnecting"])
    assert len(peer.paths) == 4, peer.paths
    queries = [query(path) for path in peer.paths]
    # The token on every connection (the fresh one once set), `since` = the last seq seen.
    assert queries[0] == {"token": "first-token", "resume": "1"}
    assert queries[1] == {"token": "first-token", "resume": "1", "since": "4"}
    assert queries[2] == {"token": "second-token", "resume": "1", "since": "5"}
    assert queries[3] == {"token": "second-token", "resume": "1", "since": "2"}  # after the resync's snapshot
    # Sent while disconnected, delivered on the next connection; the token refresh; the heartbeat.
    assert {"type": "queued"} in peer.received[1]
    assert {"type": "auth", "token": "second-token"} in peer.received[1]
    assert any(frame == {"type": "ping"} for frames in peer.received for frame in frames)


SEED_ROOM = "seed-room"
# The seed's `WebSocketConnection`/`wsManager` (tests/seed_client.py), driven the
# way its `useChatWebSocket` hook drives them: `connect(token)`, the `message`
# handler (`message_history` replaces the list, `chat_message` appends), `send`.
SEED_PAGE = """<!doctype html><meta charset="utf-8"><title>seed client</title><script>
window.process = { env: { NEXT_PUBLIC_WS_URL: %(ws_base)s } };
%(manager)s
window.seen = { connected: 0, disconnected: 0, messages: [], via: {} };
const connection = wsManager.getConnection('chat', %(room)s);
connection.on('connected', () => seen.connected++);
connection.on('disconnected', () => seen.disconnected++);
connection.on('message', (data) => {
  switch (data.type) {
    case 'chat_message':
      seen.messages = [...seen.messages, data.message];
      seen.via[data.message.content] ??= 'live';
      break;
    case 'message_history':
      seen.messages = data.messages;
      for (const m of data.messages) seen.via[m.content] ??= 'history';
      break;
  }
});
// As the seed's consultation hook does: a socket error is reported, not thrown.
connection.on('error', () => {});
connection.connect(%(token)s);
window.sendMessage = (content) => connection.send({ type: 'chat_message', content, message_type: 'text' });
</script>
"""


class SeedPage:
    html = ""


async def serve_page(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """The one page, over HTTP/1.1, for any request: the platform's web app, in short."""
    with contextlib.suppress(Exception):
        await reader.readuntil(b"\r\n\r\n")
        body = SeedPage.html.encode()
        head = f"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {len(body)}\r\n"
        writer.write(head.encode() + b"Connection: close\r\n\r\n" + body)
        await writer.drain()
    writer.close()


def contents(messages: list[dict[str, Any]]) -> list[str]:
    return [m["content"] for m in messages]


async def test_the_seed_client_comes_back_after_a_rolling_restart(tmp_path: Path, browser: Browser) -> None:
    """The platform's own client reconnects only after an unclean close, and
    without its token: the drain drops its connection (no close frame) and the
    session cookie authenticates the token-less reconnect to the new process."""
    require("redis")
    page_server = await asyncio.start_server(serve_page, "127.0.0.1", 0)
    page_origin = f"http://127.0.0.1:{page_server.sockets[0].getsockname()[1]}"
    env = {
        "DATABASE_URL": f"sqlite:///{tmp_path}/realtime.db",
        "BROKER_URL": REDIS_URL,
        "UPLOAD_DIR": str(tmp_path / "uploads"),
        # The platform's pages are on their own origin: the one allowed to use the cookie.
        "ALLOWED_ORIGINS": page_origin,
    }
    first, other = start(env, tmp_path / "first.log"), start(env, tmp_path / "other.log")
    second: Proc | None = None
    try:
        await asyncio.gather(ready(first), ready(other))
        async with first.api() as api:
            reply = await api.post("/api/rooms", json={"id": SEED_ROOM, "member_ids": [1, 2]})
            assert reply.status_code == 201, reply.text
        SeedPage.html = SEED_PAGE % {
            "ws_base": json.dumps(f"ws://127.0.0.1:{first.port}/ws"),
            "manager": manager_script(),
            "room": json.dumps(SEED_ROOM),
            "token": json.dumps(token(1, name="Dr. Kim")),
        }
        context = await browser.new_context()
        page = await context.new_page()
        problems: list[str] = []
        page.on("pageerror", lambda exc: problems.append(str(exc)))
        await page.goto(f"{page_origin}/chat")
        await page.wait_for_function("seen.connected === 1", timeout=WAIT_MS)
        await page.evaluate("sendMessage('before the deploy')")
        await page.wait_for_function("seen.messages.length === 1", timeout=WAIT_MS)

        cookie = next(c for c in await context.cookies() if c["name"] == "realtime_session")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/ws", cookie
        assert not cookie["secure"] and 0 < cookie["expires"] - time.time() <= 900
        assert await page.evaluate("document.cookie") == ""  # HttpOnly: out of the page's scripts' reach

        async with ws(other.ws_url(f"/ws/chat/{SEED_ROOM}/", token=token(2, name="Minji"), resume=1)) as minji:
            history = await minji.expect("message_history")
            assert contents(history["messages"]) == ["before the deploy"]
            first.terminate()
            # The drain drops the seed client's connection: unclean, so it schedules a reconnect.
            await page.wait_for_function("seen.disconnected === 1", timeout=WAIT_MS)
            await minji.send({"type": "chat_message", "content": "while you were away"})
            await minji.expect("chat_message")
            # Sent while disconnected: the seed client queues it and flushes it on reopening.
            await page.evaluate("sendMessage('queued while away')")
            assert first.wait(20) in (0, -signal.SIGTERM)

            second = start(env, tmp_path / "second.log", first.port)
            await ready(second)
            await page.wait_for_function("seen.connected === 2", timeout=30_000)
            expected = ["before the deploy", "while you were away", "queued while away"]
            await page.wait_for_function(
                f"seen.messages.map((m) => m.content).join('|') === {json.dumps('|'.join(expected))}"
            )
            via = await page.evaluate("seen.via")
            assert via["while you were away"] == "history", via
            assert via["queued while away"] == "live", via
            # Minji (on the other process all along) got the flushed one, sent as Dr. Kim.
            frame = await minji.expect("chat_message", timeout=WAIT_MS)
            assert frame["message"]["content"] == "queued while away"
            assert frame["message"]["sender"]["id"] == 1 and frame["message"]["sender"]["name"] == "Dr. Kim"
        # The reconnect carried no token: the session cookie authenticated it.
        assert f'"WebSocket /ws/chat/{SEED_ROOM}/" [accepted]' in second.output(), second.output()
        assert "token=" not in second.output()
        assert problems == [], problems
        await context.close()
    finally:
        page_server.close()
        for proc in (first, other, second):
            if proc is not None:
                proc.terminate()
        for proc in (first, other, second):
            if proc is not None:
                try:
                    proc.wait(15)
                except Exception:
                    proc.kill()


def test_the_seed_guide_copy_is_the_original() -> None:
    if not ORIGINAL.exists():
        pytest.skip(f"{ORIGINAL} is not on this machine")
    assert SEED.read_bytes() == ORIGINAL.read_bytes()


def test_the_type_stripping_keeps_the_code_and_refuses_what_it_does_not_know() -> None:
    script = manager_script()
    source = typescript_block(MANAGER_FILE)
    # Every statement line of the seed is there, only its annotations gone.
    for line in ("if (!event.wasClean) {", "this.connect();", "this.flushMessageQueue();", "const delay ="):
        assert line in source and line in script, line
    assert "private " not in script and ": void" not in script and "interface" not in script
    for unknown in ("  private x?: number;", "  enum Mode { A }", "  const ws = socket as WebSocket;"):
        with pytest.raises(ValueError):
            strip_types(unknown)
