"""Planner mode with the real gemini CLI against the scripted model server."""

from __future__ import annotations

import json

from tests.agentbin import agent_env_path
from tests.conftest import wait_for
from tests.helpers import git, watch_until_done

PLAN = {"assignments": [
    {"name": "build", "agent": "claude", "role": "implementation", "weight": 60, "prompt": "build it"},
    {"name": "check", "agent": "codex", "role": "review", "weight": 40, "after": ["build"]},
]}
WORK = [{"tool": "write_file", "path": "{assignment}.txt", "content": "work of {assignment}\n"},
        {"text": "MILESTONE: wrote {assignment}.txt\nDONE: {assignment}"}]


def _submit(d, repo, tmp_path, scenario):
    path = tmp_path / "scenario.json"
    path.write_text(json.dumps(scenario))
    sid = d.ctl_json("submit", "Make a thing", "--target", str(repo), "--planner", "gemini",
                     "--rehearse", str(path))["session"]
    return sid, watch_until_done(d, sid, timeout_s=300)


def test_planner_plan_is_used(daemon_factory, git_repo, tmp_path):
    d = daemon_factory(env={"PATH": agent_env_path()})
    scenario = {"agents": {"gemini": [{"match": "orchd-assignment: _plan",
                                       "text": "Here is the plan:\n```json\n" + json.dumps(PLAN) + "\n```"}],
                           "*": WORK}}
    sid, events = _submit(d, git_repo, tmp_path, scenario)
    planned = [e for e in events if e["kind"] == "session.planned"]
    assert len(planned) == 1 and planned[0]["source"] == "planner"
    assert [a["name"] for a in planned[0]["assignments"]] == ["build", "check"]
    s = d.status(sid)
    assert s["state"] == "done", s
    workers = {w["name"]: w for w in s["workers"]}
    assert set(workers) == {"_plan", "build", "check"}
    assert workers["build"]["agent"] == "claude" and workers["check"]["agent"] == "codex"
    files = git(git_repo, "ls-tree", "--name-only", f"orchd/{sid}").split()
    assert {"build.txt", "check.txt"} <= set(files) and "_plan.txt" not in files
    assert s["progress"] == 1.0


def test_invalid_plan_is_asked_again_then_default(daemon_factory, git_repo, tmp_path):
    d = daemon_factory(env={"PATH": agent_env_path()})
    scenario = {"agents": {"gemini": [
        {"match": "orchd-assignment: _plan", "text": "I think we should just start coding."},
        {"match": "orchd-assignment: _plan", "text": '{"assignments": [{"name": "x", "agent": "nobody"}]}'},
        *WORK], "*": WORK}}
    sid, events = _submit(d, git_repo, tmp_path, scenario)
    launches = [e for e in events if e["kind"] == "worker.launching" and e["worker"] == "_plan"]
    assert [e["gen"] for e in launches] == [0, 1]
    notes = [e["message"] for e in events if e["kind"] == "session.note"]
    assert any("asking the planner again" in n and "no JSON object" in n for n in notes)
    planned = [e for e in events if e["kind"] == "session.planned"]
    assert len(planned) == 1 and planned[0]["source"] == "default" and "nobody" in planned[0]["note"]
    assert [a["name"] for a in planned[0]["assignments"]] == ["design", "implement", "review"]
    s = wait_for(lambda: (x := d.status(sid))["state"] in ("done", "failed") and x, 60, "session end")
    assert s["state"] == "done", s
