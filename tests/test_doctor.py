"""``orchd doctor`` as a real subprocess, with the real CLIs from .tools/agents.

The rehearsal runs each CLI against the scripted model server on loopback:
no tokens, no network.  A missing CLI fails the tests
(``tests.agentbin.require_agent``): run scripts/install-agents.sh.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from actors.agents import get_adapter
from actors.doctor import LOCAL_BIN, find_binary, find_credentials
from tests.agentbin import AGENT_BIN, AGENTS, agent_env_path, require_agent

SECRETS = {"ANTHROPIC_API_KEY": "sk-secret-xyz", "OPENAI_API_KEY": "sk-secret-openai-123",
           "GEMINI_API_KEY": "secret-gemini-456"}
_CRED_VARS = ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "CLAUDE_CODE_OAUTH_TOKEN", "CLAUDE_CONFIG_DIR",
              "OPENAI_API_KEY", "CODEX_API_KEY", "CODEX_HOME", "GEMINI_API_KEY", "GOOGLE_API_KEY",
              "GOOGLE_GENAI_USE_VERTEXAI", "GOOGLE_GENAI_USE_GCA")


@pytest.fixture(autouse=True)
def _clis() -> None:
    for agent in AGENTS:
        require_agent(agent)


def doctor(tmp_path: Path, *args: str, env: dict[str, str] | None = None,
           path: str | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """``python -m orchd.app doctor ARGS`` with a fresh HOME and no credentials
    from the developer's environment (unless given in ``env``)."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    base = {k: v for k, v in os.environ.items() if k not in _CRED_VARS and not k.startswith("ORCHD_")}
    full = base | {"HOME": str(home), "PATH": path or agent_env_path()} | (env or {})
    return subprocess.run([sys.executable, "-m", "orchd.app", "doctor", *args], capture_output=True,
                          text=True, env=full, timeout=timeout, cwd=tmp_path)


def report(res: subprocess.CompletedProcess[str]) -> dict:
    lines = res.stdout.splitlines()
    assert len(lines) == 1, f"--json must print ONE line; got:\n{res.stdout}\nstderr:\n{res.stderr}"
    return json.loads(lines[0])


def test_doctor_finds_the_three_clis_at_the_tested_version(tmp_path: Path) -> None:
    res = doctor(tmp_path, "--json")
    assert res.returncode == 0, res.stderr + res.stdout
    rep = report(res)
    assert rep["ok"] is True
    assert sorted(rep["agents"]) == sorted(AGENTS)
    for name, a in rep["agents"].items():
        assert a["found"] is True, a
        assert a["path"] == str(AGENT_BIN / name)
        assert a["tested_version"] == get_adapter(name).tested_version
        assert a["version"] == a["tested_version"] and a["tested"] is True, a
        assert a["rehearsal"] is None
        # fresh HOME, no key in the env: nothing to find, and it says how to fix it
        assert a["credentials"] is False and a["credentials_source"] is None
        assert any("no credentials" in p for p in a["problems"]), a["problems"]


def test_doctor_rehearses_each_real_cli(tmp_path: Path) -> None:
    # Real-looking keys in the environment must neither leak into the
    # report nor reach the rehearsal (which uses its own fake key).
    res = doctor(tmp_path, "--rehearse", "--json", env=SECRETS)
    assert res.returncode == 0, res.stderr + res.stdout
    rep = report(res)
    assert rep["ok"] is True, json.dumps(rep, indent=2)
    for name, a in rep["agents"].items():
        r = a["rehearsal"]
        assert r is not None, name
        assert r["ok"] is True and r["error"] is None, (name, r)
        assert r["exit_code"] == 0 and r["file_written"] is True and r["unknown_lines"] == 0, (name, r)
        assert r["failure"] is None
        # the default scenario: one write tool call and its result, a final text, one result
        ev = r["events"]
        assert ev.get("agent.tool_call") == 1 and ev.get("agent.tool_result") == 1, (name, ev)
        assert ev.get("agent.result") == 1 and ev.get("agent.text", 0) >= 1, (name, ev)
        assert ev.get("agent.session") == 1, (name, ev)
        assert 0 < r["duration_s"] < 120
    for secret in SECRETS.values():
        assert secret not in res.stdout and secret not in res.stderr


def test_missing_configured_binary_and_secret_values_never_printed(tmp_path: Path) -> None:
    cfg = tmp_path / "orchd.toml"
    cfg.write_text('[agents.codex]\nbinary = "/nonexistent/bin/codex"\n')
    for args in (("--json",), ()):
        res = doctor(tmp_path, "--config", str(cfg), *args, env=SECRETS)
        assert res.returncode == 1, res.stdout + res.stderr
        for secret in SECRETS.values():
            assert secret not in res.stdout and secret not in res.stderr, args
    rep = report(doctor(tmp_path, "--config", str(cfg), "--json", env=SECRETS))
    assert rep["ok"] is False
    codex = rep["agents"]["codex"]
    assert codex["found"] is False and codex["path"] is None and codex["version"] is None
    assert "/nonexistent/bin/codex" in codex["problems"][0]
    assert rep["agents"]["claude"]["found"] is True and rep["agents"]["gemini"]["found"] is True
    assert rep["agents"]["claude"]["credentials"] is True
    assert rep["agents"]["claude"]["credentials_source"] == "env ANTHROPIC_API_KEY"
    assert rep["agents"]["codex"]["credentials_source"] == "env OPENAI_API_KEY"
    assert rep["agents"]["gemini"]["credentials_source"] == "env GEMINI_API_KEY"


def test_missing_binary_with_rehearse_fails_without_running_it(tmp_path: Path) -> None:
    cfg = tmp_path / "orchd.toml"
    cfg.write_text('[agents.gemini]\nbinary = "no-such-gemini-binary"\n'
                   f'[agents.claude]\nbinary = "{AGENT_BIN / "claude"}"\n'
                   '[agents.codex]\nbinary = "/nonexistent/codex"\n')
    res = doctor(tmp_path, "--config", str(cfg), "--rehearse", "--json")
    assert res.returncode == 1
    rep = report(res)
    assert rep["agents"]["gemini"]["found"] is False and rep["agents"]["gemini"]["rehearsal"] is None
    assert rep["agents"]["codex"]["found"] is False and rep["agents"]["codex"]["rehearsal"] is None
    assert rep["agents"]["claude"]["rehearsal"]["ok"] is True


def test_bad_config_is_a_usage_error(tmp_path: Path) -> None:
    cfg = tmp_path / "orchd.toml"
    cfg.write_text('[agents.claude]\nbinnary = "x"\n')
    res = doctor(tmp_path, "--config", str(cfg), "--json")
    assert res.returncode == 2 and "bad configuration" in res.stderr and res.stdout == ""


def test_fresh_clone_finds_the_local_install_without_path(tmp_path: Path) -> None:
    """No agent dir on PATH: the lookup falls back to .tools/agents."""
    node = shutil.which("node")
    assert node is not None, "node is needed by codex and gemini"
    path = os.pathsep.join(dict.fromkeys([os.path.dirname(node), "/usr/bin", "/bin"]))
    for name in AGENTS:
        if shutil.which(name, path=path):
            pytest.skip(f"{name} is installed system-wide on {path}")
    rep = report(doctor(tmp_path, "--json", path=path))
    for name, a in rep["agents"].items():
        assert a["found"] is True and a["path"] == str(LOCAL_BIN / name), a
        assert a["tested"] is True, a


def test_find_binary_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "bin" / "claude"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 9.9.9\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(fake.parent))
    assert find_binary("claude") == str(fake)                        # PATH first
    assert find_binary("codex") == str(LOCAL_BIN / "codex")          # then .tools/agents
    assert find_binary("claude", str(AGENT_BIN / "claude")) == str(AGENT_BIN / "claude")
    assert find_binary("claude", "claude") == str(fake)              # a configured name, on PATH
    assert find_binary("codex", str(tmp_path / "missing")) is None   # configured: no fallback
    assert find_binary("nope") is None


def test_find_credentials_sources(tmp_path: Path) -> None:
    home = tmp_path / "h"
    home.mkdir()
    none: dict[str, str] = {}
    for name in AGENTS:
        assert find_credentials(name, none, home) is None
    assert find_credentials("claude", {"ANTHROPIC_AUTH_TOKEN": "t"}, home) == "env ANTHROPIC_AUTH_TOKEN"
    assert find_credentials("gemini", {"GOOGLE_GENAI_USE_VERTEXAI": "false"}, home) is None
    assert find_credentials("gemini", {"GOOGLE_GENAI_USE_VERTEXAI": "true"}, home) == \
        "env GOOGLE_GENAI_USE_VERTEXAI"
    # claude writes ~/.claude.json on any first run: only an oauthAccount is a login
    (home / ".claude.json").write_text(json.dumps({"userID": "x"}))
    assert find_credentials("claude", none, home) is None
    (home / ".claude.json").write_text(json.dumps({"oauthAccount": {"emailAddress": "a@b"}}))
    assert find_credentials("claude", none, home) == str(home / ".claude.json")
    (home / ".claude").mkdir()
    (home / ".claude" / ".credentials.json").write_text('{"claudeAiOauth": {}}')
    assert find_credentials("claude", none, home) == str(home / ".claude" / ".credentials.json")
    (home / ".codex").mkdir()
    (home / ".codex" / "auth.json").write_text('{"OPENAI_API_KEY": null, "tokens": {}}')
    assert find_credentials("codex", none, home) == str(home / ".codex" / "auth.json")
    other = tmp_path / "codex-home"
    other.mkdir()
    assert find_credentials("codex", {"CODEX_HOME": str(other)}, home) is None
    (home / ".gemini").mkdir()
    (home / ".gemini" / "oauth_creds.json").write_text('{"access_token": "x"}')
    assert find_credentials("gemini", none, home) == str(home / ".gemini" / "oauth_creds.json")
