"""git over a working directory an agent may still be writing, with orchd's own git directory.

An agent can write everything in its clone, ``.git`` included, and orchd's git runs outside the
agent's sandbox, as the daemon's user.  A clean filter, a textconv or diff driver,
``core.fsmonitor``, an include or ``core.worktree`` in the agent's ``.git/config`` would have it
run the agent's programs, or read other files.  While the agent runs its git directory cannot be
made safe first (it could be written again at any time), so what reads the working directory of
a running agent (a review's snapshot, the dashboard's diff) runs git with a *store* as
``GIT_DIR``: a bare repository of orchd's own that reads the agent's objects in place
(alternates), with the agent's directory as ``GIT_WORK_TREE``.  The agent's git directory is then
only read as data: where its objects are (``rev-parse``, which runs nothing of the config) and
its ``objects/info/alternates``.  New blobs and commits go into the store.

A clone orchd commits once its agent is gone is made safe in place instead
(``actors.worktrees.disarm``).
"""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

CONFIG = ("-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false", "-c", "submodule.recurse=false",
          "-c", "gc.auto=0", "-c", "commit.gpgSign=false")
"""Overrides on every git command over an agent's tree (the user's own config is still read)."""

REPO_ENV = frozenset({"GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY", "GIT_COMMON_DIR",
                      "GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_CONFIG", "GIT_CONFIG_PARAMETERS", "GIT_CONFIG_COUNT",
                      "GIT_PREFIX", "GIT_NAMESPACE"})
"""Inherited, these would point git at some other repository."""

_guard = threading.Lock()


def plain_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) without ``REPO_ENV``."""
    return {k: v for k, v in (os.environ if base is None else base).items() if k not in REPO_ENV}


def env(store: Path, work_tree: Path, index: str | None = None, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for git over ``work_tree`` with ``store`` as its git directory."""
    out = plain_env(base)
    out.update(GIT_DIR=str(store), GIT_WORK_TREE=str(work_tree))
    if index is not None:
        out["GIT_INDEX_FILE"] = index
    return out


def object_dirs(work_tree: Path, timeout_s: float = 20.0) -> list[str]:
    """The object directories git would read for ``work_tree``'s repository: its own, then the ones
    its ``objects/info/alternates`` names (paths only; git follows their alternates itself)."""
    r = subprocess.run(["git", "-C", str(work_tree), *CONFIG, "rev-parse", "--path-format=absolute",
                        "--git-common-dir"], capture_output=True, text=True, errors="surrogateescape",
                       stdin=subprocess.DEVNULL, timeout=timeout_s, env=plain_env(), check=False)
    if r.returncode != 0:
        raise NotARepository((r.stderr.strip() or f"git rev-parse exited {r.returncode}")[:300])
    objects = Path(r.stdout.strip()) / "objects"
    out = [str(objects)]
    try:
        borrowed = (objects / "info" / "alternates").read_text(errors="replace").splitlines()
    except OSError:
        borrowed = []
    for line in borrowed:
        line = line.strip()
        if line and not line.startswith("#") and "\0" not in line:
            out.append(line if os.path.isabs(line) else os.path.normpath(objects / line))
    return list(dict.fromkeys(out))


class NotARepository(Exception):
    pass


def open_store(store: Path, objects: list[str], timeout_s: float = 20.0) -> None:
    """``store`` (a bare repository, made if missing) reading ``objects`` in place, on top of what it
    read already: a snapshot stays readable after its author's clone is gone, through the
    repositories that clone borrowed from."""
    with _guard:  # two authors of one session at once
        if not (store / "HEAD").is_file():
            store.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run(["git", *CONFIG, "init", "--quiet", "--bare", str(store)], capture_output=True,
                           stdin=subprocess.DEVNULL, timeout=timeout_s, env=plain_env(), check=True)
        alternates = store / "objects" / "info" / "alternates"
        have = alternates.read_text().splitlines() if alternates.exists() else []
        new = [o for o in objects if o not in have]
        if new:
            alternates.parent.mkdir(parents=True, exist_ok=True)
            alternates.write_text("".join(f"{line}\n" for line in have + new))


# ---------------------------------------------------------------- nested repositories

def nested_repositories(ls_files_stage: str, work_tree: Path) -> list[tuple[str, str]]:
    """The submodule entries (gitlinks) of an index whose repository is there in the work tree, as
    ``(path, commit in the index)``; ``ls_files_stage`` is ``git ls-files --stage -z``'s output.

    git asks such a repository whether its files changed (it runs ``git status`` in it, with its
    own config) whenever ``git add`` looks at the entry, and an agent may have made both the
    repository and its config.  So the callers leave these paths out of ``add`` and record each
    one's HEAD themselves (``nested_head``, then ``update-index --cacheinfo``).
    """
    out = []
    for entry in ls_files_stage.split("\0"):
        meta, _, path = entry.partition("\t")
        parts = meta.split()
        if len(parts) == 3 and parts[0] == "160000" and path and os.path.lexists(work_tree / path / ".git"):
            out.append((path, parts[1]))
    return out


def nested_head(repo: Path, timeout_s: float = 20.0) -> str | None:
    """The commit checked out in a nested repository (``rev-parse``: reads its config, runs nothing
    of it); None when there is none to read."""
    try:
        r = subprocess.run(["git", "-C", str(repo), *CONFIG, "rev-parse", "--verify", "--quiet", "HEAD^{commit}"],
                           capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=timeout_s,
                           env=plain_env(), check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    head = r.stdout.strip()
    return head if r.returncode == 0 and len(head) in (40, 64) else None


def stage_nested_heads(git: Callable[..., object], work_tree: Path, nested: list[tuple[str, str]],
                       timeout_s: float = 20.0) -> None:
    """After an ``add`` that left ``nested`` (``nested_repositories``) out, record where each is
    checked out now, as ``add`` would have: ``git("update-index", "--cacheinfo", ...)`` for each
    one whose HEAD moved (``git`` runs git over ``work_tree``'s index)."""
    for path, staged in nested:
        head = nested_head(work_tree / path, timeout_s)
        if head is not None and head != staged:
            git("update-index", "--cacheinfo", f"160000,{head},{path}")


def exclude_literal(paths: list[str]) -> list[str]:
    """Pathspecs leaving exactly ``paths`` out."""
    return [f":(exclude,literal){p}" for p in paths]
