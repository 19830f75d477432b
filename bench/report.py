"""Markdown tables from bench/out/results.jsonl: one table per scenario, one
row per target, the median over repeats (and the range where there were several).

    python -m bench.report [--run RUN_ID ...] [--file bench/out/results.jsonl]

Without `--run`, the newest run. Profiled runs are left out (py-spy slows the
server down).

Every table has the server's CPU per unit of work (`server µs/unit`: a
delivery, a message, a connect...) and, beside `bare`, the efficiency
`bare µs ÷ target µs` (above 1: less CPU than the floor for the same work),
the median of the ratios of runs paired in order (run i of the target with
run i of bare: interleaved runs close in time). Where the load generator was
saturated (its CPU ≥ 0.9 of its core) throughput says more about the load
than the server: the efficiency is then the figure to read.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.run import OUT, TARGETS, TRANSPORT_TARGETS

Row = dict[str, Any]


def load(path: Path, runs: list[str] | None) -> list[Row]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]
    rows = [r for r in rows if not r.get("profiled")]
    if not rows:
        return []
    wanted = set(runs) if runs else {rows[-1].get("run")}
    return [r for r in rows if r.get("run") in wanted]


def value(rows: list[Row], get: Callable[[Row], Any], digits: int = 0) -> str:
    values = [v for v in (get(r) for r in rows if "error" not in r) if isinstance(v, int | float)]
    if not values:
        return "-"
    mid = statistics.median(values)
    text = f"{mid:,.{digits}f}"
    if len(values) > 1:
        text += f" ({min(values):,.{digits}f} to {max(values):,.{digits}f})"
    return text


def errors(rows: list[Row]) -> str:
    notes = []
    for r in rows:
        if "error" in r:
            notes.append(f"error: {r['error'][:120]}")
            continue
        if r.get("connect_errors"):
            notes.append(f"connect failures {r['connect_errors']}")
        if r.get("closed_during"):
            notes.append(f"closed by server {r['closed_during']}")
        if "expected_deliveries" in r and r.get("deliveries") != r["expected_deliveries"]:
            notes.append(f"{r.get('deliveries')}/{r['expected_deliveries']} delivered")
        for key in ("gaps", "dupes", "resyncs", "behind_at_end", "unexpected_closes", "reconnect_errors"):
            if r.get(key):
                notes.append(f"{key} {r[key]}")
        if r.get("scenario") == "storm" and not r.get("complete"):
            notes.append("not all back within the limit")
        for key in ("gaps", "dupes", "resyncs", "behind_at_end"):
            if r.get(key):
                notes.append(f"{key} {r[key]}")
        for key in ("unexpected_closes", "reconnect_errors"):
            if r.get(key):
                notes.append(f"{key} {r[key]}")
        if r.get("scenario") == "storm" and not r.get("complete"):
            notes.append("not all back within the limit")
    return "; ".join(dict.fromkeys(notes)) or "ok"


COLUMNS: dict[str, list[tuple[str, Callable[[Row], Any], int]]] = {
    "fanout": [
        ("deliveries/s", lambda r: r.get("deliveries_per_s"), 0),
        ("p50 ms", lambda r: r.get("p50_ms"), 1),
        ("p99 ms", lambda r: r.get("p99_ms"), 1),
        ("max ms", lambda r: r.get("max_ms"), 1),
        ("server CPU", lambda r: r.get("server_cpu"), 2),
    ],
    "latency": [
        ("p50 ms", lambda r: r.get("p50_ms"), 1),
        ("p99 ms", lambda r: r.get("p99_ms"), 1),
        ("max ms", lambda r: r.get("max_ms"), 1),
        ("sender echo p99 ms", lambda r: (r.get("echo") or {}).get("p99_ms"), 1),
        ("server CPU", lambda r: r.get("server_cpu"), 2),
    ],
    "ingest": [
        ("echoes/s", lambda r: r.get("echoes_per_s"), 0),
        ("stored/s", lambda r: r.get("stored_per_s"), 0),
        ("p50 ms", lambda r: r.get("p50_ms"), 1),
        ("p99 ms", lambda r: r.get("p99_ms"), 1),
        ("server CPU", lambda r: r.get("server_cpu"), 2),
    ],
    "connections": [
        ("connected", lambda r: r.get("connected"), 0),
        ("connect s", lambda r: r.get("connect_s"), 1),
        ("connects/s", lambda r: r.get("connects_per_s"), 0),
        ("bytes/socket", lambda r: r.get("bytes_per_socket"), 0),
        ("RSS before MiB", lambda r: (r.get("rss_before_kib") or 0) / 1024, 1),
        ("RSS at 10k MiB", lambda r: (r.get("rss_after_kib") or 0) / 1024, 1),
        ("server CPU ms/connect", lambda r: r.get("server_cpu_ms_per_connect"), 2),
    ],
    "connect": [
        ("sockets", lambda r: r.get("sockets"), 0),
        ("connect s, round 1", lambda r: (r.get("connect_s") or [None])[0], 2),
        ("µs/connect cold", lambda r: r.get("cold_us"), 0),
        ("µs/connect reconnect", lambda r: r.get("reconnect_us"), 0),
        ("µs/connect new token", lambda r: r.get("new_token_us"), 0),
    ],
    "storm": [
        ("clients", lambda r: r.get("clients"), 0),
        ("back s", lambda r: r.get("back_s"), 2),
        ("back and caught up s", lambda r: r.get("storm_s"), 2),
        ("µs/reconnect less publisher", lambda r: r.get("net_us_per_reconnect"), 0),
        ("storm p99 ms", lambda r: (r.get("storm_latency") or {}).get("p99_ms"), 1),
        ("steady p99 ms", lambda r: (r.get("steady_latency") or {}).get("p99_ms"), 1),
        ("server CPU", lambda r: r.get("server_cpu"), 2),
    ],
    "churn": [
        ("rounds", lambda r: r.get("rounds_done") or len(r.get("rss_kib") or []), 0),
        ("RSS after round 1 MiB", lambda r: (r.get("rss_first_kib") or 0) / 1024, 1),
        ("RSS after last MiB", lambda r: (r.get("rss_last_kib") or 0) / 1024, 1),
        ("ratio", lambda r: r.get("ratio"), 3),
        ("connect s/round", lambda r: statistics.median(r["connect_s"]) if r.get("connect_s") else None, 1),
    ],
}


SATURATED = 0.9


def paired_ratio(floor: list[Row], mine: list[Row], get: Callable[[Row], Any], inverse: bool = False) -> str:
    """Median over runs paired in order of floor ÷ mine (or mine ÷ floor), with the range."""
    ratios = []
    for a, b in zip(floor, mine, strict=False):
        x, y = get(a), get(b)
        if (
            "error" in a
            or "error" in b
            or not isinstance(x, int | float)
            or not isinstance(y, int | float)
            or not x
            or not y
        ):
            continue
        ratios.append(y / x if inverse else x / y)
    if not ratios:
        return "-"
    text = f"{statistics.median(ratios):.2f}x"
    if len(ratios) > 1:
        text += f" ({min(ratios):.2f} to {max(ratios):.2f})"
    return text


def saturated(rows: list[Row]) -> bool:
    loads = [r.get("load_cpu") for r in rows if isinstance(r.get("load_cpu"), int | float)]
    return bool(loads) and statistics.median(loads) >= SATURATED


def ratio_to_bare(by_target: dict[str, list[Row]], target: str) -> str:
    def median(rows: list[Row]) -> float | None:
        values = [r["deliveries_per_s"] for r in rows if "error" not in r and r.get("deliveries_per_s")]
        return statistics.median(values) if values else None

    mine, floor = median(by_target.get(target, [])), median(by_target.get("bare", []))
    return f"{mine / floor:.2f}x" if mine and floor else "-"


def unit_us(r: Row) -> Any:
    return r.get("server_us_per_unit")


def render(rows: list[Row]) -> str:
    grouped: dict[str, dict[str, list[Row]]] = defaultdict(lambda: defaultdict(list))
    order: list[str] = []
    for r in rows:
        grouped[r["scenario"]][r["target"]].append(r)
        if r["target"] not in order:
            order.append(r["target"])
    known = TARGETS + TRANSPORT_TARGETS
    targets = [t for t in known if t in order] + [t for t in order if t not in known]
    out = []
    for scenario, columns in COLUMNS.items():
        by_target = grouped.get(scenario)
        if not by_target:
            continue
        units = {r.get("cpu_unit") for runs in by_target.values() for r in runs if r.get("cpu_unit")}
        unit = "/".join(sorted(units)) or "unit"
        heads = ["target", "runs", *(name for name, _, _ in columns)]
        if scenario != "connect":
            heads.append(f"server µs/{unit}")
        heads += ["load CPU", "efficiency (bare µs ÷ µs)"]
        if scenario == "fanout":
            heads.append("throughput vs bare")
        heads.append("notes")
        out += [f"### {scenario}", "", "| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
        floor = by_target.get("bare", [])
        for target in [t for t in targets if t in by_target]:
            runs = by_target[target]
            cells = [target, str(len(runs)), *(value(runs, get, d) for _, get, d in columns)]
            if scenario != "connect":
                cells.append(value(runs, unit_us, 1))
            cells.append(value(runs, lambda r: r.get("load_cpu"), 2))
            if scenario == "connect":
                efficiency = " / ".join(
                    paired_ratio(floor, runs, lambda r, k=k: r.get(k))
                    for k in ("cold_us", "reconnect_us", "new_token_us")
                )
            else:
                efficiency = paired_ratio(floor, runs, unit_us)
            cells.append(("**" + efficiency + "**") if saturated(runs) and efficiency != "-" else efficiency)
            if scenario == "fanout":
                cells.append(ratio_to_bare(by_target, target))
            notes = errors(runs)
            if saturated(runs):
                notes = "load saturated; " + notes
            cells.append(notes)
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__.split("\n\n")[0])
    p.add_argument("--run", action="append", help="a run id (repeatable); default the newest")
    p.add_argument("--file", type=Path, default=OUT / "results.jsonl")
    args = p.parse_args()
    print(render(load(args.file, args.run)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
