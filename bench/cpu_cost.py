"""Server CPU per unit of work, the project against the bare `websockets` floor.

    python -m bench.cpu_cost [fanout|ingest] [--targets project,project-redis,project-hosted,bare]
        [--repeat 3] [--messages 1000] [--members 1000] [--window 20] [--seconds 10]
        [--root OTHER_CHECKOUT] [--profile | --perf]

Each target gets a fresh server pinned to core 0 (bench.run's commands); the
scenario of bench.load runs in this process, pinned to core 1, on uvloop. The
server's utime and stime (/proc/PID/stat) are read at the start and the end of
the scenario's measured phase (fan-out: from the first message sent, after
every member connected, to the last delivery; ingest: the measured window,
after the warm-up). `fanout`: µs of server CPU per delivery (1,000 members,
1,000 messages, 20 in flight). `ingest`: µs per message the project stored
(the floor: per echo; 500 two-member rooms), and the rates themselves
(stored/s against the floor's echoes/s). Targets are interleaved per repeat
(A B C A B C ...), and each run's `vs_floor` compares it with the bare run of
the same repeat: the floor's µs over its own (≥ 1.0: at least as efficient).

`--root DIR` serves the project targets from another checkout (say `git
archive REV | tar -x -C DIR`), to compare revisions on the same harness.
`--profile` records the server with py-spy over the measured phase only
(bench/out/prof-cpu-SCENARIO-RUN-TARGET-N.txt; summarize with bench.hotspots);
`--perf` with `perf record -g` instead (kernel and C time too; needs root or
perf_event_paranoid ≤ 1; bench/out/perf-cpu-SCENARIO-RUN-TARGET-N.data).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import load
from bench.run import (
    LOAD_CORE,
    OUT,
    PREFIX,
    ROOT,
    SERVER_CORE,
    SERVICE_KEY,
    Server,
    command,
    free_port,
    git_state,
    pinned,
    redis_up,
    stop,
    wait_ready,
)
from bench.stats import TICKS, CpuMeter


def context_switches(pid: int) -> int:
    """Voluntary and involuntary context switches of every thread of the process so far."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            for line in (task / "status").read_text().splitlines():
                if line.endswith("ctxt_switches:") or "ctxt_switches:" in line:
                    total += int(line.split()[1])
        except (OSError, ValueError):
            pass  # a thread that ended meanwhile
    return total


def main_thread_cpu(pid: int) -> float:
    """utime+stime of the process's main thread (the event loop); the rest is its other threads."""
    stat = Path(f"/proc/{pid}/task/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds the process has used so far."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[11]) / TICKS, int(fields[12]) / TICKS


TARGETS = ["project", "project-redis", "project-hosted", "bare"]


class Window:
    """The measured phase of one fan-out run: the server's CPU seconds at its
    start and end (bench.load builds its CpuMeter right after connecting and
    reads it right after the last delivery)."""

    user0 = user1 = system0 = system1 = 0.0
    switches0 = switches1 = 0
    loop0 = loop1 = 0.0
    wall0 = wall1 = 0.0
    on_start: Any = None
    on_end: Any = None


class WindowMeter(CpuMeter):
    def __init__(self, server_pid: int | None) -> None:
        if Window.on_start is not None:
            Window.on_start()
        super().__init__(server_pid)
        assert server_pid is not None
        (Window.user0, Window.system0), Window.wall0 = cpu_split(server_pid), time.monotonic()
        Window.switches0 = context_switches(server_pid)
        Window.loop0 = main_thread_cpu(server_pid)

    def read(self) -> dict[str, float | list[float] | None]:
        assert self.server_pid is not None
        (Window.user1, Window.system1), Window.wall1 = cpu_split(self.server_pid), time.monotonic()
        Window.switches1 = context_switches(self.server_pid)
        Window.loop1 = main_thread_cpu(self.server_pid)
        if Window.on_end is not None:
            Window.on_end()
        return super().read()


@contextlib.contextmanager
def serving(target: str, root: Path, tag: str, extra: dict[str, str]) -> Iterator[Server]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-cpu-"))
    port = free_port()
    argv, env, db = command(target, port, tmp, extra)
    argv, pin = pinned(argv, SERVER_CORE)
    log = OUT / f"server-{tag}.log"
    cwd = root if target != "bare" else ROOT
    with log.open("wb") as sink:
        process = subprocess.Popen(argv, cwd=cwd, env=env, stdout=sink, stderr=subprocess.STDOUT, preexec_fn=pin)
    running = Server(target, process, port, db, log)
    try:
        wait_ready(running)
        yield running
    finally:
        stop(process)
        shutil.rmtree(tmp, ignore_errors=True)
        if log.exists() and log.stat().st_size == 0:
            log.unlink()


def profiler_hooks(pid: int, path: Path, perf: bool) -> tuple[Any, Any]:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    state: dict[str, subprocess.Popen[bytes]] = {}

    def start() -> None:
        argv = [spy, "record", "--pid", str(pid), "--rate", "200", "--gil", "--format", "raw"]
        if perf:  # kernel and C time too: `perf report -i FILE --no-children --sort dso,sym`
            argv = ["perf", "record", "-F", "999", *os.environ.get("PERF_CALLGRAPH", "-g").split(), "-p", str(pid)]
        state["p"] = subprocess.Popen([*argv, "-o", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.7)  # attached before the first message

    def end() -> None:
        process = state.pop("p", None)
        if process is not None:
            process.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(30)

    return start, end


def scenario(args: argparse.Namespace, t: load.Target) -> Any:
    if args.scenario == "ingest":
        return load.ingest(t, rooms=args.rooms, seconds=args.seconds, warmup=1.0)
    return load.fanout(
        t, members=args.members, messages=args.messages, window=args.window, senders=50, limit_s=args.limit_s
    )


def one(target: str, args: argparse.Namespace, run_id: str, number: int) -> dict[str, Any]:
    tag = f"cpu-{args.scenario}-{run_id}-{target}-{number}"
    if target == "project-redis" and not redis_up():
        return {"target": target, "error": "redis is not running"}
    with serving(target, args.root, tag, args.server_env) as s:
        base = f"127.0.0.1:{s.port}{PREFIX.get(target, '')}"
        project = s.db is not None
        t = load.Target(
            f"ws://{base}",
            s.pid,
            f"http://{base}" if project else None,
            SERVICE_KEY if project else None,
            s.db,
            b"x" * args.pad,
            args.concurrency,
        )
        Window.on_start = Window.on_end = None
        if args.profile or args.perf:
            path = OUT / (f"perf-{tag}.data" if args.perf else f"prof-{tag}.txt")
            Window.on_start, Window.on_end = profiler_hooks(s.pid, path, args.perf)
        load.CpuMeter = WindowMeter  # type: ignore[misc]
        result = load.run(scenario(args, t))
        if s.process.poll() is not None:
            result["server_exit"] = s.process.returncode
    if "error" in result:
        return {"target": target, "n": number, "error": result["error"]}
    user, system = Window.user1 - Window.user0, Window.system1 - Window.system0
    cpu = user + system
    wall = Window.wall1 - Window.wall0
    line: dict[str, Any] = {
        "scenario": args.scenario,
        "target": target,
        "run": run_id,
        "n": number,
        "git": args.git,
        "root": str(args.root),
        "server_env": args.server_env,
    }
    if args.scenario == "ingest":
        # The project's unit is a stored message (rows counted in its SQLite file); the floor's, an echo.
        rate = result["stored_per_s"] if project else result["echoes_per_s"]
        units = rate * wall if rate else 0
        line.update(
            per_s=rate,
            echoes_per_s=result["echoes_per_s"],
            p99_ms=result["p99_ms"],
            stored_total=result["stored_total"],
            sent=result["sent"],
            commit_batch_mean=result["commit_batch_mean"],
            commit_share=result["commit_share"],
        )
    else:
        units = int(result["deliveries"])
        line.update(
            complete=result["complete"],
            deliveries=units,
            per_s=result["deliveries_per_s"],
            p99_ms=result["p99_ms"],
        )
    line.update(
        server_cpu_s=round(cpu, 3),
        wall_s=round(wall, 3),
        us_per_unit=round(cpu * 1e6 / units, 3) if units else None,
        user_us=round(user * 1e6 / units, 3) if units else None,
        system_us=round(system * 1e6 / units, 3) if units else None,
        switches_per_unit=round((Window.switches1 - Window.switches0) / units, 3) if units else None,
        loop_us=round((Window.loop1 - Window.loop0) * 1e6 / units, 3) if units else None,
        server_cpu=result["server_cpu"],
        load_cpu=result["load_cpu"],
        other_cpu=result["other_cpu"],
        loadavg=round(os.getloadavg()[0], 2),
        closed_during=result["closed_during"],
    )
    return line


def summary(results: list[dict[str, Any]], unit: str) -> str:
    lines = [
        f"| target | µs per {unit} (median) | user / system µs (medians) | runs | per s (median) | "
        "vs floor: µs (median of per-run ratios) | vs floor: rate |",
        "|---|---|---|---|---|---|---|",
    ]
    for target in dict.fromkeys(r["target"] for r in results):
        runs = [r for r in results if r["target"] == target and r.get("us_per_unit")]
        if not runs:
            continue
        median = statistics.median(r["us_per_unit"] for r in runs)
        user, system = (statistics.median(r[key] for r in runs) for key in ("user_us", "system_us"))
        each = ", ".join(f"{r['us_per_unit']:.2f}" for r in runs)
        rate = statistics.median(r["per_s"] for r in runs)
        cells = []
        for key in ("vs_floor", "rate_vs_floor"):
            ratios = [r[key] for r in runs if r.get(key)]
            listed = ", ".join(f"{x:.2f}" for x in ratios)
            cells.append(f"{statistics.median(ratios):.2f}x ({listed})" if ratios else "-")
        split = f"{user:.2f} / {system:.2f}"
        lines.append(f"| {target} | {median:.2f} | {split} | {each} | {rate:,.0f} | {' | '.join(cells)} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.cpu_cost", description=__doc__.split("\n\n")[0])
    p.add_argument("scenario", nargs="?", choices=["fanout", "ingest"], default="fanout")
    p.add_argument("--targets", default=None, help=f"default: {','.join(TARGETS)} (fanout), project,bare (ingest)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--members", type=int, default=1000, help="fanout")
    p.add_argument("--messages", type=int, default=1000, help="fanout")
    p.add_argument("--window", type=int, default=20, help="fanout: messages in flight")
    p.add_argument("--limit-s", type=float, default=60.0, help="fanout")
    p.add_argument("--rooms", type=int, default=500, help="ingest")
    p.add_argument("--seconds", type=float, default=10.0, help="ingest: the measured window")
    p.add_argument("--pad", type=int, default=64)
    p.add_argument("--concurrency", type=int, default=256)
    p.add_argument("--root", type=Path, default=ROOT, help="serve the project targets from this checkout")
    p.add_argument("--server-env", action="append", default=[], metavar="KEY=VALUE", help="set for the server")
    p.add_argument("--profile", action="store_true", help="py-spy over the measured phase")
    p.add_argument("--perf", action="store_true", help="`perf record -g` over the measured phase (root)")
    args = p.parse_args()
    args.root = args.root.resolve()
    args.server_env = dict(item.partition("=")[::2] for item in args.server_env)
    args.git = git_state() if args.root == ROOT else "other-root"
    default = TARGETS if args.scenario == "fanout" else ["project", "bare"]
    targets = [x.strip() for x in args.targets.split(",") if x.strip()] if args.targets else default
    OUT.mkdir(parents=True, exist_ok=True)
    load.raise_fd_limit()
    os.sched_setaffinity(0, {LOAD_CORE})
    run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    results: list[dict[str, Any]] = []
    for number in range(args.repeat):
        for target in targets:
            result = one(target, args, run_id, number)
            results.append(result)
            print(json.dumps(result), flush=True)
    # Each run against the floor measured in the same repeat (the nearest in time).
    for r in results:
        floor = next((b for b in results if b["target"] == "bare" and b["n"] == r["n"]), None)
        if floor and floor.get("us_per_unit") and r.get("us_per_unit"):
            r["vs_floor"] = round(floor["us_per_unit"] / r["us_per_unit"], 3)
            r["rate_vs_floor"] = round(r["per_s"] / floor["per_s"], 3) if floor["per_s"] else None
    with (OUT / "cpu-cost.jsonl").open("a") as sink:
        for r in results:
            sink.write(json.dumps(r) + "\n")
    print(summary(results, "delivery" if args.scenario == "fanout" else "stored message (floor: echo)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
