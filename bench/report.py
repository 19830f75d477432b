"""Markdown tables from bench/out/results.jsonl: one table per scenario, one
row per target, the median over repeats (and the range where there were several).

    python -m bench.report [--run RUN_ID ...] [--file bench/out/results.jsonl]

Without `--run`, the newest run. Profiled runs are left out (py-spy slows the
server down).
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
    return "; ".join(dict.fromkeys(notes)) or "ok"


COLUMNS: dict[str, list[tuple[str, Callable[[Row], Any], int]]] = {
    "fanout": [
        ("deliveries/s", lambda r: r.get("deliveries_per_s"), 0),
        ("p50 ms", lambda r: r.get("p50_ms"), 1),
        ("p99 ms", lambda r: r.get("p99_ms"), 1),
        ("max ms", lambda r: r.get("max_ms"), 1),
        ("server CPU", lambda r: r.get("server_cpu"), 2),
        ("load CPU", lambda r: r.get("load_cpu"), 2),
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
    "churn": [
        ("rounds", lambda r: r.get("rounds_done") or len(r.get("rss_kib") or []), 0),
        ("RSS after round 1 MiB", lambda r: (r.get("rss_first_kib") or 0) / 1024, 1),
        ("RSS after last MiB", lambda r: (r.get("rss_last_kib") or 0) / 1024, 1),
        ("ratio", lambda r: r.get("ratio"), 3),
        ("connect s/round", lambda r: statistics.median(r["connect_s"]) if r.get("connect_s") else None, 1),
    ],
}


def ratio_to_bare(by_target: dict[str, list[Row]], target: str) -> str:
    def median(rows: list[Row]) -> float | None:
        values = [r["deliveries_per_s"] for r in rows if "error" not in r and r.get("deliveries_per_s")]
        return statistics.median(values) if values else None

    mine, floor = median(by_target.get(target, [])), median(by_target.get("bare", []))
    return f"{mine / floor:.2f}x" if mine and floor else "-"


def render(rows: list[Row]) -> str:
    grouped: dict[str, dict[str, list[Row]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        grouped[r["scenario"]][r["target"]].append(r)
    out = []
    for scenario, columns in COLUMNS.items():
        by_target = grouped.get(scenario)
        if not by_target:
            continue
        heads = ["target", "runs", *(name for name, _, _ in columns)]
        if scenario == "fanout":
            heads.append("vs bare")
        heads.append("notes")
        out += [f"### {scenario}", "", "| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
        for target in [t for t in TARGETS + TRANSPORT_TARGETS if t in by_target]:
            runs = by_target[target]
            cells = [target, str(len(runs)), *(value(runs, get, d) for _, get, d in columns)]
            if scenario == "fanout":
                cells.append(ratio_to_bare(by_target, target))
            cells.append(errors(runs))
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
