"""Where a py-spy profile spends its samples: self and inclusive time per
function, self time per file and per component.

    python -m bench.hotspots bench/out/prof-RUN-project-fanout.txt [--top 25]

The input is `py-spy record --format raw` (collapsed stacks: frames joined by
`;`, then a space and the sample count), as `bench.run --profile` writes it.
With `--gil` (what bench.run uses) only the thread holding the GIL is sampled,
so the percentages are shares of the server's Python CPU time.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

FRAME = re.compile(r"^(?P<name>.*) \((?P<path>[^()]*?)(?::(?P<line>\d+))?\)$")
# First match wins: where a file belongs, by a piece of its path.
COMPONENTS = [
    ("uvicorn websockets-sansio", "uvicorn/protocols/websockets"),
    ("uvicorn other", "uvicorn/"),
    ("websockets (frames, protocol)", "websockets/"),
    ("starlette", "starlette/"),
    ("asyncio event loop", "asyncio/"),
    ("aiosqlite", "aiosqlite/"),
    ("databases", "databases/"),
    ("msgspec", "msgspec"),
    ("PyJWT", "jwt/"),
    ("redis client", "redis/"),
    ("project: endpoints", "endpoints/"),
    ("project: events", "events/"),
    ("project: store", "store/"),
    ("project: transport", "transport/"),
    ("python stdlib", "/lib/python3"),
]


def short(path: str) -> str:
    for marker in ("site-packages/", "/lib/python3.11/", "/work/main/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def component(path: str) -> str:
    for name, piece in COMPONENTS:
        if piece in path:
            return name
    return "other"


def parse(text: str) -> list[tuple[list[tuple[str, str]], int]]:
    stacks = []
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = []
        for raw in stack.split(";"):
            match = FRAME.match(raw)
            if match is None:
                frames.append((raw, ""))  # a thread or process root
            else:
                frames.append((match["name"], match["path"]))
        stacks.append((frames, int(count)))
    return stacks


def summarize(stacks: list[tuple[list[tuple[str, str]], int]], top: int) -> str:
    total = sum(count for _, count in stacks) or 1
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    files: Counter[str] = Counter()
    parts: Counter[str] = Counter()
    for frames, count in stacks:
        named = [(name, path) for name, path in frames if path]
        if not named:
            continue
        name, path = named[-1]
        own[f"{name} ({short(path)})"] += count
        files[short(path)] += count
        parts[component(path)] += count
        for key in {f"{n} ({short(p)})" for n, p in named}:
            inclusive[key] += count

    def table(title: str, counts: Counter[str], n: int) -> list[str]:
        rows = [f"{title}", "| % | samples | where |", "|---:|---:|---|"]
        rows += [f"| {100 * c / total:.1f} | {c} | `{k}` |" for k, c in counts.most_common(n)]
        return [*rows, ""]

    out = [f"{total} samples", ""]
    out += table("Self time by component", parts, len(parts))
    out += table("Self time by file", files, top)
    out += table("Self time by function", own, top)
    out += table("Inclusive time by function (on the stack)", inclusive, top)
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.hotspots", description=__doc__.split("\n\n")[0])
    p.add_argument("profile", type=Path)
    p.add_argument("--top", type=int, default=25)
    args = p.parse_args()
    print(summarize(parse(args.profile.read_text()), args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
