"""uvicorn with tracemalloc on, writing a snapshot on each SIGUSR1 (for bench.memprobe).

    BENCH_SNAPSHOTS=/tmp/dir python -m bench.traced server:app --port ... (uvicorn's arguments)

Snapshot n goes to $BENCH_SNAPSHOTS/snap-n.pickle, written whole before it appears.
"""

from __future__ import annotations

import itertools
import os
import signal
import sys
import tracemalloc
from pathlib import Path
from types import FrameType

from uvicorn.main import main as uvicorn_main

FRAMES = 12
_numbers = itertools.count()


def dump(signum: int, frame: FrameType | None) -> None:
    target = Path(os.environ["BENCH_SNAPSHOTS"]) / f"snap-{next(_numbers)}.pickle"
    partial = target.with_suffix(".part")
    tracemalloc.take_snapshot().dump(str(partial))
    partial.rename(target)


if __name__ == "__main__":
    tracemalloc.start(FRAMES)
    signal.signal(signal.SIGUSR1, dump)
    sys.argv[0] = "uvicorn"
    uvicorn_main()
