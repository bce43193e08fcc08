"""orchd's clones for assignments, the session's branch repository, and the git plumbing the merge shares.

Theory of operation
-------------------
The target is read-only to agents.  Every assignment works in a clone of
its own, owned by orchd, on its own branch, so agents never see each
other's half-done edits, and nothing an agent does to git (refs, tags,
config, hooks, gc) reaches the target or another assignment::

    <root>/<session>/_branches.git  bare, orchd's: alternates -> the target's objects;
                                    holds every orchd/<session>.<assignment> and orchd/<session>
    <root>/<session>/<assignment>   a clone: its own .git, alternates -> _branches.git's objects;
                                    branch orchd/<session>.<assignment>
    <root>/<session>/_merge         worktree of _branches.git on orchd/<session> (the result), not checked out

Objects flow one way at a time and only by orchd's hand: a clone borrows
(never writes) the branch repository's objects, which borrows the target's;
``commit_assignment`` commits what the agent left and fetches the branch
from the clone into ``_branches.git`` (so a clone can go, even be broken by
its agent, without losing a commit orchd has taken); ``actors.merging``
merges there and then has the *target* fetch ``orchd/<session>`` from
``_branches.git``: the one write into the target, which copies what it
needs into its own object store.  The target never gets a worktree
registration, and its index, HEAD, config and other refs are never written.

This module makes the branch repository and the clones, commits what an
agent left (minus ``commit_exclude``) and cleans a session up; merging the
branches (in ``_branches.git``, without a checkout) is ``actors.merging``, built on the
plumbing here: running git, name checks, the worktree list and the
per-repository lock.

Assignment branches are ``orchd/<session>.<assignment>``, not
``orchd/<session>/<assignment>``: git stores refs as paths, so a branch
``orchd/s`` and a branch ``orchd/s/a`` cannot both exist.  Session names
may not contain a dot, so the two namespaces never collide.

Everything here is synchronous and runs the real ``git`` with a fixed
identity and a few settings overridden (see ``_CONFIG``) so that the user's
hooks, signing setup or merge preferences cannot stall or change what the
daemon does.  orchd's own git commands in a clone (``add``, ``commit``)
still read that clone's ``.git/config``: the sandboxed profiles keep it
read-only to the agent (claude's and codex's sandboxes do, as
tests/test_target_readonly.py shows), and an unsandboxed agent runs as the
user already.

A new clone costs one git command: its ``.git`` is a copy of an empty
repository made once per worktrees root (``TEMPLATES``), and its files come from
one ``reset --hard`` that reads the objects in the target's own store, in
place, and writes nothing there (``_read_objects_in_place``), with git's
parallel checkout at a lower CPU priority (``_BACKGROUND``); its branch is then created in the
hub as a loose ref (``_create_ref``).  So the first launch on a big
repository costs what ``git worktree add`` of it costs.

Every function may be called again after a daemon crash: a clone left by
an earlier attempt is reused as it is (a half-made one never sits at its
final path: it is made under ``_new-<assignment>`` and renamed), and
``_merge`` is replaced.  An assignment that waited for exactly one other may
take over that one's checkout (``create_worktree(inherit=...)``); the
clone it came from is then gone, and ``commit_assignment`` of it answers
with its branch in the hub.
"""

from __future__ import annotations

import os
import re
import selectors
import shutil
import signal
import stat
import subprocess
import threading
import time
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from orchd import agent_tree, log
from orchd.config import DEFAULT_COMMIT_EXCLUDE as DEFAULT_EXCLUDE

_log = log.get("actors.worktrees")

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
    # a file is compared with the index by every stat field git records, whatever the user's
    # config says; the change time matters most: no one but the kernel sets it, so a file
    # changed with its size and modification time put back still shows (``_take_over``)
    "-c", "core.trustctime=true",
    "-c", "core.checkStat=default",
    "-c", "core.ignoreStat=false",
    # a nested repository an agent committed as a submodule is never worked in: git there
    # would run with that repository's config (``disarm``)
    "-c", "submodule.recurse=false",
    "-c", "diff.ignoreSubmodules=dirty",
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


def _run(cwd: Path, *args: str, env: dict[str, str] | None = None,
         background: bool = False) -> subprocess.CompletedProcess[str]:
    """git in ``cwd``; ``background``: at a lower CPU priority (``_BACKGROUND``), for the commands
    that read or write every file of a big checkout and would otherwise take the cores from the
    daemon's event loop."""
    argv = ["git", "-C", str(cwd), *_CONFIG, *args]
    try:
        return _run_git(argv, {**_env(), **(env or {})}, background)
    except subprocess.TimeoutExpired as e:
        raise GitError(f"git {' '.join(args)} in {cwd}: no answer after {TIMEOUT_S:g}s") from e


def _run_git(argv: list[str], env: dict[str, str], background: bool) -> subprocess.CompletedProcess[str]:
    """``subprocess.run(argv, capture_output=True, timeout=TIMEOUT_S)``, without its polling.

    ``subprocess.run`` with a timeout reaps the child by polling, sleeping
    1 ms, then 2, 4...: a git command that has closed its output but is not
    quite gone yet costs a millisecond or more extra, twice per chained
    assignment.  Here the output is read to its end, then a pidfd (Linux
    >= 5.3) says the moment git has exited.  ``background``: through
    ``_BACKGROUND``, in a process group of its own (killed as a whole
    past the deadline: git's own children hold its output open).
    """
    deadline = time.monotonic() + TIMEOUT_S
    with subprocess.Popen([*_BACKGROUND, *argv] if background else argv, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                          process_group=0 if background else None) as proc:
        try:
            out, err = _read_all(proc, deadline)
            _reap(proc, deadline)
        except subprocess.TimeoutExpired:
            if background:
                with suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
            proc.kill()
            proc.communicate()
            raise
    return subprocess.CompletedProcess(argv, proc.returncode, out.decode("utf-8", "surrogateescape"),
                                       err.decode("utf-8", "surrogateescape"))


def _read_all(proc: subprocess.Popen[bytes], deadline: float) -> tuple[bytes, bytes]:
    """stdout and stderr of ``proc``, each to its end (``TimeoutExpired`` past ``deadline``)."""
    assert proc.stdout is not None and proc.stderr is not None
    chunks: dict[int, list[bytes]] = {proc.stdout.fileno(): [], proc.stderr.fileno(): []}
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        sel.register(proc.stderr, selectors.EVENT_READ)
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                raise subprocess.TimeoutExpired(proc.args, TIMEOUT_S)
            for key, _ in sel.select(left):
                data = os.read(key.fd, 1 << 16)
                if data:
                    chunks[key.fd].append(data)
                else:
                    sel.unregister(key.fileobj)
    return b"".join(chunks[proc.stdout.fileno()]), b"".join(chunks[proc.stderr.fileno()])


def _reap(proc: subprocess.Popen[bytes], deadline: float) -> None:
    """Wait for ``proc``, whose output has ended, to exit: a pidfd when there is one, else ``wait``."""
    try:
        fd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        proc.wait(max(0.0, deadline - time.monotonic()))
        return
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            if not sel.select(max(0.0, deadline - time.monotonic())):
                raise subprocess.TimeoutExpired(proc.args, TIMEOUT_S)
    finally:
        os.close(fd)
    proc.wait()  # exited: returns at once


def _fail(cwd: Path, args: tuple[str, ...], r: subprocess.CompletedProcess[str]) -> GitError:
    detail = (r.stderr.strip() or r.stdout.strip() or "no output")
    return GitError(f"git {' '.join(args)} in {cwd} exited {r.returncode}: {detail}")


def _git(cwd: Path, *args: str, env: dict[str, str] | None = None, background: bool = False) -> str:
    """Run git, return stdout without the trailing newline, raise on failure."""
    r = _run(cwd, *args, env=env, background=background)
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
    One git command when all is well; the reasons are worked out only when not.
    """
    return _toplevel_asking(target)[0]


def _toplevel_and_stores(target: Path) -> tuple[Path, str, str]:
    """``_toplevel``, and the target's object directory and shallow file (absolute; the shallow
    file need not exist), in the same one git command."""
    top, more = _toplevel_asking(target, "--path-format=absolute", "--git-path", "objects",
                                 "--git-path", "shallow")
    if len(more) != 2:
        raise GitError(f"git rev-parse --git-path in {top} printed {len(more)} lines, not 2")
    return top, more[0], more[1]


def _toplevel_asking(target: Path, *more: str) -> tuple[Path, list[str]]:
    """``_toplevel``, and the lines ``git rev-parse`` prints for ``more`` in the same command."""
    target = Path(os.path.abspath(target))
    if not target.is_dir():
        raise NotARepo(f"{target} is not a git repository (no such directory)")
    r = _run(target, "rev-parse", "--is-inside-work-tree", "--show-toplevel", *more)
    lines = r.stdout.splitlines()
    if r.returncode == 0 and len(lines) >= 2 and lines[0] == "true":
        top, answers = lines[1], lines[2:]
    else:  # work out why (or, a work tree after all, ask for ``more`` on its own)
        r = _run(target, "rev-parse", "--is-inside-work-tree")
        if r.returncode != 0:
            if "not a git repository" in r.stderr:
                raise NotARepo(f"{target} is not a git repository")
            raise _fail(target, ("rev-parse",), r)
        if r.stdout.strip() != "true":
            raise NotARepo(f"{target} is not a git repository (not a work tree)")
        top = _git(target, "rev-parse", "--show-toplevel")
        answers = _git(target, "rev-parse", *more).splitlines() if more else []
    if os.path.realpath(top) != os.path.realpath(target):
        raise NotARepo(f"{target} is not a git repository (it is inside the repository {top})")
    return target, answers


def head_commit(target: Path) -> str:
    """The target repository's HEAD commit."""
    return _head_commit(_toplevel(target))


def _head_commit(top: Path) -> str:
    r = _run(top, "rev-parse", "--verify", "--quiet", "HEAD^{commit}")
    if r.returncode != 0:
        raise NotARepo(f"{top} has no commits yet")
    return r.stdout.strip()


def uncommitted(target: Path) -> list[str]:
    """The target's uncommitted changes, ``git status --porcelain`` style: ``"M README"``, ``"?? new/"``.

    Modified, staged, deleted and untracked-but-not-ignored paths (an
    untracked directory once, as ``dir/``).  Read with optional locks off, so
    not even the index's stat cache is rewritten.
    """
    return _uncommitted(_toplevel(target))


def head_and_uncommitted(target: Path) -> tuple[str, list[str]]:
    """``head_commit`` and ``uncommitted`` of the target, checked to be a top level once (what a
    submit asks: one git command fewer than the two calls)."""
    top = _toplevel(target)
    return _head_commit(top), _uncommitted(top)


def _uncommitted(top: Path) -> list[str]:
    raw = _git(top, "--no-optional-locks", "status", "--porcelain=v1", "-z", "--untracked-files=normal")
    out, parts = [], iter(raw.split("\0"))
    for entry in parts:
        if len(entry) < 4:
            continue
        code, path = entry[:2], entry[3:]
        if "R" in code or "C" in code:
            next(parts, None)  # the rename's source
        out.append(f"{code.strip()} {path}")
    return out


def changed_since(clone: Path, base: str, most: int = 200) -> list[str]:
    """The paths a clone's work changed since ``base``: committed or not, untracked included
    (what a fresh start after a failed resume is told the earlier run touched)."""
    disarm(clone)
    names = _git(clone, "--no-optional-locks", "diff", "--ignore-submodules=dirty", "--name-only", "-z",
                 base).split("\0")
    untracked = _git(clone, "--no-optional-locks", "ls-files", "--others", "--exclude-standard", "-z").split("\0")
    return sorted({n for n in names + untracked if n})[:most]


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
    bare: bool = False   # the main entry of a bare repository (no work tree)


def _worktrees(repo: Path) -> list[_Worktree]:
    """Registered worktrees, the main one first.  Paths with newlines are not supported."""
    return _parse_worktrees(_git(repo, "worktree", "list", "--porcelain"))


def _parse_worktrees(text: str) -> list[_Worktree]:
    out: list[_Worktree] = []
    for block in text.split("\n\n"):
        path, branch, locked, prunable, bare = None, None, None, False, False
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
            elif key == "bare":
                bare = True
        if path is not None:
            out.append(_Worktree(path, branch, locked, prunable, bare))
    return out


def _target_worktrees(target: Path) -> tuple[Path, list[_Worktree]]:
    """``_toplevel(target)`` and the target's ``_worktrees``, in one git command when all is well.

    The target is the top of a work tree exactly when it is one of the
    work trees its repository lists (a subdirectory, a bare repository or
    no repository is not); anything else is left to ``_toplevel``, which
    says why (and, should it find the target fine after all, the list is
    read again).
    """
    top = Path(os.path.abspath(target))
    if top.is_dir():
        r = _run(top, "worktree", "list", "--porcelain")
        if r.returncode == 0:
            wts = _parse_worktrees(r.stdout.rstrip("\n"))
            here = os.path.realpath(top)
            if any(not wt.bare and os.path.realpath(wt.path) == here for wt in wts):
                return top, wts
    top = _toplevel(target)
    return top, _worktrees(top)


def _worktree_at(repo: Path, path: Path) -> _Worktree | None:
    want = os.path.realpath(path)
    for wt in _worktrees(repo)[1:]:
        if os.path.realpath(wt.path) == want:
            return wt
    return None


def _session_dir(root: Path, session: str) -> Path:
    return Path(os.path.abspath(root)) / _check_session(session)


# ---------------------------------------------------------------- orchd's own repositories

HUB_DIR = "_branches.git"


def hub_path(root: Path, session: str) -> Path:
    """The session's bare repository of branches: ``<root>/<session>/_branches.git``."""
    return _session_dir(root, session) / HUB_DIR


def _objects_dir(repo: Path) -> str:
    """``repo``'s object directory, absolute (a linked worktree's is its main repository's)."""
    return _git(repo, "rev-parse", "--path-format=absolute", "--git-path", "objects")


def _borrow(repo: Path, objects: str) -> None:
    """Let ``repo`` read ``objects`` (an alternate): never writes there, never copies from it."""
    info = Path(_objects_dir(repo)) / "info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "alternates").write_text(objects + "\n")


def _is_repo(path: Path, bare: bool) -> bool:
    """``path`` is a repository of its own (not a directory inside some other one)."""
    if not path.is_dir():
        return False
    r = _run(path, "rev-parse", "--is-bare-repository", "--absolute-git-dir")
    if r.returncode != 0:
        return False
    is_bare, git_dir = (r.stdout.splitlines() + ["", ""])[:2]
    own = path if bare else path / ".git"
    return is_bare == ("true" if bare else "false") and os.path.realpath(git_dir) == os.path.realpath(own)


def ensure_hub(target: Path, root: Path, session: str, stores: tuple[str, str] | None = None) -> Path:
    """The session's branch repository, created on first use (the caller holds the turn).

    A bare repository owned by orchd whose alternates name the target's
    object directory: it reads the target's history without copying it and
    without writing anything into the target.  Every assignment branch lives
    here (and in the assignment's own clone); so does ``orchd/<session>``
    before it is fetched into the target.  It starts as a copy of the empty
    bare repository in ``TEMPLATES`` (no ``git init`` per session).
    ``stores``: the target's object directory and shallow file, when the
    caller has asked git already (``_toplevel_and_stores``).
    """
    hub = hub_path(root, session)
    if _hub_ready(hub):
        return hub
    if hub.exists():  # a daemon killed half-way through making it
        shutil.rmtree(hub)
    hub.parent.mkdir(parents=True, exist_ok=True)
    _copy_template(_template(root, "bare"), hub)
    # the target's object dir and shallow file in one command; the hub's are known (bare, ours)
    objects, shallow = stores or _git(target, "rev-parse", "--path-format=absolute", "--git-path", "objects",
                                      "--git-path", "shallow").splitlines()
    (hub / "objects" / "info").mkdir(parents=True, exist_ok=True)
    (hub / "objects" / "info" / "alternates").write_text(objects + "\n")  # as _borrow
    if Path(shallow).is_file():  # as _copy_shallow
        shutil.copyfile(shallow, hub / "shallow")
    (hub / HUB_READY).write_text("")
    return hub


HUB_READY = "orchd-ready"
"""Written into the branch repository last: its presence says ``ensure_hub`` finished (no git call)."""


def _hub_ready(hub: Path) -> bool:
    """The branch repository is whole: marked so, or (made before the mark existed) a bare repository."""
    if (hub / HUB_READY).is_file():
        return True
    if _is_repo(hub, bare=True):
        (hub / HUB_READY).write_text("")
        return True
    return False


def _copy_shallow(source: Path, repo: Path) -> None:
    """A shallow ``source``'s boundary, so that ``repo`` borrowing its objects knows where history stops."""
    shallow = Path(_git(source, "rev-parse", "--path-format=absolute", "--git-path", "shallow"))
    if shallow.is_file():
        shutil.copyfile(shallow, _git(repo, "rev-parse", "--path-format=absolute", "--git-path", "shallow"))


def _publish(clone: Path, hub: Path, branch: str) -> None:
    """Copy ``branch`` (and the objects it needs) from an assignment's clone into the hub.

    Runs in the hub (orchd's own), reading the clone as a remote: the
    clone's refs, config and hooks are never run as orchd's own.  Forced:
    the branch is the assignment's to rewrite (an ``--amend`` by the agent).
    """
    _git(hub, "fetch", "--quiet", "--no-tags", "--no-write-fetch-head", "--no-recurse-submodules",
         "--no-auto-gc", str(clone), f"+refs/heads/{branch}:refs/heads/{branch}")


# ---------------------------------------------------------------- what orchd commits

def exclude_pathspecs(patterns: list[str]) -> list[str]:
    """gitignore-like ``patterns`` as pathspecs (``:(glob)``) matching them at any depth.

    ``name/`` is a directory and everything in it; a pattern holding a
    ``/`` elsewhere is anchored at the top; any other matches a file or
    directory name anywhere (``*.pem``, ``.env.*``).
    """
    out = []
    for pat in patterns:
        pat = pat.strip()
        if not pat or pat.startswith("#"):
            continue
        is_dir = pat.endswith("/")
        body = pat.strip("/")
        if not body:
            continue
        anchored = "/" in body or pat.startswith("/")
        spec = body if anchored else f"**/{body}"
        out += [spec + "/**"] if is_dir else [spec, spec + "/**"]
    return [f":(glob){s}" for s in out]


LEFT_OUT_MAX = 50
"""At most this many left-out paths are named in a commit's result (the rest are counted)."""


@dataclass(frozen=True)
class Commit:
    """What ``commit_assignment`` did: ``made`` a new commit or not; the paths it left out."""

    branch: str
    commit: str
    made: bool
    left_out: list[str]
    left_out_more: int = 0


def _left_out(wt: Path, specs: list[str]) -> list[str]:
    """Changed or new paths matching ``specs`` that are not ignored anyway (untracked dirs as ``dir/``)."""
    if not specs:
        return []
    new = _git(wt, "ls-files", "-z", "--others", "--exclude-standard", "--directory", "--", *specs)
    changed = _git(wt, "ls-files", "-z", "--modified", "--deleted", "--", *specs)
    return sorted({f for f in (new + "\0" + changed).split("\0") if f})


def commit_assignment(worktree: Path, message: str, exclude: list[str] | None = None) -> Commit:
    """Commit everything the agent left in ``worktree`` except ``exclude``; publish it to the hub.

    Nothing changed means no commit.  Refuses (``GitError``) a detached HEAD
    or, in a clone made by ``create_worktree``, any branch but its own:
    the merge would silently leave that work out.  Refuses unresolved
    conflicts (``MergeConflict``), which ``add -A`` would commit as markers.
    Paths matching ``exclude`` (gitignore-like, default ``DEFAULT_EXCLUDE``)
    are unstaged and left out, even when the target's ``.gitignore`` does not
    name them; files the agent committed itself stay as it committed them.
    A clone that is gone (taken over by the next assignment) answers with its
    branch in the hub (``made`` False); one that left nothing to commit
    costs one ``git status``.
    """
    wt = Path(os.path.abspath(worktree))
    hub = wt.parent / HUB_DIR
    if not wt.exists() and (handed := _handed_over(wt, hub)) is not None:
        return handed
    if hub.is_dir():  # a session's clone (a host's working copy is disarmed by its caller)
        disarm(wt)
    # One scan says where HEAD is and whether anything changed at all: an
    # assignment that left nothing to commit costs one git command here.
    big = _big(wt / ".git" / "index")
    raw = _git(wt, *_UNTRACKED_CACHE, "status", "--porcelain=v2", "--branch", "-z", "--untracked-files=normal",
               "--ignore-submodules=dirty", background=big)
    head_line = next((e for e in raw.split("\0") if e.startswith("# branch.head ")), "")
    on = head_line.removeprefix("# branch.head ")
    if not on or on == "(detached)":
        raise GitError(f"{wt} has a detached HEAD: its work would be on no branch")
    try:
        own = branch_name(wt.parent.name, wt.name)  # the <root>/<session>/<assignment> layout
    except BadName:
        own = on
    if on != own and _branch_exists(wt, own):  # else not one of ours: any branch will do
        raise GitError(f"{wt} is on branch {on}, not on {own}: the agent switched branches")
    if not any(e and not e.startswith("# ") for e in raw.split("\0")):
        oid = next((e for e in raw.split("\0") if e.startswith("# branch.oid ")), "")
        head = oid.removeprefix("# branch.oid ")
        if re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", head):  # not "(initial)"
            if own == on and _hub_ready(hub) and _loose_ref(hub, own) != head:
                _publish(wt, hub, own)
            return Commit(branch=on, commit=head, made=False, left_out=[])
    raw = _git(wt, "diff", "--ignore-submodules=dirty", "--name-only", "--diff-filter=U", "-z")
    unmerged = sorted({f for f in raw.split("\0") if f})
    if unmerged:
        raise MergeConflict(unmerged)
    specs = exclude_pathspecs(DEFAULT_EXCLUDE if exclude is None else exclude)
    if specs:
        _git(wt, "reset", "--quiet", "--", *specs)  # what the agent staged of them: out again
    # a nested repository the agent checked out is not looked into (agent_tree.nested_repositories)
    nested = agent_tree.nested_repositories(_git(wt, "ls-files", "--stage", "-z"), wt)
    _git(wt, *_UNTRACKED_CACHE, "add", "--all", "--", ".", *(":(exclude," + s[2:] for s in specs),
         *agent_tree.exclude_literal([path for path, _ in nested]), background=big)
    agent_tree.stage_nested_heads(lambda *a: _git(wt, *a), wt, nested)
    left = _left_out(wt, specs)
    r = _run(wt, "diff", "--cached", "--quiet", "--no-ext-diff")
    made = r.returncode == 1
    if made:
        _git(wt, "commit", "--quiet", "--no-verify", "-m", message)
    elif r.returncode != 0:
        raise _fail(wt, ("diff", "--cached", "--quiet"), r)
    head = _git(wt, "rev-parse", "--verify", "HEAD^{commit}")
    if own == on and _hub_ready(hub):
        _publish(wt, hub, own)
    return Commit(branch=on, commit=head, made=made, left_out=left[:LEFT_OUT_MAX],
                  left_out_more=max(0, len(left) - LEFT_OUT_MAX))


_UNTRACKED_CACHE = ("-c", "core.untrackedCache=true")
"""For scans of a clone: git keeps which directories hold untracked files in the index, so a
later scan of a big tree reads only the directories whose mtime changed."""


def _loose_ref(repo: Path, branch: str) -> str | None:
    """``refs/heads/<branch>`` of orchd's own repository read as a file (None: not a loose ref)."""
    try:
        return (repo / "refs" / "heads" / branch).read_text().strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def _handed_over(wt: Path, hub: Path) -> Commit | None:
    """A clone that is gone (its checkout was handed on, see ``create_worktree``): its branch in the hub.

    Everything orchd took from it was published when it was committed, so
    the hub's branch is the assignment's work.  None when there is no such
    branch either (the caller then fails on the missing directory as before).
    """
    try:
        own = branch_name(wt.parent.name, wt.name)
    except BadName:
        return None
    if not _hub_ready(hub):
        return None
    head = _loose_ref(hub, own)
    if head is None:
        r = _run(hub, "rev-parse", "--verify", "--quiet", f"refs/heads/{own}^{{commit}}")
        if r.returncode != 0:
            return None
        head = r.stdout.strip()
    return Commit(branch=own, commit=head, made=False, left_out=[])


def commit_all(worktree: Path, message: str, exclude: list[str] | None = None) -> str:
    """``commit_assignment``, returning only the branch's head."""
    return commit_assignment(worktree, message, exclude).commit


# ---------------------------------------------------------------- public API

def create_worktree(target: Path, root: Path, session: str, assignment: str,
                    base: str, inherit: Path | None = None,
                    settle: Callable[[], str] | None = None) -> tuple[Path, str]:
    """Create the clone ``<root>/<session>/<assignment>`` on a new branch at ``base``.

    The clone is a repository of its own (its ``.git`` is a directory in
    it), owned by orchd; its alternates name the hub's objects, which name
    the target's, so nothing is copied and nothing the agent runs in it
    can write to the target or to another assignment's clone.

    ``inherit``: the clone of the one assignment this one waited for, whose
    work is committed and published and whose HEAD is ``base``.  When its
    checkout is big (``INHERIT_MIN_INDEX_BYTES``) it is taken over instead
    of checking ``base`` out again: its files move here, its ``.git`` (with
    whatever that agent did to config, hooks or refs) is deleted and a new
    one made, the index is rebuilt from ``base`` and every file compared
    with it, then ``reset --hard`` and ``clean -ffdx`` make the files
    exactly ``base``'s: untracked, ignored and left-out files go.  The index
    the agent left is never used: the comparison starts from the one orchd's
    own git wrote when it made that clone (``_keep_trusted_index``), so only
    the files whose stat data changed since then are read and hashed
    (without it, every file is).  The result is the same tree a fresh
    checkout gives, at the cost of a ``stat`` per file and a read of what
    changed instead of writing every file, and one checkout on disk instead
    of two.  The inherited clone's directory is gone afterwards
    (``commit_assignment`` then answers from the hub's branch).

    ``settle``: ``base`` is only a guess (``guess_base``), and ``settle()``
    returns the real one: the commit of the assignment before, which its
    caller makes in another thread meanwhile.  A new clone checks the guess
    out while that commit runs, then moves to the real base if it differs
    (``reset --hard``: only the files that differ are written).  The files,
    index and branch end exactly as a call with the real base would leave
    them.  Wherever the guess is no use (a clone or branch already there, a
    take-over), ``settle()`` is called first and the call goes on with its
    answer.

    Idempotent: a clone already there on its branch is returned as is (with
    whatever the agent left in it), and a branch that exists in the hub
    without a clone (after ``clean`` or a crash) gets one again *without*
    being moved to ``base``, so an agent's earlier commits are never thrown
    away.
    """
    if settle is not None and inherit is not None:
        base, settle = settle(), None
    branch = branch_name(session, assignment)
    # the target was checked when the session's hub was made from it; later clones need only the hub
    stores = None
    if _hub_ready(hub_path(root, session)):
        top = Path(os.path.abspath(target))
    else:  # checked, and its object store found for the hub, in one command
        top, objects, shallow = _toplevel_and_stores(target)
        stores = (objects, shallow)
    with _exclusive(top):
        hub = ensure_hub(top, root, session, stores)
        sdir = _session_dir(root, session)
        path = sdir / assignment
        if settle is not None and (path.exists() or not _new_branch(hub, branch, base)):
            base, settle = settle(), None  # a guess is no use here
        if path.exists():
            if _is_repo(path, bare=False):
                return path, branch  # as the agent left it: its branch changes are commit_all's to judge
            # never deleted: it may hold an agent's work (say it removed its .git)
            raise GitError(f"{path} exists but is not a clone made by orchd; move it away to start again")
        start, later = _start_branch(hub, branch, base)
        sdir.mkdir(parents=True, exist_ok=True)
        tmp = sdir / f"_new-{assignment}"
        if tmp.exists():
            shutil.rmtree(tmp)
        if inherit is not None and _inheritable(Path(os.path.abspath(inherit)), sdir, start):
            _take_over(Path(os.path.abspath(inherit)), tmp, hub, branch, start)
        else:
            _new_clone(tmp, hub, branch)
            # the branch is unborn in the new clone: this sets it to start and writes every file
            # (a one-way reset: no "would it overwrite an untracked file?" pass, the directory is new)
            big = _big(top / ".git" / "index")
            reset = (*_checkout(), "reset", "--hard", "--quiet")
            try:
                _git(tmp, *reset, start, env=_read_objects_in_place(hub), background=big)
            except GitError:
                if settle is None:
                    raise
                shutil.rmtree(tmp)  # a wrong guess: start again from what settle says
                start, settle = settle(), None
                _new_clone(tmp, hub, branch)
                _git(tmp, *reset, start, env=_read_objects_in_place(hub), background=big)
            if settle is not None:
                try:
                    real = settle()
                except BaseException:
                    shutil.rmtree(tmp)  # the commit before failed: no clone, not even half of one
                    raise
                if real != start:  # from the guess to the real base: only the files that differ are written
                    _git(tmp, *reset, real, env=_read_objects_in_place(hub), background=big)
                    start = real
        if later:  # start is a commit: the checkout of it just succeeded
            _create_ref(hub, branch, start)
        _keep_trusted_index(tmp, hub, assignment)
        tmp.rename(path)  # all or nothing: a clone at ``path`` is always a whole one
        return path, branch


CORES = os.cpu_count() or 1

CHECKOUT_NICE = 10
"""A big clone's checkout and scans run at this niceness (``_BACKGROUND``)."""

_BACKGROUND = ("nice", "-n", str(CHECKOUT_NICE)) if shutil.which("nice") else ()
"""In front of ``git`` for the commands that read or write every file of a big clone.

Niceness 10, in the daemon's own session, with one checkout worker fewer
than the cores (sequential on 2).  What was tried instead, on 2 cores
(benchmarks/README.md, "Checkout priority"): ``chrt --idle 0``
(``SCHED_IDLE``) with a worker per core made the first launch 0.8-0.9 x a
raw ``git worktree add`` and kept the daemon's ``ping`` quick on tmpfs, but on
ext4 under another session's load the starved checkout held the file
system's journal and the daemon's ``ping`` waited 1-2 s (in the daemon's
session) or 50-300 ms (in a session of its own at autogroup nice 19),
against 6 ms for this.  A worker on every core at niceness 10: 60-100 ms."""


def checkout_workers() -> int:
    """Processes writing a clone's files (git's parallel checkout, ``checkout.workers``): one per core
    but one, at most 8 (sequential on 2 cores, where a worker on both left the daemon's event loop no
    core to answer on).  git writes sequentially anyway below ``checkout.thresholdForParallelism``
    (100 files)."""
    return max(1, min(CORES - 1, 8))


def _checkout() -> tuple[str, ...]:
    return ("-c", f"checkout.workers={checkout_workers()}")


TEMPLATES = ".orchd-templates"
"""In the worktrees root (orchd's own, beside the sessions' directories): the two empty repositories
``git init`` made once for every session under that root (and so on the file system git probed for
them): ``bare``, which each session's hub starts as a copy of, and ``clone``, whose ``.git`` each
new clone's is a copy of.  Made once, each is renamed into place whole."""

LOWER_MIN_INDEX_BYTES = 64 * 1024
"""A checkout or scan runs at a lower CPU priority (``_BACKGROUND``) only when the index it works from
is at least this big (about 800 files; the target's for a new clone): below that it is over in a few
milliseconds, and on a busy machine, where a command at that priority waits for a free core, it
would only be late."""


def _big(index: Path) -> bool:
    """The index file at ``index`` is ``LOWER_MIN_INDEX_BYTES`` or more (or cannot be read: say so)."""
    try:
        return index.stat().st_size >= LOWER_MIN_INDEX_BYTES
    except OSError:
        return True


INHERIT_MIN_INDEX_BYTES = 64 * 1024
"""A checkout is taken over (``create_worktree(inherit=...)``) only when its index is at least this
big (about 800 files): below that a fresh checkout is as quick and takes fewer git commands."""

_SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


def _full_hash(name: str) -> bool:
    """``name`` is a full object name (not all zeros, which ``update-ref`` takes as "delete")."""
    return bool(_SHA.fullmatch(name)) and bool(name.strip("0"))


def _start_branch(hub: Path, branch: str, base: str) -> tuple[str, bool]:
    """Create ``branch`` in the hub at ``base`` unless it exists; return the commit it is at.

    The usual case costs no git command: ``base`` is a full hash, and the
    hub (orchd's own, refs stored as files, never packed by orchd) has no
    such branch.  Then the second result is True and the branch is the
    caller's to create with ``_create_ref`` once the checkout of ``base`` has
    shown it to be a commit.
    """
    if _new_branch(hub, branch, base):
        return base, True
    return _start_branch_by_git(hub, branch, base), False


def _new_branch(hub: Path, branch: str, base: str) -> bool:
    """``_start_branch``'s usual case, asked without changing anything."""
    return _full_hash(base) and not (hub / "packed-refs").exists() \
        and not os.path.lexists(hub / "refs" / "heads" / branch)


def _create_ref(hub: Path, branch: str, commit: str, replace: bool = False) -> None:
    """``refs/heads/<branch>`` of the hub at ``commit``, only if it does not exist (``replace``: or
    wherever it is): git's own protocol for a loose ref (an exclusive ``.lock`` file renamed into
    place), without a git process.  ``replace`` is for a ref only orchd moves (``orchd/<session>``):
    a loose ref wins over a packed one, so it holds even where the hub's refs were packed."""
    ref = hub / "refs" / "heads" / branch
    ref.parent.mkdir(parents=True, exist_ok=True)
    lock = ref.with_name(ref.name + ".lock")
    try:
        fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:
        raise GitError(f"cannot create {branch} in {hub}: {lock} exists (another git command is "
                       "changing it, or one was killed; remove the file if none is running)") from None
    try:
        with os.fdopen(fd, "w") as out:
            out.write(commit + "\n")
        if not replace and (os.path.lexists(ref) or (hub / "packed-refs").exists()):
            raise GitError(f"cannot create {branch} in {hub}: it appeared meanwhile")
        os.rename(lock, ref)
    finally:
        if os.path.lexists(lock):
            os.unlink(lock)


def _start_branch_by_git(hub: Path, branch: str, base: str) -> str:
    if _full_hash(base):  # the usual case: one command ("" = only if it does not exist yet)
        if _run(hub, "update-ref", f"refs/heads/{branch}", base, "").returncode == 0:
            return base
    if _branch_exists(hub, branch):
        return _git(hub, "rev-parse", "--verify", f"refs/heads/{branch}^{{commit}}")
    start = _commit(hub, base)
    _git(hub, "update-ref", f"refs/heads/{branch}", start, "")
    return start


def _new_clone(tmp: Path, hub: Path, branch: str) -> None:
    """A new repository at ``tmp`` on ``branch``, borrowing the hub's objects (as ``_borrow``).

    Its ``.git`` is a copy of the empty repository in ``TEMPLATES`` with
    ``HEAD`` naming ``branch``: no git process per clone.
    """
    _copy_template(_template(hub.parent.parent, "clone"), tmp / ".git")  # hub: <root>/<session>/_branches.git
    (tmp / ".git" / "HEAD").write_text(f"ref: refs/heads/{branch}\n")
    info = tmp / ".git" / "objects" / "info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "alternates").write_text(f"{hub / 'objects'}\n")
    if (hub / "shallow").is_file():  # a shallow target's boundary (see _copy_shallow)
        shutil.copyfile(hub / "shallow", tmp / ".git" / "shallow")


Template = list[tuple[str, bytes | None]]
"""An empty repository's git directory as (relative path, content; None: a directory), parents first."""

_templates: dict[str, Template] = {}
_templates_guard = threading.Lock()


def _template(root: Path, kind: str) -> Template:
    """``TEMPLATES``' ``kind`` (``bare`` or ``clone``) under ``root``, made on first use.

    Read once per daemon (it never changes once made); a new repository is
    then a few ``mkdir`` and writes (~0.2 ms) instead of a ``git init``
    (~3 ms here) or ``shutil.copytree``'s walk and metadata copies (~0.9 ms).
    Made by ``git init`` in a directory of its own and renamed into place,
    so a template is whole or absent (a crash leaves a ``_new-*`` beside it,
    deleted by the next making).
    """
    final = root / TEMPLATES / kind
    key = str(final)
    with _templates_guard:
        entries = _templates.get(key)
        if entries is None:
            if not final.is_dir():
                _make_template(final, kind)
            git_dir = final if kind == "bare" else final / ".git"
            entries = []
            for dirpath, dirnames, filenames in os.walk(git_dir):
                dirnames.sort()
                rel = os.path.relpath(dirpath, git_dir)
                entries.append((rel, None))
                entries += [(os.path.join(rel, f), (Path(dirpath) / f).read_bytes()) for f in sorted(filenames)]
            if len(_templates) >= 64:  # two per worktrees root: only tests have many roots
                _templates.clear()
            _templates[key] = entries
    return entries


def _make_template(final: Path, kind: str) -> None:
    parent = final.parent
    parent.mkdir(parents=True, exist_ok=True)
    for left in parent.glob(f"_new-{kind}-*"):  # a crash while one was made
        if not _alive(left.name.rpartition("-")[2]):
            shutil.rmtree(left, ignore_errors=True)
    tmp = parent / f"_new-{kind}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)  # this process's own failed attempt (the caller holds the guard)
    if kind == "bare":
        _git(parent, "init", "--quiet", "--bare", "--template=", str(tmp))
    else:
        _git(parent, "init", "--quiet", "--template=", str(tmp))
        # what a plain init adds, less its sample hooks (copying those cost more than the init)
        (tmp / ".git" / "hooks").mkdir()
        (tmp / ".git" / "info").mkdir()
        (tmp / ".git" / "info" / "exclude").write_text("")
    try:
        tmp.rename(final)
    except OSError:  # made meanwhile by another process on this root: that one is as good
        shutil.rmtree(tmp, ignore_errors=True)
        if not final.is_dir():
            raise


def _alive(pid: str) -> bool:
    """A process of this pid runs (a name that is no pid: no)."""
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:  # it runs, as another user
        pass
    return True


def _copy_template(template: Template, dest: Path) -> None:
    """A new git directory at ``dest`` (which must not exist; its parents may not either)."""
    for rel, data in template:
        path = dest / rel
        if data is None:
            path.mkdir(parents=rel == ".")
        else:
            path.write_bytes(data)


def disarm(clone: Path) -> None:
    """Make the git directory of an agent's clone one that runs nothing of the agent's, before
    orchd's own git works in it (to commit it, or to list what it changed).

    The agent may write anything in its clone, ``.git`` included, and orchd's git runs outside
    the agent's sandbox, as the daemon's user.  A clean filter, a textconv or diff driver, an
    include or ``core.worktree`` in ``.git/config`` (or in a common directory ``.git/commondir``
    names, or in ``config.worktree``) would have it run the agent's programs or work on other
    files.  So ``.git`` must be a directory (not a link, not a ``gitdir:`` file naming some other
    repository: ``GitError``), its ``config`` becomes the one every clone under that root starts
    with again (``TEMPLATES``), and ``commondir`` and ``config.worktree`` go.  What git only
    reads stays: HEAD, refs, objects, the index.  Hooks and fsmonitor are off for every orchd git
    command, and none recurses into submodules (``_CONFIG``, ``--ignore-submodules=dirty``).

    Called once the agent is gone (its process group is killed when it exits).  An agent's
    process that escaped both its group and its sandbox could write the file again after this;
    an unconfined agent has no sandbox to escape in the first place.
    """
    git_dir = clone / ".git"
    try:
        mode = os.lstat(git_dir).st_mode
    except OSError as exc:
        raise GitError(f"{clone} has no git directory: {exc.strerror}") from None
    if not stat.S_ISDIR(mode):
        raise GitError(f"{git_dir} is not a directory (a link, or a file naming another repository): "
                       "orchd does not work in it")
    config = next(data for rel, data in _template(clone.parent.parent, "clone") if os.path.normpath(rel) == "config")
    try:
        for name in ("commondir", "config.worktree", "config.orchd-new"):
            _remove(git_dir / name)
        part = git_dir / "config.orchd-new"
        part.write_bytes(config)
        if os.path.isdir(git_dir / "config") and not os.path.islink(git_dir / "config"):
            _remove(git_dir / "config")
        os.replace(part, git_dir / "config")  # a link there is replaced, never followed
    except OSError as exc:  # say, the agent made its .git read-only
        raise GitError(f"cannot put orchd's own config back in {git_dir}: {exc}") from None


def _remove(path: Path) -> None:
    """``path`` gone, whatever it is (a link is removed, not followed)."""
    try:
        if stat.S_ISDIR(os.lstat(path).st_mode):
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:
        pass


def _read_objects_in_place(hub: Path) -> dict[str, str]:
    """For one command in a clone that reads objects and writes none: find them without a miss.

    A clone's own object store is empty when it is made, and it finds the
    base commit's objects through two alternates (the hub, then the
    target).  A checkout reads every blob twice (header, then content), and
    with loose objects each read is first an ``open`` that fails in the
    clone's store: 100,000 failed lookups for 50,000 files, measured as ~0.8 s
    of system time, the difference between our first checkout and a plain
    ``git worktree add``.  Naming the target's object directory as *the*
    object directory (``GIT_OBJECT_DIRECTORY``) and the hub's as an
    alternate makes every read a hit, as in the target itself.

    Only for commands that write no object (``reset --hard`` / ``read-tree``
    of a commit that exists: they write the clone's index, refs and files,
    nothing under ``objects/``); the target's store is read, never written
    (``tests/test_worktrees.py`` checks that it is unchanged).  Anything
    else, and an alternates file this cannot use as it is, gets no variables:
    the clone's own settings then (as slow as before, as correct).
    """
    try:
        lines = (hub / "objects" / "info" / "alternates").read_text().splitlines()
    except OSError:
        return {}
    dirs = [line for line in lines if line.strip() and not line.startswith("#")]
    own = str(hub / "objects")
    if len(dirs) != 1 or not all(os.path.isabs(d) and os.pathsep not in d and not d.startswith('"')
                                 for d in (dirs[0], own)) or not os.path.isdir(dirs[0]):
        return {}  # a path the variables cannot carry as they are
    return {"GIT_OBJECT_DIRECTORY": dirs[0], "GIT_ALTERNATE_OBJECT_DIRECTORIES": own}


def guess_base(clone: Path) -> str | None:
    """What the next assignment after ``clone``'s will most likely start from: the commit
    ``clone`` is on now, when the hub has it as that clone's branch (so its objects are in the
    hub) and the clone is small; None otherwise (a big clone is taken over instead, see
    ``create_worktree``; an agent's own commit is not in the hub until orchd commits the clone).

    Read from files, no git command.  The clone is the agent's: only small regular files are
    read (a FIFO or a symbolic link put there is no guess, never a wait), and what they say is
    only a guess (``create_worktree(settle=...)`` moves to the real base).
    """
    try:
        own = branch_name(clone.parent.name, clone.name)
    except BadName:
        return None
    git_dir = clone / ".git"
    try:
        if (git_dir / "index").stat().st_size >= INHERIT_MIN_INDEX_BYTES:
            return None
    except OSError:
        return None
    if _untrusted_small_file(git_dir / "HEAD") != f"ref: refs/heads/{own}\n":
        return None
    head = (_untrusted_small_file(git_dir / "refs" / "heads" / own) or "").strip()
    if not _full_hash(head) or _loose_ref(clone.parent / HUB_DIR, own) != head:
        return None
    return head


def _untrusted_small_file(path: Path, most: int = 256) -> str | None:
    """The text of ``path`` if it is a regular file (not a link) of at most ``most`` bytes, else None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > most:
            return None
        return os.read(fd, most + 1).decode()
    except (OSError, UnicodeDecodeError):
        return None
    finally:
        os.close(fd)


def _inheritable(clone: Path, sdir: Path, start: str) -> bool:
    """``clone`` is a big clone of this session, on ``start``: worth taking over."""
    if clone.parent != sdir or clone.name.startswith("_"):
        return False
    try:
        if (clone / ".git" / "index").stat().st_size < INHERIT_MIN_INDEX_BYTES:
            return False
    except OSError:
        return False
    if not _is_repo(clone, bare=False):
        return False
    r = _run(clone, "rev-parse", "--verify", "--quiet", "HEAD^{commit}")
    return r.returncode == 0 and r.stdout.strip() == start


TRUSTED_INDEX_DIR = "orchd-index"
"""In a session's hub: ``<assignment>``, a copy of the index orchd's own git wrote when it made that
assignment's big clone (checkout or take-over), before any agent ran there; what a take-over of
the clone compares its files against (``_take_over``)."""


def _trusted_index(hub: Path, assignment: str) -> Path:
    return hub / TRUSTED_INDEX_DIR / assignment


def _keep_trusted_index(clone: Path, hub: Path, assignment: str) -> None:
    """Keep a copy of the index of the big clone orchd just made, for its take-over (``_take_over``).

    Written by orchd's git before the agent starts, it holds each file's stat data as it was then,
    with the file's content known to be the tree's.  Kept in the hub, which a confined agent cannot
    write.  The copy keeps the index file's modification time: git compares it with each entry's
    to tell which entries were written too close to the index to be trusted by their stat data alone
    (its "racy" entries), and hashes those.  Small clones are never taken over: nothing is kept.
    """
    index = clone / ".git" / "index"
    dest = _trusted_index(hub, assignment)
    try:
        if index.stat().st_size < INHERIT_MIN_INDEX_BYTES:
            dest.unlink(missing_ok=True)  # a clone of that name made earlier may have left one
            return
        dest.parent.mkdir(exist_ok=True)
        part = dest.with_name(f"_new-{assignment}")
        shutil.copy2(index, part)
        os.replace(part, dest)
    except OSError as exc:  # only a take-over's speed depends on it
        _log.warning("trusted_index_not_kept", clone=str(clone), error=str(exc))


def _index_from_trusted(trusted: Path, tmp: Path, start: str, env: dict[str, str]) -> bool:
    """Make ``tmp``'s index ``start``'s tree with the stat data of ``trusted`` (moved there) for every
    entry whose content is the same in both.  False (and no index) when there is no such index or git
    cannot read it."""
    index = tmp / ".git" / "index"
    try:
        os.rename(trusted, index)  # keeps its modification time (see _keep_trusted_index)
    except OSError:
        return False
    if _run(tmp, "read-tree", "-m", "-i", start, env=env).returncode == 0:  # -i: the files are not looked at
        return True
    index.unlink(missing_ok=True)
    return False


def _take_over(clone: Path, tmp: Path, hub: Path, branch: str, start: str) -> None:
    """Move ``clone``'s files to ``tmp`` under a new ``.git`` on ``branch``, exactly ``start``'s tree."""
    clone.rename(tmp)
    gone = tmp.parent / f"_gone-{tmp.name}.git"
    if gone.exists():
        shutil.rmtree(gone)
    (tmp / ".git").rename(gone)  # the agent's git dir never reaches the next assignment
    shutil.rmtree(gone)
    _new_clone(tmp, hub, branch)
    env = _read_objects_in_place(hub)
    if not _index_from_trusted(_trusted_index(hub, clone.name), tmp, start, env):
        _git(tmp, "read-tree", start, env=env)  # an index of start's tree, no stat data yet
    # stat()s every file: hashes those whose stat data is not the index's (without a trusted index:
    # all of them) and records it; exit 1: some differ from start or are missing.  "really":
    # an entry's assume-unchanged bit is not believed either
    r = _run(tmp, "update-index", "--really-refresh", background=True)
    if r.returncode == 1:
        # rewrites those, sets the branch
        _git(tmp, *_checkout(), "reset", "--hard", "--quiet", start, env=_read_objects_in_place(hub),
             background=True)
    elif r.returncode == 0:
        _git(tmp, "update-ref", f"refs/heads/{branch}", start)  # every file is start's already
    else:
        raise _fail(tmp, ("update-index", "--really-refresh"), r)
    _git(tmp, *_UNTRACKED_CACHE, "clean", "-ffdxq", background=True)  # untracked, ignored, nested repositories: gone


def clean(target: Path, root: Path, session: str, message: str = "orchd: left uncommitted at clean",
          exclude: list[str] | None = None) -> tuple[list[Path], dict[str, str]]:
    """Remove the session's clones and scratch worktrees, keep its branches.

    What an assignment left uncommitted is committed to its branch first
    (``commit_assignment``, published to the hub), so a stopped or failed
    assignment's work survives in ``_branches.git``.  A clone whose work
    cannot be committed (a detached HEAD, another branch, unresolved
    conflicts) is kept and named in the second result with the reason.
    Returns the removed paths and the kept ones.
    """
    top = _toplevel(target)
    with _exclusive(top):
        return _clean(root, session, message, exclude)


def _clean(root: Path, session: str, message: str,
           exclude: list[str] | None) -> tuple[list[Path], dict[str, str]]:
    sdir = _session_dir(root, session)
    removed: list[Path] = []
    kept: dict[str, str] = {}
    hub = sdir / HUB_DIR
    if _is_repo(hub, bare=True):
        for wt in _worktrees(hub)[1:]:  # _merge and _base-*: orchd's scratch space
            _git(hub, "worktree", "remove", "--force", "--force", str(wt.path))
            removed.append(wt.path)
        _git(hub, "worktree", "prune")
    if not sdir.is_dir():
        return sorted(removed), kept
    for child in sorted(sdir.iterdir()):
        if child.name == HUB_DIR or not child.is_dir():
            continue
        if child.name.startswith("_"):  # a half-made clone or scratch directory (ours only)
            shutil.rmtree(child)
            removed.append(child)
            continue
        if not _is_repo(child, bare=False):
            kept[str(child)] = "not a clone made by orchd (left as it is)"
            continue
        try:
            commit_assignment(child, message, exclude)
        except GitError as exc:
            kept[str(child)] = exc.message
            continue
        shutil.rmtree(child)
        removed.append(child)
    return sorted(removed), kept
