"""Checking a submit request before anything is stored (pure but for file lookups).

Everything a session will need is validated here, at the edge, so a
stored session can always be run: the plan (or the planner, or the
default plan), the limit overrides (typed and range-checked; stored
validated, so ``stall_s="30"`` arrives as ``30.0``), and a rehearsal's
scenario.  A bad request gets one ``Error`` naming the problem; the
supervisor stores nothing.  The target's git HEAD is the one check left
to the workspace thread (``actors.workspace.check_target``).

Preflight moves assignments whose agent CLI is missing to the next
available agent of ``agent_preference`` (``find`` looks a CLI up).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import pydantic

from actors import plans
from orchd import protocol as p
from orchd.config import Config, Limits, one_line

PLAN_RUN = "_plan"  # the planning run's worker name (plan names cannot start with "_")


@dataclass(frozen=True)
class Checked:
    target: Path
    assignments: list[p.AssignmentSpec]
    limits: dict[str, Any]
    moved: dict[str, tuple[str, str, str]] = field(default_factory=dict)


def bad(detail: str) -> p.Error:
    return p.Error(code=p.ErrorCode.BAD_REQUEST, detail=detail)


def check(req: p.Submit, cfg: Config, known: set[str], find: Callable[[str], str | None],
          rehearsals_available: bool, validate_scenario: Callable[[Any], None]) -> Checked | p.Error:
    shown = req.target[:200]
    try:
        target = Path(req.target).expanduser()  # ~unknown-user raises RuntimeError
        if "\x00" in req.target or not target.is_absolute():
            return bad(f"target must be an absolute path, got {shown!r}")
        if not target.is_dir():  # a name too long raises OSError
            return bad(f"target {shown} is not a directory")
    except (RuntimeError, ValueError, OSError) as exc:
        return bad(f"target {shown!r} cannot be used: {exc}")
    if "\x00" in req.task:  # the task goes into every agent's prompt, an argv string
        return bad("the task text holds a NUL byte")
    try:
        assignments = _assignments(req, cfg, known)
    except plans.PlanError as exc:
        return bad(str(exc))
    limits = check_limits(cfg.limits, req.limits or {})
    if isinstance(limits, p.Error):
        return limits
    if req.rehearse and not rehearsals_available:
        return p.Error(code=p.ErrorCode.BAD_STATE, detail="rehearsals are not available")
    if req.rehearse and req.scenario is not None:
        try:
            validate_scenario(req.scenario)
        except ValueError as exc:
            return bad(f"bad scenario: {exc}")
    moved = preflight(assignments, cfg.agent_preference, find)
    if isinstance(moved, p.Error):
        return moved
    assignments = [msgspec.structs.replace(a, agent=moved[a.name][1]) if a.name in moved else a
                   for a in assignments]
    return Checked(target=target, assignments=assignments, limits=limits, moved=moved)


def _assignments(req: p.Submit, cfg: Config, known: set[str]) -> list[p.AssignmentSpec]:
    if req.planner is not None:
        if req.planner not in known or req.planner == "command":
            raise plans.PlanError(f"unknown planner agent {req.planner!r}")
        if req.plan is not None:
            raise plans.PlanError("give either --plan or --planner, not both")
        return [p.AssignmentSpec(name=PLAN_RUN, agent=req.planner, role="planner", weight=0.0,
                                 profile="readonly", run_kind="planner")]
    if req.plan is not None:
        return plans.load_plan(req.plan, known)
    if not req.task.strip():
        raise plans.PlanError("give a task text or a --plan file")
    return plans.validate(plans.default_plan([r.model_dump() for r in cfg.roles], req.agents), known)


def check_limits(base: Limits, overrides: dict[str, Any]) -> dict[str, Any] | p.Error:
    """The overrides, validated against the config's limits and returned typed."""
    try:
        merged = Limits.model_validate({**base.model_dump(), **overrides})
    except pydantic.ValidationError as exc:
        return bad(f"invalid limits: {one_line(exc, Limits)}")
    return {k: getattr(merged, k) for k in overrides}


def preflight(assignments: list[p.AssignmentSpec], preference: list[str],
              find: Callable[[str], str | None]) -> dict[str, tuple[str, str, str]] | p.Error:
    """``{name: (from, to, why)}`` for assignments whose agent CLI is missing, or an Error."""
    cache: dict[str, str | None] = {}

    def missing(agent: str) -> str | None:
        if agent == "command":
            return None
        if agent not in cache:
            cache[agent] = None if find(agent) else f"{agent} CLI not found"
        return cache[agent]

    moved: dict[str, tuple[str, str, str]] = {}
    for a in assignments:
        why = missing(a.agent)
        if why is None:
            continue
        to = next((c for c in preference if c != a.agent and missing(c) is None), None)
        if to is None:
            return bad(f"assignment {a.name!r}: {why}, and no other agent CLI is available "
                       f"(preference: {', '.join(preference)}); see 'orchd doctor'")
        moved[a.name] = (a.agent, to, why)
    return moved


def moved_note(moved: dict[str, tuple[str, str, str]]) -> p.SessionNote:
    return p.SessionNote(
        message="reassigned: " + "; ".join(f"{n} from {f} to {t} ({why})" for n, (f, t, why) in moved.items()),
        data={"reassigned": {n: {"from": f, "to": t, "why": why} for n, (f, t, why) in moved.items()}})
