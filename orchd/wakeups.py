"""Shared wake-ups: the daemon's event loop serves several agents' lines in one turn.

Why
---
Every line an agent prints wakes the daemon: the kernel wakes the event
loop, the worker reads the pipe and hands the line to the journal, the
journal wakes, commits and publishes.  With 200 agents printing 10 lines a
second each, that is 2,000 separate wake-ups a second, and most of the
daemon's CPU is what one wake-up costs on its own (cold caches, the loop's
turn, the kernel's wake-up path, one journal batch, one wake-up of ZeroMQ's
I/O thread), not the work on the line (``benchmarks/README.md``).

What
----
``CoalescingSelector`` is the event loop's epoll selector.  When the loop
has nothing left to do and would block, it looks first (a non-blocking
poll): what is ready already is served at once.  Otherwise it asks
``Coalescer`` whether to wait: when the last two wake-ups came from
*different* sources and the loop last found work less than ``window_s`` ago,
it sleeps until that window ends and then takes everything that arrived
meanwhile in one turn: one journal batch and one commit for all of them, one
wake-up of ZeroMQ's I/O thread for their PUB frames.

* One busy source (a single agent printing fast) keeps its latency: the
  loop blocks as before, woken by that one pipe each time.
* A quiet daemon is unchanged: the first wake-up after a quiet window is
  served at once; the wait only ever delays a wake-up that comes less than
  ``window_s`` after the previous one.
* A timer is never late for it (the wait is cut at the loop's timeout), and
  ready callbacks are never delayed (the loop asks with timeout 0 then).

The cost is latency: an event can wait up to ``window_s`` (1 ms by default,
``wake_coalesce_us``; 0 turns it off).  Measured with ``benchmarks/scale.py``
(200 agents x 10 lines/s): ~15% less daemon CPU in the steady state (62 -> 53%
of a core), the p99 no worse; ``benchmarks/README.md`` ("Sixth round") has the figures.
"""

from __future__ import annotations

import math
import selectors
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

T = TypeVar("T")


class Coalescer:
    """The decision, pure (explicit ``now``): how long to wait before blocking for I/O."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self.woke_at = -math.inf
        self.shared = False      # the last wake-up came from a source other than the one before it
        self._last_fd = -1

    def woke(self, now: float, fds: Sequence[int]) -> None:
        """The loop blocked, and ``fds`` (not empty) woke it at ``now``."""
        first = fds[0]
        self.shared = len(fds) > 1 or first != self._last_fd
        self._last_fd = first
        self.woke_at = now

    def busy(self, now: float) -> None:
        """Something was ready when the loop looked, without waiting: the window restarts at
        ``now``, but which source woke the loop is not judged by it (the journal's mailbox is
        made ready by the worker's own send in the same turn)."""
        self.woke_at = now

    def nap_s(self, now: float, timeout: float | None) -> float:
        """Seconds to sleep before blocking (0: block now); never past ``timeout``."""
        if not self.shared:
            return 0.0
        left = self.woke_at + self.window_s - now
        if left <= 0:
            return 0.0
        return left if timeout is None else min(left, timeout)


class CoalescingSelector(selectors.EpollSelector):
    """An epoll selector that waits out ``Coalescer``'s window before blocking."""

    def __init__(self, window_s: float, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        super().__init__()
        self.coalescer = Coalescer(window_s)
        self._clock = clock
        self._sleep = sleep

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)
        if ready:  # ready during the last turn: work is coming in, the window starts again
            self.coalescer.busy(self._clock())
            return ready
        if timeout is not None and timeout <= 0:
            return ready  # the loop only polls
        nap = self.coalescer.nap_s(self._clock(), timeout)
        if nap > 0:
            self._sleep(nap)
            if timeout is not None:
                timeout = max(0.0, timeout - nap)
        ready = super().select(timeout)
        if ready:
            self.coalescer.woke(self._clock(), [key.fd for key, _ in ready])
        return ready


def loop_factory(window_us: int) -> Callable[[], object] | None:
    """What ``asyncio.Runner`` builds the daemon's loop with (None, its default loop, when 0)."""
    if window_us <= 0:
        return None

    def new_loop() -> object:
        import asyncio
        loop = asyncio.SelectorEventLoop(CoalescingSelector(window_us / 1e6))
        asyncio.set_event_loop(loop)  # what Runner does for its default loop only
        return loop
    return new_loop


def run(main: Coroutine[Any, Any, T], window_us: int) -> T:
    """``asyncio.run(main)`` on a loop with shared wake-ups of ``window_us`` (0: asyncio's own)."""
    import asyncio
    with asyncio.Runner(loop_factory=loop_factory(window_us)) as runner:
        return runner.run(main)
