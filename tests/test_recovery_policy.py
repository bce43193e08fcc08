"""The recovery policy (actors/recovering.py) and how its actions drive a session (pure; explicit now)."""

from __future__ import annotations

from datetime import datetime

import pytest

from actors import decide as d
from actors import plans, recovering, recovery
from actors.recovering import Failed, Policy
from actors.sessions import Projection
from orchd import notify
from orchd import protocol as p
from orchd.config import Config, Limits

NOW = 1_800_000_000.0
POLICY = Policy(max_relaunches=3, window_s=600.0, backoff_base_s=2.0, backoff_cap_s=60.0, jitter=0.5,
                quota_margin_s=30.0, max_quota_wait_s=21600.0)


def _f(code, action="relaunch", message="m", remedy=None, **kw) -> Failed:
    kw.setdefault("session_id", "sess-1")
    kw.setdefault("produced_output", True)
    return Failed(agent=kw.pop("agent", "claude"), failure=p.WorkerFailure(code=code, message=message, action=action,
                                                                          remedy=remedy), **kw)


# the contract with the error catalogues: code, catalogue action -> what recovery does
CONTRACT = [
    ("not_logged_in", "escalate", "escalate"),
    ("auth_invalid", "escalate", "escalate"),
    ("rate_limited", "relaunch", "relaunch"),
    ("overloaded", "relaunch", "relaunch"),
    ("server_error", "relaunch", "relaunch"),
    ("network", "relaunch", "relaunch"),
    ("resume_not_found", "relaunch", "relaunch"),
    ("root_refused", "relaunch", "relaunch"),
    ("untrusted_folder", "relaunch", "relaunch"),
    ("not_git_repo", "relaunch", "relaunch"),
    ("needs_verbose", "relaunch", "relaunch"),
    ("bad_flag", "relaunch", "relaunch"),
    ("usage_limit", "park", "relaunch"),  # no reset time in the message: retried like a rate limit
    ("sandbox_unavailable", "escalate", "escalate"),
    ("crashed", "relaunch", "relaunch"),
    ("something_new", "page_someone", "escalate"),  # an action the policy does not know escalates
]


@pytest.mark.parametrize("code,catalogue,action", CONTRACT)
def test_every_catalogue_code_gets_its_action(code, catalogue, action):
    got = recovering.decide(_f(code, catalogue), POLICY, NOW, 0.0)
    assert (got.code, got.action) == (code, action)
    if action == "escalate":
        assert got.takeover == "cd /w && claude --resume sess-1" or got.takeover.endswith("claude --resume sess-1")


def test_login_failures_tell_the_human_to_log_in():
    got = recovering.decide(_f("auth_invalid", "escalate", "401 invalid x-api-key", agent="codex",
                               cwd="/work/a b"), POLICY, NOW, 0.0)
    assert got.action == "escalate" and got.reason.startswith("log in to codex: auth_invalid: 401")
    assert got.takeover == "cd '/work/a b' && codex exec resume sess-1"
    gem = recovering.decide(_f("not_logged_in", "escalate", agent="gemini", cwd="/r"), POLICY, NOW, 0.0)
    assert gem.takeover == "cd /r && gemini --resume sess-1"


def test_backoff_is_exponential_with_jitter_and_capped():
    fix = p.Fix(backoff_s=0.0)
    delays = []
    for n in range(3):
        f = _f("rate_limited", remedy=fix, relaunch_ts=(NOW - 10,) * n)
        lo = recovering.decide(f, POLICY, NOW, 0.999999)
        hi = recovering.decide(f, POLICY, NOW, 0.0)
        assert hi.delay_s == 2.0 * 2 ** n and lo.delay_s == pytest.approx(hi.delay_s / 2, rel=1e-4)
        assert hi.attempt == n + 1 and hi.until == NOW + hi.delay_s
        delays.append(hi.delay_s)
    assert delays == [2.0, 4.0, 8.0]
    capped = recovering.decide(_f("network", remedy=p.Fix(backoff_s=500.0)), POLICY, NOW, 0.0)
    assert capped.delay_s == 60.0
    # a fix that is not a transient cause applies at once
    flag = recovering.decide(_f("bad_flag", remedy=p.Fix(flag="--no-x", env={"A": "1"})), POLICY, NOW, 0.0)
    assert flag.delay_s == 0.0 and flag.env == {"A": "1"} and flag.fix.flag == "--no-x" and flag.resume


def test_the_bound_counts_relaunches_within_the_window_then_escalates():
    old = (NOW - 700.0,) * 5  # outside the window: forgotten
    assert recovering.decide(_f("network", relaunch_ts=old), POLICY, NOW, 0.0).action == "relaunch"
    recent = (NOW - 100.0, NOW - 50.0, NOW - 5.0)
    got = recovering.decide(_f("network", relaunch_ts=recent + old), POLICY, NOW, 0.0)
    assert got.action == "escalate" and got.reason.startswith("relaunch bound reached: 3 relaunch(es) within 600s")


def test_a_stall_is_relaunched_even_without_a_catalogue_entry():
    got = recovering.decide(Failed(agent="codex", stalled=True, session_id="t-1", produced_output=True,
                                   reason="limit stall"), POLICY, NOW, 0.0)
    assert (got.code, got.action, got.resume) == ("stalled", "relaunch", True)


def test_a_run_with_no_recognised_failure_fails():
    got = recovering.decide(Failed(agent="claude", reason="limit wall_time: over 3600 s"), POLICY, NOW, 0.0)
    assert got.action == "fail" and "wall_time" in got.reason and got.takeover == "claude"


def test_a_command_is_relaunched_only_when_it_says_retry():
    no = recovering.decide(_f("crashed", agent="command", session_id=None), POLICY, NOW, 0.0)
    assert no.action == "fail" and "retry = true" in no.reason and no.takeover is None
    yes = recovering.decide(_f("crashed", agent="command", session_id=None, retry=True), POLICY, NOW, 0.0)
    assert yes.action == "relaunch" and not yes.resume


def test_a_lost_agent_host_relaunches_fresh_at_once_even_a_command_and_within_the_bound():
    lost = dict(message="agent host h1 lost: no heartbeat for 2 s", remedy=p.Fix(fresh=True))
    got = recovering.decide(_f(recovering.HOST_LOST, **lost), POLICY, NOW, 0.0)
    assert (got.action, got.resume, got.delay_s) == ("relaunch", False, 0.0)  # its session is on the lost disk
    cmd = recovering.decide(_f(recovering.HOST_LOST, agent="command", session_id=None, **lost), POLICY, NOW, 0.0)
    assert cmd.action == "relaunch"  # orchd's failure, not the command's: retry = false does not apply
    flapping = (NOW - 100.0, NOW - 50.0, NOW - 5.0)
    bound = recovering.decide(_f(recovering.HOST_LOST, agent="command", session_id=None, relaunch_ts=flapping,
                                 **lost), POLICY, NOW, 0.0)
    assert bound.action == "escalate" and bound.reason.startswith("relaunch bound reached")


def test_a_resume_that_fails_before_any_output_starts_fresh_with_a_summary():
    hung = recovering.decide(_f("network", resumed=True, produced_output=False, last_text="wrote a.py, b.py"),
                             POLICY, NOW, 0.0)
    assert hung.action == "relaunch" and not hung.resume and "wrote a.py, b.py" in hung.summary
    gone = recovering.decide(_f("resume_not_found", remedy=p.Fix(fresh=True)), POLICY, NOW, 0.0)
    assert not gone.resume and gone.summary is not None
    fine = recovering.decide(_f("network", resumed=True, produced_output=True), POLICY, NOW, 0.0)
    assert fine.resume and fine.summary is None


def test_a_usage_limit_with_a_reset_time_parks_until_reset_plus_margin():
    msg = f"Claude AI usage limit reached|{int(NOW) + 3600}"
    got = recovering.decide(_f("rate_limited", message=msg), POLICY, NOW, 0.0)
    assert (got.action, got.reset_at, got.until) == ("park", NOW + 3600, NOW + 3630)
    assert got.resume and got.attempt == 0
    # parks do not count against the bound
    many = recovering.decide(_f("usage_limit", "park", msg, relaunch_ts=(NOW,) * 9), POLICY, NOW, 0.0)
    assert many.action == "park"
    # a duration, and a clock time, in the CLIs' words
    codex = recovering.decide(_f("usage_limit", "park", "You've hit your usage limit. Try again in 2 hours 5 minutes",
                                 agent="codex"), POLICY, NOW, 0.0)
    assert codex.action == "park" and codex.reset_at == NOW + 7500
    later = datetime.fromtimestamp(NOW + 2 * 3600).astimezone()  # a whole hour, 1-2 hours after NOW
    said = f"{later.hour % 12 or 12}{'pm' if later.hour >= 12 else 'am'}"
    clock = recovering.decide(_f("usage_limit", "park", f"5-hour limit reached ∙ resets {said}"), POLICY, NOW, 0.0)
    assert clock.action == "park" and datetime.fromtimestamp(clock.reset_at).astimezone().hour == later.hour
    assert NOW < clock.reset_at <= NOW + 2 * 3600


def test_a_reset_printed_to_the_minute_that_has_just_begun_means_now():
    start = datetime.fromtimestamp(NOW).astimezone().replace(second=0, microsecond=0)
    now = start.timestamp() + 20  # 20 s into the minute codex prints
    said = f"{start.hour % 12 or 12}:{start.minute:02d} {'PM' if start.hour >= 12 else 'AM'}"
    got = recovering.decide(_f("crashed", message=f"You\u2019ve hit your usage limit. Try again at {said}.",
                               agent="codex"), POLICY, now, 0.0)
    assert (got.action, got.reset_at, got.until) == ("park", start.timestamp(), now + 30.0)


def test_a_quota_wait_past_its_ceiling_escalates():
    msg = "You've hit your usage limit. Try again in 2 days"
    got = recovering.decide(_f("usage_limit", "park", msg), POLICY, NOW, 0.0)
    assert got.action == "escalate" and "max_quota_wait_s" in got.reason and got.reset_at == NOW + 2 * 86400
    # the ceiling counts from the episode's first park
    msg = "Please retry in 3600s"
    later = recovering.decide(_f("usage_limit", "park", msg, quota_since=NOW - 20000), POLICY, NOW, 0.0)
    assert later.action == "escalate"
    assert recovering.decide(_f("usage_limit", "park", msg, quota_since=NOW - 100), POLICY, NOW, 0.0).action == "park"


def test_the_per_failure_step_keeps_its_old_answers():
    rl = recovery.decide(p.WorkerFailure(code="rate_limited", message="m", action="relaunch",
                                         fix={"backoff_s": "60"}), "claude", 0, 2, True, 5.0)
    assert rl is not None and rl.delay_s == 5.0 and rl.resume


# ---------------------------------------------------------------- the projection and decide()

def _session(spec):
    proj = Projection(recovery_on=True)
    stamp = p.Stamp(seq=0, ts=NOW, session="s-1")
    proj.apply(stamp, p.SessionSubmitted(task="t", target="/repo", assignments=[spec]))
    proj.apply(stamp, p.SessionStateChanged(state="running"))
    return proj, proj.sessions["s-1"]


def _ev(proj, ev, gen=0, ts=NOW):
    proj.apply(p.Stamp(seq=0, ts=ts, session="s-1", worker="a", agent="claude", gen=gen), ev)


def test_a_failed_run_waits_for_the_recovery_actor_then_parks_and_resumes():
    proj, s = _session(p.AssignmentSpec(name="a", agent="claude"))
    _ev(proj, p.WorkerLaunching())
    _ev(proj, p.AgentSession(agent_session_id="sess-1"))
    _ev(proj, p.WorkerExited(state="failed", exit_code=1))
    assert d.decide(s, Limits(), NOW) == []  # not ended: recovery decides first
    _ev(proj, p.RecoveryDetected(code="usage_limit", message="limit"))
    _ev(proj, p.RecoveryAction(action="park", code="usage_limit", until=NOW + 60, reset_at=NOW + 30, resume=True))
    info = s.info()
    assert (info.waiting_for, info.quota_reset_at, info.quota_resume_at) == ("quota", NOW + 30, NOW + 60)
    assert d.decide(s, Limits(), NOW) == []
    _ev(proj, p.RecoveryAction(action="resume_after_quota", code="usage_limit", until=NOW + 60, resume=True,
                               reason="usage limit reset"), ts=NOW + 60)
    assert d.decide(s, Limits(), NOW + 60) == [d.Launch("a", resume=True, reason="usage limit reset")]
    [r] = s.recoveries.values()
    assert (r.code, r.action, r.reset_at) == ("usage_limit", "resume_after_quota", NOW + 30)


def test_an_escalation_stops_the_session_escalated_and_a_failure_ends_it_failed():
    proj, s = _session(p.AssignmentSpec(name="a", agent="claude"))
    _ev(proj, p.WorkerLaunching())
    _ev(proj, p.WorkerExited(state="failed", exit_code=1))
    _ev(proj, p.RecoveryAction(action="escalate", code="auth_invalid", reason="log in to claude: 401"))
    assert d.decide(s, Limits(), NOW) == [d.StopAll(reason="log in to claude: 401", end_state="escalated")]
    proj2, s2 = _session(p.AssignmentSpec(name="a", agent="command", argv=["false"]))
    _ev(proj2, p.WorkerLaunching())
    _ev(proj2, p.WorkerExited(state="failed", exit_code=1))
    _ev(proj2, p.RecoveryAction(action="fail", code="crashed", reason="x"))
    assert d.decide(s2, Limits(), NOW) == [d.End("failed", "assignment(s) did not finish: a")]


def test_a_stopped_session_is_not_kept_waiting_by_recovery():
    proj, s = _session(p.AssignmentSpec(name="a", agent="claude"))
    _ev(proj, p.WorkerLaunching())
    _ev(proj, p.WorkerExited(state="failed", exit_code=1))
    proj.apply(p.Stamp(seq=0, ts=NOW, session="s-1"), p.SessionStopRequested(reason="stopped by user"))
    assert d.decide(s, Limits(), NOW) == [d.End("stopped", "stopped by user")]


def test_the_relaunch_bound_comes_from_recovery_unless_limits_set_it():
    s = _session(p.AssignmentSpec(name="a", agent="claude"))[1]
    assert recovery.policy_for(Config(), s).max_relaunches == 3
    assert recovery.policy_for(Config.model_validate({"limits": {"max_relaunches": 1}}), s).max_relaunches == 1
    s.limits = {"max_relaunches": 5, "backoff_cap_s": 0.5}
    got = recovery.policy_for(Config(), s)
    assert (got.max_relaunches, got.backoff_cap_s) == (5, 0.5)


def test_a_park_notifies_quota_once():
    tr = notify.Tracker()
    stamp = p.Stamp(seq=7, ts=NOW, session="s-1", worker="a", gen=2)
    ev = p.RecoveryAction(action="park", code="usage_limit", reason="usage limit: resets at 15:00")
    [n] = tr.feed(stamp, ev)
    assert (n.situation, n.key, n.worker) == ("quota", "s-1/quota/a/2", "a") and "15:00" in n.message
    assert tr.feed(stamp, ev) == []
    assert tr.feed(stamp, p.RecoveryAction(action="relaunch")) == []


def test_plan_files_accept_retry():
    [a] = plans.parse_plan({"assignments": [{"name": "x", "agent": "command", "argv": ["true"], "retry": True}]})
    assert a.retry is True
