"""Frozen snapshots of an author's work for review (blocking git; run in workspace threads).

Theory of operation
-------------------
A review must read exactly what the author had when it was triggered, and
must not disturb the author.  ``take`` records the author's working
directory as a commit without touching its index, HEAD, files or git
directory:

    GIT_DIR=<store> GIT_WORK_TREE=<author> GIT_INDEX_FILE=<tmp> git read-tree HEAD
                                                (a private index, seeded from the author's HEAD)
    ... git add -A                              (the working tree as it is now)
    git write-tree; git commit-tree -p HEAD     (a commit no branch points to)
    git update-ref refs/orchd/review/<session>/<id>   (so gc keeps it)

The store is orchd's own bare repository, one per session
(``<state dir>/reviews/<session>/snapshots.git``), which reads the author's
objects in place (alternates): the commit and the files' new blobs are
written there.  The author's repository is only read.  Its config is never
used: the author is an agent, running while it is reviewed, and its
``.git/config`` could name a clean filter, a textconv or diff driver or an
include that orchd's git would run outside the agent's sandbox.

Then the commit is checked out, detached, in a clone of its own under the
state dir (objects shared through alternates, so the clone is cheap).  Each
review reads that checkout; whatever a reviewer writes there stays there.
Works the same on a git worktree or on any clone: it needs only "the author's
working directory" and where its objects are.

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

from orchd import agent_tree
from orchd import protocol as p

GIT_TIMEOUT_S = 300.0
CHECK_OUTPUT_MAX = 8000
IDENTITY = ("orchd", "orchd@localhost")
_CONFIG = (*agent_tree.CONFIG, "-c", "advice.detachedHead=false")


class SnapshotError(Exception):
    pass


def _git(cwd: Path, *args: str, index: str | None = None, store: Path | None = None) -> str:
    """git in ``cwd``; with ``store``, that repository's git directory over ``cwd`` as the work tree
    (``GIT_DIR``, ``GIT_WORK_TREE``): ``cwd``'s own git directory is not read at all."""
    env = agent_tree.plain_env()
    name, email = IDENTITY
    env.update(GIT_TERMINAL_PROMPT="0", GIT_AUTHOR_NAME=name, GIT_AUTHOR_EMAIL=email,
               GIT_COMMITTER_NAME=name, GIT_COMMITTER_EMAIL=email, LC_ALL="C")
    if index is not None:
        env["GIT_INDEX_FILE"] = index
    if store is not None:
        env = agent_tree.env(store, cwd, index, base=env)
    try:
        r = subprocess.run(["git", "-C", str(cwd), *_CONFIG, *args], capture_output=True, stdin=subprocess.DEVNULL,
                           env=env, timeout=GIT_TIMEOUT_S, encoding="utf-8", errors="surrogateescape", check=False)
    except subprocess.TimeoutExpired:
        raise SnapshotError(f"git {args[0]} in {cwd}: no answer after {GIT_TIMEOUT_S:g}s") from None
    if r.returncode != 0:
        raise SnapshotError(f"git {' '.join(args[:2])} in {cwd} exited {r.returncode}: "
                            f"{(r.stderr.strip() or r.stdout.strip())[:300]}")
    return r.stdout.rstrip("\n")


def commit_worktree(author: Path, store: Path, ref: str, message: str) -> str:
    """The author's working directory as a commit in ``store`` (parent: the author's HEAD), held by
    ``ref`` there; nothing of the author's changes, and its git directory is only read."""
    head = _git(author, "rev-parse", "--verify", "-q", "HEAD^{commit}")
    try:
        agent_tree.open_store(store, agent_tree.object_dirs(author, GIT_TIMEOUT_S), GIT_TIMEOUT_S)
    except (agent_tree.NotARepository, subprocess.SubprocessError) as exc:
        raise SnapshotError(f"cannot read {author}'s objects into {store}: {exc}") from None
    fd, index = tempfile.mkstemp(prefix="orchd-index-")
    os.close(fd)
    os.unlink(index)  # git wants to create it
    try:
        _git(author, "read-tree", head, index=index, store=store)
        nested = agent_tree.nested_repositories(_git(author, "ls-files", "--stage", "-z", index=index, store=store),
                                                author)
        _git(author, "add", "-A", "--", ".", *agent_tree.exclude_literal([path for path, _ in nested]),
             index=index, store=store)
        agent_tree.stage_nested_heads(lambda *a: _git(author, *a, index=index, store=store), author, nested,
                                      GIT_TIMEOUT_S)
        tree = _git(author, "write-tree", index=index, store=store)
        commit = _git(store, "commit-tree", tree, "-p", head, "-m", message)
        _git(store, "update-ref", ref, commit)
        return commit
    finally:
        try:
            os.unlink(index)
        except FileNotFoundError:
            pass


def checkout(store: Path, commit: str, dest: Path) -> None:
    """``commit`` checked out detached in a clone of its own at ``dest`` (objects shared, not copied)."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    _git(dest.parent, "clone", "--quiet", "--shared", "--no-checkout", str(store), str(dest))
    _git(dest, "checkout", "--quiet", "--detach", commit)


def diff_since(store: Path, base: str, commit: str, max_bytes: int) -> str:
    """The change from ``base`` to ``commit``: the full diff, or beyond ``max_bytes`` the stat and file list."""
    stat = _git(store, "diff", "--stat", base, commit)
    full = _git(store, "diff", base, commit)
    if len(full.encode()) <= max_bytes:
        return f"{stat}\n\n{full}" if full else "(no changes)"
    files = _git(store, "diff", "--name-only", base, commit)
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
         check: list[str] | None, check_deadline_s: float, skip_same: bool = True,
         store: str | None = None) -> p.SnapshotReady:
    """The whole job (in a workspace thread): snapshot, checkout, diff, check; errors are results.

    With ``skip_same``, files identical to ``last_commit``'s give ``commit=last_commit`` and no checkout.
    ``store``: the session's snapshot repository (default: ``snapshots.git`` beside ``dest``).
    """
    try:
        src = Path(author)
        repo = Path(store) if store is not None else Path(dest).parent / "snapshots.git"
        commit = commit_worktree(src, repo, f"refs/orchd/review/{session}/{review_id}",
                                 f"orchd review snapshot {review_id}")
        base = last_commit or _git(repo, "rev-parse", f"{commit}^")
        diff = diff_since(repo, base, commit, diff_max_bytes) if base != commit else "(no changes)"
        if skip_same and last_commit is not None and _git(repo, "rev-parse", f"{commit}^{{tree}}") == \
                _git(repo, "rev-parse", f"{last_commit}^{{tree}}"):
            commit = last_commit  # the same files as the commit reviewed last: nothing new to review
            return p.SnapshotReady(session=session, review_id=review_id, commit=commit, diff="(no changes)")
        out = Path(dest)
        checkout(repo, commit, out)
        check_output = run_check(check, out, check_deadline_s) if check else None
    except (SnapshotError, OSError) as exc:
        return p.SnapshotReady(session=session, review_id=review_id, error=f"snapshot: {exc}")
    return p.SnapshotReady(session=session, review_id=review_id, commit=commit, checkout=str(out), diff=diff,
                           check_output=check_output)
