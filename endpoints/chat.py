"""`/ws/chat/{room_id}/`: room members chat, type, read and delete."""

from __future__ import annotations

import asyncio

from ..events.node import topics
from ..events.protocol import chat as frames
from ..events.protocol import outbound
from ..store import messages, rooms
from ..store.errors import AccessEnded
from .base import FORBIDDEN, NOT_FOUND, BaseEndpoint, Refused


class ChatEndpoint(BaseEndpoint):
    channel = "chat"
    kinds = frames.CHAT

    room_id: str
    typing: asyncio.TimerHandle | None = None

    async def authorize(self) -> None:
        room_id = self.scope["path_params"]["room_id"]
        # Set before the membership is read: a removal from now on reaches this socket.
        self.access = topics.chat_access(room_id)
        admitted = None
        if topics.ID.fullmatch(room_id):
            admitted = await self.rt.memberships.admits(self.rt.db, room_id, self.user_id)
        if admitted is None:
            raise Refused(NOT_FOUND, "no such room")
        if not admitted:
            raise Refused(FORBIDDEN, "not a member of this room")
        self.room_id = room_id
        self.stream = topics.chat(room_id)
        self.topics = [self.stream]

    async def still_allowed(self) -> bool:
        return await rooms.is_member(self.rt.db, self.room_id, self.user_id)

    async def opened(self) -> None:
        await self.rt.presence.rooms.enter(self, self.room_id)
        await self.catch_up(self.since_param(), self.epoch_param())

    async def snapshot(self) -> int:
        last = await self.stream_last_seq()
        history, has_more = await messages.history(self.rt.db, self.room_id, last + 1, self.rt.settings.history_limit)
        self.out.push(outbound.message_history(history, has_more, last, await self.stream_epoch()))
        return last

    async def closing(self) -> None:
        await self._stop_typing()
        await self.rt.presence.rooms.leave(self)

    # ---- frames ------------------------------------------------------------------

    async def handle_chat_message(self, frame: frames.ChatMessage) -> None:
        if self.typing is not None:
            await self._stop_typing()
        before = self.last_seq
        posted = await self.rt.post_message(
            self.room_id,
            self.user,
            frame.content,
            frame.message_type,
            frame.file_url,
            frame.file_name,
            frame.client_msg_id,
            from_member=True,
        )
        if posted.frame is None and not before < posted.seq <= self.last_seq:
            # A retry of something already stored: the sender gets its echo,
            # unless publishing it again has just delivered it to this socket.
            self.out.push(outbound.chat_message(posted.message))

    async def handle_typing_start(self, frame: frames.TypingStart) -> None:
        loop = asyncio.get_running_loop()
        if self.typing is None:
            await self.publish(
                self.stream,
                "typing_start",
                outbound.typing_start(self.user_id, self.user["name"]),
                exclude=self.user_id,
            )
        else:
            self.typing.cancel()
        # The server ends a typing that the client forgets to stop.
        self.typing = loop.call_later(self.rt.settings.typing_timeout, lambda: self.spawn(self._stop_typing()))

    async def handle_typing_stop(self, frame: frames.TypingStop) -> None:
        await self._stop_typing()

    async def handle_mark_read(self, frame: frames.MarkMessageRead) -> None:
        read = messages.mark_read(self.rt.db, self.room_id, frame.message_id, self.user_id)
        await self.rt.commit(self.stream, "message_read", read)

    async def handle_delete_message(self, frame: frames.DeleteMessage) -> None:
        deleted = messages.delete(self.rt.db, self.room_id, frame.message_id, self.user_id)
        await self.rt.commit(self.stream, "message_deleted", deleted)

    async def handle_fetch_history(self, frame: frames.FetchHistory) -> None:
        await self._still_member()
        history, has_more = await messages.history(self.rt.db, self.room_id, frame.before_seq, frame.limit)
        self.out.push(outbound.history_page(history, has_more))

    async def handle_sync(self, frame: frames.Sync) -> None:
        await self._still_member()
        await self.catch_up(frame.since, frame.epoch)

    async def _still_member(self) -> None:
        """Before a read of the room's past: a removal not yet heard of still counts."""
        if not await rooms.is_member(self.rt.db, self.room_id, self.user_id):
            raise AccessEnded("no longer a member of this room")

    async def _stop_typing(self) -> None:
        if self.typing is None:
            return
        self.typing.cancel()
        self.typing = None
        await self.publish(self.stream, "typing_stop", outbound.typing_stop(self.user_id), exclude=self.user_id)
