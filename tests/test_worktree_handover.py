"""Per-assignment cost: a chained assignment takes over its predecessor's checkout; merges need no checkout.

Real git in temp dirs.  The repository has enough files for its index to pass
``INHERIT_MIN_INDEX_BYTES`` (the size at which a take-over beats a fresh checkout).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from actors import merging, recovering, workspace
from actors import worktrees as wt
from tests import helpers

S = "s-ho"
FILES = 1200  # ~100 KB of index: above INHERIT_MIN_INDEX_BYTES


pytestmark = pytest.mark.usefixtures("no_user_git_config")  # conftest


def git(cwd: Path, *args: str) -> str:
    return helpers.git(cwd, *args).strip()


def make_repo(path: Path, files: int) -> Path:
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    for i in range(files):
        d = path / f"d{i % 20:02d}"
        d.mkdir(exist_ok=True)
        (d / f"f{i:04d}.txt").write_text(f"file {i}\n")
    (path / ".gitignore").write_text("build/\n")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "many files")
    return path


@pytest.fixture
def big(tmp_path) -> Path:
    return make_repo(tmp_path / "big", FILES)


def tree_of(path: Path) -> set[str]:
    """Every file under ``path`` but ``.git``, relative."""
    out = set()
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = [d for d in dirnames if d != ".git"]
        out |= {os.path.relpath(os.path.join(dirpath, f), path) for f in filenames}
    return out


def test_a_chained_assignment_takes_over_the_checkout_and_starts_exactly_at_its_commit(big, tmp_path):
    root = tmp_path / "wt"
    base = wt.head_commit(big)
    a, _ = wt.create_worktree(big, root, S, "a", base)
    # what the agent of a leaves: a change to commit, an ignored build dir, an excluded secret,
    # an untracked nested repository, a hook and a config entry in its own .git,
    # and a tracked file it hides from git (skip-worktree) after changing it
    (a / "d00" / "f0000.txt").write_text("changed by a\n")
    (a / "build").mkdir()
    (a / "build" / "out.o").write_text("object\n")
    (a / ".env").write_text("SECRET=1\n")
    (a / ".git" / "hooks" / "post-checkout").write_text("#!/bin/sh\ntouch /nonexistent/hooked\n")
    git(a, "config", "alias.st", "status")
    head_a = wt.commit_assignment(a, "a").commit
    git(a, "init", "-q", "nested")  # left after the commit (git add refuses an empty nested repository)
    (a / "d01" / "f0001.txt").write_text("hidden change\n")
    git(a, "update-index", "--skip-worktree", "d01/f0001.txt")
    inode = os.stat(a / "d02" / "f0002.txt").st_ino

    b, branch = wt.create_worktree(big, root, S, "b", head_a, inherit=a)

    assert not a.exists()  # taken over, not copied
    assert os.stat(b / "d02" / "f0002.txt").st_ino == inode  # the same file, not written again
    assert git(b, "rev-parse", "HEAD") == head_a and git(b, "symbolic-ref", "--short", "HEAD") == branch
    assert git(b, "status", "--porcelain", "--ignored", "--untracked-files=all") == ""
    assert tree_of(b) == set(git(b, "ls-files").splitlines())  # exactly a's commit: no build/, .env, nested/
    assert (b / "d00" / "f0000.txt").read_text() == "changed by a\n"
    assert (b / "d01" / "f0001.txt").read_text() == "file 1\n"  # the hidden change did not slip through
    assert git(b, "ls-files", "-v", "d01/f0001.txt").startswith("H ")  # no skip-worktree bit either
    assert not (b / ".git" / "hooks" / "post-checkout").exists()
    assert "alias" not in (b / ".git" / "config").read_text()
    assert sorted(p.name for p in (root / S).iterdir()) == ["_branches.git", "b"]

    # a's work is the hub's branch; asking to commit the clone that is gone answers from there
    again = wt.commit_assignment(a, "a again")
    assert (again.commit, again.made, again.branch) == (head_a, False, wt.branch_name(S, "a"))
    (b / "new.txt").write_text("b\n")
    head_b = wt.commit_all(b, "b")
    res = merging.merge_session(big, root, S, ["a", "b"], base)
    assert res.ok and res.commit == head_b  # b contains a: the result is b itself
    assert git(big, "rev-parse", f"orchd/{S}") == head_b


def past_the_second_of(path: Path, deadline_s: float = 5.0) -> None:
    """Wait until the clock is in a later second than ``path``'s modification time.  git trusts an
    index entry's stat data only for a file older than the index (by whole seconds here), and
    hashes the others ("racy" entries); the tests below are about the ones it trusts."""
    second = int(path.stat().st_mtime)
    deadline = time.monotonic() + deadline_s
    while int(time.time()) <= second:
        assert time.monotonic() < deadline, "the clock did not move on"
        time.sleep(0.01)


def refresh_scans(trace: Path) -> list[int]:
    """``refresh/sum_scan`` (files read and hashed) of each ``update-index --really-refresh`` in a
    ``GIT_TRACE2_EVENT`` file."""
    argv: dict[str, list[str]] = {}
    scans = []
    for line in trace.read_text().splitlines():
        ev = json.loads(line)
        if ev.get("event") == "start":
            argv[ev["sid"]] = ev["argv"]
        elif ev.get("key") == "refresh/sum_scan" and "--really-refresh" in argv.get(ev["sid"], []):
            scans.append(int(ev["value"]))
    return scans


def test_a_take_over_reads_only_the_files_that_changed_since_orchd_made_the_clone(big, tmp_path, monkeypatch):
    root = tmp_path / "wt"
    a, _ = wt.create_worktree(big, root, S, "a", wt.head_commit(big))
    trusted = root / S / wt.HUB_DIR / wt.TRUSTED_INDEX_DIR / "a"
    assert trusted.read_bytes() == (a / ".git" / "index").read_bytes()
    past_the_second_of(trusted)
    (a / "d00" / "f0000.txt").write_text("changed by a\n")
    head_a = wt.commit_assignment(a, "a").commit
    (a / "d01" / "f0001.txt").write_text("changed after the commit\n")
    trace = tmp_path / "trace2.json"
    monkeypatch.setenv("GIT_TRACE2_EVENT", str(trace))

    b, _ = wt.create_worktree(big, root, S, "b", head_a, inherit=a)

    monkeypatch.delenv("GIT_TRACE2_EVENT")
    assert refresh_scans(trace) == [2]  # of 1,201 files: the one a committed and the one it changed after
    assert (b / "d00" / "f0000.txt").read_text() == "changed by a\n"
    assert (b / "d01" / "f0001.txt").read_text() == "file 1\n"
    assert git(b, "status", "--porcelain", "--ignored", "--untracked-files=all") == ""
    assert not trusted.exists()  # used up; b's own is kept for the next take-over
    assert (trusted.parent / "b").read_bytes() == (b / ".git" / "index").read_bytes()


def test_a_take_over_finds_a_file_changed_with_its_size_and_modification_time_put_back(big, tmp_path):
    # and the user's git config, which would compare only those, does not change that
    (tmp_path / "empty-gitconfig").write_text("[core]\n\tcheckStat = minimal\n\ttrustctime = false\n")
    root = tmp_path / "wt"
    a, _ = wt.create_worktree(big, root, S, "a", wt.head_commit(big))
    past_the_second_of(root / S / wt.HUB_DIR / wt.TRUSTED_INDEX_DIR / "a")
    # b's index is written in a later second than every file: by whole seconds, which that
    # config compares, none of them is too recent to trust
    b, _ = wt.create_worktree(big, root, S, "b", wt.commit_assignment(a, "a").commit, inherit=a)
    head_b = wt.commit_assignment(b, "b").commit
    f = b / "d02" / "f0002.txt"
    before = f.stat()
    f.write_text("FILE 2\n")  # the same size
    os.utime(f, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (f.stat().st_size, f.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)

    c, _ = wt.create_worktree(big, root, S, "c", head_b, inherit=b)

    assert (c / "d02" / "f0002.txt").read_text() == "file 2\n"


def test_a_take_over_without_a_readable_trusted_index_compares_every_file(big, tmp_path, monkeypatch):
    root = tmp_path / "wt"
    a, _ = wt.create_worktree(big, root, S, "a", wt.head_commit(big))
    trusted = root / S / wt.HUB_DIR / wt.TRUSTED_INDEX_DIR / "a"
    trusted.write_bytes(b"DIRC garbage")
    head_a = wt.commit_assignment(a, "a").commit
    (a / "d03" / "f0003.txt").write_text("changed after the commit\n")
    trace = tmp_path / "trace2.json"
    monkeypatch.setenv("GIT_TRACE2_EVENT", str(trace))

    b, _ = wt.create_worktree(big, root, S, "b", head_a, inherit=a)

    monkeypatch.delenv("GIT_TRACE2_EVENT")
    assert refresh_scans(trace) == [FILES + 1]  # every file, .gitignore included
    assert (b / "d03" / "f0003.txt").read_text() == "file 3\n"
    assert git(b, "status", "--porcelain", "--ignored", "--untracked-files=all") == ""


def test_a_small_clone_keeps_no_trusted_index(tmp_path):
    small = make_repo(tmp_path / "small", 3)
    root = tmp_path / "wt"
    wt.create_worktree(small, root, S, "a", wt.head_commit(small))
    assert not (root / S / wt.HUB_DIR / wt.TRUSTED_INDEX_DIR / "a").exists()


def test_the_prepare_job_hands_the_checkout_on_and_a_fan_out_still_starts_from_the_commit(big, tmp_path):
    root = tmp_path / "wt"
    base = wt.head_commit(big)
    first = workspace.prepare(S, str(big), str(root), base, "a", [], [], "a", 1)
    (Path(first.cwd) / "a.txt").write_text("a\n")

    b = workspace.prepare(S, str(big), str(root), base, "b", [("a", first.cwd, "a's work")], [], "b", 1)
    c = workspace.prepare(S, str(big), str(root), base, "c", [("a", first.cwd, "a's work")], [], "c", 1)

    assert b.error is None and c.error is None
    head_a = b.commits[0].commit
    assert b.commits[0].made and not c.commits[0].made and c.commits[0].commit == head_a
    assert not Path(first.cwd).exists()
    for ready in (b, c):  # b took the checkout over, c got a fresh one: both at a's commit
        assert git(Path(ready.cwd), "rev-parse", "HEAD") == head_a
        assert (Path(ready.cwd) / "a.txt").read_text() == "a\n"


def test_a_small_repository_gets_a_fresh_clone_and_keeps_the_one_before(tmp_path):
    small = make_repo(tmp_path / "small", 3)
    root = tmp_path / "wt"
    a, _ = wt.create_worktree(small, root, S, "a", wt.head_commit(small))
    (a / "a.txt").write_text("a\n")
    head_a = wt.commit_all(a, "a")
    b, _ = wt.create_worktree(small, root, S, "b", head_a, inherit=a)
    assert a.is_dir() and (b / "a.txt").is_file() and git(b, "rev-parse", "HEAD") == head_a


def test_no_take_over_from_a_clone_that_is_not_at_the_start(big, tmp_path):
    root = tmp_path / "wt"
    base = wt.head_commit(big)
    a, _ = wt.create_worktree(big, root, S, "a", base)
    (a / "a.txt").write_text("a\n")
    wt.commit_all(a, "a")
    b, _ = wt.create_worktree(big, root, S, "b", base, inherit=a)  # b starts from base, not a's commit
    assert a.is_dir() and not (b / "a.txt").exists()


def test_merges_write_no_files_and_list_conflicts_from_merge_tree(big, tmp_path):
    root = tmp_path / "wt"
    base = wt.head_commit(big)
    a, _ = wt.create_worktree(big, root, S, "a", base)
    b, _ = wt.create_worktree(big, root, S, "b", base)
    c, _ = wt.create_worktree(big, root, S, "c", base)
    (a / "d00" / "f0000.txt").write_text("by a\n")
    (b / "d05" / "f0005.txt").write_text("by b\n")
    (c / "d00" / "f0000.txt").write_text("by c\n")
    (c / "d07" / "f0007.txt").write_text("by c\n")
    heads = {n: wt.commit_all(p, n) for n, p in (("a", a), ("b", b), ("c", c))}

    res = merging.merge_session(big, root, S, ["a", "b"], base)

    assert res.ok
    assert git(big, "rev-parse", f"{res.commit}^1", f"{res.commit}^2").split() == [heads["a"], heads["b"]]
    assert git(big, "show", f"{res.commit}:d00/f0000.txt") == "by a"
    assert git(big, "show", f"{res.commit}:d05/f0005.txt") == "by b"
    merge_dir = root / S / merging.MERGE_DIR
    assert [p.name for p in merge_dir.iterdir()] == [".git"]  # registered on the branch, nothing checked out
    assert git(merge_dir, "symbolic-ref", "--short", "HEAD") == f"orchd/{S}"

    conflict = merging.merge_session(big, root, S, ["a", "b", "c"], base)
    assert (conflict.ok, conflict.conflicts, conflict.assignment) == (False, ["d00/f0000.txt"], "c")
    assert git(big, "rev-parse", f"orchd/{S}") == res.commit  # nothing moved
    with pytest.raises(wt.MergeConflict) as caught:
        merging.merged_base(big, root, S, "d", [heads["a"], heads["c"]])
    assert caught.value.files == ["d00/f0000.txt"]


def test_a_relaunch_that_starts_fresh_is_told_the_files_the_earlier_runs_changed(tmp_path):
    small, root, base, first = small_and_a(tmp_path)
    assert first.changed == []  # not asked for: a first launch lists nothing
    clone = Path(first.cwd)
    (clone / "d00" / "f0000.txt").write_text("changed\n")        # modified, then committed
    wt.commit_all(clone, "the first run's work")
    (clone / "new.py").write_text("print(1)\n")                  # untracked
    (clone / "d01" / "f0001.txt").unlink()                       # deleted, not committed
    (clone / "build").mkdir()
    (clone / "build" / "out.o").write_text("ignored\n")          # ignored: not the agent's work
    again = workspace.prepare(S, str(small), str(root), base, "a", [], [], "a", 2, True)
    assert again.error is None and again.cwd == first.cwd
    assert again.changed == ["d00/f0000.txt", "d01/f0001.txt", "new.py"]
    line = recovering.fresh_start_files(again.changed)
    assert line == "Files it changed since the assignment started: d00/f0000.txt, d01/f0001.txt, new.py."
    assert recovering.fresh_start_files([f"f{i}" for i in range(60)]).endswith("f49 and 10 more.")


# ---------------------------------------------------------------- a small chain: commit and checkout side by side

def files_of_commit(repo: Path, commit: str) -> dict[str, str]:
    names = git(repo, "ls-tree", "-r", "--name-only", commit).splitlines()
    return {n: git(repo, "show", f"{commit}:{n}") for n in names}


def files_of_clone(clone: Path) -> dict[str, str]:
    return {n: (clone / n).read_text().rstrip("\n") for n in tree_of(clone)}


def small_and_a(tmp_path):
    """A small repository, its clones' root, its head, and the prepared clone of assignment a."""
    small = make_repo(tmp_path / "small", 3)
    root = tmp_path / "wt"
    base = wt.head_commit(small)
    return small, root, base, workspace.prepare(S, str(small), str(root), base, "a", [], [], "a", 1)


def test_a_small_chained_clone_checked_out_at_the_guess_ends_exactly_at_the_commit_made_meanwhile(tmp_path):
    small, root, base, first = small_and_a(tmp_path)
    a = Path(first.cwd)
    assert wt.guess_base(a) == base
    (a / "d00" / "f0000.txt").write_text("changed by a\n")
    (a / "d01" / "f0001.txt").unlink()
    (a / "new.txt").write_text("new\n")

    b = workspace.prepare(S, str(small), str(root), base, "b", [("a", first.cwd, "a's work")], [], "b", 1)

    assert b.error is None and b.commits[0].made
    head_a = b.commits[0].commit
    clone = Path(b.cwd)
    assert git(clone, "rev-parse", "HEAD") == head_a != base
    assert git(clone, "symbolic-ref", "--short", "HEAD") == wt.branch_name(S, "b")
    assert files_of_clone(clone) == files_of_commit(wt.hub_path(root, S), head_a)  # d01/f0001.txt gone, new.txt there
    assert git(clone, "status", "--porcelain", "--untracked-files=all", "--ignored") == ""
    assert git(wt.hub_path(root, S), "rev-parse", f"refs/heads/{wt.branch_name(S, 'b')}") == head_a
    assert sorted(p.name for p in (root / S).iterdir() if not p.name.startswith("_branches")) == ["a", "b"]
    assert a.is_dir()  # a small clone is not taken over

    again = workspace.prepare(S, str(small), str(root), base, "b", [("a", first.cwd, "a's work")], [], "b", 2)
    assert again.error is None and again.cwd == b.cwd and again.commits[0].commit == head_a  # as it is


def test_a_small_chained_clone_after_an_assignment_that_changed_nothing_starts_at_its_commit(tmp_path):
    small, root, base, first = small_and_a(tmp_path)
    b = workspace.prepare(S, str(small), str(root), base, "b", [("a", first.cwd, "a's work")], [], "b", 1)
    assert b.error is None and not b.commits[0].made and b.commits[0].commit == base
    assert git(Path(b.cwd), "rev-parse", "HEAD") == base
    assert files_of_clone(Path(b.cwd)) == files_of_commit(small, base)


def test_no_guess_from_a_clone_whose_head_the_hub_does_not_have(tmp_path):
    small, root, base, first = small_and_a(tmp_path)
    a = Path(first.cwd)
    (a / "by-agent.txt").write_text("committed by the agent\n")
    git(a, "add", "by-agent.txt")
    git(a, "-c", "user.name=agent", "-c", "user.email=a@example.invalid", "commit", "-qm", "the agent's own")
    (a / "later.txt").write_text("left uncommitted\n")
    assert wt.guess_base(a) is None  # its objects are in its own clone only

    b = workspace.prepare(S, str(small), str(root), base, "b", [("a", first.cwd, "a's work")], [], "b", 1)

    assert b.error is None
    head_a = b.commits[0].commit
    assert git(Path(b.cwd), "rev-parse", "HEAD") == head_a
    assert files_of_clone(Path(b.cwd)) == files_of_commit(wt.hub_path(root, S), head_a)
    assert {"by-agent.txt", "later.txt"} <= set(files_of_clone(Path(b.cwd)))


def test_a_guess_that_is_no_commit_falls_back_to_the_real_base(tmp_path):
    small = make_repo(tmp_path / "small", 3)
    root = tmp_path / "wt"
    base = wt.head_commit(small)
    wt.create_worktree(small, root, S, "a", base)
    asked = []

    def settle() -> str:
        asked.append(1)
        return base

    clone, _ = wt.create_worktree(small, root, S, "b", "f" * 40, settle=settle)
    assert asked == [1] and git(clone, "rev-parse", "HEAD") == base
    assert files_of_clone(clone) == files_of_commit(small, base)
    assert not (root / S / "_new-b").exists()


def test_a_commit_that_fails_while_the_next_clone_is_checked_out_fails_the_prepare_and_leaves_no_clone(tmp_path):
    small, root, base, first = small_and_a(tmp_path)
    a = Path(first.cwd)
    (a / ".git" / "index").write_bytes(b"not an index")  # a hostile agent: small, HEAD and refs as they were
    assert wt.guess_base(a) == base

    b = workspace.prepare(S, str(small), str(root), base, "b", [("a", first.cwd, "a's work")], [], "b", 1)

    assert b.error is not None and b.error.startswith("worktree: ") and b.commits == []
    assert not (root / S / "b").exists() and not (root / S / "_new-b").exists()
    assert not os.path.lexists(wt.hub_path(root, S) / "refs" / "heads" / wt.branch_name(S, "b"))


def test_no_guess_and_no_wait_when_the_agent_put_a_fifo_or_a_link_where_git_keeps_its_head(tmp_path):
    small, root, base, first = small_and_a(tmp_path)
    a = Path(first.cwd)
    ref = a / ".git" / "refs" / "heads" / wt.branch_name(S, "a")
    ref.unlink()
    os.mkfifo(ref)  # opened for reading, a FIFO would wait for a writer forever
    assert wt.guess_base(a) is None
    ref.unlink()
    ref.symlink_to(wt.hub_path(root, S) / "refs" / "heads" / wt.branch_name(S, "a"))
    assert wt.guess_base(a) is None
    ref.unlink()
    ref.write_text(base + "\n")
    assert wt.guess_base(a) == base
