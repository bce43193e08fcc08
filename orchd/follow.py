"""Which committed events the journal forwards to which follower (pure).

A follower is a mailbox (the session supervisor, the review and
recovery actors, the notifier) that gets ``Committed`` batches of the kinds it
asked for, and ``LogHealth`` when the log fails and recovers.  It never
depends on the droppable PUB pipe.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Follows:
    """The kinds a follower gets: those starting with one of ``prefixes`` or in ``kinds``, minus ``exclude``."""

    prefixes: tuple[str, ...] = ()
    kinds: frozenset[str] = frozenset()
    exclude: frozenset[str] = frozenset()

    def wants(self, kind: str) -> bool:
        return kind not in self.exclude and (kind in self.kinds or kind.startswith(self.prefixes))


SUPERVISOR_FOLLOWS = Follows(
    prefixes=("worker.", "review.", "recovery."),
    kinds=frozenset({"agent.session", "agent.usage", "agent.result", "agent.error", "decision.made"}),
    exclude=frozenset({"worker.launching", "review.run"}),  # the supervisor emits them and applies them itself
)
"""What the session supervisor's projection needs and does not produce itself."""


@dataclass(frozen=True)
class Follower:
    """A mailbox the journal forwards committed events to (``Committed``, the kinds in
    ``follows``) and, when ``log_health``, tells when the log fails and recovers (``LogHealth``)."""

    endpoint: str
    follows: Follows = field(default_factory=Follows)
    log_health: bool = True
