"""Config reload (SIGHUP): which settings can change while the daemon runs (pure).

``diff(old, new)`` names the top-level settings that changed, split into
those applied at once and those that need a restart; ``apply`` copies the
applied ones into the running ``Config`` object (between two messages of the
one event loop, so no actor sees half a config).

Applied without a restart (``LIVE``): ``limits`` (every launch and budget
check from now on; a session's own ``--limit`` overrides stay on top),
``agents`` (binaries, profiles, models, homes of new runs), ``roles`` and
``agent_preference`` (new sessions' default plans), ``max_line_bytes``,
``agent_nice`` and ``allow_unconfined`` (new runs), ``log_level`` and ``log_format``, and the
notify targets (``notify``) where the config has them.  Anything else
(endpoints, directories, ``metrics_port``, queue sizes, ``stop_grace_s``,
``fault_injection``) is bound when the daemon starts: a change is reported as
needing a restart and the old value stays in force.
"""

from __future__ import annotations

from orchd.config import Config

LIVE = frozenset({"limits", "agents", "roles", "agent_preference", "max_line_bytes", "agent_nice", "allow_unconfined",
                  "log_level", "log_format", "notify"})


def diff(old: Config, new: Config) -> tuple[list[str], list[str]]:
    """``(applied, needs_restart)``: the changed top-level settings, sorted."""
    applied, restart = [], []
    for name in type(old).model_fields:
        if getattr(old, name) == getattr(new, name):
            continue
        (applied if name in LIVE else restart).append(name)
    return sorted(applied), sorted(restart)


def apply(running: Config, new: Config, names: list[str]) -> None:
    """Copy the settings ``names`` of ``new`` into the running config."""
    for name in names:
        setattr(running, name, getattr(new, name))
