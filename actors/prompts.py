"""The prompts orchd gives agents (pure): an assignment's, the planner's, a resumed run's."""

from __future__ import annotations

from orchd import protocol as p

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


def resume_prompt(assignment: str, reason: str | None) -> str:
    """The prompt of a run resumed in the agent's own session (it already has the task)."""
    lead = ("orchd restarted while you were working." if reason in (None, "orchd restarted")
            else f"Your previous run stopped ({reason}).")
    return (f"{lead} Continue your assignment where you left off.\n"
            f"orchd-assignment: {assignment}\n\n" + MARKER_PROTOCOL)
