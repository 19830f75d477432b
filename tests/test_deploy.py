"""The deployment files: the Dockerfile's command really serves and stops
gracefully, the image gets every runtime dependency, and the settings tables
agree with `settings.py`."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import tomllib
from fnmatch import fnmatch
from importlib.metadata import packages_distributions
from pathlib import Path

from tests.conftest import SECRET, free_port, token, ws
from tests.procs import Proc, ready

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = (ROOT / "Dockerfile").read_text()
RUNTIME_MODULES = ["server.py", "settings.py", "logconfig.py", "embedding.py", "endpoints", "events", "store"]
RUNTIME_MODULES += ["transport", "supervisor.py"]  # the image's command loads them (--http, logging.json)


def instruction(name: str) -> str:
    """The arguments of a Dockerfile instruction, continuation lines joined."""
    text = DOCKERFILE.replace("\\\n", " ")
    matches = re.findall(rf"^{name}\s+(.+)$", text, re.MULTILINE)
    assert len(matches) == 1, (name, matches)
    return matches[0]


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_the_image_is_slim_and_runs_as_a_user() -> None:
    assert instruction("FROM") == "python:3.11-slim"
    assert instruction("USER") not in ("root", "0")


def test_the_build_context_leaves_out_local_build_output() -> None:
    """`COPY . .` takes the checkout as it is: a local `npm ci` or client build must not ride along."""
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    patterns = [p for p in patterns if p and not p.startswith("#")]
    for path in ("clients/js/node_modules", "node_modules", "clients/js/dist"):
        assert any(fnmatch(path, pattern) for pattern in patterns), path


def test_the_image_installs_every_distribution_the_server_imports() -> None:
    # The Dockerfile installs requirements.txt up to the tests' section.
    requirements = (ROOT / "requirements.txt").read_text()
    assert re.search(r"sed '/\^# Tests and checks/,\$d' requirements.txt", DOCKERFILE)
    runtime_part = requirements.split("# Tests and checks", 1)[0]
    installed = {normalized(line.split("==")[0]) for line in runtime_part.splitlines() if "==" in line}
    imported: set[str] = set()
    for path in runtime_files():
        imported |= set(re.findall(r"^\s*(?:from|import) (\w+)", path.read_text(), re.MULTILINE))
    distributions = packages_distributions()
    third_party = {normalized(d) for name in imported for d in distributions.get(name, [])}
    assert third_party, imported
    # click: supervisor.py reads uvicorn's command line, and uvicorn brings it.
    assert third_party - {"click"} <= installed, third_party - installed


def runtime_files() -> list[Path]:
    files = [p for entry in RUNTIME_MODULES for p in sorted((ROOT / entry).rglob("*.py") if "." not in entry else [])]
    return files + [ROOT / entry for entry in RUNTIME_MODULES if entry.endswith(".py")]


def test_the_package_declares_every_distribution_the_server_imports() -> None:
    """`pip install` of the package brings what its modules import (asyncpg is the `postgres` extra)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = [*project["dependencies"], *project["optional-dependencies"]["postgres"]]
    names = {normalized(re.split(r"[\[<>=~!; ]", d, maxsplit=1)[0]) for d in declared}
    imported: set[str] = set()
    for path in runtime_files():
        imported |= set(re.findall(r"^\s*(?:from|import) (\w+)", path.read_text(), re.MULTILINE))
    distributions = packages_distributions()
    third_party = {normalized(d) for name in imported for d in distributions.get(name, [])}
    # PyJWT's RS*/ES* keys need cryptography, which its `crypto` extra brings.
    assert third_party - {"cryptography", "click"} <= names, third_party - names


def start_image_command(tmp_path: Path) -> tuple[Proc, dict[str, str]]:
    command = json.loads(instruction("CMD"))
    port = free_port()
    env = {
        **os.environ,
        # The image's environment, with this machine's paths.
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "PORT": str(port),
        "DATABASE_URL": f"sqlite:///{tmp_path}/realtime.db",
        "UPLOAD_DIR": str(tmp_path / "uploads"),
        "JWT_SECRET": SECRET,
    }
    log = tmp_path / "image.log"
    with log.open("wb") as out:
        popen = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    return Proc(port, popen, log), env


async def test_the_dockerfile_command_serves_answers_its_healthcheck_and_drains_on_sigterm(tmp_path: Path) -> None:
    proc, env = start_image_command(tmp_path)
    try:
        await ready(proc)
        healthcheck = instruction("HEALTHCHECK").split(" CMD ", 1)[1]
        check = await asyncio.create_subprocess_exec("sh", "-c", healthcheck, env=env)
        assert await asyncio.wait_for(check.wait(), 10) == 0
        async with (
            ws(proc.ws_url("/ws/notifications/", token=token(1), resume=1)) as resuming,
            ws(proc.ws_url("/ws/notifications/", token=token(2))) as plain,
        ):
            for client in (resuming, plain):
                await client.expect("bulk_update")
            # `exec`: the signal reaches uvicorn itself, not a shell that would ignore it;
            # the drain chained onto uvicorn's handler runs under this command line too.
            proc.terminate()
            assert await resuming.closed(timeout=10) == 1012
            assert await plain.closed(timeout=10) == 1006
        assert proc.wait(15) in (0, -signal.SIGTERM)
    finally:
        proc.kill()
    assert "Application shutdown complete" in proc.output()


def test_the_readme_settings_agree_with_the_generated_table() -> None:
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        import generate
    finally:
        sys.path.remove(str(ROOT / "docs"))
    table = {}
    for row in generate.settings_table().splitlines()[2:]:
        name, default, _ = (cell.strip() for cell in row.strip("|").split("|"))
        table[name.strip("`")] = default
    deploy = (ROOT / "docs" / "deploy.md").read_text()
    assert generate.settings_table() in deploy
    readme = (ROOT / "README.md").read_text()
    rows = re.findall(r"^\| (`[A-Z_]+`(?:, `[A-Z_]+`)*) \| ([^|]*) \|", readme, re.MULTILINE)
    assert rows
    for names, default in rows:
        variables = re.findall(r"`([A-Z_]+)`", names)
        for variable in variables:
            assert variable in table, f"README names {variable}, which the server does not read"
        if len(variables) == 1 and default.strip():
            assert default.strip() == table[variables[0]], (variables[0], default, table[variables[0]])
