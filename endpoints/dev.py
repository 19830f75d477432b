"""Dev mode: demo users, a demo room, a demo consultation and their tokens, and
a demo page at `/`, so a newcomer can try every channel between two browser
windows a minute after starting the server. Never on unless asked."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import jwt
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from ..events.node.node import Runtime
from ..store import consultations, rooms, users
from ..store.consultations import Consultation
from ..store.errors import Conflict

DEMO_USERS = (
    (1, "Dr. Kim", "expert"),
    (2, "Minji", "client"),
    (3, "Jisoo", "client"),
)
DEMO_ROOM = "demo"
DEMO_EXPERT = 1
DEMO_CLIENT = 2
# Consultations are `demo-1`, `demo-2`, ...: a finished one cannot start again,
# so the page asks for the next one (`POST /dev/consultations`).
CONSULTATION_PREFIX = "demo-"
CONSULTATION_MINUTES = 15
STATIC = Path(__file__).resolve().parent.parent / "static"


def mint(rt: Runtime, user_id: int, name: str, role: str) -> str:
    # As long as the server takes (JWT_MAX_LIFETIME): the demo URLs printed at start-up keep working.
    exp = int(time.time() + rt.settings.jwt_max_lifetime)
    claims = {"user_id": user_id, "name": name, "role": role, "exp": exp}
    return jwt.encode(claims, rt.settings.signing_key, algorithm="HS256")


def demo(rt: Runtime, base: str, consultation_id: str) -> dict[str, Any]:
    people = []
    for user_id, name, role in DEMO_USERS:
        token = mint(rt, user_id, name, role)
        people.append(
            {
                "id": user_id,
                "name": name,
                "role": role,
                "token": token,
                "chat_url": f"{base}/ws/chat/{DEMO_ROOM}/?token={token}",
            }
        )
    return {
        "room_id": DEMO_ROOM,
        "consultation_id": consultation_id,
        "expert_id": DEMO_EXPERT,
        "users": people,
    }


async def demo_consultation(rt: Runtime, renew: bool = False) -> Consultation:
    """The newest demo consultation between the demo expert and the first demo
    client, created when there is none; with `renew`, a new one when the newest
    has finished. Idempotent: restarts and two windows asking at once end on the same one."""
    number, newest = 1, await consultations.get(rt.db, f"{CONSULTATION_PREFIX}1")
    while newest is not None:
        following = await consultations.get(rt.db, f"{CONSULTATION_PREFIX}{number + 1}")
        if following is None:
            break
        number, newest = number + 1, following
    finished = newest is not None and newest.status in (consultations.COMPLETED, consultations.CANCELLED)
    if newest is not None and not (renew and finished):
        return newest
    consultation_id = f"{CONSULTATION_PREFIX}{number + 1 if newest is not None else 1}"
    try:
        return await consultations.create(
            rt.db, consultation_id, DEMO_EXPERT, DEMO_CLIENT, duration_minutes=CONSULTATION_MINUTES
        )
    except Conflict:
        # Another window (or process) created it a moment ago.
        created = await consultations.get(rt.db, consultation_id)
        assert created is not None
        return created


async def seed(rt: Runtime, base: str) -> None:
    for user_id, name, role in DEMO_USERS:
        # The expert's role makes `/ws/reservation-chat/1/` its reservation channel.
        await users.upsert(rt.db, user_id, name, role, None)
    await rooms.ensure(rt.db, DEMO_ROOM, [user_id for user_id, _, _ in DEMO_USERS])
    consultation = await demo_consultation(rt)
    http = base.replace("ws", "http", 1)
    lines = [
        "DEV MODE: anyone can mint tokens on this server. Never expose it.",
        f"Demo page: open {http}/ in two browser windows, pick Dr. Kim in one and Minji in the other.",
        f"Demo room {DEMO_ROOM!r}, consultation {consultation.id!r} ({consultation.status}), "
        f"reservation channel of expert {DEMO_EXPERT}; or connect two terminals, for example:",
    ]
    for person in demo(rt, base, consultation.id)["users"][:2]:
        lines.append(f"  {person['name']} ({person['role']}): python -m websockets '{person['chat_url']}'")
    lines.append(f"All demo tokens: GET {http}/dev/tokens")
    # Printed, not logged: the log filter would redact the very tokens dev mode hands out.
    print("\n".join(lines), file=sys.stderr, flush=True)


def _base(request: Request) -> str:
    scheme = "wss" if request.url.scheme == "https" else "ws"
    return f"{scheme}://{request.url.netloc}{request.scope.get('root_path', '')}"


async def tokens(request: Request) -> Response:
    rt: Runtime = request.app.state.runtime
    consultation = await demo_consultation(rt)
    return JSONResponse(demo(rt, _base(request), consultation.id))


async def next_consultation(request: Request) -> Response:
    """The demo consultation to use now: the newest, or a fresh one once it has finished."""
    rt: Runtime = request.app.state.runtime
    consultation = await demo_consultation(rt, renew=True)
    return JSONResponse({"consultation": consultation.record()})


async def page(request: Request) -> Response:
    # Always revalidated: the page is edited while the server runs.
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


routes: list[BaseRoute] = [
    Route("/", page, methods=["GET"]),
    Route("/dev/tokens", tokens, methods=["GET"]),
    Route("/dev/consultations", next_consultation, methods=["POST"]),
    # Checked on use, not at import: a server without `static/` still starts.
    Mount("/static", StaticFiles(directory=STATIC, check_dir=False), name="static"),
]
