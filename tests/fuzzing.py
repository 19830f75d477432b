"""Frame strategies and the harness of `test_fuzz_frames.py`.

Strategies are static; ids that exist only once the server runs (messages,
requests, notifications) are drawn as `Ref`s and looked up when the example is
sent, so Hypothesis generates every example before the async part runs (a draw
inside the async test would end the test runner's task when Hypothesis stops
an example early).
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from realtime.events.protocol import errors
from tests.conftest import Client, Server, token
from tests.store_checks import store_is_whole

LIMIT = 64 * 1024
FUZZ = settings(
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)

# ---- what gets sent ------------------------------------------------------------------

EDGE_TEXT = ["", " ", "\t\n", "\u0000", "a\u0000b", "\ud800", "x\udfff", "😀", "\u202egnp.exe", "가나다", "null", "-1"]
EDGE_TEXT += ["../../etc/passwd", "' OR '1'='1", "<script>alert(1)</script>", "javascript:alert(1)", "\\u0000", "%00"]
EDGE_NUMBERS = [0, -1, 1, 60, 61, 100, 101, 2**31, 2**53, 2**53 + 1, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**30]
EDGE_NUMBERS += [0.5, -0.0, 1.0, 1e308, -1e308]
# Raw JSON put in place of a field: what json.dumps never writes.
RAW = ["1e400", "-1e400", "NaN", "Infinity", "-0", "1E2", "01", "0x10", '"\\ud800"', '"\\udc00x"', '"\\u0000"']
RAW += ["[" * 1000 + "]" * 1000, '{"a":' * 1000 + "1" + "}" * 1000, "tru", '"unterminated']
LENGTHS = [64, 65, 100, 101, 255, 256, 500, 501, 2000, 2001, 8192, 8193, 10_000, 10_001, 70_000]
# Invalid UTF-8 (a bad continuation, an encoded surrogate, a lone byte), and JSON sent as binary.
BINARY = [b"\xc3\x28", b"\xed\xa0\x80", b"\xff", b'{"type":"ping"}']
OTHER_TYPES = ["chat_message", "start_consultation", "reservation_request", "mark_all_read", "error", "pong", "Ping"]
HOLE = "\x01hole\x01"
# How often each kind of example comes: valid frames often enough to change state, so later ones meet it.
SHAPES = ["valid"] * 4 + ["mutated"] * 3 + ["batch"] * 2 + ["raw", "deep", "binary"]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**80), 2**80),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.sampled_from(EDGE_TEXT),
    st.sampled_from(EDGE_NUMBERS),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
long_text = st.builds(lambda n, ch: ch * n, st.sampled_from(LENGTHS), st.sampled_from(["x", " ", "가", "😀", "\u0000"]))
# Text a store must keep as sent, or refuse as a whole: NUL, emoji, bidi overrides, escapes.
ODD_WORDS = ["m \u0000", "\u0000", "a\u0000b", "m 😀", "m \u202e", "가나다", "m \\u0000", "m\r\n"]
ODD_WORDS += ["m \ufeff", "m \U0010ffff"]
words = st.text(max_size=30).map(lambda s: "m " + s) | st.sampled_from(ODD_WORDS)
cmids = st.sampled_from(["a", "b", "c"]) | st.text(min_size=1, max_size=64)
Templates = dict[str, st.SearchStrategy[dict[str, Any]]]


@dataclass(frozen=True)
class Ref:
    """The `index`-th entry of a pool of ids the arena learns while it runs."""

    pool: str
    index: int


@dataclass(frozen=True)
class Payload:
    kind: str  # "json" (a value with `Ref`s, `raw` at HOLE), "text" or "bytes" (sent as they are)
    body: Any
    raw: str = ""


def ref(pool: str) -> st.SearchStrategy[Ref]:
    return st.builds(Ref, st.just(pool), st.integers(0, 999))


def fixed(required: dict[str, Any], **optional: Any) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(required, optional=optional)


def to_text(value: Any, raw: str = "") -> str:
    text = json.dumps(value, ensure_ascii=False)
    try:
        text.encode()
    except UnicodeEncodeError:  # a lone surrogate: escaped, as a client would have to
        text = json.dumps(value)
    return text.replace(json.dumps(HOLE), raw)


@st.composite
def frames(draw: st.DrawFn, templates: Templates, mutate: bool = True) -> dict[str, Any]:
    type_ = draw(st.sampled_from(list(templates)))  # in the arena's order: the simplest examples write
    frame = {"type": type_, **draw(templates[type_])}
    if not mutate:
        return frame
    fields = sorted(k for k in frame if k != "type")
    key = draw(st.sampled_from(fields)) if fields else "type"
    op = draw(st.sampled_from(["drop", "wrong", "null", "extra", "long", "type"]))
    if op == "drop":
        frame.pop(key)
    elif op == "wrong":
        frame[key] = draw(values)
    elif op == "null":
        frame[key] = None
    elif op == "extra":
        frame.update(draw(st.dictionaries(st.text(max_size=12), values, min_size=1, max_size=4)))
    elif op == "long":
        frame[key] = draw(long_text)
    else:
        frame["type"] = draw(st.sampled_from(OTHER_TYPES) | st.text(max_size=70) | values)
    return frame


@st.composite
def payloads(draw: st.DrawFn, templates: Templates) -> Payload:
    shape = draw(st.sampled_from(SHAPES))
    if shape == "binary":
        return Payload("bytes", draw(st.binary(max_size=64) | st.sampled_from(BINARY)))
    if shape == "batch":
        items = draw(st.lists(frames(templates, draw(st.booleans())), max_size=60))
        return Payload("json", items if draw(st.booleans()) else [*items, draw(values)])
    if shape == "valid":
        return Payload("json", draw(frames(templates, mutate=False)))
    frame = draw(frames(templates))
    if shape == "mutated":
        return Payload("json", frame) if draw(st.integers(0, 9)) else Payload("text", draw(st.text(max_size=40)))
    holed = {**frame, draw(st.sampled_from([*frame, "x"])): HOLE}
    if shape == "deep":
        depth = draw(st.sampled_from([100, 999, 1000, 1001, 5000, 20_000]))
        nested = draw(st.sampled_from(["[" * depth + "]" * depth, '{"a":' * depth + "1" + "}" * depth]))
        return Payload("text", nested) if draw(st.booleans()) else Payload("json", holed, nested)
    return Payload("json", holed, draw(st.sampled_from(RAW)))


def day(offset: int) -> str:
    return (datetime.now(UTC).date() + timedelta(days=offset)).isoformat()


COMMON: Templates = {"ping": st.just({}), "auth": fixed({"token": ref("token")})}

# ---- the sockets under test ------------------------------------------------------------


class Actor:
    def __init__(self, user_id: int, path: str, snapshot: str, **claims: Any) -> None:
        self.user_id = user_id
        self.path = path
        self.snapshot = snapshot
        self.claims = {"name": f"user{user_id}", **claims}
        self.client: Client | None = None

    def token(self, **changes: Any) -> str:
        return token(self.user_id, **{**self.claims, **changes})


class Arena:
    """Sockets of one endpoint, what they were told, and what the store must hold."""

    endpoint: type  # the BaseEndpoint subclass whose frames are generated
    templates: Templates = COMMON
    events: frozenset[str] = frozenset()
    actors: list[Actor]
    markers = itertools.count()

    def __init__(self, server: Server) -> None:
        self.server = server
        self.db = server.runtime.db
        self.examples = 0

    async def connect(self, actor: Actor) -> None:
        if actor.client is not None:
            await actor.client.close()
        url = self.server.ws_url(actor.path, token=actor.token())
        actor.client = Client(await connect(url, open_timeout=5, close_timeout=1, max_size=None))
        self.seen(await actor.client.expect(actor.snapshot))

    def seen(self, frame: dict[str, Any]) -> None:
        assert isinstance(frame, dict) and frame.get("type") in self.events | {"pong", "error", "auth_ok"}, frame
        if frame["type"] == "error":
            assert frame["code"] in errors.CODES and isinstance(frame["message"], str) and frame["message"], frame
        self.learn(frame)

    def render(self, actor: Actor, payload: Payload) -> str | bytes:
        if payload.kind != "json":
            return payload.body
        pools = {**self.pools(), "token": [actor.token(), actor.token(name="renamed"), "not-a-jwt"]}
        pools["token"] += [token(actor.user_id + 1), actor.token(exp=1)]

        def resolve(value: Any) -> Any:
            if isinstance(value, Ref):
                pool = pools[value.pool]
                return pool[value.index % len(pool)]
            if isinstance(value, dict):
                return {k: resolve(v) for k, v in value.items()}
            return [resolve(v) for v in value] if isinstance(value, list) else value

        return to_text(resolve(payload.body), payload.raw)

    async def step(self, who: int, payload: Payload) -> None:
        """Send one example, then a marker and a ping; read up to the pong."""
        assert set(self.templates) == set(self.endpoint.kinds), "every frame type of the endpoint is generated"
        actor = self.actors[who % len(self.actors)]
        assert actor.client is not None
        text = self.render(actor, payload)
        oversized = isinstance(text, str) and len(text.encode()) > LIMIT
        marker = f"m{next(self.markers)}"
        try:
            await actor.client.send(text)
            await actor.client.send(json.dumps({"type": "zz_marker", "client_msg_id": marker}))
            await actor.client.send('{"type":"ping"}')
            while not ((frame := await self.next(actor))["type"] == "error" and frame.get("client_msg_id") == marker):
                pass
            while (await self.next(actor))["type"] != "pong":
                pass
            assert not oversized, "a frame over the limit was taken"
        except ConnectionClosed:
            code = actor.client.conn.close_code
            if not self.may_close(code):
                await self.connect(actor)
                # A documented close only: 1009 for a frame over the limit, 4001 for an `auth` that fails.
                assert code == 1009 if oversized else code == 4001 and '"auth"' in str(text), (code, str(text)[:300])
        self.examples += 1
        await store_is_whole(self.db)

    async def next(self, actor: Actor) -> dict[str, Any]:
        assert actor.client is not None
        frame = await actor.client.recv(10)
        self.seen(frame)
        return frame

    async def settle(self, quiet: float = 0.7) -> None:
        """Read every socket until all are quiet: broadcasts come through the hub."""
        for actor in self.actors:
            assert actor.client is not None
            while True:
                try:
                    self.seen(await actor.client.recv(quiet))
                except (TimeoutError, ConnectionClosed):
                    break

    async def start(self) -> None:
        for actor in self.actors:
            await self.connect(actor)

    async def finish(self) -> None:
        await self.settle()
        await store_is_whole(self.db)
        await self.told_is_stored()
        for actor in self.actors:
            if actor.client is not None:
                await actor.client.close()

    def pools(self) -> dict[str, list[Any]]:
        return {}

    def may_close(self, code: int | None) -> bool:
        """A close the arena expects by now (the subclass reconnects as it sees fit)."""
        return False

    def learn(self, frame: dict[str, Any]) -> None:
        raise NotImplementedError

    async def told_is_stored(self) -> None:
        raise NotImplementedError
