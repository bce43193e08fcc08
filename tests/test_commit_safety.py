"""What orchd commits, and that no work is lost: excludes, messages, clean, a dirty target."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import fake, wait_for, write_plan
from tests.helpers import git, replay_all, watch_until_done

LITTER = ("mkdir -p src __pycache__ node_modules/pkg sub/.codex && echo 'API_KEY=secret' > .env && "
          "echo 'X=1' > .env.local && echo key > deploy.pem && echo b > __pycache__/m.cpython-311.pyc && "
          "echo js > node_modules/pkg/index.js && echo s > sub/.codex/state.json && echo 'print(1)' > src/app.py && "
          "echo 'DONE: added src/app.py'")


def test_secrets_caches_and_dependencies_stay_off_the_branch(daemon, git_repo, tmp_path):
    plan = write_plan(tmp_path / "plan.json", [{"name": "impl", "agent": "command", "argv": ["sh", "-c", LITTER]}])
    sid = daemon.ctl_json("submit", "Add the app\nwith a second line", "--plan", str(plan),
                          "--target", str(git_repo))["session"]
    events = watch_until_done(daemon, sid)
    assert events[-1]["state"] == "done", events[-1]
    branch = f"orchd/{sid}"
    assert set(git(git_repo, "ls-tree", "-r", "--name-only", branch).split()) == {"README.md", "src/app.py"}
    (committed,) = [e for e in events if e["kind"] == "worker.committed"]
    assert committed["worker"] == "impl" and committed["made"] is True
    assert committed["commit"] == git(git_repo, "rev-parse", branch).strip()
    assert committed["left_out"] == [".env", ".env.local", "__pycache__/", "deploy.pem", "node_modules/",
                                     "sub/.codex/"]
    # the message carries the task's first line and the agent's DONE: summary
    message = git(git_repo, "log", "-1", "--format=%B", branch).strip()
    assert message.splitlines()[0] == "Add the app (orchd: impl)"
    assert "DONE: added src/app.py" in message
    # what was left out is still in the agent's clone, not thrown away
    clone = Path(daemon.status(sid)["workers"][0]["worktree"])
    assert (clone / ".env").read_text() == "API_KEY=secret\n"


def test_commit_exclude_is_configurable(daemon_factory, git_repo, tmp_path):
    d = daemon_factory(config='commit_exclude = ["*.log"]\n')
    plan = write_plan(tmp_path / "plan.json", [
        {"name": "impl", "agent": "command", "argv": ["sh", "-c", "echo k > .env && echo l > run.log"]}])
    sid = d.ctl_json("submit", "--plan", str(plan), "--target", str(git_repo))["session"]
    events = watch_until_done(d, sid)
    assert set(git(git_repo, "ls-tree", "-r", "--name-only", f"orchd/{sid}").split()) == {"README.md", ".env"}
    assert [e["left_out"] for e in events if e["kind"] == "worker.committed"] == [["run.log"]]
    d.stop()


def test_clean_commits_what_a_stopped_assignment_left(daemon, git_repo, tmp_path):
    plan = write_plan(tmp_path / "plan.json", [
        {"name": "long", "agent": "command", "argv": fake("write:wip.txt:half done", "hang")}])
    sid = daemon.ctl_json("submit", "--plan", str(plan), "--target", str(git_repo))["session"]
    wait_for(lambda: (w := daemon.status(sid)["workers"][0])["worktree"]
             and (Path(w["worktree"]) / "wip.txt").exists(), what="the agent's file")
    clone = Path(daemon.status(sid)["workers"][0]["worktree"])
    daemon.ctl("stop", sid)
    assert daemon.wait_session(sid)["state"] == "stopped"

    out = daemon.ctl_json("clean", sid)

    assert out["ok"] is True
    assert not clone.exists()
    hub = daemon.state_dir / "worktrees" / sid / "_branches.git"
    assert git(hub, "show", f"orchd/{sid}.long:wip.txt") == "half done"
    # the target got nothing: the session was never merged
    assert git(git_repo, "for-each-ref", "refs/heads/orchd/") == ""
    # after the session's end, so read the log itself (watch --until-done stops at the end)
    events = [json.loads(body) for _, body in replay_all(f"ipc://{daemon.runtime_dir}/control")]
    assert [e["worker"] for e in events if e["kind"] == "worker.committed" and e["session"] == sid] == ["long"]


def test_a_dirty_target_gets_a_warning(daemon, git_repo, tmp_path):
    (git_repo / "README.md").write_text("edited\n")
    (git_repo / "staged.txt").write_text("s\n")
    git(git_repo, "add", "staged.txt")
    (git_repo / "scratch").mkdir()
    (git_repo / "scratch" / "notes.txt").write_text("n\n")
    (git_repo / ".gitignore").write_text("*.tmp\n")
    (git_repo / "ignored.tmp").write_text("i\n")
    index = (git_repo / ".git" / "index").read_bytes()
    plan = write_plan(tmp_path / "plan.json", [{"name": "a", "agent": "command", "argv": fake("exit:0")}])

    reply = daemon.ctl_json("submit", "--plan", str(plan), "--target", str(git_repo))
    (warning,) = reply["warnings"]
    assert "uncommitted changes" in warning and "HEAD" in warning
    for name in ("M README.md", "A staged.txt", "?? scratch/", "?? .gitignore"):
        assert name in warning, warning
    assert "ignored.tmp" not in warning
    events = watch_until_done(daemon, reply["session"])
    (ev,) = [e for e in events if e["kind"] == "session.warning"]
    assert ev["files"] == ["M README.md", "A staged.txt", "?? .gitignore", "?? scratch/"] and ev["more"] == 0
    assert (git_repo / ".git" / "index").read_bytes() == index  # looking did not rewrite the index

    human = daemon.ctl("submit", "--plan", str(plan), "--target", str(git_repo))
    assert b"warning: the target has uncommitted changes" in human.stderr
    git(git_repo, "add", "-A")
    git(git_repo, "commit", "-qm", "everything")
    assert json.loads(daemon.ctl("submit", "--plan", str(plan), "--target", str(git_repo),
                                 "--json").stdout)["warnings"] == []
