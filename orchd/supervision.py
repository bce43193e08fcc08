"""OTP-style supervision decisions, pure (no I/O, explicit clocks).

* ``permanent`` children are always restarted, ``transient`` ones only
  when they crashed, ``temporary`` ones never.
* More than ``max_restarts`` restarts within ``period_s`` seconds means the
  supervisor cannot fix things by restarting: it escalates (ends itself with
  an error, which its own parent handles).
"""

from __future__ import annotations

from collections import deque
from enum import StrEnum


class Restart(StrEnum):
    PERMANENT = "permanent"
    TRANSIENT = "transient"
    TEMPORARY = "temporary"


def should_restart(restart: Restart, crashed: bool) -> bool:
    if restart is Restart.PERMANENT:
        return True
    if restart is Restart.TRANSIENT:
        return crashed
    return False


class Intensity:
    """Restart intensity: at most ``max_restarts`` in any ``period_s`` window."""

    def __init__(self, max_restarts: int, period_s: float) -> None:
        self.max_restarts = max_restarts
        self.period_s = period_s
        self._times: deque[float] = deque()

    def allow(self, now: float) -> bool:
        """Record a restart at ``now``; False when it would exceed the intensity."""
        times = self._times
        while times and now - times[0] > self.period_s:
            times.popleft()
        if len(times) >= self.max_restarts:
            return False
        times.append(now)
        return True
