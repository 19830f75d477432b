"""`POST /chat/messages/file/` and the files it serves back.

Files get server-made names under `UPLOAD_DIR`; whether a file is an image is
decided from its first bytes, never from the client's name or content type.
A file is written under a temporary name and renamed only once it is whole and
its message is stored, so a cut-off upload leaves nothing behind.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import Message, Receive

from ..events.node import topics
from ..events.node.auth import AuthError, Identity, cookie_origin_allowed, credential_from_scope
from ..events.node.node import Runtime
from ..store import rooms
from ..store.db import new_id
from ..store.errors import AccessEnded

CHUNK = 64 * 1024
# Form fields and multipart framing on top of the file itself.
FORM_OVERHEAD = 64 * 1024
NAME = re.compile(r"[0-9a-f]{24}\.(png|jpg|gif|webp|bin)")
IMAGE_TYPES = {"png": "image/png", "jpg": "image/jpeg", "gif": "image/gif", "webp": "image/webp"}


class TooLarge(Exception):
    pass


def sniff_image(head: bytes) -> str | None:
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpg"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    return None


def limited(receive: Receive, limit: int) -> Receive:
    """Stop reading a request body as soon as it passes `limit` bytes."""
    seen = 0

    async def wrapped() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise TooLarge
        return message

    return wrapped


def error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status)


def display_name(raw: str | None) -> str:
    """The client's file name, for display only: no path, no control characters."""
    name = (raw or "file").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if ch.isprintable()).strip() or "file"
    return name[-255:]


async def upload(request: Request) -> Response:
    rt: Runtime = request.app.state.runtime
    limit = rt.settings.max_upload_bytes
    origin, host = request.headers.get("origin"), request.headers.get("host")
    allowed = rt.settings.allowed_origins
    if allowed and not cookie_origin_allowed(origin, host, allowed):
        return error(403, "forbidden", "origin not allowed")
    credential = credential_from_scope({}, request.headers)
    if credential is None:
        return error(401, "unauthorized", "Authorization: Bearer <token> required")
    if credential.via_cookie and not cookie_origin_allowed(origin, host, allowed):
        # A form on another site would post with the user's cookie (as the sockets check it).
        return error(403, "forbidden", "cookie authentication is not allowed from this origin")
    token = credential.token
    try:
        identity = rt.verifier.verify(token)
    except AuthError:
        return error(401, "unauthorized", "invalid or expired token")
    if await rt.revocations.refuses(rt.db, identity):
        return error(401, "unauthorized", "token revoked")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit + FORM_OVERHEAD:
        return error(413, "too_large", f"files are limited to {limit} bytes")

    request = Request(request.scope, limited(request.receive, limit + FORM_OVERHEAD))
    try:
        async with request.form(max_files=1, max_fields=4) as form:
            room_id, content, file = form.get("room_id"), form.get("content") or "", form.get("file")
            if not isinstance(room_id, str) or not isinstance(file, UploadFile) or not isinstance(content, str):
                return error(400, "invalid_payload", "multipart fields `file` and `room_id` are required")
            if not topics.ID.fullmatch(room_id) or not await rooms.exists(rt.db, room_id):
                return error(404, "not_found", "no such room")
            if not await rooms.is_member(rt.db, room_id, identity.user_id):
                return error(403, "forbidden", "not a member of this room")
            if len(content) > 10_000:
                return error(400, "invalid_payload", "content is limited to 10000 characters")
            if "\x00" in content:
                return error(400, "invalid_payload", "content must not contain NUL characters")
            return await store_file(request, rt, identity, room_id, content, file, limit)
    except TooLarge:
        return error(413, "too_large", f"files are limited to {limit} bytes")
    except HTTPException as exc:  # malformed multipart, too many files or fields
        return error(400, "invalid_payload", str(exc.detail))
    except ClientDisconnect:
        # Cut off mid-body: nothing was stored, and nobody is left to answer.
        return Response(status_code=400)


async def store_file(
    request: Request, rt: Runtime, identity: Identity, room_id: str, content: str, file: UploadFile, limit: int
) -> Response:
    if file.size is not None and file.size > limit:
        return error(413, "too_large", f"files are limited to {limit} bytes")
    folder = rt.settings.upload_dir
    folder.mkdir(parents=True, exist_ok=True)
    file_id = new_id()
    partial = folder / f".{file_id}.part"
    try:
        size, head = await copy(file, partial, limit)
        if size > limit:
            return error(413, "too_large", f"files are limited to {limit} bytes")
        kind = sniff_image(head)
        name = f"{file_id}.{kind or 'bin'}"
        sender = await rt.profile(identity)
        url = str(request.url_for("file", name=name))
        final = folder / name
        os.replace(partial, final)
        try:
            posted = await rt.store_message(
                room_id,
                sender,
                content,
                "image" if kind else "file",
                url,
                display_name(file.filename),
                from_member=True,
            )
        except AccessEnded:
            # Removed from the room while the file was coming in.
            final.unlink(missing_ok=True)
            return error(403, "forbidden", "no longer a member of this room")
        except BaseException:
            final.unlink(missing_ok=True)
            raise
    finally:
        partial.unlink(missing_ok=True)
    assert posted.frame is not None
    await rt.announce_message(room_id, posted)
    return JSONResponse({"message": posted.message}, status_code=201)


async def copy(file: UploadFile, target: Path, limit: int) -> tuple[int, bytes]:
    """Copy an upload to `target`; returns its size (stops past `limit`) and first bytes."""
    size, head = 0, b""
    await file.seek(0)
    with target.open("wb") as out:
        while chunk := await file.read(CHUNK):
            if not head:
                head = chunk[:16]
            size += len(chunk)
            if size > limit:
                break
            out.write(chunk)
    return size, head


async def serve(request: Request) -> Response:
    rt: Runtime = request.app.state.runtime
    name = request.path_params["name"]
    if not NAME.fullmatch(name):
        return error(404, "not_found", "no such file")
    path = rt.settings.upload_dir / name
    if not path.is_file():
        return error(404, "not_found", "no such file")
    ext = name.rsplit(".", 1)[1]
    headers = {"X-Content-Type-Options": "nosniff", "Cache-Control": "private, max-age=86400"}
    if ext in IMAGE_TYPES:
        return FileResponse(path, media_type=IMAGE_TYPES[ext], headers=headers)
    return FileResponse(
        path,
        media_type="application/octet-stream",
        headers=headers,
        content_disposition_type="attachment",
        filename=name,
    )


routes = [
    Route("/chat/messages/file/", upload, methods=["POST"]),
    Route("/chat/messages/file", upload, methods=["POST"]),
    Route("/files/{name}", serve, methods=["GET"], name="file"),
]
