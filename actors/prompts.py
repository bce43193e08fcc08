"""The prompts orchd gives agents (pure): an assignment's, the planner's, a resumed run's."""

from __future__ import annotations

from orchd import protocol as p

MARKER_PROTOCOL = """\
Report progress by printing these markers, each on a line of its own:
  MILESTONE: <what you just completed>
  BLOCKER: <what stops you and what you need>
  REQUEST_REVIEW: <what you want the other agents to look at>
  DONE: <one-paragraph summary of what you did, and the files you changed>
  QUESTION: <a question only a human can answer>
Print DONE exactly once, when your assignment is complete.
Never use an interactive question tool (such as AskUserQuestion): nobody can answer it. To ask the human,
print a QUESTION line and end your turn; you will be resumed with the answer."""


def prompt_for(task: str, a: p.AssignmentSpec, before: list[tuple], warnings: list[str] = ()) -> str:
    """The prompt of one assignment.

    ``before``: the assignments it builds on, each ``(spec, summary, where[, concerns])``:
    its summary (its DONE text or final answer), where its files are
    (branch/worktree) and the concerns its reviews left (``log_warning``).
    ``warnings``: the concerns reviews raised about this assignment's own work.
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
        for spec, summary, where, *rest in before:
            lines.append(f"- {spec.name} ({spec.agent}, {spec.role or 'no role'}): {summary.strip() or '(no summary)'}"
                         + (f" [files: {where}]" if where else ""))
            for concern in (rest[0] if rest else ()):
                lines.append(f"  REVIEW CONCERN about {spec.name} (check it in your work): {concern}")
    lines += _concerns(warnings)
    lines += ["", MARKER_PROTOCOL]
    return "\n".join(lines)


def with_concerns(text: str, before: list[tuple], warnings: list[str]) -> str:
    """A ``command`` assignment's own prompt, with the review concerns about it and its dependencies."""
    lines = [f"REVIEW CONCERN about {spec.name}: {c}" for spec, _s, _w, *rest in before for c in (rest[0] if rest else ())]
    lines += _concerns(warnings)
    return "\n".join([text, *lines]) if lines else text


def _concerns(warnings) -> list[str]:
    if not warnings:
        return []
    return ["", "CONCERNS THE REVIEWERS RAISED ABOUT YOUR WORK (address them):"] + [f"- {w}" for w in warnings]


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


def resume_prompt(assignment: str, reason: str | None, warnings: list[str] = ()) -> str:
    """The prompt of a run resumed in the agent's own session (it already has the task)."""
    lead = ("orchd restarted while you were working." if reason in (None, "orchd restarted")
            else f"Your previous run stopped ({reason}).")
    return (f"{lead} Continue your assignment where you left off.\n"
            f"orchd-assignment: {assignment}\n" + "\n".join(_concerns(warnings)) + "\n\n" + MARKER_PROTOCOL)


def answer_prompt(assignment: str, question: str, warnings: list[str], answer: str) -> str:
    """The prompt that resumes an assignment after ``orchctl answer``: question, concerns, answer verbatim."""
    lines = ["The work was paused for a human's answer. Continue your assignment with it.",
             f"orchd-assignment: {assignment}", "", "THE QUESTION:", question]
    lines += _concerns(warnings)
    lines += ["", "THE HUMAN'S ANSWER (verbatim):", answer, "", MARKER_PROTOCOL]
    return "\n".join(lines)


REVIEW_FORMAT = """\
Answer with ONE JSON object and nothing else:
{"verdict": "approve" | "concern" | "blocker",
 "summary": "<at most 200 words>",
 "findings": [{"severity": "blocker" | "concern" | "nit", "file": "path", "line": 1,
               "evidence": "what you saw", "confidence": 0.0-1.0}]}
approve: nothing wrong that matters. concern: something should be fixed or clarified. blocker: the work
must not go on as it is. Report only findings you are confident of, with evidence from the files."""


def review_prompt(task: str, a: p.AssignmentSpec, round_: int, triggers: list[str], commit: str | None,
                  diff: str, findings: list[str], check_output: str | None, error: str | None = None) -> str:
    """A reviewer's prompt (never names the author's agent); untrusted texts are labelled as such."""
    lines = [
        "You are a reviewer in a team of coding agents coordinated by orchd. You may read files; do not modify any.",
        f"orchd-review: {a.name} round {round_}",
        "",
        "TASK:", task or "(no task text given)",
        "",
        f"THE ASSIGNMENT UNDER REVIEW: {a.name} (role: {a.role or 'none'})",
        f"Its instructions: {a.prompt or a.role or a.name}",
        "",
        f"The current directory is a read-only checkout of the author's work at commit {commit or '(unknown)'}.",
        "WHAT TRIGGERED THIS REVIEW (the author's own claims: verify them, do not trust them):",
    ]
    lines += [f"- {t}" for t in triggers] or ["- (none)"]
    lines += ["", "CHANGES SINCE THE LAST REVIEWED COMMIT:", diff or "(no changes)"]
    if findings:
        lines += ["", "OPEN FINDINGS OF EARLIER ROUNDS (check whether each is fixed):"] + [f"- {f}" for f in findings]
    if check_output is not None:
        lines += ["", "OUTPUT OF THE CHECK COMMAND RUN ON THIS SNAPSHOT:", check_output]
    lines += ["", REVIEW_FORMAT]
    if error:
        lines += ["", f"Your previous answer could not be used: {error}", "Answer again with the JSON object only."]
    return "\n".join(lines)
