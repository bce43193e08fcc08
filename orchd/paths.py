"""Where the daemon's runtime and state directories are (light: orchctl imports it)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def default_runtime_dir() -> Path:
    """``$ORCHD_RUNTIME_DIR``, else systemd's ``$RUNTIME_DIRECTORY``, else
    ``$XDG_RUNTIME_DIR/orchd``, else ``<tmp>/orchd-<uid>``."""
    env = os.environ
    if env.get("ORCHD_RUNTIME_DIR"):
        return Path(env["ORCHD_RUNTIME_DIR"])
    if env.get("RUNTIME_DIRECTORY"):
        return Path(env["RUNTIME_DIRECTORY"].split(":")[0])
    if env.get("XDG_RUNTIME_DIR"):
        return Path(env["XDG_RUNTIME_DIR"]) / "orchd"
    return Path(tempfile.gettempdir()) / f"orchd-{os.getuid()}"


def default_state_dir() -> Path:
    """``$ORCHD_STATE_DIR``, else systemd's ``$STATE_DIRECTORY``, else
    ``$XDG_STATE_HOME/orchd``, else ``~/.local/state/orchd``."""
    env = os.environ
    if env.get("ORCHD_STATE_DIR"):
        return Path(env["ORCHD_STATE_DIR"])
    if env.get("STATE_DIRECTORY"):
        return Path(env["STATE_DIRECTORY"].split(":")[0])
    if env.get("XDG_STATE_HOME"):
        return Path(env["XDG_STATE_HOME"]) / "orchd"
    return Path.home() / ".local" / "state" / "orchd"


def control_endpoint(runtime_dir: Path) -> str:
    return f"ipc://{runtime_dir}/control"


def events_endpoint(runtime_dir: Path) -> str:
    return f"ipc://{runtime_dir}/events"
