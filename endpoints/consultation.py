"""`/ws/consultation/{consultation_id}/`: the expert and the client of one
consultation see each other's presence, start, end or cancel it, extend it,
and get their own Agora token to join the call.

Every change is published once on the consultation's topic, for both
participants on every process. Two kinds of frame are finished per socket in
`deliver`: `consultation_status` and `consultation_started` get the
recipient's own Agora token (a token is bound to one uid), and participant
frames are dropped when they would repeat what this socket already shows.
"""

from __future__ import annotations

import logging

import msgspec

from ..events.node import topics
from ..events.node.consultation_rules import (
    OVER,
    agora,
    announce_cancelled,
    announce_ended,
    announce_left,
    announce_started,
    publish,
    status_frame,
    topic,
)
from ..events.node.hub import Delivery
from ..events.protocol import consultation as frames
from ..events.protocol.frames import Ping
from ..events.protocol.outbound import encode
from ..store import consultations
from ..store.db import new_id, utc_now
from .base import FORBIDDEN, NOT_FOUND, BaseEndpoint, Refused

log = logging.getLogger("realtime.consultation")

PERSONAL = frozenset({"consultation_status", "consultation_started", "participant_joined", "participant_left"})
# After these nobody belongs on the channel any more: the socket gets the frame, then closes with 4003.
FINAL = frozenset({"consultation_ended", "consultation_cancelled"})
_decode = msgspec.json.Decoder().decode


# ---- the socket ----------------------------------------------------------------


class ConsultationEndpoint(BaseEndpoint):
    channel = "consultation"
    kinds = frames.CONSULTATION

    consultation_id: str
    role: str
    conn: str | None = None  # set once this connection counts in the presence

    async def authorize(self) -> None:
        consultation_id = self.scope["path_params"]["consultation_id"]
        c = await consultations.get(self.rt.db, consultation_id) if topics.ID.fullmatch(consultation_id) else None
        if c is None:
            raise Refused(NOT_FOUND, "no such consultation")
        role = c.role_of(self.user_id)
        if role is None:
            raise Refused(FORBIDDEN, "not a participant of this consultation")
        self.consultation_id = consultation_id
        self.access = topic(consultation_id)
        self.role = role
        self.shown: set[int] = set()
        self.tokens: dict[tuple[str, str], str | None] = {}
        self.topics = [topic(consultation_id)]

    async def still_allowed(self) -> bool:
        c = await consultations.get(self.rt.db, self.consultation_id)
        return c is not None and c.status not in OVER and c.role_of(self.user_id) is not None

    async def opened(self) -> None:
        # Live events wait until the snapshot is out, then go through the same filter.
        self.buffer = []
        try:
            # Read after the topic was joined: a change after this read is among the held events.
            c = await consultations.get(self.rt.db, self.consultation_id)
            assert c is not None
            if c.status not in OVER:
                self.conn = new_id()
                await self._seen()
            self.out.push(self._complete("consultation_status", await status_frame(self.rt, c)))
            if c.status in OVER:
                # A late socket learns how it ended, and is done like the ones that saw it end.
                self._close(FORBIDDEN, f"consultation {c.status}")
        finally:
            held, self.buffer = self.buffer, None
            for delivery in held:
                self.deliver(delivery)

    async def closing(self) -> None:
        if self.conn is None:
            return
        conn, self.conn = self.conn, None
        if await self.rt.presence.consultations.leave(self.consultation_id, self.user_id, conn):
            await announce_left(self.rt, self.consultation_id, self.user_id)

    async def _seen(self) -> None:
        assert self.conn is not None
        participant = {"id": self.user_id, "name": self.user["name"], "type": self.role, "joined_at": utc_now()}
        if await self.rt.presence.consultations.seen(self.consultation_id, self.user_id, self.conn, participant):
            await self.publish(
                topic(self.consultation_id),
                "participant_joined",
                frames.participant_joined(participant),
                exclude=self.user_id,
            )

    # ---- per-recipient frames ------------------------------------------------------

    def deliver(self, delivery: Delivery) -> None:
        if self.buffer is not None or delivery.type not in PERSONAL:
            super().deliver(delivery)
            if self.buffer is None and delivery.type in FINAL:
                self._close(FORBIDDEN, "consultation ended" if delivery.type == "consultation_ended" else "cancelled")
            return
        text = self._personal(delivery.type, delivery.frame)
        if text is not None:
            self.out.relay(text)

    def _personal(self, type_: str, text: str) -> str | None:
        """The frame as this socket gets it, or None when it would tell nothing new."""
        if type_ == "participant_joined":
            user_id = _decode(text)["participant"]["id"]
            if user_id in self.shown:
                return None
            self.shown.add(user_id)
            return text
        if type_ == "participant_left":
            user_id = _decode(text)["participant_id"]
            if user_id not in self.shown:
                return None
            self.shown.discard(user_id)
            return text
        return self._complete(type_, text)

    def _complete(self, type_: str, text: str) -> str:
        """A status or start frame with this recipient's own Agora token."""
        frame = _decode(text)
        target = frame
        if type_ == "consultation_status":
            target = frame["status_data"]
            self.shown = {p["id"] for p in target["participants"]}
        channel, ends_at = target.get("agora_channel"), target.get("ends_at")
        token = self._token(channel, ends_at) if channel is not None and ends_at is not None else None
        if token is None:
            return text
        target["agora_token"] = token
        return encode(frame)

    def _token(self, channel: str, ends_at: str) -> str | None:
        key = (channel, ends_at)
        if key not in self.tokens:
            minter = agora(self.rt.settings)
            self.tokens[key] = minter.token(channel, self.user_id, ends_at) if minter else None
        return self.tokens[key]

    # ---- frames ----------------------------------------------------------------------

    async def handle_ping(self, frame: Ping) -> None:
        await super().handle_ping(frame)
        await self._seen()

    async def handle_presence_update(self, frame: frames.PresenceUpdate) -> None:
        await self._seen()

    async def handle_start_consultation(self, frame: frames.StartConsultation) -> None:
        c = await consultations.start(self.rt.db, self.consultation_id, self.user_id)
        await announce_started(self.rt, c)

    async def handle_end_consultation(self, frame: frames.EndConsultation) -> None:
        c = await consultations.end(self.rt.db, self.consultation_id, self.user_id, "ended_by_expert")
        await announce_ended(self.rt, c)

    async def handle_cancel_consultation(self, frame: frames.CancelConsultation) -> None:
        c = await consultations.cancel(self.rt.db, self.consultation_id, self.user_id, frame.reason)
        await announce_cancelled(self.rt, c)

    async def handle_request_extension(self, frame: frames.RequestExtension) -> None:
        ext = await consultations.request_extension(
            self.rt.db, self.consultation_id, self.user_id, frame.duration_minutes
        )
        text = frames.extension_requested(ext.id, ext.requested_by, ext.duration_minutes)
        await publish(self.rt, self.consultation_id, "extension_requested", text, exclude=self.user_id)

    async def handle_respond_extension(self, frame: frames.RespondExtension) -> None:
        ext, c = await consultations.respond_extension(
            self.rt.db, self.consultation_id, frame.request_id, self.user_id, frame.accept
        )
        if frame.accept:
            assert c.ends_at is not None
            text = frames.consultation_extended(ext.id, c.ends_at, ext.duration_minutes)
            await publish(self.rt, self.consultation_id, "consultation_extended", text)
        else:
            await publish(self.rt, self.consultation_id, "extension_rejected", frames.extension_rejected(ext.id))
