"""What re-checking room membership inside the group commit costs: chat
messages stored through `messages.post` with and without `from_member` (the
socket path uses it), interleaved, on a fresh SQLite file each round.

    python -m bench.member_check [--messages 20000] [--rooms 500] [--in-flight 256] [--repeat 3]

Only the store is measured (no sockets): the one extra SELECT per batch is the
whole difference between the two variants.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from realtime.store import messages, rooms
from realtime.store.db import Db


async def one_round(folder: Path, rooms_count: int, total: int, in_flight: int, checked: bool) -> float:
    db = Db(f"sqlite:///{folder}/bench-{time.monotonic_ns()}.db")
    await db.connect()
    try:
        for r in range(rooms_count):
            await rooms.create(db, f"r{r}", [2 * r + 1, 2 * r + 2])
        sender = [{"id": 2 * r + 1, "name": f"user{r}"} for r in range(rooms_count)]
        queue = iter(range(total))

        async def worker() -> None:
            for i in queue:
                r = i % rooms_count
                await messages.post(db, f"r{r}", sender[r], f"message {i}", from_member=checked)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(in_flight)))
        return total / (time.perf_counter() - started)
    finally:
        await db.disconnect()


async def measure(args: argparse.Namespace) -> dict[bool, list[float]]:
    results: dict[bool, list[float]] = {False: [], True: []}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeat):
            for checked in (False, True):
                rate = await one_round(Path(tmp), args.rooms, args.messages, args.in_flight, checked)
                results[checked].append(rate)
    return results


def main(args: argparse.Namespace) -> None:
    results = asyncio.run(measure(args))
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(f"git {git}; {args.messages} messages, {args.rooms} rooms, {args.in_flight} in flight")
    for checked, rates in results.items():
        label = "from_member=True " if checked else "from_member=False"
        spread = ", ".join(f"{r:,.0f}" for r in rates)
        print(f"{label}: median {statistics.median(rates):,.0f} stored/s ({spread})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--rooms", type=int, default=500)
    parser.add_argument("--in-flight", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3)
    main(parser.parse_args())
