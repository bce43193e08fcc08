"""actors.review_policy: every combination of one to four verdicts against the four rules."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest

from actors import review_policy as rp

ALL_COMBINATIONS = [combo for n in range(1, 5) for combo in itertools.product(rp.VERDICTS, repeat=n)]


def _by_the_rules(verdicts) -> str:
    """The four rules read off the mission text, written apart from the code under test."""
    counts = Counter(verdicts)
    rules = [
        (counts["blocker"] >= 1, "stop_and_escalate"),           # 1. any blocker
        (counts["concern"] >= 2, "pause_and_clarify"),           # 2. two or more concerns
        (counts["concern"] == 1, "log_warning"),                 # 3. exactly one concern
        (counts["approve"] == len(verdicts), "continue"),        # 4. all approve
    ]
    return next(decision for applies, decision in rules if applies)


def test_there_are_120_combinations():
    assert len(ALL_COMBINATIONS) == 3 + 9 + 27 + 81 == 120


@pytest.mark.parametrize("verdicts", ALL_COMBINATIONS, ids=lambda c: "-".join(c))
def test_every_combination_follows_the_rules(verdicts):
    decision, reason = rp.decide(list(verdicts))
    assert decision == _by_the_rules(verdicts)
    assert reason and "\n" not in reason
    # order does not matter, and the same verdicts always give the same decision
    assert rp.decide(list(reversed(verdicts))) == (decision, reason)
    assert rp.decide(tuple(sorted(verdicts))) == (decision, reason)


def test_how_many_combinations_lead_to_each_decision():
    # counted by hand: with a blocker 1+5+19+65; no blocker and >= 2 concerns 0+1+4+11;
    # exactly one concern 1+2+3+4; all approve 4
    tally = Counter(rp.decide(c)[0] for c in ALL_COMBINATIONS)
    assert tally == {"stop_and_escalate": 90, "pause_and_clarify": 16, "log_warning": 10, "continue": 4}


@pytest.mark.parametrize("verdicts, decision", [
    (["approve"], "continue"),
    (["approve", "approve", "approve", "approve"], "continue"),
    (["concern"], "log_warning"),
    (["approve", "concern", "approve"], "log_warning"),
    (["concern", "concern"], "pause_and_clarify"),
    (["concern", "approve", "concern", "approve"], "pause_and_clarify"),
    (["blocker"], "stop_and_escalate"),
    (["approve", "approve", "approve", "blocker"], "stop_and_escalate"),
    (["concern", "concern", "concern", "blocker"], "stop_and_escalate"),
])
def test_hand_written_cases(verdicts, decision):
    assert rp.decide(verdicts)[0] == decision


def test_reasons_name_the_counts():
    assert rp.decide(["concern", "blocker", "approve"])[1] == "1 blocker(s) of 3 verdict(s)"
    assert rp.decide(["concern", "concern", "approve"])[1] == "2 concerns of 3 verdicts"
    assert rp.decide(["approve", "approve"])[1] == "all 2 reviewer(s) approve"


def test_no_verdicts_counts_as_one_concern():
    assert rp.decide([]) == ("log_warning", rp.NO_REVIEWER_REASON)
    assert rp.decide([])[0] == rp.decide(["concern"])[0]


def test_a_value_that_is_not_a_verdict_is_our_bug():
    with pytest.raises(ValueError, match="not a verdict"):
        rp.decide(["approve", "lgtm"])  # type: ignore[list-item]
