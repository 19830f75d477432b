"""Dev mode: demo users, a demo room and their tokens, so a newcomer can chat
between two clients a minute after starting the server. Never on unless asked."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import jwt
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from endpoints.runtime import Runtime
from store import rooms, users

log = logging.getLogger("realtime.dev")

DEMO_USERS = (
    (1, "Dr. Kim", "expert"),
    (2, "Minji", "client"),
    (3, "Jisoo", "client"),
)
DEMO_ROOM = "demo"
TOKEN_LIFETIME = 7 * 24 * 3600


def mint(rt: Runtime, user_id: int, name: str, role: str) -> str:
    claims = {"user_id": user_id, "name": name, "role": role, "exp": int(time.time()) + TOKEN_LIFETIME}
    return jwt.encode(claims, rt.settings.signing_key, algorithm="HS256")


def demo(rt: Runtime, base: str) -> dict[str, Any]:
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
    return {"room_id": DEMO_ROOM, "users": people}


async def seed(rt: Runtime, base: str) -> None:
    for user_id, name, role in DEMO_USERS:
        await users.upsert(rt.db, user_id, name, role, None)
    await rooms.ensure(rt.db, DEMO_ROOM, [user_id for user_id, _, _ in DEMO_USERS])
    lines = [
        "DEV MODE: anyone can mint tokens on this server. Never expose it.",
        f"Demo room {DEMO_ROOM!r}; connect two terminals, for example:",
    ]
    for person in demo(rt, base)["users"][:2]:
        lines.append(f"  {person['name']} ({person['role']}): python -m websockets '{person['chat_url']}'")
    lines.append(f"All demo tokens: GET {base.replace('ws', 'http', 1)}/dev/tokens")
    # Printed, not logged: the log filter would redact the very tokens dev mode hands out.
    print("\n".join(lines), file=sys.stderr, flush=True)


async def tokens(request: Request) -> Response:
    rt: Runtime = request.app.state.runtime
    scheme = "wss" if request.url.scheme == "https" else "ws"
    return JSONResponse(demo(rt, f"{scheme}://{request.url.netloc}{request.scope.get('root_path', '')}"))


routes = [Route("/dev/tokens", tokens, methods=["GET"])]
