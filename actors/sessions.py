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

from orchd import protocol as p


@dataclass
class WorkerView:
    spec: p.AssignmentSpec
    state: p.WorkerState = "pending"
    gen: int = -1           # current generation; -1: never launched
    exit_code: int | None = None
    signal: int | None = None
    pid: int | None = None
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
    preparing: bool = False  # not from events: the supervisor is having its worktree made

    @property
    def run_kind(self) -> p.RunKind:
        if self.spec.name.startswith("_"):  # logs before run_kind: the planning run was "_plan"
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


@dataclass
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
    merging: bool = False           # not from events: the supervisor is having it merged

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
                and all(self.workers[dep].state == "done" for dep in w.spec.after)]

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
        if not self.planned:
            return None
        states = {w.state for w in self.assignments()}
        if states <= {"done"}:
            return "done", None
        failed = [w.spec.name for w in self.assignments() if w.state in ("failed", "stopped")]
        if failed and not self.ready():
            return "failed", "assignment(s) did not finish: " + ", ".join(failed)
        return None

    def info(self) -> p.SessionInfo:
        workers = []
        for w in self.workers.values():
            tin, tout, cost = w.tokens()
            workers.append(p.WorkerInfo(
                name=w.spec.name, agent=w.spec.agent, state=w.state, exit_code=w.exit_code,
                signal=w.signal, role=w.spec.role, weight=w.spec.weight, after=list(w.spec.after),
                gen=max(w.gen, 0), pid=w.pid, reason=w.reason, milestones=w.milestones,
                progress=round(w.progress(), 3), branch=w.branch, worktree=w.worktree,
                input_tokens=tin, output_tokens=tout, cost_usd=cost))
        return p.SessionInfo(id=self.id, state=self.state, task=self.task, target=self.target,
                             reason=self.reason, created_ts=self.created_ts,
                             progress=round(self.progress(), 3), branch=self.branch, workers=workers)


class Projection:
    def __init__(self) -> None:
        self.sessions: dict[str, SessionView] = {}
        self.last_seq = 0  # the highest logged seq applied (own events apply before they have one)

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
                            planned=ev.planner is None)
            s.workers = {a.name: WorkerView(spec=a) for a in ev.assignments}
            self.sessions[sid] = s
            return
        s = self.sessions.get(sid)
        if s is None:
            return
        match ev:
            case p.SessionStateChanged(state=state, reason=reason):
                s.state, s.reason = state, reason
                return
            case p.SessionPlanned(assignments=assignments):
                s.workers.update({a.name: WorkerView(spec=a) for a in assignments})
                s.planned = True
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
        w = s.workers.get(stamp.worker or "")
        if w is None:
            return
        if isinstance(ev, p.WorkerLaunching):
            if stamp.gen > w.gen:
                if w.gen >= 0:
                    w.relaunches += 1
                w.gen, w.state, w.preparing = stamp.gen, "running", False
                w.exit_code = w.signal = w.pid = None
                w.reason = None
                w.failure = None
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
            case p.WorkerFailure():
                w.failure = ev
            case p.AgentSession(agent_session_id=asid):
                w.agent_session_id = asid
            case p.AgentUsage(input_tokens=tin, output_tokens=tout, cost_usd=cost):
                w.usage[stamp.gen] = (tin, tout, cost)
            case p.AgentResult(text=text):
                w.result_text = text
