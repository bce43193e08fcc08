"""Merging a session's branches: a conflict escalates with the files listed; clean keeps branches."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.conftest import fake, write_plan
from tests.helpers import git, watch_until_done


def test_conflicting_assignments_escalate_and_keep_branches(daemon, git_repo, tmp_path):
    plan = write_plan(tmp_path / "plan.json", [
        {"name": "left", "agent": "command", "argv": fake("write:shared.txt:left version", "exit:0")},
        {"name": "right", "agent": "command", "argv": fake("write:shared.txt:right version", "exit:0")},
    ])
    sid = daemon.ctl_json("submit", "--plan", str(plan), "--target", str(git_repo))["session"]
    s = daemon.wait_session(sid)
    assert s["state"] == "escalated", s
    assert "shared.txt" in s["reason"]
    events = watch_until_done(daemon, sid)
    conflict = [e for e in events if e["kind"] == "session.note" and (e.get("data") or {}).get("conflicts")]
    assert conflict and conflict[0]["data"]["conflicts"] == ["shared.txt"]
    # the assignment branches are kept in orchd's own repository of the session's branches
    hub = tmp_path / "state" / "worktrees" / sid / "_branches.git"
    branches = git(hub, "branch", "--list", f"orchd/{sid}*").split()
    assert f"orchd/{sid}.left" in branches and f"orchd/{sid}.right" in branches
    assert git(hub, "show", f"orchd/{sid}.left:shared.txt") == "left version"
    assert git(hub, "show", f"orchd/{sid}.right:shared.txt") == "right version"
    # the target is untouched: not even a branch (only a merged session gets orchd/<session>)
    assert git(git_repo, "status", "--porcelain") == ""
    assert not (git_repo / "shared.txt").exists()
    assert git(git_repo, "branch", "--list", "orchd/*") == ""

    trees = [w["worktree"] for w in s["workers"]]
    assert all(t and (tmp_path / "state" / "worktrees") in Path(t).parents for t in trees)
    out = daemon.ctl_json("clean", sid)
    assert out["ok"] is True
    assert not any(os.path.exists(t) for t in trees)
    assert f"orchd/{sid}.left" in git(hub, "branch", "--list", f"orchd/{sid}*")


def test_clean_refuses_a_running_session(daemon, git_repo, tmp_path):
    marker = tmp_path / "started"
    plan = write_plan(tmp_path / "plan.json", [
        {"name": "long", "agent": "command", "argv": fake(f"touch:{marker}", "hang")}])
    sid = daemon.ctl_json("submit", "--plan", str(plan), "--target", str(git_repo))["session"]
    res = daemon.ctl("clean", sid, "--json", check=False)
    assert res.returncode == 1 and json.loads(res.stdout)["error"]["code"] == "bad_state"
    daemon.ctl("stop", sid)
    assert daemon.wait_session(sid)["state"] == "stopped"
