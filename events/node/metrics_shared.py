"""`/metrics` over every worker of a uvicorn supervisor: prometheus_client's
multiprocess mode (PROMETHEUS_MULTIPROC_DIR).

With the variable set when a process starts, prometheus_client keeps every
metric value in a file of that directory named after the process id, and any
worker's scrape merges the files of all of them: counters and histograms are
summed (a dead worker's counts stay, so the sums never go down), each gauge
as its `multiprocess_mode` says. What the metrics module reads at scrape time
(open sockets, the broker's state, `process_*`) exists in one process only, so
each worker copies it into file-backed metrics once a second (`Mirror`), and
the worker that answers a scrape copies its own first.

uvicorn's supervisor empties the directory before it starts the workers
(supervisor.py); a worker removes its `live*` gauges when it stops, and those
of dead workers when it starts (uvicorn starts one in place of each worker
that dies).
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import re
from collections.abc import Iterable
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, values
from prometheus_client.core import Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

SYNC_INTERVAL = 1.0
# How a gauge's values combine across workers; any other gauge (`process_*`) is
# kept per worker, with a `pid` label, while that worker lives.
PER_WORKER = "liveall"
LIVE_GAUGE_FILE = re.compile(r"^gauge_live\w+?_(\d+)\.db$")


def active(directory: Path) -> bool:
    """Whether prometheus_client of this process writes its values to files in `directory`."""
    configured = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    return (
        getattr(values.ValueClass, "_multiprocess", False)
        and configured is not None
        and Path(configured).resolve() == directory.resolve()
    )


def scrape_registry(directory: Path) -> CollectorRegistry:
    """A registry whose collection is every worker's files, merged."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))
    return registry


def sweep(directory: Path) -> None:
    """Remove the live gauges of processes that no longer exist."""
    for path in glob.glob(os.path.join(directory, "gauge_live*_*.db")):
        match = LIVE_GAUGE_FILE.match(os.path.basename(path))
        if match is not None and not _alive(int(match.group(1))):
            mark_process_dead(int(match.group(1)), str(directory))


def retire(directory: Path) -> None:
    """This process stops: its live gauges leave the sums (its counters stay)."""
    mark_process_dead(os.getpid(), str(directory))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


class Mirror:
    """Copies what collectors read at scrape time into file-backed metrics.

    A gauge is set to the value read; a counter is increased by how much the
    value read grew since the last copy. Gauges named in `at_scrape` are copied
    only by `sync(scrape=True)`: their value is measured when this worker
    answers a scrape (the outbox backlog), and `livemostrecent` keeps the last
    measurement of any worker.
    """

    def __init__(self, sources: Iterable[Collector], modes: dict[str, str], at_scrape: Iterable[str] = ()) -> None:
        self.sources = list(sources)
        self.modes = modes
        self.at_scrape = frozenset(at_scrape)
        # Never exposed: the files are; a registry of its own keeps names from meeting the app's.
        self.registry = CollectorRegistry()
        self.gauges: dict[str, Gauge] = {}
        self.counters: dict[str, Counter] = {}
        self.seen: dict[tuple[str, tuple[str, ...]], float] = {}
        self.task: asyncio.Task[None] | None = None

    def sync(self, *, scrape: bool = False) -> None:
        for source in self.sources:
            for family in source.collect():
                if family.type == "gauge" and (scrape or family.name not in self.at_scrape):
                    self._copy_gauge(family)
                elif family.type == "counter":
                    self._copy_counter(family)

    def start(self) -> None:
        self.sync()
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
            self.task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(SYNC_INTERVAL)
            self.sync()

    def _copy_gauge(self, family: Metric) -> None:
        name = family.name
        for sample in family.samples:
            gauge = self.gauges.get(name)
            if gauge is None:
                gauge = self.gauges[name] = Gauge(
                    name,
                    family.documentation,
                    list(sample.labels),
                    registry=self.registry,
                    multiprocess_mode=self.modes.get(name, PER_WORKER),  # type: ignore[arg-type]
                )
            (gauge.labels(**sample.labels) if sample.labels else gauge).set(sample.value)

    def _copy_counter(self, family: Metric) -> None:
        name = family.name
        for sample in family.samples:
            if not sample.name.endswith("_total"):
                continue  # `_created`: the files keep totals only
            counter = self.counters.get(name)
            if counter is None:
                counter = self.counters[name] = Counter(
                    name,
                    family.documentation,
                    list(sample.labels),
                    registry=self.registry,
                )
            key = (name, tuple(sample.labels.values()))
            grown = sample.value - self.seen.get(key, 0.0)
            self.seen[key] = sample.value
            if grown > 0:
                (counter.labels(**sample.labels) if sample.labels else counter).inc(grown)
