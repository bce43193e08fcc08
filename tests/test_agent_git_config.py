"""An agent's git config runs nothing of orchd's: the commit of its clone, the list of what a
failed run changed, and a review's snapshot of a running author.

An agent may write its whole clone, ``.git`` included, and orchd's git runs outside the agent's
sandbox.  Each test plants what would make git run a program (a clean filter, a textconv
driver, an include, a common directory, a nested repository's own config) and checks that the
program never ran, with real git in temp dirs.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from actors import hostlink_git, snapshots
from actors import worktrees as wt
from tests import helpers
from tests.conftest import write_plan
from tests.helpers import watch_until_done

S = "s-cfg"


pytestmark = pytest.mark.usefixtures("no_user_git_config")  # conftest


def git(cwd: Path, *args: str) -> str:
    return helpers.git(cwd, *args).strip()


@pytest.fixture
def target(git_repo) -> Path:
    """The target: conftest's repository with one commit (``README.md``)."""
    return git_repo


def plant_filter(repo: Path, marker: Path, config: Path | None = None) -> None:
    """A clean filter and a textconv driver that leave ``marker`` when run, named for every file."""
    cfg = config or repo / ".git" / "config"
    with open(cfg, "a") as f:
        f.write(f'[filter "x"]\n\tclean = "touch {marker}; cat"\n\tsmudge = "touch {marker}; cat"\n'
                f'[diff "x"]\n\ttextconv = "touch {marker}; cat"\n')
    (repo / ".gitattributes").write_text("* filter=x diff=x\n")


def clone(target: Path, tmp_path: Path, name: str = "a") -> Path:
    path, _ = wt.create_worktree(target, tmp_path / "wt", S, name, wt.head_commit(target))
    return path


def committed(repo: Path, rev: str, path: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "show", f"{rev}:{path}"], capture_output=True, text=True,
                          check=True).stdout


def test_committing_a_clone_runs_no_filter_its_agent_configured(target, tmp_path):
    a = clone(target, tmp_path)
    marker = tmp_path / "ran"
    plant_filter(a, marker)
    (a / "new.txt").write_text("the agent's work\n")

    c = wt.commit_assignment(a, "a")

    assert c.made and not marker.exists()
    assert committed(a, c.commit, "new.txt") == "the agent's work\n"
    assert "filter" not in (a / ".git" / "config").read_text()  # orchd's config again


def test_an_include_a_common_directory_or_another_work_tree_named_in_the_clone_is_not_followed(target, tmp_path):
    a = clone(target, tmp_path)
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.cfg"
    plant_filter(a, marker, config=evil)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "stolen.txt").write_text("not the agent's clone\n")
    with open(a / ".git" / "config", "a") as f:
        f.write(f"[include]\n\tpath = {evil}\n[core]\n\tworktree = {elsewhere}\n")
    common = tmp_path / "common"  # a common directory whose config runs the filter too
    common.mkdir()
    plant_filter(a, marker, config=common / "config")
    (a / ".git" / "commondir").write_text(f"{common}\n")
    (a / "new.txt").write_text("work\n")

    c = wt.commit_assignment(a, "a")

    assert not marker.exists()
    assert not (a / ".git" / "commondir").exists()
    files = git(a, "ls-tree", "-r", "--name-only", c.commit).split()
    assert "new.txt" in files and "stolen.txt" not in files


def test_a_git_directory_that_is_a_link_or_names_another_repository_is_refused(target, tmp_path):
    for kind in ("gitfile", "link"):
        a = clone(target, tmp_path, f"a-{kind}")
        other = tmp_path / f"other-{kind}"
        (a / ".git").rename(other)
        if kind == "gitfile":
            (a / ".git").write_text(f"gitdir: {other}\n")
        else:
            (a / ".git").symlink_to(other)
        with pytest.raises(wt.GitError, match="not a directory"):
            wt.commit_assignment(a, "a")


def nested_repository(a: Path, marker: Path, name: str, move_on: bool) -> str:
    """A repository ``name`` in ``a``, committed there as a submodule entry, with a filter in its config and
    a changed file (to tell whether its files changed, git would run in it, unless its HEAD moved:
    ``move_on`` commits there after staging).  Returns the commit checked out there at the end."""
    sub = a / name
    sub.mkdir()
    git(sub, "init", "-q", "-b", "main")
    (sub / "f.txt").write_text("one\n")
    git(sub, "add", "f.txt")
    git(sub, "-c", "user.name=x", "-c", "user.email=x@x", "commit", "-q", "-m", "sub")
    git(a, "add", name)  # a submodule entry (gitlink), committed by the agent
    git(a, "-c", "user.name=x", "-c", "user.email=x@x", "commit", "-q", "-m", f"add {name}")
    if move_on:
        (sub / "g.txt").write_text("g\n")
        git(sub, "add", "g.txt")
        git(sub, "-c", "user.name=x", "-c", "user.email=x@x", "commit", "-q", "-m", "moved on")
    plant_filter(sub, marker)
    (sub / "f.txt").write_text("two\n")
    assert not marker.exists()
    return git(sub, "rev-parse", "HEAD")


def test_a_nested_repository_the_agent_committed_is_not_worked_in(target, tmp_path):
    a = clone(target, tmp_path)
    marker = tmp_path / "ran"
    still = nested_repository(a, marker, "still", move_on=False)
    moved = nested_repository(a, marker, "moved", move_on=True)

    c = wt.commit_assignment(a, "a")

    assert c.made and not marker.exists()
    assert git(a, "ls-tree", c.commit, "still").split()[2] == still
    assert git(a, "ls-tree", c.commit, "moved").split()[2] == moved  # where it is now


def test_listing_what_a_failed_run_changed_runs_no_filter_either(target, tmp_path):
    a = clone(target, tmp_path)
    base = git(a, "rev-parse", "HEAD")
    marker = tmp_path / "ran"
    plant_filter(a, marker)
    (a / "README.md").write_text("changed\n")

    assert "README.md" in wt.changed_since(a, base)
    assert not marker.exists()


def test_a_hosts_working_copy_is_committed_without_its_agents_config(target, tmp_path):
    bundle, head = hostlink_git.base_bundle(target, "main")
    wc = hostlink_git.working_copy(tmp_path / "host", S, "a", "main", head, bundle)
    marker = tmp_path / "ran"
    plant_filter(wc, marker)
    (wc / "new.txt").write_text("work\n")

    data, commit, wrapped = hostlink_git.result_bundle(wc, "main", head, "a", [])

    assert data and wrapped and not marker.exists()


def test_a_snapshot_of_a_running_author_runs_nothing_of_its_config(target, tmp_path):
    a = clone(target, tmp_path)
    marker = tmp_path / "ran"
    plant_filter(a, marker)
    (a / "README.md").write_text("changed while running\n")
    refs_before = git(a, "for-each-ref")

    res = snapshots.take(S, "r1", str(a), str(tmp_path / "reviews" / "r1" / "checkout"), None, 60_000,
                         None, 10, store=str(tmp_path / "reviews" / "snapshots.git"))

    assert res.error is None, res.error
    assert not marker.exists()
    assert "changed while running" in res.diff
    assert (Path(res.checkout) / "README.md").read_text() == "changed while running\n"
    assert git(a, "for-each-ref") == refs_before  # the author's repository is only read
    assert "filter" in (a / ".git" / "config").read_text()  # and left as it is: it is still running


def test_a_snapshot_stays_readable_after_its_authors_clone_is_gone(target, tmp_path):
    a = clone(target, tmp_path)
    (a / "new.txt").write_text("first\n")
    store = tmp_path / "reviews" / "snapshots.git"
    first = snapshots.take(S, "r1", str(a), str(tmp_path / "reviews" / "r1" / "checkout"), None, 60_000,
                           None, 10, store=str(store))
    assert first.error is None, first.error
    b = clone(target, tmp_path, "b")
    (b / "new.txt").write_text("second\n")
    second = snapshots.take(S, "r2", str(b), str(tmp_path / "reviews" / "r2" / "checkout"), None, 60_000,
                            None, 10, store=str(store))
    assert second.error is None, second.error
    os.rename(a, tmp_path / "a-gone")  # taken over or cleaned

    assert git(store, "show", f"{first.commit}:new.txt") == "first"
    assert git(store, "show", f"{first.commit}:README.md") == "target repo"  # through the hub and the target


def test_the_dashboards_diff_of_a_running_agent_runs_nothing_of_its_config(target, tmp_path):
    from orchd import web_diff

    a = clone(target, tmp_path)
    base = git(a, "rev-parse", "HEAD")
    marker = tmp_path / "ran"
    plant_filter(a, marker)
    with open(a / ".git" / "config", "a") as f:
        f.write(f'[core]\n\tfsmonitor = "touch {marker}; true"\n')
    (a / "README.md").write_text("changed while running\n")

    diff = web_diff.session_diff({"id": S, "target": str(target), "workers": [{"name": "a", "worktree": str(a)}]},
                                 base)

    part = diff.parts[0]
    assert part.error is None, part.error
    assert "+changed while running" in part.patch and "README.md" in part.stat
    assert not marker.exists()


def test_a_snapshot_and_the_dashboards_diff_do_not_work_in_a_nested_repository_either(target, tmp_path):
    from orchd import web_diff

    a = clone(target, tmp_path)
    base = git(a, "rev-parse", "HEAD")
    marker = tmp_path / "ran"
    nested_repository(a, marker, "still", move_on=False)
    now = nested_repository(a, marker, "moved", move_on=True)

    res = snapshots.take(S, "r1", str(a), str(tmp_path / "reviews" / "r1" / "checkout"), None, 60_000,
                         None, 10, store=str(tmp_path / "reviews" / "snapshots.git"))
    diff = web_diff.session_diff({"id": S, "target": str(target), "workers": [{"name": "a", "worktree": str(a)}]},
                                 base)

    assert res.error is None, res.error
    assert diff.parts[0].error is None, diff.parts[0].error
    assert not marker.exists()
    assert git(tmp_path / "reviews" / "snapshots.git", "ls-tree", res.commit, "moved").split()[2] == now
    assert f"+Subproject commit {now}" in diff.parts[0].patch


def test_a_session_whose_agent_plants_a_filter_runs_it_nowhere(daemon, git_repo, tmp_path):
    """Through the daemon: the agent's commit (before the assignment after it starts) and the
    session's merge never run the filter it configured; its work is merged as it wrote it."""
    marker = tmp_path / "ran"
    plant = (f"git config filter.x.clean 'touch {marker}; cat'; git config diff.x.textconv 'touch {marker}; cat'; "
             "printf '* filter=x diff=x\\n' > .gitattributes; echo work > evil.txt")
    plan = [{"name": "evil", "agent": "command", "argv": ["sh", "-c", plant]},
            {"name": "next", "agent": "command", "argv": ["sh", "-c", "echo next > next.txt"], "after": ["evil"]}]
    sid = daemon.ctl_json("submit", "--plan", str(write_plan(tmp_path / "plan.json", plan)),
                          "--target", str(git_repo))["session"]
    events = watch_until_done(daemon, sid, timeout_s=120)

    assert events[-1]["state"] == "done", daemon.ctl("logs", sid, check=False).stdout[-3000:]
    assert not marker.exists()
    branch = f"orchd/{sid}"
    assert git(git_repo, "show", f"{branch}:evil.txt") == "work"
    assert git(git_repo, "show", f"{branch}:next.txt") == "next"
