"""Merging a session's branches: ``merge_session`` and ``merged_base``.

Theory of operation
-------------------
Merges happen in orchd's own space, never in the target, and without a
checkout: each is computed in the session's branch repository
(``_branches.git``, see ``actors.worktrees``) by ``git merge-tree
--write-tree`` (git >= 2.38), which writes the merged tree into the object
store and lists the conflicting paths, then ``git commit-tree`` makes the
merge commit.  No file is written outside the object store, so a merge
costs what changed, not the size of the repository::

    <root>/<session>/_branches.git  every orchd/<session>.<assignment>, and orchd/<session>
    <root>/<session>/_merge         worktree of _branches.git, branch orchd/<session>, not checked out

``merge_session`` starts at the session's base commit and merges each
assignment's branch in order: a branch already contained is skipped, one
that contains the result so far is fast-forwarded to, any other gets a
merge commit (first parent the result so far).  When one branch contains
the base and every other branch, the result is that branch (one git
command).  It is all-or-nothing for refs: ``orchd/<session>`` moves, to
exactly the result, only when every merge succeeded; ``_merge`` is then
registered on it (``--no-checkout``: ``git -C _merge checkout .`` fills
it for a look).  Then, and only then, the target gets its one write: the
target fetches ``orchd/<session>`` (the ref and the objects it needs) from
the branch repository.  A conflict leaves every branch, ``orchd/<session>``
included (in the target too), exactly where it was, no ``_merge``, and a
``MergeResult`` naming the assignment and the conflicting files.
``merged_base`` merges the commits an assignment waited for the same way
and creates no branch; a conflict raises ``MergeConflict``.  The merge
trees a conflict wrote are unreferenced objects of the branch repository
(``git gc`` there drops them).

Both may be called again after a daemon crash: a ``_merge`` (or an old
``_base-*`` scratch worktree) left by an earlier attempt is replaced.  Both
take the repository's turn (``_exclusive``) and run git through the
plumbing of ``actors.worktrees``.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from actors.worktrees import (
    GitError,
    MergeConflict,
    _check_assignment,
    _commit,
    _create_ref,
    _exclusive,
    _fail,
    _full_hash,
    _git,
    _loose_ref,
    _run,
    _session_dir,
    _target_worktrees,
    _toplevel,
    _worktree_at,
    _Worktree,
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
    if not path.exists() and not (repo / "worktrees").is_dir():
        return  # the hub (bare, ours) has no worktree registered and nothing is there: no git command
    wt = _worktree_at(repo, path)
    if wt is not None:
        _git(repo, "worktree", "remove", "--force", "--force", str(wt.path))
    elif path.is_dir():  # an older version's _base-* or _merge whose registration is gone
        shutil.rmtree(path)


def _refuse_checked_out(wts: list[_Worktree], branch: str) -> None:
    for wt in wts:
        if wt.branch == branch:
            raise GitError(f"{branch} is checked out at {wt.path}; orchd will not move it")


def _is_ancestor(repo: Path, older: str, newer: str) -> bool:
    r = _run(repo, "merge-base", "--is-ancestor", older, newer)
    if r.returncode not in (0, 1):
        raise _fail(repo, ("merge-base", "--is-ancestor", older, newer), r)
    return r.returncode == 0


def _tip(repo: Path, commits: list[str]) -> str | None:
    """The one commit of ``commits`` that contains all the others, if there is one (one git command)."""
    distinct = list(dict.fromkeys(commits))
    if len(distinct) == 1:
        return distinct[0]
    out = _git(repo, "merge-base", "--independent", *distinct).split()
    return out[0] if len(out) == 1 else None


def _merge(repo: Path, head: str, commit: str, message: str) -> str:
    """``commit`` merged into ``head``, computed in ``repo`` without a checkout; the resulting commit.

    Already contained: ``head``; ``head`` contained in ``commit``: ``commit``
    (a fast-forward); else a new merge commit of the merged tree.  Raises
    ``MergeConflict`` listing the conflicting paths (nothing is moved).
    """
    if _is_ancestor(repo, commit, head):
        return head
    if _is_ancestor(repo, head, commit):
        return commit
    args = ("merge-tree", "--write-tree", "--name-only", "--no-messages", "-z", head, commit)
    r = _run(repo, *args)
    fields = r.stdout.split("\0")
    tree = fields[0]
    if r.returncode not in (0, 1) or not re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", tree):
        raise _fail(repo, args, r)
    if r.returncode == 1:
        files = sorted({f for f in fields[1:] if f})
        if not files:
            raise _fail(repo, args, r)
        raise MergeConflict(files)
    return _git(repo, "commit-tree", tree, "-p", head, "-p", commit, "-m", message)


def _merge_all(repo: Path, start: str, heads: list[tuple[str, str]], message) -> str:
    """``start`` with each ``(name, commit)`` merged in order; ``MergeConflict`` gets ``.assignment``."""
    tip = _tip(repo, [start, *(sha for _, sha in heads)])
    if tip is not None:
        return tip
    current = start
    for name, sha in heads:
        try:
            current = _merge(repo, current, sha, message(name, sha))
        except MergeConflict as e:
            e.assignment = name
            raise
    return current


# ---------------------------------------------------------------- public API

def merged_base(target: Path, root: Path, session: str, label: str, commits: list[str]) -> str:
    """A commit that merges ``commits``, to start an assignment that waited for them.

    One distinct commit is returned as is; if one commit contains the others
    the result is that commit (a fast-forward), not a new commit.  Computed
    in the branch repository without a checkout, so no branch and no
    worktree is created.  Raises ``MergeConflict`` on a conflict.
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
        _discard(hub, _session_dir(root, session) / f"_base-{label}")  # an older version's, left by a crash
        return _merge_all(hub, shas[0], [(sha, sha) for sha in shas[1:]],
                          lambda _, sha: f"orchd: base of {label}: merge {sha[:12]}")


def merge_session(target: Path, root: Path, session: str, assignments: list[str],
                  base: str) -> MergeResult:
    """Set ``orchd/<session>`` to ``base`` plus each assignment's branch, merged in order.

    Registers ``<root>/<session>/_merge`` on the session branch (not checked
    out) when it succeeds.  On a conflict every branch, ``orchd/<session>``
    included, is left where it was and there is no ``_merge``.  Raises
    ``GitError`` if the session branch is checked out elsewhere (e.g. in the
    user's own checkout).
    """
    top, wts = _target_worktrees(target)  # and which branches the user has checked out there
    with _exclusive(top):
        branch = session_branch(session)
        hub = ensure_hub(top, root, session)
        # a full hash is checked by the merge itself (merge-base fails on anything but a commit)
        start = base if _full_hash(base) else _commit(hub, base)
        heads = _branch_heads(hub, session, assignments)
        path = _session_dir(root, session) / MERGE_DIR
        _discard(hub, path)  # the previous attempt's, on the session branch or detached
        try:
            head = _merge_all(hub, start, heads,
                              lambda name, _: f"Merge branch '{branch_name(session, name)}' into {branch}")
        except MergeConflict as e:
            return MergeResult(ok=False, commit=None, conflicts=e.files, branch=branch,
                               assignment=getattr(e, "assignment", None))
        # Only now does any session branch move: to exactly this commit.
        # ``fetch`` refuses to move a branch checked out in the target's own
        # checkout, not one in its linked worktrees, hence the check first.
        _refuse_checked_out(wts, branch)
        _create_ref(hub, branch, head, replace=True)  # the hub is orchd's: a loose ref, no git process
        path.parent.mkdir(parents=True, exist_ok=True)
        _git(hub, "worktree", "add", "--quiet", "--no-checkout", str(path), branch)
        try:
            _land(top, wts, hub, branch, head)
        except BaseException:
            _discard(hub, path)
            raise
        return MergeResult(ok=True, commit=head, conflicts=[], branch=branch)


def _branch_heads(hub: Path, session: str, assignments: list[str]) -> list[tuple[str, str]]:
    """Each assignment's branch head in the hub, in order.

    Read as files: the hub is orchd's, and orchd writes its refs loose and
    never packs them.  One git command for all where that does not hold
    (a ``packed-refs`` file, a ref that is not a plain hash).
    """
    names = {branch_name(session, a): a for a in assignments}
    if not (hub / "packed-refs").exists():
        loose = {b: _loose_ref(hub, b) for b in names}
        if all(sha is not None and _full_hash(sha) for sha in loose.values()):
            return [(a, loose[b]) for b, a in names.items()]
    out = _git(hub, "for-each-ref", "--format=%(objectname) %(refname:lstrip=2)",
               f"refs/heads/{session_branch(session)}.*")
    found = {ref: sha for sha, _, ref in (line.partition(" ") for line in out.splitlines())}
    for b in names:
        if b not in found:
            raise GitError(f"there is no branch {b} in {hub}")
    return [(a, found[b]) for b, a in names.items()]


def _land(top: Path, wts: list[_Worktree], hub: Path, branch: str, head: str) -> None:
    """The one write into the target: ``refs/heads/<branch>`` at ``head``, and the objects it needs.

    Run in the target as a fetch from the branch repository: the target
    copies what it lacks into its own object store (it never borrows from
    orchd's), no ``FETCH_HEAD``, no tags, no submodules, no gc.
    """
    _git(top, "-c", "fetch.writeCommitGraph=false", "-c", "fetch.prune=false", "-c", "fetch.pruneTags=false",
         "fetch", "--quiet", "--no-tags", "--no-write-fetch-head", "--no-recurse-submodules", "--no-auto-gc",
         str(hub), f"+refs/heads/{branch}:refs/heads/{branch}")
    landed = _landed(top, wts, branch)
    if landed != head:
        raise GitError(f"{branch} in {top} is at {landed[:12]} after the merge, not at {head[:12]}")



def _landed(top: Path, wts: list[_Worktree], branch: str) -> str:
    """``branch`` of the target after the fetch: its loose ref file, which a fetch writes, in the
    repository's own ``.git`` directory; ``git rev-parse`` where that is not where it is."""
    main = wts[0] if wts else None
    if main is not None and not main.bare and (main.path / ".git").is_dir():
        sha = _loose_ref(main.path / ".git", branch)
        if sha is not None and _full_hash(sha):
            return sha
    return _branch_head(top, branch)
