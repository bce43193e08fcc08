"""Git worktrees for assignments, and the git plumbing the merge shares.

Theory of operation
-------------------
Every assignment works in its own linked worktree of the target repository,
on its own branch, so agents never see each other's half-done edits and the
user's checkout is never touched::

    <root>/<session>/<assignment>   branch orchd/<session>.<assignment>
    <root>/<session>/_merge         branch orchd/<session>   (the result)
    <root>/<session>/_base-<label>  detached, only while merged_base runs

This module creates the assignment worktrees, commits what an agent left
and cleans a session up; merging the branches (``_merge``, ``_base-*``) is
``actors.merging``, built on the plumbing here: running git, name checks,
the worktree list and the per-repository lock.

Assignment branches are ``orchd/<session>.<assignment>``, not
``orchd/<session>/<assignment>``: git stores refs as paths, so a branch
``orchd/s`` and a branch ``orchd/s/a`` cannot both exist.  Session names
may not contain a dot, so the two namespaces never collide.

Everything here is synchronous and runs the real ``git`` with a fixed
identity and a few settings overridden (see ``_CONFIG``) so that the user's
hooks, signing setup or merge preferences cannot stall or change what the
daemon does.  Commands that write (merges, commits, checkouts) run with
``-C <worktree>``; commands run in the target only create or remove refs and
worktree registrations, never its index, HEAD or working tree.

Every function may be called again after a daemon crash: stale worktrees
left by an earlier attempt are reused (assignments) or replaced (``_merge``,
``_base-*``).
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

TIMEOUT_S = 300.0
"""Per git command.  Generous: a checkout of a large repository is slow."""

IDENTITY = ("orchd", "orchd@localhost")

# Overrides for the user's (or the repository's) configuration.  The hooks
# belong to the user's workflow, not to agent output, and may prompt, be slow
# or reject; signing may ask for a passphrase; auto-gc and fsmonitor would
# leave background processes behind; rerere would resolve conflicts
# differently on different machines.
_CONFIG = (
    "-c", "core.hooksPath=/dev/null",
    "-c", "commit.gpgSign=false",
    "-c", "gc.auto=0",
    "-c", "maintenance.auto=false",
    "-c", "core.fsmonitor=false",
    "-c", "rerere.enabled=false",
    "-c", "advice.detachedHead=false",
)

# What ``git rev-parse --local-env-vars`` prints: inherited, these would
# point our commands at some other repository (e.g. when the daemon was
# started from a git hook).
_REPO_ENV = frozenset({
    "GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_CONFIG", "GIT_CONFIG_PARAMETERS",
    "GIT_CONFIG_COUNT", "GIT_OBJECT_DIRECTORY", "GIT_DIR", "GIT_WORK_TREE",
    "GIT_IMPLICIT_WORK_TREE", "GIT_GRAFT_FILE", "GIT_INDEX_FILE",
    "GIT_NO_REPLACE_OBJECTS", "GIT_REPLACE_REF_BASE", "GIT_PREFIX",
    "GIT_INTERNAL_SUPER_PREFIX", "GIT_SHALLOW_FILE", "GIT_COMMON_DIR",
})

# A session name becomes one ref component that must not contain the "."
# separating it from an assignment.  An assignment name becomes one ref
# component and one path component: git's rules for a ref component, no
# slash or backslash, and no leading "_" (``_merge`` and ``_base-*`` are ours).
_SESSION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,99}")
_NOT_IN_NAME = frozenset(" ~^:?*[\\/\x7f") | {chr(c) for c in range(32)}


class GitError(Exception):
    """A git command failed; ``message`` carries git's stderr."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotARepo(GitError):
    """The target is missing, not the top of a git work tree, or has no commits."""


class BadName(GitError, ValueError):
    """A session or assignment name that cannot be a branch or directory name.

    A ``GitError`` too, so that a caller handling git failures around a
    call also handles this one instead of crashing.
    """


class MergeConflict(GitError):
    """A merge stopped on conflicts (already aborted); ``files`` lists them."""

    def __init__(self, files: list[str]) -> None:
        super().__init__("merge conflict in " + ", ".join(files))
        self.files = files


# ---------------------------------------------------------------- names

def session_branch(session: str) -> str:
    return f"orchd/{_check_session(session)}"


def branch_name(session: str, assignment: str) -> str:
    return f"orchd/{_check_session(session)}.{_check_assignment(assignment)}"


def _check_session(session: str) -> str:
    if not _SESSION_RE.fullmatch(session):
        raise BadName(f"bad session name {session!r}: ASCII letters, digits, '-' and '_' only")
    return session


def _check_assignment(name: str) -> str:
    if (why := assignment_name_problem(name)) is not None:
        raise BadName(f"bad assignment name {name[:MAX_NAME_BYTES]!r}: {why}")
    return name


MAX_NAME_BYTES = 200  # a ref component and a directory name (NAME_MAX 255 with the session's prefix)


def assignment_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be an assignment's branch part and directory name; None if it can.

    The one rule for both the submit check (``actors.plans``) and the
    launch, so a name accepted at submit is never refused at launch.
    """
    if not name:
        return "it is empty"
    try:
        size = len(name.encode())
    except UnicodeEncodeError:
        return "it is not valid Unicode text (a lone surrogate)"
    if size > MAX_NAME_BYTES:
        return f"it is {size} bytes long; at most {MAX_NAME_BYTES} are allowed"
    if name.startswith((".", "-", "_")):
        return f"it starts with {name[0]!r}"
    if bad := next((c for c in name if c in _NOT_IN_NAME), None):
        return f"it holds {bad!r}, which a branch or directory name cannot"
    for part in ("..", "@{"):
        if part in name:
            return f"git branch names cannot hold {part!r}"
    if name == "@":
        return "git branch names cannot be '@'"
    if name.endswith((".", ".lock")):
        return f"git branch names cannot end with {'.lock' if name.endswith('.lock') else '.'!r}"
    return None


# ---------------------------------------------------------------- running git

def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _REPO_ENV}
    name, email = IDENTITY
    env.update(
        GIT_TERMINAL_PROMPT="0",
        GIT_AUTHOR_NAME=name, GIT_AUTHOR_EMAIL=email,
        GIT_COMMITTER_NAME=name, GIT_COMMITTER_EMAIL=email,
        GIT_MERGE_AUTOEDIT="no",
        LC_ALL="C",  # stable messages: NotARepo is told apart by git's wording
    )
    return env


def _run(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    argv = ["git", "-C", str(cwd), *_CONFIG, *args]
    try:
        return subprocess.run(
            argv, check=False, capture_output=True, stdin=subprocess.DEVNULL,
            env=_env(), timeout=TIMEOUT_S, encoding="utf-8", errors="surrogateescape",
        )
    except subprocess.TimeoutExpired as e:
        raise GitError(f"git {' '.join(args)} in {cwd}: no answer after {TIMEOUT_S:g}s") from e


def _fail(cwd: Path, args: tuple[str, ...], r: subprocess.CompletedProcess[str]) -> GitError:
    detail = (r.stderr.strip() or r.stdout.strip() or "no output")
    return GitError(f"git {' '.join(args)} in {cwd} exited {r.returncode}: {detail}")


def _git(cwd: Path, *args: str) -> str:
    """Run git, return stdout without the trailing newline, raise on failure."""
    r = _run(cwd, *args)
    if r.returncode != 0:
        raise _fail(cwd, args, r)
    return r.stdout.rstrip("\n")


# ---------------------------------------------------------------- one at a time

# git is not safe against itself here: ``worktree add`` reads every other
# worktree's admin directory, and fails ("failed to read .../commondir") when
# another ``worktree add`` has created its directory but not yet filled it.
# The daemon calls these functions from threads, so worktree changes to one
# repository take turns.  (The agents' own git commands can still race ours.)
_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


@contextmanager
def _exclusive(top: Path) -> Iterator[None]:
    key = os.path.realpath(top)
    with _locks_guard:
        lock = _locks.setdefault(key, threading.Lock())
    with lock:
        yield


# ---------------------------------------------------------------- repository

def _toplevel(target: Path) -> Path:
    """The target as an absolute path, checked to be the top of a work tree.

    A subdirectory of some repository is refused on purpose: worktrees and
    merges would cover the whole enclosing repository, which is rarely what
    the user meant when naming a directory that is not a repository itself.
    """
    target = Path(os.path.abspath(target))
    if not target.is_dir():
        raise NotARepo(f"{target} is not a git repository (no such directory)")
    r = _run(target, "rev-parse", "--is-inside-work-tree")
    if r.returncode != 0:
        if "not a git repository" in r.stderr:
            raise NotARepo(f"{target} is not a git repository")
        raise _fail(target, ("rev-parse",), r)
    if r.stdout.strip() != "true":
        raise NotARepo(f"{target} is not a git repository (not a work tree)")
    top = _git(target, "rev-parse", "--show-toplevel")
    if os.path.realpath(top) != os.path.realpath(target):
        raise NotARepo(f"{target} is not a git repository (it is inside the repository {top})")
    return target


def head_commit(target: Path) -> str:
    """The target repository's HEAD commit."""
    top = _toplevel(target)
    r = _run(top, "rev-parse", "--verify", "--quiet", "HEAD^{commit}")
    if r.returncode != 0:
        raise NotARepo(f"{top} has no commits yet")
    return r.stdout.strip()


def _commit(repo: Path, rev: str) -> str:
    if rev.startswith("-"):  # git would read it as an option
        raise GitError(f"{rev!r} is not a commit in {repo}")
    r = _run(repo, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    if r.returncode != 0:
        raise GitError(f"{rev!r} is not a commit in {repo}")
    return r.stdout.strip()


def _branch_exists(repo: Path, branch: str) -> bool:
    return _run(repo, "show-ref", "--verify", "--quiet", f"refs/heads/{branch}").returncode == 0


# ---------------------------------------------------------------- worktree list

@dataclass(frozen=True)
class _Worktree:
    path: Path
    branch: str | None   # short name; None when detached
    locked: str | None   # the lock reason ("" when none given); None when unlocked
    prunable: bool       # registered, but its directory is gone


def _worktrees(repo: Path) -> list[_Worktree]:
    """Registered worktrees, the main one first.  Paths with newlines are not supported."""
    out: list[_Worktree] = []
    for block in _git(repo, "worktree", "list", "--porcelain").split("\n\n"):
        path, branch, locked, prunable = None, None, None, False
        for line in block.splitlines():
            key, _, value = line.partition(" ")
            if key == "worktree":
                path = Path(value)
            elif key == "branch":
                branch = value.removeprefix("refs/heads/")
            elif key == "locked":
                locked = value
            elif key == "prunable":
                prunable = True
        if path is not None:
            out.append(_Worktree(path, branch, locked, prunable))
    return out


def _worktree_at(repo: Path, path: Path) -> _Worktree | None:
    want = os.path.realpath(path)
    for wt in _worktrees(repo)[1:]:
        if os.path.realpath(wt.path) == want:
            return wt
    return None


def _remove(repo: Path, wt: _Worktree) -> None:
    # git itself locks a worktree as "initializing" while adding it; a daemon
    # killed at that moment leaves the lock, which must not block clean-up.
    # A lock the user set stays respected (single --force refuses it).
    force = ["--force", "--force"] if wt.locked == "initializing" else ["--force"]
    _git(repo, "worktree", "remove", *force, str(wt.path))


def _session_dir(root: Path, session: str) -> Path:
    return Path(os.path.abspath(root)) / _check_session(session)


# ---------------------------------------------------------------- public API

def create_worktree(target: Path, root: Path, session: str, assignment: str,
                    base: str) -> tuple[Path, str]:
    """Create ``<root>/<session>/<assignment>`` on a new branch at ``base``.

    Idempotent: a worktree already there for the branch is returned as is,
    and a branch that exists without a worktree (after ``clean`` or a crash)
    gets one again *without* being moved to ``base``, so an agent's earlier
    commits are never thrown away.
    """
    top = _toplevel(target)
    with _exclusive(top):
        branch = branch_name(session, assignment)
        path = _session_dir(root, session) / assignment
        wt = _worktree_at(top, path)
        if wt is not None:
            if wt.prunable or wt.locked == "initializing":
                _remove(top, wt)
            elif wt.branch == branch:
                return path, branch
            else:
                holder = wt.branch or "a detached HEAD"
                raise GitError(f"{path} is a worktree of {holder}, not of {branch}")
        path.parent.mkdir(parents=True, exist_ok=True)
        if _branch_exists(top, branch):
            _git(top, "worktree", "add", str(path), branch)
        else:
            _git(top, "worktree", "add", "-b", branch, str(path), _commit(top, base))
        return path, branch


def commit_all(worktree: Path, message: str) -> str:
    """Commit everything the agent left in ``worktree``; return the branch's head.

    Nothing changed means no commit.  Refuses (``GitError``) a detached HEAD
    or, in a worktree made by ``create_worktree``, any branch but its own:
    the merge would silently leave that work out.  Refuses unresolved
    conflicts (``MergeConflict``), which ``add -A`` would commit as markers.
    """
    wt = Path(os.path.abspath(worktree))
    r = _run(wt, "symbolic-ref", "--quiet", "HEAD")
    if r.returncode != 0:
        raise GitError(f"{wt} has a detached HEAD: its work would be on no branch")
    on = r.stdout.strip().removeprefix("refs/heads/")
    try:
        own = branch_name(wt.parent.name, wt.name)  # the <root>/<session>/<assignment> layout
    except BadName:
        own = on
    if on != own and _branch_exists(wt, own):  # else not one of ours: any branch will do
        raise GitError(f"{wt} is on branch {on}, not on {own}: the agent switched branches")
    raw = _git(wt, "diff", "--name-only", "--diff-filter=U", "-z")
    unmerged = sorted({f for f in raw.split("\0") if f})
    if unmerged:
        raise MergeConflict(unmerged)
    _git(wt, "add", "--all")
    r = _run(wt, "diff", "--cached", "--quiet")
    if r.returncode == 1:
        _git(wt, "commit", "--quiet", "--no-verify", "-m", message)
    elif r.returncode != 0:
        raise _fail(wt, ("diff", "--cached", "--quiet"), r)
    return _git(wt, "rev-parse", "--verify", "HEAD^{commit}")


def clean(target: Path, root: Path, session: str) -> list[Path]:
    """Remove the session's worktrees, keep its branches; return the removed paths.

    Only worktrees registered under ``<root>/<session>`` are touched (no
    global ``git worktree prune``: that would also forget the user's own
    worktrees that happen to be unreachable, e.g. on an unmounted disk).
    """
    top = _toplevel(target)
    with _exclusive(top):
        sdir = _session_dir(root, session)
        real = Path(os.path.realpath(sdir))
        removed: list[Path] = []
        for wt in _worktrees(top)[1:]:
            rel = Path(os.path.realpath(wt.path))
            if real in rel.parents:
                _remove(top, wt)
                removed.append(sdir / rel.relative_to(real))
        if sdir.is_dir() and not any(sdir.iterdir()):
            sdir.rmdir()
        return sorted(removed)
