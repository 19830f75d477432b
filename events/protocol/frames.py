"""Client frames: the base struct, the frames every endpoint takes, and the decoder.

Each channel names its own frames (`events/protocol/chat.py`, ...), one typed struct per
`type`; this decoder validates all of them in one place.

`decode` turns a text frame into typed frames or `BadFrame`s carrying the
protocol's error code. A frame may be one object or an array of objects
(handled in order, as if sent one by one). Unknown fields are ignored so that
newer clients keep working.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec
from msgspec import Meta, Struct

from . import errors

MAX_BATCH = 50

Id = Annotated[str, Meta(min_length=1, max_length=64)]
# Blank is no epoch, as with a blank `?epoch=`.
Epoch = Annotated[str, Meta(max_length=64)]
ClientMsgId = Annotated[str, Meta(min_length=1, max_length=64)]
Seq = Annotated[int, Meta(ge=0, le=2**53)]


class Frame(Struct, kw_only=True, frozen=True):
    """A validated client frame; `type` is taken from the registry key."""


class Ping(Frame):
    pass


class Auth(Frame):
    token: Annotated[str, Meta(min_length=1, max_length=8192)]


class Sync(Frame):
    since: Seq
    # The epoch `since` belongs to (from the snapshot); another epoch than the stream's is a resync.
    epoch: Epoch | None = None


COMMON: dict[str, type[Frame]] = {"ping": Ping, "auth": Auth}


@dataclass(frozen=True, slots=True)
class BadFrame:
    code: str
    message: str
    request_type: str | None = None
    client_msg_id: Any = None


@dataclass(frozen=True, slots=True)
class Decoded:
    type: str
    frame: Frame
    client_msg_id: str | None


_json = msgspec.json.Decoder()


def decode(text: str, kinds: Mapping[str, type[Frame]]) -> list[Decoded | BadFrame]:
    try:
        raw = _json.decode(text)
    except msgspec.DecodeError as exc:
        return [BadFrame(errors.INVALID_JSON, f"invalid JSON: {exc}")]
    except RecursionError:
        # msgspec's depth guard: a frame under the size limit can nest thousands deep.
        return [BadFrame(errors.INVALID_JSON, "invalid JSON: nested too deeply")]
    nul = "\\u0000" in text
    if isinstance(raw, list):
        if len(raw) > MAX_BATCH:
            return [BadFrame(errors.INVALID_PAYLOAD, f"at most {MAX_BATCH} frames in one array")]
        return [decode_one(item, kinds, nul) for item in raw]
    return [decode_one(raw, kinds, nul)]


def has_nul(value: Any) -> bool:
    """A NUL character in any string of a decoded JSON value (PostgreSQL text cannot hold one)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def decode_one(raw: Any, kinds: Mapping[str, type[Frame]], nul: bool = False) -> Decoded | BadFrame:
    if not isinstance(raw, dict):
        return BadFrame(errors.INVALID_PAYLOAD, "a frame must be a JSON object")
    type_ = raw.get("type")
    cmid = raw.get("client_msg_id")
    cmid = cmid if isinstance(cmid, str | int) and not isinstance(cmid, bool) else None
    if not isinstance(type_, str):
        return BadFrame(errors.INVALID_PAYLOAD, "a frame needs a string `type`", None, cmid)
    kind = kinds.get(type_)
    if kind is None:
        return BadFrame(errors.UNKNOWN_TYPE, f"unknown type {type_[:64]!r}", type_[:64], cmid)
    if nul and has_nul(raw):
        return BadFrame(errors.INVALID_PAYLOAD, "text must not contain NUL characters (\\u0000)", type_, cmid)
    try:
        frame = msgspec.convert(raw, kind)
    except msgspec.ValidationError as exc:
        return BadFrame(errors.INVALID_PAYLOAD, str(exc), type_, cmid)
    return Decoded(type_, frame, getattr(frame, "client_msg_id", None))
