"""Run scenarios against targets, each on a fresh server pinned to core 0 with
the load pinned to core 1, and append every result line to bench/out/results.jsonl.

    python -m bench.run --targets project,bare --scenarios fanout,latency [--quick] [--profile]

Targets: project, project-redis (this server; SQLite; memory:// or Redis
broker), bare (bench/peers/bare.py), channels-memory, channels-redis,
channels-redis-pubsub (bench/peers/channels_peer.py under uvicorn).
Named only, never in `all`: project-plain (the uvicorn fast path off),
project-hosted (mounted in examples/embed.py's host app, under
`transport.raw_send`), project-hosted-bare (mounted, without it),
project-redis-w2 (`uvicorn --workers 2` on Redis, on both cores),
project-base (the project at `--base REV`), uvicorn-bare (bench/peers/uvicorn_bare.py:
a bare ASGI app under the project's uvicorn flags).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import secrets
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bench.load import SCENARIOS, raise_fd_limit
from bench.target import JWT_SECRET

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
OUT = BENCH / "out"
SERVICE_KEY = "bench-service-key"
REDIS_URL = "redis://127.0.0.1:6379/15"
SERVER_CORE, LOAD_CORE = 0, 1
# Every server on the standard asyncio loop, as requirements.txt installs it
# (uvicorn would pick uvloop on its own where the load's uvloop is installed).
UVICORN_FLAGS = ["--host", "127.0.0.1", "--loop", "asyncio", "--ws", "websockets-sansio", "--ws-max-size", "262144"]
UVICORN_FLAGS += ["--log-level", "warning"]
# The project's per-socket frame limit (20/s) is an abuse guard; the scenarios
# measure capacity, so it is raised for them (`--server-env` puts it back).
PROJECT_ENV = {"RATE_LIMIT": "10000", "RATE_BURST": "10000"}
LOG_KEEP = 256 * 1024
TARGETS = [
    "project",
    "project-redis",
    "bare",
    "channels-memory",
    "channels-redis",
    "channels-redis-pubsub",
]
# Variants of `project` (see PROJECT_APPS and WORKERS): named only, never in `all`.
TRANSPORT_TARGETS = [
    "project-plain",
    "project-hosted",
    "project-hosted-bare",
    "project-redis-w2",
    "project-base",
    "uvicorn-bare",
]
SCENARIO_TIMEOUT = 600


@dataclass
class Server:
    target: str
    process: subprocess.Popen[bytes]
    port: int
    db: Path | None
    log: Path
    # What started it, to start it again (`restart`).
    argv: list[str] | None = None
    env: dict[str, str] | None = None
    pin: Callable[[], None] | None = None
    cwd: Path = ROOT

    @property
    def pid(self) -> int:
        return self.process.pid

    def restart(self) -> float:
        """SIGTERM (the graceful drain), wait for the exit, start the same command on the
        same port and database; returns the seconds the old process took to exit."""
        assert self.argv is not None, "started without its command"
        began = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        exited = time.monotonic() - began
        with self.log.open("ab") as sink:
            sink.write(b"---- restart ----\n")
            self.process = subprocess.Popen(
                self.argv, cwd=self.cwd, env=self.env, stdout=sink, stderr=subprocess.STDOUT, preexec_fn=self.pin
            )
        wait_ready(self)
        return exited


def peers_python() -> Path:
    for candidate in (BENCH / ".venv-peers/bin/python", Path("/tmp/vpeers/bin/python")):
        if candidate.exists():
            return candidate
    raise SystemExit(
        "no peer virtualenv: python3 -m venv bench/.venv-peers && "
        "bench/.venv-peers/bin/pip install -r bench/peers/requirements.txt"
    )


def pinned(argv: list[str], core: int | tuple[int, ...]) -> tuple[list[str], Callable[[], None] | None]:
    """`taskset -c CORE argv`, or the same through sched_setaffinity where taskset is missing."""
    cores = (core,) if isinstance(core, int) else core
    if shutil.which("taskset"):
        return ["taskset", "-c", ",".join(map(str, cores)), *argv], None
    return argv, lambda: os.sched_setaffinity(0, set(cores))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# The project's targets and the app uvicorn serves for each: `project-plain` with the uvicorn fast
# path off (bench/transports.py), `project-hosted` mounted in examples/embed.py's host app under
# `transport.raw_send`, `project-hosted-bare` mounted without it (the fast path then off too).
PROJECT_APPS = {
    "project": "server:app",
    "project-redis": "server:app",
    "project-plain": "bench.transports:plain",
    "project-hosted": "examples.embed:app",
    "project-hosted-bare": "examples.embed:bare",
    "project-redis-w2": "server:app",
    "project-base": "server:app",
}
# uvicorn --workers N on the Redis broker (named only, never in `all`). The workers run on
# both cores, the load still on core 1: see "Workers" in bench/README.md for what that can tell.
WORKERS = {"project-redis-w2": 2}
REDIS_TARGETS = ("project-redis", "project-redis-w2", "channels-redis", "channels-redis-pubsub")


def server_cores(target: str) -> int | tuple[int, ...]:
    return (SERVER_CORE, LOAD_CORE) if target in WORKERS else SERVER_CORE


# Where the realtime app is in the host app.
PREFIX = {"project-hosted": "/realtime", "project-hosted-bare": "/realtime"}


def command(target: str, port: int, tmp: Path, extra: dict[str, str]) -> tuple[list[str], dict[str, str], Path | None]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **extra}
    if target in PROJECT_APPS:
        db = tmp / "bench.db"
        env = {**PROJECT_ENV, **env}
        env.update(
            JWT_SECRET=JWT_SECRET,
            SERVICE_KEY=SERVICE_KEY,
            DATABASE_URL=f"sqlite:///{db}",
            BROKER_URL=REDIS_URL if target in REDIS_TARGETS else "memory://",
            LOG_LEVEL="warning",
        )
        app = PROJECT_APPS[target]
        argv = [sys.executable, "-m", "uvicorn", app, "--port", str(port), *UVICORN_FLAGS]
        if target in WORKERS:
            argv += ["--workers", str(WORKERS[target])]
        return argv, env, db
    if target == "bare":
        return [sys.executable, str(BENCH / "peers/bare.py"), "--port", str(port)], env, None
    if target == "uvicorn-bare":
        argv = [sys.executable, "-m", "uvicorn", "uvicorn_bare:app", "--app-dir", str(BENCH / "peers")]
        return [*argv, "--port", str(port), *UVICORN_FLAGS], env, None
    layer = {"channels-memory": "memory", "channels-redis": "redis", "channels-redis-pubsub": "pubsub"}[target]
    env.update(CHANNEL_LAYER=layer, REDIS_URL=REDIS_URL)
    argv = [str(peers_python()), "-m", "uvicorn", "channels_peer:application", "--app-dir", str(BENCH / "peers")]
    return [*argv, "--port", str(port), *UVICORN_FLAGS, "--lifespan", "off"], env, None


def redis_up() -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", 6379), timeout=1):
        return True
    return False


def base_tree(rev: str) -> Path:
    """`git archive REV` of this repository, exported once under bench/out/ (the `project-base` target)."""
    full = subprocess.run(["git", "rev-parse", rev], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    tree = OUT / f"base-{full.strip()[:12]}"
    if not (tree / "server.py").exists():
        tree.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "archive", rev], cwd=ROOT, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


@contextlib.contextmanager
def server(target: str, tag: str, extra: dict[str, str], base: Path | None = None) -> Iterator[Server]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-"))
    port = free_port()
    argv, env, db = command(target, port, tmp, extra)
    argv, pin = pinned(argv, server_cores(target))
    cwd = ROOT
    if target == "project-base":
        if base is None:
            raise RuntimeError("project-base needs --base REV")
        cwd = base
    log = OUT / f"server-{tag}.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(argv, cwd=cwd, env=env, stdout=sink, stderr=subprocess.STDOUT, preexec_fn=pin)
    running = Server(target, process, port, db, log, argv, env, pin, cwd)
    try:
        wait_ready(running)
        if target in WORKERS:
            wait_workers(running)
        yield running
    finally:
        stop(running.process)
        shutil.rmtree(tmp, ignore_errors=True)
        trim(log)


def trim(log: Path) -> None:
    """Drop an empty log; keep the end of a long one (a peer may log a traceback per socket)."""
    size = log.stat().st_size
    if size == 0:
        log.unlink()
    elif size > LOG_KEEP:
        with log.open("rb") as f:
            f.seek(size - LOG_KEEP)
            kept = f.read()
        log.write_bytes(b"[... %d bytes cut ...]\n" % (size - LOG_KEEP) + kept)


def wait_ready(s: Server, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if s.process.poll() is not None:
            raise RuntimeError(f"{s.target} exited with {s.process.returncode}: {tail(s.log)}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", s.port), timeout=0.5):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{s.target} did not listen within {timeout}s: {tail(s.log)}")


def wait_workers(s: Server, timeout: float = 30.0) -> None:
    """With --workers the supervisor listens before its workers run: wait until
    /readyz has answered 200 several times in a row (from whichever worker took it)."""
    deadline = time.monotonic() + timeout
    streak = 0
    while time.monotonic() < deadline and streak < 6:
        try:
            with socket.create_connection(("127.0.0.1", s.port), timeout=2) as conn:
                conn.sendall(b"GET /readyz HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
                ok = conn.recv(64).startswith(b"HTTP/1.1 200")
        except OSError:
            ok = False
        streak = streak + 1 if ok else 0
        time.sleep(0.2)
    if streak < 6:
        raise RuntimeError(f"{s.target}: its workers were not ready within {timeout}s: {tail(s.log)}")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def tail(path: Path, chars: int = 800) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def profiler(s: Server, tag: str, fmt: str, rate: int) -> subprocess.Popen[bytes] | None:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        print("py-spy not found: pip install -r bench/requirements.txt", file=sys.stderr)
        return None
    suffix = {"raw": "txt", "flamegraph": "svg", "speedscope": "json"}[fmt]
    argv = [spy, "record", "--pid", str(s.pid), "--rate", str(rate), "--gil", "--nonblocking", "--format", fmt]
    argv, pin = pinned([*argv, "-o", str(OUT / f"prof-{tag}.{suffix}")], LOAD_CORE)
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=pin)
    time.sleep(0.5)  # attached before the load starts
    return process


def run_one(target: str, scenario: str, args: argparse.Namespace, run_id: str) -> dict[str, object]:
    tag = f"{run_id}-{target}-{scenario}"
    meta: dict[str, object] = {
        "run": run_id,
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "loadavg_before": [round(x, 2) for x in os.getloadavg()],
        "profiled": args.profile,
        "git": args.git,
    }
    kind, extra = args.variants.get(target, (target, {}))
    if kind in REDIS_TARGETS and not redis_up():
        return {"scenario": scenario, "target": target, "error": "redis is not running on 127.0.0.1:6379", **meta}
    try:
        with server(kind, tag, {**args.server_env, **extra}, args.base_tree) as s:
            base = f"127.0.0.1:{s.port}{PREFIX.get(kind, '')}"
            argv = [sys.executable, "-m", "bench.load", scenario, "--ws", f"ws://{base}"]
            argv += ["--pid", str(s.pid), "--target", target, *args.load_args]
            if s.db is not None:
                argv += ["--api", f"http://{base}", "--service-key", SERVICE_KEY, "--db", str(s.db)]
            if args.quick:
                argv.append("--quick")
            spies = [profiler(s, tag, args.profile_format, args.profile_rate)] if args.profile else []
            argv, pin = pinned(argv, LOAD_CORE)
            try:
                lines, stderr = drive(argv, pin, s, tag, args, spies)
            finally:
                for spy in spies:
                    if spy is not None:
                        spy.send_signal(signal.SIGINT)
                        with contextlib.suppress(subprocess.TimeoutExpired):
                            spy.wait(30)
            if not lines:
                return {"scenario": scenario, "target": target, "error": f"no result: {stderr[-800:]}", **meta}
            result = json.loads(lines[-1])
            if s.process.poll() is not None:
                result["server_exit"] = s.process.returncode
                result["server_log"] = tail(s.log)
            return {**result, **meta}
    except subprocess.TimeoutExpired:
        return {"scenario": scenario, "target": target, "error": f"over {SCENARIO_TIMEOUT}s", **meta}
    except RuntimeError as exc:
        return {"scenario": scenario, "target": target, "error": str(exc), **meta}


def drive(
    argv: list[str],
    pin: Callable[[], None] | None,
    s: Server,
    tag: str,
    args: argparse.Namespace,
    spies: list[subprocess.Popen[bytes] | None],
) -> tuple[list[str], str]:
    """Run the load; answer its `!restart` (bench/storm.py) by restarting the server, with the
    profiler following the new process. Returns the load's JSON lines and the end of its stderr."""
    with tempfile.TemporaryFile() as errors:
        load = subprocess.Popen(
            argv, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors, preexec_fn=pin
        )
        assert load.stdin is not None and load.stdout is not None
        deadline = time.monotonic() + SCENARIO_TIMEOUT
        lines: list[str] = []
        with selectors.DefaultSelector() as watch:
            watch.register(load.stdout, selectors.EVENT_READ)
            try:
                while True:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise subprocess.TimeoutExpired(argv, SCENARIO_TIMEOUT)
                    if not watch.select(min(left, 1.0)):
                        continue
                    raw = load.stdout.readline()
                    if not raw:
                        break
                    line = raw.decode(errors="replace").rstrip("\n")
                    if line == "!restart":
                        exited = s.restart()
                        if args.profile:  # py-spy stops with the old process: follow the new one
                            spies.append(profiler(s, f"{tag}-restarted", args.profile_format, args.profile_rate))
                        load.stdin.write(f"!ready {s.pid} {exited:.3f}\n".encode())
                        load.stdin.flush()
                    elif line.startswith("{"):
                        lines.append(line)
            finally:
                if load.poll() is None:
                    load.kill()
                load.wait(10)
        errors.seek(0)
        return lines, errors.read().decode(errors="replace")


def git_state() -> str:
    """The commit, with `+dirty` when the working tree (outside bench/) differs from it."""
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    status = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!bench"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout
    return rev.strip() + ("+dirty" if status.strip() else "")


def machine() -> str:
    lscpu = [
        line
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()[:20]
        if not line.startswith("Flags")
    ]
    return "\n".join(
        [
            f"date: {datetime.now(UTC).isoformat(timespec='seconds')}",
            f"git: {git_state()}",
            f"nproc: {os.cpu_count()}",
            f"python: {platform.python_version()} ({sys.executable})",
            f"kernel: {platform.release()}",
            *lscpu,
        ]
    )


def choose(raw: str, known: list[str], what: str, more: list[str] | None = None) -> list[str]:
    chosen = known if raw == "all" else [x.strip() for x in raw.split(",") if x.strip()]
    known = known + (more or [])
    unknown = [x for x in chosen if x not in known]
    if unknown:
        raise SystemExit(f"unknown {what}: {', '.join(unknown)} (choose from {', '.join(known)} or all)")
    return chosen


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    named = f"comma-separated, or all: {', '.join(TARGETS)}; or (never in all) {', '.join(TRANSPORT_TARGETS)}"
    p.add_argument("--targets", default="project,bare", help=named)
    p.add_argument("--scenarios", default="all", help=f"comma-separated, or all: {', '.join(SCENARIOS)}")
    p.add_argument("--quick", action="store_true", help="shorter scenarios")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--profile", action="store_true", help="record the server with py-spy into bench/out/prof-*")
    p.add_argument("--profile-format", choices=["raw", "flamegraph", "speedscope"], default="raw")
    p.add_argument("--profile-rate", type=int, default=100, help="py-spy samples per second")
    p.add_argument("--out", type=Path, default=OUT / "results.jsonl")
    p.add_argument("--server-env", action="append", default=[], metavar="KEY=VALUE", help="set for the server")
    p.add_argument("--base", metavar="REV", help="the revision the `project-base` target runs (git archive)")
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=TARGET:KEY=VALUE[,KEY=VALUE]",
        help="one more target: TARGET with these server variables (for A/B runs interleaved in one run)",
    )
    args, load_args = p.parse_known_args()
    args.load_args = load_args  # anything else goes to bench.load (e.g. --set members=500)
    args.server_env = dict(item.partition("=")[::2] for item in args.server_env)
    args.git = git_state()
    args.variants = {}
    for spec in args.variant:
        name, _, rest = spec.partition("=")
        kind, _, pairs = rest.partition(":")
        if kind not in TARGETS + TRANSPORT_TARGETS:
            raise SystemExit(f"--variant {spec}: unknown target {kind!r}")
        # Pairs are split at a comma that starts another KEY=: a value may hold commas (GC_THRESHOLDS).
        items = re.split(r",(?=[A-Z_][A-Z0-9_]*=)", pairs) if pairs else []
        args.variants[name] = (kind, dict(item.partition("=")[::2] for item in items))
    targets = choose(args.targets, TARGETS, "targets", TRANSPORT_TARGETS + list(args.variants))
    args.base_tree = base_tree(args.base) if args.base else None
    if args.base:
        args.git += f" base {args.base}"
    scenarios = choose(args.scenarios, list(SCENARIOS), "scenarios")
    OUT.mkdir(parents=True, exist_ok=True)
    raise_fd_limit()  # inherited by the server and the load
    run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(2)
    info = machine()
    (OUT / f"machine-{run_id}.txt").write_text(info + "\n")
    print(f"run {run_id}: {len(targets)} targets x {len(scenarios)} scenarios -> {args.out}", file=sys.stderr)
    started = time.monotonic()
    failures = 0
    # Targets interleaved per scenario and repeat: a ratio compares runs close in time.
    for scenario in scenarios:
        for _ in range(max(1, args.repeat)):
            for target in targets:
                result = run_one(target, scenario, args, run_id)
                failures += "error" in result
                line = json.dumps(result)
                with args.out.open("a") as sink:
                    sink.write(line + "\n")
                print(line, flush=True)
    print(f"run {run_id}: done in {time.monotonic() - started:.0f}s, {failures} failed", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
