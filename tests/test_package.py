"""The package: built from this checkout and installed into a fresh virtual
environment, beside a host app whose own modules are named `settings`,
`events`, `store` and `server`. The host imports the project as `realtime`
(no `sys.path` edits), mounts it, makes a room from Python, and two members
chat through the mounted app. `pip install git+…` builds the same package."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import IN_CI, SECRET, free_port, token, ws

ROOT = Path(__file__).resolve().parent.parent
# What a build must not see: the checkout's environments, caches and outputs.
NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", "node_modules", "__pycache__", "*.db", "*.db-*", "build", "*.egg-info", "artifacts", "dist"
)
INSTALL_TIMEOUT = 600

pytestmark = pytest.mark.timeout(INSTALL_TIMEOUT + 120)

HOST_MODULES = {
    # The host's own modules, named as ours are at the top of the checkout.
    "settings.py": 'GREETING = "the host settings"\n',
    "events.py": 'def describe() -> str:\n    return "the host events"\n',
    "store.py": "ORDERS: dict[str, str] = {}\n",
    "server.py": textwrap.dedent(
        '''
        """The host app: its own settings, events and store, and the realtime server under /realtime."""
        from contextlib import asynccontextmanager

        import events
        import settings
        import store
        from starlette.applications import Starlette
        from starlette.middleware import Middleware
        from starlette.middleware.gzip import GZipMiddleware
        from starlette.responses import JSONResponse
        from starlette.routing import Mount, Route

        import realtime
        from realtime.embedding import Realtime
        from realtime.settings import from_env
        from realtime.transport import raw_send

        chat = Realtime(from_env())


        async def where(request):
            return JSONResponse(
                {
                    "realtime": realtime.__path__[0],
                    "settings": settings.GREETING,
                    "events": events.describe(),
                    "store": type(store.ORDERS).__name__,
                }
            )


        async def book(request):
            data = await request.json()
            for user_id, name in data["members"].items():
                await chat.put_user(int(user_id), name)
            room = await chat.create_room([int(u) for u in data["members"]], room_id=data["room_id"])
            store.ORDERS[room["id"]] = "booked"
            return JSONResponse({"room": room}, status_code=201)


        @asynccontextmanager
        async def lifespan(app):
            async with chat.lifespan():
                yield


        app = raw_send(
            Starlette(
                routes=[
                    Route("/where", where),
                    Route("/book", book, methods=["POST"]),
                    Mount("/realtime", app=chat.app),
                ],
                middleware=[Middleware(GZipMiddleware)],
                lifespan=lifespan,
            )
        )
        '''
    ),
}


def run(*args: str | Path, cwd: Path | None = None) -> str:
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=INSTALL_TIMEOUT, check=False
    )
    assert done.returncode == 0, f"{args}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh virtual environment with the package installed from a copy of this checkout."""
    base = tmp_path_factory.mktemp("package")
    source = base / "source"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCE)
    env_dir = base / "venv"
    run(sys.executable, "-m", "venv", env_dir)
    python = env_dir / "bin" / "python"
    try:
        run(python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", source)
    except AssertionError as exc:
        if IN_CI or "Could not find a version" not in str(exc):
            raise
        pytest.skip(f"no package index to install the dependencies from: {exc}")
    yield python


def test_the_installed_package_holds_its_data_and_no_checkout_files(venv: Path) -> None:
    listing = run(
        venv,
        "-c",
        textwrap.dedent(
            """
            import importlib.resources, realtime
            root = importlib.resources.files("realtime")
            for name in ("schema.sql", "logging.json", "static/index.html", "docs/PROTOCOL.md",
                         "docs/asyncapi.json", "server.py", "events/node/node.py", "py.typed"):
                assert root.joinpath(name).is_file(), name
            for name in ("tests", "bench", "examples", "realtime", ".ci"):
                assert not root.joinpath(name).exists(), name
            print(realtime.__path__[0])
            """
        ),
        cwd=venv.parent,
    )
    assert "site-packages" in listing


def test_a_host_with_colliding_module_names_mounts_it_and_chats(venv: Path, tmp_path: Path) -> None:
    host = tmp_path / "host"
    host.mkdir()
    for name, text in HOST_MODULES.items():
        (host / name).write_text(text)
    port = free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("PYTHONPATH", "VIRTUAL_ENV") and not key.startswith("PYTEST")
    }
    env |= {
        "JWT_SECRET": SECRET,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'host.db'}",
        "PYTHONUNBUFFERED": "1",
    }
    log = (tmp_path / "host.log").open("wb")
    command = [str(venv), "-m", "uvicorn", "server:app", "--port", str(port), "--ws", "websockets-sansio"]
    process = subprocess.Popen(command, cwd=host, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        asyncio.run(chat_through_the_host(port, process, (tmp_path / "host.log").read_text))
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(15)


async def chat_through_the_host(port: int, process: subprocess.Popen[bytes], output: Callable[[], str]) -> None:
    base = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(base_url=base) as client:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, output()
            try:
                if (await client.get("/realtime/readyz")).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, output()
            await asyncio.sleep(0.2)
        where = (await client.get("/where")).json()
        assert "site-packages" in where["realtime"], where
        assert where["settings"] == "the host settings" and where["events"] == "the host events"
        booked = await client.post("/book", json={"room_id": "order-7", "members": {"1": "Dr. Kim", "2": "Minji"}})
        assert booked.status_code == 201, booked.text
    url = f"ws://127.0.0.1:{port}/realtime/ws/chat/order-7/"
    async with ws(f"{url}?token={token(1)}") as kim, ws(f"{url}?token={token(2)}") as minji:
        await kim.expect("message_history")
        await minji.expect("message_history")
        await kim.send({"type": "chat_message", "content": "hello through the host"})
        got = await minji.expect("chat_message")
        assert got["message"]["content"] == "hello through the host"
        assert got["message"]["sender"]["name"] == "Dr. Kim"


def test_pip_install_from_git_builds_the_same_package(venv: Path, tmp_path: Path) -> None:
    """`pip install git+…` of a commit: a wheel with the package's modules and data."""
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    repo = tmp_path / "repo"
    run("git", "clone", "--quiet", "--no-local", ROOT, repo)
    run(venv, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", tmp_path / "wheels", f"git+file://{repo}")
    [wheel] = (tmp_path / "wheels").glob("realtime-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in ("realtime/server.py", "realtime/schema.sql", "realtime/static/index.html", "realtime/store/db.py"):
        assert name in names, name
    assert not any(n.startswith(("realtime/tests/", "realtime/realtime/", "tests/")) for n in names)
