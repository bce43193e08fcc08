"""The merge module and the worktree module import in either order (no import cycle)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_either_module_imports_first_and_worktrees_still_exposes_the_merge() -> None:
    for first, second in (("merging", "worktrees"), ("worktrees", "merging")):
        code = (f"import actors.{first}, actors.{second}\n"
                "from actors import merging, worktrees\n"
                "assert worktrees.merge_session is merging.merge_session\n"
                "assert worktrees.merged_base is merging.merged_base\n"
                "assert worktrees.MergeResult is merging.MergeResult\n")
        r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, (first, r.stderr)
