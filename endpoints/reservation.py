"""`/ws/reservation-chat/{expert_id}/`: clients ask an expert for a consultation
and talk with them; the expert answers.

The expert (token user = `expert_id`, role expert when a role is known) follows
`rsv:<expert_id>:expert`; every other user is a client there and follows only
its own pair topic `rsv:<expert_id>:<client_id>`. A frame is published to the
expert's topic, to one pair topic, or to both, so no client ever receives
another client's requests or messages. The path must be a positive integer
(else 4004), and a user the main backend registered as a non-expert has no
reservation channel (4004).
"""

from __future__ import annotations

from ..events.node import notify, topics
from ..events.protocol import reservation as frames
from ..store import reservations, users
from ..store.errors import Forbidden
from .base import FORBIDDEN, NOT_FOUND, BaseEndpoint, Refused

expert_topic = topics.reservation_expert
pair_topic = topics.reservation_pair


class ReservationEndpoint(BaseEndpoint):
    channel = "reservation"
    kinds = frames.RESERVATION

    expert_id: int
    is_expert: bool = False

    async def authorize(self) -> None:
        raw = self.scope["path_params"]["expert_id"]
        if not (raw.isascii() and raw.isdigit() and len(raw) < 20 and 0 < int(raw) < 2**63):
            raise Refused(NOT_FOUND, "no such expert")
        self.expert_id = int(raw)
        stored = await users.get(self.rt.db, self.expert_id)
        if self.user_id == self.expert_id:
            role = self.identity.role or (stored and stored["role"])
            if role not in (None, "expert"):
                raise Refused(FORBIDDEN, "only an expert has a reservation channel")
            self.is_expert = True
            self.topics = [expert_topic(self.expert_id)]
            return
        if stored is not None and stored["role"] != "expert":
            raise Refused(NOT_FOUND, "no such expert")
        self.topics = [pair_topic(self.expert_id, self.user_id)]

    async def opened(self) -> None:
        # The topics are joined already: live events wait until the snapshot is out, so it comes first.
        self.buffer = []
        try:
            if self.is_expert:
                requests, messages = await reservations.expert_state(self.rt.db, self.expert_id)
            else:
                requests, messages = await reservations.client_state(self.rt.db, self.expert_id, self.user_id)
            self.out.push(frames.reservation_state(requests, messages))
        finally:
            held, self.buffer = self.buffer, None
            for delivery in held:
                self.deliver(delivery)

    # ---- client frames -------------------------------------------------------------

    async def handle_reservation_request(self, frame: frames.ReservationRequest) -> None:
        self._client_only()
        saved = await reservations.create_request(
            self.rt.db,
            self.expert_id,
            {"id": self.user_id, "name": self.user["name"]},
            frame.child_name,
            frame.requested_date,
            frame.requested_time,
            frame.concern_summary,
            frame.client_msg_id,
        )
        request = saved.record
        if not saved.new:
            # A retry of something already stored: answer the sender, tell nobody else.
            self.out.push(frames.request_event("request_created", request))
            return
        await self._to_expert("reservation_request", frames.request_event("reservation_request", request))
        await self._to_client(self.user_id, "request_created", frames.request_event("request_created", request))
        await notify.reservation_requested(self.rt, self.expert_id, request)

    async def handle_cancel_request(self, frame: frames.CancelRequest) -> None:
        self._client_only()
        await reservations.answer(self.rt.db, self.expert_id, frame.request_id, "cancelled", client_id=self.user_id)
        text = frames.request_cancelled(frame.request_id)
        await self._to_expert("request_cancelled", text)
        await self._to_client(self.user_id, "request_cancelled", text)

    async def handle_client_message(self, frame: frames.ClientMessage) -> None:
        self._client_only()
        saved = await reservations.post_message(
            self.rt.db, self.expert_id, self.user_id, "client", frame.message, self.user["name"], frame.client_msg_id
        )
        text = frames.client_message(saved.record)
        if not saved.new:
            self.out.push(text)
            return
        await self._to_expert("client_message", text)
        await self._to_client(self.user_id, "client_message", text)

    # ---- expert frames -------------------------------------------------------------

    async def handle_accept_request(self, frame: frames.AcceptRequest) -> None:
        self._expert_only("accept requests")
        request = await reservations.answer(self.rt.db, self.expert_id, frame.request_id, "accepted")
        text = frames.request_event("request_accepted", request)
        await self._to_client(request["client"]["id"], "request_accepted", text)
        await self._to_expert("request_accepted", text)
        await notify.reservation_answered(self.rt, request)

    async def handle_reject_request(self, frame: frames.RejectRequest) -> None:
        self._expert_only("reject requests")
        reason = (frame.reason or "").strip() or None
        request = await reservations.answer(self.rt.db, self.expert_id, frame.request_id, "rejected", reason)
        text = frames.request_rejected(request)
        await self._to_client(request["client"]["id"], "request_rejected", text)
        await self._to_expert("request_rejected", text)
        await notify.reservation_answered(self.rt, request)

    async def handle_expert_message(self, frame: frames.ExpertMessage) -> None:
        self._expert_only("message clients")
        if frame.client_id == self.expert_id:
            raise Forbidden("an expert cannot message themselves")
        saved = await reservations.post_message(
            self.rt.db, self.expert_id, frame.client_id, "expert", frame.message, None, frame.client_msg_id
        )
        text = frames.expert_message(saved.record)
        if not saved.new:
            self.out.push(text)
            return
        await self._to_client(frame.client_id, "expert_message", text)
        await self._to_expert("expert_message", text)

    # ---- routing -------------------------------------------------------------------

    def _client_only(self) -> None:
        if self.is_expert:
            raise Forbidden("this is your own channel: client frames are for other users")

    def _expert_only(self, action: str) -> None:
        if not self.is_expert:
            raise Forbidden(f"only the expert may {action}")

    async def _to_expert(self, type_: str, text: str) -> None:
        await self.publish(expert_topic(self.expert_id), type_, text)

    async def _to_client(self, client_id: int, type_: str, text: str) -> None:
        await self.publish(pair_topic(self.expert_id, client_id), type_, text)
