"""actors.decide: a session's next steps from its projection alone (pure; explicit time)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from actors import decide as d
from actors import recovering, recovery
from actors.sessions import Projection
from orchd import protocol as p
from orchd.config import Limits

NOW = 1_800_000_000.0
KNOWN = frozenset({"claude", "codex", "gemini"})


def _session(assignments, base_commit="abc", planner=None, limits=None):
    proj = Projection()
    stamp = p.Stamp(seq=0, ts=NOW, session="s-1")
    proj.apply(stamp, p.SessionSubmitted(task="t", target="/repo", assignments=assignments,
                                         base_commit=base_commit, planner=planner, limits=limits or {}))
    proj.apply(stamp, p.SessionStateChanged(state="running"))
    return proj, proj.sessions["s-1"]


def _worker(proj, name, ev, gen=0, seq=0):
    proj.apply(p.Stamp(seq=seq, ts=NOW, session="s-1", worker=name, agent="command", gen=gen), ev)


def A(name, after=(), agent="command", **kw):
    return p.AssignmentSpec(name=name, agent=agent, argv=["true"], after=list(after), **kw)


def test_launches_what_is_ready_in_plan_order():
    _, s = _session([A("a"), A("b", ["a"]), A("c")])
    assert d.decide(s, Limits(), NOW) == [d.Launch("a"), d.Launch("c")]


def test_a_worker_being_prepared_is_not_launched_twice():
    _, s = _session([A("a")])
    s.workers["a"].preparing = True
    assert d.decide(s, Limits(), NOW) == []


def test_nothing_new_starts_while_the_log_cannot_be_written():
    _, s = _session([A("a")])
    assert d.decide(s, Limits(), NOW, log_ok=False) == []


def test_all_done_in_a_git_target_merges_then_ends_done():
    proj, s = _session([A("a")])
    _worker(proj, "a", p.WorkerLaunching())
    _worker(proj, "a", p.WorkerExited(state="done", exit_code=0))
    assert d.decide(s, Limits(), NOW) == [d.Merge()]
    s.merging = True
    assert d.decide(s, Limits(), NOW) == []
    s.merging = False
    proj.apply(p.Stamp(seq=0, ts=NOW, session="s-1"), p.SessionMerged(branch="orchd/s-1", commit="c0ffee"))
    assert d.decide(s, Limits(), NOW) == [d.End("done")]


def test_a_failed_assignment_fails_the_session_once_nothing_else_can_run():
    proj, s = _session([A("a"), A("b", ["a"])])
    _worker(proj, "a", p.WorkerLaunching())
    _worker(proj, "a", p.WorkerExited(state="failed", exit_code=3))
    assert d.decide(s, Limits(), NOW) == [d.End("failed", "assignment(s) did not finish: a")]


def test_budget_overrun_stops_everything_and_ends_failed():
    proj, s = _session([A("a")], limits={"max_tokens": 10})
    _worker(proj, "a", p.WorkerLaunching())
    _worker(proj, "a", p.AgentUsage(input_tokens=8, output_tokens=5))
    limits = d.effective_limits(Limits(), s.limits)
    [cmd] = d.decide(s, limits, NOW)
    assert isinstance(cmd, d.StopAll) and cmd.end_state == "failed" and cmd.limit == "tokens"
    proj.apply(p.Stamp(seq=0, ts=NOW, session="s-1"), p.SessionStopRequested(reason=cmd.reason, end_state="failed"))
    assert d.decide(s, limits, NOW) == []  # the worker is still running: wait for it
    _worker(proj, "a", p.WorkerExited(state="failed", reason="limit tokens"))
    assert d.decide(s, limits, NOW) == [d.End("failed", cmd.reason)]


def test_a_recoverable_failure_is_relaunched_with_its_fix_within_the_cap():
    proj, s = _session([A("a", agent="claude")])
    _worker(proj, "a", p.WorkerLaunching())
    _worker(proj, "a", p.AgentSession(agent_session_id="sess-1"))
    _worker(proj, "a", p.WorkerFailure(code="rate_limited", message="429", action="relaunch",
                                       remedy=p.Fix(backoff_s=120.0, env={"X": "1"})))
    _worker(proj, "a", p.WorkerExited(state="failed", exit_code=1))
    s.recovery_on = True  # the daemon: the recovery actor decides (actors/recovering.py), decide() carries it out
    assert d.decide(s, Limits(backoff_cap_s=30.0), NOW) == []  # waits for the recovery actor's decision
    act = recovery._action(recovering.decide(recovery.failed_run(s, s.workers["a"]),
                                             recovering.Policy(backoff_cap_s=30.0), NOW, 0.5))
    _worker(proj, "a", act)
    [cmd] = d.decide(s, Limits(backoff_cap_s=30.0), NOW)
    assert cmd == d.Launch("a", resume=True, reason="rate_limited: 429", delay_s=30.0, env={"X": "1"})


def test_legacy_fix_dicts_still_drive_relaunches():
    f = p.WorkerFailure(code="net", message="reset", action="relaunch",
                        fix={"env.HTTPS_PROXY": "", "backoff_s": "5", "resume_id": ""})
    assert f.the_fix() == p.Fix(env={"HTTPS_PROXY": ""}, backoff_s=5.0, fresh=True)


def test_planner_mode_launches_the_planner_then_takes_its_plan():
    planner = p.AssignmentSpec(name="_plan", agent="gemini", run_kind="planner", weight=0.0)
    proj, s = _session([planner], planner="gemini")
    assert d.decide(s, Limits(), NOW, known_agents=KNOWN) == [d.Launch("_plan")]
    _worker(proj, "_plan", p.WorkerLaunching())
    _worker(proj, "_plan", p.AgentResult(ok=True, text='{"assignments": [{"name": "x", "agent": "claude"}]}'))
    _worker(proj, "_plan", p.WorkerExited(state="done", exit_code=0))
    [cmd] = d.decide(s, Limits(), NOW, known_agents=KNOWN)
    assert isinstance(cmd, d.TakePlan) and [a.name for a in cmd.assignments] == ["x"]


def test_a_bad_plan_is_asked_for_again_once_then_the_default_plan_is_used():
    planner = p.AssignmentSpec(name="_plan", agent="gemini", run_kind="planner", weight=0.0)
    proj, s = _session([planner], planner="gemini")
    _worker(proj, "_plan", p.WorkerLaunching())
    _worker(proj, "_plan", p.AgentResult(ok=True, text="no json here"))
    _worker(proj, "_plan", p.WorkerExited(state="done", exit_code=0))
    [cmd] = d.decide(s, Limits(), NOW, known_agents=KNOWN)
    assert isinstance(cmd, d.AskPlannerAgain)
    _worker(proj, "_plan", p.WorkerLaunching(), gen=1)
    _worker(proj, "_plan", p.WorkerExited(state="failed", exit_code=1), gen=1)
    [cmd] = d.decide(s, Limits(), NOW, known_agents=KNOWN)
    assert isinstance(cmd, d.UseDefaultPlan)


def test_legacy_stop_note_and_underscore_planner_still_mean_what_they_meant():
    proj, s = _session([A("a")])
    proj.apply(p.Stamp(seq=0, ts=NOW, session="s-1"),
               p.SessionNote(message="stop", data={"stop_requested": "stopped by user"}))
    assert s.stop_reason == "stopped by user" and d.decide(s, Limits(), NOW) == [d.End("stopped", "stopped by user")]
    old_planner = p.AssignmentSpec(name="_plan", agent="gemini")
    _, s2 = _session([old_planner], planner="gemini")
    assert s2.workers["_plan"].run_kind == "planner" and s2.assignments() == []


@settings(max_examples=200, deadline=None)
@given(weights=st.lists(st.floats(min_value=0, max_value=1e308), min_size=1, max_size=6),
       done=st.lists(st.booleans(), min_size=6, max_size=6))
def test_progress_is_always_a_number_between_0_and_1(weights, done):
    proj, s = _session([A(f"a{i}", weight=w) for i, w in enumerate(weights)])
    for i in range(len(weights)):
        if done[i]:
            _worker(proj, f"a{i}", p.WorkerLaunching())
            _worker(proj, f"a{i}", p.WorkerExited(state="done", exit_code=0))
    assert 0.0 <= s.progress() <= 1.0


def test_a_replayed_event_is_applied_once():
    proj, s = _session([A("a")])
    _worker(proj, "a", p.WorkerLaunching())
    _worker(proj, "a", p.WorkerMilestone(text="m"), seq=7)
    _worker(proj, "a", p.WorkerMilestone(text="m"), seq=7)
    assert s.workers["a"].milestones == 1
