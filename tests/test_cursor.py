"""The history-then-live cursor (orchctl/cursor.py), as pure code: no sockets, no clock."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchctl.cursor import Cursor, Item


class World:
    """A log of events of a few sessions, the daemon's ``Replay`` over it, and a cursor fed by hand.

    ``prev`` is what the journal writes: the seq of the same session's
    previous event, or 0 where ``unknown`` says the journal did not know it.
    """

    def __init__(self, sessions: list[str], unknown: set[int] = frozenset(), page_limit: int = 3,
                 watch: str | None = "a", since: int = 0) -> None:
        self.log: list[tuple[int, str, int]] = []  # (seq, session, prev)
        self._last_of: dict[str, int] = {}
        for s in sessions:
            self.append(s, unknown)
        self.page_limit = page_limit
        self.watch = watch
        self.cursor = Cursor(since, by_session=watch is not None)
        self.since = since
        self.out: list[int] = []
        self.fetches: list[int] = []

    def append(self, session: str, unknown=frozenset()) -> Item:
        seq = len(self.log) + 1
        prev = 0 if seq in unknown else self._last_of.get(session, 0)
        self._last_of[session] = seq
        self.log.append((seq, session, prev))
        return Item(seq, prev, session)

    def item(self, seq: int) -> Item:
        s, session, prev = self.log[seq - 1]
        return Item(s, prev, session)

    def expected(self) -> list[int]:
        return [s for s, session, _ in self.log if s > self.since and self.watch in (None, session)]

    def serve(self, pages: int | None = None) -> None:
        """Answer the cursor's replay requests (all of them, or ``pages``) from the log as it is now."""
        while (since := self.cursor.next_fetch()) is not None and pages != 0:
            self.fetches.append(since)
            rows = [self.item(s) for s, session, _ in self.log
                    if s > since and self.watch in (None, session)][: self.page_limit]
            self.take(self.cursor.page(rows, more=len(rows) == self.page_limit))
            pages = None if pages is None else pages - 1

    def take(self, items: list[Item]) -> None:
        self.out += [it.seq for it in items]
        assert self.out == self.expected()[: len(self.out)], "skipped, repeated or reordered an event"


def test_history_then_live_without_gaps_asks_for_no_replay():
    w = World(["a", "a", "a"])
    w.serve()
    assert w.out == [1, 2, 3] and w.fetches == [0, 3]
    for _ in range(3):
        w.take(w.cursor.live(w.append("a")))
    assert w.out == [1, 2, 3, 4, 5, 6] and w.cursor.next_fetch() is None


def test_live_frames_seen_during_the_history_are_not_printed_twice():
    w = World(["a", "a", "a", "a"], page_limit=2)
    for seq in (3, 4):
        assert w.cursor.live(w.item(seq)) == []  # held: the history is not read yet
    w.serve()
    assert w.out == [1, 2, 3, 4]
    w.take(w.cursor.live(w.item(4)))
    assert w.out == [1, 2, 3, 4]


def test_session_gap_is_found_by_prev_and_read_from_the_log():
    w = World(["a", "b", "a"])
    w.serve()
    assert w.out == [1, 3]
    for s in ("b", "a", "a", "b", "a"):
        w.append(s)  # 4 b, 5 a, 6 a, 7 b, 8 a
    assert w.item(8).prev == 6
    w.take(w.cursor.live(w.item(8)))  # 5 and 6 were dropped by the PUB
    assert w.out == [1, 3] and w.cursor.next_fetch() == 3
    w.serve()
    assert w.out == [1, 3, 5, 6, 8]
    w.take(w.cursor.live(w.item(6)))  # a late duplicate
    assert w.out == [1, 3, 5, 6, 8]


def test_other_sessions_between_two_events_are_no_gap():
    w = World(["a", "b", "b", "a"])
    w.serve()
    n = len(w.fetches)
    w.append("b")
    w.take(w.cursor.live(w.append("a")))  # seq 6, prev 4: the b events are not ours
    assert w.out == [1, 4, 6] and len(w.fetches) == n


def test_unknown_prev_is_checked_once_unless_seq_follows():
    w = World(["a"], unknown={2, 4})
    w.serve()
    n = len(w.fetches)
    w.take(w.cursor.live(w.append("a", unknown={2})))  # seq 2 == last + 1: nothing can be missing
    assert w.out == [1, 2] and len(w.fetches) == n
    w.append("b")
    w.take(w.cursor.live(w.append("a", unknown={4})))  # seq 4, prev unknown: one replay says 3 is not ours
    assert w.cursor.next_fetch() == 2
    w.serve()
    assert w.out == [1, 2, 4] and w.fetches[n:] == [2]


def test_watching_everything_finds_gaps_by_seq():
    w = World(["a", "b"], watch=None)
    w.serve()
    for s in ("a", "b", "a"):
        w.append(s)
    w.take(w.cursor.live(w.item(5)))
    assert w.cursor.next_fetch() == 2
    w.serve()
    assert w.out == [1, 2, 3, 4, 5]


def test_idle_reads_a_dropped_tail():
    w = World(["a"])
    w.serve()
    w.append("a")
    w.append("a")  # both dropped by the PUB, and nothing comes after them
    assert w.cursor.next_fetch() is None
    w.cursor.idle()
    w.serve()
    assert w.out == [1, 2, 3]


def test_since_skips_older_events():
    w = World(["a", "a", "b", "a"], since=2)
    w.serve()
    assert w.out == [4]
    w.append("b")
    w.take(w.cursor.live(w.append("a")))
    assert w.out == [4, 6]


def test_a_log_without_the_live_event_does_not_loop_forever():
    """The live copy is taken when the exhausted log disagrees (a filter mismatch): progress, no loop."""
    c = Cursor(0, by_session=True)
    assert c.page([], more=False) == []
    assert c.live(Item(5, 3, "x")) == []
    assert c.next_fetch() == 0
    assert [it.seq for it in c.page([], more=False)] == [5]
    assert c.next_fetch() is None and c.last == 5


def test_a_page_nobody_asked_for_is_our_bug():
    c = Cursor(0, by_session=False)
    c.page([], more=False)
    with pytest.raises(RuntimeError):
        c.page([Item(1)], more=False)


SESSIONS = st.sampled_from(["a", "b", "c"])


@settings(max_examples=300, deadline=None)
@given(data=st.data(), sessions=st.lists(SESSIONS, max_size=40), watch=st.sampled_from(["a", "b", None]),
       since=st.integers(0, 5), page_limit=st.integers(1, 6), preloaded=st.integers(0, 10))
def test_any_drops_duplicates_and_reorders_give_the_full_sequence_once(data, sessions, watch, since, page_limit,
                                                                      preloaded):
    """Events are logged, then published; the PUB drops, repeats and reorders what it delivers.

    Whatever it does, and however replies and live frames interleave, the
    cursor hands out exactly the log's events for the watch, in order, once
    (and at no moment a prefix with a hole: ``World.take`` checks each step).
    """
    unknown = set(data.draw(st.sets(st.integers(1, max(1, preloaded)), max_size=5), label="prev unknown"))
    w = World(sessions[:preloaded], unknown, page_limit, watch, since)
    to_publish = sessions[preloaded:]
    in_flight: list[Item] = []  # published, not yet delivered
    while to_publish or in_flight:
        actions = ["publish"] * 3 * bool(to_publish) + ["deliver"] * 3 * bool(in_flight) \
            + ["serve"] * 2 * (w.cursor.next_fetch() is not None) + ["idle"]
        action = data.draw(st.sampled_from(actions), label="action")
        if action == "publish":
            if data.draw(st.integers(0, 3), label="prev unknown") == 0:
                unknown.add(len(w.log) + 1)
            it = w.append(to_publish.pop(0), unknown)
            if watch in (None, it.data) and data.draw(st.integers(0, 2), label="dropped") != 0:
                in_flight.append(it)
                if data.draw(st.integers(0, 9), label="dup") == 0:
                    in_flight.append(it)
        elif action == "deliver":
            reorder = data.draw(st.integers(0, 9), label="reorder") == 0
            it = in_flight.pop(data.draw(st.integers(0, len(in_flight) - 1)) if reorder else 0)
            w.take(w.cursor.live(it))
        elif action == "serve":
            w.serve(pages=1)
        else:
            w.cursor.idle()
    w.serve()
    w.cursor.idle()
    w.serve()
    assert w.out == w.expected()
    assert w.cursor.next_fetch() is None


@settings(max_examples=300, deadline=None)
@given(events=st.lists(st.tuples(SESSIONS, st.booleans(), st.booleans()), max_size=30),
       page_limit=st.integers(1, 4))
def test_watch_of_one_session_behind_a_dropping_pub_prints_everything_once(events, page_limit):
    """The real watch's order of work: history, then each live frame, each replay answered at once.

    Each event is (session, dropped by the PUB, prev unknown to the journal).
    """
    w = World([], page_limit=page_limit, watch="a")
    w.serve()
    for session, dropped, prev_unknown in events:
        it = w.append(session, unknown={len(w.log) + 1} if prev_unknown else ())
        if session == "a" and not dropped:
            w.take(w.cursor.live(it))
            w.serve()
    w.cursor.idle()
    w.serve()
    assert w.out == w.expected()
