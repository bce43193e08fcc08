"""What a session should do next (pure: no I/O; time is an argument).

``decide(view, limits, now)`` looks at one session's projection and
returns the commands the supervisor carries out, in order.  Carrying out a
command emits events, which the supervisor applies to the projection at
once, so asking again gives the next step; when nothing is left to do the
answer is ``[]``.  The same log therefore leads to the same decisions,
before and after a daemon restart.

The order of concerns is fixed: a budget overrun stops everything; then
the planning run (planner mode); then failed runs the recovery actor
decided to relaunch (``actors.recovery`` decides and logs ``recovery.action``;
this module only carries it out); then assignments whose ``after`` are done; last, the
session's end (merging first when it ended ``done`` in a git target).
Nothing new starts while the event log cannot be written (``log_ok``).

``now`` (wall-clock seconds, comparable with event timestamps) is an
argument so that time-based rules stay pure; none of today's rules reads
it (a recovery backoff is waited by the worker, counted from the launch; a
quota wait is the recovery actor's timer, which logs ``resume_after_quota``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from actors import plans
from actors.sessions import SessionView
from orchd import protocol as p
from orchd.config import Limits

PLAN_ATTEMPTS = 2  # an invalid plan is asked for again once, then the default plan is used


@dataclass(frozen=True)
class Launch:
    """Start (a new generation of) assignment ``worker``."""

    worker: str
    resume: bool = False
    reason: str | None = None
    delay_s: float = 0.0
    env: dict[str, str] = field(default_factory=dict)
    answer: tuple[str, str] | None = None  # (question, answer): resumed after ``orchctl answer``
    summary: str | None = None  # a fresh start after a resume failed: what the earlier run did
    fallback: bool = False  # a refused flag: the adapter's fallback launch (``Fix.fallback``, ``RunSpec.fallback``)


@dataclass(frozen=True)
class StopAll:
    """Log a stop request (so a restart finishes it), then stop every running worker."""

    reason: str
    end_state: str = "stopped"  # stopped | failed
    limit: str | None = None    # the limit that was hit (a worker.limit event per worker)


@dataclass(frozen=True)
class TakePlan:
    """The planning run answered with this plan."""

    assignments: list[p.AssignmentSpec]


@dataclass(frozen=True)
class AskPlannerAgain:
    error: str


@dataclass(frozen=True)
class UseDefaultPlan:
    error: str


@dataclass(frozen=True)
class Merge:
    """Merge the assignments' branches into the session branch (then end the session)."""


@dataclass(frozen=True)
class End:
    state: p.SessionState
    reason: str | None = None


@dataclass(frozen=True)
class AskHuman:
    """Pause the session for ``orchctl answer``: log the question, stop ``worker``'s run if it runs."""

    question: str
    worker: str | None
    source: str
    review_id: str | None = None


Command = Launch | StopAll | TakePlan | AskPlannerAgain | UseDefaultPlan | Merge | End | AskHuman


def effective_limits(base: Limits, overrides: dict) -> Limits:
    """The session's limits: the config's, with the session's (validated at submit) on top."""
    if not overrides:
        return base
    return Limits.model_validate({**base.model_dump(), **overrides})


def decide(s: SessionView, limits: Limits, now: float, log_ok: bool = True,
           known_agents: frozenset[str] = frozenset()) -> list[Command]:
    if s.state in p.SESSION_TERMINAL:
        return []
    over = _over_budget(s, limits)
    if over is not None and s.stop_reason is None:
        return [StopAll(reason=f"budget exceeded: {over[1]}", end_state="failed", limit=over[0])]
    if s.escalate is not None and s.stop_reason is None:
        return [StopAll(reason=s.escalate, end_state="escalated")]
    if s.ask is not None and s.waiting_for is None and s.stop_reason is None and s.state in ("running", "paused"):
        question, worker, source, rid = s.ask
        return [AskHuman(question=question, worker=worker, source=source, review_id=rid)]
    if s.answer is not None and s.state == "running" and s.stop_reason is None and log_ok:
        worker, question, text = s.answer
        w = s.workers[worker]
        if w.state not in ("running", "paused") and not w.preparing:
            return [Launch(worker=worker, resume=True, reason="answered", answer=(question, text))]
    if not s.planned:
        step = _plan_step(s, known_agents, log_ok)
        if step is not None:
            return [step]
    out: list[Command] = []
    if s.state == "running" and s.stop_reason is None and log_ok:
        out += _relaunches(s)
        out += [Launch(worker=name) for name in s.ready()]
    if out:
        return out
    outcome = s.outcome()
    if outcome is None:
        return []
    state, reason = outcome
    if state == "done" and s.base_commit and s.commit is None and s.branch is None:
        return [Merge()]
    return [End(state=state, reason=reason)]


def _over_budget(s: SessionView, limits: Limits) -> tuple[str, str] | None:
    tokens, cost = s.tokens()
    if limits.max_tokens is not None and tokens > limits.max_tokens:
        return "tokens", f"session used {tokens} tokens, budget {limits.max_tokens}"
    if limits.max_cost_usd is not None and cost is not None and cost > limits.max_cost_usd:
        return "cost", f"session cost ${cost:.4f}, budget ${limits.max_cost_usd:.4f}"
    return None


def _relaunches(s: SessionView) -> list[Launch]:
    """The failed runs whose logged ``recovery.action`` says relaunch now (or resume after a quota wait)."""
    out = []
    for w in s.assignments():
        r = w.recovery
        if w.state != "failed" or w.preparing or r is None or r.action not in ("relaunch", "resume_after_quota"):
            continue
        out.append(Launch(worker=w.spec.name, resume=r.resume, reason=r.reason,
                          delay_s=r.delay_s if r.action == "relaunch" else 0.0, env=dict(r.env), summary=r.summary,
                          fallback=bool(r.fix is not None and r.fix.fallback)))
    return out


def _plan_step(s: SessionView, known_agents: frozenset[str], log_ok: bool) -> Command | None:
    planner = next((w for w in s.workers.values() if w.run_kind == "planner"), None)
    if planner is None or s.state != "running" or s.stop_reason is not None:
        return None
    if planner.preparing or planner.state in ("running", "paused"):
        return None
    if planner.state == "pending" and planner.gen < 0:
        return Launch(worker=planner.spec.name) if log_ok else None
    if planner.state == "done":
        try:
            return TakePlan(assignments=plans.plan_from_answer(planner.result_text, set(known_agents)))
        except plans.PlanError as exc:
            error = str(exc)
    else:
        error = f"the planning run ended {planner.state}: {planner.reason}"
    if planner.gen + 1 < PLAN_ATTEMPTS:
        return AskPlannerAgain(error=error) if log_ok else None
    return UseDefaultPlan(error=error)
