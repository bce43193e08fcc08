"""Merging a session's branches: ``merge_session`` and ``merged_base``.

Theory of operation
-------------------
Merges happen in orchd's own space, never in the target: each runs in a
scratch worktree of the session's branch repository (``_branches.git``,
see ``actors.worktrees``), on a detached HEAD::

    <root>/<session>/_branches.git  every orchd/<session>.<assignment>, and orchd/<session>
    <root>/<session>/_merge         worktree of _branches.git, branch orchd/<session> (the result)
    <root>/<session>/_base-<label>  detached, only while merged_base runs

``merge_session`` starts ``_merge`` at the session's base commit and merges
each assignment's branch in order (fast-forward when possible).  It is
all-or-nothing for refs: ``orchd/<session>`` moves, to exactly that HEAD,
only when every merge succeeded, and ``_merge`` is then left on it.  Then,
and only then, the target gets its one write: the target fetches
``orchd/<session>`` (the ref and the objects it needs) from the branch
repository.  A conflict aborts the merge and removes ``_merge``; what it
leaves behind is every branch, ``orchd/<session>`` included (in the target
too), exactly where it was, and a ``MergeResult`` naming the assignment and
the conflicting files.  ``merged_base`` merges the commits an assignment
waited for in ``_base-<label>`` and removes that worktree whether or not it
succeeds, so it creates no branch; a conflict raises ``MergeConflict``.

Both may be called again after a daemon crash: a ``_merge`` or ``_base-*``
left by an earlier attempt is replaced.  Both take the repository's turn
(``_exclusive``) and run git through the plumbing of ``actors.worktrees``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from actors.worktrees import (
    GitError,
    MergeConflict,
    _check_assignment,
    _commit,
    _exclusive,
    _fail,
    _git,
    _run,
    _session_dir,
    _toplevel,
    _worktree_at,
    _worktrees,
    branch_name,
    ensure_hub,
    session_branch,
)

MERGE_DIR = "_merge"


@dataclass(frozen=True, kw_only=True)
class MergeResult:
    """What ``merge_session`` did.  ``assignment`` names the one that conflicted."""

    ok: bool
    commit: str | None
    conflicts: list[str] = field(default_factory=list)
    branch: str
    assignment: str | None = None


# ---------------------------------------------------------------- helpers

def _branch_head(repo: Path, branch: str) -> str:
    r = _run(repo, "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}^{{commit}}")
    if r.returncode != 0:
        raise GitError(f"there is no branch {branch} in {repo}")
    return r.stdout.strip()


def _discard(repo: Path, path: Path) -> None:
    """Remove our scratch worktree at ``path`` if registered (ours: -f -f)."""
    wt = _worktree_at(repo, path)
    if wt is not None:
        _git(repo, "worktree", "remove", "--force", "--force", str(wt.path))


def _refuse_checked_out(repo: Path, branch: str) -> None:
    for wt in _worktrees(repo):
        if wt.branch == branch:
            raise GitError(f"{branch} is checked out at {wt.path}; orchd will not move it")


def _merge(worktree: Path, commit: str, message: str) -> None:
    """Merge ``commit`` into HEAD (fast-forward when possible).

    Raises ``MergeConflict`` after aborting, so the worktree is clean again.
    """
    args = ("merge", "--ff", "--no-edit", "--no-verify-signatures", "-m", message, commit)
    r = _run(worktree, *args)
    if r.returncode == 0:
        return
    raw = _git(worktree, "diff", "--name-only", "--diff-filter=U", "-z")
    files = sorted({f for f in raw.split("\0") if f})
    if not files:
        raise _fail(worktree, args, r)
    _git(worktree, "merge", "--abort")
    raise MergeConflict(files)


# ---------------------------------------------------------------- public API

def merged_base(target: Path, root: Path, session: str, label: str, commits: list[str]) -> str:
    """A commit that merges ``commits``, to start an assignment that waited for them.

    One distinct commit is returned as is; if one commit contains another
    the result is a fast-forward, not a new commit.  The merging happens in
    a detached scratch worktree ``_base-<label>`` that is removed afterwards,
    so no branch is created.  Raises ``MergeConflict`` on a conflict.
    """
    top = _toplevel(target)
    with _exclusive(top):
        _check_assignment(label)
        hub = ensure_hub(top, root, session)
        shas = list(dict.fromkeys(_commit(hub, c) for c in commits))
        if not shas:
            raise ValueError("merged_base needs at least one commit")
        if len(shas) == 1:
            return shas[0]
        path = _session_dir(root, session) / f"_base-{label}"
        _discard(hub, path)  # left behind by a daemon that died mid-merge
        path.parent.mkdir(parents=True, exist_ok=True)
        _git(hub, "worktree", "add", "--detach", str(path), shas[0])
        try:
            for sha in shas[1:]:
                _merge(path, sha, f"orchd: base of {label}: merge {sha[:12]}")
            return _git(path, "rev-parse", "HEAD")
        finally:
            _discard(hub, path)


def merge_session(target: Path, root: Path, session: str, assignments: list[str],
                  base: str) -> MergeResult:
    """Set ``orchd/<session>`` to ``base`` plus each assignment's branch, merged in order.

    Works in ``<root>/<session>/_merge`` and leaves that worktree on the
    session branch when it succeeds.  On a conflict the merge is aborted,
    the scratch worktree removed and every branch, ``orchd/<session>``
    included, is left where it was.  Raises ``GitError`` if the session
    branch is checked out elsewhere (e.g. in the user's own checkout).
    """
    top = _toplevel(target)
    with _exclusive(top):
        branch = session_branch(session)
        hub = ensure_hub(top, root, session)
        start = _commit(hub, base)
        heads = [(a, _branch_head(hub, branch_name(session, a))) for a in assignments]
        path = _session_dir(root, session) / MERGE_DIR
        _discard(hub, path)  # the previous attempt's, on the session branch or detached
        _refuse_checked_out(top, branch)
        path.parent.mkdir(parents=True, exist_ok=True)
        _git(hub, "worktree", "add", "--detach", str(path), start)
        try:
            for name, sha in heads:
                try:
                    _merge(path, sha, f"Merge branch '{branch_name(session, name)}' into {branch}")
                except MergeConflict as e:
                    _discard(hub, path)
                    return MergeResult(ok=False, commit=None, conflicts=e.files, branch=branch,
                                       assignment=name)
            _git(path, "checkout", "--quiet", "-B", branch)
            head = _git(path, "rev-parse", "HEAD")
            # Only now does the target's session branch move: to exactly this
            # HEAD.  ``fetch`` refuses to move a branch checked out in the
            # target's own checkout, not one in its linked worktrees, hence
            # the check just before.
            _refuse_checked_out(top, branch)
            _land(top, hub, branch, head)
        except BaseException:
            _discard(hub, path)
            raise
        return MergeResult(ok=True, commit=head, conflicts=[], branch=branch)


def _land(top: Path, hub: Path, branch: str, head: str) -> None:
    """The one write into the target: ``refs/heads/<branch>`` at ``head``, and the objects it needs.

    Run in the target as a fetch from the branch repository: the target
    copies what it lacks into its own object store (it never borrows from
    orchd's), no ``FETCH_HEAD``, no tags, no submodules, no gc.
    """
    _git(top, "-c", "fetch.writeCommitGraph=false", "-c", "fetch.prune=false", "-c", "fetch.pruneTags=false",
         "fetch", "--quiet", "--no-tags", "--no-write-fetch-head", "--no-recurse-submodules", "--no-auto-gc",
         str(hub), f"+refs/heads/{branch}:refs/heads/{branch}")
    landed = _branch_head(top, branch)
    if landed != head:
        raise GitError(f"{branch} in {top} is at {landed[:12]} after the merge, not at {head[:12]}")

