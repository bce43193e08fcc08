"""The merge module and the worktree module import in either order (no import cycle)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_either_module_imports_first() -> None:
    for first, second in (("merging", "worktrees"), ("worktrees", "merging")):
        code = (f"import actors.{first}, actors.{second}\n"
                "from actors import merging, worktrees\n"
                "assert merging.GitError is worktrees.GitError\n"
                "assert callable(merging.merge_session) and callable(merging.merged_base)\n")
        r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, (first, r.stderr)
