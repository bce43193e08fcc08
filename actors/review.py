"""The review actor: triggers → snapshot → reviewer runs → verdicts → decision.

Theory of operation
-------------------
One actor with its own mailbox, a follower of the journal: it gets the
committed events it needs (sessions, workers, reviewer runs' results) in
``Committed`` batches, keeps the same ``Projection`` the supervisor keeps
(``actors.sessions``) plus the per-assignment review ``Book``
(``actors.reviewing``, pure), and handles one message at a time in one
``match``.

A trigger queues a review; when none of that assignment is in flight, a
workspace thread records the author's working directory as a commit and
checks it out read-only (``actors.snapshots``); ``SnapshotReady`` comes back
as a message.  The actor then logs ``review.requested`` and asks the session
supervisor to run each reviewer (``LaunchReviewer``): a reviewer run is a
worker of the session (run kind ``reviewer``, profile ``readonly``, the
review deadline as its wall time), so rehearsals, budgets, costs and crash
handling apply to it as to any run.  Each reviewer run's end comes back
through the log; its answer is parsed (``actors.verdicts``), asked again
once when invalid or failed, then counted as ``concern`` with the reason.
When every reviewer has a verdict the policy (``actors.review_policy``)
decides and ``decision.made`` is logged.  The supervisor follows the
decisions and carries them out (pause and ask, escalate, gate dependents).

Every review's prompts, raw answers and verdicts are kept under
``<state dir>/reviews/<session>/<review id>/`` (0600, like every file orchd writes).
The fallback timer is a ``ReviewTick`` the actor gives itself when its
mailbox stays quiet until the next fallback is due.
"""

from __future__ import annotations

import secrets
import time
from pathlib import Path

import zmq

from actors import prompts, review_policy, reviewing, snapshots, verdicts, workspace
from actors.decide import effective_limits
from actors.following import ProjectionFollower
from actors.sessions import Projection, SessionView, WorkerView
from actors.worker import mailbox_endpoint
from orchd import log, redact, wire
from orchd import protocol as p
from orchd.actor import JournalBacklog, Mailbox, Outbox
from orchd.config import Config
from orchd.follow import Follows

_log = log.get("actors.review")

REVIEW_FOLLOWS = Follows(prefixes=("session.", "worker."),
                         kinds=frozenset({"agent.result", "agent.session", "agent.usage", "review.run"}))
"""What the review actor needs and does not produce itself."""

review_inbox = wire.InboxDecoder(p.ReviewInbox, "review")
TRIGGERS = {p.WorkerMilestone: "milestone", p.WorkerBlocker: "blocker", p.WorkerReviewRequest: "review request"}
MAX_ATTEMPTS = 2  # an invalid answer or a failed run is asked again once


def review_on(cfg: Config):
    """``Projection.review_on``: an assignment is reviewed when it has a reviewer and rounds are allowed."""
    def on(s: SessionView, w: WorkerView) -> bool:
        limits = effective_limits(cfg.limits, s.limits)
        if limits.max_review_rounds <= 0 or w.run_kind != "assignment":
            return False
        return bool(reviewers(cfg, s, w))
    return on


def reviewers(cfg: Config, s: SessionView, w: WorkerView) -> list[str]:
    agents = [a.spec.agent for a in s.assignments()]
    return reviewing.reviewers_for(agents, w.spec.agent, cfg.review.reviewers, bool(cfg.review.command))


class ReviewActor(ProjectionFollower):
    name = "review"
    inbox_decoder = review_inbox

    def __init__(self, cfg: Config, log_path: Path, inbox: Mailbox, out: Outbox, journal_ep: str,
                 supervisor_ep: str) -> None:
        self.cfg, self.log_path, self.inbox, self.out = cfg, log_path, inbox, out
        self.journal_ep, self.supervisor_ep = journal_ep, supervisor_ep
        self.proj = Projection(review_on(cfg))
        self.book = reviewing.Book(cfg.review.fallback_s)
        self._backlog = JournalBacklog(out, journal_ep)
        self._running: dict[str, tuple[str, str]] = {}  # review id -> (session, assignment)
        self._context: dict[str, tuple[str, str, str | None]] = {}
        self._capped: set[tuple[str, str]] = set()  # reviewer runs told to stop for the token cap  # review id -> (checkout, diff, check output)

    # ------------------------------------------------------------ lifecycle

    async def run(self, restarts: int = 0) -> None:
        self._workspace = workspace.Workspace(self._post)
        try:
            await self._rebuild()
            while True:
                due = self.book.next_due()
                wait = None if due is None else max(0.0, due - time.monotonic())
                raws = await self.inbox.recv_batch(0.05 if self._backlog else wait)
                if not raws and due is not None and time.monotonic() >= due:
                    self._handle(p.ReviewTick())
                for raw in raws:
                    self._handle(raw)
                self._backlog.flush()
        finally:
            await self._workspace.close(grace_s=1.0)

    async def _rebuild(self) -> None:
        """State from the log; reviews that were in flight are asked for again, ends still to review too."""
        events = await self.rebuild()
        now = time.monotonic()
        for stamp, ev in events:
            sid = stamp.session
            match ev:
                case p.ReviewRequested(assignment=a, round=rnd):
                    t = self.book.track(sid, a)
                    t.rounds = max(t.rounds, rnd)
                case p.DecisionMade(assignment=a, decision=decision):
                    self.book.track(sid, a).last_decision = decision
        for s in self.proj.sessions.values():
            if s.state in p.SESSION_TERMINAL:
                continue
            for w in s.assignments():
                t = self.book.track(s.id, w.spec.name)
                t.gen = w.gen
                inflight = [r for r in s.reviews.values() if r.assignment == w.spec.name and r.decision is None]
                for r in inflight:
                    t.rounds = min(t.rounds, r.round - 1)
                    t.pending += r.triggers
                done = [r for r in s.reviews.values() if r.assignment == w.spec.name and r.decision is not None]
                if done:
                    t.last_commit = done[-1].commit
                if w.state in ("running", "paused"):
                    self.book.launched(s.id, w.spec.name, w.gen, now)
                elif w.state == "done" and w.reviewed and not w.end_reviewed and not inflight:
                    t.pending.append(reviewing.label("end", "the assignment ended (again, after a restart)"))
                self._start(s, w.spec.name)
        _log.info("review_state_rebuilt", events=len(events))

    # ------------------------------------------------------------ the one match

    def _handle(self, item: bytes | p.Msg) -> None:
        if isinstance(item, bytes) and (item := self.decode(item)) is None:
            return
        match item:
            case p.Committed(events=bodies):
                for body in bodies:
                    self._event(body)
            case p.LogHealth():
                pass
            case p.ReviewNow(session=sid, worker=name):
                self._manual(sid, name)
            case p.SnapshotReady():
                self._snapshot_ready(item)
            case p.ReviewTick():
                for sid, name in self.book.due(time.monotonic()):
                    s = self.proj.sessions.get(sid)
                    if s is not None:
                        self._start(s, name)
            case p.Crash():
                raise RuntimeError("injected fault")
            case _:
                _log.warning("review_unexpected_message", kind=type(item).__name__)

    def _event(self, body: bytes) -> None:
        if (followed := self.follow(body)) is None:
            return
        stamp, ev, s = followed
        if isinstance(ev, p.SessionStateChanged) and ev.state in p.SESSION_TERMINAL:
            self.book.dropped(s.id)
            return
        w = s.workers.get(stamp.worker or "")
        if w is None or stamp.gen != w.gen:
            return
        if w.run_kind == "reviewer":
            if isinstance(ev, p.WorkerExited):
                self._reviewer_exited(s, w)
            elif isinstance(ev, p.AgentUsage):
                self._token_cap(s, w)
            return
        if w.run_kind != "assignment" or not w.reviewed:
            return
        now = time.monotonic()
        name = w.spec.name
        match ev:
            case p.WorkerLaunching():
                self.book.launched(s.id, name, w.gen, now)
            case p.WorkerMilestone(text=text) | p.WorkerBlocker(text=text) | p.WorkerReviewRequest(text=text):
                self.book.trigger(s.id, name, reviewing.label(TRIGGERS[type(ev)], text), now)
                self._start(s, name)
            case p.WorkerExited(state=state):
                self.book.exited(s.id, name)
                if state == "done":
                    self.book.trigger(s.id, name, reviewing.label("end", "the assignment ended"), now)
                    self._start(s, name)

    def _manual(self, sid: str, name: str | None) -> None:
        s = self.proj.sessions.get(sid)
        if s is None:
            return
        ws = [s.workers[name]] if name in s.workers else [w for w in s.assignments() if w.state == "running"]
        for w in ws:
            if w.reviewed:
                self.book.trigger(sid, w.spec.name, reviewing.label("orchctl review"), time.monotonic())
                self._start(s, w.spec.name)

    # ------------------------------------------------------------ reviews

    def _start(self, s: SessionView, name: str) -> None:
        if s.state in p.SESSION_TERMINAL or s.stop_reason is not None:
            return
        limits = effective_limits(self.cfg.limits, s.limits)
        step = self.book.start(s.id, name, limits.max_review_rounds, lambda: "r" + secrets.token_hex(4))
        match step:
            case None:
                return
            case reviewing.Skip():
                self._skip(s, step)
            case reviewing.Start(review=r):
                w = s.workers[name]
                author = w.worktree or s.target
                t = self.book.track(s.id, name)
                self._running[r.id] = (s.id, name)
                dest = self._dir(s.id, r.id) / "checkout"
                # a commit is not reviewed again, unless its last review asked for an answer or escalated
                converged = t.last_decision not in reviewing.NOT_CONVERGED
                self._workspace.start(author, snapshots.take, s.id, r.id, author, str(dest), t.last_commit,
                                      self.cfg.review.diff_max_bytes, self.cfg.review.check,
                                      self.cfg.review.check_deadline_s, converged,
                                      str(self.cfg.state_dir / "reviews" / s.id / "snapshots.git"))

    def _skip(self, s: SessionView, k: reviewing.Skip) -> None:
        _log.info("review_skipped", session=s.id, assignment=k.assignment, reason=k.reason)
        self.emit(s.id, p.ReviewSkipped(assignment=k.assignment, reason=k.reason, triggers=k.triggers, end=k.end,
                                        escalate=k.escalate, gen=k.gen))

    def _snapshot_ready(self, msg: p.SnapshotReady) -> None:
        sid, name = self._running.get(msg.review_id, (None, None))
        s = self.proj.sessions.get(sid or "")
        if s is None or s.state in p.SESSION_TERMINAL:
            self._running.pop(msg.review_id, None)
            return
        self.book.track(sid, name)
        w = s.workers[name]
        if msg.error is not None or msg.checkout is None:
            self._running.pop(msg.review_id, None)
            skip = self.book.unchanged(sid, name)
            if msg.error is not None:
                _log.warning("review_snapshot_failed", session=sid, assignment=name, error=msg.error)
                skip = reviewing.Skip(sid, name, msg.error, skip.triggers,
                                      any(x.startswith("end") for x in skip.triggers), False, skip.gen)
            self._skip(s, skip)
            self._start(s, name)
            return
        r = self.book.requested(sid, name, msg.commit)
        r.reviewers = reviewers(self.cfg, s, w)
        self.emit(sid, p.ReviewRequested(review_id=r.id, assignment=name, round=r.round, triggers=r.triggers,
                                         commit=msg.commit, reviewers=r.reviewers, gen=r.gen))
        _log.info("review_requested", session=sid, assignment=name, review=r.id, round=r.round,
                  triggers=len(r.triggers), reviewers=r.reviewers)
        self._context[r.id] = (msg.checkout, msg.diff, msg.check_output)
        for i in range(len(r.reviewers)):
            self._ask(s, r, i, None)

    def _ask(self, s: SessionView, r: reviewing.InFlight, i: int, error: str | None) -> None:
        sid, name = self._running[r.id]
        a = s.workers[name].spec
        t = self.book.track(sid, name)
        checkout, diff, check_output = self._context[r.id]
        attempt = r.attempts.get(i, 0) + 1
        r.attempts[i] = attempt
        agent = r.reviewers[i]
        text = prompts.review_prompt(s.task, a, r.round, r.triggers, r.commit, diff, t.findings, check_output, error)
        run = f"_review-{r.id}-{i + 1}-{attempt}"
        r.names[run] = i
        self._save(sid, r.id, f"{i + 1}-{agent}-{attempt}.prompt.txt", text)
        self._send_supervisor(p.LaunchReviewer(session=sid, review_id=r.id, name=run, agent=agent, prompt=text,
                                               cwd=checkout, attempt=attempt))

    def _token_cap(self, s: SessionView, w: WorkerView) -> None:
        """A reviewer run over ``[review] max_tokens`` is stopped (it then counts as a failed answer)."""
        cap = self.cfg.review.max_tokens
        tin, tout, _ = w.tokens()
        if cap is None or tin + tout <= cap or (s.id, w.spec.name) in self._capped:
            return
        self._capped.add((s.id, w.spec.name))
        _log.warning("reviewer_token_cap", session=s.id, worker=w.spec.name, tokens=tin + tout, cap=cap)
        try:
            self.out.send_nowait(mailbox_endpoint(s.id, w.spec.name, w.gen), wire.pack(
                p.StopWorker(reason=f"review token cap: {tin + tout} tokens > {cap}", state="failed")))
        except zmq.Again:
            _log.warning("reviewer_not_told", session=s.id, worker=w.spec.name)

    def _reviewer_exited(self, s: SessionView, w: WorkerView) -> None:
        rid = w.review_id or ""
        if rid not in self._running:
            return
        sid, name = self._running[rid]
        r = self.book.track(sid, name).review
        if r is None or w.spec.name not in r.names:
            return
        i = r.names[w.spec.name]
        agent = r.reviewers[i]
        self._save(sid, rid, f"{i + 1}-{agent}-{r.attempts[i]}.answer.txt", w.result_text)
        if w.state == "done":
            parsed = verdicts.parse_answer(w.result_text)
            error = parsed.reason if isinstance(parsed, verdicts.Invalid) else None
        else:
            parsed, error = None, f"the reviewer run ended {w.state}: {w.reason or f'exit code {w.exit_code}'}"
        if error is not None and r.attempts[i] < MAX_ATTEMPTS:
            _log.info("reviewer_asked_again", session=sid, review=rid, reviewer=agent, error=error[:200])
            self._ask(s, r, i, error)
            return
        label = agent if r.reviewers.count(agent) == 1 else f"{agent}-{i + 1}"
        if error is not None:
            answer = (verdicts.invalid_after_reask(error) if w.state == "done" else verdicts.reviewer_failed(error))
            verdict, mismatch = answer.verdict, None
        else:
            answer = parsed.answer
            verdict, mismatch = verdicts.reconcile(answer)
        findings = [p.Finding(severity=f.severity, file=f.file, line=f.line, evidence=f.evidence,
                              confidence=f.confidence) for f in answer.findings]
        ev = p.ReviewVerdict(review_id=rid, reviewer=label, verdict=verdict, summary=answer.summary,
                             findings=findings, mismatch=mismatch, reason=error)
        r.verdicts[i] = ev
        self._save(sid, rid, f"{i + 1}-{agent}.verdict.json", wire.encode(ev).decode())
        self.emit(sid, ev, agent=agent)
        if len(r.verdicts) == len(r.reviewers):
            self._decide(s, name, r)

    def _decide(self, s: SessionView, name: str, r: reviewing.InFlight) -> None:
        vs = [r.verdicts[i] for i in range(len(r.reviewers))]
        decision, reason = review_policy.decide([v.verdict for v in vs])
        if decision == "stop_and_escalate":
            blockers = [v.summary for v in vs if v.verdict == "blocker"]
            reason = f"review {r.id} of {name}: blocker: " + " | ".join(b[:300] for b in blockers)
        self.emit(s.id, p.DecisionMade(review_id=r.id, decision=decision, verdicts=[v.verdict for v in vs],
                                       reason=reason, assignment=name, round=r.round))
        _log.info("review_decided", session=s.id, assignment=name, review=r.id, decision=decision, reason=reason)
        concerns = [f"{v.reviewer}: {v.summary or v.reason or ''}"[:600] for v in vs if v.verdict == "concern"]
        if decision == "log_warning":
            _log.warning("review_warning", session=s.id, assignment=name, review=r.id, concern=concerns[:1])
            self.emit(s.id, p.ReviewWarning(review_id=r.id, assignment=name, concerns=concerns))
        open_findings = [f"{f.severity} {f.file or ''}{':' + str(f.line) if f.line else ''}: {f.evidence}"[:400]
                         for v in vs for f in v.findings if f.severity != "nit"]
        self.book.decided(s.id, name, decision, open_findings)
        self._running.pop(r.id, None)
        self._context.pop(r.id, None)
        self._start(s, name)

    # ------------------------------------------------------------ out

    def emit(self, sid: str, ev: p.Ev, agent: str | None = None) -> None:
        self._backlog.send(wire.append_one(sid, redact.current().event(ev), time.time(), agent=agent))

    def _send_supervisor(self, msg: p.Msg) -> None:
        try:
            self.out.send_nowait(self.supervisor_ep, wire.pack(msg))
        except zmq.Again:
            _log.error("review_launch_lost", reason="the supervisor's mailbox is full")

    def _post(self, msg: p.Msg) -> None:
        self.out.send_nowait(self.inbox.endpoint, wire.pack(msg))

    def _dir(self, sid: str, rid: str) -> Path:
        return self.cfg.state_dir / "reviews" / sid / rid

    def _save(self, sid: str, rid: str, name: str, text: str) -> None:
        """Keep a review's prompt, raw answer or verdict, redacted (the daemon's umask makes it 0600)."""
        path = self._dir(sid, rid)
        try:
            path.mkdir(parents=True, exist_ok=True)
            (path / name).write_text(redact.redact(text), encoding="utf-8", errors="replace")
        except OSError as exc:
            _log.warning("review_file_not_written", path=str(path / name), error=str(exc))

