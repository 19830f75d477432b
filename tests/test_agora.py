import base64
import time
import zlib

import pytest

from realtime.events.node.agora import (
    PRIVILEGE_JOIN_CHANNEL,
    PRIVILEGE_PUBLISH_AUDIO_STREAM,
    PRIVILEGE_PUBLISH_DATA_STREAM,
    PRIVILEGE_PUBLISH_VIDEO_STREAM,
    ROLE_PUBLISHER,
    ROLE_SUBSCRIBER,
    build_rtc_token,
    parse_token,
)

# Fixture values shared by every AccessToken2 test in AgoraIO/Tools
# (DynamicKey/AgoraDynamicKey/*/test).
APP_ID = "970CA35de60c44645bbae8a215061b33"
APP_CERT = "5CFd2fd1755d40ecb72977518be15d3b"
CHANNEL = "7d72365eb983485397e3e3f9d460bdda"
UID = 2882341273
EXPIRE = 600
ISSUE_TS = 1111111
SALT = 1

# AgoraIO/Tools DynamicKey/AgoraDynamicKey/python3/test/AccessToken2Test.py,
# test_service_rtc (same string in cpp/test/AccessToken2_test.cpp
# TestAccessToken2WithIntUid and nodejs/test/AccessToken2Test.js AccessToken_Test):
# RTC service, uid 2882341273, join-channel privilege only.
EXPECTED_UID = (
    "007eJxTYBBbsMMnKq7p9Hf/HcIX5kce9b518kCiQgSr5Zrp4X1Tu6UUGCzNDZwdjU1TUs0Mkk1Mz"
    "ExMk5ISUy0SjQxNDcwMk4yN3b8IMEQwMTAwMoAwBIL4CgzmKeZGxmamqUmWFsYmFqbGluapxqnGa"
    "ZYpJmYGSSkpiVwMRhYWRsYmhkbmxgDCaiTj"
)

# AgoraIO/Tools DynamicKey/AgoraDynamicKey/python3/test/AccessToken2Test.py,
# test_service_rtc_uid_0 (same in cpp TestAccessToken2WithIntUidZero and
# nodejs AccessToken_Test2): RTC service, uid 0, join-channel privilege only.
EXPECTED_UID_0 = (
    "007eJxTYLhzZP08Lxa1Pg57+TcXb/3cZ3wi4V6kbpbOog0G2dOYk20UGCzNDZwdjU1TUs0Mkk1Mz"
    "ExMk5ISUy0SjQxNDcwMk4yN3b8IMEQwMTAwMoAwBIL4CgzmKeZGxmamqUmWFsYmFqbGluapxqnGa"
    "ZYpJmYGSSkpiQwMADacImo="
)

# AgoraIO/Tools DynamicKey/AgoraDynamicKey/nodejs/test/AccessToken2Test.js,
# AccessToken_Test4 (the same payload is parsed in
# go/src/accesstoken2/accesstoken_test.go
# Test_AssessToken_Parse_TokenRtc_Rtm_MultiService_FromPython): an RTC service
# with all four privileges at 600 s, followed by an RTM service. Upstream has
# no RTC-only publisher vector, so the RTC block is compared inside it.
EXPECTED_RTC_PUBLISHER_PLUS_RTM = (
    "007eJxTYOAQsrQ5s3TfH+1tvy8zZZ46EpCc0V43JXdGd2jS8porKo4KDJbmBs6OxqYpqWYGySYmZ"
    "iamSUmJqRaJRoamBmaGScbG7l8EGCKYGBgYGRgYmBgYGVgYGMF8JjDJDCZZwKQCg3mKuZGxmWlqk"
    "qWFsYmFqbGleapxqnGaZYqJmUFSSkoiF4ORhYWRsYmhkbkxyCyISZwMJanFJfGlxalFACKnKng="
)

SIGNATURE_FIELD = 2 + 32  # uint16 length prefix + HMAC-SHA256 digest
HEADER = 2 + len(APP_ID) + 4 + 4 + 4  # app_id, issue_ts, expire, salt


def _build(
    *,
    app_id: str = APP_ID,
    app_certificate: str = APP_CERT,
    channel_name: str = CHANNEL,
    uid: int = UID,
    role: int = ROLE_SUBSCRIBER,
    token_expire: int = EXPIRE,
    privilege_expire: int = EXPIRE,
    issue_ts: int | None = ISSUE_TS,
    salt: int | None = SALT,
) -> str:
    return build_rtc_token(
        app_id,
        app_certificate,
        channel_name,
        uid,
        role,
        token_expire,
        privilege_expire,
        issue_ts=issue_ts,
        salt=salt,
    )


def _payload(token: str) -> bytes:
    return zlib.decompress(base64.b64decode(token[3:]))


# --- upstream vectors ------------------------------------------------------


def test_subscriber_token_matches_upstream_vector() -> None:
    assert _build() == EXPECTED_UID


def test_uid_zero_token_matches_upstream_vector() -> None:
    assert _build(uid=0) == EXPECTED_UID_0


def test_publisher_rtc_service_matches_upstream_payload() -> None:
    ours = _payload(_build(role=ROLE_PUBLISHER))
    theirs = _payload(EXPECTED_RTC_PUBLISHER_PLUS_RTM)

    # Same app id, issue_ts, expire and salt header.
    header = slice(SIGNATURE_FIELD, SIGNATURE_FIELD + HEADER)
    assert ours[header] == theirs[header]
    # After the service count, upstream's first service is exactly our RTC block.
    services_at = SIGNATURE_FIELD + HEADER + 2
    rtc_block = ours[services_at:]
    assert theirs[services_at : services_at + len(rtc_block)] == rtc_block


# --- behaviour -------------------------------------------------------------


def test_different_uids_give_different_tokens() -> None:
    assert _build(uid=1) != _build(uid=2)


def test_subscriber_only_gets_join_privilege() -> None:
    parsed = parse_token(_build(role=ROLE_SUBSCRIBER, privilege_expire=300))
    assert parsed.privileges == {PRIVILEGE_JOIN_CHANNEL: 300}


def test_publisher_gets_join_and_publish_privileges() -> None:
    parsed = parse_token(_build(role=ROLE_PUBLISHER, privilege_expire=300))
    assert parsed.privileges == {
        PRIVILEGE_JOIN_CHANNEL: 300,
        PRIVILEGE_PUBLISH_AUDIO_STREAM: 300,
        PRIVILEGE_PUBLISH_VIDEO_STREAM: 300,
        PRIVILEGE_PUBLISH_DATA_STREAM: 300,
    }


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "abc",
        "Z70CA35de60c44645bbae8a215061b33",  # right length, not hex
        APP_ID + "0",  # 33 characters
        APP_ID[:-1],  # 31 characters
        "970CA35de60c44645bbae8a215061 33",  # whitespace is not a hex digit
    ],
)
def test_invalid_app_id_or_certificate_raises(bad: str) -> None:
    with pytest.raises(ValueError, match="app_id"):
        _build(app_id=bad)
    with pytest.raises(ValueError, match="app_certificate"):
        _build(app_certificate=bad)


@pytest.mark.parametrize("role", [0, 3, -1])
def test_unknown_role_raises(role: int) -> None:
    with pytest.raises(ValueError, match="role"):
        _build(role=role)


@pytest.mark.parametrize("uid", [-1, 2**32])
def test_uid_outside_uint32_raises(uid: int) -> None:
    with pytest.raises(ValueError, match="uid"):
        _build(uid=uid)


def test_overlong_channel_name_raises() -> None:
    with pytest.raises(ValueError, match="too long"):
        _build(channel_name="x" * 70_000)


def test_defaults_use_current_time_and_random_salt() -> None:
    before = int(time.time())
    first = parse_token(_build(issue_ts=None, salt=None))
    second = parse_token(_build(issue_ts=None, salt=None))
    after = int(time.time())

    for parsed in (first, second):
        assert before <= parsed.issue_ts <= after
        assert 1 <= parsed.salt <= 99_999_999
        assert parsed.verify(APP_CERT)
    # Two draws from 1..99999999 colliding would be a one-in-1e8 event.
    assert first.salt != second.salt


# --- parsing ---------------------------------------------------------------


def test_parse_round_trip() -> None:
    token = _build(channel_name="room-é", uid=42, token_expire=3600, privilege_expire=1800)
    parsed = parse_token(token)

    assert parsed.app_id == APP_ID
    assert parsed.issue_ts == ISSUE_TS
    assert parsed.expire == 3600
    assert parsed.salt == SALT
    assert parsed.channel_name == "room-é"
    assert parsed.uid == "42"
    assert parsed.privileges == {PRIVILEGE_JOIN_CHANNEL: 1800}
    assert parsed.verify(APP_CERT)
    assert not parsed.verify("0" * 32)


def test_parse_upstream_vectors() -> None:
    parsed = parse_token(EXPECTED_UID)
    assert (parsed.app_id, parsed.issue_ts, parsed.expire, parsed.salt) == (
        APP_ID,
        ISSUE_TS,
        EXPIRE,
        SALT,
    )
    assert parsed.channel_name == CHANNEL
    assert parsed.uid == str(UID)
    assert parsed.privileges == {PRIVILEGE_JOIN_CHANNEL: EXPIRE}
    assert parsed.verify(APP_CERT)

    assert parse_token(EXPECTED_UID_0).uid == ""


@pytest.mark.parametrize(
    "token",
    [
        "",
        "006" + EXPECTED_UID[3:],  # older token generation
        "007not-base64!",
        "007" + base64.b64encode(b"not zlib").decode(),
        "007" + base64.b64encode(zlib.compress(b"\x20\x00short")).decode(),
        EXPECTED_RTC_PUBLISHER_PLUS_RTM,  # has a non-RTC service
    ],
)
def test_parse_rejects_malformed_tokens(token: str) -> None:
    with pytest.raises(ValueError):
        parse_token(token)
