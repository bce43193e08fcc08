"""Plans: validate a plan file, build the default plan, read a planner's answer (pure)."""

from __future__ import annotations

from typing import Any

import msgspec

from orchd import protocol as p


MAX_ASSIGNMENTS = 1000
MAX_WEIGHT = 1e6
PLAN_TREE = "orchd-planner"  # the planning run's worktree/branch label; reserved


class PlanError(ValueError):
    """The plan cannot run; the message says why."""


class PlanFile(msgspec.Struct, forbid_unknown_fields=True):
    assignments: list[p.AssignmentSpec]


def load_plan(data: dict[str, Any], known_agents: set[str]) -> list[p.AssignmentSpec]:
    try:
        plan = msgspec.convert(data, PlanFile)
    except msgspec.ValidationError as exc:
        raise PlanError(f"invalid plan: {exc}") from None
    return validate(plan.assignments, known_agents)


def validate(assignments: list[p.AssignmentSpec], known_agents: set[str]) -> list[p.AssignmentSpec]:
    if not assignments:
        raise PlanError("the plan has no assignments")
    if len(assignments) > MAX_ASSIGNMENTS:
        raise PlanError(f"the plan has {len(assignments)} assignments; at most {MAX_ASSIGNMENTS} are allowed")
    names = [a.name for a in assignments]
    for a in assignments:
        if not a.name or any(c in a.name for c in " /\\~^:?*[") or a.name.startswith((".", "-", "_")):
            raise PlanError(f"assignment name {a.name!r} is not usable as a branch name part")
        if names.count(a.name) > 1:
            raise PlanError(f"assignment name {a.name!r} is used twice")
        if a.agent not in known_agents:
            raise PlanError(f"assignment {a.name!r}: unknown agent {a.agent!r} (known: {', '.join(sorted(known_agents))})")
        if a.agent == "command" and not a.argv:
            raise PlanError(f"assignment {a.name!r}: a command assignment needs a non-empty argv")
        for dep in a.after:
            if dep not in names:
                raise PlanError(f"assignment {a.name!r} waits for {dep!r}, which is not in the plan")
        if not 0 <= a.weight <= MAX_WEIGHT:  # also refuses NaN and inf
            raise PlanError(f"assignment {a.name!r}: weight must be a number from 0 to {MAX_WEIGHT:g}, got {a.weight}")
        if a.run_kind != "assignment":
            raise PlanError(f"assignment {a.name!r}: run_kind {a.run_kind!r} is reserved for orchd's own runs")
        if a.profile not in (None, "workspace", "readonly", "yolo"):
            raise PlanError(f"assignment {a.name!r}: unknown profile {a.profile!r}")
    _check_acyclic(assignments)
    return assignments


def _check_acyclic(assignments: list[p.AssignmentSpec]) -> None:
    """Depth-first, with an explicit stack (a long ``after`` chain must not exhaust recursion)."""
    deps = {a.name: list(a.after) for a in assignments}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for root in deps:
        if state.get(root):
            continue
        path = [root]
        state[root] = 1
        stack = [iter(deps[root])]
        while stack:
            dep = next(stack[-1], None)
            if dep is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(dep) == 1:
                raise PlanError("the plan's 'after' links form a cycle: " + " -> ".join(path + [dep]))
            elif not state.get(dep):
                state[dep] = 1
                path.append(dep)
                stack.append(iter(deps[dep]))


def default_plan(roles: list[dict[str, Any]], agents: list[str] | None) -> list[p.AssignmentSpec]:
    """The configured roles, in order, each waiting for the one before it.

    ``agents`` (``--agents a,b``) keeps only roles whose agent is listed, in
    the roles' order.
    """
    chosen = [r for r in roles if agents is None or r["agent"] in agents]
    if not chosen:
        raise PlanError(f"no configured role uses the agents {', '.join(agents or [])}")
    out = []
    prev = None
    for r in chosen:
        out.append(p.AssignmentSpec(name=r["name"], agent=r["agent"], role=r["role"],
                                    weight=float(r["weight"]), prompt=r.get("prompt", ""),
                                    after=[prev] if prev else []))
        prev = r["name"]
    return out


def plan_from_answer(text: str, known_agents: set[str]) -> list[p.AssignmentSpec]:
    """The plan in a planner's final answer (a JSON object, maybe fenced); ``PlanError`` if none."""
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end <= start:
        raise PlanError("the answer holds no JSON object")
    try:
        data = msgspec.json.decode(text[start:end + 1])
    except msgspec.DecodeError as exc:
        raise PlanError(f"the answer is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise PlanError("the answer is not a JSON object")
    assignments = load_plan(data, known_agents)
    for a in assignments:
        if a.name == PLAN_TREE:
            raise PlanError(f"the assignment name {PLAN_TREE!r} is reserved")
    return assignments
