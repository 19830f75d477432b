"""compose.yaml: two server replicas from the Dockerfile, Redis and PostgreSQL.

The file is checked here as compose reads it (YAML, then `${VAR}`
interpolation from the environment), and again through `docker compose config`
where that plugin is installed, or else through docker-compose 1.29's `config`
(the compose specification's JSON schema; .ci/run installs it when the plugin
is missing); it is run for real (build, start, a message from one replica to
the other) only where a docker daemon answers, and skipped otherwise, in CI
too, since a CI machine need not have one.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest
import yaml

from realtime.settings import from_env
from tests.conftest import SECRET, SERVICE_KEY, token, ws

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "compose.yaml"
REPLICAS = 2
IMAGE_PORT = 8000  # the Dockerfile's PORT
REQUIRED = ("JWT_SECRET", "SERVICE_KEY", "POSTGRES_PASSWORD")
ENV = {"JWT_SECRET": SECRET, "SERVICE_KEY": SERVICE_KEY, "POSTGRES_PASSWORD": "pg-password-for-tests"}
VARIABLE = re.compile(r"\$(?:\$|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))")


class Unset(Exception):
    """A `${VAR:?message}` whose variable is not set: compose refuses the file."""


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's `$VAR`, `${VAR}`, `${VAR:-default}`, `${VAR:?error}`, `${VAR:+other}` and `$$`."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1) or match.group(4)
        operator, argument = match.group(2), match.group(3) or ""
        present = name in env and (env[name] != "" or not (operator or "").startswith(":"))
        if operator in ("-", ":-"):
            return env[name] if present else argument
        if operator in ("?", ":?"):
            if not present:
                raise Unset(f"{name}: {argument}")
            return env[name]
        if operator in ("+", ":+"):
            return argument if present else ""
        return env.get(name, "")

    return VARIABLE.sub(one, value)


def read_compose(env: dict[str, str]) -> dict[str, Any]:
    return interpolate(yaml.safe_load(COMPOSE.read_text()), env)


def environment(service: dict[str, Any]) -> dict[str, str]:
    raw = service.get("environment", {})
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)
    return {key: "" if value is None else str(value) for key, value in raw.items()}


def published_ports(service: dict[str, Any]) -> list[int]:
    """The host ports a service's replicas take, with the container port each maps to checked."""
    ports = []
    for entry in service.get("ports", []):
        if isinstance(entry, str):
            published, target = entry.rsplit(":", 1)
        else:
            published, target = str(entry["published"]), str(entry["target"])
        assert int(target) == IMAGE_PORT, entry
        first, _, last = published.partition("-")
        ports += list(range(int(first), int(last or first) + 1))
    return ports


def conditions(service: dict[str, Any]) -> dict[str, str]:
    depends = service.get("depends_on", {})
    if isinstance(depends, list):
        return dict.fromkeys(depends, "service_started")
    return {name: (spec or {}).get("condition", "service_started") for name, spec in depends.items()}


def check_model(model: dict[str, Any]) -> None:
    """What the deployment needs of the file, on compose's model of it (ours or `docker compose config`'s)."""
    services = model["services"]
    assert {"server", "redis", "postgres"} <= set(services), services.keys()
    server, postgres = services["server"], services["postgres"]

    build = server["build"]
    context = Path(build if isinstance(build, str) else build.get("context", "."))
    context = context if context.is_absolute() else COMPOSE.parent / context
    assert context.resolve() == ROOT and (context / "Dockerfile").is_file()
    assert server["deploy"]["replicas"] == REPLICAS
    assert len(published_ports(server)) == REPLICAS, server["ports"]

    for name, service in services.items():
        test = service.get("healthcheck", {}).get("test")
        assert test and test != ["NONE"] and not service["healthcheck"].get("disable"), name
    assert any("/readyz" in part or "/healthz" in part for part in server["healthcheck"]["test"])
    assert conditions(server) == {"redis": "service_healthy", "postgres": "service_healthy"}

    env = environment(server)
    broker = urlparse(env["BROKER_URL"])
    assert broker.scheme == "redis" and broker.hostname == "redis"
    database = urlparse(env["DATABASE_URL"])
    assert database.scheme == "postgresql" and database.hostname == "postgres"
    pg_env = environment(postgres)
    assert database.username == pg_env["POSTGRES_USER"]
    assert database.password == pg_env["POSTGRES_PASSWORD"] == ENV["POSTGRES_PASSWORD"]
    assert database.path == "/" + pg_env["POSTGRES_DB"]
    # The secrets come from the environment compose runs in, never from the file.
    assert env["JWT_SECRET"] == ENV["JWT_SECRET"] and env["SERVICE_KEY"] == ENV["SERVICE_KEY"]
    # And the server takes the whole of it: no bad setting, Redis for more than one process.
    settings = from_env(env)
    assert settings.broker_url.startswith("redis://") and settings.service_key == SERVICE_KEY


def test_the_compose_file_runs_two_replicas_on_redis_and_postgres() -> None:
    check_model(read_compose(ENV))


@pytest.mark.parametrize("missing", REQUIRED)
def test_each_secret_must_come_from_the_environment(missing: str) -> None:
    env = {k: v for k, v in ENV.items() if k != missing}
    with pytest.raises(Unset, match=missing):
        read_compose(env)
    # Set but empty is as good as missing (`:?`).
    with pytest.raises(Unset, match=missing):
        read_compose({**env, missing: ""})


def test_the_interpolation_follows_compose() -> None:
    env = {"SET": "x", "EMPTY": ""}
    assert interpolate("$SET ${SET} ${UNSET:-d} ${EMPTY:-d} ${EMPTY-d} ${SET:+y} ${UNSET:+y} $$SET", env) == (
        "x x d d  y  $SET"
    )
    with pytest.raises(Unset, match="EMPTY: why"):
        interpolate("${EMPTY:?why}", env)
    assert interpolate("${EMPTY?why}", env) == ""


# ---- docker itself, where this machine has it ----------------------------------------


def docker(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def compose_missing() -> str | None:
    if shutil.which("docker") is None:
        return "docker is not installed"
    if docker("compose", "version").returncode != 0:
        return "docker compose (the v2 plugin) is not installed: `docker compose version` fails"
    return None


def daemon_missing() -> str | None:
    missing = compose_missing()
    if missing is not None:
        return missing
    info = docker("info", "--format", "{{.ServerVersion}}")
    if info.returncode != 0:
        return f"the docker daemon does not answer (`docker info`: {info.stderr.strip().splitlines()[-1:]})"
    return None


def test_docker_compose_config_reads_it_the_same_way() -> None:
    missing = compose_missing()
    if missing is not None:
        pytest.skip(missing)
    result = docker("compose", "-f", str(COMPOSE), "config", "--format", "json", env=ENV)
    assert result.returncode == 0, result.stderr
    check_model(json.loads(result.stdout))
    refused = docker("compose", "-f", str(COMPOSE), "config", env={**ENV, "JWT_SECRET": ""})
    assert refused.returncode != 0 and "JWT_SECRET" in refused.stderr


def test_docker_compose_v1_validates_it_against_its_compose_spec_schema(tmp_path: Path) -> None:
    """Where only docker-compose 1.29 is installed (Debian's, which .ci/run installs
    when the v2 plugin is missing): it validates the file against the compose
    specification's JSON schema and interpolates it as v2 does. Its schema
    predates the top-level `name:`, so the file goes in without that line and the
    project name goes by `-p`."""
    if shutil.which("docker-compose") is None:
        pytest.skip("docker-compose is not installed")
    text = COMPOSE.read_text()
    assert re.search(r"^name: realtime$", text, re.MULTILINE)
    copy = tmp_path / "compose.yaml"
    copy.write_text(re.sub(r"^name: .*\n", "", text, flags=re.MULTILINE))

    def config(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        command = ["docker-compose", "-f", str(copy), "--project-directory", str(ROOT), "-p", "realtime", "config"]
        return subprocess.run(
            command, env={"PATH": os.environ["PATH"], **env}, capture_output=True, text=True, timeout=60
        )

    result = config(ENV)
    assert result.returncode == 0, result.stderr
    check_model(yaml.safe_load(result.stdout))
    # A service key the schema does not know is refused: the schema is in effect.
    copy.write_text(
        copy.read_text().replace("    stop_grace_period: 30s", "    stop_grace_period: 30s\n    no_such_key: 1")
    )
    wrong = config(ENV)
    assert wrong.returncode != 0 and "no_such_key" in wrong.stderr, wrong.stderr
    copy.write_text(re.sub(r"^name: .*\n", "", text, flags=re.MULTILINE))
    for missing in REQUIRED:
        refused = config({**ENV, missing: ""})
        assert refused.returncode != 0 and missing in refused.stderr, refused.stderr


def free_pair() -> int:
    """The first of two consecutive free ports."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            first = s.getsockname()[1]
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", first + 1))
            except OSError:
                continue
        return int(first)
    raise AssertionError("no two consecutive free ports")


async def until_ready(base: str, timeout: float = 120) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    async with httpx.AsyncClient() as client:
        while True:
            try:
                if (await client.get(f"{base}/readyz")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert asyncio.get_running_loop().time() < deadline, f"{base} not ready"
            await asyncio.sleep(1)


@pytest.mark.timeout(1200)
async def test_the_stack_runs_and_a_message_crosses_the_replicas() -> None:
    missing = daemon_missing()
    if missing is not None:
        pytest.skip(missing)
    first = free_pair()
    project = f"realtime-test-{secrets.token_hex(4)}"
    env = {**ENV, "POSTGRES_PASSWORD": secrets.token_hex(16), "REALTIME_PORTS": f"{first}-{first + 1}"}
    up = docker(
        "compose", "-p", project, "up", "-d", "--build", "--wait", "--wait-timeout", "600", env=env, timeout=900
    )
    try:
        assert up.returncode == 0, up.stderr
        bases = [f"http://127.0.0.1:{port}" for port in (first, first + 1)]
        for base in bases:
            await until_ready(base)
        headers = {"Authorization": f"Bearer {SERVICE_KEY}"}
        async with httpx.AsyncClient(base_url=bases[0], headers=headers) as api:
            created = await api.post("/api/rooms", json={"id": "compose", "member_ids": [1, 2]})
            assert created.status_code == 201, created.text
        urls = [f"ws://127.0.0.1:{port}/ws/chat/compose/" for port in (first, first + 1)]
        async with ws(f"{urls[0]}?token={token(1)}") as one, ws(f"{urls[1]}?token={token(2)}") as two:
            await one.expect("message_history")
            await two.expect("message_history")
            await one.send({"type": "chat_message", "content": "across replicas"})
            assert (await two.expect("chat_message", timeout=10))["message"]["content"] == "across replicas"
        async with httpx.AsyncClient() as client:
            for base in bases:
                metrics = await client.get(f"{base}/metrics")
                assert metrics.status_code == 200 and "realtime_broker_up 1.0" in metrics.text
    finally:
        docker("compose", "-p", project, "down", "-v", "--remove-orphans", env=env, timeout=300)
