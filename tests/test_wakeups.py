"""Shared wake-ups (orchd/wakeups.py): the decision, and the selector on real pipes.

The clock and the sleep are the selector's only contact with time; the tests
hand it a clock they set and a sleep that records how long it was asked for
and makes "arrivals" happen meanwhile (writes to real pipes), so what the
selector returns after its nap is deterministic.
"""

from __future__ import annotations

import asyncio
import os
import selectors
import sys

import pytest

from orchd.wakeups import Coalescer, CoalescingSelector, loop_factory, run

WINDOW = 0.001


def test_a_quiet_coalescer_never_waits():
    c = Coalescer(WINDOW)
    assert c.nap_s(0.0, None) == 0.0
    assert c.nap_s(5.0, 1.0) == 0.0


def test_one_source_waking_the_loop_again_and_again_is_not_delayed():
    c = Coalescer(WINDOW)
    c.woke(0.0, [7])
    c.woke(0.0002, [7])
    assert not c.shared
    assert c.nap_s(0.0003, None) == 0.0


def test_different_sources_within_the_window_wait_for_its_end_and_never_past_the_timeout():
    c = Coalescer(WINDOW)
    c.woke(0.0, [7])
    c.woke(0.0002, [9])
    assert c.shared
    assert c.nap_s(0.0005, None) == pytest.approx(0.0007)
    assert c.nap_s(0.0005, 0.0001) == pytest.approx(0.0001)  # a timer due sooner wins
    assert c.nap_s(0.0013, None) == 0.0                       # the window is over: block at once


def test_two_sources_in_one_wake_up_count_as_shared():
    c = Coalescer(WINDOW)
    c.woke(0.0, [7])
    c.woke(0.1, [7, 9])
    assert c.shared


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def pipes():
    made = [os.pipe() for _ in range(4)]
    yield made
    for r, w in made:
        os.close(r)
        os.close(w)


def _selector(clock: Clock, naps: list[float], pipes, during_nap=None) -> CoalescingSelector:
    """A selector on the read ends of ``pipes``; its sleeps are recorded in ``naps``."""
    def sleep(s: float) -> None:
        naps.append(s)
        clock.now += s
        if during_nap:
            during_nap()
    sel = CoalescingSelector(WINDOW, clock=clock, sleep=sleep)
    for r, _ in pipes:
        sel.register(r, selectors.EVENT_READ)
    return sel


def _ready_fds(sel: CoalescingSelector, timeout: float | None) -> set[int]:
    return {key.fd for key, _ in sel.select(timeout)}


def _two_sources_woke_it(sel: CoalescingSelector, clock: Clock, a: int, b: int) -> None:
    """What the loop's last two blocking waits saw (how those are recorded: the nap test below)."""
    sel.coalescer.woke(clock.now, [a])
    clock.now += 0.0001
    sel.coalescer.woke(clock.now, [b])


def test_the_selector_does_not_delay_a_single_busy_source(pipes):
    clock, naps = Clock(), []
    sel = _selector(clock, naps, pipes)
    (a, wa), *_ = pipes
    sel.coalescer.woke(clock.now, [a])
    sel.coalescer.woke(clock.now, [a])
    clock.now += 0.0002                     # well within the window
    assert _ready_fds(sel, 0.001) == set()  # blocks (for real) for the loop's whole timeout
    assert naps == []
    sel.close()


def test_the_selector_serves_what_arrives_during_the_window_in_one_wake_up(pipes):
    clock, naps = Clock(), []
    (a, _), (b, _), (c, wc), (d, wd) = pipes
    sel = _selector(clock, naps, pipes, during_nap=lambda: (os.write(wc, b"x"), os.write(wd, b"y")))
    _two_sources_woke_it(sel, clock, a, b)
    woke_at = clock.now
    clock.now += 0.0003                     # the turn's work
    assert _ready_fds(sel, None) == {c, d}  # both arrivals of the nap, in one select
    assert naps == [pytest.approx(WINDOW - 0.0003)]
    assert sel.coalescer.woke_at == clock.now > woke_at  # recorded as the next wake-up...
    assert sel.coalescer.shared                          # ...by two sources
    sel.close()


def test_the_selector_serves_what_is_ready_already_without_waiting(pipes):
    clock, naps = Clock(), []
    (a, wa), (b, _), *_ = pipes
    sel = _selector(clock, naps, pipes)
    _two_sources_woke_it(sel, clock, a, b)
    clock.now += 0.0005
    os.write(wa, b"3")                      # made ready during the turn (say, by the worker's own send)
    assert _ready_fds(sel, None) == {a}
    assert naps == []
    assert sel.coalescer.woke_at == clock.now  # work found: the window starts again here
    sel.close()


def test_work_found_without_waiting_does_not_count_as_another_source(pipes):
    clock, naps = Clock(), []
    (a, _), (b, wb), *_ = pipes
    sel = _selector(clock, naps, pipes)
    sel.coalescer.woke(clock.now, [a])
    sel.coalescer.woke(clock.now, [a])      # one agent's pipe, again and again
    os.write(wb, b"1")                      # the journal's mailbox, made ready by the worker's send
    assert _ready_fds(sel, None) == {b}
    assert not sel.coalescer.shared         # still one source: that agent keeps its latency
    sel.close()


def test_the_selector_never_sleeps_past_the_loops_timeout_nor_when_it_only_polls(pipes):
    clock, naps = Clock(), []
    (a, _), (b, _), *_ = pipes
    sel = _selector(clock, naps, pipes)
    _two_sources_woke_it(sel, clock, a, b)
    assert _ready_fds(sel, 0) == set()        # callbacks are ready: a poll, no nap
    assert naps == []
    assert _ready_fds(sel, 0.0001) == set()   # a timer due in 100 µs
    assert naps == [pytest.approx(0.0001)]
    sel.close()


def test_no_window_means_asyncios_own_loop():
    assert loop_factory(0) is None


def test_the_daemons_loop_runs_subprocesses_and_timers_on_the_coalescing_selector():
    async def main() -> tuple[object, bytes, int]:
        loop = asyncio.get_running_loop()
        proc = await asyncio.create_subprocess_exec(sys.executable, "-c", "print('hi')",
                                                    stdout=asyncio.subprocess.PIPE)
        out, _ = await proc.communicate()
        await asyncio.sleep(0.01)  # a timer on this selector (what is tested, not a wait for an event)
        return loop._selector, out, proc.returncode  # type: ignore[attr-defined]

    selector, out, rc = run(main(), 1000)  # what orchd run and orchd host call
    assert isinstance(selector, CoalescingSelector)
    assert (out, rc) == (b"hi\n", 0)
