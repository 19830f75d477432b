"""Settings: read from the environment, checked at start-up, one clear line on error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from settings import DEV_SECRET, SettingsError, from_env

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
    assert lines == ["realtime: configuration error: MAX_FRAME_BYTES: 'big' is not an integer"]
