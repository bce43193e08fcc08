"""What the review and recovery actors share as followers of the journal.

Both keep the supervisor's ``Projection`` of the log: rebuilt from the log at
start (``rebuild``), then moved on by every ``Committed`` event the journal
forwards (``follow``).  Both drop a message that does not decode with a log
line and a count, and go on.  What each does with an event is its own.

Both act on live sessions only, so each forgets a session once it has ended
(its last event is still handed on): the supervisor's projection is the one
that answers ``status`` for every session.  Without that, each follower held
a second and a third copy of every session the daemon ever ran (~15 KB each per
five-assignment session here), rebuilt from the whole log at every start.
"""

from __future__ import annotations

from pathlib import Path

import msgspec

from actors.sessions import Projection, SessionView
from orchd import log, metrics, wire
from orchd import protocol as p
from orchd.store import LogReader

_log = log.get("actors.following")


class ProjectionFollower:
    """Base of a journal follower that keeps a ``Projection``: ``name`` labels its logs and
    metrics, ``inbox_decoder`` decodes its mailbox."""

    name: str
    inbox_decoder: wire.InboxDecoder
    proj: Projection
    log_path: Path

    def decode(self, raw: bytes) -> p.Msg | None:
        """A mailbox message, or None (logged and counted) when it does not decode."""
        try:
            return self.inbox_decoder.decode(raw)
        except msgspec.DecodeError as exc:
            metrics.bad_messages.labels(self.name, getattr(exc, "code", "invalid")).inc()
            _log.warning(f"{self.name}_bad_message", error=str(exc)[:200])
            return None

    def follow(self, body: bytes) -> tuple[p.Stamp, p.Ev, SessionView] | None:
        """Apply one committed event; its stamp, body and session, or None when it is not a
        session's (or unreadable: logged)."""
        try:
            stamp, ev = wire.decode_event(body)
        except msgspec.DecodeError as exc:
            _log.warning("unreadable_event", actor=self.name, error=str(exc)[:200])
            return None
        self.proj.apply(stamp, ev)
        s = self.proj.sessions.get(stamp.session or "")
        if s is None:
            return None
        if s.state in p.SESSION_TERMINAL:
            self.proj.forget(s.id)
        return stamp, ev, s

    async def rebuild(self) -> list[tuple[p.Stamp, p.Ev]]:
        """The projection of the live sessions from the log (read in batches, in a thread); the
        events of those sessions it was built from, each session's in order.  An ended session's
        events are let go as soon as it ends in the log."""
        from actors.supervisor import FOLLOWED_AGENT_KINDS
        proj = self.proj
        metrics.follower_sessions.labels(self.name).set_function(lambda: len(proj.sessions))
        live: dict[str, list[tuple[p.Stamp, p.Ev]]] = {}
        async for rows in LogReader.state_batches(self.log_path, "agent.", FOLLOWED_AGENT_KINDS):
            for _, body in rows:
                try:
                    stamp, ev = wire.decode_event(body)
                except msgspec.DecodeError:
                    continue
                proj.apply(stamp, ev)
                s = proj.sessions.get(stamp.session or "")
                if s is None:
                    continue
                if s.state in p.SESSION_TERMINAL:
                    proj.forget(s.id)
                    live.pop(s.id, None)
                else:
                    live.setdefault(s.id, []).append((stamp, ev))
        return [e for events in live.values() for e in events]
