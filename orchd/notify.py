"""What to tell a human, and when (pure: committed events in, notifications out).

Theory of operation
-------------------
orchd notifies only when a human is needed or a session has ended:

==========  ==========================================  ============================
situation   event                                       what the human can do
==========  ==========================================  ============================
question    ``session.question`` (a review's concerns,  ``orchctl answer S "..."``
            or an agent's ``QUESTION:``)
escalated   ``session.state`` → ``escalated``           ``orchctl status S``
failed      ``session.state`` → ``failed``              ``orchctl status S``
budget      ``worker.limit`` ``tokens`` / ``cost``      ``orchctl status S``
quota       ``recovery.action`` ``park`` (a usage       ``orchctl status S`` (it resumes
            limit; the run resumes by itself after      by itself; ``orchctl stop S``
            its reset)                                  gives up)
done        ``session.state`` → ``done``                ``orchctl status S``
resolved    ``session.answered``; ``session.state`` →   ``orchctl status S``
            ``running`` (resumed) or ``stopped`` while
            a question or an escalation was open
==========  ==========================================  ============================

Each notification has a dedupe **key** naming its situation: the same key
for every repeat of it (another ``session.question`` while one is still
open, the ``worker.limit`` of each stopped worker) and for every retry of
its delivery, so a receiver can drop duplicates.  Keys:
``<session>/question/<seq of the event that opened it>``,
``<session>/escalated``, ``<session>/failed``, ``<session>/done``,
``<session>/budget/<tokens|cost>``, ``<session>/quota/<worker>/<gen>``, and ``<opener's key>/resolved``.  The
tracker remembers the keys it has produced (the last ``remember``) and
produces each once.

A session that waits for an answer and then escalates, fails or ends
``done`` gets that notification, which names the question it supersedes
(``resolves``); "resolved" itself is sent when the session moves on without
a new situation (answered, resumed, stopped).

**Restarts.**  The notifier reads the log's followed events through the
tracker before it handles new ones.  Those committed before the daemon
started (and, after a crash of the notifier, those its previous life
handled) go through ``Tracker.replay``: they restore the open situations (so
an answer after a restart still sends "resolved") and mark their keys seen,
so nothing is sent again for them.  Events committed after the daemon
started are notified even if they came while the notifier was starting.
The other side of that choice: a notification whose delivery was under way
when the daemon (or the notifier) stopped or crashed is not sent again (at
most once).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Literal

import msgspec

from orchd import protocol as p
from orchd.follow import Follows

Situation = Literal["question", "escalated", "failed", "budget", "done", "resolved", "quota"]

FOLLOWS = Follows(kinds=frozenset({"session.state", "session.question", "session.answered", "worker.limit",
                                   "recovery.action"}))
"""The committed events the notifier needs."""
BUDGET_LIMITS = frozenset({"tokens", "cost"})  # worker.limit values that mean "budget exhausted"
REASON_CHARS = 1000


class Notification(msgspec.Struct, frozen=True, kw_only=True):
    """What goes to a channel, as JSON (a command's stdin, a webhook's body)."""

    situation: Situation
    key: str
    session: str
    reason: str
    action: str               # the exact orchctl line that helps
    message: str              # one line for a human: what happened and what to do
    seq: int                  # the event that caused it
    ts: float                 # that event's time (wall clock, seconds)
    worker: str | None = None
    resolves: str | None = None   # the key of the open situation this one ends
    opened_as: Situation | None = None  # "resolved": the situation it resolves (for channel filters)


def action_for(situation: Situation, session: str) -> str:
    if situation == "question":
        return f'orchctl answer {session} "<your answer>"'
    return f"orchctl status {session}"


_SAYS: dict[str, str] = {
    "question": "is waiting for your answer",
    "escalated": "was escalated and needs you",
    "failed": "failed",
    "budget": "ran out of budget",
    "quota": "is waiting for a usage limit to reset",
    "done": "is done",
    "resolved": "moved on",
}


def _one_line(text: str, limit: int = REASON_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def make(situation: Situation, key: str, stamp: p.Stamp, reason: str, worker: str | None = None,
         resolves: str | None = None, opened_as: Situation | None = None) -> Notification:
    session = stamp.session or "-"
    reason = _one_line(reason)
    action = action_for(situation, session)
    message = f"orchd: session {session} {_SAYS[situation]}" + (f": {reason}" if reason else "") + f" -> {action}"
    return Notification(situation=situation, key=key, session=session, reason=reason, action=action,
                        message=message, seq=stamp.seq, ts=stamp.ts, worker=worker, resolves=resolves,
                        opened_as=opened_as)


def wanted(n: Notification, situations: list[str] | tuple[str, ...] | frozenset[str]) -> bool:
    """Does a channel configured for ``situations`` get ``n``?  "resolved" goes where its opener went."""
    return (n.opened_as if n.situation == "resolved" else n.situation) in situations


class Tracker:
    """Open situations per session and the keys already produced."""

    def __init__(self, remember: int = 10_000) -> None:
        self.open: dict[str, Notification] = {}   # session -> its open question / escalation
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._remember = remember

    def replay(self, stamp: p.Stamp, ev: p.Ev) -> None:
        """An event committed before we started: update the state, produce nothing."""
        self.feed(stamp, ev)

    def feed(self, stamp: p.Stamp, ev: p.Ev) -> list[Notification]:
        """The notifications this committed event calls for (none, usually)."""
        sid = stamp.session
        if sid is None:
            return []
        match ev:
            case p.SessionQuestion(question=question, worker=worker):
                if sid in self.open and self.open[sid].situation == "question":
                    return []  # a repeat of the situation already open
                return self._opened(make("question", f"{sid}/question/{stamp.seq}", stamp, question,
                                         worker or stamp.worker))
            case p.SessionAnswered():
                return self._resolved(stamp, "answered")
            case p.WorkerLimit(limit=limit, detail=detail) if limit in BUDGET_LIMITS:
                return self._new(make("budget", f"{sid}/budget/{limit}", stamp, detail or f"{limit} budget exhausted",
                                      stamp.worker))
            case p.RecoveryAction(action="park", reason=reason):
                return self._new(make("quota", f"{sid}/quota/{stamp.worker}/{stamp.gen}", stamp, reason,
                                      stamp.worker))
            case p.SessionStateChanged(state="running"):
                return self._resolved(stamp, "resumed")
            case p.SessionStateChanged(state="stopped", reason=reason):
                return self._resolved(stamp, f"stopped: {reason}" if reason else "stopped")
            case p.SessionStateChanged(state="escalated", reason=reason):
                return self._opened(make("escalated", f"{sid}/escalated", stamp, reason or "",
                                         resolves=self._open_key(sid)))
            case p.SessionStateChanged(state=("failed" | "done") as state, reason=reason):
                resolves = self._open_key(sid)
                self.open.pop(sid, None)
                return self._new(make(state, f"{sid}/{state}", stamp, reason or "", resolves=resolves))
        return []

    def _open_key(self, sid: str) -> str | None:
        n = self.open.get(sid)
        return n.key if n is not None else None

    def _opened(self, n: Notification) -> list[Notification]:
        self.open[n.session] = n
        return self._new(n)

    def _resolved(self, stamp: p.Stamp, how: str) -> list[Notification]:
        opened = self.open.pop(stamp.session or "", None)
        if opened is None:
            return []
        return self._new(make("resolved", f"{opened.key}/resolved", stamp, f"{opened.situation} {how}",
                              resolves=opened.key, opened_as=opened.situation))

    def _new(self, n: Notification) -> list[Notification]:
        if n.key in self._seen:
            return []
        self._seen[n.key] = None
        while len(self._seen) > self._remember:
            self._seen.popitem(last=False)
        return [n]


def retry_delay_s(attempt: int, first_s: float, cap_s: float, jitter: float) -> float:
    """Wait before retry ``attempt`` (1 = the first retry): ``first_s`` doubling up to ``cap_s``,
    times ``0.5 + jitter / 2`` (``jitter`` in [0, 1): "equal jitter", so retries of many
    notifications do not arrive together)."""
    base = min(cap_s, first_s * 2 ** min(attempt - 1, 30))
    return base * (0.5 + jitter / 2)


def retryable_status(status: int) -> bool:
    """HTTP statuses worth another attempt: the server's trouble, not our request's."""
    return status >= 500 or status in (408, 429)
