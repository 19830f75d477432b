"""Stored user profiles read for the connect path, many at a time.

A socket whose token does not carry the user's name and role reads them from
the store as it opens. After a restart every client comes back at once, and a
read each would cost a thread hop (SQLite) or a round trip (PostgreSQL) per
socket. The profiles asked for during one turn of the event loop are read by
one statement instead. Nothing is kept: every read sees the store as it is.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ...store import users
from ...store.db import Db

Profile = dict[str, Any] | None


class ProfileReads:
    def __init__(self) -> None:
        self._asked: dict[int, list[asyncio.Future[Profile]]] | None = None
        self._reads: set[asyncio.Task[None]] = set()

    def get(self, db: Db, user_id: int) -> asyncio.Future[Profile]:
        """The stored profile of `user_id`, or None; await the result."""
        loop = asyncio.get_running_loop()
        if self._asked is None:
            self._asked = {}
            # Once this turn's callbacks have run: the sockets opening in it have all asked.
            loop.call_soon(self._read, db)
        future: asyncio.Future[Profile] = loop.create_future()
        self._asked.setdefault(user_id, []).append(future)
        return future

    def _read(self, db: Db) -> None:
        asked, self._asked = self._asked or {}, None
        ids = list(asked)
        for start in range(0, len(ids), users.MANY):
            part = {user_id: asked[user_id] for user_id in ids[start : start + users.MANY]}
            task = asyncio.ensure_future(self._answer(db, part))
            self._reads.add(task)
            task.add_done_callback(self._reads.discard)

    @staticmethod
    async def _answer(db: Db, asked: dict[int, list[asyncio.Future[Profile]]]) -> None:
        waiting = [(user_id, future) for user_id, futures in asked.items() for future in futures]
        try:
            found = await users.get_many(db, list(asked))
        except Exception as exc:  # noqa: BLE001 (the store's errors reach every socket that asked, as its own read would)
            for _, future in waiting:
                if not future.done():
                    future.set_exception(exc)
            return
        except BaseException:  # cancelled (shutdown): so are the sockets waiting for it
            for _, future in waiting:
                future.cancel()
            raise
        for user_id, future in waiting:
            if not future.done():  # its socket may have gone meanwhile
                future.set_result(found.get(user_id))
