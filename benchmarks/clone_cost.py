"""An assignment's working directory: ``git worktree add`` of the target vs orchd's clone.

    python benchmarks/clone_cost.py [--files 50000] [--repeat 3] [--packed]

Builds a repository of ``--files`` small files in 500 directories (one
commit; ``--packed`` runs ``git gc`` on it first, as a long-lived
repository would be), then times, ``--repeat`` times each:

* **worktree**: ``git worktree add -b B PATH HEAD`` in the target (what
  orchd did before: the agent's git dir lived in the target's ``.git``);
* **clone**: ``actors.worktrees.create_worktree`` (what orchd does now: the
  session's branch repository on first use, then a clone of its own whose
  objects are borrowed through alternates, checked out on its branch);
* **wt-commit**: ``git add --all`` and ``git commit`` in the worktree after
  one file changed (what orchd's commit was before);
* **commit**: ``actors.worktrees.commit_all`` after one file changed (now:
  the commit with the exclude pathspecs, the list of what was left out, and
  publishing the branch into the branch repository).

Prints each run and the medians, in seconds.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from actors import worktrees  # noqa: E402

ENV = {**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b", "GIT_COMMITTER_NAME": "b",
       "GIT_COMMITTER_EMAIL": "b@b"}


def git(cwd: Path, *args: str) -> None:
    r = subprocess.run(["git", "-C", str(cwd), "-c", "gc.auto=0", *args], env=ENV, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"git {' '.join(args)} exited {r.returncode}: {r.stderr.strip()}")


def make_repo(path: Path, files: int, packed: bool) -> None:
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    per_dir = max(1, files // 500)
    for i in range(0, files, per_dir):
        sub = path / f"d{i // per_dir:03d}"
        sub.mkdir(exist_ok=True)
        for j in range(i, min(files, i + per_dir)):
            (sub / f"f{j:05d}.txt").write_text(f"file {j}\n")
    git(path, "add", "-A")
    git(path, "commit", "-qm", f"{files} files")
    if packed:
        git(path, "gc", "-q")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=50_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--packed", action="store_true")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="orchd-clone-bench-"))
    try:
        repo = base / "target"
        t0 = time.perf_counter()
        make_repo(repo, args.files, args.packed)
        print(f"repository: {args.files} files{' (packed)' if args.packed else ''}, "
              f"made in {time.perf_counter() - t0:.1f}s")
        head = worktrees.head_commit(repo)
        rows: dict[str, list[float]] = {"worktree": [], "clone": [], "wt-commit": [], "commit": []}
        for i in range(args.repeat):
            t0 = time.perf_counter()
            git(repo, "worktree", "add", "-q", "-b", f"bench-{i}", str(base / f"wt-{i}"), head)
            rows["worktree"].append(time.perf_counter() - t0)

            (base / f"wt-{i}" / "d000" / "f00000.txt").write_text("changed\n")
            t0 = time.perf_counter()
            git(base / f"wt-{i}", "add", "--all")
            git(base / f"wt-{i}", "commit", "-qm", "bench")
            rows["wt-commit"].append(time.perf_counter() - t0)

            t0 = time.perf_counter()
            path, _ = worktrees.create_worktree(repo, base / "root", f"s{i}", "a", head)
            rows["clone"].append(time.perf_counter() - t0)

            (path / "d000" / "f00000.txt").write_text("changed\n")
            t0 = time.perf_counter()
            worktrees.commit_all(path, "bench")
            rows["commit"].append(time.perf_counter() - t0)
            print(f"run {i + 1}: " + "  ".join(f"{k} {v[-1]:.3f}s" for k, v in rows.items()))
        print("median: " + "  ".join(f"{k} {statistics.median(v):.3f}s" for k, v in rows.items()))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
