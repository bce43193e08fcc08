"""Git work off the supervisor's loop: clones, commits, merges, cleaning, target checks.

The supervisor never waits for git.  It hands a job to ``Workspace.start``
and goes on serving; the job runs in a worker thread (``actors.worktrees``
is blocking code) and its result comes back to the supervisor's mailbox as
a typed message (``WorktreeReady``, ``MergeFinished``, ``CleanFinished``,
``TargetChecked``; the commits a job made ride along as ``CommitMade``),
handled in its one ``match`` like any other.  A job that raises becomes a
result with ``error`` set: git failing is an expected outcome, reported,
never a crash of the supervisor.

Jobs on one repository run one at a time, in the order they were started
(git takes repository-wide locks: two worktree additions at once fail);
jobs on different repositories run side by side, at most ``threads``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from actors import merging, worktrees
from actors.sessions import SessionView, WorkerView
from orchd import log
from orchd import protocol as p

_log = log.get("actors.workspace")


# ---------------------------------------------------------------- the jobs (blocking; run in a thread)

Tree = tuple[str, str, str]
"""An assignment's clone to commit: ``(worker name, clone path, commit message)``."""

DIRTY_MAX = 20
"""At most this many uncommitted paths of the target are named in a submit's warning."""


def _commit(trees: list[Tree], exclude: list[str]) -> list[p.CommitMade]:
    """Commit each clone; several at once (separate repositories: their scans overlap), results in order."""
    def one(tree: Tree) -> p.CommitMade:
        name, path, message = tree
        c = worktrees.commit_assignment(Path(path), message, exclude)
        return p.CommitMade(worker=name, branch=c.branch, commit=c.commit, made=c.made,
                            left_out=c.left_out, left_out_more=c.left_out_more)
    if len(trees) < 2:
        return [one(t) for t in trees]
    with ThreadPoolExecutor(min(len(trees), COMMIT_THREADS), thread_name_prefix="orchd-commit") as pool:
        return list(pool.map(one, trees))  # the first failure is raised, as one at a time would


COMMIT_THREADS = 4
"""Clones committed at the same time by one job (each is one ``git status`` when nothing changed)."""


def prepare(s_id: str, target: str, root: str, base_commit: str, label: str, deps: list[Tree],
            exclude: list[str], worker: str, gen: int, changes: bool = False) -> p.WorktreeReady:
    """Commit what the assignments before left, base a clone on their merge, create it.

    After exactly one assignment, the clone starts from that one's commit
    and may take over its checkout (``create_worktree(inherit=...)``).  When
    that one's clone is small, the new clone is checked out at the commit
    it is on (``worktrees.guess_base``) while it is committed, two git
    processes side by side: the gap between two chained assignments is
    then the longer of the two, not their sum (``create_worktree(settle=...)``
    ends at the real commit either way).
    ``changes``: also list what the clone's earlier runs changed since its
    base (a fresh start after a failed resume is told).
    """
    commits: list[p.CommitMade] = []
    guess = worktrees.guess_base(Path(deps[0][1])) if len(deps) == 1 else None
    try:
        if guess is None:
            commits = _commit(deps, exclude)
            heads = list(dict.fromkeys(c.commit for c in commits))
            if len(heads) > 1:
                base = merging.merged_base(Path(target), Path(root), s_id, label, heads)
            else:
                base = heads[0] if heads else base_commit
            inherit = Path(deps[0][1]) if len(deps) == 1 and heads else None
            cwd, branch = worktrees.create_worktree(Path(target), Path(root), s_id, label, base, inherit=inherit)
        else:
            with ThreadPoolExecutor(1, thread_name_prefix="orchd-commit") as pool:
                committed = pool.submit(_commit, deps, exclude)
                try:
                    cwd, branch = worktrees.create_worktree(Path(target), Path(root), s_id, label, guess,
                                                            settle=lambda: committed.result()[0].commit)
                finally:
                    if committed.exception() is None:  # (waits for it) the commit rides along even so
                        commits = committed.result()
            base = commits[0].commit
        changed = worktrees.changed_since(cwd, base) if changes else []
    except worktrees.GitError as exc:
        return p.WorktreeReady(session=s_id, worker=worker, gen=gen, error=f"worktree: {exc}", commits=commits)
    return p.WorktreeReady(session=s_id, worker=worker, gen=gen, cwd=str(cwd), branch=branch, commits=commits,
                           changed=changed)


def merge(s_id: str, target: str, root: str, base_commit: str, names: list[str],
          trees: list[Tree], exclude: list[str]) -> p.MergeFinished:
    commits: list[p.CommitMade] = []
    try:
        commits = _commit(trees, exclude)
        res = merging.merge_session(Path(target), Path(root), s_id, names, base_commit)
    except worktrees.GitError as exc:
        return p.MergeFinished(session=s_id, ok=False, error=f"merge failed: {exc}", commits=commits)
    return p.MergeFinished(session=s_id, ok=res.ok, branch=res.branch, commit=res.commit,
                           conflicts=list(res.conflicts), commits=commits)


def clean(s_id: str, target: str, root: str, call: str, trees: list[Tree] = (),
          exclude: list[str] | None = None) -> p.CleanFinished:
    """Commit what each clone left (``trees`` give the messages), then remove the clones.

    A clone whose work cannot be committed is kept (``kept``); the rest go.
    """
    commits: list[p.CommitMade] = []
    kept: list[str] = []
    try:
        for name, tree, message in trees:
            try:
                commits += _commit([(name, tree, message)], exclude)
            except worktrees.GitError as exc:  # worktrees.clean keeps it and says why
                _log.info("clean_commit_failed", session=s_id, worker=name, error=exc.message[:300])
        removed, left = worktrees.clean(Path(target), Path(root), s_id, exclude=exclude)
        kept = [f"{path}: {why}" for path, why in left.items()]
    except worktrees.GitError as exc:
        return p.CleanFinished(session=s_id, call=call, error=str(exc), commits=commits)
    return p.CleanFinished(session=s_id, call=call, removed=len(removed), commits=commits, kept=kept)


def check_target(target: str, call: str) -> p.TargetChecked:
    """The target's HEAD, and what it holds uncommitted (which the agents will not see)."""
    try:
        head, dirty = worktrees.head_and_uncommitted(Path(target))
    except worktrees.GitError as exc:
        return p.TargetChecked(call=call, error=str(exc))
    return p.TargetChecked(call=call, base_commit=head, dirty=dirty[:DIRTY_MAX],
                           dirty_more=max(0, len(dirty) - DIRTY_MAX))


def dirty_warning(base_commit: str, dirty: list[str], more: int) -> str:
    """The submit reply's warning about a dirty target (one line)."""
    names = ", ".join(dirty) + (f" and {more} more" if more else "")
    return (f"the target has uncommitted changes that the agents will not see (they start from the "
            f"committed HEAD {base_commit[:12]}): {names}")


_MESSAGE_MAX = 4000


def commit_message(task: str, worker: str, done: str) -> str:
    """``<task's first line, shortened> (orchd: <worker>)``, then the agent's ``DONE:`` summary.

    The summary is agent output: control characters (NUL included, which no
    argv can carry) become spaces, and it is cut to a few thousand characters.
    """
    first = next((line.strip() for line in task.splitlines() if line.strip()), "") or "(no task)"
    if len(first) > 60:
        first = first[:59].rstrip() + "…"
    subject = _printable(f"{first} (orchd: {worker})")
    body = _printable(done.strip(), keep_newlines=True)[:_MESSAGE_MAX]
    return subject + (f"\n\nDONE: {body}" if body else "")


def _printable(text: str, keep_newlines: bool = False) -> str:
    keep = "\n\t" if keep_newlines else ""
    return "".join(c if c.isprintable() or c in keep else " " for c in text)


# ---------------------------------------------------------------- running them

class Workspace:
    """Runs git jobs in threads; ``post`` delivers each result (on the loop thread)."""

    def __init__(self, post: Callable[[p.Msg], None], threads: int = 4) -> None:
        self._post = post
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="orchd-git")
        self._tasks: set[asyncio.Task] = set()
        self._locks: dict[str, asyncio.Lock] = {}  # one per repository ever used (a handful)

    def start(self, repo: str, job: Callable[..., p.Msg], *args) -> None:
        task = asyncio.get_running_loop().create_task(self._run(repo, job, args))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, repo: str, job, args) -> None:
        lock = self._locks.setdefault(repo, asyncio.Lock())  # asyncio.Lock is FIFO: jobs keep their order
        async with lock:
            result = await asyncio.get_running_loop().run_in_executor(self._pool, job, *args)
        self._post(result)

    def busy(self) -> int:
        return len(self._tasks)

    async def close(self, grace_s: float) -> None:
        """Wait up to ``grace_s`` for running jobs (git is not interruptible), then leave them."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=grace_s)
        for t in self._tasks:
            t.cancel()
        self._pool.shutdown(wait=False, cancel_futures=True)


def _tree(s: SessionView, w: WorkerView) -> Tree:
    return (w.spec.name, w.worktree or "", commit_message(s.task, w.spec.name, w.done_text))


def prepare_args(s: SessionView, w: WorkerView, root: Path, label: str, exclude: list[str],
                 changes: bool = False) -> tuple:
    deps = [_tree(s, s.workers[d]) for d in w.spec.after if s.workers[d].worktree]
    return (s.id, s.target, str(root), s.base_commit, label, deps, list(exclude), w.spec.name, w.gen + 1, changes)


def merge_args(s: SessionView, root: Path, exclude: list[str]) -> tuple:
    names = [w.spec.name for w in s.assignments()]
    trees = [_tree(s, w) for w in s.assignments() if w.worktree]
    return (s.id, s.target, str(root), s.base_commit, names, trees, list(exclude))


def clean_args(s: SessionView, root: Path, call: str, exclude: list[str]) -> tuple:
    trees = [_tree(s, w) for w in s.workers.values() if w.worktree]
    return (s.id, s.target, str(root), call, trees, list(exclude))
