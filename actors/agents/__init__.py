"""Agent adapters: one sans-I/O module per CLI (see ``base`` for the
interface).  ``get_adapter(name)`` is the only lookup the daemon uses."""

from __future__ import annotations

from .base import Adapter, Failure, Launch, RunSpec, StreamParser
from .claude import ClaudeAdapter
from .codex import CodexAdapter
from .command import CommandAdapter
from .gemini import GeminiAdapter

ADAPTERS: dict[str, Adapter] = {
    a.name: a for a in (ClaudeAdapter(), CodexAdapter(), GeminiAdapter(), CommandAdapter())
}


def get_adapter(name: str) -> Adapter:
    """The adapter called ``name``; ``KeyError`` names the known ones."""
    try:
        return ADAPTERS[name]
    except KeyError:
        raise KeyError(f"unknown agent {name!r}; known: {', '.join(sorted(ADAPTERS))}") from None


__all__ = ["ADAPTERS", "Adapter", "Failure", "Launch", "RunSpec", "StreamParser", "get_adapter"]
