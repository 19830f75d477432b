"""Full garbage collections paced by closed sockets rather than by allocations.

A closed connection leaves cycles that only the cyclic collector frees
(asyncio's transport holds its own bound read callback; websockets' sans-I/O
protocol holds its parser generator, whose frame holds the protocol), a few
kilobytes a socket. Python's own pacing (700 allocations a young collection,
a full one when the old generation grew by a quarter) costs a storm of
reconnects a third of its CPU and pauses of hundreds of milliseconds, because
every connect allocates objects that live as long as the socket. With higher
thresholds (GC_THRESHOLDS) those costs go, but closed sockets' cycles then
wait for a collection that comes rarely: a churn of sockets grows the heap.

So a process the server owns collects fully once a quarter of its sockets
(at least `minimum`) have closed since the last collection: the memory of
closed sockets is bounded by the live ones, and the cost per closed socket is
constant, as with Python's own rule for the old generation.
"""

from __future__ import annotations

import asyncio
import gc

MINIMUM = 1000  # closed sockets between two collections, at the least
SHARE = 4  # ... or a quarter of the users with a socket open, if that is more


class SocketSweep:
    def __init__(self, minimum: int = MINIMUM) -> None:
        self.minimum = minimum
        self.closed_since = 0
        self.collections = 0
        self._scheduled = False

    def closed(self, open_users: int) -> None:
        """A socket's state was let go; `open_users`: users with a socket still open (cheap to count)."""
        self.closed_since += 1
        if self._scheduled or self.closed_since < max(self.minimum, open_users // SHARE):
            return
        self._scheduled = True
        # After the closing socket's own frames are gone, not inside its cleanup.
        asyncio.get_running_loop().call_soon(self._collect)

    def _collect(self) -> None:
        self._scheduled = False
        self.closed_since = 0
        self.collections += 1
        gc.collect()
