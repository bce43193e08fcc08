"""Git work off the supervisor's loop: worktrees, merges, cleaning, target checks.

The supervisor never waits for git.  It hands a job to ``Workspace.start``
and goes on serving; the job runs in a worker thread (``actors.worktrees``
is blocking code) and its result comes back to the supervisor's mailbox as
a typed message (``WorktreeReady``, ``MergeFinished``, ``CleanFinished``,
``TargetChecked``), handled in its one ``match`` like any other.  A job
that raises becomes a result with ``error`` set: git failing is an
expected outcome, reported, never a crash of the supervisor.

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

def prepare(s_id: str, target: str, root: str, base_commit: str, label: str, deps: list[str],
            worker: str, gen: int) -> p.WorktreeReady:
    """Commit what the assignments before left, base a worktree on their merge, create it."""
    try:
        commits = [worktrees.commit_all(Path(tree), f"orchd: {Path(tree).name}") for tree in deps]
        base = merging.merged_base(Path(target), Path(root), s_id, label, commits) if commits else base_commit
        cwd, branch = worktrees.create_worktree(Path(target), Path(root), s_id, label, base)
    except worktrees.GitError as exc:
        return p.WorktreeReady(session=s_id, worker=worker, gen=gen, error=f"worktree: {exc}")
    return p.WorktreeReady(session=s_id, worker=worker, gen=gen, cwd=str(cwd), branch=branch)


def merge(s_id: str, target: str, root: str, base_commit: str, names: list[str],
          trees: list[str]) -> p.MergeFinished:
    try:
        for tree in trees:
            worktrees.commit_all(Path(tree), f"orchd: {Path(tree).name}")
        res = merging.merge_session(Path(target), Path(root), s_id, names, base_commit)
    except worktrees.GitError as exc:
        return p.MergeFinished(session=s_id, ok=False, error=f"merge failed: {exc}")
    return p.MergeFinished(session=s_id, ok=res.ok, branch=res.branch, commit=res.commit,
                           conflicts=list(res.conflicts))


def clean(s_id: str, target: str, root: str, call: str) -> p.CleanFinished:
    try:
        removed = worktrees.clean(Path(target), Path(root), s_id)
    except worktrees.GitError as exc:
        return p.CleanFinished(session=s_id, call=call, error=str(exc))
    return p.CleanFinished(session=s_id, call=call, removed=len(removed))


def check_target(target: str, call: str) -> p.TargetChecked:
    try:
        return p.TargetChecked(call=call, base_commit=worktrees.head_commit(Path(target)))
    except worktrees.GitError as exc:
        return p.TargetChecked(call=call, error=str(exc))


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


def prepare_args(s: SessionView, w: WorkerView, root: Path, label: str) -> tuple:
    deps = [s.workers[d].worktree for d in w.spec.after if s.workers[d].worktree]
    return (s.id, s.target, str(root), s.base_commit, label, deps, w.spec.name, w.gen + 1)


def merge_args(s: SessionView, root: Path) -> tuple:
    names = [w.spec.name for w in s.assignments()]
    trees = [w.worktree for w in s.assignments() if w.worktree]
    return (s.id, s.target, str(root), s.base_commit, names, trees)
