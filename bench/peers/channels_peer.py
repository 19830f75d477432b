"""Django Channels doing the chat broadcast: one consumer per socket, a group
per room, `group_send` through the channel layer. No auth, no store.

    CHANNEL_LAYER=memory|redis|pubsub uvicorn channels_peer:application --app-dir bench/peers \\
        --ws websockets-sansio --ws-max-size 262144 --lifespan off

`memory` is `InMemoryChannelLayer`; `redis` is channels_redis'
`RedisChannelLayer`; `pubsub` its `RedisPubSubChannelLayer` (REDIS_URL,
default redis://127.0.0.1:6379/15). Layer options are the defaults
(capacity 100 per channel), as a deployment would have them.
"""

from __future__ import annotations

import os
from collections import defaultdict
from typing import Any

import django
from django.conf import settings

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/15")
LAYERS = {
    "memory": {"BACKEND": "channels.layers.InMemoryChannelLayer"},
    "redis": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": [REDIS_URL]}},
    "pubsub": {"BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer", "CONFIG": {"hosts": [REDIS_URL]}},
}

settings.configure(
    DEBUG=False,
    SECRET_KEY="bench-peer-not-a-secret",
    ALLOWED_HOSTS=["*"],
    INSTALLED_APPS=["channels"],
    CHANNEL_LAYERS={"default": LAYERS[os.environ.get("CHANNEL_LAYER", "memory")]},
)
django.setup()

# Imported after settings: channels reads them at import time.
from channels.generic.websocket import AsyncWebsocketConsumer  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from common import chat_message, content_of, history, user_from_query  # noqa: E402
from django.urls import re_path  # noqa: E402

# Per process, like the bare peer: enough for one server process.
seqs: dict[str, int] = defaultdict(int)


class ChatConsumer(AsyncWebsocketConsumer):
    async def connect(self) -> None:
        self.room_id = self.scope["url_route"]["kwargs"]["room_id"]
        self.group = f"room.{self.room_id}"
        self.sender = user_from_query(self.scope["query_string"].decode("latin-1"))
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        await self.send(text_data=history(seqs[self.room_id]))

    async def disconnect(self, code: int) -> None:
        await self.channel_layer.group_discard(self.group, self.channel_name)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        content = content_of(text_data) if text_data is not None else None
        if content is None:
            return
        seqs[self.room_id] += 1
        frame = chat_message(self.room_id, seqs[self.room_id], self.sender, content)
        await self.channel_layer.group_send(self.group, {"type": "chat.message", "text": frame})

    async def chat_message(self, event: dict[str, Any]) -> None:
        await self.send(text_data=event["text"])


application = ProtocolTypeRouter(
    {"websocket": URLRouter([re_path(r"^ws/chat/(?P<room_id>[A-Za-z0-9_-]{1,64})/?$", ChatConsumer.as_asgi())])}
)
