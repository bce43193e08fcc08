"""The demo session (scripts/demo.sh: the default plan, the default scenario, the three REAL CLIs in a
rehearsal) as a user watches it, and scenarios that script replies per assignment.

Real daemon, real sockets, the real pinned CLIs against the built-in scripted model server (no tokens).
"""

from __future__ import annotations

import json

import pytest

from actors.rehearsal.modelserver import ModelServer
from actors.rehearsal.scenario import default_scenario
from tests.agentbin import AGENTS, agent_env_path, require_agent
from tests.conftest import write_plan
from tests.helpers import git
from tests.test_modelserver import _claude_text

WATCH_TIMEOUT_S = 300


@pytest.fixture
def cli_daemon(daemon_factory):
    d = daemon_factory(env={"PATH": agent_env_path()})
    yield d
    if d.proc.poll() is None:
        assert d.stop() == 0, d.log()[-3000:]


def test_no_watch_line_of_the_demo_session_has_an_empty_summary(cli_daemon, git_repo):
    for agent in AGENTS:
        require_agent(agent)
    d = cli_daemon
    sid = d.ctl_json("submit", "Add a greeting module with tests", "--target", str(git_repo), "--rehearse")["session"]
    res = d.ctl("watch", sid, "--until-done", "--all", timeout=WATCH_TIMEOUT_S, check=False)
    assert res.returncode == 0, (res.stderr.decode(), d.ctl("logs", sid, check=False).stdout.decode()[-4000:])
    rows = [line.split(None, 7) for line in res.stdout.decode().splitlines()]
    kinds = {r[2] for r in rows if len(r) > 2}
    # the kinds the issue found printed with an empty summary are all there
    assert {"worker.started", "agent.session", "agent.usage", "agent.tool_result", "session.submitted",
            "worker.launching", "worker.exited", "session.merged", "session.state"} <= kinds, kinds
    empty = [r for r in rows if len(r) < 8 or not r[7].strip() or r[7].strip() in ("(empty)", "(no fields)")]
    assert not empty, empty
    by_kind: dict[str, list[str]] = {}
    for r in rows:
        by_kind.setdefault(r[2], []).append(r[7])
    assert all(s.startswith("pid ") and " version " in s for s in by_kind["worker.started"])
    assert all(s.startswith("tokens in=") for s in by_kind["agent.usage"])
    assert all(s.split()[0] in ("ok", "failed") for s in by_kind["agent.tool_result"])
    # a rehearsal's cost (claude reports one) is never shown as money spent
    costs = [s for s in by_kind["agent.usage"] if "cost=" in s]
    assert costs and all(s.endswith("(rehearsal, not billed)") for s in costs)
    # the end of a done session says how to take the result, and the command names its branch
    assert f"merge orchd/{sid}" in res.stderr.decode()
    assert {"design.txt", "implement.txt", "review.txt"} <= set(git(git_repo, "ls-tree", "--name-only",
                                                                     f"orchd/{sid}").split())


# ---------------------------------------------------------------- replies per assignment


def test_an_assignments_own_replies_win_over_its_agents():
    scenario = {"agents": {"*": [{"text": "generic {assignment}"}]},
                "assignments": {"implement": [{"text": "own 1"}, {"text": "own 2 {assignment}"}]}}
    with ModelServer(scenario) as srv:
        assert _claude_text(srv.url, "orchd-assignment: implement") == "own 1"
        assert _claude_text(srv.url, "orchd-assignment: design") == "generic design"
        assert _claude_text(srv.url, "orchd-assignment: implement") == "own 2 implement"
        assert _claude_text(srv.url, "orchd-assignment: implement") == "DONE: implement"
    # only assignments: an agent without a list of its own finishes at once
    with ModelServer({"assignments": {"x": [{"text": "x only"}]}}) as srv:
        assert _claude_text(srv.url, "orchd-assignment: y") == "DONE: y"
        assert _claude_text(srv.url, "orchd-assignment: x") == "x only"


def test_a_rehearsal_scripts_two_claude_assignments_differently(cli_daemon, git_repo, tmp_path):
    require_agent("claude")
    d = cli_daemon
    scenario = {"agents": default_scenario()["agents"],
                "assignments": {"second": [
                    {"tool": "write_file", "path": "special.txt", "content": "scripted for second\n"},
                    {"text": "DONE: second wrote special.txt"}]}}
    path = tmp_path / "scenario.json"
    path.write_text(json.dumps(scenario))
    plan = write_plan(tmp_path / "plan.json", [{"name": "first", "agent": "claude", "prompt": "one"},
                                               {"name": "second", "agent": "claude", "prompt": "two"}])
    sid = d.ctl_json("submit", "--plan", str(plan), "--target", str(git_repo), "--rehearse", str(path))["session"]
    res = d.ctl("watch", sid, "--until-done", "--json", timeout=WATCH_TIMEOUT_S, check=False)
    assert res.returncode == 0, d.ctl("logs", sid, check=False).stdout.decode()[-4000:]
    files = set(git(git_repo, "ls-tree", "--name-only", f"orchd/{sid}").split())
    assert {"first.txt", "special.txt"} <= files and "second.txt" not in files
    assert git(git_repo, "show", f"orchd/{sid}:special.txt") == "scripted for second\n"
    done = {e["worker"]: e["text"] for e in map(json.loads, res.stdout.splitlines()) if e["kind"] == "worker.done"}
    assert done == {"first": "first", "second": "second wrote special.txt"}
