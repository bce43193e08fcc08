"""The target is read-only to agents: what they do to git in their clone never reaches it.

Each agent runs, in its working directory, the git commands that changed
the target when assignments were linked worktrees of it: move the target's
branch, tag, set config, plant a hook, force another assignment's branch,
``gc --prune=now``; the sandboxed CLIs also try to push into the target and
into orchd's branch repository.  After the session is merged, every file of
the target's ``.git`` except its object store and ``refs/heads/orchd/<session>``
(with its reflog) is byte-for-byte what it was, ``.git/worktrees`` holds
nothing of orchd's, and the merged branch is whole (the gc in a clone that
borrows objects did not break anything).

The real claude (default ``workspace`` profile) and the real codex run the
commands through their shell tool against the scripted model server
(``--rehearse FILE``); the ``command`` agent runs them itself.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.agentbin import agent_env_path, require_agent
from tests.conftest import Daemon, write_plan
from tests.helpers import git, watch_until_done

# What an agent tries in its working directory.  ``S`` is the session (the
# clone is <worktrees>/<session>/<assignment>); ``H`` orchd's branch repository
# and ``T`` the target's git dir, found through the alternates.
GIT_ATTACK = (
    "git update-ref refs/heads/master HEAD; git update-ref refs/heads/main HEAD; git tag evil-tag; "
    "git config user.name evil; mkdir -p .git/hooks && echo x > .git/hooks/pre-commit; "
    'S=$(basename "$(dirname "$PWD")"); git branch -f "orchd/$S.other" HEAD; git branch -f "orchd/$S" HEAD; '
    "git gc --prune=now --quiet"
)
PUSH_ATTACK = (
    'H=$(sed "s#/objects\\$##" .git/objects/info/alternates); '
    'T=$(sed "s#/objects\\$##" "$H/objects/info/alternates"); '
    'git push -q -f "$H" "HEAD:refs/heads/orchd/$S.other"; git push -q -f "$T" HEAD:refs/heads/evil-push; '
    'git push -q -f "$T" "HEAD:refs/heads/orchd/$S"'
)
WRITE = "echo evil > {name}.txt; true"


def git_dir_snapshot(repo: Path, sid: str) -> dict[str, bytes]:
    """Every file of ``repo/.git`` but the object store and the session branch orchd may write."""
    dot = repo / ".git"
    allowed = {f"refs/heads/orchd/{sid}", f"logs/refs/heads/orchd/{sid}",
               "refs/heads/orchd", "logs/refs/heads/orchd"}  # the directories holding them
    out = {}
    for path in sorted(dot.rglob("*")):
        rel = str(path.relative_to(dot))
        if rel == "objects" or rel.startswith("objects/") or rel in allowed:
            continue
        out[rel] = path.read_bytes() if path.is_file() else b"<dir>"
    return out


def prepare_target(repo: Path) -> None:
    """A target with a tag, a hook and a config of its own, all to be left alone."""
    git(repo, "tag", "v1")
    hook = repo / ".git" / "hooks" / "post-commit"
    hook.write_text("#!/bin/sh\nexit 0\n")
    hook.chmod(0o755)
    git(repo, "config", "user.name", "The User")


def run_session(d, repo: Path, tmp_path: Path, plan: list[dict],
                scenario: dict | None) -> tuple[str, dict, list[dict]]:
    before_head = git(repo, "rev-parse", "HEAD").strip()
    args = ["submit", "--plan", str(write_plan(tmp_path / "plan.json", plan)), "--target", str(repo)]
    if scenario is not None:
        (tmp_path / "scenario.json").write_text(json.dumps(scenario))
        args += ["--rehearse", str(tmp_path / "scenario.json")]
    sid = d.ctl_json(*args)["session"]
    events = watch_until_done(d, sid, timeout_s=240)
    assert events[-1]["state"] == "done", (events[-1], d.ctl("logs", sid, check=False).stdout[-4000:])
    assert git(repo, "rev-parse", "HEAD").strip() == before_head
    return sid, d.status(sid), events


def check_untouched(repo: Path, sid: str, before: dict[str, bytes], state: Path, evil: str) -> None:
    after = git_dir_snapshot(repo, sid)
    assert after == before, {k for k in set(after) | set(before) if after.get(k) != before.get(k)}
    assert not (repo / ".git" / "worktrees").exists()
    refs = git(repo, "for-each-ref", "--format=%(refname)").split()
    assert sorted(refs) == ["refs/heads/main", f"refs/heads/orchd/{sid}", "refs/tags/v1"]
    assert git(repo, "fsck", "--connectivity-only", "--no-dangling").strip() == ""
    # the merged branch is whole: the evil agent's file and the other assignment's, nothing else
    branch = f"orchd/{sid}"
    assert set(git(repo, "ls-tree", "-r", "--name-only", branch).split()) == {"README.md", f"{evil}.txt", "other.txt"}
    assert git(repo, "show", f"{branch}:other.txt") == "other\n"
    # the other assignment's branch (in orchd's own repository) is its own, not the evil agent's
    hub = state / "worktrees" / sid / "_branches.git"
    assert git(hub, "show", f"orchd/{sid}.other:other.txt") == "other\n"
    assert git_ok(hub, "cat-file", "-e", f"orchd/{sid}.other:{evil}.txt") is False


def git_ok(repo: Path, *args: str) -> bool:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True).returncode == 0


OTHER = {"name": "other", "agent": "command", "argv": ["sh", "-c", "echo other > other.txt"]}


def test_a_command_agent_cannot_change_the_target(daemon, git_repo, tmp_path):
    prepare_target(git_repo)
    before = git_dir_snapshot(git_repo, "none")
    plan = [{"name": "evil", "agent": "command", "argv": ["sh", "-c", f"{GIT_ATTACK}; {WRITE.format(name='evil')}"]},
            OTHER]
    sid, status, _ = run_session(daemon, git_repo, tmp_path, plan, None)
    check_untouched(git_repo, sid, before, daemon.state_dir, "evil")
    # the agent did change its own clone: the commands ran
    clone = Path(next(w["worktree"] for w in status["workers"] if w["name"] == "evil"))
    assert git(clone, "tag", "--list").split() == ["evil-tag"]
    assert (clone / ".git" / "hooks" / "pre-commit").read_text() == "x\n"
    # ...and its config, which orchd put back before its own git worked there (worktrees.disarm)
    assert "evil" not in (clone / ".git" / "config").read_text()


@pytest.fixture
def cli_daemon(short_tmp):
    """A daemon whose state dir has a short path: claude's sandbox makes its bridge sockets in
    the run's TMPDIR (<state>/runs/<session>/<assignment>/<gen>/tmp), and a socket path has at
    most 107 bytes ("Failed to create bridge sockets" otherwise)."""
    d = Daemon(short_tmp / "st", short_tmp / "rt", None, {"PATH": agent_env_path()}).start()
    yield d
    if d.proc.poll() is None:
        assert d.stop() == 0, d.log()[-3000:]


@pytest.mark.parametrize("agent", ["claude", "codex"])
def test_a_sandboxed_cli_cannot_change_the_target(agent, cli_daemon, git_repo, tmp_path):
    require_agent(agent)
    prepare_target(git_repo)
    before = git_dir_snapshot(git_repo, "none")
    name = "evil"
    # a script, written and then run: claude will not run a command line it cannot analyse ($(...))
    script = f"{GIT_ATTACK}\n{PUSH_ATTACK}\n{WRITE.format(name=name)}\nrm -f attack.sh\n"
    scenario = {"agents": {agent: [
        {"tool": "write_file", "path": "attack.sh", "content": script},
        {"tool": "run", "command": "sh attack.sh"},
        {"text": "Tried.\nDONE: tried everything"},
    ]}}
    plan = [{"name": name, "agent": agent, "prompt": "Break out."}, OTHER]
    sid, status, events = run_session(cli_daemon, git_repo, tmp_path, plan, scenario)
    check_untouched(git_repo, sid, before, cli_daemon.state_dir, name)
    clone = Path(next(w["worktree"] for w in status["workers"] if w["name"] == name))
    assert (clone / f"{name}.txt").read_text() == "evil\n"  # the shell tool did run the script
    ran = [e for e in events if e["kind"] == "agent.tool_result" and "push" in json.dumps(e.get("output"))]
    assert ran and "failed to push" in json.dumps(ran[0]["output"]), ran  # refused by the sandbox
