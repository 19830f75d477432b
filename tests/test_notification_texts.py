"""The texts of the notifications the server writes itself come from templates
(events/node/texts/<locale>.json, or NOTIFICATION_TEXTS): Korean by default,
word for word what the platform's client always got, English on request, and a
texts file that lacks a key or uses an unknown placeholder stops start-up."""

from __future__ import annotations

import json
import tomllib
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import pytest

from realtime.settings import TEXTS_DIR, SettingsError, from_env, placeholders, shipped_locales
from tests.conftest import Client, Server, base_settings, running, token, ws
from tests.test_reservation import ALICE, BOB, EXPERT, cast, day, request
from tests.test_settings import start_up, the_one_line

ROOT = Path(__file__).resolve().parent.parent
SENDER = 5
AWAY = 6

# What each locale writes; Korean as the server wrote it before templates.
EXPECTED = {
    "ko": {
        "requested": "새로운 상담 예약 요청",
        "accepted": "상담 예약이 수락되었습니다",
        "rejected": "상담 예약이 거절되었습니다",
        "chat": "Minji님의 새 메시지",
        "image": "사진을 보냈습니다",
        "file": "파일: report.pdf",
    },
    "en": {
        "requested": "New consultation request",
        "accepted": "Your consultation request was accepted",
        "rejected": "Your consultation request was declined",
        "chat": "New message from Minji",
        "image": "Sent a photo",
        "file": "File: report.pdf",
    },
}


def notes(server: Server, user_id: int) -> Any:
    return ws(server.ws_url("/ws/notifications/", token=token(user_id)))


async def next_note(client: Client) -> dict[str, Any]:
    return (await client.expect("new_notification"))["notification"]


async def reservation_texts(server: Server) -> list[tuple[str, str]]:
    """(title, body) of a request, an accept, a reject with and one without a reason."""
    when = f"{day(3)} 14:30"
    seen = []
    async with (
        cast(server) as (e1, _e2, a1, _a2, b),
        notes(server, EXPERT) as en,
        notes(server, ALICE) as an,
        notes(server, BOB) as bn,
    ):
        for c in (en, an, bn):
            await c.expect("bulk_update")
        await a1.send(request(child_name="Seoyun"))
        alices = (await e1.expect("reservation_request"))["request"]
        seen.append(await next_note(en))
        await e1.send({"type": "accept_request", "request_id": alices["id"]})
        await e1.expect("request_accepted")
        seen.append(await next_note(an))
        for reason in ("booked", None):
            await b.send(request(child_name="Jiho"))
            bobs = (await e1.expect("reservation_request"))["request"]
            await next_note(en)
            await e1.send(
                {"type": "reject_request", "request_id": bobs["id"], **({"reason": reason} if reason else {})}
            )
            await e1.expect("request_rejected")
            seen.append(await next_note(bn))
    assert [n["body"] for n in seen] == [
        f"user{ALICE}: Seoyun, {when}",
        f"Seoyun, {when}",
        f"Jiho, {when} — booked",
        f"Jiho, {when}",
    ]
    return [(n["title"], n["body"]) for n in seen]


async def chat_texts(server: Server) -> list[tuple[str, str]]:
    """(title, body) of the notification an away member gets for a text, a photo and a file."""
    frames = [
        {"type": "chat_message", "content": "hello {AWAY}"},
        {"type": "chat_message", "message_type": "image", "file_url": "/uploads/a.png"},
        {"type": "chat_message", "message_type": "file", "file_url": "/uploads/r.pdf", "file_name": "report.pdf"},
    ]
    seen = []
    async with notes(server, AWAY) as away:
        await away.expect("bulk_update")
        # A room each: in one room the notification is updated in place instead.
        for n, frame in enumerate(frames):
            await server.room(f"room{n}", [SENDER, AWAY])
            url = server.ws_url(f"/ws/chat/room{n}/", token=token(SENDER, name="Minji"))
            async with ws(url) as sender:
                await sender.expect("message_history")
                await sender.send(frame)
                await sender.expect("chat_message")
                note = await next_note(away)
            seen.append((note["title"], note["body"]))
    return seen


@pytest.mark.parametrize("locale", ["ko", "en"])
async def test_each_locale_writes_its_own_texts_over_real_sockets(tmp_path: Path, locale: str) -> None:
    expected = EXPECTED[locale]
    settings = base_settings(tmp_path, notification_locale=locale, chat_notification_window=0.05)
    async with running(settings) as server:
        titles = [title for title, _ in await reservation_texts(server)]
        assert titles == [expected["requested"], expected["accepted"], expected["rejected"], expected["rejected"]]
        # A placeholder-looking text from a user is a value, never a template.
        assert await chat_texts(server) == [
            (expected["chat"], "hello {AWAY}"),
            (expected["chat"], expected["image"]),
            (expected["chat"], expected["file"]),
        ]


async def test_an_operators_texts_file_is_used(tmp_path: Path) -> None:
    own = json.loads((TEXTS_DIR / "en.json").read_text())
    own["chat_message_title"] = "{sender_name} wrote"
    own["chat_image_preview"] = "a picture"
    path = tmp_path / "texts.json"
    path.write_text(json.dumps(own))
    async with running(base_settings(tmp_path, notification_texts=path, chat_notification_window=0.05)) as server:
        texts = await chat_texts(server)
    assert texts[:2] == [("Minji wrote", "hello {AWAY}"), ("Minji wrote", "a picture")]


def test_the_default_is_korean_and_every_shipped_locale_is_complete() -> None:
    assert from_env({"JWT_SECRET": "x" * 40}).notification_locale == "ko"
    assert set(shipped_locales()) >= {"ko", "en"}
    for locale in shipped_locales():
        settings = from_env({"JWT_SECRET": "x" * 40, "NOTIFICATION_LOCALE": locale.upper()})
        assert settings.notification_templates().keys() == json.loads((TEXTS_DIR / "ko.json").read_text()).keys()


def test_the_texts_ship_as_package_data() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["realtime"]
    for path in TEXTS_DIR.glob("*.json"):
        relative = path.relative_to(ROOT).as_posix()
        assert any(fnmatch(relative, pattern) for pattern in patterns), (relative, patterns)


def write_texts(tmp_path: Path, **changes: str | None) -> Path:
    texts = json.loads((TEXTS_DIR / "ko.json").read_text())
    for key, value in changes.items():
        if value is None:
            del texts[key]
        else:
            texts[key] = value
    path = tmp_path / "texts.json"
    path.write_text(json.dumps(texts, ensure_ascii=False))
    return path


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"chat_message_title": None}, ["lacks chat_message_title"]),
        ({"chat_message_title": "{sender}님의 새 메시지"}, ["chat_message_title uses {sender}", "{sender_name}"]),
        ({"chat_image_preview": "{0}"}, ["chat_image_preview", "{0}"]),
        ({"chat_file_preview": "{file_name.upper}"}, ["chat_file_preview", "{file_name.upper}"]),
        ({"chat_file_preview": "{file_name"}, ["chat_file_preview"]),
        ({"chat_image_preview": "  "}, ["chat_image_preview", "non-blank"]),
        # Every value is text: a spec for numbers fails at start-up, not at each notification.
        ({"chat_file_preview": "File: {file_name:d}"}, ["chat_file_preview", "format code 'd'"]),
        ({"reservation_accepted_body": "{child_name:,}, {when}"}, ["reservation_accepted_body"]),
        ({"greeting": "hi"}, ["unknown keys: greeting"]),
    ],
)
def test_a_bad_texts_file_stops_the_real_command_with_one_line(
    tmp_path: Path, changes: dict[str, str | None], words: list[str]
) -> None:
    path = write_texts(tmp_path, **changes)
    line = the_one_line(start_up({"NOTIFICATION_TEXTS": str(path)}, tmp_path))
    assert line.startswith("realtime: configuration error: NOTIFICATION_TEXTS"), line
    for word in words:
        assert word in line, (word, line)


@pytest.mark.parametrize(
    ("content", "words"),
    [(None, ["cannot read"]), ("{not json", ["not JSON"]), ("[1]", ["JSON object"])],
)
def test_an_unreadable_texts_file_names_the_setting(tmp_path: Path, content: str | None, words: list[str]) -> None:
    path = tmp_path / "texts.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SettingsError, match="NOTIFICATION_TEXTS") as raised:
        from_env({"JWT_SECRET": "x" * 40, "NOTIFICATION_TEXTS": str(path)})
    for word in words:
        assert word in str(raised.value)


def test_placeholders_are_plain_names() -> None:
    assert placeholders("{a}: {b}, {a}") == {"a", "b"}
    assert placeholders("no fields, {{braces}}") == set()
    for bad in ("{}", "{0}", "{a.b}", "{a[0]}", "{a:{b}}"):
        with pytest.raises(ValueError):
            placeholders(bad)
