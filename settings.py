"""Settings from the environment, checked once at start-up.

A bad value raises `SettingsError` with one line naming the variable; the
server turns it into a clean exit rather than a traceback.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

# Dev mode signs tokens with this when no JWT_SECRET is set: anyone can mint
# tokens with it, which is the point of dev mode and why it is never the default.
DEV_SECRET = "dev-mode-insecure-secret-do-not-deploy"
STRONG_SECRET_LENGTH = 32
ASYMMETRIC = ("RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512", "EdDSA")
SYMMETRIC = ("HS256", "HS384", "HS512")


class SettingsError(Exception):
    pass


@dataclass(frozen=True)
class Settings:
    jwt_secret: str | None = None
    jwt_public_key: str | None = None
    jwt_algorithms: tuple[str, ...] = ("HS256",)
    database_url: str = "sqlite:///./realtime.db"
    broker_url: str = "memory://"
    service_key: str | None = None
    allowed_origins: tuple[str, ...] = ()
    agora_app_id: str | None = None
    agora_app_certificate: str | None = None
    dev_mode: bool = False
    upload_dir: Path = Path("uploads")
    max_upload_bytes: int = 10 * 1024 * 1024
    max_frame_bytes: int = 64 * 1024
    outbound_queue: int = 1024
    auth_timeout: float = 10.0
    typing_timeout: float = 5.0
    history_limit: int = 50
    replay_limit: int = 1000
    status_interval: float = 30.0
    presence_timeout: float = 30.0
    workers: int = 1
    rate_limit: float = 20.0
    rate_burst: float = 40.0
    max_sockets_per_user: int = 20
    max_pending_auth: int = 1000
    token_expiry: str = "ignore"
    token_grace: float = 30.0
    log_level: str = "info"
    log_format: str = "text"
    # Bounded growth (docs/retention.md): how long stream events and read
    # notifications are kept, how often they are pruned, and the window chat
    # notifications of one room are coalesced over.
    stream_retention_seconds: int = 7 * 86_400
    stream_retention_events: int = 10_000
    read_notification_retention_seconds: int = 30 * 86_400
    retention_interval: float = 60.0
    chat_notification_window: float = 1.0

    @property
    def jwt_key(self) -> str:
        key = self.jwt_public_key or self.jwt_secret
        if key is not None:
            return key
        if self.dev_mode:
            return DEV_SECRET
        raise SettingsError("JWT_SECRET is not set")

    @property
    def signing_key(self) -> str:
        """The key dev mode signs demo tokens with (HS* only)."""
        return self.jwt_secret or DEV_SECRET

    def checked(self) -> Settings:
        if not self.jwt_secret and not self.jwt_public_key and not self.dev_mode:
            raise SettingsError(
                "JWT_SECRET is not set: set it (or JWT_PUBLIC_KEY with JWT_ALGORITHMS), "
                "or run with DEV_MODE=1 to try the server locally"
            )
        for alg in self.jwt_algorithms:
            if alg.lower() == "none" or alg not in SYMMETRIC + ASYMMETRIC:
                raise SettingsError(f"JWT_ALGORITHMS: {alg!r} is not an accepted algorithm")
        if self.jwt_public_key and any(alg in SYMMETRIC for alg in self.jwt_algorithms):
            raise SettingsError("JWT_ALGORITHMS: a public key goes with RS*/ES*/PS*/EdDSA, not HS*")
        if not self.jwt_public_key and any(alg in ASYMMETRIC for alg in self.jwt_algorithms):
            raise SettingsError("JWT_ALGORITHMS: RS*/ES*/PS*/EdDSA need JWT_PUBLIC_KEY")
        if self.dev_mode and self.jwt_secret and len(self.jwt_secret) >= STRONG_SECRET_LENGTH:
            raise SettingsError(
                "DEV_MODE=1 mints tokens for anyone: refusing to run it with a production-strength JWT_SECRET"
            )
        if self.dev_mode and self.jwt_public_key:
            raise SettingsError("DEV_MODE=1 signs demo tokens with HS256: unset JWT_PUBLIC_KEY")
        scheme = urlparse(self.database_url).scheme
        if scheme not in ("sqlite", "postgresql", "postgres"):
            raise SettingsError(f"DATABASE_URL: unsupported scheme {scheme!r} (sqlite:/// or postgresql://)")
        broker = urlparse(self.broker_url).scheme
        if broker not in ("memory", "redis", "rediss"):
            raise SettingsError(f"BROKER_URL: unsupported scheme {broker!r} (memory:// or redis://)")
        if broker == "memory" and self.workers > 1:
            raise SettingsError(
                "BROKER_URL=memory:// with more than one worker would split every room between "
                "processes: set BROKER_URL=redis://... or run one worker"
            )
        if bool(self.agora_app_id) != bool(self.agora_app_certificate):
            raise SettingsError("AGORA_APP_ID and AGORA_APP_CERTIFICATE go together")
        if self.token_expiry not in ("ignore", "close"):
            raise SettingsError(f"TOKEN_EXPIRY: {self.token_expiry!r} is not ignore or close")
        if self.rate_burst < 1:
            raise SettingsError("RATE_BURST: must be at least 1")
        if self.log_format not in ("text", "json"):
            raise SettingsError(f"LOG_FORMAT: {self.log_format!r} is not text or json")
        return self


# (default, minimum, maximum, unit) of the retention settings.
TEN_YEARS = 10 * 365 * 86_400
RETAIN_SECONDS = (Settings.stream_retention_seconds, 1, TEN_YEARS, "seconds")
RETAIN_EVENTS = (Settings.stream_retention_events, 1, 100_000_000, "events per stream")
RETAIN_READ = (Settings.read_notification_retention_seconds, 1, TEN_YEARS, "seconds")
PRUNE_EVERY = (Settings.retention_interval, 0.1, 86_400.0, "seconds")
CHAT_WINDOW = (Settings.chat_notification_window, 0.05, 60.0, "seconds")


def from_env(env: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if env is None else env
    reader = _Reader(env)
    algorithms = reader.csv("JWT_ALGORITHMS") or (("RS256",) if env.get("JWT_PUBLIC_KEY") else ("HS256",))
    settings = Settings(
        jwt_secret=reader.str("JWT_SECRET"),
        jwt_public_key=reader.str("JWT_PUBLIC_KEY"),
        jwt_algorithms=algorithms,
        database_url=reader.str("DATABASE_URL") or Settings.database_url,
        broker_url=reader.str("BROKER_URL") or Settings.broker_url,
        service_key=reader.str("SERVICE_KEY"),
        allowed_origins=reader.csv("ALLOWED_ORIGINS"),
        agora_app_id=reader.str("AGORA_APP_ID"),
        agora_app_certificate=reader.str("AGORA_APP_CERTIFICATE"),
        dev_mode=reader.flag("DEV_MODE"),
        upload_dir=Path(reader.str("UPLOAD_DIR") or Settings.upload_dir),
        max_upload_bytes=reader.int("MAX_UPLOAD_BYTES", Settings.max_upload_bytes, 1),
        max_frame_bytes=reader.int("MAX_FRAME_BYTES", Settings.max_frame_bytes, 256),
        outbound_queue=reader.int("OUTBOUND_QUEUE", Settings.outbound_queue, 1),
        auth_timeout=reader.float("AUTH_TIMEOUT", Settings.auth_timeout),
        typing_timeout=reader.float("TYPING_TIMEOUT", Settings.typing_timeout),
        history_limit=reader.int("HISTORY_LIMIT", Settings.history_limit, 1),
        replay_limit=reader.int("REPLAY_LIMIT", Settings.replay_limit, 1),
        status_interval=reader.float("STATUS_INTERVAL", Settings.status_interval),
        presence_timeout=reader.float("PRESENCE_TIMEOUT", Settings.presence_timeout),
        workers=reader.int("WEB_CONCURRENCY", 1, 1),
        rate_limit=reader.float("RATE_LIMIT", Settings.rate_limit),
        rate_burst=reader.float("RATE_BURST", Settings.rate_burst),
        max_sockets_per_user=reader.int("MAX_SOCKETS_PER_USER", Settings.max_sockets_per_user, 1),
        max_pending_auth=reader.int("MAX_PENDING_AUTH", Settings.max_pending_auth, 1),
        token_expiry=(reader.str("TOKEN_EXPIRY") or Settings.token_expiry).lower(),
        token_grace=reader.float("TOKEN_GRACE", Settings.token_grace),
        log_level=(reader.str("LOG_LEVEL") or "info").lower(),
        log_format=(reader.str("LOG_FORMAT") or "text").lower(),
        stream_retention_seconds=reader.bounded_int("STREAM_RETENTION_SECONDS", *RETAIN_SECONDS),
        stream_retention_events=reader.bounded_int("STREAM_RETENTION_EVENTS", *RETAIN_EVENTS),
        read_notification_retention_seconds=reader.bounded_int("READ_NOTIFICATION_RETENTION_SECONDS", *RETAIN_READ),
        retention_interval=reader.bounded_float("RETENTION_INTERVAL_SECONDS", *PRUNE_EVERY),
        chat_notification_window=reader.bounded_float("CHAT_NOTIFICATION_WINDOW_SECONDS", *CHAT_WINDOW),
    )
    return settings.checked()


class _Reader:
    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def str(self, name: str) -> str | None:
        value = self.env.get(name, "").strip()
        return value or None

    def csv(self, name: str) -> tuple[str, ...]:
        return tuple(part.strip() for part in self.env.get(name, "").split(",") if part.strip())

    def flag(self, name: str) -> bool:
        value = self.env.get(name, "").strip().lower()
        if value in ("", "0", "false", "no", "off"):
            return False
        if value in ("1", "true", "yes", "on"):
            return True
        raise SettingsError(f"{name}: {value!r} is not a boolean (1/0, true/false)")

    def int(self, name: str, default: int, minimum: int) -> int:
        raw = self.env.get(name, "").strip()
        if not raw:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise SettingsError(f"{name}: {raw!r} is not an integer") from None
        if value < minimum:
            raise SettingsError(f"{name}: must be at least {minimum}, got {value}")
        return value

    def float(self, name: str, default: float) -> float:
        raw = self.env.get(name, "").strip()
        if not raw:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise SettingsError(f"{name}: {raw!r} is not a number") from None
        if not 0 < value < 86_400:
            raise SettingsError(f"{name}: must be a positive number of seconds, got {raw}")
        return value

    def bounded_int(self, name: str, default: int, minimum: int, maximum: int, unit: str) -> int:
        raw = self.env.get(name, "").strip()
        if not raw:
            return default
        try:
            value = int(raw)
        except ValueError:
            value = None
        if value is None or not minimum <= value <= maximum:
            raise SettingsError(f"{name}: must be an integer from {minimum} to {maximum} ({unit}), got {raw!r}")
        return value

    def bounded_float(self, name: str, default: float, minimum: float, maximum: float, unit: str) -> float:
        raw = self.env.get(name, "").strip()
        if not raw:
            return default
        try:
            value = float(raw)
        except ValueError:
            value = None
        if value is None or not minimum <= value <= maximum:
            raise SettingsError(f"{name}: must be a number from {minimum:g} to {maximum:g} ({unit}), got {raw!r}")
        return value
