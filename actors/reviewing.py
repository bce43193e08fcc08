"""When to review, who reviews, and the rounds of each assignment (pure: no I/O; ``now`` is an argument).

Theory of operation
-------------------
The review actor (``actors.review``) feeds this module the triggers it reads
from the log, and carries out what it answers.  Per assignment a ``Track``
holds the triggers not yet reviewed, the review in flight (at most one), the
rounds used, the last reviewed commit and the last decision.

* A trigger (``MILESTONE``, ``BLOCKER``, ``REQUEST_REVIEW``, the end of the
  assignment, ``orchctl review``, the fallback timer) is queued.  ``start``
  turns the queue into one review when none is in flight; triggers that come
  meanwhile wait for the next one (coalesced, never lost: each is an event
  in the log, and its label is in the next ``review.requested``).
* Past ``max_review_rounds`` no review starts: the queue is dropped with a
  ``Skip`` (its ``end`` lets dependents start), and when the last decision was
  ``pause_and_clarify`` or ``stop_and_escalate`` the session escalates ("review
  did not converge").  ``log_warning`` lets the work go on (rule 3), so it
  counts as converged.
* A snapshot with the same files as the last reviewed commit is not
  reviewed again (``Skip``).
* The fallback timer: a running assignment with no trigger for
  ``fallback_s`` gets a ``fallback`` trigger (``due``).

Reviewers (``reviewers_for``): the session's other agent CLIs, never the
author's own; the ``command`` reviewer (``[review] command``) when configured
(a program, not a model: it may review a ``command`` author).  ``[review]
reviewers`` is a count (the first N) or a list of agent names.
"""

from __future__ import annotations

from dataclasses import dataclass, field

CLIS = ("claude", "codex", "gemini")
VENDOR = {"claude": "anthropic", "codex": "openai", "gemini": "google"}
LABEL_MAX = 300
NOT_CONVERGED = ("pause_and_clarify", "stop_and_escalate")


def reviewers_for(session_agents: list[str], author: str, setting: int | list[str] | None,
                  command_reviewer: bool) -> list[str]:
    """The agents that review ``author``'s work, in order (another vendor first)."""
    if isinstance(setting, list):  # "command" may be named more than once: each is its own run
        out = []
        for a in setting:
            if a == "command" and command_reviewer or a != "command" and a != author and a not in out:
                out.append(a)
        return out
    others = [a for a in dict.fromkeys(session_agents) if a in CLIS and a != author]
    others.sort(key=lambda a: VENDOR.get(a) == VENDOR.get(author))  # stable: another vendor first
    if command_reviewer:
        others.append("command")
    return others[:setting] if isinstance(setting, int) else others


def label(kind: str, text: str = "") -> str:
    """A trigger as the log and the prompt show it (the author's text is a claim, capped)."""
    text = " ".join(text.split())
    if len(text) > LABEL_MAX:
        text = text[:LABEL_MAX - 1] + "…"
    return f"{kind}: {text}" if text else kind


@dataclass
class InFlight:
    id: str
    round: int
    triggers: list[str]
    gen: int
    reviewers: list[str] = field(default_factory=list)   # agents
    commit: str | None = None
    names: dict[str, int] = field(default_factory=dict)  # reviewer run name -> index into reviewers
    attempts: dict[int, int] = field(default_factory=dict)  # index -> attempt
    verdicts: dict[int, object] = field(default_factory=dict)  # index -> p.ReviewVerdict


@dataclass
class Track:
    gen: int = -1
    pending: list[str] = field(default_factory=list)
    review: InFlight | None = None
    rounds: int = 0
    last_commit: str | None = None
    last_decision: str | None = None
    last_trigger_at: float = 0.0     # monotonic
    running: bool = False
    findings: list[str] = field(default_factory=list)  # open findings to re-check


@dataclass(frozen=True)
class Start:
    """Snapshot the author's work, then review it (round ``review.round``)."""

    session: str
    assignment: str
    review: InFlight


@dataclass(frozen=True)
class Skip:
    session: str
    assignment: str
    reason: str
    triggers: list[str]
    end: bool
    escalate: bool
    gen: int


class Book:
    """Every assignment's ``Track``, by (session, assignment)."""

    def __init__(self, fallback_s: float) -> None:
        self.fallback_s = fallback_s
        self.tracks: dict[tuple[str, str], Track] = {}
        self._n = 0

    def track(self, session: str, assignment: str) -> Track:
        return self.tracks.setdefault((session, assignment), Track())

    def launched(self, session: str, assignment: str, gen: int, now: float) -> None:
        t = self.track(session, assignment)
        t.gen, t.running, t.last_trigger_at = gen, True, now

    def exited(self, session: str, assignment: str) -> None:
        self.track(session, assignment).running = False

    def trigger(self, session: str, assignment: str, text: str, now: float) -> None:
        t = self.track(session, assignment)
        t.pending.append(text)
        t.last_trigger_at = now

    def due(self, now: float) -> list[tuple[str, str]]:
        """Running assignments whose fallback timer ran out (a ``fallback`` trigger is queued for each)."""
        out = []
        for key, t in self.tracks.items():
            if t.running and not t.pending and t.review is None and now - t.last_trigger_at >= self.fallback_s:
                t.pending.append(label("fallback", f"no review for {self.fallback_s:g}s"))
                t.last_trigger_at = now
                out.append(key)
        return out

    def next_due(self) -> float | None:
        """When the next fallback is due (monotonic), if any assignment runs."""
        times = [t.last_trigger_at + self.fallback_s for t in self.tracks.values()
                 if t.running and not t.pending and t.review is None]
        return min(times, default=None)

    def start(self, session: str, assignment: str, max_rounds: int, new_id) -> Start | Skip | None:
        """A review of the queued triggers, a skip when the rounds are used up, or None (nothing to do now)."""
        t = self.track(session, assignment)
        if t.review is not None or not t.pending:
            return None
        triggers, t.pending = t.pending, []
        end = any(x.startswith("end") for x in triggers)
        if t.rounds >= max_rounds:
            escalate = t.last_decision in NOT_CONVERGED
            reason = ("review did not converge: " if escalate else "") + \
                f"{assignment} had its {max_rounds} review round(s) (max_review_rounds)"
            return Skip(session, assignment, reason, triggers, end, escalate, t.gen)
        t.review = InFlight(id=new_id(), round=t.rounds + 1, triggers=triggers, gen=t.gen)
        return Start(session, assignment, t.review)

    def unchanged(self, session: str, assignment: str) -> Skip:
        """The snapshot has the files last reviewed: the review is dropped (it used no round)."""
        t = self.track(session, assignment)
        r, t.review = t.review, None
        end = any(x.startswith("end") for x in r.triggers)
        return Skip(session, assignment, f"commit {t.last_commit} was reviewed already", r.triggers,
                    end and t.last_decision not in NOT_CONVERGED, False, r.gen)

    def requested(self, session: str, assignment: str, commit: str | None) -> InFlight:
        t = self.track(session, assignment)
        t.review.commit = commit
        t.rounds = t.review.round
        return t.review

    def decided(self, session: str, assignment: str, decision: str, findings: list[str]) -> None:
        t = self.track(session, assignment)
        if t.review is not None:
            t.last_commit = t.review.commit or t.last_commit
        t.review, t.last_decision = None, decision
        t.findings = findings

    def dropped(self, session: str) -> None:
        """A session ended: forget its tracks."""
        for key in [k for k in self.tracks if k[0] == session]:
            del self.tracks[key]
