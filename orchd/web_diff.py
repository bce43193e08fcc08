"""A session's current diff for the dashboard: ``git diff`` stat and patch, capped (blocking; run in a thread).

What is diffed, from the session's status and its ``session.submitted`` event:
the merged session branch when there is one (``base..branch`` in the target
repo), else each worker's working copy against the base commit (committed and
uncommitted changes, new files included), or its branch when the worktree is
gone.  The patch is agent output: the page shows it as text only.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from orchd import agent_tree

PATCH_CAP_BYTES = 512 * 1024
GIT_TIMEOUT_S = 20.0


@dataclass
class Part:
    worker: str | None
    ref: str
    stat: str = ""
    patch: str = ""
    truncated: bool = False
    error: str | None = None


@dataclass
class Diff:
    session: str
    base: str | None
    parts: list[Part] = field(default_factory=list)


def _git(cwd: str, *args: str, index: str | None = None, store: str | None = None) -> subprocess.CompletedProcess[bytes]:
    """git in ``cwd``; with ``store``, that repository as the git directory over ``cwd`` as the work tree
    (``orchd.agent_tree``): ``cwd``'s own git directory, an agent's, is not read."""
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0", "GIT_PAGER": "cat", "LC_ALL": "C"}
    if index is not None:
        env["GIT_INDEX_FILE"] = index
    if store is not None:
        env = agent_tree.env(Path(store), Path(cwd), index, base=env)
    return subprocess.run(["git", "-C", cwd, *agent_tree.CONFIG, *args], capture_output=True, timeout=GIT_TIMEOUT_S,
                          env=env, stdin=subprocess.DEVNULL)


def _worktree_part(worker: str | None, cwd: str, base: str, budget: int) -> Part:
    """A working copy against ``base``, new files included, without touching it.

    A copy of the worktree's index (so unchanged files are not hashed again)
    takes every file (``add -A``, honouring .gitignore) and is diffed.  git
    runs with a throwaway store of orchd's own as its git directory
    (``orchd.agent_tree``): the agent is running, and its ``.git/config``
    could name a filter or driver that git would run.
    """
    with tempfile.TemporaryDirectory(prefix="orchd-diff-") as tmp:
        index = os.path.join(tmp, "index")
        store = os.path.join(tmp, "store.git")
        try:
            agent_tree.open_store(Path(store), agent_tree.object_dirs(Path(cwd), GIT_TIMEOUT_S), GIT_TIMEOUT_S)
            real = _git(cwd, "rev-parse", "--git-path", "index").stdout.decode().strip()
            real = real if os.path.isabs(real) else os.path.join(cwd, real)
            if os.path.isfile(real):
                shutil.copyfile(real, index)
            listed = _git(cwd, "ls-files", "--stage", "-z", index=index, store=store)
            nested = agent_tree.nested_repositories(listed.stdout.decode(errors="surrogateescape"), Path(cwd))
            added = _git(cwd, "add", "-A", "--", ".", *agent_tree.exclude_literal([path for path, _ in nested]),
                         index=index, store=store)
            if added.returncode == 0:
                agent_tree.stage_nested_heads(lambda *a: _git(cwd, *a, index=index, store=store), Path(cwd), nested,
                                              GIT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return Part(worker=worker, ref="worktree", error=f"git add took over {GIT_TIMEOUT_S:g} s")
        except (agent_tree.NotARepository, subprocess.CalledProcessError, OSError) as exc:
            return Part(worker=worker, ref="worktree", error=f"cannot read the working copy: {exc}")
        if added.returncode != 0:
            return Part(worker=worker, ref="worktree",
                        error=(added.stderr.decode(errors="replace").strip().splitlines() or ["git add failed"])[-1])
        return _part(worker, cwd, "worktree", ["--cached", base], budget, index=index, store=store)


def _part(worker: str | None, cwd: str, ref: str, revs: list[str], budget: int, index: str | None = None,
          store: str | None = None) -> Part:
    part = Part(worker=worker, ref=ref)
    try:
        stat = _git(cwd, "diff", "--no-color", "--stat", *revs, "--", index=index, store=store)
        if stat.returncode != 0:
            part.error = (stat.stderr.decode(errors="replace").strip().splitlines() or ["git diff failed"])[-1]
            return part
        part.stat = stat.stdout.decode(errors="replace")
        patch = _git(cwd, "diff", "--no-color", "--no-ext-diff", *revs, "--", index=index, store=store).stdout
    except subprocess.TimeoutExpired:
        part.error = f"git diff took over {GIT_TIMEOUT_S:g} s"
        return part
    if len(patch) > budget:
        patch, part.truncated = patch[:budget], True
    part.patch = patch.decode(errors="replace")
    return part


def session_diff(session: dict, base: str | None, cap_bytes: int = PATCH_CAP_BYTES) -> Diff:
    """The diff of one session (``session``: its status object as a dict)."""
    out = Diff(session=session.get("id", ""), base=base)
    target = session.get("target") or ""
    if not base or not os.path.isdir(target):
        return out
    budget = cap_bytes
    if session.get("branch"):
        out.parts.append(_part(None, target, session["branch"], [base, session["branch"]], budget))
        return out
    for w in session.get("workers", []):
        if budget <= 0:
            break
        wt, branch = w.get("worktree"), w.get("branch")
        if wt and os.path.isdir(wt):
            part = _worktree_part(w.get("name"), wt, base, budget)
        elif branch:
            part = _part(w.get("name"), target, branch, [base, branch], budget)
        else:
            continue
        budget -= len(part.patch.encode())
        out.parts.append(part)
    return out
