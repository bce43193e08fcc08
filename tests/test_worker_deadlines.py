"""A worker's deadlines as pure code: explicit ``now``, no clock, no I/O."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from actors.deadlines import Deadlines


def test_start_waits_out_the_delay():
    d = Deadlines(100.0, start_delay_s=5)
    assert d.expired(104.9) is None
    assert d.next_wakeup() == 105.0
    assert d.timeout_s(103.0) == 2.0
    assert d.expired(105.0) == "start"


def test_no_delay_starts_at_once():
    d = Deadlines(7.0)
    assert d.expired(7.0) == "start"
    assert d.timeout_s(7.0) == 0.0


def test_a_paused_worker_waits_for_resume_however_long():
    d = Deadlines(0.0, start_delay_s=1, paused=True)
    assert d.paused
    assert d.next_wakeup() is None and d.timeout_s(50.0) is None
    assert d.expired(1e9) is None
    assert d.resume(60.0)
    assert d.expired(60.0) == "start"  # the delay passed while it was paused


def test_a_pause_during_the_delay_holds_the_start():
    d = Deadlines(0.0, start_delay_s=10)
    assert d.pause(2.0) and not d.pause(3.0)
    assert d.expired(20.0) is None
    assert d.resume(20.0) and not d.resume(21.0)
    assert d.expired(20.0) == "start"


def test_stall_counts_from_the_last_output():
    d = Deadlines(0.0, stall_s=10)
    d.started(5.0)
    assert d.next_wakeup() == 15.0
    d.output(12.0)
    assert d.expired(21.9) is None and d.next_wakeup() == 22.0
    assert d.expired(22.0) == "stall"


def test_stall_clock_starts_with_the_process_not_the_worker():
    d = Deadlines(0.0, stall_s=10)
    d.started(30.0)  # e.g. a slow version probe or a long backoff before the start
    assert d.expired(39.0) is None
    assert d.expired(40.0) == "stall"


def test_paused_time_is_not_a_stall_but_the_silence_before_it_is():
    d = Deadlines(0.0, stall_s=10)
    d.started(0.0)
    d.pause(4.0)  # 4 s of silence so far
    assert d.expired(1000.0) is None and d.next_wakeup() is None
    d.resume(1000.0)
    assert d.expired(1005.9) is None
    assert d.expired(1006.0) == "stall"


def test_output_read_while_paused_resets_the_silence():
    d = Deadlines(0.0, stall_s=10)
    d.started(0.0)
    d.pause(8.0)
    d.output(9.0)  # buffered output read after the SIGSTOP
    d.resume(100.0)
    assert d.expired(109.9) is None and d.expired(110.0) == "stall"


def test_wall_time_runs_through_pauses_and_beats_stall():
    d = Deadlines(0.0, wall_time_s=60, stall_s=10)
    d.started(0.0)
    d.pause(1.0)
    assert d.next_wakeup() == 60.0
    assert d.expired(60.0) == "wall_time"
    d.resume(60.0)
    assert d.expired(200.0) == "wall_time"  # both passed: wall time is the one reported


def test_zero_limits_mean_no_limit():
    d = Deadlines(0.0, wall_time_s=0, stall_s=0)
    d.started(0.0)
    assert d.next_wakeup() is None and d.expired(1e9) is None


def test_stopping_turns_the_limits_off():
    d = Deadlines(0.0, wall_time_s=5, stall_s=5)
    d.started(0.0)
    assert d.expired(6.0) == "wall_time"
    d.stop()
    assert d.expired(6.0) is None and d.next_wakeup() is None


def test_exit_grace_then_drain():
    d = Deadlines(0.0, wall_time_s=5, stall_s=5, exit_grace_s=2)
    d.started(0.0)
    d.exited(3.0)
    assert d.next_wakeup() == 5.0  # the exit grace, not the limits: they no longer apply
    assert d.expired(4.9) is None
    assert d.expired(5.0) == "exit_grace"
    d.exited(4.0)  # a second report changes nothing
    assert d.expired(5.0) == "exit_grace"
    d.killed(5.0)
    assert d.expired(6.9) is None
    d.output(6.0)  # still draining buffered output: the drain deadline moves
    assert d.expired(7.9) is None and d.next_wakeup() == 8.0
    assert d.expired(8.0) == "drain"
    d.pipes_closed()
    assert d.expired(1e9) is None and d.next_wakeup() is None


def test_exit_grace_applies_even_while_stopping_or_paused():
    d = Deadlines(0.0, exit_grace_s=1)
    d.started(0.0)
    d.stop()
    d.pause(0.5)
    d.exited(2.0)
    assert d.expired(3.0) == "exit_grace"


# ---------------------------------------------------------------- properties

OPS = st.lists(st.tuples(st.sampled_from(["started", "output", "pause", "resume", "stop", "exited", "killed",
                                          "pipes_closed", "look"]),
                         st.integers(min_value=0, max_value=30)),
               max_size=40)


class Reference:
    """The rules written the slow, obvious way: silence accumulated step by step."""

    def __init__(self, now, delay, wall, stall, grace, paused):
        self.now, self.delay, self.wall, self.stall, self.grace = now, delay, wall, stall, grace
        self.created, self.paused, self.started_at = now, paused, None
        self.silence, self.stopping, self.exited_at, self.killed_at, self.closed = 0, False, None, None, False
        self.quiet_since_kill = 0

    def advance(self, now):
        dt = now - self.now
        if self.started_at is not None and not self.paused:
            self.silence += dt
        self.quiet_since_kill += dt
        self.now = now

    def apply(self, op):
        if op == "started":
            self.started_at, self.silence = self.now, 0
        elif op == "output":
            self.silence = 0
            self.quiet_since_kill = 0
        elif op == "pause":
            self.paused = True
        elif op == "resume":
            self.paused = False
        elif op == "stop":
            self.stopping = True
        elif op == "exited" and self.exited_at is None:
            self.exited_at = self.now
        elif op == "killed" and self.exited_at is not None and self.killed_at is None:
            self.killed_at, self.quiet_since_kill = self.now, 0
        elif op == "pipes_closed" and self.killed_at is not None:
            self.closed = True

    def expired(self):
        now = self.now
        if self.started_at is None:
            return "start" if not self.paused and now >= self.created + self.delay else None
        if self.closed:
            return None
        if self.killed_at is not None:
            return "drain" if self.quiet_since_kill >= self.grace else None
        if self.exited_at is not None:
            return "exit_grace" if now >= self.exited_at + self.grace else None
        if self.stopping:
            return None
        if self.wall and now >= self.started_at + self.wall:
            return "wall_time"
        if self.stall and not self.paused and self.silence >= self.stall:
            return "stall"
        return None


@settings(max_examples=400, deadline=None)
@given(ops=OPS, delay=st.integers(0, 20), wall=st.none() | st.integers(1, 100), stall=st.none() | st.integers(1, 40),
       grace=st.integers(0, 10), paused=st.booleans(), t0=st.integers(0, 1000))
def test_deadlines_match_the_reference_and_never_wake_late(ops, delay, wall, stall, grace, paused, t0):
    d = Deadlines(float(t0), start_delay_s=delay, wall_time_s=wall, stall_s=stall, exit_grace_s=grace,
                  paused=paused)
    ref = Reference(t0, delay, wall, stall, grace, paused)
    now = t0
    for op, dt in ops:
        now += dt
        ref.advance(now)
        if op != "look":
            if op == "started" and ref.started_at is not None:
                continue  # a worker starts its agent once
            getattr(d, op)(float(now)) if op not in ("stop", "pipes_closed") else getattr(d, op)()
            ref.apply(op)
        assert d.expired(float(now)) == ref.expired(), (op, now)
        wake = d.next_wakeup()
        if d.expired(float(now)) is None:
            # nothing is due now, so the next deadline is in the future (no busy loop) and nothing
            # expires before it (no late wake-up)
            assert wake is None or wake > now
            if wake is not None:
                assert d.expired(wake) is not None
                assert d.expired(wake - 1e-6) is None
        else:
            assert wake is not None and wake <= now and d.timeout_s(float(now)) == 0.0


@given(ops=OPS)
def test_only_the_phase_deadlines_can_expire(ops):
    d = Deadlines(0.0, start_delay_s=3, wall_time_s=50, stall_s=5, exit_grace_s=2)
    now = 0
    for op, dt in ops:
        now += dt
        if op == "started" and d.started_at is not None:
            continue
        if op in ("stop", "pipes_closed"):
            getattr(d, op)()
        elif op != "look":
            getattr(d, op)(float(now))
        due = d.expired(float(now))
        if d.started_at is None:
            assert due in (None, "start") and not (due and d.paused)
        elif d.exited_at is not None:
            assert due in (None, "exit_grace", "drain")
        else:
            assert due in (None, "wall_time", "stall")
            assert not (d.stopping and due)
            assert not (d.paused and due == "stall")
