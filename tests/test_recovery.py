"""Recovery: a failure a relaunch can fix is relaunched (bounded); others are left failed."""

from __future__ import annotations

import json

from actors import recovery
from orchd import protocol as p
from tests.agentbin import agent_env_path
from tests.helpers import watch_until_done


def _failure(code, action="relaunch", fix=None):
    return p.WorkerFailure(code=code, message="m", action=action, fix=fix)


def test_policy():
    rl = recovery.decide(_failure("rate_limited", fix={"backoff_s": "60"}), "claude", 0, 2, True, 5.0)
    assert rl is not None and rl.delay_s == 5.0 and rl.resume
    rl = recovery.decide(_failure("root_refused", fix={"env.IS_SANDBOX": "1"}), "claude", 0, 2, False, 60)
    assert rl.env == {"IS_SANDBOX": "1"} and not rl.resume
    rl = recovery.decide(_failure("resume_not_found", fix={"resume_id": ""}), "codex", 1, 2, True, 60)
    assert rl is not None and not rl.resume
    assert recovery.decide(_failure("rate_limited"), "claude", 2, 2, True, 60) is None      # budget used up
    assert recovery.decide(_failure("auth_invalid", "escalate"), "claude", 0, 2, True, 60) is None
    assert recovery.decide(_failure("crashed"), "command", 0, 2, False, 60) is None          # not idempotent
    assert recovery.decide(None, "claude", 0, 2, True, 60) is None


def test_rate_limited_real_cli_is_relaunched_and_finishes(daemon_factory, git_repo, tmp_path):
    d = daemon_factory(env={"PATH": agent_env_path()})
    scenario = tmp_path / "scenario.json"
    scenario.write_text(json.dumps({"agents": {"claude": [
        {"http_error": 429, "body": {"type": "error", "error": {"type": "rate_limit_error",
                                                                 "message": "Too many requests"}}},
        {"tool": "write_file", "path": "{assignment}.txt", "content": "done after a retry\n"},
        {"text": "MILESTONE: wrote it\nDONE: {assignment}"}]}}))
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"assignments": [{"name": "impl", "agent": "claude", "prompt": "write it"}]}))
    sid = d.ctl_json("submit", "--plan", str(plan), "--target", str(git_repo), "--rehearse", str(scenario),
                     "--limit", "backoff_cap_s=0.5")["session"]
    events = watch_until_done(d, sid, timeout_s=300)
    failures = [e for e in events if e["kind"] == "worker.failure"]
    assert [f["code"] for f in failures] == ["rate_limited"] and failures[0]["gen"] == 0
    relaunch = [e for e in events if e["kind"] == "worker.launching" and e["gen"] == 1]
    assert relaunch and relaunch[0]["reason"].startswith("rate_limited") and relaunch[0]["delay_s"] == 0.5
    s = d.status(sid)
    assert s["state"] == "done", s
    w = s["workers"][0]
    assert (w["state"], w["gen"], w["exit_code"]) == ("done", 1, 0)


def test_unfixable_failure_is_not_relaunched(daemon_factory, git_repo, tmp_path):
    d = daemon_factory(env={"PATH": agent_env_path()})
    scenario = tmp_path / "scenario.json"
    scenario.write_text(json.dumps({"agents": {"claude": [{"http_error": 401}]}}))
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"assignments": [{"name": "impl", "agent": "claude"}]}))
    sid = d.ctl_json("submit", "--plan", str(plan), "--target", str(git_repo), "--rehearse", str(scenario))["session"]
    events = watch_until_done(d, sid, timeout_s=300)
    assert [e["code"] for e in events if e["kind"] == "worker.failure"] == ["auth_invalid"]
    assert [e["gen"] for e in events if e["kind"] == "worker.launching"] == [0]
    # a rejected key escalates at once (issue 10: never retried), telling the human to log in
    assert d.status(sid)["state"] == "escalated"
    [act] = [e for e in events if e["kind"] == "recovery.action"]
    assert act["action"] == "escalate" and act["reason"].startswith("log in to claude")
    assert act["takeover"].startswith("cd ") and "claude" in act["takeover"]
