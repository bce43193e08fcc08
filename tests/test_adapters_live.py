"""The adapters' own argv, run by the real CLIs against the scripted model
server: every profile's flags are accepted, the workspace profile can write
in the work dir, resume continues the same session, and the parser turns
the real stream into the normalized events (no failure classified).

A missing CLI fails the tests (``tests.agentbin.require_agent``): run
scripts/install-agents.sh.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from actors.agents import RunSpec, get_adapter
from actors.agents.rehearsal import prepare_rehearsal
from actors.rehearsal.modelserver import ModelServer
from orchd.protocol import (
    AgentResult, AgentSession, AgentText, AgentToolCall, AgentToolResult, AgentUsage,
)
from tests.agentbin import agent_env_path, require_agent
from tests.helpers import cli_dirs, cli_run, feed_stream

RUN_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def server():
    with ModelServer(None) as srv:
        yield srv


def make_spec(agent: str, root: Path, url: str, profile: str, assignment: str,
              resume_id: str | None = None) -> RunSpec:
    dirs = cli_dirs(root)  # the second run (resume) reuses the first one's
    env = prepare_rehearsal(agent, url, dirs.home, dirs.codex)
    return RunSpec(prompt=f"Do the work. orchd-assignment: {assignment}", cwd=str(dirs.repo),
                   profile=profile, binary=str(require_agent(agent)), home=str(dirs.home),
                   tmpdir=str(dirs.tmp), resume_id=resume_id, env=env,
                   model="gemini-2.5-flash" if agent == "gemini" else None)


def run(agent: str, spec: RunSpec):
    adapter = get_adapter(agent)
    launch = adapter.build_launch(spec)
    env = dict(os.environ, PATH=agent_env_path(), LANG="C.UTF-8") | launch.env
    proc = cli_run(launch.argv, launch.cwd, env, RUN_TIMEOUT_S, f"{agent} {spec.profile}")
    events = feed_stream(adapter, proc.stdout, proc.returncode)
    stderr = proc.stderr.decode("utf-8", errors="replace").splitlines()
    for line in stderr:
        assert adapter.check_stderr(line) is None, line  # the sandbox really is on
    failure = adapter.classify(proc.returncode, stderr, events)
    return proc, events, failure, launch


@pytest.mark.parametrize("agent", ["claude", "codex", "gemini"])
def test_workspace_profile_writes_and_resume_continues(agent, server, tmp_path):
    spec = make_spec(agent, tmp_path, server.url, "workspace", f"live-{agent}")
    proc, events, failure, launch = run(agent, spec)
    assert failure is None and proc.returncode == 0, (events, proc.stderr[-2000:])
    assert launch.confined is True
    assert (Path(spec.cwd) / f"live-{agent}.txt").is_file()
    kinds = [type(e) for e in events]
    assert kinds[0] is AgentSession and kinds[-1] is AgentResult and events[-1].ok
    assert AgentToolCall in kinds and AgentUsage in kinds
    assert all(e.ok for e in events if isinstance(e, AgentToolResult))
    assert any("MILESTONE:" in e.text for e in events if isinstance(e, AgentText))

    session = events[0].agent_session_id
    again = make_spec(agent, tmp_path, server.url, "workspace", f"live-{agent}",
                      resume_id="latest" if agent == "gemini" else session)
    proc, events, failure, _ = run(agent, again)
    assert failure is None and proc.returncode == 0, (events, proc.stderr[-2000:])
    assert events[-1].ok
    if agent != "gemini":  # gemini --resume latest reports its own new id
        assert events[0] == AgentSession(agent_session_id=session, model=events[0].model)


@pytest.mark.parametrize("agent", ["claude", "codex", "gemini"])
@pytest.mark.parametrize("profile", ["readonly", "yolo"])
def test_other_profiles_are_accepted_by_the_real_cli(agent, profile, server, tmp_path):
    spec = make_spec(agent, tmp_path, server.url, profile, f"{profile}-{agent}")
    proc, events, failure, launch = run(agent, spec)
    # every profile's flags are valid and the run completes
    assert proc.returncode == 0 and failure is None, (events, proc.stderr[-2000:])
    assert events[-1] == AgentResult(ok=True, text=events[-1].text)
    assert launch.confined is (profile != "yolo")
    # readonly really is read-only: claude denies the Write, gemini does not
    # offer write_file, codex's sandbox refuses the patch (no item in --json)
    assert (Path(spec.cwd) / f"{profile}-{agent}.txt").exists() is (profile == "yolo")
