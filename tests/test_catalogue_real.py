"""The real CLIs, launched as a worker launches them (the adapter's argv and
env), against the scripted model server answering 401, 429 or 529: the
catalogue names the failure and its action.

gemini retries 429 and 5xx itself for minutes (its recorded runs are in
tests/fixtures/agents/gemini and tests/test_catalogue.py), so only its 401
runs live here.  A missing CLI fails (tests.agentbin.require_agent).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from actors.agents import RunSpec, get_adapter
from actors.agents.rehearsal import prepare_rehearsal
from actors.rehearsal.modelserver import ModelServer
from tests.agentbin import agent_env_path, require_agent
from tests.helpers import cli_dirs, cli_finish, cli_start, feed_stream

RUN_TIMEOUT_S = 90

CASES = [
    ("claude", 401, "auth_invalid", "escalate"),
    ("claude", 429, "rate_limited", "relaunch"),
    ("claude", 529, "overloaded", "relaunch"),
    ("codex", 401, "auth_invalid", "escalate"),
    ("codex", 429, "rate_limited", "relaunch"),
    ("codex", 529, "overloaded", "relaunch"),
    ("gemini", 401, "auth_invalid", "escalate"),
]


@pytest.mark.parametrize("agent, status, code, action", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_real_cli_error_is_classified(tmp_path: Path, agent, status, code, action):
    binary = require_agent(agent)
    adapter = get_adapter(agent)
    dirs = cli_dirs(tmp_path)
    with ModelServer({"agents": {agent: [{"http_error": status}] * 3}}) as srv:
        env = {"PATH": agent_env_path(), "HOME": str(dirs.home), "TMPDIR": str(dirs.tmp), "LANG": "C.UTF-8"}
        env |= prepare_rehearsal(agent, srv.url, dirs.home, dirs.codex)
        launch = adapter.build_launch(RunSpec(
            prompt="Do the work. orchd-assignment: demo", cwd=str(dirs.repo), profile="yolo", binary=str(binary),
            home=str(dirs.home), tmpdir=str(dirs.tmp), config_dir=str(dirs.codex) if agent == "codex" else None))
        done = cli_finish(cli_start(launch.argv, dirs.repo, env | launch.env), RUN_TIMEOUT_S)
        seen = srv.requests
    assert any(r["method"] == "POST" for r in seen), "the CLI never reached the server"
    events = feed_stream(agent, done.stdout, done.returncode)
    failure = adapter.classify(done.returncode, done.stderr.decode("utf-8", "replace").splitlines(), events)
    assert failure is not None, done.stderr[-2000:]
    assert (failure.code, failure.action) == (code, action), failure
