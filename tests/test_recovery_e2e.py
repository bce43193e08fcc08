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
from tests.helpers import watch_until_done

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
