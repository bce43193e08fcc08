"""``orchctl completion``: the bash script, sourced in a real bash, completes commands, options and the
daemon's session ids."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import fake, write_plan

ROOT = Path(__file__).resolve().parent.parent


def _bin(tmp_path: Path) -> Path:
    """A dir with an ``orchctl`` that runs this checkout's code (what the script calls for session ids)."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    script = bindir / "orchctl"
    script.write_text(f'#!/bin/sh\nPYTHONPATH="{ROOT}" exec "{sys.executable}" -m orchctl.cli "$@"\n')
    script.chmod(0o755)
    return bindir


def _bash(tmp_path: Path, body: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "ORCHD_RUNTIME_DIR"}
    env["PATH"] = f"{_bin(tmp_path)}:{env['PATH']}"
    res = subprocess.run(["bash", "--norc", "--noprofile", "-c", f"source <(orchctl completion bash)\n{body}"],
                         capture_output=True, text=True, timeout=60, env=env)
    assert res.returncode == 0, res.stderr
    return res.stdout


def _complete(tmp_path: Path, *words: str) -> list[str]:
    quoted = " ".join(f"'{w}'" for w in words)
    out = _bash(tmp_path, f"COMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}; _orchctl; "
                          'printf "%s\\n" "${COMPREPLY[@]}"')
    return [line for line in out.splitlines() if line]


def test_sourcing_the_bash_script_registers_the_completion(tmp_path):
    assert _bash(tmp_path, "complete -p orchctl").strip() == "complete -F _orchctl orchctl"
    assert _complete(tmp_path, "orchctl", "st") == ["status", "stop"]
    listed = _complete(tmp_path, "orchctl", "")
    assert {"review", "answer", "reviews", "web", "completion"} <= set(listed), listed
    assert _complete(tmp_path, "orchctl", "watch", "--un") == ["--until-done"]
    assert _complete(tmp_path, "orchctl", "submit", "--agents", "co") == ["codex", "command"]
    assert _complete(tmp_path, "orchctl", "completion", "") == ["bash", "zsh", "fish"]
    assert _complete(tmp_path, "orchctl", "status", "") == []  # no daemon: no session ids, no error


def test_session_ids_come_from_the_running_daemon(daemon, git_repo, tmp_path):
    plan = write_plan(tmp_path / "plan.json", [{"name": "w", "agent": "command", "argv": fake("exit:0")}])
    sid = daemon.ctl_json("submit", "--plan", str(plan), "--target", str(git_repo))["session"]
    rt = str(daemon.runtime_dir)
    assert _complete(tmp_path, "orchctl", "--runtime-dir", rt, "status", "") == [sid]
    assert _complete(tmp_path, "orchctl", "watch", "--runtime-dir", rt, "") == [sid]  # the option after the command
    assert _complete(tmp_path, "orchctl", "--runtime-dir", rt, "logs", sid[:4]) == [sid]


def test_zsh_and_fish_scripts_name_every_command(tmp_path):
    for shell in ("zsh", "fish"):
        res = subprocess.run([sys.executable, "-m", "orchctl.cli", "completion", shell], capture_output=True,
                             text=True, timeout=30, cwd=ROOT)
        assert res.returncode == 0, res.stderr
        for cmd in ("submit", "status", "watch", "logs", "completion"):
            assert cmd in res.stdout
        assert "--list-sessions" in res.stdout  # where the session ids come from
    res = subprocess.run([sys.executable, "-m", "orchctl.cli", "completion"], capture_output=True, text=True,
                         timeout=30, cwd=ROOT)
    assert res.returncode == 2 and "bash, zsh or fish" in res.stderr
