"""actors.worktrees against real git repositories in temp dirs."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from actors import merging
from actors import worktrees as wt
from actors.worktrees import BadName, GitError, MergeConflict, NotARepo
from tests import helpers

S = "s-1a2b"


pytestmark = pytest.mark.usefixtures("no_user_git_config")  # conftest: no identity anywhere


def git(cwd: Path, *args: str) -> str:
    """The test's own git (``tests.helpers.git``: an explicit identity; the module uses its own), stripped."""
    return helpers.git(cwd, *args).strip()


@pytest.fixture
def repo(tmp_path) -> Path:
    target = tmp_path / "target"
    target.mkdir()
    git(target, "init", "-q", "-b", "main")
    (target / "README").write_text("hello\n")
    (target / "shared.txt").write_text("one\ntwo\nthree\n")
    git(target, "add", "-A")
    git(target, "commit", "-q", "-m", "initial")
    return target


@pytest.fixture
def root(tmp_path) -> Path:
    return tmp_path / "worktrees"


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def snapshot(target: Path) -> dict[str, object]:
    """Everything of the target the user could notice, read without git writing anything.

    (``git status`` is deliberately not used: it may rewrite the index.)
    """
    files = {}
    for dirpath, dirnames, filenames in os.walk(target):
        dirnames[:] = [d for d in dirnames if d != ".git"]
        for name in filenames:
            p = Path(dirpath) / name
            files[str(p.relative_to(target))] = p.read_bytes()
    dot = target / ".git"
    refs = [line for line in git(target, "for-each-ref", "--format=%(refname) %(objectname)").splitlines()
            if not line.startswith("refs/heads/orchd/")]
    return {
        "files": files,
        "HEAD": (dot / "HEAD").read_bytes(),
        "index": (dot / "index").read_bytes(),
        "head-log": (dot / "logs" / "HEAD").read_bytes(),
        "refs": refs,
    }


def branch_files(repo: Path, branch: str) -> set[str]:
    return set(git(repo, "ls-tree", "-r", "--name-only", branch).splitlines())


def hub(root: Path, session: str = S) -> Path:
    """orchd's own repository of the session's branches (the target holds none of them)."""
    return root / session / "_branches.git"


def registered(repo: Path) -> list[str]:
    return [line.removeprefix("worktree ") for line in
            git(repo, "worktree", "list", "--porcelain").splitlines() if line.startswith("worktree ")]


# ---------------------------------------------------------------- head_commit

def test_head_commit_is_the_target_head(repo):
    assert wt.head_commit(repo) == git(repo, "rev-parse", "HEAD")


def test_missing_directory_is_not_a_repo(tmp_path):
    with pytest.raises(NotARepo, match="is not a git repository"):
        wt.head_commit(tmp_path / "nope")


def test_plain_directory_is_not_a_repo(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(NotARepo, match=f"{plain} is not a git repository"):
        wt.head_commit(plain)


def test_subdirectory_of_a_repo_is_not_the_repo(repo):
    (repo / "sub").mkdir()
    with pytest.raises(NotARepo, match="inside the repository"):
        wt.head_commit(repo / "sub")


def test_repo_without_commits(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    git(empty, "init", "-q")
    with pytest.raises(NotARepo, match="has no commits yet"):
        wt.head_commit(empty)


def test_not_a_repo_is_a_git_error():
    assert issubclass(NotARepo, GitError) and issubclass(MergeConflict, GitError)


# ---------------------------------------------------------------- names

def test_branch_names_are_valid_refs_that_can_coexist(repo):
    assert wt.session_branch(S) == f"orchd/{S}"
    assert wt.branch_name(S, "impl.v2") == f"orchd/{S}.impl.v2"
    # Both kinds at once: git cannot hold orchd/s next to orchd/s/a.
    git(repo, "branch", wt.session_branch(S))
    git(repo, "branch", wt.branch_name(S, "impl"))


@pytest.mark.parametrize("session,assignment", [
    ("a.b", "x"), ("../up", "x"), ("", "x"), ("_s", "x"), ("-s", "x"),
    (S, "a/b"), (S, "_merge"), (S, ".x"), (S, "x.lock"), (S, "a..b"), (S, "x."), (S, "a b"),
    (S, "a\\b"), (S, "a:b"), (S, "a@{1}"), (S, "@"), (S, "tab\there"), (S, ""),
])
def test_bad_names_are_refused(session, assignment):
    with pytest.raises(BadName):
        wt.branch_name(session, assignment)


def test_bad_name_is_both_a_value_error_and_a_git_error(repo, root):
    # A caller that handles git failures around create_worktree handles this too.
    with pytest.raises(GitError) as caught:
        wt.create_worktree(repo, root, S, "a/../../escape", wt.head_commit(repo))
    assert isinstance(caught.value, ValueError)
    assert not root.exists()


@pytest.mark.parametrize("assignment", ["write+test", "café", "v1.2", "a@b", "Impl_2"])
def test_unusual_but_safe_assignment_names_work(repo, root, assignment):
    path, branch = wt.create_worktree(repo, root, S, assignment, wt.head_commit(repo))
    assert path == root / S / assignment and path.is_dir()
    assert git(repo, "check-ref-format", f"refs/heads/{branch}") == ""
    write(path / "x.txt", "x\n")
    head = wt.commit_all(path, "x")
    assert merging.merge_session(repo, root, S, [assignment], wt.head_commit(repo)).commit == head


# ---------------------------------------------------------------- create_worktree

def test_create_worktree_and_again(repo, root):
    base = wt.head_commit(repo)
    path, branch = wt.create_worktree(repo, root, S, "impl", base)
    assert path == root / S / "impl"
    assert branch == f"orchd/{S}.impl"
    assert (path / "README").read_text() == "hello\n"
    assert git(hub(root), "rev-parse", branch) == base
    assert git(path, "symbolic-ref", "--short", "HEAD") == branch
    # a clone of its own: its git dir is inside it, the target knows nothing of it
    assert (path / ".git").is_dir()
    assert git(path, "rev-parse", "--absolute-git-dir") == str(path / ".git")
    assert git(repo, "for-each-ref", "refs/heads/orchd/") == ""

    write(path / "wip.txt", "not committed yet\n")
    again = wt.create_worktree(repo, root, S, "impl", base)
    assert again == (path, branch)
    assert (path / "wip.txt").read_text() == "not committed yet\n"
    assert registered(repo) == [str(repo)]


def test_create_worktree_keeps_an_existing_branch(repo, root):
    base = wt.head_commit(repo)
    path, branch = wt.create_worktree(repo, root, S, "impl", base)
    write(path / "a.txt", "a\n")
    done = wt.commit_all(path, "agent work")
    wt.clean(repo, root, S)
    assert not path.exists()

    again, _ = wt.create_worktree(repo, root, S, "impl", base)
    assert again == path
    assert git(hub(root), "rev-parse", branch) == done
    assert (path / "a.txt").read_text() == "a\n"


def test_create_worktree_after_its_directory_vanished(repo, root):
    base = wt.head_commit(repo)
    path, branch = wt.create_worktree(repo, root, S, "impl", base)
    shutil.rmtree(path)
    again, _ = wt.create_worktree(repo, root, S, "impl", base)
    assert again == path and (path / "README").exists()


def test_create_worktree_rejects_a_bad_base(repo, root):
    with pytest.raises(GitError, match="not a commit"):
        wt.create_worktree(repo, root, S, "impl", "0" * 40)
    with pytest.raises(GitError, match="not a commit"):
        wt.create_worktree(repo, root, S, "impl", "--orphan")


# ---------------------------------------------------------------- commit_all

def test_commit_all_without_changes_makes_no_commit(repo, root):
    base = wt.head_commit(repo)
    path, branch = wt.create_worktree(repo, root, S, "impl", base)
    assert wt.commit_all(path, "nothing") == base
    assert git(hub(root), "rev-parse", branch) == base


def test_commit_all_takes_new_modified_and_deleted_files(repo, root):
    base = wt.head_commit(repo)
    path, branch = wt.create_worktree(repo, root, S, "impl", base)
    write(path / "new" / "file.txt", "new\n")
    (path / "README").write_text("changed\n")
    (path / "shared.txt").unlink()
    head = wt.commit_all(path, "agent work")
    assert head == git(hub(root), "rev-parse", branch) == git(path, "rev-parse", branch) != base
    assert branch_files(hub(root), branch) == {"README", "new/file.txt"}
    assert git(hub(root), "log", "-1", "--format=%an <%ae>|%cn <%ce>|%s", branch) == \
        "orchd <orchd@localhost>|orchd <orchd@localhost>|agent work"


def test_commit_all_refuses_work_on_another_branch(repo, root):
    path, branch = wt.create_worktree(repo, root, S, "impl", wt.head_commit(repo))
    git(path, "checkout", "-q", "-b", "agents-own-idea")
    write(path / "lost.txt", "would be left out of the merge\n")
    with pytest.raises(GitError, match=f"on branch agents-own-idea, not on {branch}"):
        wt.commit_all(path, "x")


def test_commit_all_in_a_repository_that_is_not_ours(tmp_path, repo):
    # The parent/name layout check must not misfire on an ordinary checkout.
    write(repo / "new.txt", "n\n")
    head = wt.commit_all(repo, "plain")
    assert head == git(repo, "rev-parse", "main")
    assert "new.txt" in branch_files(repo, "main")


def test_merging_an_assignment_without_a_branch(repo, root):
    with pytest.raises(GitError, match=f"no branch orchd/{S}.ghost"):
        merging.merge_session(repo, root, S, ["ghost"], wt.head_commit(repo))


def test_commit_all_refuses_unresolved_conflicts(repo, root):
    path, _ = wt.create_worktree(repo, root, S, "impl", wt.head_commit(repo))
    other, _ = wt.create_worktree(repo, root, S, "other", wt.head_commit(repo))
    (other / "shared.txt").write_text("by other\n")
    theirs = wt.commit_all(other, "other")
    (path / "shared.txt").write_text("by impl\n")
    wt.commit_all(path, "impl")
    merge = helpers.git_run(path, "merge", theirs)
    assert "CONFLICT" in merge.stdout
    with pytest.raises(MergeConflict) as caught:
        wt.commit_all(path, "x")
    assert caught.value.files == ["shared.txt"]


def test_commit_all_refuses_a_detached_head(repo, root):
    path, _ = wt.create_worktree(repo, root, S, "impl", wt.head_commit(repo))
    git(path, "checkout", "-q", "--detach")
    with pytest.raises(GitError, match="detached HEAD"):
        wt.commit_all(path, "x")


# ---------------------------------------------------------------- merge_session

def test_sequential_assignments_merge_without_touching_the_target(repo, root):
    # The user is mid-work in the target: an uncommitted change, a staged
    # change and an untracked file.
    (repo / "README").write_text("hello, edited by the user\n")
    write(repo / "staged.txt", "staged\n")
    git(repo, "add", "staged.txt")
    write(repo / "scratch" / "untracked.txt", "mine\n")
    before = snapshot(repo)

    base = wt.head_commit(repo)
    first, _ = wt.create_worktree(repo, root, S, "design", base)
    write(first / "design.md", "the plan\n")
    after_first = wt.commit_all(first, "design")
    second, _ = wt.create_worktree(repo, root, S, "impl", after_first)
    write(second / "impl.py", "print('hi')\n")
    after_second = wt.commit_all(second, "impl")

    result = merging.merge_session(repo, root, S, ["design", "impl"], base)

    assert result == merging.MergeResult(ok=True, commit=after_second, conflicts=[], branch=f"orchd/{S}")
    assert git(repo, "rev-parse", f"orchd/{S}") == after_second  # both fast-forwards
    assert {"design.md", "impl.py", "README"} <= branch_files(repo, f"orchd/{S}")
    assert snapshot(repo) == before
    assert git(repo, "rev-parse", "main") == base


def _two_parallel(repo, root, base) -> tuple[str, str]:
    """Clones "a" and "b" of session S at ``base``, each adding its own file, committed: their heads."""
    a, _ = wt.create_worktree(repo, root, S, "a", base)
    b, _ = wt.create_worktree(repo, root, S, "b", base)
    write(a / "a.txt", "a\n")
    write(b / "b.txt", "b\n")
    return wt.commit_all(a, "a"), wt.commit_all(b, "b")


def test_parallel_assignments_with_disjoint_files_merge(repo, root):
    before = snapshot(repo)
    base = wt.head_commit(repo)
    head_a, head_b = _two_parallel(repo, root, base)

    result = merging.merge_session(repo, root, S, ["a", "b"], base)

    assert result.ok and result.conflicts == [] and result.branch == f"orchd/{S}"
    assert git(repo, "rev-parse", f"orchd/{S}") == result.commit
    assert git(repo, "rev-parse", f"{result.commit}^1", f"{result.commit}^2").split() == [head_a, head_b]
    assert {"a.txt", "b.txt"} <= branch_files(repo, f"orchd/{S}")
    assert git(root / S / "_merge", "symbolic-ref", "--short", "HEAD") == f"orchd/{S}"
    assert snapshot(repo) == before


def test_merging_again_rebuilds_the_session_branch(repo, root):
    base = wt.head_commit(repo)
    a, _ = wt.create_worktree(repo, root, S, "a", base)
    write(a / "a.txt", "a\n")
    first = wt.commit_all(a, "a")
    assert merging.merge_session(repo, root, S, ["a"], base).commit == first
    write(a / "a.txt", "a, revised\n")
    second = wt.commit_all(a, "a again")
    assert merging.merge_session(repo, root, S, ["a"], base).commit == second


def test_conflict_is_reported_and_moves_no_branch(repo, root):
    base = wt.head_commit(repo)
    a, _ = wt.create_worktree(repo, root, S, "a", base)
    b, _ = wt.create_worktree(repo, root, S, "b", base)
    c, _ = wt.create_worktree(repo, root, S, "c", base)
    (a / "shared.txt").write_text("one\nTWO by a\nthree\n")
    (b / "shared.txt").write_text("one\nTWO by b\nthree\n")
    write(c / "c.txt", "c\n")
    heads = {name: wt.commit_all(p, name) for name, p in (("a", a), ("b", b), ("c", c))}
    # An earlier successful merge of just c, which the failed one must not move.
    earlier = merging.merge_session(repo, root, S, ["c"], base)
    before = snapshot(repo)

    result = merging.merge_session(repo, root, S, ["c", "a", "b"], base)

    assert result == merging.MergeResult(ok=False, commit=None, conflicts=["shared.txt"],
                                    branch=f"orchd/{S}", assignment="b")
    for name, head in heads.items():
        assert git(hub(root), "rev-parse", wt.branch_name(S, name)) == head
    assert git(repo, "rev-parse", f"orchd/{S}") == earlier.commit
    assert not (root / S / "_merge").exists()
    assert str(root / S / "_merge") not in registered(hub(root))
    assert snapshot(repo) == before
    # The assignment worktrees are untouched too.
    assert (b / "shared.txt").read_text() == "one\nTWO by b\nthree\n"


def test_merge_refuses_a_session_branch_checked_out_by_the_user(repo, root):
    base = wt.head_commit(repo)
    a, _ = wt.create_worktree(repo, root, S, "a", base)
    write(a / "a.txt", "a\n")
    wt.commit_all(a, "a")
    git(repo, "branch", f"orchd/{S}", base)
    git(repo, "checkout", "-q", f"orchd/{S}")
    before = snapshot(repo)

    with pytest.raises(GitError, match="checked out"):
        merging.merge_session(repo, root, S, ["a"], base)

    assert git(repo, "rev-parse", f"orchd/{S}") == base
    assert snapshot(repo) == before
    assert not (root / S / "_merge").exists()


def test_merge_ignores_hostile_repository_config(repo, root):
    """Hooks that reject everything, merges that must not fast-forward, signing on."""
    hooks = repo / ".git" / "hooks"
    for hook in ("pre-commit", "commit-msg", "pre-merge-commit", "post-checkout"):
        (hooks / hook).write_text("#!/bin/sh\necho hook ran >&2\nexit 1\n")
        (hooks / hook).chmod(0o755)
    git(repo, "config", "merge.ff", "only")
    git(repo, "config", "commit.gpgSign", "true")
    git(repo, "config", "user.useConfigOnly", "true")

    base = wt.head_commit(repo)
    _two_parallel(repo, root, base)
    result = merging.merge_session(repo, root, S, ["a", "b"], base)
    assert result.ok and {"a.txt", "b.txt"} <= branch_files(repo, f"orchd/{S}")


# ---------------------------------------------------------------- merged_base

def test_merged_base_of_two_parallel_assignments(repo, root):
    base = wt.head_commit(repo)
    head_a, head_b = _two_parallel(repo, root, base)
    branches = git(hub(root), "for-each-ref", "--format=%(refname)")
    target_refs = git(repo, "for-each-ref", "--format=%(refname)")

    merged = merging.merged_base(repo, root, S, "review", [head_a, head_b])

    assert git(hub(root), "rev-parse", f"{merged}^1", f"{merged}^2").split() == [head_a, head_b]
    assert {"a.txt", "b.txt"} <= branch_files(hub(root), merged)
    assert git(hub(root), "for-each-ref", "--format=%(refname)") == branches
    assert git(repo, "for-each-ref", "--format=%(refname)") == target_refs
    assert not (root / S / "_base-review").exists() and len(registered(hub(root))) == 1
    assert registered(repo) == [str(repo)]
    # The waiting assignment starts from it.
    path, branch = wt.create_worktree(repo, root, S, "review", merged)
    assert (path / "a.txt").exists() and (path / "b.txt").exists()


def test_merged_base_of_one_commit_or_a_line_of_commits(repo, root):
    base = wt.head_commit(repo)
    a, _ = wt.create_worktree(repo, root, S, "a", base)
    write(a / "a.txt", "a\n")
    head_a = wt.commit_all(a, "a")
    assert merging.merged_base(repo, root, S, "next", [head_a]) == head_a
    assert merging.merged_base(repo, root, S, "next", [head_a, head_a]) == head_a
    assert merging.merged_base(repo, root, S, "next", [base, head_a]) == head_a  # fast-forward


def test_merged_base_conflict_leaves_no_mess(repo, root):
    base = wt.head_commit(repo)
    a, _ = wt.create_worktree(repo, root, S, "a", base)
    b, _ = wt.create_worktree(repo, root, S, "b", base)
    (a / "shared.txt").write_text("by a\n")
    (b / "shared.txt").write_text("by b\n")
    head_a, head_b = wt.commit_all(a, "a"), wt.commit_all(b, "b")
    branches = git(hub(root), "for-each-ref", "--format=%(refname) %(objectname)")

    with pytest.raises(MergeConflict) as caught:
        merging.merged_base(repo, root, S, "review", [head_a, head_b])

    assert caught.value.files == ["shared.txt"]
    assert not (root / S / "_base-review").exists() and len(registered(hub(root))) == 1
    assert registered(repo) == [str(repo)]
    assert git(hub(root), "for-each-ref", "--format=%(refname) %(objectname)") == branches


# ---------------------------------------------------------------- clean

def test_clean_removes_worktrees_and_keeps_branches(repo, root):
    base = wt.head_commit(repo)
    a, _ = wt.create_worktree(repo, root, S, "a", base)
    b, _ = wt.create_worktree(repo, root, S, "b", base)
    other, _ = wt.create_worktree(repo, root, "other", "a", base)
    write(a / "a.txt", "a\n")
    head_a = wt.commit_all(a, "a")
    write(b / "dirty.txt", "left uncommitted\n")
    assert merging.merge_session(repo, root, S, ["a", "b"], base).ok

    removed, kept = wt.clean(repo, root, S)

    assert removed == sorted([a, b, root / S / "_merge"]) and kept == {}
    assert sorted(p.name for p in (root / S).iterdir()) == ["_branches.git"]  # the branches stay
    assert other.is_dir() and registered(repo) == [str(repo)]
    assert git(hub(root), "rev-parse", wt.branch_name(S, "a"), f"orchd/{S}").split() == [head_a, head_a]
    assert git(repo, "rev-parse", f"orchd/{S}") == head_a
    # what b left uncommitted is on its branch now, not thrown away
    head_b = git(hub(root), "rev-parse", wt.branch_name(S, "b"))
    assert git(hub(root), "rev-parse", f"{head_b}^") == base
    assert git(hub(root), "show", f"{head_b}:dirty.txt") == "left uncommitted"
    assert wt.clean(repo, root, S) == ([], {})


def test_clean_keeps_a_clone_whose_work_cannot_be_committed(repo, root):
    a, _ = wt.create_worktree(repo, root, S, "a", wt.head_commit(repo))
    git(a, "checkout", "-q", "--detach")
    write(a / "dirty.txt", "on no branch\n")
    removed, kept = wt.clean(repo, root, S)
    assert removed == [] and list(kept) == [str(a)] and "detached HEAD" in kept[str(a)]
    assert (a / "dirty.txt").read_text() == "on no branch\n"


# ---------------------------------------------------------------- threads

def test_worktrees_created_from_many_threads(repo, root):
    """The daemon calls from threads; concurrent ``git worktree add`` on one repo races in git."""
    base = wt.head_commit(repo)
    jobs = [(session, f"a{i}") for session in (S, "other") for i in range(12)]
    with ThreadPoolExecutor(len(jobs)) as pool:
        made = list(pool.map(lambda job: wt.create_worktree(repo, root, *job, base), jobs))
    assert [path for path, _ in made] == [root / s / a for s, a in jobs]
    assert all(git(root / s / a, "rev-parse", "--absolute-git-dir") == str(root / s / a / ".git") for s, a in jobs)
    assert registered(repo) == [str(repo)]


# ---------------------------------------------------------------- clones: the target is read-only

def test_a_relaunch_reuses_the_clone_as_the_agent_left_it(repo, root):
    path, _ = wt.create_worktree(repo, root, S, "impl", wt.head_commit(repo))
    git(path, "checkout", "-q", "--detach")
    write(path / "wip.txt", "w\n")
    assert wt.create_worktree(repo, root, S, "impl", wt.head_commit(repo))[0] == path
    assert (path / "wip.txt").read_text() == "w\n"


def test_a_clone_without_its_git_dir_is_refused_not_deleted(repo, root):
    path, _ = wt.create_worktree(repo, root, S, "impl", wt.head_commit(repo))
    write(path / "work.txt", "w\n")
    shutil.rmtree(path / ".git")
    with pytest.raises(GitError, match="not a clone made by orchd"):
        wt.create_worktree(repo, root, S, "impl", wt.head_commit(repo))
    assert wt.clean(repo, root, S) == ([], {str(path): "not a clone made by orchd (left as it is)"})
    assert (path / "work.txt").read_text() == "w\n"


def test_gc_in_a_clone_harms_neither_the_target_nor_the_branches(repo, root):
    base = wt.head_commit(repo)
    a, _ = wt.create_worktree(repo, root, S, "a", base)
    write(a / "a.txt", "a\n")
    first = wt.commit_all(a, "a")
    b, _ = wt.create_worktree(repo, root, S, "b", first)
    # the agent commits, drops the commit, and prunes everything unreachable at once
    write(b / "gone.txt", "g\n")
    git(b, "add", "gone.txt")
    git(b, "commit", "-qm", "to be dropped")
    git(b, "reset", "-q", "--hard", "HEAD~1")
    git(b, "reflog", "expire", "--expire=now", "--all")
    git(b, "gc", "--quiet", "--prune=now", "--aggressive")
    write(b / "b.txt", "b\n")
    wt.commit_all(b, "b")
    result = merging.merge_session(repo, root, S, ["a", "b"], base)
    assert result.ok and branch_files(repo, f"orchd/{S}") == {"README", "shared.txt", "a.txt", "b.txt"}
    for r in (repo, hub(root), a, b):
        assert helpers.git_run(r, "fsck", "--connectivity-only", "--no-dangling").returncode == 0, r
    # the target holds its own copy of everything orchd/<session> needs: the clones can go
    shutil.rmtree(root)
    assert helpers.git_run(repo, "fsck", "--connectivity-only").returncode == 0
    assert git(repo, "show", f"orchd/{S}:b.txt") == "b"


def test_commit_leaves_out_excluded_paths_even_when_staged(repo, root):
    path, branch = wt.create_worktree(repo, root, S, "impl", wt.head_commit(repo))
    for name in (".env", "deep/dir/.env.prod", "keys/id_rsa.pub", "node_modules/x/i.js", "a/__pycache__/m.pyc",
                 "b.pyc", ".claude/settings.local.json", "src/ok.py"):
        write(path / name, "x\n")
    git(path, "add", "-f", ".env")  # the agent staged it itself
    made = wt.commit_assignment(path, "impl")
    assert branch_files(hub(root), branch) == {"README", "shared.txt", "src/ok.py"}
    assert made.made and made.left_out == [".claude/", ".env", "a/__pycache__/", "b.pyc", "deep/dir/.env.prod",
                                      "keys/id_rsa.pub", "node_modules/"]
    # an empty list commits everything that is left
    assert wt.commit_assignment(path, "all", exclude=[]).left_out == []
    assert {".env", "node_modules/x/i.js"} <= branch_files(hub(root), branch)


def test_exclude_patterns_become_pathspecs():
    assert wt.exclude_pathspecs(["node_modules/", "*.pem", "/build/out", "", "# c"]) == [
        ":(glob)**/node_modules/**", ":(glob)**/*.pem", ":(glob)**/*.pem/**",
        ":(glob)build/out", ":(glob)build/out/**"]


def test_the_dirty_target_is_listed_without_rewriting_its_index(repo):
    (repo / "README").write_text("edited\n")
    write(repo / "new" / "x.txt", "n\n")
    os.utime(repo / "shared.txt", (1, 1))  # a stale stat cache: a plain status would rewrite the index
    index = (repo / ".git" / "index").read_bytes()
    assert wt.uncommitted(repo) == ["M README", "?? new/"]
    assert (repo / ".git" / "index").read_bytes() == index


def test_a_shallow_target_works(repo, root, tmp_path):
    (repo / "README").write_text("second\n")
    git(repo, "commit", "-qam", "second")
    shallow = tmp_path / "shallow"
    git(tmp_path, "clone", "-q", "--depth=1", f"file://{repo}", str(shallow))
    base = wt.head_commit(shallow)
    a, _ = wt.create_worktree(shallow, root, S, "a", base)
    b, _ = wt.create_worktree(shallow, root, S, "b", base)
    write(a / "a.txt", "a\n")
    write(b / "b.txt", "b\n")
    wt.commit_all(a, "a"), wt.commit_all(b, "b")
    assert merging.merge_session(shallow, root, S, ["a", "b"], base).ok
    assert {"a.txt", "b.txt"} <= branch_files(shallow, f"orchd/{S}")
    assert helpers.git_run(shallow, "fsck", "--connectivity-only").returncode == 0


def git_dir_state(repo: Path) -> dict[str, tuple[int, int, int]]:
    """Every path under the target's ``.git`` with its mode, size and mtime: a write anywhere shows."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(repo / ".git"):
        for name in dirnames + filenames:
            st = os.lstat(Path(dirpath) / name)
            out[str(Path(dirpath, name).relative_to(repo))] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out


def test_a_checkout_reads_the_targets_objects_in_place_and_writes_none(repo, root):
    """The first checkout names the target's object store as git's object directory (no failed
    lookup per blob in the clone's empty store), so it must leave that store exactly as it was:
    the clone's commits go to its own store, and a base only the hub holds still checks out."""
    (repo / "big").mkdir()
    for i in range(150):  # more than git's threshold for a parallel checkout (100 files)
        (repo / "big" / f"f{i}.txt").write_text(f"file {i}\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "more files")
    base = wt.head_commit(repo)
    before = git_dir_state(repo)
    a, _ = wt.create_worktree(repo, root, S, "a", base)
    assert (a / "big" / "f149.txt").read_text() == "file 149\n"
    assert git(a, "status", "--porcelain") == ""
    assert git_dir_state(repo) == before
    write(a / "new.txt", "the agent's\n")
    head = wt.commit_all(a, "a")  # its objects: the clone's own store, then the hub's
    assert list((a / ".git" / "objects").glob("??/*"))
    # (a commit in a clone may touch the mtime of an object the target already has: git "freshens"
    # an existing object wherever it finds it; its content is never written)
    before = git_dir_state(repo)
    b, _ = wt.create_worktree(repo, root, S, "b", head)  # a base the target does not have
    assert (b / "new.txt").read_text() == "the agent's\n"
    assert git(b, "status", "--porcelain") == ""
    assert helpers.git_run(b, "fsck", "--connectivity-only").returncode == 0
    assert git_dir_state(repo) == before
    assert helpers.git_run(repo, "cat-file", "-e", head).returncode != 0


def test_objects_in_place_only_for_an_alternates_file_it_can_carry(tmp_path):
    hub_dir = tmp_path / "hub.git"
    (hub_dir / "objects" / "info").mkdir(parents=True)
    assert wt._read_objects_in_place(hub_dir) == {}  # no alternates: git's own lookups
    store = tmp_path / "target-objects"
    store.mkdir()
    (hub_dir / "objects" / "info" / "alternates").write_text(f"{store}\n")
    assert wt._read_objects_in_place(hub_dir) == {"GIT_OBJECT_DIRECTORY": str(store),
                                                   "GIT_ALTERNATE_OBJECT_DIRECTORIES": str(hub_dir / "objects")}
    for text in ("relative/objects\n", f"{store}\n{store}\n", f"{tmp_path}/gone\n", f"{store}:x\n"):
        (hub_dir / "objects" / "info" / "alternates").write_text(text)
        assert wt._read_objects_in_place(hub_dir) == {}, text


def git_commands(trace: Path) -> list[str]:
    """The git commands a ``GIT_TRACE2_EVENT`` file saw start, as their subcommand names."""
    names = []
    for line in trace.read_text().splitlines():
        ev = json.loads(line)
        if ev.get("event") == "cmd_name":
            names.append(ev["name"])
    return names


def test_a_later_sessions_hub_and_first_clone_take_two_git_commands_and_no_init(repo, root, tmp_path, monkeypatch):
    """The empty repositories a hub and a clone's ``.git`` start from are made once per worktrees
    root (``TEMPLATES``): a later session's first clone costs one command that checks the target
    and finds its object store, and one checkout.  The copies are real repositories, alike."""
    base = wt.head_commit(repo)
    wt.create_worktree(repo, root, "s1", "a", base)
    trace = tmp_path / "trace2.json"
    monkeypatch.setenv("GIT_TRACE2_EVENT", str(trace))
    b, branch = wt.create_worktree(repo, root, "s2", "b", base)
    monkeypatch.delenv("GIT_TRACE2_EVENT")
    assert git_commands(trace) == ["rev-parse", "reset"]
    assert git(hub(root, "s2"), "rev-parse", "--is-bare-repository") == "true"
    assert (hub(root, "s2") / "config").read_bytes() == (hub(root, "s1") / "config").read_bytes()
    assert git(b, "rev-parse", "--is-bare-repository", "--abbrev-ref", "HEAD").split() == ["false", branch]
    write(b / "b.txt", "b\n")
    head = wt.commit_all(b, "b")
    assert git(hub(root, "s2"), "rev-parse", branch) == head
    assert sorted(p.name for p in (root / wt.TEMPLATES).iterdir()) == ["bare", "clone"]


def test_a_template_left_half_made_by_a_dead_process_is_made_again(repo, root):
    """A crash while a template was made leaves ``_new-<kind>-<pid>``: whoever makes it next
    deletes that one (its process is gone) and makes a whole one."""
    left = root / wt.TEMPLATES / "_new-bare-999999999"
    left.mkdir(parents=True)
    (left / "HEAD").write_text("junk\n")
    a, _ = wt.create_worktree(repo, root, S, "a", wt.head_commit(repo))
    assert not left.exists()
    assert git(hub(root), "rev-parse", "--is-bare-repository") == "true"
    assert (a / "README").read_text() == "hello\n"


def test_each_clone_gets_a_git_dir_of_its_own_without_a_git_init(repo, root):
    """New clones' ``.git`` are copies of one empty repository (``TEMPLATES``): what an agent does
    to its clone's config or hooks reaches neither that copy nor the next clone."""
    base = wt.head_commit(repo)
    a, branch_a = wt.create_worktree(repo, root, S, "a", base)
    git(a, "config", "user.name", "agent-a")
    write(a / ".git" / "hooks" / "pre-commit", "#!/bin/sh\nexit 1\n")
    b, branch_b = wt.create_worktree(repo, root, S, "b", base)
    assert git(b, "symbolic-ref", "HEAD") == f"refs/heads/{branch_b}"
    assert helpers.git_run(b, "config", "--local", "user.name").returncode == 1
    assert not (b / ".git" / "hooks" / "pre-commit").exists()
    assert (b / ".git" / "hooks").is_dir() and (b / ".git" / "info" / "exclude").is_file()  # as git init
    assert git(hub(root), "rev-parse", branch_a, branch_b).split() == [base, base]
    write(b / "b.txt", "b\n")
    head = wt.commit_all(b, "b")
    assert git(hub(root), "rev-parse", branch_b) == head


def test_a_branch_is_created_in_the_hub_only_for_a_commit_that_checked_out(repo, root):
    tree = git(repo, "rev-parse", "HEAD^{tree}")
    with pytest.raises(GitError):
        wt.create_worktree(repo, root, S, "a", tree)
    assert helpers.git_run(hub(root), "rev-parse", "--verify", f"refs/heads/{wt.branch_name(S, 'a')}").returncode != 0
    assert not (root / S / "a").exists()
    base = wt.head_commit(repo)
    lock = hub(root) / "refs" / "heads" / wt.branch_name(S, "b")
    lock = lock.with_name(lock.name + ".lock")
    write(lock, "")  # another git command holds the ref: no clone, the lock left to its owner
    with pytest.raises(GitError, match="exists"):
        wt.create_worktree(repo, root, S, "b", base)
    assert lock.exists() and not (root / S / "b").exists()
    lock.unlink()
    b, branch = wt.create_worktree(repo, root, S, "b", base)
    assert git(hub(root), "rev-parse", branch) == base


# ---------------------------------------------------------------- priority and the merge's git commands

PROBE = """import os
print(os.getpriority(os.PRIO_PROCESS, 0), os.getsid(0), os.getpgid(0))
"""


def _probe(repo: Path, tmp_path: Path, background: bool) -> tuple[int, int, int]:
    """Niceness, session and process group of a process git starts (as its checkout workers)."""
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    r = wt._run(repo, "-c", f"alias.probe=!{sys.executable} {script}", "probe", background=background)
    assert r.returncode == 0, r.stderr
    nice, sid, pgid = map(int, r.stdout.split())
    return nice, sid, pgid


def test_a_background_git_command_and_its_children_run_at_niceness_10_in_the_daemons_session(repo, tmp_path):
    mine = os.getpriority(os.PRIO_PROCESS, 0)
    nice, sid, pgid = _probe(repo, tmp_path, background=True)
    assert nice == min(19, mine + wt.CHECKOUT_NICE)  # inherited from git by the process git started
    assert sid == os.getsid(0)  # the same session: CPU time grouped with the daemon's, as measured
    assert pgid != os.getpgid(0)  # a process group of its own: killed as a whole past the deadline
    assert wt.checkout_workers() == max(1, min((os.cpu_count() or 1) - 1, 8))
    nice, sid, pgid = _probe(repo, tmp_path, background=False)
    assert (nice, sid, pgid) == (mine, os.getsid(0), os.getpgid(0))


def test_only_a_big_index_makes_a_command_background(tmp_path):
    index = tmp_path / "index"
    assert wt._big(index)  # unknown: treated as big
    index.write_bytes(b"x" * (wt.LOWER_MIN_INDEX_BYTES - 1))
    assert not wt._big(index)
    index.write_bytes(b"x" * wt.LOWER_MIN_INDEX_BYTES)
    assert wt._big(index)


def test_a_session_merge_into_a_subdirectory_or_a_bare_repository_is_refused(repo, root, tmp_path):
    base = wt.head_commit(repo)
    a, _ = wt.create_worktree(repo, root, S, "a", base)
    write(a / "a.txt", "a\n")
    wt.commit_all(a, "a")
    (repo / "sub").mkdir()
    with pytest.raises(NotARepo, match="inside the repository"):
        merging.merge_session(repo / "sub", root, S, ["a"], base)
    bare = tmp_path / "bare.git"
    git(tmp_path, "clone", "-q", "--bare", str(repo), str(bare))
    with pytest.raises(NotARepo):
        merging.merge_session(bare, root, S, ["a"], base)
    assert "orchd/" not in git(bare, "for-each-ref")


def test_a_merge_reads_packed_refs_too(repo, root):
    """The hub's and the target's refs packed (say by a ``git gc`` someone ran): the same result."""
    base = wt.head_commit(repo)
    head_a, head_b = _two_parallel(repo, root, base)
    first = merging.merge_session(repo, root, S, ["a", "b"], base)
    git(hub(root), "pack-refs", "--all")
    git(repo, "pack-refs", "--all")
    again = merging.merge_session(repo, root, S, ["a", "b"], base)
    assert first.ok and again.ok
    assert git(repo, "rev-parse", f"orchd/{S}") == again.commit
    assert git(repo, "rev-parse", f"{again.commit}^1", f"{again.commit}^2").split() == [head_a, head_b]
    assert git(hub(root), "rev-parse", f"orchd/{S}") == again.commit


def test_git_output_of_any_size_and_exit_codes_come_back_whole(repo, tmp_path):
    script = tmp_path / "big.py"
    script.write_text("import sys\nsys.stdout.write('o' * 300000)\nsys.stderr.write('e' * 100000)\nsys.exit(3)\n")
    for background in (False, True):
        r = wt._run(repo, "-c", f"alias.big=!{sys.executable} {script}", "big", background=background)
        assert (r.returncode, r.stdout, r.stderr) == (3, "o" * 300000, "e" * 100000)


def test_a_git_command_past_its_deadline_is_killed_with_what_it_started(repo, tmp_path, monkeypatch):
    monkeypatch.setattr(wt, "TIMEOUT_S", 0.5)
    started = time.monotonic()
    with pytest.raises(GitError, match="no answer after 0.5s"):
        wt._run(repo, "-c", "alias.hang=!sleep 30", "hang", background=True)
    assert time.monotonic() - started < 10  # git and its sleep killed, not waited for
