"""`GET /metrics` under `uvicorn --workers 2` on Redis: whichever worker answers,
the numbers are every worker's (prometheus_client's multiprocess mode, the
directory readied by uvicorn's supervisor through logging.json)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

from prometheus_client import generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from realtime.events.node import metrics_shared
from tests.conftest import Client, token, ws
from tests.procs import REDIS_URL, ROOT, Proc, ready, require, start
from tests.test_metrics import Samples, scrape, value

WORKERS = 2
SYNC_DEADLINE = 10.0  # the workers copy what they read at scrape time once a second


def start_workers(tmp_path: Path, env: dict[str, str]) -> Proc:
    return start(
        {"BROKER_URL": REDIS_URL, "DATABASE_URL": f"sqlite:///{tmp_path}/workers.db", **env},
        tmp_path / "workers.log",
        args=["--workers", str(WORKERS), "--log-config", "logging.json"],
    )


@contextlib.asynccontextmanager
async def workers(tmp_path: Path, env: dict[str, str]) -> AsyncIterator[Proc]:
    proc = start_workers(tmp_path, env)
    try:
        await ready(proc)
        yield proc
    finally:
        proc.terminate()
        try:
            assert proc.wait(20) == 0, proc.output()
        finally:
            proc.kill()


def per_worker(directory: Path, kind: str, name: str, **labels: str) -> dict[int, float]:
    """One series' value in each worker's own file (`kind`: the file's prefix, such as `counter`)."""
    found: dict[int, float] = {}
    for path in directory.glob(f"{kind}_*.db"):
        pid = int(path.stem.rsplit("_", 1)[1])
        for family in MultiProcessCollector.merge([str(path)]):
            for sample in family.samples:
                own = {k: v for k, v in sample.labels.items() if k != "pid"}
                if sample.name == name and own == labels:
                    found[pid] = sample.value
    return found


def pids(samples: Samples, name: str) -> set[str]:
    return {dict(labels)["pid"] for (sample, labels) in samples if sample == name}


async def settle(proc: Proc, name: str, expected: float, **labels: str) -> Samples:
    """Scrape until `name` shows `expected` (the other worker's copy is up to a second old)."""
    deadline = time.monotonic() + SYNC_DEADLINE
    while True:
        samples = await scrape(proc)
        if value(samples, name, **labels) == expected or time.monotonic() > deadline:
            return samples
        await asyncio.sleep(0.1)


async def open_on_both(proc: Proc, directory: Path, stack: contextlib.AsyncExitStack) -> list[Client]:
    """Sockets, one connection each, until both workers hold some (the kernel picks the worker)."""
    clients: list[Client] = []
    while len(clients) < 60:
        for _ in range(6):
            user = len(clients) + 1
            client = await stack.enter_async_context(ws(proc.ws_url("/ws/notifications/", token=token(user))))
            await client.expect("bulk_update")
            clients.append(client)
        deadline = time.monotonic() + SYNC_DEADLINE
        while time.monotonic() < deadline:
            held = per_worker(directory, "gauge_livesum", "realtime_open_sockets", channel="notifications")
            if sum(held.values()) == len(clients):
                break
            await asyncio.sleep(0.1)
        if len(held) == WORKERS and all(held.values()):
            return clients
    raise AssertionError(f"every socket went to one worker: {held}")


async def test_every_scrape_sums_both_workers_and_a_dead_worker_leaves_its_gauges(tmp_path: Path) -> None:
    require("redis")
    directory = tmp_path / "metrics"
    directory.mkdir()
    # A previous run's file, and a file that is not prometheus_client's.
    (directory / "counter_4242.db").write_bytes(b"stale")
    (directory / "notes.txt").write_text("kept")
    async with workers(tmp_path, {"PROMETHEUS_MULTIPROC_DIR": str(directory)}) as proc:
        assert not (directory / "counter_4242.db").exists()
        assert (directory / "notes.txt").read_text() == "kept"
        async with contextlib.AsyncExitStack() as stack:
            clients = await open_on_both(proc, directory, stack)
            for client in clients:
                await client.send({"type": "ping"})
                await client.expect("pong")
            held = per_worker(directory, "gauge_livesum", "realtime_open_sockets", channel="notifications")
            assert len(held) == WORKERS and all(0 < n < len(clients) for n in held.values()), held
            # Frame counts are plain integers a worker copies to its file once a second.
            for _ in range(40):
                pings = per_worker(
                    directory, "counter", "realtime_frames_in_total", channel="notifications", type="ping"
                )
                if sorted(pings.values()) == sorted(held.values()):
                    break
                await asyncio.sleep(0.1)
            assert sorted(pings.values()) == sorted(held.values()), (pings, held)

            # Each scrape a new connection: either worker answers, and both show the sums.
            first = await settle(proc, "realtime_open_sockets", len(clients), channel="notifications")
            for _ in range(12):
                samples = await scrape(proc)
                assert value(samples, "realtime_open_sockets", channel="notifications") == len(clients)
                assert value(samples, "realtime_frames_in_total", channel="notifications", type="ping") == len(clients)
                assert value(samples, "realtime_frames_out_total", type="pong") == len(clients)
                assert value(samples, "realtime_broker_up") == 1
                assert value(samples, "realtime_store_writer_up") == 1
                # Process metrics: per worker by pid, CPU time summed.
                assert pids(samples, "process_resident_memory_bytes") == {str(pid) for pid in held}
                assert value(samples, "process_cpu_seconds_total") > 0
            assert pids(first, "process_start_time_seconds") == {str(pid) for pid in held}

        closed = await settle(proc, "realtime_open_sockets", 0, channel="notifications")
        assert value(closed, "realtime_open_sockets", channel="notifications") == 0
        assert value(closed, "realtime_closes_total", code="1000") == len(clients)

        # A worker killed outright: uvicorn starts another; its counts stay, its gauges go.
        victim = max(held)
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                samples = await scrape(proc)
                live = pids(samples, "process_resident_memory_bytes")
                if len(live) == WORKERS and str(victim) not in live:
                    break
            await asyncio.sleep(0.2)
        assert len(live) == WORKERS and str(victim) not in live, (live, proc.output())
        assert value(samples, "realtime_frames_in_total", channel="notifications", type="ping") == len(clients)
        assert value(samples, "realtime_open_sockets", channel="notifications") == 0
    # A clean stop takes each worker's live gauges out.
    assert list(directory.glob("gauge_live*.db")) == []


async def test_workers_without_a_directory_get_one_for_the_run(tmp_path: Path) -> None:
    """No PROMETHEUS_MULTIPROC_DIR: the supervisor makes one under TMPDIR and removes it at exit."""
    require("redis")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {"TMPDIR": str(scratch)}
    async with workers(tmp_path, env) as proc:
        [directory] = list(scratch.glob("realtime-metrics-*"))
        samples = await settle(proc, "realtime_broker_up", 1)
        deadline = time.monotonic() + SYNC_DEADLINE
        while len(pids(samples, "process_start_time_seconds")) < WORKERS and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            samples = await scrape(proc)
        assert len(pids(samples, "process_start_time_seconds")) == WORKERS
        assert {p.stem.rsplit("_", 1)[1] for p in directory.glob("counter_*.db")} == pids(
            samples, "process_start_time_seconds"
        )
    assert not directory.exists()


# A worker that counted the webhook outbox, as the dispatcher does, then stops
# (`retire`: True, a clean stop) or dies (False).
COUNTING_WORKER = """
import sys
from pathlib import Path
from prometheus_client import CollectorRegistry
from realtime.events.node import metrics, metrics_shared
directory = Path(sys.argv[1])
m = metrics.Metrics(CollectorRegistry(), directory)
m.webhook_backlog.set(float(sys.argv[2]))
m.webhook_parked.set(float(sys.argv[3]))
if sys.argv[4] == "retire":
    metrics_shared.retire(directory)
"""


def counting_worker(directory: Path, backlog: int, parked: int, end: str) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    subprocess.run(
        [sys.executable, "-c", COUNTING_WORKER, str(directory), str(backlog), str(parked), end],
        cwd=ROOT,
        env=env,
        check=True,
        timeout=60,
    )


def merged(directory: Path, name: str) -> list[tuple[dict[str, str], float]]:
    text = generate_latest(metrics_shared.scrape_registry(directory)).decode()
    return [(s.labels, s.value) for f in text_string_to_metric_families(text) for s in f.samples if s.name == name]


def test_the_webhook_outbox_gauges_are_one_series_over_the_workers(tmp_path: Path) -> None:
    """Every worker counts the same shared table: the merged gauge is the latest
    count, not one series per pid (summed by a dashboard, kept after the pid is gone)."""
    directory = tmp_path / "metrics"
    directory.mkdir()
    counting_worker(directory, 5, 1, "stay")
    counting_worker(directory, 7, 2, "stay")
    assert merged(directory, "realtime_webhook_backlog") == [({}, 7.0)]
    assert merged(directory, "realtime_webhook_parked") == [({}, 2.0)]
    # A worker that stops takes its count out; a dead one's is swept at the next start.
    counting_worker(directory, 9, 3, "retire")
    assert merged(directory, "realtime_webhook_backlog") == [({}, 7.0)]
    metrics_shared.sweep(directory)
    assert merged(directory, "realtime_webhook_backlog") == []
