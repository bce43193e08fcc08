"""Where the real agent CLIs live for tests (installed by scripts/install-agents.sh)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
AGENT_BIN = REPO / ".tools" / "agents" / "node_modules" / ".bin"
AGENTS = ("claude", "codex", "gemini")


def agent_env_path(base: str | None = None) -> str:
    """PATH for a CLI subprocess: the agent bin dir first (gemini and codex are
    node scripts and need `node`; the CLIs' own children find each other here)."""
    base = os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin") if base is None else base
    return f"{AGENT_BIN}{os.pathsep}{base}"


def agent_path(name: str) -> Path | None:
    """The installed CLI, or None when it is missing."""
    path = AGENT_BIN / name
    return path if path.exists() and shutil.which(str(path)) else None


def require_agent(name: str) -> Path:
    """The installed CLI; fail the test (with the fix) when it is missing.

    Not a skip: scripts/setup.sh installs the CLIs, so a missing one means a
    broken setup, and a skipped test would hide it."""
    path = agent_path(name)
    if path is None:
        pytest.fail(f"{name} not installed: run scripts/install-agents.sh")
    return path
