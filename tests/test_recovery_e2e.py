"""The recovery actor end to end: real daemon, real sockets, the real CLIs against the scripted model server.

Each test drives one failure the issue names through a whole session: a rate limit and an overload
recover, a silent model server is ended by the stall detector and relaunched, a rejected key escalates
at once, a usage limit parks the assignment until its reset (surviving kill -9 of the daemon and a
crash of the recovery actor), and a relaunch bound escalates the session.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from tests.agentbin import agent_env_path
from tests.conftest import wait_for
from tests.helpers import replay_all, watch_until_done

FINISH = [{"tool": "write_file", "path": "{assignment}.txt", "content": "done after recovery\n"},
          {"text": "MILESTONE: wrote it\nDONE: {assignment}"}]


def _submit(d, tmp_path: Path, repo: Path, replies: list[dict], agent: str = "claude", *limits: str) -> str:
    scenario = tmp_path / "scenario.json"
    scenario.write_text(json.dumps({"agents": {agent: replies}}))
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"assignments": [{"name": "impl", "agent": agent, "prompt": "write it"}]}))
    args = ["submit", "--plan", str(plan), "--target", str(repo), "--rehearse", str(scenario)]
    for lim in limits:
        args += ["--limit", lim]
    return d.ctl_json(*args)["session"]


def _kinds(events: list[dict], kind: str) -> list[dict]:
    return [e for e in events if e["kind"] == kind]


def _notify_config(path: Path, extra: str = "") -> str:
    return (f"[recovery]\nquota_margin_s = 1\n{extra}\n"
            f"[notify]\ncommand = [\"sh\", \"-c\", \"cat >> {path}; echo >> {path}\"]\non = [\"quota\"]\n")


def test_a_usage_limit_parks_notifies_and_resumes_by_itself(daemon_factory, git_repo, tmp_path):
    sent = tmp_path / "notified.jsonl"
    d = daemon_factory(config=_notify_config(sent), env={"PATH": agent_env_path()})
    sid = _submit(d, tmp_path, git_repo, [{"usage_limit": 5}, *FINISH])
    parked = wait_for(lambda: d.status(sid).get("waiting_for") == "quota" and d.status(sid), 120, "the park")
    assert parked["state"] == "running" and parked["quota_reset_at"] and parked["quota_resume_at"]
    assert parked["quota_resume_at"] - parked["quota_reset_at"] == 1.0  # the margin
    assert parked["quota_reset_at"] > time.time() - 5
    wait_for(lambda: sent.exists() and "quota" in sent.read_text(), 30, "the quota notification")
    note = json.loads(sent.read_text().splitlines()[0])
    assert note["situation"] == "quota" and note["session"] == sid and note["worker"] == "impl"
    events = watch_until_done(d, sid, timeout_s=120)
    [detected] = _kinds(events, "recovery.detected")
    assert detected["gen"] == 0 and "usage limit" in detected["message"].lower()
    actions = [(a["action"], a["gen"]) for a in _kinds(events, "recovery.action")]
    assert actions == [("park", 0), ("resume_after_quota", 0)]
    park, resume = _kinds(events, "recovery.action")
    assert resume["ts"] >= park["until"]  # not before the reset plus the margin
    relaunch = [e for e in events if e["kind"] == "worker.launching" and e["gen"] == 1]
    assert relaunch and relaunch[0]["resume"] is True
    s = d.status(sid)
    assert s["state"] == "done" and s.get("waiting_for") is None, s


def test_an_overloaded_api_recovers(daemon_factory, git_repo, tmp_path):
    d = daemon_factory(env={"PATH": agent_env_path()})
    sid = _submit(d, tmp_path, git_repo, [{"http_error": 529}, *FINISH], "claude", "backoff_cap_s=0.2")
    events = watch_until_done(d, sid, timeout_s=300)
    [act] = _kinds(events, "recovery.action")
    assert act["action"] == "relaunch" and act["gen"] == 0 and act["attempt"] == 1 and act["delay_s"] == 0.2
    assert _kinds(events, "recovery.detected")[0]["code"] in ("overloaded", "rate_limited")
    s = d.status(sid)
    assert s["state"] == "done" and s["workers"][0]["gen"] == 1, s


def test_a_silent_model_server_is_ended_by_the_stall_limit_relaunched_then_started_fresh(
        daemon_factory, git_repo, tmp_path):
    d = daemon_factory(env={"PATH": agent_env_path()})
    sid = _submit(d, tmp_path, git_repo, [{"stall": True}, {"stall": True}, *FINISH], "claude",
                  "stall_s=10", "backoff_cap_s=0.2")
    events = watch_until_done(d, sid, timeout_s=300)
    assert [e["limit"] for e in _kinds(events, "worker.limit")] == ["stall", "stall"]
    assert [e["code"] for e in _kinds(events, "recovery.detected")] == ["stalled", "stalled"]
    first, second = _kinds(events, "recovery.action")
    assert (first["action"], first["resume"], first["summary"]) == ("relaunch", True, None)
    # the resumed run hung too before any output: started fresh, told what the earlier run did
    assert second["action"] == "relaunch" and second["resume"] is False and "could not be resumed" in second["summary"]
    launches = [(e["gen"], e["resume"]) for e in _kinds(events, "worker.launching")]
    assert launches == [(0, False), (1, True), (2, False)]
    assert d.status(sid)["state"] == "done"


def test_the_relaunch_bound_escalates_the_session_with_the_take_over_command(daemon_factory, git_repo, tmp_path):
    d = daemon_factory(env={"PATH": agent_env_path()})
    sid = _submit(d, tmp_path, git_repo, [{"http_error": 429}] * 3 + FINISH, "claude",
                  "max_relaunches=1", "backoff_cap_s=0.2")
    events = watch_until_done(d, sid, timeout_s=300)
    assert [a["action"] for a in _kinds(events, "recovery.action")] == ["relaunch", "escalate"]
    last = _kinds(events, "recovery.action")[-1]
    assert last["reason"].startswith("relaunch bound reached: 1 relaunch(es)")
    sess = next(e for e in events if e["kind"] == "agent.session")["agent_session_id"]
    assert last["takeover"].endswith(f"claude --resume {sess}") and last["takeover"].startswith("cd ")
    s = d.status(sid)
    assert s["state"] == "escalated" and s["workers"][0]["gen"] == 1, s
    rec = d.ctl_json("recoveries", sid)["recoveries"]
    assert [(r["gen"], r["action"]) for r in rec] == [(0, "relaunch"), (1, "escalate")]
    text = d.ctl("recoveries", sid).stdout.decode()
    assert "take over impl by hand: cd " in text and "relaunch" in text and "escalate" in text


def test_kill_9_during_a_quota_wait_keeps_the_same_reset_time(daemon_factory, git_repo, tmp_path):
    d = daemon_factory(config="[recovery]\nquota_margin_s = 1\n", env={"PATH": agent_env_path()})
    sid = _submit(d, tmp_path, git_repo, [{"usage_limit": 6}, *FINISH])
    before = wait_for(lambda: d.status(sid).get("waiting_for") == "quota" and d.status(sid), 120, "the park")
    d.kill9()
    d2 = type(d)(d.state_dir, d.runtime_dir, d.config, d.env).start()
    try:
        after = d2.status(sid)
        if time.time() < before["quota_resume_at"] - 0.5:
            assert after["waiting_for"] == "quota" and after["quota_resume_at"] == before["quota_resume_at"]
        events = watch_until_done(d2, sid, timeout_s=180)
        park = next(e for e in _kinds(events, "recovery.action") if e["action"] == "park")
        resume = next(e for e in _kinds(events, "recovery.action") if e["action"] == "resume_after_quota")
        assert park["gen"] == resume["gen"] == 0 and resume["until"] == park["until"] == before["quota_resume_at"]
        everything = [json.loads(body) for _, body in replay_all(f"ipc://{d2.runtime_dir}/control")]
        restarted = [e for e in everything if e["kind"] == "daemon.started" and park["seq"] < e["seq"] < resume["seq"]]
        assert restarted, "the wait was not carried over a restart"
        assert resume["ts"] >= park["until"]
        # the rehearsal's script restarts with the daemon, so the resumed run may meet the limit again; it ends done
        assert d2.status(sid)["state"] == "done"
    finally:
        d2.stop()


def test_an_injected_crash_of_the_recovery_actor_loses_no_pending_relaunch(daemon_factory, git_repo, tmp_path):
    from orchd import protocol as p
    from tests.test_architecture import _client
    d = daemon_factory(config="fault_injection = true\n[recovery]\nquota_margin_s = 1\n",
                       env={"PATH": agent_env_path()})
    sid = _submit(d, tmp_path, git_repo, [{"usage_limit": 4}, *FINISH])
    wait_for(lambda: d.status(sid).get("waiting_for") == "quota", 120, "the park")
    c = _client(d, timeout_s=2.0)
    try:
        assert isinstance(c.call(p.InjectFault(actor="recovery")), p.Ok)
    finally:
        c.close()
    wait_for(lambda: "recovery_state_rebuilt" in d.log().split("injected fault", 1)[-1], 10,
             "the recovery actor to restart from the log")
    events = watch_until_done(d, sid, timeout_s=120)
    assert [a["action"] for a in _kinds(events, "recovery.action")] == ["park", "resume_after_quota"]
    assert d.status(sid)["state"] == "done"


def test_a_command_is_relaunched_only_when_its_assignment_says_retry(daemon_factory, git_repo, tmp_path):
    from tests.conftest import fake, write_plan
    d = daemon_factory(config="[recovery]\nbackoff_base_s = 0\n")
    marker = tmp_path / "ran-once"
    plan = write_plan(tmp_path / "plan.json", [
        {"name": "again", "agent": "command", "retry": True,
         "argv": ["sh", "-c", f"if [ -e {marker} ]; then echo ok; else touch {marker}; exit 3; fi"]},
        {"name": "once", "agent": "command", "argv": fake("exit:4")}])
    sid = d.ctl_json("submit", "--plan", str(plan), "--target", str(git_repo))["session"]
    s = d.wait_session(sid, timeout_s=60)
    ws = {w["name"]: w for w in s["workers"]}
    assert (ws["again"]["state"], ws["again"]["gen"]) == ("done", 1)
    assert (ws["once"]["state"], ws["once"]["gen"]) == ("failed", 0)
    rec = {r["worker"]: r for r in d.ctl_json("recoveries", sid)["recoveries"] if r["gen"] == 0}
    assert rec["again"]["action"] == "relaunch"
    assert rec["once"]["action"] == "fail" and "retry = true" in rec["once"]["reason"]
    assert s["state"] == "failed"


def test_codex_usage_limit_parks_and_resumes(daemon_factory, git_repo, tmp_path):
    """codex prints the reset to the minute ("Try again at 12:29 AM."): the minute just begun means now."""
    d = daemon_factory(config="[recovery]\nquota_margin_s = 1\n", env={"PATH": agent_env_path()})
    sid = _submit(d, tmp_path, git_repo, [{"usage_limit": 3}, *FINISH], "codex")
    events = watch_until_done(d, sid, timeout_s=240)
    actions = [a["action"] for a in _kinds(events, "recovery.action")]
    assert actions[:2] == ["park", "resume_after_quota"], (actions, _kinds(events, "recovery.detected"))
    assert d.status(sid)["state"] == "done"
