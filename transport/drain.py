"""The graceful drain on SIGTERM/SIGINT, run before uvicorn's own shutdown.

uvicorn's shutdown closes every WebSocket with 1012 from its protocol's
`shutdown()`, before the app's lifespan shutdown runs: too late for the app to
choose how each socket ends. uvicorn installs its signal handlers (with
`signal.signal`, its `Server.handle_exit`) before the lifespan starts up, so
the lifespan chains this handler in front of them. On the first signal:

1. stop accepting sockets: new handshakes get HTTP 503, `/readyz` 503;
2. finish the writes already taken: frames whose handler runs commit and are
   echoed; frames read from now on are answered with `error` `unavailable`;
3. close the sockets: 1012 to clients that resume (`?since=`, `?resume=1`),
   the connection dropped without a close frame for the others (the
   platform's client reconnects only after an unclean close); at the
   deadline, connections still open (a peer that never answers the close)
   are aborted;
4. hand the signal to uvicorn, whose shutdown (listeners closed, the lifespan's
   shutdown: the store writer commits what it holds) then exits.

All of it within DRAIN_TIMEOUT. A second signal goes to uvicorn at once (a
second Ctrl+C forces its exit). Under a server other than uvicorn nothing is
chained (logged at start-up): the server's own shutdown applies.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable, Collection, Mapping
from types import FrameType
from typing import Any, Protocol

from .asgi import RAW_SEND
from .uvicorn import drop_connection

log = logging.getLogger("realtime.drain")


class Socket(Protocol):
    scope: Any

    def end_for_restart(self) -> bool: ...


class Runtime(Protocol):
    """What the drain needs of the app's runtime (endpoints/runtime.py): transport/ imports no endpoints/."""

    draining: bool
    handling: int

    @property
    def sockets(self) -> Mapping[int, Collection[Socket]]: ...


SIGNALS = (signal.SIGINT, signal.SIGTERM)
# How often the drain looks whether a step is done.
POLL = 0.02

Handler = Callable[[int, FrameType | None], Any]


class Drain:
    def __init__(self, runtime: Runtime, timeout: float) -> None:
        self.rt = runtime
        self.timeout = timeout
        self._previous: dict[int, Handler] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._started = False

    def install(self) -> bool:
        """Chain onto uvicorn's handlers; False (and nothing changed) where there are none."""
        if threading.current_thread() is not threading.main_thread():
            log.info("graceful drain off: not in the main thread, the server's own shutdown applies")
            return False
        previous = {sig: signal.getsignal(sig) for sig in SIGNALS}
        if not all(_is_uvicorns(handler) for handler in previous.values()):
            log.info("graceful drain off: not under uvicorn's signal handling, the server's own shutdown applies")
            return False
        self._loop = asyncio.get_running_loop()
        for sig, handler in previous.items():
            self._previous[sig] = handler  # type: ignore[assignment]
            signal.signal(sig, self._on_signal)
        return True

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            if signal.getsignal(sig) == self._on_signal:
                signal.signal(sig, handler)
        self._previous.clear()

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        # A Python signal handler runs between two bytecodes of the main thread,
        # maybe inside the event loop's own code: only schedule from here.
        if self._started or self._loop is None:
            self._previous[sig](sig, frame)
            return
        self._started = True
        self._loop.call_soon_threadsafe(self._begin, sig)

    def _begin(self, sig: int) -> None:
        self._task = asyncio.ensure_future(self._run(sig))

    async def _run(self, sig: int) -> None:
        try:
            await self.drain()
        except Exception:
            log.exception("the drain failed; uvicorn's shutdown goes on")
        finally:
            handler = self._previous.get(sig)
            if handler is not None:
                handler(sig, None)

    async def drain(self) -> None:
        rt = self.rt
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        rt.draining = True
        log.info("draining: new sockets refused, %d frame(s) being handled", rt.handling)
        if not await _until(lambda: rt.handling == 0, deadline):
            log.warning("drain: %d frame(s) still being handled after %gs", rt.handling, self.timeout)
        resumed = dropped = 0
        for endpoint in [e for sockets in rt.sockets.values() for e in sockets]:
            if endpoint.end_for_restart():
                resumed += 1
            else:
                dropped += 1
        log.info("drain: %d socket(s) closed with 1012, %d dropped for their client to reconnect", resumed, dropped)
        # Each socket's task leaves its topics and the registry once its close is through.
        if not await _until(lambda: not rt.sockets, deadline):
            # A peer that does not answer the close (or stopped reading) must not hold the exit up.
            left = [e for sockets in rt.sockets.values() for e in sockets]
            for endpoint in left:
                drop_connection(endpoint.scope.get(RAW_SEND), abort=True)
            log.warning("drain: %d socket(s) still open after %gs: connections aborted", len(left), self.timeout)


def _is_uvicorns(handler: Any) -> bool:
    owner = getattr(handler, "__self__", None)
    return getattr(handler, "__name__", "") == "handle_exit" and type(owner).__module__.startswith("uvicorn.")


async def _until(done: Callable[[], bool], deadline: float) -> bool:
    loop = asyncio.get_running_loop()
    while not done():
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(POLL)
    return True
