"""Settings: read from the environment, checked at start-up, one clear line on error."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from realtime.settings import DEV_SECRET, SettingsError, from_env

ROOT = Path(__file__).resolve().parent.parent

GOOD = {"JWT_SECRET": "s" * 40}


def test_defaults() -> None:
    settings = from_env(GOOD)
    assert settings.database_url.startswith("sqlite:///")
    assert settings.broker_url == "memory://"
    assert settings.jwt_algorithms == ("HS256",)
    assert settings.dev_mode is False
    assert settings.max_frame_bytes == 65536
    assert settings.max_upload_bytes == 10 * 1024 * 1024


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({}, "JWT_SECRET"),
        ({**GOOD, "MAX_FRAME_BYTES": "lots"}, "MAX_FRAME_BYTES"),
        ({**GOOD, "MAX_FRAME_BYTES": "10"}, "MAX_FRAME_BYTES"),
        ({**GOOD, "DEV_MODE": "maybe"}, "DEV_MODE"),
        ({**GOOD, "JWT_ALGORITHMS": "none"}, "JWT_ALGORITHMS"),
        ({**GOOD, "JWT_ALGORITHMS": "RS256"}, "JWT_ALGORITHMS"),
        ({**GOOD, "DATABASE_URL": "mysql://x"}, "DATABASE_URL"),
        ({**GOOD, "BROKER_URL": "kafka://x"}, "BROKER_URL"),
        ({**GOOD, "WEB_CONCURRENCY": "4"}, "BROKER_URL"),
        ({**GOOD, "AGORA_APP_ID": "x"}, "AGORA_APP_ID"),
        ({**GOOD, "STATUS_INTERVAL": "-1"}, "STATUS_INTERVAL"),
        ({**GOOD, "SOCKET_LEASE": "0"}, "SOCKET_LEASE"),
        ({**GOOD, "SOCKET_LEASE": "soon"}, "SOCKET_LEASE"),
        ({**GOOD, "TOKEN_EXPIRY": "maybe"}, "TOKEN_EXPIRY"),
        ({**GOOD, "LOG_FORMAT": "xml"}, "LOG_FORMAT"),
        ({**GOOD, "DEV_MODE": "1"}, "DEV_MODE"),
        ({**GOOD, "NOTIFICATION_LOCALE": "../ko"}, "NOTIFICATION_LOCALE"),
        ({**GOOD, "PROMETHEUS_MULTIPROC_DIR": "/nonexistent/metrics"}, "PROMETHEUS_MULTIPROC_DIR"),
        ({**GOOD, "CONNECTS_AT_ONCE": "0"}, "CONNECTS_AT_ONCE"),
        ({**GOOD, "CONNECTS_AT_ONCE": "few"}, "CONNECTS_AT_ONCE"),
        ({**GOOD, "GC_THRESHOLDS": "10000"}, "GC_THRESHOLDS"),
        ({**GOOD, "GC_THRESHOLDS": "10000,20,x"}, "GC_THRESHOLDS"),
        ({**GOOD, "GC_THRESHOLDS": "0,20,100"}, "GC_THRESHOLDS"),
        ({**GOOD, "GC_THRESHOLDS": "10000,20,100,5"}, "GC_THRESHOLDS"),
        ({**GOOD, "GC_THRESHOLDS": "-1,20,100"}, "GC_THRESHOLDS"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], names: str) -> None:
    with pytest.raises(SettingsError, match=names):
        from_env(env)


def test_dev_mode_runs_without_a_secret_and_with_a_weak_one() -> None:
    assert from_env({"DEV_MODE": "1"}).jwt_key == DEV_SECRET
    assert from_env({"DEV_MODE": "true", "JWT_SECRET": "short"}).jwt_key == "short"


def test_token_expiry_defaults_to_close_and_ignore_is_still_taken() -> None:
    assert from_env(GOOD).token_expiry == "close"
    assert from_env({**GOOD, "TOKEN_EXPIRY": "IGNORE"}).token_expiry == "ignore"
    assert from_env({**GOOD, "SOCKET_LEASE": "2.5"}).socket_lease == 2.5


def test_gc_thresholds_default_to_50000_10_10_and_take_three_integers_or_python() -> None:
    assert from_env(GOOD).gc_thresholds == (50_000, 10, 10)
    assert from_env({**GOOD, "GC_THRESHOLDS": " 700, 10 ,10 "}).gc_thresholds == (700, 10, 10)
    assert from_env({**GOOD, "GC_THRESHOLDS": "Python"}).gc_thresholds is None


def test_redis_allows_several_workers() -> None:
    assert from_env({**GOOD, "WEB_CONCURRENCY": "4", "BROKER_URL": "redis://127.0.0.1:6379"}).workers == 4


def test_a_bad_setting_stops_uvicorn_with_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "uvicorn", "server:app", "--port", "0"],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "MAX_FRAME_BYTES": "big", "JWT_SECRET": "x" * 40},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("realtime: configuration error: MAX_FRAME_BYTES: 'big'"), lines


# ---- every bad setting, through the real start-up command ---------------------------

PROCFILE = (ROOT / "Procfile").read_text().split(":", 1)[1].strip()


def procfile_command(*extra: str) -> list[str]:
    """The Procfile's command on loopback, with this interpreter's uvicorn."""
    words = shlex.split(PROCFILE.replace("${PORT:-8000}", "0").replace("0.0.0.0", "127.0.0.1"))
    assert words[:2] == ["uvicorn", "server:app"], words
    return [sys.executable, "-m", *words, *extra]


def start_up(env: dict[str, str], tmp_path: Path, *extra: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    full = {"PATH": "/usr/bin:/bin", "JWT_SECRET": "x" * 40, "DATABASE_URL": f"sqlite:///{tmp_path}/s.db", **env}
    return subprocess.run(procfile_command(*extra), cwd=ROOT, env=full, capture_output=True, text=True, timeout=timeout)


def the_one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0, (result.returncode, result.stdout, result.stderr)
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


BAD_SETTINGS = [
    ({"JWT_SECRET": "s3cret"}, "JWT_SECRET", ["32 bytes"]),
    ({"ALLOWED_ORIGINS": "example.com"}, "ALLOWED_ORIGINS", ["scheme://host[:port]", "'example.com'"]),
    ({"ALLOWED_ORIGINS": "https://ok.example,https://example.com/app"}, "ALLOWED_ORIGINS", ["path"]),
    ({"ALLOWED_ORIGINS": "wss://example.com"}, "ALLOWED_ORIGINS", ["http"]),
    ({"LOG_LEVEL": "verbose"}, "LOG_LEVEL", ["debug", "critical"]),
    ({"RATE_LIMIT": "0"}, "RATE_LIMIT", ["frames per second", "1000000"]),
    ({"RATE_LIMIT": "2000000"}, "RATE_LIMIT", ["frames per second", "1000000"]),
    ({"RATE_LIMIT": "fast"}, "RATE_LIMIT", ["frames per second"]),
    ({"RATE_BURST": "0.5"}, "RATE_BURST", ["frames", "1 to 1000000"]),
    ({"WEB_CONCURRENCY": "2"}, "BROKER_URL", ["memory://", "1 worker", "2"]),
    ({"WEB_CONCURRENCY": "0"}, "WEB_CONCURRENCY", ["processes", "1 to"]),
    ({"JWT_MAX_LIFETIME": "0"}, "JWT_MAX_LIFETIME", ["seconds"]),
    ({"JWT_MAX_LIFETIME": "a day"}, "JWT_MAX_LIFETIME", ["seconds"]),
    ({"MAX_FRAME_BYTES": "big"}, "MAX_FRAME_BYTES", ["bytes", "256 to"]),
    ({"STATUS_INTERVAL": "-1"}, "STATUS_INTERVAL", ["seconds", "86400"]),
    ({"JWT_SECRET": "", "JWT_PUBLIC_KEY": "not a key"}, "JWT_PUBLIC_KEY", ["RS256"]),
    ({"TOKEN_GRACE": "nan"}, "TOKEN_GRACE", ["seconds"]),
    ({"NOTIFICATION_LOCALE": "fr"}, "NOTIFICATION_LOCALE", ["'fr'", "en, ko"]),
    # A path under a regular file: the supervisor can neither make nor empty it.
    ({"PROMETHEUS_MULTIPROC_DIR": "/etc/hostname/metrics"}, "PROMETHEUS_MULTIPROC_DIR", ["cannot empty"]),
    ({"GC_THRESHOLDS": "lots"}, "GC_THRESHOLDS", ["three integers", "python"]),
]


@pytest.mark.parametrize(
    ("env", "name", "words"), BAD_SETTINGS, ids=[f"{c[1]}={list(c[0].values())[-1]}" for c in BAD_SETTINGS]
)
def test_each_bad_setting_stops_the_real_command_with_one_line(
    tmp_path: Path, env: dict[str, str], name: str, words: list[str]
) -> None:
    line = the_one_line(start_up(env, tmp_path))
    assert line.startswith(f"realtime: configuration error: {name}"), line
    for word in words:
        assert word in line, (word, line)


def test_a_public_key_of_the_wrong_kind_stops_start_up(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    rsa_only = {"JWT_SECRET": "", "JWT_PUBLIC_KEY": public.decode(), "JWT_ALGORITHMS": "RS256"}
    assert "JWT_PUBLIC_KEY" in the_one_line(start_up(rsa_only, tmp_path))
    leaked = {"JWT_SECRET": "", "JWT_PUBLIC_KEY": private.decode(), "JWT_ALGORITHMS": "ES256"}
    assert "private key" in the_one_line(start_up(leaked, tmp_path))
    # The same public key with its own algorithm is fine.
    good = from_env({"JWT_PUBLIC_KEY": public.decode(), "JWT_ALGORITHMS": "ES256"})
    assert good.jwt_algorithms == ("ES256",)


@pytest.mark.parametrize(("extra", "env"), [(["--workers", "2"], {}), ([], {"WEB_CONCURRENCY": "3"})])
def test_several_workers_on_the_memory_broker_are_refused_before_any_starts(
    tmp_path: Path, extra: list[str], env: dict[str, str]
) -> None:
    line = the_one_line(start_up(env, tmp_path, *extra))
    assert line.startswith("realtime: configuration error: BROKER_URL"), line
    assert "memory://" in line and "1 worker" in line


def test_a_bare_uvicorn_with_workers_on_the_memory_broker_stops_instead_of_restarting(tmp_path: Path) -> None:
    """Without the Procfile's log config uvicorn's supervisor runs none of our code: the
    workers refuse with uvicorn's start-up failure status, which stops the supervisor."""
    env = {"PATH": "/usr/bin:/bin", "JWT_SECRET": "x" * 40, "DATABASE_URL": f"sqlite:///{tmp_path}/s.db"}
    result = subprocess.run(
        [sys.executable, "-m", "uvicorn", "server:app", "--port", "0", "--workers", "2"],
        cwd=ROOT,
        env={**env, "WEB_CONCURRENCY": "2"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.stderr.count("configuration error: BROKER_URL") <= 2, result.stderr
    assert "died" not in result.stderr, result.stderr


def test_the_settings_ranges_take_their_edges() -> None:
    settings = from_env({**GOOD, "RATE_LIMIT": "100000", "RATE_BURST": "1", "JWT_MAX_LIFETIME": "300"})
    assert (settings.rate_limit, settings.rate_burst, settings.jwt_max_lifetime) == (100000, 1, 300)
    origins = from_env(
        {**GOOD, "ALLOWED_ORIGINS": "https://App.Example, http://localhost:3000, https://a.example:443/"}
    )
    assert origins.allowed_origins == ("https://app.example", "http://localhost:3000", "https://a.example")
    assert from_env({**GOOD, "LOG_LEVEL": "WARNING"}).log_level == "warning"
    assert from_env({**GOOD, "JWT_AUDIENCE": "realtime", "JWT_ISSUER": "https://auth.example"}).jwt_audience == (
        "realtime",
    )
