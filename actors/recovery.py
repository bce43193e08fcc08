"""The recovery actor: every failed assignment run is relaunched, parked, escalated or failed.

Theory of operation
-------------------
One actor with its own mailbox, a follower of the journal like the review
actor: it gets the committed session, worker and agent events it needs in
``Committed`` batches and keeps the same ``Projection`` the supervisor keeps
(``actors.sessions``).  When an assignment's current run ends ``failed``
(never ``stopped``: a commanded stop or pause is not recovered) and its
session is not being stopped, it asks the pure policy
(``actors.recovering.decide``) and logs two events, stamped with the failed
run's generation:

* ``recovery.detected``: the code (the catalogue's, ``stalled`` when the
  stall limit ended the run), the matched message and the line it came from;
* ``recovery.action``: relaunch (with its delay, fix and attempt), park
  (until a usage limit's reset plus the margin), escalate or fail (with the
  command a human runs to take over).

The session supervisor follows ``recovery.action`` and carries it out
(``actors.decide``): a relaunch goes through its usual launch path (the
worker waits the backoff), an escalation stops the session ``escalated``,
a failure ends it ``failed`` once nothing else can run.  Until the actor has
decided, the supervisor does not end the session.

Timers are messages: a parked assignment's ``until`` (wall clock, since a
reset time is a time of day) is the actor's next wake-up; when it is due the
actor logs ``recovery.action resume_after_quota`` and the supervisor resumes
the run.  Nothing lives only in memory: on a (re)start the actor waits until
the journal has logged everything its predecessor sent (a ``Barrier``), then
rebuilds from the log: failed runs with no action yet are decided, parks are
waited out to the same ``until``.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from actors import recovering
from actors.decide import effective_limits
from actors.recovering import Decision, Failed, Policy
from actors.sessions import Projection, SessionView, WorkerView
from orchd import log, metrics, redact, wire
from orchd import protocol as p
from orchd.actor import JournalBacklog, Mailbox, Outbox
from orchd.config import Config
from orchd.follow import Follows
from orchd.store import LogReader

_log = log.get("actors.recovery")

RECOVERY_FOLLOWS = Follows(
    prefixes=("session.", "worker."),
    kinds=frozenset({"agent.session", "agent.usage", "agent.result", "agent.error"}),
    exclude=frozenset({"worker.log", "worker.bad_line"}))
"""What the recovery actor needs (its own ``recovery.*`` events it applies as it emits them)."""

recovery_inbox = wire.InboxDecoder(p.RecoveryInbox, "recovery")
BARRIER_TIMEOUT_S = 2.0


def policy_for(cfg: Config, s: SessionView) -> Policy:
    """The bounds for a session: ``[recovery]``, with ``[limits] max_relaunches`` / ``backoff_cap_s``
    (config or the session's ``--limit``) winning when set."""
    limits = effective_limits(cfg.limits, s.limits)
    r = cfg.recovery
    explicit = "max_relaunches" in s.limits or "max_relaunches" in cfg.limits.model_fields_set
    return Policy(max_relaunches=limits.max_relaunches if explicit else r.max_relaunches, window_s=r.window_s,
                  backoff_base_s=r.backoff_base_s, backoff_cap_s=limits.backoff_cap_s, jitter=r.jitter,
                  quota_margin_s=r.quota_margin_s, max_quota_wait_s=r.max_quota_wait_s)


def failed_run(s: SessionView, w: WorkerView) -> Failed:
    return Failed(agent=w.spec.agent, failure=w.failure, stalled=w.stalled, retry=w.spec.retry,
                  session_id=w.agent_session_id, resumed=w.resumed, produced_output=w.produced_output,
                  relaunch_ts=tuple(w.relaunch_ts), quota_since=w.quota_since, reason=w.reason or "",
                  last_text=w.result_text, cwd=w.worktree or s.target)


def needs_decision(s: SessionView, w: WorkerView) -> bool:
    return (s.state not in p.SESSION_TERMINAL and s.stop_reason is None and w.run_kind == "assignment"
            and w.state == "failed" and w.gen >= 0 and w.recovery is None)


class RecoveryActor:
    def __init__(self, cfg: Config, log_path: Path, inbox: Mailbox, out: Outbox, journal_ep: str,
                 rng: random.Random | None = None) -> None:
        self.cfg, self.log_path, self.inbox, self.out, self.journal_ep = cfg, log_path, inbox, out, journal_ep
        self.proj = Projection(recovery_on=True)
        self.rng = rng or random.Random()
        self._backlog = JournalBacklog(out, journal_ep)

    # ------------------------------------------------------------ lifecycle

    async def run(self, restarts: int = 0) -> None:
        await self._barrier()
        await self._rebuild()
        while True:
            due = self._next_due()
            wait = None if due is None else max(0.0, due - time.time())
            raws = await self.inbox.recv_batch(0.05 if self._backlog else wait)
            for raw in raws:
                self._handle(raw)
            if due is not None and time.time() >= due:
                self._handle(p.RecoveryTick())
            self._backlog.flush()

    async def _barrier(self) -> None:
        """Wait until the log holds everything a predecessor sent (so nothing is decided twice)."""
        token = secrets.token_hex(8)
        await self.out.send(self.journal_ep, wire.pack(p.Barrier(token=token, reply_to=self.inbox.endpoint)))
        deadline = time.monotonic() + BARRIER_TIMEOUT_S
        while (left := deadline - time.monotonic()) > 0:
            for raw in await self.inbox.recv_batch(left):
                try:
                    msg = recovery_inbox.decode(raw)
                except msgspec.DecodeError:
                    continue  # committed batches come again from the log read below
                if isinstance(msg, p.BarrierReached) and msg.token == token:
                    return
        _log.warning("recovery_barrier_timeout", timeout_s=BARRIER_TIMEOUT_S)

    async def _rebuild(self) -> None:
        from actors.supervisor import FOLLOWED_AGENT_KINDS
        rows = await asyncio.to_thread(LogReader.read_state, self.log_path, "agent.", FOLLOWED_AGENT_KINDS)
        for _, body in rows:
            try:
                stamp, ev = wire.decode_event(body)
            except msgspec.DecodeError:
                continue
            self.proj.apply(stamp, ev)
        pending = 0
        for s in list(self.proj.sessions.values()):
            for w in s.assignments():
                if needs_decision(s, w):
                    self._decide(s, w)
                elif w.state == "failed" and w.recovery is not None and w.recovery.action == "park":
                    pending += 1
        _log.info("recovery_state_rebuilt", events=len(rows), parked=pending)

    # ------------------------------------------------------------ the one match

    def _handle(self, item: bytes | p.Msg) -> None:
        if isinstance(item, bytes):
            try:
                item = recovery_inbox.decode(item)
            except msgspec.DecodeError as exc:
                metrics.bad_messages.labels("recovery", getattr(exc, "code", "invalid")).inc()
                _log.warning("recovery_bad_message", error=str(exc)[:200])
                return
        match item:
            case p.Committed(events=bodies):
                for body in bodies:
                    self._event(body)
            case p.LogHealth() | p.BarrierReached():
                pass
            case p.RecoveryTick():
                self._wake(time.time())
            case p.Crash():
                raise RuntimeError("injected fault")
            case _:
                _log.warning("recovery_unexpected_message", kind=type(item).__name__)

    def _event(self, body: bytes) -> None:
        try:
            stamp, ev = wire.decode_event(body)
        except msgspec.DecodeError as exc:
            _log.warning("unreadable_event", error=str(exc)[:200])
            return
        self.proj.apply(stamp, ev)
        s = self.proj.sessions.get(stamp.session or "")
        if s is None:
            return
        if isinstance(ev, p.SessionStateChanged) and ev.state == "running":
            self._wake(time.time())  # resumed after a pause: a park that came due meanwhile goes on now
        w = s.workers.get(stamp.worker or "")
        if isinstance(ev, p.WorkerExited) and w is not None and stamp.gen == w.gen and needs_decision(s, w):
            self._decide(s, w)

    # ------------------------------------------------------------ decisions and timers

    def _decide(self, s: SessionView, w: WorkerView) -> None:
        f = failed_run(s, w)
        now = time.time()
        d = recovering.decide(f, policy_for(self.cfg, s), now, self.rng.random())
        message = w.failure.message if w.failure is not None else (w.reason or "")
        source = (w.failure.source if w.failure is not None else "") or w.last_error or w.reason or message
        self._emit(s, w, p.RecoveryDetected(code=d.code, message=message[:2000], source=source[:2000],
                                            catalogue_action=w.failure.action if w.failure is not None else ""))
        self._emit(s, w, _action(d))
        _log.info("recovery_decided", session=s.id, worker=w.spec.name, gen=w.gen, code=d.code, action=d.action,
                  delay_s=round(d.delay_s, 3), attempt=d.attempt)

    def _next_due(self) -> float | None:
        times = [w.recovery.until for s in self.proj.sessions.values() for w in s.parked()
                 if s.state == "running" and s.stop_reason is None and w.recovery.until is not None]
        return min(times, default=None)

    def _wake(self, now: float) -> None:
        """Parked assignments whose reset (plus the margin) has come are resumed."""
        for s in list(self.proj.sessions.values()):
            if s.state != "running" or s.stop_reason is not None:
                continue  # a paused session resumes its parks when it runs again
            for w in s.parked():
                r = w.recovery
                if r.until is not None and r.until <= now:
                    self._emit(s, w, p.RecoveryAction(
                        action="resume_after_quota", code=r.code, reason=f"usage limit reset: {r.reason}"[:600],
                        resume=r.resume, reset_at=r.reset_at, until=r.until, env=dict(r.env)))
                    _log.info("recovery_quota_resumed", session=s.id, worker=w.spec.name, gen=w.gen)

    # ------------------------------------------------------------ out

    def _emit(self, s: SessionView, w: WorkerView, ev: p.Ev) -> None:
        """Log ``ev`` for ``w``'s current run, and apply it at once (the actor does not follow its own kinds)."""
        ts = time.time()
        self.proj.apply(p.Stamp(seq=0, ts=ts, session=s.id, worker=w.spec.name, agent=w.spec.agent, gen=w.gen), ev)
        self._backlog.send(wire.append_one(s.id, redact.current().event(ev), ts, worker=w.spec.name,
                                           agent=w.spec.agent, gen=w.gen))


def _action(d: Decision) -> p.RecoveryAction:
    return p.RecoveryAction(action=d.action, code=d.code, reason=d.reason, delay_s=round(d.delay_s, 3),
                            attempt=d.attempt, until=d.until, reset_at=d.reset_at, resume=d.resume, env=dict(d.env),
                            fix=d.fix, summary=d.summary, takeover=d.takeover)


# ---------------------------------------------------------------- the per-failure step, as before

@dataclass(frozen=True)
class Relaunch:
    reason: str
    resume: bool
    delay_s: float = 0.0
    env: dict[str, str] = field(default_factory=dict)


def decide(failure: p.WorkerFailure | None, agent: str, relaunches: int, max_relaunches: int,
           has_session: bool, backoff_cap_s: float) -> Relaunch | None:
    """One failure alone (no window, no jitter): a relaunch, or None.  ``recovering.decide`` is the policy."""
    now = 0.0
    f = Failed(agent=agent, failure=failure, session_id="s" if has_session else None,
               relaunch_ts=(now,) * relaunches, produced_output=True)
    d = recovering.decide(f, Policy(max_relaunches=max_relaunches, backoff_cap_s=backoff_cap_s, jitter=0.0),
                          now, 0.0)
    if d.action != "relaunch":
        return None
    return Relaunch(reason=d.reason, resume=d.resume, delay_s=d.delay_s, env=dict(d.env))
