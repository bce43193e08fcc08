"""A worker's deadlines, as pure code: no clock, no I/O, an explicit ``now``.

Theory of operation
-------------------
A worker goes through four phases, and each has its own deadlines (all on
the monotonic clock, in seconds):

* waiting: the agent has not started.  ``start`` is due once the start
  delay (a recovery backoff) has passed and the worker is not paused; a
  paused worker waits for a resume however long that takes.
* running: ``wall_time`` is due ``wall_time_s`` after the start, ``stall``
  ``stall_s`` after the last output.  A pause suspends the stall clock (the
  paused time is not silence); wall time keeps running.  Once the worker
  is stopping (a limit fired, or it was told to stop) neither applies.
* exited: the agent's main process has exited, but something it left
  behind may still hold its output pipes.  ``exit_grace`` is due
  ``exit_grace_s`` after the exit: then the worker kills the process group.
* killed: the group is dead; the readers only drain what is buffered.
  ``drain`` is due when nothing has been read for ``exit_grace_s`` (a
  process that escaped the group can hold a pipe open forever): then the
  worker closes its ends of the pipes.

The worker tells this object what happened (``started``, ``output``,
``pause``, ...) and asks ``expired(now)`` which deadline has passed and
``next_wakeup()`` when to look again.  It never needs to poll: no deadline
expires before ``next_wakeup()``.
"""

from __future__ import annotations

from typing import Literal

Due = Literal["start", "wall_time", "stall", "exit_grace", "drain"]


class Deadlines:
    """The deadlines of one worker; one owner (the worker actor), so no locking."""

    __slots__ = ("wall_time_s", "stall_s", "exit_grace_s", "start_at", "started_at", "last_output_at", "last_read_at",
                 "paused_at", "stopping", "exited_at", "killed_at", "closed")

    def __init__(self, now: float, *, start_delay_s: float = 0.0, wall_time_s: float | None = None,
                 stall_s: float | None = None, exit_grace_s: float = 2.0, paused: bool = False) -> None:
        self.wall_time_s = wall_time_s or None  # 0 means no limit, as None does
        self.stall_s = stall_s or None
        self.exit_grace_s = max(0.0, exit_grace_s)
        self.start_at = now + max(0.0, start_delay_s)
        self.started_at: float | None = None
        self.last_output_at = now  # for the stall clock, which a pause suspends
        self.last_read_at = now  # the real time of the last output, for draining
        self.paused_at: float | None = now if paused else None
        self.stopping = False
        self.exited_at: float | None = None
        self.killed_at: float | None = None
        self.closed = False

    # ------------------------------------------------------------ facts

    def started(self, now: float) -> None:
        """The agent process started: the wall and stall clocks start now."""
        self.started_at = now
        self.last_output_at = now

    def output(self, now: float) -> None:
        """The agent wrote something (stdout or stderr)."""
        self.last_output_at = max(self.last_output_at, now)
        self.last_read_at = max(self.last_read_at, now)

    def pause(self, now: float) -> bool:
        """Paused now; False if it already was."""
        if self.paused_at is not None:
            return False
        self.paused_at = now
        return True

    def resume(self, now: float) -> bool:
        """Resumed now; False if it was not paused.  The paused time is not a stall."""
        if self.paused_at is None:
            return False
        # the silence before the pause still counts; the pause itself and output read during it do not
        self.last_output_at = now - max(0.0, self.paused_at - self.last_output_at)
        self.paused_at = None
        return True

    def stop(self) -> None:
        """The worker is stopping: the limits have done their job."""
        self.stopping = True

    def exited(self, now: float) -> None:
        """The agent's main process exited: the exit grace starts."""
        if self.exited_at is None:
            self.exited_at = now

    def killed(self, now: float) -> None:
        """After the exit, the process group was killed: drain what is left."""
        if self.exited_at is not None and self.killed_at is None:
            self.killed_at = now

    def pipes_closed(self) -> None:
        """After the kill, the worker closed its ends of the pipes: nothing more to wait for."""
        if self.killed_at is not None:
            self.closed = True

    # ------------------------------------------------------------ questions

    @property
    def paused(self) -> bool:
        return self.paused_at is not None

    def _pending(self) -> list[tuple[float, Due]]:
        """The deadlines that apply now, in priority order."""
        if self.started_at is None:
            return [] if self.paused_at is not None else [(self.start_at, "start")]
        if self.closed:
            return []
        if self.killed_at is not None:
            return [(max(self.killed_at, self.last_read_at) + self.exit_grace_s, "drain")]
        if self.exited_at is not None:
            return [(self.exited_at + self.exit_grace_s, "exit_grace")]
        if self.stopping:
            return []
        out: list[tuple[float, Due]] = []
        if self.wall_time_s is not None:
            out.append((self.started_at + self.wall_time_s, "wall_time"))
        if self.stall_s is not None and self.paused_at is None:
            out.append((self.last_output_at + self.stall_s, "stall"))
        return out

    def expired(self, now: float) -> Due | None:
        """The deadline that has passed at ``now`` (the most important one), or None."""
        for at, due in self._pending():
            if now >= at:
                return due
        return None

    def next_wakeup(self) -> float | None:
        """The monotonic time of the earliest deadline, or None when only a message can change things."""
        pending = self._pending()
        return min(at for at, _ in pending) if pending else None

    def timeout_s(self, now: float) -> float | None:
        """Seconds from ``now`` to ``next_wakeup()`` (0 when a deadline has passed), or None."""
        at = self.next_wakeup()
        return None if at is None else max(0.0, at - now)
