"""The review state machine (pure, explicit ``now``) and the snapshot git plumbing (real git)."""

from __future__ import annotations

import itertools
import os
import subprocess
from pathlib import Path

from actors import prompts, reviewing, snapshots
from orchd import protocol as p
from tests.conftest import GIT_ENV


def _ids():
    n = itertools.count(1)
    return lambda: f"r{next(n)}"


# ---------------------------------------------------------------- who reviews

def test_reviewers_are_the_other_agents_never_the_authors_own():
    assert reviewing.reviewers_for(["gemini", "claude", "codex"], "claude", None, False) == ["gemini", "codex"]
    assert reviewing.reviewers_for(["claude", "claude"], "claude", None, False) == []
    assert reviewing.reviewers_for(["claude", "codex", "gemini"], "codex", 1, False) == ["claude"]
    assert reviewing.reviewers_for(["claude", "codex"], "claude", ["claude", "gemini"], False) == ["gemini"]
    # the command reviewer only when configured; it may be named more than once and review a command
    assert reviewing.reviewers_for(["command"], "command", None, True) == ["command"]
    assert reviewing.reviewers_for(["command"], "command", ["command", "command"], True) == ["command", "command"]
    assert reviewing.reviewers_for(["command"], "command", ["command"], False) == []


# ---------------------------------------------------------------- triggers, coalescing, rounds

def test_triggers_during_a_review_are_coalesced_into_the_next_one_never_lost():
    book, ids = reviewing.Book(fallback_s=900), _ids()
    book.launched("s", "a", 0, now=0.0)
    for i in range(10):
        book.trigger("s", "a", reviewing.label("milestone", f"step {i}"), now=0.1 * i)
        step = book.start("s", "a", max_rounds=2, new_id=ids)
        if i == 0:
            assert isinstance(step, reviewing.Start) and step.review.triggers == ["milestone: step 0"]
        else:
            assert step is None  # one review in flight: the trigger waits
    book.requested("s", "a", "c1")
    book.decided("s", "a", "continue", [])
    second = book.start("s", "a", max_rounds=2, new_id=ids)
    assert isinstance(second, reviewing.Start) and second.review.round == 2
    assert second.review.triggers == [f"milestone: step {i}" for i in range(1, 10)]


def test_past_max_rounds_no_review_starts_and_an_unconverged_assignment_escalates():
    for last, escalate in (("continue", False), ("log_warning", False), ("pause_and_clarify", True)):
        book, ids = reviewing.Book(fallback_s=900), _ids()
        for _ in range(2):
            book.trigger("s", "a", "milestone: x", now=0)
            start = book.start("s", "a", 2, ids)
            book.requested("s", "a", f"c-{start.review.round}")
            book.decided("s", "a", last, [])
        book.trigger("s", "a", reviewing.label("end"), now=0)
        skip = book.start("s", "a", 2, ids)
        assert isinstance(skip, reviewing.Skip) and skip.end and skip.escalate is escalate
        assert ("did not converge" in skip.reason) is escalate


def test_max_rounds_zero_never_reviews():
    book = reviewing.Book(fallback_s=900)
    book.trigger("s", "a", "end", now=0)
    assert isinstance(book.start("s", "a", 0, _ids()), reviewing.Skip)


def test_the_fallback_fires_only_after_fallback_s_without_a_trigger_while_the_assignment_runs():
    book = reviewing.Book(fallback_s=900)
    book.launched("s", "a", 0, now=1000.0)
    assert book.next_due() == 1900.0
    assert book.due(1899.9) == []
    book.trigger("s", "a", "milestone: m", now=1500.0)  # a trigger restarts the wait
    start = book.start("s", "a", 5, _ids())
    assert book.due(2399.0) == [] and book.next_due() is None  # a review is in flight
    book.requested("s", "a", "c")
    book.decided("s", "a", "continue", [])
    assert book.next_due() == 2400.0
    assert book.due(2400.0) == [("s", "a")]
    assert book.track("s", "a").pending[0].startswith("fallback")
    book.exited("s", "a")
    book.start("s", "a", 5, _ids())
    book.track("s", "a").review = None
    assert book.next_due() is None and book.due(10**6) == []  # not while the assignment does not run
    assert start.review.round == 1


def test_unchanged_files_are_skipped_and_keep_the_end_only_after_a_converged_review():
    book, ids = reviewing.Book(fallback_s=900), _ids()
    book.trigger("s", "a", "milestone: m", now=0)
    book.start("s", "a", 5, ids)
    book.requested("s", "a", "c1")
    book.decided("s", "a", "log_warning", [])
    book.trigger("s", "a", "end: done", now=1)
    book.start("s", "a", 5, ids)
    skip = book.unchanged("s", "a")
    assert skip.end and not skip.escalate and "reviewed already" in skip.reason
    assert book.track("s", "a").rounds == 1  # a skipped review uses no round


# ---------------------------------------------------------------- the prompt

def test_the_review_prompt_has_the_marker_line_the_claims_and_never_the_authors_agent():
    a = p.AssignmentSpec(name="impl", agent="claude", role="implementation", prompt="add a cache")
    text = prompts.review_prompt("the task", a, 2, ["milestone: tests pass"], "abc123", "diff --git a b",
                                 ["concern x.py:3: leaks"], "(exit 1)\nFAILED", "not JSON")
    assert "orchd-review: impl round 2" in text.splitlines()
    assert "claude" not in text.lower()
    for part in ("the task", "add a cache", "milestone: tests pass", "author's own claims", "diff --git a b",
                 "concern x.py:3: leaks", "FAILED", "not JSON", '"verdict"'):
        assert part in text, part


# ---------------------------------------------------------------- snapshots (real git)

def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True,
                          env={**os.environ, **GIT_ENV}).stdout.strip()


def test_a_snapshot_leaves_the_authors_index_head_and_files_alone(git_repo, tmp_path):
    (git_repo / "README.md").write_text("changed\n")
    (git_repo / "new.txt").write_text("new\n")
    (git_repo / "staged.txt").write_text("staged\n")
    _git(git_repo, "add", "staged.txt")
    before = (_git(git_repo, "rev-parse", "HEAD"), _git(git_repo, "status", "--porcelain"),
              (git_repo / ".git" / "index").read_bytes())
    res = snapshots.take("s-1", "r1", str(git_repo), str(tmp_path / "co"), None, 60_000, ["cat", "new.txt"], 10)
    assert res.error is None, res.error
    after = (_git(git_repo, "rev-parse", "HEAD"), _git(git_repo, "status", "--porcelain"),
             (git_repo / ".git" / "index").read_bytes())
    assert after == before
    # held in orchd's own snapshot repository (beside the checkout by default), not in the author's
    assert _git(tmp_path / "snapshots.git", "rev-parse", "refs/orchd/review/s-1/r1") == res.commit
    assert _git(git_repo, "for-each-ref", "refs/orchd") == ""
    co = Path(res.checkout)
    assert (co / "new.txt").read_text() == "new\n" and (co / "README.md").read_text() == "changed\n"
    assert "new.txt" in res.diff and "staged.txt" in res.diff
    assert res.check_output.startswith("(exit 0)") and "new" in res.check_output
    # nothing new: the same files give the last commit back, and no checkout
    again = snapshots.take("s-1", "r2", str(git_repo), str(tmp_path / "co2"), res.commit, 60_000, None, 10)
    assert again.commit == res.commit and again.checkout is None
    # a cap: beyond it the stat and the file list only
    (git_repo / "big.txt").write_text("x\n" * 50_000)
    big = snapshots.take("s-1", "r3", str(git_repo), str(tmp_path / "co3"), res.commit, 1000, None, 10)
    assert "over the 1000-byte cap" in big.diff and "big.txt" in big.diff and len(big.diff) < 5000


def test_a_snapshot_of_a_directory_that_is_not_a_repository_is_an_error_result(tmp_path):
    res = snapshots.take("s-1", "r1", str(tmp_path), str(tmp_path / "co"), None, 1000, None, 10)
    assert res.error and res.commit is None


# ---------------------------------------------------------------- the gate in decide (pure)

def test_dependents_and_the_end_wait_for_the_review_of_an_assignments_end():
    from actors import decide as d
    from actors.sessions import Projection
    from orchd.config import Limits

    proj = Projection(review_on=lambda s, w: True)
    specs = [p.AssignmentSpec(name="a", agent="claude"), p.AssignmentSpec(name="b", agent="codex", after=["a"])]

    def apply(ev, worker=None, gen=0):
        proj.apply(p.Stamp(seq=0, ts=1.0, session="s", worker=worker, gen=gen), ev)

    apply(p.SessionSubmitted(task="t", target="/t", assignments=specs))
    apply(p.SessionStateChanged(state="running"))
    s = proj.sessions["s"]
    apply(p.WorkerLaunching(), "a", 0)
    apply(p.WorkerExited(state="done", exit_code=0), "a", 0)
    assert d.decide(s, Limits(), 0.0) == []  # a is done but its end is in review: b waits, nothing ends
    apply(p.ReviewRequested(review_id="r1", assignment="a", round=1, triggers=["end"], commit="c", gen=0))
    apply(p.DecisionMade(review_id="r1", decision="log_warning", verdicts=["concern", "approve"], assignment="a"))
    apply(p.ReviewWarning(review_id="r1", assignment="a", concerns=["codex: no tests"]))
    assert d.decide(s, Limits(), 0.0) == [d.Launch(worker="b")]
    assert s.workers["a"].warnings == ["codex: no tests"]


def test_a_pause_decision_asks_and_an_answer_resumes_the_author_with_it():
    from actors import decide as d
    from actors.sessions import Projection
    from orchd.config import Limits

    proj = Projection(review_on=lambda s, w: True)

    def apply(ev, worker=None, gen=0):
        proj.apply(p.Stamp(seq=0, ts=1.0, session="s", worker=worker, gen=gen), ev)

    apply(p.SessionSubmitted(task="t", target="/t", assignments=[p.AssignmentSpec(name="a", agent="claude")]))
    apply(p.SessionStateChanged(state="running"))
    s = proj.sessions["s"]
    apply(p.WorkerLaunching(), "a", 0)
    apply(p.WorkerExited(state="done", exit_code=0), "a", 0)
    apply(p.ReviewRequested(review_id="r1", assignment="a", round=1, triggers=["end"], commit="c", gen=0))
    apply(p.ReviewVerdict(review_id="r1", reviewer="codex", verdict="concern", summary="which db?"))
    apply(p.DecisionMade(review_id="r1", decision="pause_and_clarify", assignment="a"))
    (ask,) = d.decide(s, Limits(), 0.0)
    assert isinstance(ask, d.AskHuman) and ask.worker == "a" and "which db?" in ask.question
    apply(p.SessionQuestion(question=ask.question, worker="a"))
    apply(p.SessionStateChanged(state="paused"))
    assert d.decide(s, Limits(), 0.0) == [] and s.outcome() is None
    apply(p.SessionAnswered(text="sqlite", question=ask.question, worker="a"))
    apply(p.SessionStateChanged(state="running"))
    (launch,) = d.decide(s, Limits(), 0.0)
    assert launch.worker == "a" and launch.resume and launch.answer == (ask.question, "sqlite")
