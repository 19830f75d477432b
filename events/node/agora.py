"""Agora RTC tokens in the AccessToken2 ("007") format, using only the stdlib.

Wire layout, all integers little-endian and every byte string prefixed with
its uint16 length::

    "007" + base64(zlib(string(signature) + message))

    message = string(app_id) + u32(issue_ts) + u32(expire) + u32(salt)
              + u16(service_count) + services
    rtc     = u16(1) + u16(n) + n * (u16(privilege) + u32(expire))
              + string(channel_name) + string(uid)

The signature is HMAC-SHA256 over ``message``, keyed by a key derived from
the app certificate, the issue timestamp and the salt.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import string
import struct
import time
import zlib
from dataclasses import dataclass, field

__all__ = [
    "PRIVILEGE_JOIN_CHANNEL",
    "PRIVILEGE_PUBLISH_AUDIO_STREAM",
    "PRIVILEGE_PUBLISH_DATA_STREAM",
    "PRIVILEGE_PUBLISH_VIDEO_STREAM",
    "ROLE_PUBLISHER",
    "ROLE_SUBSCRIBER",
    "RtcToken",
    "build_rtc_token",
    "parse_token",
]

VERSION = "007"

ROLE_PUBLISHER = 1
ROLE_SUBSCRIBER = 2

SERVICE_RTC = 1

PRIVILEGE_JOIN_CHANNEL = 1
PRIVILEGE_PUBLISH_AUDIO_STREAM = 2
PRIVILEGE_PUBLISH_VIDEO_STREAM = 3
PRIVILEGE_PUBLISH_DATA_STREAM = 4

_UINT16_MAX = 0xFFFF
_UINT32_MAX = 0xFFFF_FFFF
_SALT_MAX = 99_999_999
_HEX_DIGITS = frozenset(string.hexdigits)


# --- packing ---------------------------------------------------------------


def _u16(value: int) -> bytes:
    return struct.pack("<H", value)


def _u32(value: int) -> bytes:
    return struct.pack("<I", value)


def _bytes(value: bytes) -> bytes:
    if len(value) > _UINT16_MAX:
        raise ValueError(f"field too long for a uint16 length prefix: {len(value)} bytes")
    return _u16(len(value)) + value


def _privileges(privileges: dict[int, int]) -> bytes:
    # Sorted so the same grants always produce the same bytes (and signature).
    items = sorted(privileges.items())
    return _u16(len(items)) + b"".join(_u16(key) + _u32(value) for key, value in items)


class _Reader:
    """Sequential little-endian reader; any overrun is a malformed token."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def _take(self, size: int) -> bytes:
        end = self._pos + size
        if end > len(self._data):
            raise ValueError("token payload is truncated")
        chunk = self._data[self._pos : end]
        self._pos = end
        return chunk

    def u16(self) -> int:
        value: int = struct.unpack("<H", self._take(2))[0]
        return value

    def u32(self) -> int:
        value: int = struct.unpack("<I", self._take(4))[0]
        return value

    def bytes_(self) -> bytes:
        return self._take(self.u16())

    def privileges(self) -> dict[int, int]:
        return {self.u16(): self.u32() for _ in range(self.u16())}

    def at_end(self) -> bool:
        return self._pos == len(self._data)


# --- signing ---------------------------------------------------------------


def _signature(app_certificate: str, issue_ts: int, salt: int, message: bytes) -> bytes:
    # The key chain binds the certificate to this issue time and salt, so a
    # leaked signature says nothing about tokens issued with other values.
    key = hmac.new(_u32(issue_ts), app_certificate.encode(), hashlib.sha256).digest()
    key = hmac.new(_u32(salt), key, hashlib.sha256).digest()
    return hmac.new(key, message, hashlib.sha256).digest()


# --- validation ------------------------------------------------------------


def _check_hex32(name: str, value: str) -> None:
    # Agora ids and certificates are 32 hex digits; anything else can only
    # yield tokens the service rejects, so fail loudly instead.
    if len(value) != 32 or not _HEX_DIGITS.issuperset(value):
        raise ValueError(f"{name} must be 32 hexadecimal characters")


def _check_u32(name: str, value: int, minimum: int = 0, maximum: int = _UINT32_MAX) -> None:
    if not minimum <= value <= maximum:
        raise ValueError(f"{name} must be in [{minimum}, {maximum}], got {value}")


# --- public API ------------------------------------------------------------


def build_rtc_token(
    app_id: str,
    app_certificate: str,
    channel_name: str,
    uid: int,
    role: int,
    token_expire: int,
    privilege_expire: int,
    *,
    issue_ts: int | None = None,
    salt: int | None = None,
) -> str:
    """Build an AccessToken2 RTC token.

    ``token_expire`` and ``privilege_expire`` are seconds counted from
    ``issue_ts`` (not absolute timestamps). ``uid`` 0 lets any uid join.
    Publishers get join plus audio/video/data publishing; subscribers only
    get join. ``issue_ts`` and ``salt`` default to now and a random value;
    pass them only to get reproducible output.
    """
    _check_hex32("app_id", app_id)
    _check_hex32("app_certificate", app_certificate)
    if role not in (ROLE_PUBLISHER, ROLE_SUBSCRIBER):
        raise ValueError(f"unknown role {role!r}")
    _check_u32("uid", uid)
    _check_u32("token_expire", token_expire)
    _check_u32("privilege_expire", privilege_expire)

    if issue_ts is None:
        issue_ts = int(time.time())
    if salt is None:
        salt = secrets.randbelow(_SALT_MAX) + 1
    _check_u32("issue_ts", issue_ts)
    _check_u32("salt", salt)

    granted = [PRIVILEGE_JOIN_CHANNEL]
    if role == ROLE_PUBLISHER:
        granted += [
            PRIVILEGE_PUBLISH_AUDIO_STREAM,
            PRIVILEGE_PUBLISH_VIDEO_STREAM,
            PRIVILEGE_PUBLISH_DATA_STREAM,
        ]

    # uid travels as its decimal string; 0 is encoded as "" (any uid).
    account = str(uid) if uid else ""
    rtc_service = (
        _u16(SERVICE_RTC)
        + _privileges(dict.fromkeys(granted, privilege_expire))
        + _bytes(channel_name.encode())
        + _bytes(account.encode())
    )
    message = _bytes(app_id.encode()) + _u32(issue_ts) + _u32(token_expire) + _u32(salt) + _u16(1) + rtc_service
    signature = _signature(app_certificate, issue_ts, salt, message)
    payload = zlib.compress(_bytes(signature) + message)
    return VERSION + base64.b64encode(payload).decode("ascii")


@dataclass(frozen=True)
class RtcToken:
    """Decoded fields of an RTC-only AccessToken2 token."""

    app_id: str
    issue_ts: int
    expire: int
    salt: int
    channel_name: str
    uid: str  # as carried on the wire: decimal string, "" for uid 0
    privileges: dict[int, int]
    signature: bytes
    _message: bytes = field(repr=False, compare=False)

    def verify(self, app_certificate: str) -> bool:
        """Whether the token was signed with ``app_certificate``."""
        expected = _signature(app_certificate, self.issue_ts, self.salt, self._message)
        return hmac.compare_digest(expected, self.signature)


def parse_token(token: str) -> RtcToken:
    """Decode an RTC-only AccessToken2 token; raises ``ValueError`` if malformed.

    Services carry no length prefix, so a token holding any service other than
    RTC cannot be walked past and is rejected.
    """
    if not token.startswith(VERSION):
        raise ValueError(f"not an AccessToken2 token (expected {VERSION!r} prefix)")
    try:
        payload = zlib.decompress(base64.b64decode(token[len(VERSION) :], validate=True))
    except (binascii.Error, zlib.error) as exc:
        raise ValueError(f"token is not valid base64/zlib: {exc}") from exc

    reader = _Reader(payload)
    signature = reader.bytes_()
    message = payload[2 + len(signature) :]
    app_id = reader.bytes_().decode()
    issue_ts = reader.u32()
    expire = reader.u32()
    salt = reader.u32()

    if reader.u16() != 1:
        raise ValueError("expected exactly one service")
    service_type = reader.u16()
    if service_type != SERVICE_RTC:
        raise ValueError(f"unsupported service type {service_type}")
    privileges = reader.privileges()
    channel_name = reader.bytes_().decode()
    uid = reader.bytes_().decode()
    if not reader.at_end():
        raise ValueError("trailing bytes after RTC service")

    return RtcToken(
        app_id=app_id,
        issue_ts=issue_ts,
        expire=expire,
        salt=salt,
        channel_name=channel_name,
        uid=uid,
        privileges=privileges,
        signature=signature,
        _message=message,
    )
