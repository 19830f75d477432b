"""Prometheus metrics of one app (served by endpoints/metrics_api.py as `GET /metrics`).

Each app has its own `CollectorRegistry` (several apps in one process, as in
the tests, never mix their numbers), with this process's `process_*` metrics.
Under a uvicorn supervisor with PROMETHEUS_MULTIPROC_DIR, the numbers are
every worker's instead, merged from that directory (metrics_shared.py). The core calls one method here per event
it counts; each method keeps the labelled child it resolved the first time, so
a count is a dict look-up and an increment (frames in and out, counted per
message, are plain integers read at scrape time). A fan-out is counted once per
publish with the number of recipients, never once per socket. What the core
already keeps (its open sockets, the broker's reconnects, the hub's publish
failures) is read at scrape time by a collector and costs nothing in between.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Final, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ...store.db import Db
from ...transport import socket_counter
from ..protocol.frames import BadFrame, Decoded
from . import metrics_shared, topics
from .hub import Delivery, Hub


class Watched(Protocol):
    """What the collector reads of the Node (events/node/node.py), named here so the two do not import each other."""

    sockets: dict[int, set[Any]]
    pending_auth: int
    hub: Hub
    db: Db


# Close codes get their own label value; any other (a client picks its own) is
# `other`, so a client cannot create series at will.
CLOSE_CODES = frozenset({1000, 1001, 1005, 1006, 1008, 1009, 1011, 1012, 1013, 4001, 4003, 4004})
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
WEBHOOK_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
_TYPE_PREFIX = '{"type":"'
# With several workers (metrics_shared.py): how each gauge the runtime keeps
# combines across them. `process_*` gauges stay per worker, by `pid`.
ACROSS_WORKERS = {
    "realtime_open_sockets": "livesum",
    "realtime_pending_auth_sockets": "livesum",
    "realtime_hub_topics": "livesum",
    "realtime_store_writer_up": "livemin",
    "realtime_broker_up": "livemin",
    "realtime_outbox_backlog": "livemostrecent",
}
# Measured by the worker that answers a scrape, not copied once a second.
MEASURED_AT_SCRAPE = ("realtime_outbox_backlog",)
# How a gauge every worker sets from the same shared count combines (the webhook outbox's).
SHARED_COUNT: Final = "livemostrecent"


def frame_type(text: str) -> str:
    """The `type` of a server frame: every builder writes it first."""
    if text.startswith(_TYPE_PREFIX):
        end = text.find('"', len(_TYPE_PREFIX))
        if end > 0:
            return text[len(_TYPE_PREFIX) : end]
    return "other"


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None, shared_dir: Path | None = None) -> None:
        """`shared_dir`: PROMETHEUS_MULTIPROC_DIR, for every worker's numbers (metrics_shared.active must hold)."""
        self.registry = registry if registry is not None else CollectorRegistry()
        self.shared_dir = shared_dir
        self.mirror: metrics_shared.Mirror | None = None
        r = self.registry
        if shared_dir is None:
            ProcessCollector(registry=r)
            self.exposed = r  # what `GET /metrics` encodes
        else:
            self.exposed = metrics_shared.scrape_registry(shared_dir)
        # Frames in and out: counted in plain dicts (one or two per message, on the hot
        # path) and read at scrape time by `_FrameCounts` (copied to the shared files by
        # the mirror when several workers share them).
        self.frames_in: dict[tuple[str, str], int] = {}
        self.frames_out: dict[str, int] = {}
        self.frame_counts = _FrameCounts(self)
        if shared_dir is None:
            r.register(self.frame_counts)
        # Which server each socket's `send` came from, and whether the uvicorn fast path applied.
        self.transport_socket = socket_counter(r)
        self.errors = Counter("realtime_errors", "`error` frames sent, by code.", ["code"], registry=r)
        self.closes = Counter("realtime_closes", "Sockets closed, by close code.", ["code"], registry=r)
        self.slow_consumers = Counter(
            "realtime_slow_consumer_closes",
            "Sockets cut off with 1013 because their outbound queue overflowed.",
            registry=r,
        )
        self.dropped = Counter(
            "realtime_outbound_dropped_frames",
            "Frames dropped with the queue of a socket cut off as a slow consumer.",
            registry=r,
        )
        self.store_seconds = Histogram(
            "realtime_store_write_batch_seconds",
            "Duration of one group-commit transaction of the store's writer.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.store_jobs = Histogram(
            "realtime_store_write_batch_size",
            "Write jobs committed in one group-commit transaction.",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.store_errors = Counter(
            "realtime_store_write_errors",
            "Failed write transactions of the store's writer, by kind: `transient` (store away, locked, "
            "full; answered `unavailable`) or `other` (a job's own error).",
            ["kind"],
            registry=r,
        )
        # Webhooks (events/node/webhooks.py): the outbox's rows by state, counted
        # every few seconds (every process's rows), and this process's attempts.
        # Each worker counts the same shared table: with several, the latest
        # count of a live one, not one series per pid that outlives its worker.
        self.webhook_backlog = Gauge(
            "realtime_webhook_backlog",
            "Webhook events waiting for delivery (pending outbox rows, one per event and URL, all processes).",
            registry=r,
            multiprocess_mode=SHARED_COUNT,
        )
        self.webhook_parked = Gauge(
            "realtime_webhook_parked",
            "Webhook events given up on after WEBHOOK_RETRY_WINDOW_SECONDS (parked outbox rows, all processes).",
            registry=r,
            multiprocess_mode=SHARED_COUNT,
        )
        self.webhook_deliveries = Counter(
            "realtime_webhook_deliveries",
            "Webhook POSTs this process made that the receiver took (2xx).",
            registry=r,
        )
        self.webhook_events = Counter(
            "realtime_webhook_delivered_events", "Webhook events in the POSTs the receiver took.", registry=r
        )
        self.webhook_failures = Counter(
            "realtime_webhook_failures",
            "Failed webhook POSTs, by reason: `timeout`, `connection`, `http_4xx`, `http_5xx`, `http_3xx`, `other`.",
            ["reason"],
            registry=r,
        )
        self.webhook_parked_events = Counter(
            "realtime_webhook_parked_events", "Webhook events this process parked.", registry=r
        )
        self.webhook_seconds = Histogram(
            "realtime_webhook_delivery_seconds",
            "Duration of webhook POSTs the receiver took.",
            buckets=WEBHOOK_BUCKETS,
            registry=r,
        )
        self._errors: dict[str, Any] = {}
        self._closes: dict[str, Any] = {}

    def watch(self, runtime: Watched, channels: Iterable[str]) -> None:
        """Hook into a started runtime: the hub's fan-out, the store's writer,
        and a collector reading what the runtime already counts."""
        runtime.hub.on_fan_out = self.fan_out
        if runtime.db.writer is not None:
            runtime.db.writer.on_batch = self.store_batch
            runtime.db.writer.on_fault = self.store_fault
        collector = _RuntimeCollector(runtime, sorted(set(channels)))
        if self.shared_dir is None:
            self.registry.register(collector)
            return
        metrics_shared.sweep(self.shared_dir)
        self.mirror = metrics_shared.Mirror(
            [collector, self.frame_counts, ProcessCollector(registry=None)],
            ACROSS_WORKERS,
            at_scrape=MEASURED_AT_SCRAPE,
        )
        self.mirror.start()

    def before_scrape(self) -> None:
        """The worker answering a scrape copies its own numbers first: they are current, the others' a second old."""
        if self.mirror is not None:
            self.mirror.sync(scrape=True)

    async def close(self) -> None:
        """At shutdown: with several workers, this one's gauges leave the sums."""
        if self.mirror is not None and self.shared_dir is not None:
            await self.mirror.stop()
            metrics_shared.retire(self.shared_dir)

    # ---- what the core calls -------------------------------------------------------

    def frame_in(self, channel: str, item: Decoded | BadFrame) -> None:
        key = (channel, item.type if isinstance(item, Decoded) else "invalid")
        counts = self.frames_in
        counts[key] = counts.get(key, 0) + 1

    def frame_out(self, text: str) -> None:
        """A frame for one socket (a reply, a snapshot, a replay)."""
        self._count_out(frame_type(text), 1)

    def fan_out(self, topic: str, delivery: Delivery, recipients: int) -> None:
        # Server commands are not counted: their subscriber is the process, not a socket.
        if recipients and topic != topics.CONTROL_TOPIC:
            # Events refilled from the store carry no type: read it from the frame.
            self._count_out(delivery.type or frame_type(delivery.frame), recipients)

    def error(self, code: str) -> None:
        child = self._errors.get(code)
        if child is None:
            child = self._errors[code] = self.errors.labels(code)
        child.inc()

    def closed(self, code: int, dropped: int) -> None:
        label = str(code) if code in CLOSE_CODES else "other"
        child = self._closes.get(label)
        if child is None:
            child = self._closes[label] = self.closes.labels(label)
        child.inc()
        if dropped:
            self.slow_consumers.inc()
            self.dropped.inc(dropped)

    def store_batch(self, jobs: int, seconds: float) -> None:
        self.store_jobs.observe(jobs)
        self.store_seconds.observe(seconds)

    def store_fault(self, kind: str) -> None:
        self.store_errors.labels(kind).inc()

    def webhook_delivered(self, events: int, seconds: float) -> None:
        self.webhook_deliveries.inc()
        self.webhook_events.inc(events)
        self.webhook_seconds.observe(seconds)

    def webhook_failed(self, reason: str) -> None:
        self.webhook_failures.labels(reason).inc()

    def _count_out(self, type_: str, n: int) -> None:
        counts = self.frames_out
        counts[type_] = counts.get(type_, 0) + n


class _FrameCounts(Collector):
    """`realtime_frames_in` and `realtime_frames_out`, from the counts `Metrics` keeps."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        frames_in = CounterMetricFamily(
            "realtime_frames_in",
            "Client frames received, by channel and type (`invalid`: not a frame of the channel).",
            labels=["channel", "type"],
        )
        for (channel, type_), count in sorted(self.metrics.frames_in.items()):
            frames_in.add_metric([channel, type_], count)
        yield frames_in
        frames_out = CounterMetricFamily(
            "realtime_frames_out",
            "Server frames handed to sockets, by type: replies one by one, fan-outs by their recipients.",
            labels=["type"],
        )
        for type_, count in sorted(self.metrics.frames_out.items()):
            frames_out.add_metric([type_], count)
        yield frames_out


class _RuntimeCollector(Collector):
    """Numbers the runtime keeps anyway, read when Prometheus scrapes."""

    def __init__(self, runtime: Watched, channels: list[str]) -> None:
        self.runtime = runtime
        self.channels = channels

    def collect(self) -> Iterator[Metric]:
        rt = self.runtime
        counts = dict.fromkeys(self.channels, 0)
        for sockets in list(rt.sockets.values()):
            for socket in list(sockets):
                counts[socket.channel] = counts.get(socket.channel, 0) + 1
        gauge = GaugeMetricFamily(
            "realtime_open_sockets", "Authenticated sockets open, by channel.", labels=["channel"]
        )
        for channel, count in sorted(counts.items()):
            gauge.add_metric([channel], count)
        yield gauge
        yield GaugeMetricFamily(
            "realtime_pending_auth_sockets", "Sockets waiting for their `auth` frame.", value=rt.pending_auth
        )
        yield GaugeMetricFamily(
            "realtime_hub_topics", "Topics this process is subscribed to on the broker.", value=len(rt.hub.topics)
        )
        writer = rt.db.writer
        yield GaugeMetricFamily(
            "realtime_store_writer_up",
            "1 while the store's writer holds a connection and its last write committed; 0 while writes fail.",
            value=int(writer is not None and writer.status() is None),
        )
        yield GaugeMetricFamily(
            "realtime_broker_up",
            "1 while the broker (Redis) is connected and the hub listens; 0 otherwise. Always 1 with memory://.",
            value=int(rt.hub.problem is None),
        )
        yield CounterMetricFamily(
            "realtime_broker_reconnects",
            "Reconnects of this process to the broker (Redis) after losing it.",
            value=getattr(rt.hub.backend, "reconnects", 0),
        )
        yield CounterMetricFamily(
            "realtime_hub_publish_failures",
            "Publishes the broker refused (persisted events stay in the outbox and are published again).",
            value=rt.hub.publish_failures,
        )
        yield GaugeMetricFamily(
            "realtime_outbox_backlog",
            "Persisted events not yet confirmed as published to the broker (outbox rows, all processes).",
            value=rt.hub.backlog,
        )
