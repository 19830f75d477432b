"""The consultation rules every process shares: the status frame, the
announcements on a consultation's topic, and the Agora channel and token of a
call. The socket (endpoints/consultation.py), the HTTP API and the scheduler
all call these; none of them imports another's module."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from hashlib import sha256
from typing import Any

from ...settings import Settings
from ...store import consultations
from ...store.consultations import Consultation
from ..protocol import consultation as frames
from . import agora as rtc
from . import topics
from .node import Runtime

log = logging.getLogger("realtime.consultation")

# A token stays valid this long after the planned end, so a call that runs a
# little over (or an extension being answered) is not cut off by Agora.
TOKEN_MARGIN = 600
AGORA_CHANNEL_MAX = 64
OVER = (consultations.COMPLETED, consultations.CANCELLED)


topic = topics.consultation


# ---- Agora -----------------------------------------------------------------------


@dataclass(frozen=True)
class Agora:
    app_id: str
    certificate: str

    @staticmethod
    def channel(consultation_id: str) -> str:
        name = f"consultation-{consultation_id}"
        if len(name) <= AGORA_CHANNEL_MAX:
            return name
        # Agora channel names are at most 64 bytes; `~` never occurs in an id.
        return "consultation~" + sha256(consultation_id.encode()).hexdigest()[:40]

    def token(self, channel: str, uid: int, ends_at: str) -> str | None:
        """A publisher token for `uid`, valid until `ends_at` plus the margin."""
        left = (consultations.parse(ends_at) - datetime.now(UTC)).total_seconds()
        expire = max(int(left) + TOKEN_MARGIN, TOKEN_MARGIN)
        try:
            return rtc.build_rtc_token(self.app_id, self.certificate, channel, uid, rtc.ROLE_PUBLISHER, expire, expire)
        except ValueError as exc:
            # An id that is not an Agora uid (over 32 bits): no call, the rest works.
            log.warning("no Agora token for user %s: %s", uid, exc)
            return None


def agora(settings: Settings) -> Agora | None:
    if settings.agora_app_id and settings.agora_app_certificate:
        return Agora(settings.agora_app_id, settings.agora_app_certificate)
    return None


def describe_agora(settings: Settings) -> None:
    if agora(settings) is None:
        log.info("AGORA_APP_ID and AGORA_APP_CERTIFICATE are not set: consultations carry no Agora token or channel")
    else:
        log.info("Agora tokens on: each consultation participant gets its own publisher token")


# ---- what every process publishes --------------------------------------------------


async def publish(rt: Runtime, consultation_id: str, type_: str, frame: str, exclude: int = 0) -> None:
    await rt.publish(topic(consultation_id), type_, frame, exclude=exclude)


def remaining_seconds(c: Consultation) -> int:
    assert c.ends_at is not None
    return max(0, math.ceil((consultations.parse(c.ends_at) - datetime.now(UTC)).total_seconds()))


async def status_frame(
    rt: Runtime, c: Consultation, pending: consultations.Extension | None = None, *, look_up: bool = True
) -> str:
    """`consultation_status` without the recipient's token. `pending` is the open
    extension request; `look_up` False means the caller already knows there is none."""
    data: dict[str, Any] = {
        "status": c.status,
        "participants": await rt.presence.consultations.participants(c.id),
        "duration_minutes": c.duration_minutes,
    }
    for key in ("scheduled_start", "started_at", "ends_at", "ended_at"):
        value = getattr(c, key)
        if value is not None:
            data[key] = value
    if c.status == consultations.IN_PROGRESS:
        data["remaining_seconds"] = remaining_seconds(c)
        if agora(rt.settings) is not None:
            data["agora_channel"] = Agora.channel(c.id)
        if pending is None and look_up:
            pending = await consultations.open_extension(rt.db, c.id)
        if pending is not None:
            # A participant who reconnects still sees the request waiting for an answer.
            data["pending_extension"] = {
                "request_id": pending.id,
                "requested_by": pending.requested_by,
                "duration_minutes": pending.duration_minutes,
            }
    elif c.end_reason is not None:
        data["reason"] = c.end_reason
    return frames.consultation_status(data)


async def announce_started(rt: Runtime, c: Consultation) -> None:
    assert c.started_at is not None and c.ends_at is not None
    channel = Agora.channel(c.id) if agora(rt.settings) is not None else None
    await publish(rt, c.id, "consultation_started", frames.consultation_started(c.started_at, c.ends_at, channel))


async def announce_ended(rt: Runtime, c: Consultation) -> None:
    assert c.ended_at is not None
    await publish(rt, c.id, "consultation_ended", frames.consultation_ended(c.ended_at, c.end_reason or "ended"))


async def announce_cancelled(rt: Runtime, c: Consultation) -> None:
    await publish(rt, c.id, "consultation_cancelled", frames.consultation_cancelled(c.end_reason))


async def announce_left(rt: Runtime, consultation_id: str, user_id: int) -> None:
    # The user's own sockets keep showing it: they are the ones it is about.
    await publish(rt, consultation_id, "participant_left", frames.participant_left(user_id), exclude=user_id)
