"""Plans: validate a plan file, build the default plan, read a planner's answer (pure).

A plan file is read strictly: an unknown key is an error naming it (with
a "did you mean"), and everything a launch would refuse (a name git
cannot take, a NUL byte in argv or env, an env key with "=") is refused
here, so a plan accepted at submit never fails at launch for its input.
``parse_plan`` needs nothing but the file (orchctl runs it before
sending); ``validate`` adds what needs the daemon's agents and the whole
plan (links, cycles, duplicate names).
"""

from __future__ import annotations

import difflib
from typing import Any

import msgspec

from actors.worktrees import assignment_name_problem
from orchd import protocol as p


MAX_ASSIGNMENTS = 1000
MAX_WEIGHT = 1e6
MAX_ARG_BYTES = 128 * 1024  # Linux's MAX_ARG_STRLEN: one argv or env string longer than this fails exec (E2BIG)
PLAN_TREE = "orchd-planner"  # the planning run's worktree/branch label; reserved
PROFILES = ("workspace", "readonly", "yolo")


class PlanError(ValueError):
    """The plan cannot run; the message says why."""


class PlanFile(msgspec.Struct, forbid_unknown_fields=True):
    assignments: list[p.AssignmentSpec]


RESERVED_KEYS = ("run_kind",)  # orchd's own: never in a plan file
PLAN_KEYS = PlanFile.__struct_fields__
ASSIGNMENT_KEYS = tuple(k for k in p.AssignmentSpec.__struct_fields__ if k not in RESERVED_KEYS)
"""A plan file's keys are the wire type's, checked strictly here by ``_check_keys`` (the wire
type itself ignores unknown fields, so stored events keep decoding across versions)."""


def unknown_key(where: str, key: object, valid: tuple[str, ...]) -> str:
    """``<where>: unknown key 'promt' (did you mean 'prompt'?; valid: ...)``."""
    close = difflib.get_close_matches(key, valid, n=1) if isinstance(key, str) else []
    hint = f"did you mean {close[0]!r}?; " if close else ""
    return f"{where}: unknown key {_short(key)!r} ({hint}valid: {', '.join(valid)})"


def _short(value: object) -> object:
    return value[:100] if isinstance(value, str) else value


def _label(item: dict[str, Any], index: int) -> str:
    name = item.get("name")
    return f"assignment {_short(name)!r}" if isinstance(name, str) and name else f"assignments[{index}]"


def _check_keys(data: dict[str, Any]) -> None:
    for key in data:
        if key not in PLAN_KEYS:
            raise PlanError(unknown_key("the plan", key, PLAN_KEYS))
    items = data.get("assignments")
    for i, item in enumerate(items if isinstance(items, list) else []):
        for key in item if isinstance(item, dict) else ():
            if key in RESERVED_KEYS:
                raise PlanError(f"{_label(item, i)}: {key!r} is reserved for orchd's own runs")
            if key not in ASSIGNMENT_KEYS:
                raise PlanError(unknown_key(_label(item, i), key, ASSIGNMENT_KEYS))


def parse_plan(data: Any, source: str | None = None) -> list[p.AssignmentSpec]:
    """A plan file's content as assignments, or ``PlanError("invalid plan[ SOURCE]: ...")``.

    Checks what the file alone decides: its keys and types, and each
    assignment on its own (``check_assignment``).
    """
    what = f"invalid plan {source}" if source else "invalid plan"
    try:
        if not isinstance(data, dict):
            raise PlanError("a plan is an object with an 'assignments' list")
        _check_keys(data)
        try:
            plan = msgspec.convert(data, PlanFile)
        except msgspec.ValidationError as exc:
            raise PlanError(str(exc)) from None
        specs = plan.assignments
        for a in specs:
            check_assignment(a)
    except PlanError as exc:
        raise PlanError(f"{what}: {exc}") from None
    return specs


def load_plan(data: dict[str, Any], known_agents: set[str]) -> list[p.AssignmentSpec]:
    return validate(parse_plan(data), known_agents)


def check_assignment(a: p.AssignmentSpec) -> None:
    """What one assignment needs to launch: a name git takes, strings exec takes, a weight, a profile."""
    if (why := assignment_name_problem(a.name)) is not None:
        raise PlanError(f"assignment name {_short(a.name)!r} is not usable as a branch name part: {why}")
    where = f"assignment {a.name!r}"
    for field, text in (("role", a.role), ("prompt", a.prompt)):
        if (why := _text_problem(text, limit=None)) is not None:
            raise PlanError(f"{where}: {field} {why}")
    for i, arg in enumerate(a.argv or []):
        if (why := _text_problem(arg)) is not None:
            raise PlanError(f"{where}: argv[{i}] {why}")
    for key, value in (a.env or {}).items():
        if not key or "=" in key:
            raise PlanError(f"{where}: env key {_short(key)!r} is not a variable name (empty, or holds '=')")
        if (why := _text_problem(key) or _text_problem(f"{key}={value}")) is not None:
            raise PlanError(f"{where}: env {_short(key)!r} {why}")
    if not 0 <= a.weight <= MAX_WEIGHT:  # also refuses NaN and inf
        raise PlanError(f"{where}: weight must be a number from 0 to {MAX_WEIGHT:g}, got {a.weight}")
    if a.profile is not None and a.profile not in PROFILES:
        close = difflib.get_close_matches(a.profile, PROFILES, n=1)
        hint = f"did you mean {close[0]!r}?; " if close else ""
        raise PlanError(f"{where}: unknown profile {_short(a.profile)!r} ({hint}valid: {', '.join(PROFILES)})")
    if a.run_kind != "assignment":
        raise PlanError(f"{where}: run_kind {a.run_kind!r} is reserved for orchd's own runs")


def _text_problem(text: str, limit: int | None = MAX_ARG_BYTES) -> str | None:
    """Why exec would refuse ``text`` as an argv or env string; None if it would not."""
    if "\x00" in text:
        return "holds a NUL byte"
    try:
        size = len(text.encode())  # strict: the wire (msgspec JSON) cannot carry a lone surrogate either
    except UnicodeEncodeError:
        return "is not valid Unicode text (a lone surrogate)"
    if limit is not None and size >= limit:
        return f"is {size} bytes long; exec takes at most {limit - 1}"
    return None


def validate(assignments: list[p.AssignmentSpec], known_agents: set[str]) -> list[p.AssignmentSpec]:
    if not assignments:
        raise PlanError("the plan has no assignments")
    if len(assignments) > MAX_ASSIGNMENTS:
        raise PlanError(f"the plan has {len(assignments)} assignments; at most {MAX_ASSIGNMENTS} are allowed")
    names = [a.name for a in assignments]
    for a in assignments:
        check_assignment(a)
        if names.count(a.name) > 1:
            raise PlanError(f"assignment name {a.name!r} is used twice")
        if a.agent not in known_agents:
            raise PlanError(f"assignment {a.name!r}: unknown agent {a.agent!r} (known: {', '.join(sorted(known_agents))})")
        if a.agent == "command" and not a.argv:
            raise PlanError(f"assignment {a.name!r}: a command assignment needs a non-empty argv")
        for dep in a.after:
            if dep not in names:
                raise PlanError(f"assignment {a.name!r} waits for {dep!r}, which is not in the plan")
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
