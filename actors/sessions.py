"""Session and worker state, derived from events (pure: no I/O, no clocks).

The supervisor feeds every event it follows to ``Projection.apply``, both
when it replays the log at start and live.  Nothing here is stored twice:
status, progress and budgets are all computed from these views.

Generations: each (re)launch of an assignment has a generation number,
carried in the stamp of every event its worker emits.  Events from an
older generation than the assignment's current one are ignored, so a
relaunched assignment cannot be confused by its predecessor's last words.

Two fields are not derived from events but kept by the supervisor while
work is under way elsewhere: ``WorkerView.preparing`` (its worktree is
being made) and ``SessionView.merging``.  Decisions treat both as "busy",
so nothing is launched or merged twice; a restarted daemon starts with
neither and takes the decision again from the log.

Events logged by older versions still load: a ``session.note`` carrying
``stop_requested`` or ``branch`` in its data means what
``session.stop_requested`` and ``session.merged`` mean now, and a worker
named ``_plan`` is the planning run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import msgspec

from orchd import protocol as p

RECOVERY_PENDING = frozenset({"relaunch", "park", "resume_after_quota"})  # = actors.recovering.PENDING


@dataclass(slots=True)
class WorkerView:
    spec: p.AssignmentSpec
    state: p.WorkerState = "pending"
    gen: int = -1           # current generation; -1: never launched
    exit_code: int | None = None
    signal: int | None = None
    pid: int | None = None
    host: str | None = None  # the agent host of its latest run (worker.launching), None: here
    reason: str | None = None
    milestones: int = 0
    done_marker: bool = False
    done_text: str = ""  # the last DONE: summary (orchd's commit message carries it)
    committed: str | None = None  # the commit of the last worker.committed
    agent_session_id: str | None = None
    agent_version: str | None = None
    branch: str | None = None
    worktree: str | None = None
    result_text: str = ""
    failure: p.WorkerFailure | None = None
    relaunches: int = 0
    usage: dict[int, tuple[int, int, float | None]] = field(default_factory=dict)
    ended_ts: float = 0.0    # when the current generation exited (stamp ts)
    started_ts: float = 0.0  # when it was first launched (stamp ts); 0: never
    preparing: bool = False  # not from events: the supervisor is having its worktree made
    review_round: int = 0          # reviews of this assignment requested so far
    last_decision: str | None = None
    warnings: list[str] = field(default_factory=list)  # concerns (log_warning) for its next prompt and its dependents'
    end_reviewed: bool = False     # the review of its end was decided (or skipped): dependents may start
    reviewed: bool = False         # reviews apply to it (the projection's ``review_on``): its end is gated
    review_id: str | None = None   # reviewer runs: the review they answer
    attempt: int = 1               # reviewer runs: 2 when asked again
    recovery: p.RecoveryAction | None = None  # the recovery actor's last action about the current generation
    stalled: bool = False          # the current generation was ended by the stall limit
    resumed: bool = False          # the current generation resumed the agent's own session
    produced_output: bool = False  # the current generation reported usage or a result
    last_error: str = ""           # the current generation's last agent.error message
    relaunch_ts: list[float] = field(default_factory=list)  # when recovery relaunches were decided (stamp ts)
    quota_since: float | None = None  # the first quota park of the current episode (stamp ts)

    def awaiting_recovery(self) -> bool:
        """A failed assignment run the recovery actor has not settled (undecided, or to be relaunched)."""
        return (self.state == "failed" and self.run_kind == "assignment"
                and (self.recovery is None or self.recovery.action in RECOVERY_PENDING))

    @property
    def run_kind(self) -> p.RunKind:
        if self.spec.name == "_plan" and self.spec.run_kind == "assignment":  # logs before run_kind
            return "planner"
        return self.spec.run_kind

    def tokens(self) -> tuple[int, int, float | None]:
        tin = sum(u[0] for u in self.usage.values())
        tout = sum(u[1] for u in self.usage.values())
        costs = [u[2] for u in self.usage.values() if u[2] is not None]
        return tin, tout, (sum(costs) if costs else None)

    def progress(self) -> float:
        if self.state == "done":
            return 1.0
        if self.state in ("running", "paused"):
            return min(0.9, 0.1 + 0.2 * self.milestones)
        return 0.0


@dataclass(slots=True)
class SessionView:
    id: str
    task: str
    target: str
    created_ts: float
    rehearse: bool = False
    scenario: dict | None = None
    limits: dict = field(default_factory=dict)
    base_commit: str | None = None
    planner: str | None = None
    planned: bool = True
    state: p.SessionState = "queued"
    reason: str | None = None
    branch: str | None = None
    commit: str | None = None
    stop_reason: str | None = None  # a stop was asked for; the session ends once nothing runs
    stop_state: str = "stopped"     # ... in this state (a budget stop ends it "failed")
    workers: dict[str, WorkerView] = field(default_factory=dict)
    started_ts: float = 0.0         # the first session.state running (stamp ts); 0: not yet
    ended_ts: float = 0.0           # its terminal session.state (stamp ts); 0: not ended
    merging: bool = False           # not from events: the supervisor is having it merged
    reviews: dict[str, ReviewView] = field(default_factory=dict)
    waiting_for: str | None = None  # "answer" while a question waits for ``orchctl answer``
    question: str | None = None
    question_worker: str | None = None
    ask: tuple[str, str | None, str, str | None] | None = None  # (question, worker, source, review id) to ask
    answer: tuple[str, str, str] | None = None  # (worker, question, answer): resume it with the answer
    escalate: str | None = None     # a review decided stop_and_escalate (or did not converge): why
    recovery_on: bool = False       # a recovery actor settles failed runs (the daemon); pure tests: off
    recoveries: dict[tuple[str, int], p.RecoveryInfo] = field(default_factory=dict)  # (worker, gen) ->

    def recovering(self) -> bool:
        """A failed assignment waits for the recovery actor (a decision, a backoff, a quota reset)."""
        return self.stop_reason is None and any(
            w.awaiting_recovery() and (self.recovery_on or w.recovery is not None) for w in self.assignments())

    def parked(self) -> list[WorkerView]:
        """Assignments parked until a usage limit resets."""
        return [w for w in self.assignments()
                if w.state == "failed" and w.recovery is not None and w.recovery.action == "park"]

    def cleared(self, w: WorkerView) -> bool:
        """``w`` ended done and, when reviews apply, its end was reviewed (or needed no review)."""
        return w.state == "done" and (not w.reviewed or w.end_reviewed)

    def assignments(self) -> list[WorkerView]:
        """The plan's workers (not the planning run)."""
        return [w for w in self.workers.values() if w.run_kind == "assignment"]

    def progress(self) -> float:
        ws = self.assignments()
        weights = [w.spec.weight if math.isfinite(w.spec.weight) and w.spec.weight > 0 else 0.0 for w in ws]
        top = max(weights, default=0.0)
        if top <= 0:
            return 0.0
        weights = [x / top for x in weights]  # scaled: huge weights cannot overflow to inf/inf
        return sum(x * w.progress() for x, w in zip(weights, ws)) / sum(weights)

    def tokens(self) -> tuple[int, float | None]:
        tokens, costs = 0, []
        for w in self.workers.values():
            tin, tout, cost = w.tokens()
            tokens += tin + tout
            if cost is not None:
                costs.append(cost)
        return tokens, (sum(costs) if costs else None)

    def ready(self) -> list[str]:
        """Pending assignments whose ``after`` have all finished ``done``."""
        if self.state != "running" or not self.planned or self.stop_reason is not None:
            return []
        return [name for name, w in self.workers.items()
                if w.state == "pending" and w.gen < 0 and not w.preparing and w.run_kind == "assignment"
                and all(self.cleared(self.workers[dep]) for dep in w.spec.after)]

    def reviewers(self) -> list[WorkerView]:
        return [w for w in self.workers.values() if w.run_kind == "reviewer"]

    def running(self) -> list[WorkerView]:
        return [w for w in self.workers.values() if w.state in ("running", "paused")]

    def busy(self) -> bool:
        """Something runs or is being prepared or merged."""
        return bool(self.running()) or self.merging or any(w.preparing for w in self.workers.values())

    def outcome(self) -> tuple[str, str | None] | None:
        """The state the session should end in, once nothing more can run."""
        if self.state in p.SESSION_TERMINAL or self.busy():
            return None
        if self.stop_reason is not None:  # a stop ends the session once its workers have exited
            return self.stop_state, self.stop_reason
        if not self.planned or self.waiting_for is not None or self.ask is not None or self.answer is not None:
            return None
        if self.recovering():
            return None  # the recovery actor decides first (relaunch, park, escalate or fail)
        if self.escalate is not None:
            return None  # decide() asks for the stop first
        states = {w.state for w in self.assignments()}
        if states <= {"done"}:
            if not all(self.cleared(w) for w in self.assignments()):
                return None  # an end still in review
            return "done", None
        failed = [w.spec.name for w in self.assignments() if w.state in ("failed", "stopped")]
        if failed and not self.ready():
            return "failed", "assignment(s) did not finish: " + ", ".join(failed)
        return None

    def info(self) -> p.SessionInfo:
        workers = []
        for w in self.workers.values():
            if w.run_kind == "reviewer":
                continue  # reviewer runs are shown by ``orchctl reviews`` (their costs count in the budget)
            tin, tout, cost = w.tokens()
            workers.append(p.WorkerInfo(
                name=w.spec.name, agent=w.spec.agent, state=w.state, exit_code=w.exit_code,
                signal=w.signal, role=w.spec.role, weight=w.spec.weight, after=list(w.spec.after),
                gen=max(w.gen, 0), pid=w.pid, reason=w.reason, milestones=w.milestones,
                progress=round(w.progress(), 3), branch=w.branch, worktree=w.worktree,
                input_tokens=tin, output_tokens=tout, cost_usd=cost, started_at=w.started_ts or None,
                review_round=w.review_round, last_decision=w.last_decision, host=w.host,
                ended_at=(w.ended_ts or None) if w.state in p.WORKER_TERMINAL else None))
        costs = [w.cost_usd for w in workers if w.cost_usd is not None]
        parked = [w.recovery for w in self.parked()]
        waiting_for = self.waiting_for or ("quota" if parked and self.stop_reason is None else None)
        return p.SessionInfo(id=self.id, state=self.state, task=self.task, target=self.target,
                             reason=self.reason, created_ts=self.created_ts,
                             progress=round(self.progress(), 3), branch=self.branch, workers=workers,
                             rehearse=self.rehearse, started_at=self.started_ts or None,
                             ended_at=(self.ended_ts or None) if self.state in p.SESSION_TERMINAL else None,
                             input_tokens=sum(w.input_tokens for w in workers),
                             output_tokens=sum(w.output_tokens for w in workers),
                             cost_usd=sum(costs) if costs else None,
                             waiting_for=waiting_for, question=self.question,
                             quota_reset_at=min((r.reset_at for r in parked if r.reset_at), default=None),
                             quota_resume_at=min((r.until for r in parked if r.until), default=None))

    def review_infos(self) -> list[p.ReviewInfo]:
        return [r.info() for r in self.reviews.values()]


@dataclass(slots=True)
class ReviewView:
    """One review, from ``review.requested``, ``review.verdict`` and ``decision.made``."""

    id: str
    assignment: str
    round: int
    triggers: list[str]
    commit: str | None
    reviewers: list[str]
    gen: int = 0
    verdicts: list[tuple[str, p.ReviewVerdict]] = field(default_factory=list)  # (agent, verdict)
    decision: str | None = None
    reason: str | None = None

    def info(self) -> p.ReviewInfo:
        return p.ReviewInfo(id=self.id, assignment=self.assignment, round=self.round, triggers=self.triggers,
                            commit=self.commit, reviewers=self.reviewers, decision=self.decision,
                            reason=self.reason,
                            verdicts=[p.VerdictInfo(reviewer=v.reviewer, agent=agent, verdict=v.verdict,
                                                    summary=v.summary, findings=v.findings, mismatch=v.mismatch,
                                                    reason=v.reason) for agent, v in self.verdicts])


class Projection:
    def __init__(self, review_on=None, recovery_on: bool = False) -> None:
        self.sessions: dict[str, SessionView] = {}
        self.recovery_on = recovery_on  # failed runs wait for the recovery actor (SessionView.recovering)
        self.last_seq = 0  # the highest logged seq applied (own events apply before they have one)
        # review_on(session, worker) -> bool: whether reviews apply to an assignment (the review config decides)
        self.review_on = review_on or (lambda s, w: False)

    def forget(self, sid: str) -> None:
        """Drop a session from this projection: the session's later events are ignored, as those of a
        session never submitted are.  For a projection that acts on live sessions only (the review
        and recovery actors'): an ended session does not come back (``p.SESSION_TERMINAL``), and one
        kept for every session ever would grow for as long as the daemon runs."""
        self.sessions.pop(sid, None)

    def _mark_reviewed(self, s: SessionView) -> None:
        for w in s.assignments():
            w.reviewed = bool(self.review_on(s, w))

    def apply(self, stamp: p.Stamp, ev: p.Ev) -> None:
        if stamp.seq:
            if stamp.seq <= self.last_seq:
                return  # already applied (a follower message that overlaps a log read)
            self.last_seq = stamp.seq
        sid = stamp.session
        if sid is None:
            return
        if isinstance(ev, p.SessionSubmitted):
            s = SessionView(id=sid, task=ev.task, target=ev.target, created_ts=stamp.ts,
                            rehearse=ev.rehearse, scenario=ev.scenario, limits=dict(ev.limits),
                            base_commit=ev.base_commit, planner=ev.planner,
                            planned=ev.planner is None, recovery_on=self.recovery_on)
            s.workers = {a.name: WorkerView(spec=a) for a in ev.assignments}
            if s.planned:
                self._mark_reviewed(s)
            self.sessions[sid] = s
            return
        s = self.sessions.get(sid)
        if s is None:
            return
        match ev:
            case p.SessionStateChanged(state=state, reason=reason):
                s.state, s.reason = state, reason
                if state == "running" and not s.started_ts:
                    s.started_ts = stamp.ts
                if state in p.SESSION_TERMINAL:
                    s.ended_ts = stamp.ts
                return
            case p.SessionPlanned(assignments=assignments):
                s.workers.update({a.name: WorkerView(spec=a) for a in assignments})
                s.planned = True
                self._mark_reviewed(s)
                return
            case p.SessionStopRequested(reason=reason, end_state=end_state):
                s.stop_reason, s.stop_state = reason, end_state
                return
            case p.SessionMerged(branch=branch, commit=commit):
                s.branch, s.commit = branch, commit
                return
            case p.SessionNote(data=data) if data and "stop_requested" in data:  # logs before stop_requested
                s.stop_reason = str(data["stop_requested"])
                s.stop_state = "failed" if data.get("end_state") == "failed" else "stopped"
                return
            case p.SessionNote(data=data) if data and "branch" in data:  # logs before session.merged
                s.branch = str(data["branch"])
                return
            case p.RecoveryDetected() | p.RecoveryAction():
                _apply_recovery(s, stamp, ev)
                return
            case p.ReviewRequested() | p.ReviewRun() | p.ReviewVerdict() | p.DecisionMade() | p.ReviewWarning() \
                    | p.ReviewSkipped() | p.SessionQuestion() | p.SessionAnswered():
                _apply_review(s, stamp, ev)
                return
        w = s.workers.get(stamp.worker or "")
        if w is None:
            return
        if isinstance(ev, p.WorkerLaunching):
            if stamp.gen > w.gen:
                if w.gen >= 0:
                    w.relaunches += 1
                w.gen, w.state, w.preparing = stamp.gen, "running", False
                w.host = ev.host
                w.started_ts = w.started_ts or stamp.ts
                w.end_reviewed = False
                if s.answer is not None and s.answer[0] == w.spec.name:
                    s.answer = None  # resumed with the answer
                w.exit_code = w.signal = w.pid = None
                w.reason = None
                w.failure = None
                w.recovery, w.stalled, w.produced_output, w.last_error = None, False, False, ""
                w.resumed = ev.resume
                w.branch, w.worktree = ev.branch or w.branch, ev.worktree or w.worktree
            return
        if stamp.gen != w.gen:
            return  # an older generation's event
        match ev:
            case p.WorkerStarted(pid=pid, agent_version=version):
                w.pid, w.agent_version = pid, version
                if w.state not in p.WORKER_TERMINAL:
                    w.state = "running"
            case p.WorkerStateChanged(state=state, reason=reason):
                if w.state not in p.WORKER_TERMINAL:
                    w.state, w.reason = state, reason
            case p.WorkerExited(state=state, exit_code=code, signal=sig, reason=reason):
                w.state, w.exit_code, w.signal, w.reason, w.pid = state, code, sig, reason, None
                w.ended_ts = stamp.ts
            case p.WorkerMilestone():
                w.milestones += 1
            case p.WorkerDone(text=text):
                w.done_marker, w.done_text = True, text
            case p.WorkerCommitted(commit=commit):
                w.committed = commit
            case p.WorkerQuestion(text=text) if w.run_kind == "assignment" and s.waiting_for is None:
                s.ask = (text, w.spec.name, "agent", None)
            case p.WorkerFailure():
                w.failure = ev
            case p.WorkerLimit(limit="stall"):
                w.stalled = True
            case p.AgentSession(agent_session_id=asid):
                w.agent_session_id = asid
            case p.AgentUsage(input_tokens=tin, output_tokens=tout, cost_usd=cost):
                w.usage[stamp.gen] = (tin, tout, cost)
                if tin or tout:
                    w.produced_output, w.quota_since = True, None
            case p.AgentResult(text=text):
                w.result_text = text
                if ev.ok or text:  # an empty failed result (a CLI told to stop) is not output
                    w.produced_output, w.quota_since = True, None
            case p.AgentError(message=message):
                w.last_error = message


def _apply_recovery(s: SessionView, stamp: p.Stamp, ev: p.Ev) -> None:
    """The recovery actor's detections and actions (see actors/recovering.py for the policy)."""
    name = stamp.worker or ""
    key = (name, stamp.gen)
    match ev:
        case p.RecoveryDetected(code=code, message=message):
            s.recoveries[key] = p.RecoveryInfo(worker=name, gen=stamp.gen, code=code, message=message, ts=stamp.ts)
        case p.RecoveryAction() as act:
            old = s.recoveries.get(key) or p.RecoveryInfo(worker=name, gen=stamp.gen, code=act.code, ts=stamp.ts)
            s.recoveries[key] = msgspec.structs.replace(
                old, action=act.action, delay_s=act.delay_s, attempt=act.attempt, until=act.until,
                reset_at=act.reset_at if act.reset_at is not None else old.reset_at, reason=act.reason,
                takeover=act.takeover)
            w = s.workers.get(name)
            if w is None or stamp.gen != w.gen:
                return
            w.recovery = act
            if act.action == "relaunch":
                w.relaunch_ts.append(stamp.ts)
            if act.action == "park":
                w.quota_since = w.quota_since if w.quota_since is not None else stamp.ts
            elif act.action != "resume_after_quota":
                w.quota_since = None
            if act.action == "escalate" and s.escalate is None:
                s.escalate = act.reason or f"{name}: {act.code}"


def _apply_review(s: SessionView, stamp: p.Stamp, ev: p.Ev) -> None:
    """Reviews, decisions, questions and answers (see actors/reviewing.py for who emits what)."""
    match ev:
        case p.ReviewRequested():
            s.reviews[ev.review_id] = ReviewView(id=ev.review_id, assignment=ev.assignment, round=ev.round,
                                                 triggers=list(ev.triggers), commit=ev.commit,
                                                 reviewers=list(ev.reviewers), gen=ev.gen)
            if (w := s.workers.get(ev.assignment)) is not None:
                w.review_round = max(w.review_round, ev.round)
        case p.ReviewRun(spec=spec, review_id=rid, attempt=attempt):
            s.workers[spec.name] = WorkerView(spec=spec, review_id=rid, attempt=attempt)
        case p.ReviewVerdict(review_id=rid) if rid in s.reviews:
            s.reviews[rid].verdicts.append((stamp.agent or "", ev))
        case p.DecisionMade(review_id=rid, decision=decision, reason=reason):
            r = s.reviews.get(rid)
            if r is not None:
                r.decision, r.reason = decision, reason
            w = s.workers.get(ev.assignment or (r.assignment if r else ""))
            if w is None:
                return
            w.last_decision = decision
            ended = r is not None and r.gen == w.gen and any(t.startswith("end") for t in r.triggers)
            if decision in ("continue", "log_warning") and ended:
                w.end_reviewed = True
            elif decision == "pause_and_clarify" and s.waiting_for is None:
                s.ask = (_question(r), w.spec.name, "review", rid)
            elif decision == "stop_and_escalate" and s.escalate is None:
                s.escalate = ev.reason or "a reviewer found a blocker"
        case p.ReviewWarning(assignment=name, concerns=concerns):
            if (w := s.workers.get(name)) is not None:
                w.warnings += concerns
        case p.ReviewSkipped(assignment=name, end=end, escalate=escalate, reason=reason, gen=gen):
            w = s.workers.get(name)
            if escalate and s.escalate is None:
                s.escalate = reason
            elif end and w is not None and w.gen == gen:
                w.end_reviewed = True
        case p.SessionQuestion(question=q, worker=worker):
            s.ask, s.waiting_for, s.question, s.question_worker = None, "answer", q, worker
        case p.SessionAnswered(text=text, question=q, worker=worker):
            s.waiting_for = s.question = s.question_worker = None
            if worker is not None and worker in s.workers:
                s.answer = (worker, q, text)


def _question(r: ReviewView | None) -> str:
    """The question a pause asks: the reviewers' concerns, summarised."""
    if r is None:
        return "The reviewers raised concerns: how should the work go on?"
    lines = [f"Review {r.id} of {r.assignment} (round {r.round}) raised concerns; how should the work go on?"]
    for _agent, v in r.verdicts:
        if v.verdict != "approve":
            lines.append(f"- {v.reviewer} ({v.verdict}): {v.summary or v.reason or '(no summary)'}"[:600])
    return "\n".join(lines)
