"""Peer review with the REAL agent CLIs in rehearsal: claude, codex and gemini review each other.

The scripted model server answers each reviewer with the scenario's ``{"json": ...}`` verdict (matched
on the prompt's ``orchd-review: <assignment> round <N>`` line); reviewers with no scripted reply
approve.  What reached each model is read back from the server's request log.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.agentbin import AGENTS, agent_env_path, require_agent
from tests.conftest import wait_for, write_plan
from tests.helpers import Hook, notify_recorder, recorded

TIMEOUT_S = 240


@pytest.fixture
def cli_daemon_factory(daemon_factory):
    for agent in AGENTS:
        require_agent(agent)
    made = []

    def make(config: str | None = None):
        made.append(daemon_factory(config, env={"PATH": agent_env_path()}))
        return made[-1]
    yield make
    for d in made:
        if d.proc.poll() is None:
            assert d.stop() == 0, d.log()[-3000:]


@pytest.fixture
def cli_daemon(cli_daemon_factory):
    return cli_daemon_factory()


def _verdict(verdict: str, summary: str, assignment: str = "a", round_: int = 1) -> dict:
    return {"json": {"verdict": verdict, "summary": summary, "findings": []},
            "match": f"orchd-review: {assignment} round {round_}"}


def _write(name: str) -> list[dict]:
    return [{"tool": "write_file", "path": f"{name}.txt", "content": f"work of {name}\n"},
            {"text": f"Wrote {name}.txt.\nDONE: {name}"}]


def _submit(d, tmp_path: Path, repo: Path, plan: list[dict], scenario: dict) -> str:
    (tmp_path / "scenario.json").write_text(json.dumps(scenario))
    write_plan(tmp_path / "plan.json", plan)
    return d.ctl_json("submit", "rehearsed task", "--target", str(repo), "--plan", str(tmp_path / "plan.json"),
                      "--rehearse", str(tmp_path / "scenario.json"))["session"]


def _requests(d, sid: str) -> list[str]:
    """Every model request body the session's scripted server received, as JSON text."""
    path = d.state_dir / "runs" / sid / "modelserver.jsonl"
    return [line for line in path.read_text().splitlines() if line.strip()]


def _decisions(d, sid: str) -> list[tuple[str, int, str]]:
    return [(r["assignment"], r["round"], r["decision"]) for r in d.ctl_json("reviews", sid)["reviews"]]


def test_one_concern_warns_and_the_concern_reaches_the_next_assignments_model(cli_daemon, tmp_path, git_repo):
    d = cli_daemon
    scenario = {"agents": {"claude": _write("a"),
                           "codex": [_verdict("concern", "the retry loop never gives up"), *_write("b")]}}
    plan = [{"name": "a", "agent": "claude"}, {"name": "b", "agent": "codex", "after": ["a"]}]
    sid = _submit(d, tmp_path, git_repo, plan, scenario)
    s = d.wait_session(sid, timeout_s=TIMEOUT_S)
    assert s["state"] == "done", (s, d.log()[-3000:])
    assert ("a", 1, "log_warning") in _decisions(d, sid)
    b_requests = [r for r in _requests(d, sid) if "orchd-assignment: b" in r]
    assert b_requests and any("the retry loop never gives up" in r for r in b_requests)


def test_two_concerns_pause_the_answer_reaches_the_resumed_author_and_round_two_approves(cli_daemon, tmp_path,
                                                                                       git_repo):
    d = cli_daemon
    scenario = {"agents": {
        "claude": [*_write("a"), {"text": "Applied the answer.\nDONE: a", "match": "THE HUMAN'S ANSWER"}],
        "codex": [_verdict("concern", "which encoding is meant?"), *_write("b")],
        "gemini": [_verdict("concern", "the format is unspecified"), *_write("c")],
    }}
    plan = [{"name": "a", "agent": "claude"}, {"name": "b", "agent": "codex", "after": ["a"]},
            {"name": "c", "agent": "gemini", "after": ["a"]}]
    sid = _submit(d, tmp_path, git_repo, plan, scenario)
    s = d.wait_session(sid, states=("paused", "done", "failed", "escalated"), timeout_s=TIMEOUT_S)
    assert s["state"] == "paused" and s["waiting_for"] == "answer", (s, d.log()[-3000:])
    assert "which encoding" in s["question"] and "unspecified" in s["question"]
    d.ctl("answer", sid, "UTF-8, answer-token-7731")
    s = d.wait_session(sid, timeout_s=TIMEOUT_S)
    assert s["state"] == "done", (s, d.log()[-3000:])
    resumed = [r for r in _requests(d, sid) if "answer-token-7731" in r and "orchd-assignment: a" in r]
    assert resumed, "the answer never reached the resumed author's model"
    decisions = _decisions(d, sid)
    assert ("a", 1, "pause_and_clarify") in decisions and ("a", 2, "continue") in decisions
    assert {a for a, _, dec in decisions if dec == "continue"} >= {"a", "b", "c"}


def test_a_blocker_escalates_and_notifies(cli_daemon_factory, tmp_path, git_repo):
    hook = Hook()
    got = tmp_path / "notified.jsonl"
    command = notify_recorder(got)
    try:
        d = cli_daemon_factory(f"[notify]\ncommand = {json.dumps(command)}\n"
                               f"webhook = \"{hook.url}\"\n")
        _blocker(d, tmp_path, git_repo, got, hook)
    finally:
        hook.close()


def _blocker(d, tmp_path: Path, git_repo: Path, got: Path, hook: Hook) -> None:
    scenario = {"agents": {"claude": _write("a"),
                           "codex": [_verdict("blocker", "it deletes the database"), *_write("b")]}}
    plan = [{"name": "a", "agent": "claude"}, {"name": "b", "agent": "codex", "after": ["a"]}]
    sid = _submit(d, tmp_path, git_repo, plan, scenario)
    s = d.wait_session(sid, timeout_s=TIMEOUT_S)
    assert s["state"] == "escalated" and "deletes the database" in s["reason"], s
    assert next(w for w in s["workers"] if w["name"] == "b")["state"] == "pending"
    sent = wait_for(lambda: recorded(got), 20, "the notify command")
    assert any(n["situation"] == "escalated" and n["session"] == sid for n in sent), sent
    wait_for(lambda: any(n.get("situation") == "escalated" and n.get("session") == sid for n in hook.bodies()), 20,
             "the webhook POST")


def test_all_approve_ends_done_each_cli_reviewed_by_another(cli_daemon, tmp_path, git_repo):
    d = cli_daemon
    scenario = {"agents": {"claude": [*_write("a"), _verdict("approve", "b is fine", assignment="b")],
                           "gemini": [*_write("b"), _verdict("approve", "a is correct and complete")]}}
    plan = [{"name": "a", "agent": "claude"}, {"name": "b", "agent": "gemini", "after": ["a"]}]
    sid = _submit(d, tmp_path, git_repo, plan, scenario)
    s = d.wait_session(sid, timeout_s=TIMEOUT_S)
    assert s["state"] == "done", (s, d.log()[-3000:])
    reviews = d.ctl_json("reviews", sid)["reviews"]
    assert {(r["assignment"], r["decision"]) for r in reviews} == {("a", "continue"), ("b", "continue")}
    by = {r["assignment"]: {v["agent"] for v in r["verdicts"]} for r in reviews}
    assert by == {"a": {"gemini"}, "b": {"claude"}}
    summaries = {r["assignment"]: [v["summary"] for v in r["verdicts"]] for r in reviews}
    assert summaries == {"a": ["a is correct and complete"], "b": ["b is fine"]}
