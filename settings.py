"""Settings from the environment, checked once at start-up.

A bad value raises `SettingsError` with one line naming the variable; the
server turns it into a clean exit rather than a traceback.
"""

from __future__ import annotations

import json
import os
import string
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import jwt

# Dev mode signs tokens with this when no JWT_SECRET is set: anyone can mint
# tokens with it, which is the point of dev mode and why it is never the default.
DEV_SECRET = "dev-mode-insecure-secret-do-not-deploy"
STRONG_SECRET_LENGTH = 32
TEN_YEARS = 10 * 365 * 86_400
DAY = 86_400
MAX_RATE = 1_000_000
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
# transport/uvicorn.py's COMPRESSION_MODES (settings.py imports nothing of the project).
WS_COMPRESSION_MODES = ("off", "stateless", "server")
DEFAULT_PORTS = {"http": 80, "https": 443}
ASYMMETRIC = ("RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512", "EdDSA")
SYMMETRIC = ("HS256", "HS384", "HS512")
# The notification texts shipped as package data, one JSON file per locale. The
# reference locale's keys are the ones every locale (and NOTIFICATION_TEXTS) must
# have, and its placeholders the only ones they may use.
TEXTS_DIR = Path(__file__).resolve().parent / "events" / "node" / "texts"
REFERENCE_LOCALE = "ko"


class SettingsError(Exception):
    pass


@dataclass(frozen=True)
class Settings:
    jwt_secret: str | None = None
    jwt_public_key: str | None = None
    jwt_algorithms: tuple[str, ...] = ("HS256",)
    jwt_audience: tuple[str, ...] = ()
    jwt_issuer: tuple[str, ...] = ()
    jwt_max_lifetime: float = DAY
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
    # Sockets authenticating, joining and catching up at once per process (endpoints/base.py).
    connects_at_once: int = 8
    socket_lease: float = 30.0
    token_expiry: str = "close"
    header_timeout: float = 10.0
    idle_timeout: float = 5.0
    max_pending_per_ip: int = 100
    max_connections: int = 0  # 0: the open-file limit less headroom (endpoints/guard.py)
    token_grace: float = 30.0
    log_level: str = "info"
    log_format: str = "text"
    store_busy_timeout: float = 10.0
    session_secret: str | None = None
    session_ttl: float = 900.0
    drain_timeout: float = 10.0
    # Bounded growth (docs/retention.md): how long stream events and read
    # notifications are kept, how often they are pruned, and the window chat
    # notifications of one room are coalesced over.
    stream_retention_seconds: int = 7 * 86_400
    stream_retention_events: int = 10_000
    read_notification_retention_seconds: int = 30 * 86_400
    retention_interval: float = 60.0
    chat_notification_window: float = 1.0
    # The texts of the notifications the server writes itself: a shipped locale,
    # or the operator's own file of the same keys.
    notification_locale: str = REFERENCE_LOCALE
    notification_texts: Path | None = None
    # prometheus_client's multiprocess mode: `/metrics` over every worker of a
    # uvicorn supervisor (events/node/metrics_shared.py); prometheus_client
    # itself reads the variable when it is imported.
    prometheus_multiproc_dir: Path | None = None
    # Webhooks to the main backend (docs/webhooks.md): where events are POSTed,
    # the key that signs them, and how deliveries are timed.
    webhook_urls: tuple[str, ...] = ()
    webhook_secret: str | None = None
    webhook_timeout: float = 10.0
    webhook_retry_window: float = 86_400.0
    webhook_backoff_max: float = 300.0
    webhook_unread_window: float = 60.0
    webhook_presence_debounce: float = 10.0
    # The cyclic garbage collector's thresholds (gc.set_threshold) for a process the
    # server owns, which then also collects fully once a quarter of its sockets have
    # closed (events/node/sweep.py); None leaves Python's (700, 10, 10) and its pacing.
    gc_thresholds: tuple[int, int, int] | None = (50_000, 10, 10)
    # permessage-deflate (transport/uvicorn.py): off, stateless, or the server's own; and from
    # which size a frame is compressed on the fast path.
    ws_compression: str = "stateless"
    ws_compression_min_bytes: int = 256

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
                raise SettingsError(
                    f"JWT_ALGORITHMS: {alg!r} is not an accepted algorithm ({', '.join(SYMMETRIC + ASYMMETRIC)})"
                )
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
        if (
            not self.dev_mode
            and not self.jwt_public_key
            and self.jwt_secret
            and len(self.jwt_secret.encode()) < STRONG_SECRET_LENGTH
        ):
            # A short HMAC secret can be brute-forced from any one token, which then mints them all.
            raise SettingsError(
                f"JWT_SECRET: must be at least {STRONG_SECRET_LENGTH} bytes long, "
                f"got {len(self.jwt_secret.encode())} (e.g. `openssl rand -hex 32`)"
            )
        if self.jwt_public_key:
            _check_public_key(self.jwt_public_key, self.jwt_algorithms)
        for origin in self.allowed_origins:
            if origin_problem(origin) is not None:
                raise SettingsError(f"ALLOWED_ORIGINS: {origin!r} {origin_problem(origin)}")
        if self.log_level not in LOG_LEVELS:
            raise SettingsError(f"LOG_LEVEL: {self.log_level!r} is not one of {', '.join(LOG_LEVELS)}")
        scheme = urlparse(self.database_url).scheme
        if scheme not in ("sqlite", "postgresql", "postgres"):
            raise SettingsError(f"DATABASE_URL: unsupported scheme {scheme!r} (sqlite:/// or postgresql://)")
        broker = urlparse(self.broker_url).scheme
        if broker not in ("memory", "redis", "rediss"):
            raise SettingsError(f"BROKER_URL: unsupported scheme {broker!r} (memory:// or redis://)")
        if broker == "memory" and self.workers > 1:
            raise SettingsError(
                f"BROKER_URL=memory:// serves 1 worker process, not {self.workers} (WEB_CONCURRENCY or --workers): "
                "more would split every room between processes; set BROKER_URL=redis://... or run one worker"
            )
        if bool(self.agora_app_id) != bool(self.agora_app_certificate):
            raise SettingsError("AGORA_APP_ID and AGORA_APP_CERTIFICATE go together")
        if self.token_expiry not in ("ignore", "close"):
            raise SettingsError(f"TOKEN_EXPIRY: {self.token_expiry!r} is not ignore or close")
        if self.ws_compression not in WS_COMPRESSION_MODES:
            raise SettingsError(
                f"WS_COMPRESSION: {self.ws_compression!r} is not one of {', '.join(WS_COMPRESSION_MODES)}"
            )
        if self.log_format not in ("text", "json"):
            raise SettingsError(f"LOG_FORMAT: {self.log_format!r} is not text or json")
        if self.session_secret is not None and len(self.session_secret) < STRONG_SECRET_LENGTH:
            raise SettingsError(f"SESSION_SECRET: must be at least {STRONG_SECRET_LENGTH} characters")
        self.notification_templates()
        if self.prometheus_multiproc_dir is not None:
            directory = self.prometheus_multiproc_dir
            if not directory.is_dir() or not os.access(directory, os.W_OK | os.X_OK):
                raise SettingsError(
                    f"PROMETHEUS_MULTIPROC_DIR: {str(directory)!r} is not a writable directory "
                    "(with --log-config logging.json, uvicorn's supervisor creates and empties it)"
                )
        self._check_webhooks()
        files = open_file_limit()
        if files is not None and self.max_connections > files:
            raise SettingsError(
                f"MAX_CONNECTIONS: must be at most {files} connections (this process's open-file limit), "
                f"got {self.max_connections}"
            )
        return self

    def notification_templates(self) -> dict[str, str]:
        """The notification texts' templates (NOTIFICATION_TEXTS, else NOTIFICATION_LOCALE's), checked."""
        if self.notification_texts is not None:
            return load_templates(self.notification_texts, "NOTIFICATION_TEXTS")
        if self.notification_locale not in shipped_locales():
            raise SettingsError(
                f"NOTIFICATION_LOCALE: {self.notification_locale!r} is not one of {', '.join(shipped_locales())}"
            )
        return load_templates(TEXTS_DIR / f"{self.notification_locale}.json", "NOTIFICATION_LOCALE")

    def _check_webhooks(self) -> None:
        for url in self.webhook_urls:
            problem = webhook_url_problem(url)
            if problem is not None:
                raise SettingsError(f"WEBHOOK_URL: {redacted_url(url)!r} {problem}")
        if len(set(self.webhook_urls)) != len(self.webhook_urls):
            raise SettingsError("WEBHOOK_URL: a URL is listed twice (each would get every event once more)")
        if self.webhook_urls and not self.webhook_secret:
            raise SettingsError(
                f"WEBHOOK_SECRET: required with WEBHOOK_URL, at least {STRONG_SECRET_LENGTH} bytes "
                "(e.g. `openssl rand -hex 32`); the receiver checks every delivery's signature with it"
            )
        if self.webhook_secret is not None and len(self.webhook_secret.encode()) < STRONG_SECRET_LENGTH:
            raise SettingsError(
                f"WEBHOOK_SECRET: must be at least {STRONG_SECRET_LENGTH} bytes long, "
                f"got {len(self.webhook_secret.encode())} (e.g. `openssl rand -hex 32`)"
            )


def shipped_locales() -> list[str]:
    return sorted(path.stem for path in TEXTS_DIR.glob("*.json"))


def load_templates(path: Path, variable: str) -> dict[str, str]:
    """A texts file: a JSON object with every key of the reference locale, each a
    non-blank template whose `{placeholders}` are among the reference's for that key."""
    reference_path = TEXTS_DIR / f"{REFERENCE_LOCALE}.json"
    reference = _read_templates(reference_path, "NOTIFICATION_LOCALE")
    templates = reference if path == reference_path else _read_templates(path, variable)
    missing = sorted(set(reference) - set(templates))
    if missing:
        raise SettingsError(f"{variable}: {path} lacks {', '.join(missing)} (every key of {REFERENCE_LOCALE}.json)")
    unknown = sorted(set(templates) - set(reference))
    if unknown:
        raise SettingsError(f"{variable}: {path} has unknown keys: {', '.join(unknown)}")
    for key, template in templates.items():
        try:
            allowed = placeholders(reference[key])
            extra = placeholders(template) - allowed
        except ValueError as exc:
            raise SettingsError(f"{variable}: {path}: {key}: {exc}") from None
        if extra:
            raise SettingsError(
                f"{variable}: {path}: {key} uses {', '.join('{' + name + '}' for name in sorted(extra))}; "
                f"it may use {', '.join('{' + name + '}' for name in sorted(allowed)) or 'no placeholder'}"
            )
        try:
            # Rendered once now, with text as every value is: a format spec that
            # text does not take (`{when:d}`) would otherwise fail each notification.
            template.format_map(dict.fromkeys(allowed, "text"))
        except ValueError as exc:
            raise SettingsError(f"{variable}: {path}: {key}: {exc}") from None
    return templates


def _read_templates(path: Path, variable: str) -> dict[str, str]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SettingsError(f"{variable}: cannot read {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise SettingsError(f"{variable}: {path} is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise SettingsError(f"{variable}: {path} is not a JSON object of texts")
    for key, value in data.items():
        if not isinstance(value, str) or not value.strip():
            raise SettingsError(f"{variable}: {path}: {key} must be a non-blank string")
    return data


def placeholders(template: str) -> set[str]:
    """The `{name}`s of a template (ValueError for a broken one, or a positional,
    attribute, index or nested field: values are only ever passed by name)."""
    names = set()
    for _, name, spec, _ in string.Formatter().parse(template):
        if name is None:
            continue
        if not name.isidentifier() or (spec and "{" in spec):
            raise ValueError(f"{{{name}}} is not a plain {{name}} placeholder")
        names.add(name)
    return names


def webhook_url_problem(url: str) -> str | None:
    """Why `url` cannot receive webhooks, or None."""
    try:
        parsed = urlparse(url)
        parsed.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        return "has a bad port: write http(s)://host[:port]/path"
    if parsed.scheme not in ("http", "https"):
        return "is not an http:// or https:// URL"
    if not parsed.hostname:
        return "has no host: write http(s)://host[:port]/path"
    if parsed.fragment:
        return "has a #fragment, which is never sent: remove it"
    return None


def redacted_url(url: str) -> str:
    """`url` fit for logs and error lines: no user info, no query (either may hold a credential)."""
    try:
        parsed = urlparse(url)
    except ValueError:
        return "<unparsable URL>"
    netloc = parsed.netloc.rsplit("@", 1)[-1]
    return parsed._replace(netloc=netloc, query="", fragment="").geturl()


def open_file_limit() -> int | None:
    """The soft RLIMIT_NOFILE, or None where there is none (unlimited, or no `resource`)."""
    try:
        import resource
    except ImportError:  # not on Windows
        return None
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else soft


def from_env(env: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if env is None else env
    reader = _Reader(env)
    algorithms = reader.csv("JWT_ALGORITHMS") or (("RS256",) if env.get("JWT_PUBLIC_KEY") else ("HS256",))
    settings = Settings(
        jwt_secret=reader.str("JWT_SECRET"),
        jwt_public_key=reader.str("JWT_PUBLIC_KEY"),
        jwt_algorithms=algorithms,
        jwt_audience=reader.csv("JWT_AUDIENCE"),
        jwt_issuer=reader.csv("JWT_ISSUER"),
        jwt_max_lifetime=reader.float("JWT_MAX_LIFETIME", Settings.jwt_max_lifetime, maximum=366 * DAY),
        database_url=reader.str("DATABASE_URL") or Settings.database_url,
        broker_url=reader.str("BROKER_URL") or Settings.broker_url,
        service_key=reader.str("SERVICE_KEY"),
        allowed_origins=tuple(normalized_origin(origin) for origin in reader.csv("ALLOWED_ORIGINS")),
        agora_app_id=reader.str("AGORA_APP_ID"),
        agora_app_certificate=reader.str("AGORA_APP_CERTIFICATE"),
        dev_mode=reader.flag("DEV_MODE"),
        upload_dir=Path(reader.str("UPLOAD_DIR") or Settings.upload_dir),
        max_upload_bytes=reader.int("MAX_UPLOAD_BYTES", Settings.max_upload_bytes, 1, 2**32, "bytes"),
        max_frame_bytes=reader.int("MAX_FRAME_BYTES", Settings.max_frame_bytes, 256, 2**24, "bytes"),
        outbound_queue=reader.int("OUTBOUND_QUEUE", Settings.outbound_queue, 1, 10**6, "frames"),
        auth_timeout=reader.float("AUTH_TIMEOUT", Settings.auth_timeout),
        typing_timeout=reader.float("TYPING_TIMEOUT", Settings.typing_timeout),
        history_limit=reader.int("HISTORY_LIMIT", Settings.history_limit, 1, 10_000, "messages"),
        replay_limit=reader.int("REPLAY_LIMIT", Settings.replay_limit, 1, 10**7, "events"),
        status_interval=reader.float("STATUS_INTERVAL", Settings.status_interval),
        presence_timeout=reader.float("PRESENCE_TIMEOUT", Settings.presence_timeout),
        workers=reader.int("WEB_CONCURRENCY", 1, 1, 1024, "processes"),
        rate_limit=reader.float("RATE_LIMIT", Settings.rate_limit, maximum=MAX_RATE, unit="frames per second"),
        rate_burst=reader.float("RATE_BURST", Settings.rate_burst, minimum=1, maximum=MAX_RATE, unit="frames"),
        max_sockets_per_user=reader.int("MAX_SOCKETS_PER_USER", Settings.max_sockets_per_user, 1, 10**6, "sockets"),
        max_pending_auth=reader.int("MAX_PENDING_AUTH", Settings.max_pending_auth, 1, 10**7, "sockets"),
        connects_at_once=reader.int("CONNECTS_AT_ONCE", Settings.connects_at_once, 1, 10_000, "sockets"),
        socket_lease=reader.float("SOCKET_LEASE", Settings.socket_lease),
        header_timeout=reader.float("HEADER_TIMEOUT", Settings.header_timeout),
        idle_timeout=reader.float("IDLE_TIMEOUT", Settings.idle_timeout),
        max_pending_per_ip=reader.int("MAX_PENDING_PER_IP", Settings.max_pending_per_ip, 1, 10**6, "connections"),
        max_connections=reader.int("MAX_CONNECTIONS", Settings.max_connections, 1, 2**31, "connections"),
        token_expiry=(reader.str("TOKEN_EXPIRY") or Settings.token_expiry).lower(),
        token_grace=reader.float("TOKEN_GRACE", Settings.token_grace),
        log_level=(reader.str("LOG_LEVEL") or "info").lower(),
        log_format=(reader.str("LOG_FORMAT") or "text").lower(),
        store_busy_timeout=reader.float("STORE_BUSY_TIMEOUT", Settings.store_busy_timeout),
        session_secret=reader.str("SESSION_SECRET"),
        session_ttl=reader.float("SESSION_TTL", Settings.session_ttl),
        drain_timeout=reader.float("DRAIN_TIMEOUT", Settings.drain_timeout),
        stream_retention_seconds=reader.int(
            "STREAM_RETENTION_SECONDS", Settings.stream_retention_seconds, 1, TEN_YEARS, "seconds"
        ),
        stream_retention_events=reader.int(
            "STREAM_RETENTION_EVENTS", Settings.stream_retention_events, 1, 10**8, "events per stream"
        ),
        read_notification_retention_seconds=reader.int(
            "READ_NOTIFICATION_RETENTION_SECONDS", Settings.read_notification_retention_seconds, 1, TEN_YEARS, "seconds"
        ),
        retention_interval=reader.float("RETENTION_INTERVAL_SECONDS", Settings.retention_interval, minimum=0.1),
        chat_notification_window=reader.float(
            "CHAT_NOTIFICATION_WINDOW_SECONDS", Settings.chat_notification_window, minimum=0.05, maximum=60
        ),
        notification_locale=(reader.str("NOTIFICATION_LOCALE") or Settings.notification_locale).lower(),
        notification_texts=reader.path("NOTIFICATION_TEXTS"),
        prometheus_multiproc_dir=reader.path("PROMETHEUS_MULTIPROC_DIR"),
        webhook_urls=reader.csv("WEBHOOK_URL"),
        webhook_secret=reader.str("WEBHOOK_SECRET"),
        webhook_timeout=reader.float("WEBHOOK_TIMEOUT", Settings.webhook_timeout, maximum=300),
        webhook_retry_window=reader.float(
            "WEBHOOK_RETRY_WINDOW_SECONDS", Settings.webhook_retry_window, minimum=1, maximum=30 * DAY
        ),
        webhook_backoff_max=reader.float(
            "WEBHOOK_BACKOFF_MAX_SECONDS", Settings.webhook_backoff_max, minimum=0.1, maximum=DAY
        ),
        webhook_unread_window=reader.float(
            "WEBHOOK_UNREAD_WINDOW_SECONDS", Settings.webhook_unread_window, minimum=0.05, maximum=DAY
        ),
        webhook_presence_debounce=reader.float(
            "WEBHOOK_PRESENCE_DEBOUNCE_SECONDS", Settings.webhook_presence_debounce, minimum=0.05, maximum=3600
        ),
        gc_thresholds=reader.thresholds("GC_THRESHOLDS", Settings.gc_thresholds),
        ws_compression=reader.str("WS_COMPRESSION") or Settings.ws_compression,
        ws_compression_min_bytes=reader.int(
            "WS_COMPRESSION_MIN_BYTES", Settings.ws_compression_min_bytes, 0, 2**24, "bytes"
        ),
    )
    return settings.checked()


class _Reader:
    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def str(self, name: str) -> str | None:
        value = self.env.get(name, "").strip()
        return value or None

    def path(self, name: str) -> Path | None:
        value = self.str(name)
        return Path(value) if value else None

    def csv(self, name: str) -> tuple[str, ...]:
        return tuple(part.strip() for part in self.env.get(name, "").split(",") if part.strip())

    def flag(self, name: str) -> bool:
        value = self.env.get(name, "").strip().lower()
        if value in ("", "0", "false", "no", "off"):
            return False
        if value in ("1", "true", "yes", "on"):
            return True
        raise SettingsError(f"{name}: {value!r} is not a boolean (1/0, true/false)")

    def int(self, name: str, default: int, minimum: int, maximum: int, unit: str) -> int:
        raw = self.env.get(name, "").strip()
        if not raw:
            return default
        expected = f"an integer number of {unit} from {minimum} to {maximum}"
        try:
            value = int(raw)
        except ValueError:
            raise SettingsError(f"{name}: {raw!r} is not {expected}") from None
        if not minimum <= value <= maximum:
            raise SettingsError(f"{name}: must be {expected}, got {value}")
        return value

    def thresholds(self, name: str, default: tuple[int, int, int] | None) -> tuple[int, int, int] | None:
        """Three garbage collector thresholds `N,N,N` (1 to 10000000), or `python` for Python's own."""
        raw = self.env.get(name, "").strip()
        if not raw:
            return default
        if raw.lower() == "python":
            return None
        expected = "three integers from 1 to 10000000 (generation 0,1,2), e.g. 10000,10,10, or python"
        parts = [part.strip() for part in raw.split(",")]
        if len(parts) != 3 or not all(part.isascii() and part.isdigit() for part in parts):
            raise SettingsError(f"{name}: {raw!r} is not {expected}")
        first, second, third = (int(part) for part in parts)
        if not all(1 <= value <= 10**7 for value in (first, second, third)):
            raise SettingsError(f"{name}: must be {expected}, got {raw}")
        return first, second, third

    def float(
        self, name: str, default: float, *, minimum: float = 0, maximum: float = DAY, unit: str = "seconds"
    ) -> float:
        """A number in `unit`; a `minimum` of 0 excludes 0 itself (a timeout or rate of 0 is never meant)."""
        raw = self.env.get(name, "").strip()
        if not raw:
            return default
        lower = "above 0 up" if minimum == 0 else f"from {_plain(minimum)}"
        expected = f"a number of {unit} {lower} to {_plain(maximum)}"
        try:
            value = float(raw)
        except ValueError:
            raise SettingsError(f"{name}: {raw!r} is not {expected}") from None
        low_ok = value > 0 if minimum == 0 else value >= minimum
        # NaN fails both comparisons.
        if not (low_ok and value <= maximum):
            raise SettingsError(f"{name}: must be {expected}, got {raw}")
        return value


def _plain(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else str(number)


def normalized_origin(origin: str) -> str:
    """An origin as browsers send it: lower case, no default port, no trailing slash."""
    text = origin.strip().lower().rstrip("/")
    if origin_problem(text) is not None:
        return text  # `checked` names what is wrong with it
    parsed = urlparse(text)
    if parsed.port is not None and parsed.port == DEFAULT_PORTS[parsed.scheme]:
        return f"{parsed.scheme}://{parsed.netloc.rsplit(':', 1)[0]}"
    return text


def origin_problem(origin: str) -> str | None:
    """Why `origin` is not a `scheme://host[:port]` origin, or None."""
    if "://" not in origin:
        return "has no scheme: write scheme://host[:port], e.g. https://app.example.com"
    try:
        parsed = urlparse(origin.strip().lower())
        parsed.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        return "has a bad port: write scheme://host[:port], e.g. https://app.example.com"
    if not parsed.scheme or not parsed.netloc:
        return "has no scheme: write scheme://host[:port], e.g. https://app.example.com"
    if parsed.scheme not in DEFAULT_PORTS:
        return f"has scheme {parsed.scheme!r}: browsers send http or https origins (scheme://host[:port])"
    if parsed.path not in ("", "/") or parsed.query or parsed.fragment or parsed.params:
        return "has a path: an origin is scheme://host[:port] only"
    if "@" in parsed.netloc:
        return "has user info: an origin is scheme://host[:port] only"
    return None


def _check_public_key(key: str, algorithms: tuple[str, ...]) -> None:
    """Load JWT_PUBLIC_KEY for every configured algorithm now, not at the first token."""
    if "PRIVATE KEY" in key:
        raise SettingsError("JWT_PUBLIC_KEY: this is a private key; give the server only the public key")
    for name in algorithms:
        try:
            algorithm = jwt.get_algorithm_by_name(name)
        except NotImplementedError:
            raise SettingsError(
                f"JWT_ALGORITHMS: {name} needs the `cryptography` package (pip install -r requirements.txt)"
            ) from None
        try:
            algorithm.prepare_key(key)
        except (jwt.PyJWTError, ValueError, TypeError):
            raise SettingsError(
                f"JWT_PUBLIC_KEY: cannot be loaded as a {name} public key (expected PEM, "
                f"-----BEGIN PUBLIC KEY-----, of the key type JWT_ALGORITHMS={','.join(algorithms)} names)"
            ) from None
