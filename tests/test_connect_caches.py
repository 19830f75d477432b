"""What the connect path keeps between connects, and that keeping it changes no
answer: verified tokens (still expire, still revocable), the revocation table
read whole, room members (a removal still takes effect at once, an addition
too, on every process), a resume that missed nothing (no store read at all),
and the admission of a few sockets at a time."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from realtime.events.node import memberships as memberships_module
from realtime.events.node import revocation as revocation_module
from realtime.events.node.auth import AuthError, TokenVerifier, VerifiedTokens
from realtime.events.node.memberships import Memberships
from realtime.events.node.revocation import Revocations
from realtime.store import revocations, rooms
from realtime.store.db import Db
from tests.conftest import SECRET, Client, Server, base_settings, chat, running, token, ws
from tests.procs import REDIS_URL, make_room, require, servers


def verifier() -> TokenVerifier:
    return TokenVerifier(SECRET, ["HS256"])


@contextlib.asynccontextmanager
async def store(tmp_path: Path) -> AsyncIterator[Db]:
    db = Db(f"sqlite:///{tmp_path}/caches.db")
    await db.connect()
    try:
        yield db
    finally:
        await db.disconnect()


# ---- verified tokens -----------------------------------------------------------------


async def test_a_verified_token_is_refused_once_its_exp_has_passed() -> None:
    check = verifier()
    exp = int(time.time()) + 1
    signed = token(1, exp=exp)
    assert check.verify(signed).user_id == 1
    assert len(check.verified) == 1
    await asyncio.sleep(exp - time.time() + 0.05)
    with pytest.raises(AuthError):
        check.verify(signed)
    assert len(check.verified) == 0


def test_a_cached_signature_under_another_payload_is_verified_in_full() -> None:
    check = verifier()
    header, _, signature = token(1).split(".")
    assert check.verify(token(1)).user_id == 1
    claims = {"user_id": 2, "exp": int(time.time()) + 3600}
    forged_payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    with pytest.raises(AuthError):
        check.verify(f"{header}.{forged_payload}.{signature}")


def test_the_cache_holds_at_most_its_size_and_lets_the_oldest_go() -> None:
    cache = VerifiedTokens(size=3)
    check = verifier()
    tokens = [token(user) for user in range(1, 6)]
    for signed in tokens:
        cache.put(signed, check.verify(signed))
    assert len(cache) == 3
    now = time.time()
    assert [cache.get(signed, now) is not None for signed in tokens] == [False, False, True, True, True]


def test_bad_tokens_are_not_remembered() -> None:
    check = verifier()
    for bad in ("", "x", "a.b.c", token(1, secret="another-secret-of-at-least-32-bytes"), token(1, exp=1)):
        with pytest.raises(AuthError):
            check.verify(bad)
    assert len(check.verified) == 0


async def test_a_token_verified_before_its_revocation_is_refused(server: Server) -> None:
    await server.room("r1", [1])
    old = token(1, name="one", iat=int(time.time()) - 5)
    async with ws(server.ws_url("/ws/chat/r1/", token=old)) as client:
        await client.expect("message_history")
    async with server.api() as api:
        assert (await api.post("/api/users/1/disconnect", json={"revoke": True})).status_code == 202
    async with ws(server.ws_url("/ws/chat/r1/", token=old)) as client:
        assert await client.closed() == 4001


# ---- revocations read whole ------------------------------------------------------------


@pytest.fixture
def short_ttl(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(revocation_module, "TTL", 0.3)
    yield


def revoked(user_id: int, issued_at: float) -> Any:
    from realtime.events.node.auth import Identity

    return Identity(user_id, None, None, None, int(time.time()) + 3600, issued_at)


async def test_the_whole_table_answers_every_user_in_one_read(tmp_path: Path, short_ttl: None) -> None:
    async with store(tmp_path) as db:
        now_ms = int(time.time() * 1000)
        await revocations.revoke(db, 7, now_ms)
        cache = Revocations()
        assert await cache.refuses(db, revoked(7, now_ms / 1000 - 1))
        assert not await cache.refuses(db, revoked(7, now_ms / 1000 + 1))  # issued after: accepted
        assert not await cache.refuses(db, revoked(8, 0))
        assert cache.complete_until > time.monotonic()
        # Written behind its back (another process, its `ctl` lost): seen once the copy lapses.
        await revocations.revoke(db, 8, now_ms)
        assert not await cache.refuses(db, revoked(8, 0))
        await asyncio.sleep(0.35)
        assert await cache.refuses(db, revoked(8, 0))


async def test_learn_counts_at_once_and_a_copy_read_meanwhile_is_not_kept(tmp_path: Path) -> None:
    async with store(tmp_path) as db:
        cache = Revocations()
        assert not await cache.refuses(db, revoked(9, 0))
        cache.learn(9, int(time.time() * 1000))
        assert await cache.refuses(db, revoked(9, 0))
        cache.forget()
        reading = asyncio.ensure_future(cache.refuses(db, revoked(10, 0)))
        for _ in range(2):
            await asyncio.sleep(0)  # the copy's read is under way
        assert cache._snapshot is not None
        cache.learn(10, int(time.time() * 1000))
        assert await reading  # what was learned during the read counts
        assert cache.complete_until == 0.0  # the copy from before it is not kept
        assert await cache.refuses(db, revoked(10, 0))


async def test_a_big_table_is_read_one_user_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(revocation_module, "SNAPSHOT_MAX", 2)
    async with store(tmp_path) as db:
        for user in (1, 2, 3):
            await revocations.revoke(db, user, int(time.time() * 1000))
        cache = Revocations()
        assert [await cache.refuses(db, revoked(user, 0)) for user in (1, 2, 3, 4)] == [True, True, True, False]
        assert cache.complete_until == 0.0
        assert set(cache.known) == {1, 2, 3, 4}


# ---- room members ----------------------------------------------------------------------


async def test_members_are_read_once_per_room_and_a_stranger_is_asked_again(tmp_path: Path) -> None:
    async with store(tmp_path) as db:
        await rooms.create(db, "r1", [1, 2])
        cache = Memberships()
        assert await cache.admits(db, "r1", 1) is True
        assert await cache.admits(db, "nope", 1) is None
        assert "nope" not in cache.rooms
        # Added behind its back: a "no" always comes from the store.
        await rooms.add_member(db, "r1", 3)
        assert await cache.admits(db, "r1", 3) is True
        # Removed behind its back: the cached "yes" holds until the room is forgotten (or lapses).
        await rooms.remove_member(db, "r1", 2)
        assert await cache.admits(db, "r1", 2) is True
        cache.forget("r1")
        assert await cache.admits(db, "r1", 2) is False


async def test_a_read_that_began_before_a_change_is_not_kept(tmp_path: Path) -> None:
    async with store(tmp_path) as db:
        await rooms.create(db, "r1", [1, 2])
        cache = Memberships()
        reading = asyncio.ensure_future(cache.admits(db, "r1", 1))
        await asyncio.sleep(0)
        cache.forget("r1")
        assert await reading is True
        assert "r1" not in cache.rooms


async def test_members_lapse_and_the_cache_is_bounded(tmp_path: Path) -> None:
    async with store(tmp_path) as db:
        for room in ("a", "b", "c"):
            await rooms.create(db, room, [1])
        cache = Memberships(ttl=0.2, max_rooms=2)
        for room in ("a", "b", "c"):
            assert await cache.admits(db, room, 1)
        assert len(cache.rooms) <= 2
        await rooms.remove_member(db, "c", 1)
        await asyncio.sleep(0.25)
        assert await cache.admits(db, "c", 1) is False
        assert memberships_module.TTL > 0


async def test_a_removed_member_cannot_connect_again_right_after_the_204(server: Server) -> None:
    await server.room("r1", [1, 2])
    async with chat(server, "r1", 2) as client:
        await client.expect("message_history")  # the room's members are cached now
        async with server.api() as api:
            assert (await api.delete("/api/rooms/r1/members/2")).status_code == 204
        assert await client.closed() == 4003
    async with chat(server, "r1", 2) as again:
        assert await again.closed() == 4003
    async with server.api() as api:
        assert (await api.put("/api/rooms/r1/members/2")).status_code == 204
    async with chat(server, "r1", 2) as back:
        await back.expect("message_history")


async def test_member_changes_reach_the_cache_of_every_process(tmp_path: Path) -> None:
    require("redis")
    env = {"DATABASE_URL": f"sqlite:///{tmp_path}/shared.db", "BROKER_URL": REDIS_URL}
    async with servers(2, env, tmp_path) as (one, two):
        await make_room(one, "r1", [1, 2])
        url = two.ws_url("/ws/chat/r1/", token=token(2))
        async with ws(url) as client:
            await client.expect("message_history")  # the second process has the room cached
        async with one.api() as api:
            assert (await api.delete("/api/rooms/r1/members/2")).status_code == 204
        # Closed there either way: refused at once, or let in and closed by the `access` command.
        async with ws(url) as again:
            assert await again.closed() == 4003
        async with one.api() as api:
            assert (await api.put("/api/rooms/r1/members/3")).status_code == 204
        async with ws(two.ws_url("/ws/chat/r1/", token=token(3))) as added:
            await added.expect("message_history")


# ---- a resume that missed nothing ------------------------------------------------------


class ReadCounter:
    """Counts the store reads of a running server."""

    def __init__(self, server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        db = server.runtime.db
        for name in ("fetch_one", "fetch_all"):
            original = getattr(db, name)
            monkeypatch.setattr(db, name, self._counting(original))

    def _counting(self, original: Any) -> Any:
        async def read(*args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return await original(*args, **kwargs)

        return read


async def post(client: Client, content: str) -> int:
    await client.send({"type": "chat_message", "content": content})
    return int((await client.expect("chat_message"))["seq"])


async def test_a_resume_that_missed_nothing_reads_nothing_from_the_store(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    await server.room("r1", [1, 2])
    full = {"name": "u", "role": "client"}  # a token with the whole profile: no profile read
    async with chat(server, "r1", 1, token=token(1, **full)) as stays:
        await stays.expect("message_history")
        async with chat(server, "r1", 2, token=token(2, **full)) as first:
            await first.expect("message_history")
            last = await post(stays, "one")
            assert (await first.expect("chat_message"))["seq"] == last
        reads = ReadCounter(server, monkeypatch)
        async with chat(server, "r1", 2, token=token(2, **full), since=last) as back:
            await back.send({"type": "ping"})
            await back.expect("pong")  # nothing replayed before it
            assert reads.count == 0
            seq = await post(stays, "two")
            assert (await back.expect("chat_message"))["seq"] == seq == last + 1
            await back.silent()
        # Behind: exactly the missed ones, from the store.
        async with chat(server, "r1", 2, token=token(2, **full), since=last) as behind:
            assert (await behind.expect("chat_message"))["seq"] == last + 1
            await behind.silent()
        # Ahead of what exists: a resync, as before.
        async with chat(server, "r1", 2, token=token(2, **full), since=last + 5) as ahead:
            assert (await ahead.expect("resync_required"))["last_seq"] == last + 1
            assert (await ahead.expect("message_history"))["last_seq"] == last + 1


# ---- admission -----------------------------------------------------------------------


async def test_a_narrow_admission_still_lets_every_socket_in_and_silent_ones_do_not_hold_it(tmp_path: Path) -> None:
    async with running(base_settings(tmp_path, connects_at_once=1)) as server:
        await server.room("r1", list(range(1, 21)))
        async with contextlib.AsyncExitStack() as stack:
            # Waiting for their `auth` frame, outside the admission.
            for _ in range(5):
                await stack.enter_async_context(ws(server.ws_url("/ws/chat/r1/")))
            # Refused inside it: it is given back.
            async with chat(server, "r1", 99) as stranger:
                assert await stranger.closed() == 4003
            clients = [await stack.enter_async_context(chat(server, "r1", user)) for user in range(1, 21)]
            frames = await asyncio.gather(*(client.expect("message_history") for client in clients))
            assert len(frames) == 20


async def test_a_socket_whose_turn_comes_during_the_drain_is_told_the_server_restarts(tmp_path: Path) -> None:
    async with running(base_settings(tmp_path, connects_at_once=1)) as server:
        await server.room("r1", [1])
        runtime = server.runtime
        await runtime.admission.acquire()  # every place taken
        try:
            async with chat(server, "r1", 1, since=0) as waiting:
                await waiting.silent(0.3)  # accepted, waiting its turn
                runtime.draining = True
                runtime.admission.release()
                assert await waiting.closed() == 1012
        finally:
            runtime.draining = False


# ---- the garbage collector ---------------------------------------------------------


def test_the_server_sets_the_gc_thresholds_and_an_embedding_host_keeps_its_own(tmp_path: Path) -> None:
    import gc

    from realtime.embedding import Realtime
    from realtime.server import create_app

    before = gc.get_threshold()
    try:
        gc.set_threshold(700, 10, 10)
        Realtime(base_settings(tmp_path, gc_thresholds=(1234, 5, 6)))
        assert gc.get_threshold() == (700, 10, 10)
        create_app(base_settings(tmp_path, gc_thresholds=None))
        assert gc.get_threshold() == (700, 10, 10)
        create_app(base_settings(tmp_path, gc_thresholds=(1234, 5, 6)))
        assert gc.get_threshold() == (1234, 5, 6)
    finally:
        gc.set_threshold(*before)


async def test_a_closed_socket_is_freed_without_waiting_for_a_full_collection(server: Server) -> None:
    import gc
    import weakref

    await server.room("r1", [1])
    gc.collect()
    gc.disable()  # only reference counting frees anything from here on
    try:
        async with chat(server, "r1", 1) as client:
            await client.expect("message_history")
            endpoint = next(iter(server.runtime.sockets[1]))
            freed = weakref.ref(endpoint)
            del endpoint
        for _ in range(50):
            if freed() is None:
                break
            await asyncio.sleep(0.05)
        assert freed() is None
    finally:
        gc.enable()


async def test_a_server_process_collects_closed_connections_once_enough_have_closed(tmp_path: Path) -> None:
    """A closed connection's cycles (uvicorn's protocol object is in one) are freed by the
    sweep once `minimum` sockets have closed, with thresholds no allocation count reaches."""
    import gc
    import weakref

    from realtime.transport import RAW_SEND

    before = gc.get_threshold()
    try:
        async with running(base_settings(tmp_path, gc_thresholds=(10**7, 10, 10))) as server:
            sweep = server.runtime.sweep
            sweep.minimum = 4
            gc.collect()
            await server.room("r1", [1, 2, 3, 4])
            protocols = []
            for user in (1, 2, 3, 4):
                async with chat(server, "r1", user) as client:
                    await client.expect("message_history")
                    endpoint = next(iter(server.runtime.sockets[user]))
                    protocols.append(weakref.ref(endpoint.scope[RAW_SEND].__self__))
                    del endpoint
                for _ in range(100):
                    if user not in server.runtime.sockets:
                        break
                    await asyncio.sleep(0.02)
                if user < 4:
                    assert sweep.collections == 0
            for _ in range(100):
                if sweep.collections:
                    break
                await asyncio.sleep(0.02)
            assert sweep.collections == 1 and sweep.closed_since == 0
            # The last one's transport may still have been closing when the sweep ran.
            assert [ref() for ref in protocols[:3]] == [None, None, None]
    finally:
        gc.set_threshold(*before)


async def test_with_pythons_own_thresholds_the_server_leaves_collections_to_python(tmp_path: Path) -> None:
    async with running(base_settings(tmp_path, gc_thresholds=None)) as server:
        assert server.runtime.sweep is None


# ---- profiles read together ------------------------------------------------------


async def test_profiles_asked_for_in_one_turn_are_read_by_one_statement(tmp_path: Path) -> None:
    from realtime.events.node.profiles import ProfileReads
    from realtime.store import users

    async with store(tmp_path) as db:
        for user_id in range(1, 601):
            await users.upsert(db, user_id, f"user {user_id}", "expert" if user_id % 2 else "client", None)
        statements: list[int] = []
        fetch_all = db.fetch_all

        async def counted(sql: str, params: Any = ()) -> Any:
            statements.append(len(params))
            return await fetch_all(sql, params)

        db.fetch_all = counted  # type: ignore[method-assign]
        reads = ProfileReads()
        asked = [reads.get(db, user_id) for user_id in (1, 2, 2, 999)]
        one, two, two_again, unknown = await asyncio.gather(*asked)
        assert statements == [3]
        assert one == {"id": 1, "name": "user 1", "role": "expert", "profile_image": None}
        assert two == two_again == {"id": 2, "name": "user 2", "role": "client", "profile_image": None}
        assert unknown is None
        # More than one statement's worth of ids: read in parts, every answer right.
        statements.clear()
        many = await asyncio.gather(*(reads.get(db, user_id) for user_id in range(1, 601)))
        assert statements == [users.MANY, 600 - users.MANY]
        assert [profile["name"] for profile in many] == [f"user {user_id}" for user_id in range(1, 601)]
        # A socket that went away while waiting does not take the answer from the others.
        gone, stays = reads.get(db, 3), reads.get(db, 4)
        gone.cancel()
        assert (await stays)["name"] == "user 4"


async def test_a_failed_read_of_profiles_reaches_every_socket_that_asked(tmp_path: Path) -> None:
    from realtime.events.node.profiles import ProfileReads
    from realtime.store.errors import StoreUnavailable

    async with store(tmp_path) as db:

        async def down(sql: str, params: Any = ()) -> Any:
            raise StoreUnavailable("store unavailable")

        db.fetch_all = down  # type: ignore[method-assign]
        reads = ProfileReads()
        results = await asyncio.gather(reads.get(db, 1), reads.get(db, 2), return_exceptions=True)
        assert [type(result) for result in results] == [StoreUnavailable, StoreUnavailable]


async def test_sockets_opening_together_get_their_own_stored_profiles(server: Server) -> None:
    """Tokens without name or role: each socket's profile comes from the store, read together."""
    await server.room("r1", [1, 2, 3])
    for user_id in (1, 2, 3):
        await server.user(user_id, f"Name {user_id}", "expert" if user_id == 2 else "client")
    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(ws(server.ws_url("/ws/chat/r1/"))) for _ in range(3)]
        tokens = [token(user_id) for user_id in (1, 2, 3)]
        await asyncio.gather(*(c.send({"type": "auth", "token": t}) for c, t in zip(clients, tokens, strict=True)))
        users = [(await client.expect("auth_ok"))["user"] for client in clients]
        assert [(user["id"], user["name"], user["role"]) for user in users] == [
            (1, "Name 1", "client"),
            (2, "Name 2", "expert"),
            (3, "Name 3", "client"),
        ]
        await clients[1].expect("message_history")
        await clients[1].send({"type": "chat_message", "content": "hello"})
        await clients[0].expect("message_history")
        message = (await clients[0].expect("chat_message"))["message"]
        assert message["sender"] == {"id": 2, "name": "Name 2"}
