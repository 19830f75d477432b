"""The one registry of topic names: for each kind of topic its name pattern,
whether it carries a `seq` (a stream with rows in the store), and who may
subscribe. Every module outside the store asks here.

The store cannot import events/ (docs/architecture.md), so the two stream
kinds take their names from `store/streams.py`, which keys the `streams` rows
by them; this module is still the only place the rest of the code learns a
name or asks "does this topic carry a seq?".
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ...store import streams

# The shape of a room, consultation or file id in a path or a topic name.
ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


@dataclass(frozen=True, slots=True)
class Kind:
    prefix: str  # every topic of the kind starts with it
    pattern: str  # how a name is built (for the docs and for people)
    seq: bool  # a persisted stream: events carry seq, `?since=` resumes it
    subscribers: str  # who may subscribe (checked by the socket channel that joins it)


CHAT = Kind("room:", "room:{room_id}", True, "the room's members, on /ws/chat/{room_id}/")
NOTIFICATIONS = Kind("user:", "user:{user_id}", True, "the user themself, on /ws/notifications/")
CONSULTATION = Kind("consultation:", "consultation:{consultation_id}", False, "the consultation's client and expert")
RESERVATION = Kind(
    "rsv:",
    "rsv:{expert_id}:expert | rsv:{expert_id}:{client_id}",
    False,
    "the expert (their own topic and every pair), a client (their pair only)",
)
CONTROL = Kind("ctl", "ctl", False, "each process (events/node/control.py), never a socket")
KINDS = (CHAT, NOTIFICATIONS, CONSULTATION, RESERVATION, CONTROL)

CONTROL_TOPIC = CONTROL.prefix


def chat(room_id: str) -> str:
    return streams.chat_stream(room_id)


def user(user_id: int) -> str:
    return streams.user_stream(user_id)


def consultation(consultation_id: str) -> str:
    return f"consultation:{consultation_id}"


def reservation_expert(expert_id: int) -> str:
    return f"rsv:{expert_id}:expert"


def reservation_pair(expert_id: int, client_id: int) -> str:
    return f"rsv:{expert_id}:{client_id}"


def chat_access(room_id: str) -> str:
    """What a chat socket's access is to (`control.end_access` names it)."""
    return f"chat:{room_id}"


def kind_of(topic: str) -> Kind | None:
    for kind in KINDS:
        if topic.startswith(kind.prefix):
            return kind
    return None


_SEQ_PREFIXES = tuple(kind.prefix for kind in KINDS if kind.seq)


def carries_seq(topic: str) -> bool:
    """A stream topic: its events carry seq and the hub keeps them in order."""
    return topic.startswith(_SEQ_PREFIXES)
