"""Work moving between the supervisor and an agent host as git bundles (synchronous: run in threads).

In: the supervisor bundles the assignment's branch from its own clone (``base_bundle``); the host
makes a working copy of its own from it (``working_copy``).  Out: the host commits what the agent
left (a "wrap" commit, minus ``commit_exclude``) and bundles ``base..branch`` (``result_bundle``);
the supervisor fetches that into its clone, moves the branch there, and turns the wrap commit back
into uncommitted changes (``apply_result``), so its usual commit step (message, ``worker.committed``,
publishing to ``_branches.git``) runs as for a local run.  The host never needs any other access
to the repository.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from actors import worktrees
from actors.worktrees import GitError, _git


def base_bundle(clone: Path, branch: str) -> tuple[bytes, str]:
    """(bundle of ``branch`` with its whole history, its head) from the supervisor's clone."""
    head = _git(clone, "rev-parse", "--verify", f"refs/heads/{branch}^{{commit}}")
    with tempfile.TemporaryDirectory(prefix="orchd-bundle-") as tmp:
        path = Path(tmp) / "base.bundle"
        _git(clone, "bundle", "create", "--quiet", str(path), f"refs/heads/{branch}")
        return path.read_bytes(), head


def working_copy(root: Path, session: str, assignment: str, branch: str, base: str, bundle: bytes) -> Path:
    """A fresh clone ``<root>/<session>/<assignment>`` on ``branch`` at ``base``, made from ``bundle``."""
    wc = root / session / assignment
    if wc.exists():
        shutil.rmtree(wc)  # the supervisor's branch is the truth: an earlier run's copy is stale
    wc.mkdir(parents=True)
    path = wc.parent / f".{assignment}.bundle"
    path.write_bytes(bundle)
    try:
        _git(wc, "init", "--quiet")
        _git(wc, "fetch", "--quiet", "--no-tags", str(path), f"+refs/heads/{branch}:refs/heads/{branch}")
        _git(wc, "checkout", "--quiet", branch)
    finally:
        path.unlink(missing_ok=True)
    got = _git(wc, "rev-parse", "HEAD")
    if got != base:
        raise GitError(f"the base bundle gave {got}, not {base}")
    return wc


def result_bundle(wc: Path, branch: str, base: str, message: str, exclude: list[str]) -> tuple[bytes, str, bool]:
    """(bundle of ``base..branch``, head, wrapped) after committing what the agent left."""
    worktrees.disarm(wc)  # the agent's git config runs nothing of orchd's
    c = worktrees.commit_assignment(wc, message, exclude)
    if c.commit == base:
        return b"", base, False
    with tempfile.TemporaryDirectory(prefix="orchd-bundle-") as tmp:
        path = Path(tmp) / "result.bundle"
        _git(wc, "bundle", "create", "--quiet", str(path), f"{base}..refs/heads/{branch}")
        return path.read_bytes(), c.commit, c.made


def apply_result(clone: Path, branch: str, data: bytes, head: str, wrapped: bool) -> None:
    """Fetch a host's result bundle into the supervisor's clone and move its branch there."""
    if data:
        path = clone.parent / f".{clone.name}.result.bundle"
        path.write_bytes(data)
        try:
            _git(clone, "fetch", "--quiet", "--no-tags", str(path), f"refs/heads/{branch}")
        finally:
            path.unlink(missing_ok=True)
        got = _git(clone, "rev-parse", "FETCH_HEAD")
        if got != head:
            raise GitError(f"the result bundle gave {got}, not {head}")
        _git(clone, "reset", "--quiet", "--hard", head)
    if wrapped:
        _git(clone, "reset", "--quiet", "--soft", "HEAD~1")
