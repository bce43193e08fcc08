"""Plans: validate a plan file, build the default plan, write the prompts (pure)."""

from __future__ import annotations

from typing import Any

import msgspec

from orchd import protocol as p


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
        if a.weight < 0:
            raise PlanError(f"assignment {a.name!r}: weight must not be negative")
        if a.profile not in (None, "workspace", "readonly", "yolo"):
            raise PlanError(f"assignment {a.name!r}: unknown profile {a.profile!r}")
    _check_acyclic(assignments)
    return assignments


def _check_acyclic(assignments: list[p.AssignmentSpec]) -> None:
    deps = {a.name: list(a.after) for a in assignments}
    state: dict[str, int] = {}

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            raise PlanError("the plan's 'after' links form a cycle: " + " -> ".join(path + [name]))
        state[name] = 1
        for dep in deps[name]:
            visit(dep, path + [name])
        state[name] = 2

    for name in deps:
        visit(name, [])


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


MARKER_PROTOCOL = """\
Report progress by printing these markers, each on a line of its own:
  MILESTONE: <what you just completed>
  BLOCKER: <what stops you and what you need>
  REQUEST_REVIEW: <what you want the other agents to look at>
  DONE: <one-paragraph summary of what you did, and the files you changed>
Print DONE exactly once, when your assignment is complete."""


def prompt_for(task: str, a: p.AssignmentSpec, before: list[tuple[p.AssignmentSpec, str, str | None]]) -> str:
    """The prompt of one assignment.

    ``before``: the assignments it builds on, each with its summary (its
    DONE text or final answer) and where its files are (branch/worktree).
    """
    lines = [
        f"You are the {a.role or a.name} member of a team of coding agents working on one task, coordinated by orchd.",
        f"orchd-assignment: {a.name}",
        "",
        "TASK:",
        task or "(no task text given)",
        "",
        f"YOUR ASSIGNMENT: {a.prompt or a.role or a.name}",
        "Work only inside the current directory: it is a git worktree made for you, holding the results of the assignments before yours.",
    ]
    if before:
        lines += ["", "WHAT THE TEAM DID BEFORE YOU:"]
        for spec, summary, where in before:
            lines.append(f"- {spec.name} ({spec.agent}, {spec.role or 'no role'}): {summary.strip() or '(no summary)'}"
                         + (f" [files: {where}]" if where else ""))
    lines += ["", MARKER_PROTOCOL]
    return "\n".join(lines)


def planner_prompt(task: str, agents: list[str], error: str | None) -> str:
    """The prompt of the planning run: answer with a plan as JSON, nothing else."""
    lines = [
        "You are the planner of a team of coding agents coordinated by orchd.",
        "orchd-assignment: _plan",
        "",
        "TASK:",
        task or "(no task text given)",
        "",
        "Split the task into assignments for these agents: " + ", ".join(agents) + ".",
        "Answer with ONE JSON object and nothing else, of this shape:",
        '{"assignments": [{"name": "design", "agent": "gemini", "role": "design and architecture",',
        '  "prompt": "what to do", "weight": 40, "after": []}, ...]}',
        "Names: letters, digits and dashes. 'after' lists the names an assignment waits for.",
        "Weights are relative shares of the work. Do not modify any file.",
    ]
    if error:
        lines += ["", f"Your previous answer was not a valid plan: {error}", "Answer again with valid JSON only."]
    return "\n".join(lines)


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
