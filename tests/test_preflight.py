"""Preflight: the pure checks (facts in, findings out), the cheap version
lookup, and a real daemon that refuses a launch that cannot work."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from actors import preflight
from actors.doctor import _table as doctor_table
from actors.preflight import Facts, check
from tests.agentbin import AGENT_BIN, agent_env_path, require_agent
from tests.helpers import watch_until_done


def codes(findings) -> dict[str, tuple[bool, bool]]:
    """code -> (fixed, blocking)"""
    return {f.code: (f.fixed, f.blocking) for f in findings}


OK = dict(binary="/bin/x", version="2.1.197", tested_version="2.1.197", credentials="env ANTHROPIC_API_KEY",
          cwd="/w", state_dir="/s")


def test_a_launch_with_everything_in_place_finds_nothing():
    assert check(Facts(agent="claude", **OK)) == []
    assert check(Facts(agent="command", binary=None, cwd="/w", state_dir="/s")) == []


def test_a_missing_cli_blocks_with_the_install_fix():
    (f,) = check(Facts(agent="codex", **{**OK, "binary": None, "version": None}))
    assert (f.code, f.blocking, f.fixed) == ("cli_missing", True, False)
    assert "install-agents.sh" in f.fix and "[agents.codex] binary" in f.fix


def test_an_untested_or_unknown_version_is_a_warning_not_a_failure():
    (f,) = check(Facts(agent="claude", **{**OK, "version": "2.2.0"}))
    assert (f.code, f.blocking) == ("untested_version", False) and "2.2.0" in f.message and "2.1.197" in f.message
    (f,) = check(Facts(agent="claude", **{**OK, "version": None, "version_problem": "exited 1"}))
    assert (f.code, f.blocking) == ("version_unknown", False)
    assert preflight.blocking(check(Facts(agent="claude", **{**OK, "version": "9.9.9"}))) is None


def test_credentials_are_needed_for_real_runs_only():
    f = check(Facts(agent="claude", **{**OK, "credentials": None}))[0]
    assert (f.code, f.blocking) == ("no_credentials", True) and f.fix.startswith("log in to claude")
    assert "no_credentials" not in codes(check(Facts(agent="claude", **{**OK, "credentials": None},
                                                     rehearsal=True)))


def test_unwritable_dirs_block_but_a_readonly_run_needs_no_writable_cwd():
    found = codes(check(Facts(agent="claude", **OK, cwd_writable=False, state_writable=False)))
    assert found == {"cwd_not_writable": (False, True), "state_not_writable": (False, True)}
    assert check(Facts(agent="claude", **OK, profile="readonly", cwd_writable=False)) == []


def test_claude_workspace_without_bubblewrap_blocks_unless_unconfined_is_allowed():
    (f,) = check(Facts(agent="claude", **OK, missing_tools=("socat",)))
    assert (f.code, f.blocking) == ("sandbox_tools_missing", True) and "allow_unconfined" in f.fix
    (f,) = check(Facts(agent="claude", **OK, missing_tools=("bwrap", "socat"), allow_unconfined=True))
    assert (f.code, f.blocking) == ("sandbox_tools_missing", False) and "UNCONFINED" in f.message
    assert check(Facts(agent="claude", **OK, profile="yolo", missing_tools=("socat",))) == []


def test_root_yolo_is_fixed_by_the_launch_and_recorded():
    (f,) = check(Facts(agent="claude", **OK, profile="yolo", is_root=True, env={"IS_SANDBOX": "1"}))
    assert (f.code, f.fixed, f.blocking) == ("root_yolo", True, False) and "IS_SANDBOX=1" in f.fix
    (f,) = check(Facts(agent="claude", **OK, profile="yolo", is_root=True))
    assert (f.code, f.blocking) == ("root_yolo", True)
    assert check(Facts(agent="claude", **OK, profile="yolo", is_root=False)) == []


def test_gemini_folder_trust_is_fixed_by_the_flag_or_the_env():
    gem = {**OK, "version": "0.61.0", "tested_version": "0.61.0"}
    (f,) = check(Facts(agent="gemini", **gem, argv=("gemini", "--skip-trust")))
    assert (f.code, f.fixed) == ("folder_trust", True) and f.fix == "--skip-trust in the launch"
    (f,) = check(Facts(agent="gemini", **gem, env={"GEMINI_CLI_TRUST_WORKSPACE": "true"}))
    assert f.fixed and "GEMINI_CLI_TRUST_WORKSPACE=true" in f.fix
    (f,) = check(Facts(agent="gemini", **gem))
    assert (f.fixed, f.blocking) == (False, False)


@pytest.mark.parametrize("agent, version", [("claude", "2.1.197"), ("codex", "0.169.0"), ("gemini", "0.61.0")])
def test_the_version_comes_from_the_cli_package_without_running_it(agent, version):
    binary = str(require_agent(agent))
    preflight._versions.clear()
    assert preflight.version_of(agent, binary) == (version, None)
    assert preflight._package_version(agent, binary) == version


def test_a_version_is_asked_once_per_binary_and_again_after_an_upgrade(tmp_path):
    """No package.json: ``--version`` runs, once per (path, mtime)."""
    count = tmp_path / "count"
    cli = tmp_path / "mycli"
    cli.write_text(f"#!/bin/sh\necho x >> {count}\necho 'mycli 1.2.3'\n")
    cli.chmod(0o755)
    preflight._versions.clear()
    for _ in range(3):
        assert preflight.version_of("claude", str(cli)) == ("1.2.3", None)
    assert count.read_text().count("x") == 1
    st = cli.stat()
    os.utime(cli, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert preflight.version_of("claude", str(cli)) == ("1.2.3", None)
    assert count.read_text().count("x") == 2


def test_gather_finds_what_is_on_the_run_path(tmp_path):
    facts = preflight.gather(agent="claude", binary=str(AGENT_BIN / "claude"), tested_version="2.1.197",
                             rehearsal=False, profile="workspace", allow_unconfined=False, cwd=str(tmp_path),
                             state_dir=str(tmp_path), argv=[], env={"PATH": str(tmp_path), "HOME": str(tmp_path)},
                             launch_env={})
    assert facts.missing_tools == ("bwrap", "socat") and facts.credentials is None
    assert facts.version == "2.1.197" and facts.cwd_writable and facts.state_writable
    found = codes(check(facts))
    assert found == {"no_credentials": (False, True), "sandbox_tools_missing": (False, True)}


def test_daemon_fails_a_launch_without_credentials_before_starting_it(daemon_factory, git_repo, tmp_path):
    """A real (non-rehearsal) claude run with no login: no process is started,
    the worker fails with the fix, and the session escalates to a human."""
    home = tmp_path / "empty-home"
    home.mkdir()
    env = {"PATH": agent_env_path(), "HOME": str(home)}
    env |= {k: "" for k in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "CLAUDE_CODE_OAUTH_TOKEN")}
    d = daemon_factory(config='agent_preference = ["claude"]\n', env=env)
    plan = tmp_path / "plan.json"
    plan.write_text('{"assignments": [{"name": "solo", "agent": "claude", "prompt": "hi"}]}')
    sid = d.ctl_json("submit", "--plan", str(plan), "--target", str(git_repo))["session"]
    events = watch_until_done(d, sid, timeout_s=60)
    kinds = [e["kind"] for e in events if e.get("worker") == "solo"]
    assert "worker.started" not in kinds
    pre = next(e for e in events if e["kind"] == "worker.preflight")
    blocked = [f for f in pre["findings"] if f.get("blocking")]
    assert [f["code"] for f in blocked] == ["no_credentials"]
    fail = next(e for e in events if e["kind"] == "worker.failure")
    assert (fail["code"], fail["action"]) == ("no_credentials", "escalate")
    assert "log in to claude" in fail["message"]
    status = d.status(sid)
    assert status["state"] in ("failed", "escalated")
    assert "log in to claude" in status["workers"][0]["reason"]
    assert d.ctl("status", "--json").returncode == 0  # the daemon goes on


def test_daemon_records_what_the_launch_fixed(daemon_factory, git_repo, tmp_path):
    """A gemini rehearsal run: the folder-trust fix is recorded, the run goes on."""
    d = daemon_factory(config='agent_preference = ["gemini"]\n', env={"PATH": agent_env_path()})
    plan = tmp_path / "plan.json"
    plan.write_text('{"assignments": [{"name": "solo", "agent": "gemini", "prompt": "hi"}]}')
    sid = d.ctl_json("submit", "--plan", str(plan), "--target", str(git_repo), "--rehearse")["session"]
    events = watch_until_done(d, sid, timeout_s=180)
    pre = next(e for e in events if e["kind"] == "worker.preflight")
    trust = next(f for f in pre["findings"] if f["code"] == "folder_trust")
    assert trust["fixed"] is True and trust["fix"] == "--skip-trust in the launch"
    assert any(e["kind"] == "worker.started" and e.get("worker") == "solo" for e in events)
    assert d.status(sid)["state"] == "done"


def test_doctor_reports_what_preflight_would_fix_and_what_would_stop_a_launch(tmp_path):
    import json
    import subprocess
    import sys

    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "CLAUDE_", "OPENAI_", "CODEX_",
                                                                      "GEMINI_", "GOOGLE_", "ORCHD_"))}
    env |= {"HOME": str(home), "PATH": agent_env_path(), "GEMINI_API_KEY": "k",
            "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    res = subprocess.run([sys.executable, "-m", "orchd.app", "doctor", "--json"], capture_output=True, text=True,
                         env=env, cwd=tmp_path, timeout=300)
    full = json.loads(res.stdout)
    rep = full["agents"]
    assert codes(msgspec_findings(rep["claude"]["preflight"]))["no_credentials"] == (False, True)
    gemini = codes(msgspec_findings(rep["gemini"]["preflight"]))
    assert gemini == {"folder_trust": (True, False)}  # a key is set: nothing blocks, the trust fix is recorded
    human = doctor_table(full)  # what `orchd doctor` prints for the same report
    assert "preflight: no_credentials (BLOCKS the launch)" in human
    assert "preflight: folder_trust (fixed by the launch)" in human


def msgspec_findings(rows: list[dict]):
    from orchd.protocol import PreflightFinding
    return [PreflightFinding(**r) for r in rows]


def test_a_cloud_provider_switch_counts_as_credentials(tmp_path):
    """claude on Bedrock or Vertex has no Anthropic key: the cloud SDK's chain logs in."""
    from actors.doctor import find_credentials
    assert find_credentials("claude", {"CLAUDE_CODE_USE_BEDROCK": "1"}, tmp_path) == "env CLAUDE_CODE_USE_BEDROCK"
    assert find_credentials("claude", {"CLAUDE_CODE_USE_VERTEX": "0"}, tmp_path) is None
