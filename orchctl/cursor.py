"""The history-then-live cursor: every event after ``since`` exactly once, in ``seq`` order (sans-I/O).

Theory of operation
-------------------
A subscriber has two sources of events.  The log, read with ``Replay``
pages, is complete and in order but must be asked for.  The events PUB is
immediate but drops frames for a subscriber that falls behind (its
high-water mark), and says nothing when it does.  The cursor merges them
(the ZeroMQ Guide's Clone pattern, with gap repair):

* ``last`` is the highest ``seq`` handed out; output is always in rising
  ``seq`` order, so "never twice" is just "only ``seq > last``".
* A live event is handed out at once when its predecessor in the
  subscriber's stream is known to be handled.  Watching everything, the
  predecessor is ``seq - 1`` (seq is daemon-wide and has no holes).  Watching
  one session, it is the event's ``prev``: the seq of the same session's
  previous event; ``prev <= last`` means nothing is missing, ``prev > last``
  is a gap.  ``prev == 0`` means the journal did not know it: unless
  ``seq == last + 1`` the cursor checks with one replay.
* On a gap the cursor asks for ``Replay(since=last)`` pages until it has
  handed out the live event that showed the gap (or the log has no more),
  holding the live events that arrive meanwhile; then it releases the held
  events above ``last``, which may show another gap.
* When the PUB drops the *last* events of a stream nothing later shows the
  gap, so the caller reports idleness (``idle``) and the cursor reads the
  log's tail.

The cursor never touches a socket or a clock: ``next_fetch`` says which
replay to ask for, ``page`` takes its answer, ``live`` takes a PUB event,
and each returns the events to hand out.  The events' payload is opaque.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable


@dataclass(frozen=True, slots=True)
class Item:
    """One event as the cursor sees it; ``data`` is the caller's (e.g. the JSON bytes)."""

    seq: int
    prev: int = 0
    data: Any = None


class Cursor:
    """History, then live, with gaps repaired from the log.

    ``by_session``: the stream is one session's (gaps are found by ``prev``);
    otherwise it is every event (gaps are found by ``seq``).
    """

    def __init__(self, since: int, by_session: bool) -> None:
        self.last = since
        self.by_session = by_session
        self._fetching = True   # the history comes first
        self._target: int | None = None  # fetch until last >= target; None: until the log has no more
        self._held: list[Item] = []

    def next_fetch(self) -> int | None:
        """The ``since`` of the ``Replay`` to ask for now, or None while live."""
        return self.last if self._fetching else None

    def page(self, items: Iterable[Item], more: bool) -> list[Item]:
        """A ``Replay`` answer to the last ``next_fetch``: the events to hand out, in order."""
        if not self._fetching:
            raise RuntimeError("a replay page arrived while no replay was asked for")
        items = sorted(items, key=lambda it: it.seq)
        out = self._take(items)
        exhausted = not more or not items
        if not exhausted and (self._target is None or self.last < self._target):
            return out
        target, self._fetching, self._target = self._target, False, None
        held, self._held = self._held, []
        if exhausted and target is not None:
            # The event that showed the gap is logged before it is published, so
            # an exhausted log has handed it out; if not, the filter and the log
            # disagree, and the live copy is taken rather than asked for forever.
            out += self._take([it for it in held if it.seq <= target])
            held = [it for it in held if it.seq > target]
        return out + self._advance(held)

    def live(self, item: Item) -> list[Item]:
        """One event from the PUB: the events to hand out now (maybe none)."""
        if self._fetching:
            if item.seq > self.last:
                self._held.append(item)
            return []
        return self._advance([item])

    def idle(self) -> None:
        """Nothing arrived for a while: read the log's tail (the PUB may have dropped it)."""
        if not self._fetching:
            self._fetching, self._target = True, None

    # ---------------------------------------------------------------- internals

    def _take(self, items: Iterable[Item]) -> list[Item]:
        out = []
        for it in items:
            if it.seq > self.last:
                out.append(it)
                self.last = it.seq
        return out

    def _follows(self, it: Item) -> bool:
        """Whether nothing of the stream lies between ``last`` and ``it``."""
        if it.seq == self.last + 1:
            return True
        if not self.by_session:
            return False
        return 0 < it.prev <= self.last

    def _advance(self, items: list[Item]) -> list[Item]:
        out = []
        items = sorted(items, key=lambda it: it.seq)
        for i, it in enumerate(items):
            if it.seq <= self.last:
                continue
            if not self._follows(it):
                self._fetching, self._target = True, it.seq
                self._held = [x for x in items[i:] if x.seq > self.last]
                break
            out.append(it)
            self.last = it.seq
        return out
