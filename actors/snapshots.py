"""Frozen snapshots of an author's work for review (blocking git; run in workspace threads).

Theory of operation
-------------------
A review must read exactly what the author had when it was triggered, and
must not disturb the author.  ``take`` records the author's working
directory as a commit without touching its index, HEAD or files:

    GIT_INDEX_FILE=<tmp> git read-tree HEAD     (a private index, seeded from HEAD)
    GIT_INDEX_FILE=<tmp> git add -A             (the working tree as it is now)
    git write-tree; git commit-tree -p HEAD     (a commit no branch points to)
    git update-ref refs/orchd/review/<session>/<id>   (so gc keeps it)

and checks that commit out, detached, in a clone of its own under the state
dir (objects shared through alternates, so the clone is cheap).  Each review
reads that checkout; whatever a reviewer writes there stays there: the
author's branch, index and files are never touched.  Works the same on a
git worktree or on any clone: it needs only "the author's working directory".

The prompt's diff is the change since the last reviewed commit (or, on a
first review, since the author's HEAD), capped: beyond ``diff_max_bytes`` the
stat and the file list only (the files are in the checkout).  An optional
check command runs in the checkout with a deadline; its output (tail) goes to
the prompt.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from orchd import protocol as p

GIT_TIMEOUT_S = 300.0
CHECK_OUTPUT_MAX = 8000
IDENTITY = ("orchd", "orchd@localhost")
_CONFIG = ("-c", "core.hooksPath=/dev/null", "-c", "commit.gpgSign=false", "-c", "gc.auto=0",
           "-c", "core.fsmonitor=false", "-c", "advice.detachedHead=false")
_REPO_ENV = {"GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY", "GIT_COMMON_DIR",
             "GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_CONFIG", "GIT_CONFIG_PARAMETERS", "GIT_CONFIG_COUNT",
             "GIT_PREFIX", "GIT_NAMESPACE"}


class SnapshotError(Exception):
    pass


def _git(cwd: Path, *args: str, index: str | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if k not in _REPO_ENV}
    name, email = IDENTITY
    env.update(GIT_TERMINAL_PROMPT="0", GIT_AUTHOR_NAME=name, GIT_AUTHOR_EMAIL=email,
               GIT_COMMITTER_NAME=name, GIT_COMMITTER_EMAIL=email, LC_ALL="C")
    if index is not None:
        env["GIT_INDEX_FILE"] = index
    try:
        r = subprocess.run(["git", "-C", str(cwd), *_CONFIG, *args], capture_output=True, stdin=subprocess.DEVNULL,
                           env=env, timeout=GIT_TIMEOUT_S, encoding="utf-8", errors="surrogateescape", check=False)
    except subprocess.TimeoutExpired:
        raise SnapshotError(f"git {args[0]} in {cwd}: no answer after {GIT_TIMEOUT_S:g}s") from None
    if r.returncode != 0:
        raise SnapshotError(f"git {' '.join(args[:2])} in {cwd} exited {r.returncode}: "
                            f"{(r.stderr.strip() or r.stdout.strip())[:300]}")
    return r.stdout.rstrip("\n")


def commit_worktree(author: Path, ref: str, message: str) -> str:
    """The author's working directory as a commit (parent: its HEAD), held by ``ref``; nothing else changes."""
    fd, index = tempfile.mkstemp(prefix="orchd-index-")
    os.close(fd)
    os.unlink(index)  # git wants to create it
    try:
        head = _git(author, "rev-parse", "--verify", "-q", "HEAD^{commit}")
        _git(author, "read-tree", head, index=index)
        _git(author, "add", "-A", "--", ".", index=index)
        tree = _git(author, "write-tree", index=index)
        commit = _git(author, "commit-tree", tree, "-p", head, "-m", message)
        _git(author, "update-ref", ref, commit)
        return commit
    finally:
        try:
            os.unlink(index)
        except FileNotFoundError:
            pass


def checkout(author: Path, commit: str, dest: Path) -> None:
    """``commit`` checked out detached in a clone of its own at ``dest`` (objects shared, not copied)."""
    common = Path(_git(author, "rev-parse", "--path-format=absolute", "--git-common-dir"))
    if dest.exists():
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    _git(dest.parent, "clone", "--quiet", "--shared", "--no-checkout", str(common), str(dest))
    _git(dest, "checkout", "--quiet", "--detach", commit)


def diff_since(author: Path, base: str, commit: str, max_bytes: int) -> str:
    """The change from ``base`` to ``commit``: the full diff, or beyond ``max_bytes`` the stat and file list."""
    stat = _git(author, "diff", "--stat", base, commit)
    full = _git(author, "diff", base, commit)
    if len(full.encode()) <= max_bytes:
        return f"{stat}\n\n{full}" if full else "(no changes)"
    files = _git(author, "diff", "--name-only", base, commit)
    return (f"(the diff is {len(full.encode())} bytes, over the {max_bytes}-byte cap: the stat and the files "
            f"changed follow; read them in the current directory)\n{stat}\n\nFILES:\n{files}")


def run_check(argv: list[str], cwd: Path, deadline_s: float) -> str:
    """The check command's exit status and the tail of its output (never raises for the command's failure)."""
    try:
        r = subprocess.run(argv, cwd=cwd, capture_output=True, stdin=subprocess.DEVNULL, timeout=deadline_s,
                           encoding="utf-8", errors="replace", check=False)
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or "") if isinstance(exc.stdout, str) else ""
        return f"(the check did not finish within {deadline_s:g}s)\n{out[-CHECK_OUTPUT_MAX:]}"
    except OSError as exc:
        return f"(the check could not start: {exc})"
    out = (r.stdout + r.stderr)[-CHECK_OUTPUT_MAX:]
    return f"(exit {r.returncode})\n{out}"


def take(session: str, review_id: str, author: str, dest: str, last_commit: str | None, diff_max_bytes: int,
         check: list[str] | None, check_deadline_s: float, skip_same: bool = True) -> p.SnapshotReady:
    """The whole job (in a workspace thread): snapshot, checkout, diff, check; errors are results.

    With ``skip_same``, files identical to ``last_commit``'s give ``commit=last_commit`` and no checkout.
    """
    try:
        src = Path(author)
        commit = commit_worktree(src, f"refs/orchd/review/{session}/{review_id}",
                                 f"orchd review snapshot {review_id}")
        base = last_commit or _git(src, "rev-parse", f"{commit}^")
        diff = diff_since(src, base, commit, diff_max_bytes) if base != commit else "(no changes)"
        if skip_same and last_commit is not None and _git(src, "rev-parse", f"{commit}^{{tree}}") == \
                _git(src, "rev-parse", f"{last_commit}^{{tree}}"):
            commit = last_commit  # the same files as the commit reviewed last: nothing new to review
            return p.SnapshotReady(session=session, review_id=review_id, commit=commit, diff="(no changes)")
        out = Path(dest)
        checkout(src, commit, out)
        check_output = run_check(check, out, check_deadline_s) if check else None
    except (SnapshotError, OSError) as exc:
        return p.SnapshotReady(session=session, review_id=review_id, error=f"snapshot: {exc}")
    return p.SnapshotReady(session=session, review_id=review_id, commit=commit, checkout=str(out), diff=diff,
                           check_output=check_output)
