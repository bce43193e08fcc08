"""The review decision policy (pure: a function of the verdicts alone).

The rules, in order, exactly as the mission states them:

1. any ``blocker``            → ``stop_and_escalate``
2. two or more ``concern``s   → ``pause_and_clarify``
3. exactly one ``concern``    → ``log_warning``
4. all ``approve``            → ``continue``

The order of the verdicts does not matter, and the same verdicts always
give the same decision.  A reviewer that could not give a valid answer (a
timeout, a non-zero exit, an answer still invalid after one re-ask) has
already been counted as ``concern`` by the caller (``actors.verdicts``), so
it never reads as approval here.

No verdicts at all (no reviewer could be run: the session has only the
author's agent, or every candidate was excluded) counts as **one concern**,
hence ``log_warning``.  Not ``continue``: an unreviewed change must never
read as approved.  Not ``pause_and_clarify``: a session with a single agent
CLI would then stop for a human at every review although nothing was found;
one warning, recorded and handed to the next prompt, says exactly what
happened ("nobody reviewed this").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

Verdict = Literal["approve", "concern", "blocker"]
Decision = Literal["continue", "log_warning", "pause_and_clarify", "stop_and_escalate"]

VERDICTS: tuple[Verdict, ...] = ("approve", "concern", "blocker")
DECISIONS: tuple[Decision, ...] = ("continue", "log_warning", "pause_and_clarify", "stop_and_escalate")

NO_REVIEWER_REASON = "no reviewer could run (counted as one concern)"


def decide(verdicts: Sequence[Verdict]) -> tuple[Decision, str]:
    """The decision for these verdicts and a one-line reason saying which rule applied.

    Raises ``ValueError`` for a value that is not a verdict: the caller
    validated every answer, so one here is our bug, not a reviewer's.
    """
    blockers = concerns = approvals = 0
    for v in verdicts:
        if v == "blocker":
            blockers += 1
        elif v == "concern":
            concerns += 1
        elif v == "approve":
            approvals += 1
        else:
            raise ValueError(f"not a verdict: {v!r}")
    total = len(verdicts)
    if total == 0:
        return "log_warning", NO_REVIEWER_REASON
    if blockers:
        return "stop_and_escalate", f"{blockers} blocker(s) of {total} verdict(s)"
    if concerns >= 2:
        return "pause_and_clarify", f"{concerns} concerns of {total} verdicts"
    if concerns == 1:
        return "log_warning", f"1 concern of {total} verdict(s)"
    return "continue", f"all {approvals} reviewer(s) approve"
