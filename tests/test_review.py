"""Peer review end to end with a real daemon: command authors (tests/fakeagent.py) and scripted
command reviewers (tests/fakereviewer.py), real git snapshots, real processes.

Each test names the decision path it drives: all approve, one concern, two concerns then an
answer, a blocker, rounds that do not converge, an agent's QUESTION, coalesced milestones,
bad reviewer answers, and a reviewer that writes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, fake, wait_for, write_plan
from tests.helpers import Hook, notify_recorder, recorded

FAKEREVIEWER = str(ROOT / "tests" / "fakereviewer.py")


def _config(tmp_path: Path, script: dict, reviewers: int = 2, deadline_s: float = 20, extra: str = "") -> str:
    (tmp_path / "script.json").write_text(json.dumps(script))
    logs = tmp_path / "reviewer-prompts"
    logs.mkdir(exist_ok=True)
    argv = json.dumps([sys.executable, FAKEREVIEWER, str(tmp_path / "script.json"), str(logs)])
    return (f"[review]\ncommand = {argv}\nreviewers = {json.dumps(['command'] * reviewers)}\n"
            f"deadline_s = {deadline_s}\n{extra}")


def _submit(d, tmp_path: Path, repo: Path, assignments: list[dict]) -> str:
    plan = write_plan(tmp_path / "plan.json", assignments)
    return d.ctl_json("submit", "a task", "--target", str(repo), "--plan", str(plan))["session"]


def _events_now(d, sid: str) -> list[dict]:
    """History so far (watch without --until-done stays live: ask for a replay through status-like poll)."""
    res = subprocess.run([sys.executable, "-c", _REPLAY, str(d.runtime_dir), sid], capture_output=True, timeout=30)
    return [json.loads(line) for line in res.stdout.decode().splitlines() if line.strip()]


_REPLAY = """
import sys, json
from orchctl.client import Client
from orchd import protocol as p, paths
c = Client(paths.control_endpoint(__import__('pathlib').Path(sys.argv[1])), 10.0)
since = 0
while True:
    r = c.call(p.Replay(since=since, session=sys.argv[2]))
    for raw in r.events:
        print(bytes(raw).decode())
    since = r.last_seq
    if not r.more:
        break
"""


def _author(name: str, *ops: str, after: list[str] = ()) -> dict:
    return {"name": name, "agent": "command", "argv": fake(*ops), "after": list(after)}


def _reviews(d, sid: str) -> list[dict]:
    return d.ctl_json("reviews", sid)["reviews"]


def test_all_approve_ends_done(daemon_factory, tmp_path, git_repo):
    d = daemon_factory(_config(tmp_path, {"*": {"verdict": "approve", "summary": "looks right"}}))
    sid = _submit(d, tmp_path, git_repo, [_author("a", "write:a.txt:one", "exit:0"),
                                          _author("b", "write:b.txt:two", "exit:0", after=["a"])])
    s = d.wait_session(sid)
    assert s["state"] == "done", s
    reviews = _reviews(d, sid)
    assert {r["assignment"] for r in reviews} == {"a", "b"}
    for r in reviews:
        assert r["decision"] == "continue" and r["round"] == 1 and r["commit"]
        assert [v["verdict"] for v in r["verdicts"]] == ["approve", "approve"]
        assert any(t.startswith("end") for t in r["triggers"])
    assert all(w["review_round"] == 1 and w["last_decision"] == "continue" for w in s["workers"]
               if w["name"] in ("a", "b"))
    # b started only after a's end review was decided
    evs = _events_now(d, sid)
    decided_a = next(e["seq"] for e in evs if e["kind"] == "decision.made" and e["assignment"] == "a")
    launched_b = next(e["seq"] for e in evs if e["kind"] == "worker.launching" and e["worker"] == "b")
    assert decided_a < launched_b
    # the prompt, raw answer and verdict are kept, owner-only
    kept = list((d.state_dir / "reviews" / sid).rglob("*.txt"))
    assert kept and all(os.stat(f).st_mode & 0o077 == 0 for f in kept)
    d.stop()


def test_one_concern_warns_and_reaches_the_next_prompt(daemon_factory, tmp_path, git_repo):
    script = {"a/1/1": {"verdict": "concern", "summary": "the cache is never invalidated"},
              "*": {"verdict": "approve", "summary": "ok"}}
    d = daemon_factory(_config(tmp_path, script))
    seen = tmp_path / "b-prompt.txt"
    sid = _submit(d, tmp_path, git_repo, [_author("a", "write:a.txt:one", "exit:0"),
                                          _author("b", f"prompt:{seen}", "exit:0", after=["a"])])
    s = d.wait_session(sid)
    assert s["state"] == "done", s
    evs = _events_now(d, sid)
    assert [e["decision"] for e in evs if e["kind"] == "decision.made" and e["assignment"] == "a"] == ["log_warning"]
    warning = next(e for e in evs if e["kind"] == "review.warning")
    assert "never invalidated" in warning["concerns"][0]
    assert "the cache is never invalidated" in seen.read_text()
    assert "never invalidated" in d.log()  # the warning's log line
    d.stop()


def test_two_concerns_pause_then_answer_resumes_and_round_two_approves(daemon_factory, tmp_path, git_repo):
    script = {"a/1": {"verdict": "concern", "summary": "which storage backend was meant?"},
              "*": {"verdict": "approve", "summary": "ok now"}}
    d = daemon_factory(_config(tmp_path, script))
    seen = tmp_path / "a-prompts.txt"
    sid = _submit(d, tmp_path, git_repo, [_author("a", f"prompt:{seen}", "write:a.txt:one", "exit:0")])
    s = d.wait_session(sid, states=("paused", "done", "failed", "escalated"))
    assert s["state"] == "paused" and s["waiting_for"] == "answer", s
    assert "which storage backend" in s["question"]
    assert d.ctl_json("status", sid)["workers"][0]["last_decision"] == "pause_and_clarify"
    res = d.ctl("resume", sid, "--json", check=False)
    assert res.returncode == 1 and "answer" in json.loads(res.stdout)["error"]["detail"]
    d.ctl("answer", sid, "Use SQLite, verbatim: 42 ümlaut")
    s = d.wait_session(sid)
    assert s["state"] == "done", s
    prompts = seen.read_text().split("=====")
    assert "Use SQLite, verbatim: 42 ümlaut" in prompts[1] and "which storage backend" in prompts[1]
    reviews = _reviews(d, sid)
    assert [(r["round"], r["decision"]) for r in reviews] == [(1, "pause_and_clarify"), (2, "continue")]
    kinds = [e["kind"] for e in _events_now(d, sid)]
    assert "session.question" in kinds and "session.answered" in kinds
    d.stop()


def test_a_blocker_escalates_and_the_notify_command_and_webhook_are_told(daemon_factory, tmp_path, git_repo):
    script = {"a/1/1": {"verdict": "blocker", "summary": "deletes the user's data"}, "*": {"verdict": "approve"}}
    hook = Hook()
    got = tmp_path / "notified.jsonl"
    command = notify_recorder(got)
    notify = f"[notify]\ncommand = {json.dumps(command)}\nwebhook = \"{hook.url}\"\n"
    try:
        d = daemon_factory(_config(tmp_path, script) + notify)
        sid = _submit(d, tmp_path, git_repo, [_author("a", "write:a.txt:one", "exit:0"),
                                              _author("b", "exit:0", after=["a"])])
        s = d.wait_session(sid)
        assert s["state"] == "escalated" and "deletes the user's data" in s["reason"], s
        assert next(w for w in s["workers"] if w["name"] == "b")["state"] == "pending"
        sent = wait_for(lambda: recorded(got), 20, "the notify command")
        assert any(n["situation"] == "escalated" and n["session"] == sid for n in sent), sent
        wait_for(lambda: any(n.get("situation") == "escalated" for n in hook.bodies()), 20, "the webhook POST")
        d.stop()
    finally:
        hook.close()


def test_rounds_stop_at_the_bound_and_a_session_that_does_not_converge_escalates(daemon_factory, tmp_path,
                                                                                 git_repo):
    d = daemon_factory(_config(tmp_path, {"*": {"verdict": "concern", "summary": "still unclear"}}))
    sid = _submit(d, tmp_path, git_repo, [_author("a", "write:a.txt:one", "exit:0")])
    def count(kind: str) -> int:
        return sum(1 for e in _events_now(d, sid) if e["kind"] == kind)

    for i in (1, 2):  # by the log, not by polling the state: a quick round can pause again between two polls
        wait_for(lambda: count("session.question") == i, 60, f"question {i}")
        assert d.status(sid)["state"] == "paused"
        d.ctl("answer", sid, "go on")
        wait_for(lambda: count("session.answered") == i, 20, f"answer {i} to be taken")
    s = d.wait_session(sid)
    assert s["state"] == "escalated" and "did not converge" in s["reason"], s
    assert [r["round"] for r in _reviews(d, sid)] == [1, 2]
    d.stop()


def test_a_question_marker_pauses_and_the_answer_reaches_the_agent(daemon_factory, tmp_path, git_repo):
    d = daemon_factory()
    seen = tmp_path / "prompts.txt"
    sid = _submit(d, tmp_path, git_repo, [_author("a", f"prompt:{seen}", "line:QUESTION: Postgres or SQLite?",
                                                  "hang")])
    s = d.wait_session(sid, states=("paused", "done", "failed"))
    assert s["state"] == "paused" and s["waiting_for"] == "answer" and s["question"] == "Postgres or SQLite?", s
    wait_for(lambda: d.status(sid)["workers"][0]["state"] == "stopped", 20, "the asking run to stop")
    # the plan's argv hangs again after the answer: stop it once the answer reached it
    d.ctl("answer", sid, "SQLite, please")
    wait_for(lambda: "SQLite, please" in seen.read_text(), 20, "the answer in the resumed run's prompt")
    assert "Postgres or SQLite?" in seen.read_text().split("=====")[1]
    d.ctl("stop", sid)
    d.wait_session(sid)
    d.stop()


def test_ten_milestones_in_a_second_make_at_most_two_reviews(daemon_factory, tmp_path, git_repo):
    d = daemon_factory(_config(tmp_path, {"*": {"verdict": "approve"}}))
    ops = [f"line:MILESTONE: step {i}" for i in range(10)]
    sid = _submit(d, tmp_path, git_repo, [_author("a", "write:a.txt:one", *ops, "exit:0")])
    assert d.wait_session(sid)["state"] == "done"
    evs = _events_now(d, sid)
    assert len([e for e in evs if e["kind"] == "worker.milestone"]) == 10
    requested = [e for e in evs if e["kind"] == "review.requested"]
    assert 1 <= len(requested) <= 2
    labelled = [t for e in evs if e["kind"] in ("review.requested", "review.skipped") for t in e["triggers"]
                if t.startswith("milestone")]
    assert sorted(labelled) == sorted(f"milestone: step {i}" for i in range(10))
    d.stop()


def test_bad_reviewer_answers_count_as_concern_after_one_reask(daemon_factory, tmp_path, git_repo):
    words = " ".join(["word"] * 2000)
    script = {"a/1/1": {"raw": "I think it is fine, no JSON here"},
              "a/1/2": {"raw": json.dumps({"verdict": "maybe", "summary": "", "findings": []})},
              "a/1/3": {"verdict": "approve", "summary": words},
              "a/1/4": {"hang": True},
              "a/1/5": {"exit": 3},
              "*": {"verdict": "approve"}}
    d = daemon_factory(_config(tmp_path, script, reviewers=5, deadline_s=3))
    sid = _submit(d, tmp_path, git_repo, [_author("a", "write:a.txt:one", "exit:0")])
    s = d.wait_session(sid, states=("paused", "done", "failed", "escalated"), timeout_s=90)
    assert s["state"] == "paused", s
    (r,) = _reviews(d, sid)
    assert r["decision"] == "pause_and_clarify"
    assert [v["verdict"] for v in r["verdicts"]] == ["concern"] * 5
    reasons = {v["reviewer"]: v["reason"] for v in r["verdicts"]}
    assert all(reasons.values()), reasons
    joined = " | ".join(reasons.values())
    assert "no JSON object" in joined and "does not match" in joined and "words" in joined
    assert "ended" in joined  # the timeout and the non-zero exit
    # every reviewer was asked twice, the second time with the reason
    logs = tmp_path / "reviewer-prompts"
    for i in range(1, 6):
        assert (logs / f"a-1-{i}-1.txt").exists() and (logs / f"a-1-{i}-2.txt").exists()
    assert "could not be used" in (logs / "a-1-1-2.txt").read_text()
    d.ctl("stop", sid)
    d.stop()


def test_a_reviewer_that_writes_leaves_the_authors_branch_unchanged(daemon_factory, tmp_path, git_repo):
    d = daemon_factory(_config(tmp_path, {"*": {"verdict": "approve", "write": "evil.txt"}}))
    sid = _submit(d, tmp_path, git_repo, [_author("a", "write:a.txt:one", "exit:0")])
    s = d.wait_session(sid)
    assert s["state"] == "done", s
    worktree = Path(next(w for w in s["workers"] if w["name"] == "a")["worktree"])
    branches = worktree.parent / "_branches.git"  # the assignment branches live in orchd's repository
    for repo, ref in ((branches, f"orchd/{sid}.a"), (git_repo, f"orchd/{sid}")):
        files = subprocess.run(["git", "-C", str(repo), "ls-tree", "-r", "--name-only", ref],
                               capture_output=True, text=True, check=True).stdout.split()
        assert "a.txt" in files and "evil.txt" not in files, (repo, ref, files)
    assert not (worktree / "evil.txt").exists()
    # the reviewer did write, in its own checkout
    assert list((d.state_dir / "reviews" / sid).rglob("evil.txt"))
    d.stop()


def test_a_reviewer_over_the_token_cap_is_stopped_and_counts_as_concern(daemon_factory, tmp_path, git_repo):
    script = {"a/1/1": {"usage": 5000, "hang": True}, "*": {"verdict": "approve"}}
    d = daemon_factory(_config(tmp_path, script, extra="max_tokens = 1000\n"))
    sid = _submit(d, tmp_path, git_repo, [_author("a", "write:a.txt:one", "exit:0")])
    s = d.wait_session(sid)
    assert s["state"] == "done", s  # one concern: a warning, not a pause
    (r,) = _reviews(d, sid)
    assert r["decision"] == "log_warning"
    capped = [v for v in r["verdicts"] if v["verdict"] == "concern"]
    assert len(capped) == 1 and "token cap" in capped[0]["reason"]
    d.stop()


def test_orchctl_review_and_the_fallback_timer_trigger_reviews_of_a_running_assignment(daemon_factory, tmp_path,
                                                                                      git_repo):
    d = daemon_factory(_config(tmp_path, {"*": {"verdict": "approve"}}, extra="fallback_s = 2\n"))
    marker = tmp_path / "started"
    sid = _submit(d, tmp_path, git_repo, [_author("a", "write:a.txt:one", f"touch:{marker}", "hang")])
    wait_for(marker.exists, 30, "the author to start")
    res = d.ctl("review", sid, "--worker", "nope", "--json", check=False)
    assert res.returncode == 1 and json.loads(res.stdout)["error"]["code"] == "not_found"
    d.ctl("review", sid, "--worker", "a")
    wait_for(lambda: any("orchctl review" in t for r in _reviews(d, sid) for t in r["triggers"]), 30,
             "a review asked for by orchctl review")
    # the files did not change since: the fallback's review is skipped, with its trigger recorded
    wait_for(lambda: any(t.startswith("fallback") for e in _events_now(d, sid)
                         if e["kind"] in ("review.requested", "review.skipped") for t in e["triggers"]), 30,
             "a fallback trigger")
    assert all(r["decision"] in (None, "continue") for r in _reviews(d, sid))
    d.ctl("stop", sid)
    assert d.wait_session(sid)["state"] == "stopped"
    d.stop()


def test_a_daemon_killed_during_a_review_asks_it_again_after_the_restart(daemon_factory, tmp_path, git_repo):
    flag = tmp_path / "hung-once"
    config = _config(tmp_path, {"a": {"verdict": "approve", "summary": "ok", "hang_once": str(flag)}},
                     reviewers=1)
    d = daemon_factory(config)
    sid = _submit(d, tmp_path, git_repo, [_author("a", "write:a.txt:one", "exit:0"),
                                          _author("b", "exit:0", after=["a"])])
    wait_for(flag.exists, 30, "the reviewer to hang")
    d.kill9()
    d2 = daemon_factory(config)
    s = d2.wait_session(sid)
    assert s["state"] == "done", (s, d2.log()[-3000:])
    decided = [r for r in _reviews(d2, sid) if r["assignment"] == "a" and r["decision"]]
    assert [r["decision"] for r in decided] == ["continue"]
    d2.stop()
