"""The real agent CLIs (pinned, from .tools/agents) against the scripted model server.

Each CLI runs headless with the default scenario in a temp git repo, on
loopback only, and must write ``{assignment}.txt`` and print its native
stream events.  A missing CLI fails the tests (``tests.agentbin.require_agent``):
run scripts/install-agents.sh.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from actors.agents.rehearsal import prepare_rehearsal
from actors.rehearsal.modelserver import ModelServer
from tests.agentbin import AGENTS, agent_env_path, require_agent
from tests.helpers import cli_dirs, cli_finish, cli_start

RUN_TIMEOUT_S = 120


def argv_for(agent: str, binary: Path, prompt: str, wd: Path) -> tuple[list[str], dict[str, str]]:
    """Headless argv with full permissions, and extra env (root needs IS_SANDBOX for claude)."""
    if agent == "claude":
        return [str(binary), "-p", prompt, "--output-format", "stream-json", "--verbose",
                "--dangerously-skip-permissions"], {"IS_SANDBOX": "1"}
    if agent == "codex":
        return [str(binary), "exec", "--json", "--dangerously-bypass-approvals-and-sandbox",
                "--skip-git-repo-check", "-C", str(wd), prompt], {}
    return [str(binary), "-p", prompt, "--output-format", "stream-json", "--skip-trust", "--yolo"], {}


@dataclass
class Outcome:
    code: int
    events: list[dict[str, Any]]
    stderr: str
    wd: Path


def start_run(agent: str, url: str, root: Path, assignment: str) -> tuple[subprocess.Popen[bytes], Path]:
    binary = require_agent(agent)
    dirs = cli_dirs(root)
    env = {"PATH": agent_env_path(), "HOME": str(dirs.home), "TMPDIR": str(dirs.tmp), "LANG": "C.UTF-8"}
    env |= prepare_rehearsal(agent, url, dirs.home, dirs.codex)
    argv, extra = argv_for(agent, binary, f"Do the work. orchd-assignment: {assignment}", dirs.repo)
    return cli_start(argv, dirs.repo, env | extra), dirs.repo


def finish(proc: subprocess.Popen[bytes], wd: Path) -> Outcome:
    done = cli_finish(proc, RUN_TIMEOUT_S)
    events = [json.loads(line) for line in done.stdout.decode().splitlines() if line.startswith("{")]
    return Outcome(done.returncode, events, done.stderr.decode("utf-8", "replace"), wd)


def check(agent: str, outcome: Outcome, assignment: str) -> None:
    """The file is on disk and the stream has the CLI's native events for a tool call and a final text."""
    assert outcome.code == 0, outcome.stderr[-2000:]
    written = outcome.wd / f"{assignment}.txt"
    assert written.is_file(), outcome.stderr[-2000:]
    assert assignment in written.read_text()
    ev = outcome.events
    types = [e["type"] for e in ev]
    if agent == "claude":
        assert types[0] == "system" and ev[0]["subtype"] == "init"
        tool_uses = [b for e in ev if e["type"] == "assistant" for b in e["message"]["content"] if b["type"] == "tool_use"]
        assert [(b["name"], b["input"]["file_path"]) for b in tool_uses] == [("Write", str(written))]
        results = [b for e in ev if e["type"] == "user" for b in e["message"]["content"] if b["type"] == "tool_result"]
        assert len(results) == 1 and not results[0].get("is_error")
        final = ev[-1]
        assert final["type"] == "result" and final["is_error"] is False
        text = final["result"]
    elif agent == "codex":
        assert types[:2] == ["thread.started", "turn.started"] and types[-1] == "turn.completed"
        items = [e["item"] for e in ev if e["type"] == "item.completed"]
        changes = [c for i in items if i["type"] == "file_change" for c in i["changes"]]
        assert changes == [{"path": str(written), "kind": "add"}]
        text = [i["text"] for i in items if i["type"] == "agent_message"][-1]
    else:
        assert types[0] == "init" and types[-1] == "result" and ev[-1]["status"] == "success"
        tool_uses = [e for e in ev if e["type"] == "tool_use"]
        assert [(e["tool_name"], e["parameters"]["file_path"]) for e in tool_uses] == [("write_file", str(written))]
        assert [e["status"] for e in ev if e["type"] == "tool_result"] == ["success"]
        text = "".join(e["content"] for e in ev if e["type"] == "message" and e["role"] == "assistant")
    assert f"MILESTONE: wrote {assignment}.txt" in text.splitlines()
    assert f"DONE: {assignment}" in text.splitlines()


@pytest.mark.parametrize("agent", AGENTS)
def test_real_cli_runs_the_default_scenario(agent: str, tmp_path: Path) -> None:
    require_agent(agent)
    with ModelServer(None, log_path=tmp_path / "requests.jsonl") as srv:
        proc, wd = start_run(agent, srv.url, tmp_path / agent, "rehearse-1")
        outcome = finish(proc, wd)
        requests = srv.requests
    check(agent, outcome, "rehearse-1")
    scripted = [r for r in requests if "reply" in r]
    assert [r["assignment"] for r in scripted] == ["rehearse-1", "rehearse-1"]  # tool call, then final text
    assert all(r["agent"] == agent for r in scripted)


def test_three_clis_share_one_server(tmp_path: Path) -> None:
    """Concurrent agents on one server: conversations are kept apart by assignment."""
    for agent in AGENTS:
        require_agent(agent)
    with ModelServer(None) as srv:
        runs = {agent: start_run(agent, srv.url, tmp_path / agent, f"{agent}-task") for agent in AGENTS}
        outcomes = {agent: finish(*run) for agent, run in runs.items()}
    for agent, outcome in outcomes.items():
        check(agent, outcome, f"{agent}-task")
