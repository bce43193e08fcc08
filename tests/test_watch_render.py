"""What users read: ``watch``'s one-line summaries, filters and escaping; ``logs``; ``--help``.

Pure tests of ``orchctl.render`` for every event kind, then a real daemon
running command agents (tests/fakeagent.py) whose human output is read as a
user would read it.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import typing

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchctl import cli, render
from orchd import protocol as p
from tests.conftest import fake, wait_for, write_plan

SPEC = {"name": "impl", "agent": "claude"}

# One sample body per kind of the Event union (each must decode as that kind).
SAMPLES: dict[str, dict] = {
    "agent.session": {"agent_session_id": "abc-123", "model": "sonnet"},
    "agent.text": {"text": "hello\nworld"},
    "agent.tool_call": {"call_id": "c1", "tool": "Bash", "input": {"command": "ls -la", "timeout": 5}},
    "agent.tool_result": {"call_id": "c1", "ok": False, "output": "permission denied"},
    "agent.usage": {"input_tokens": 350, "output_tokens": 32, "cost_usd": 0.0123},
    "agent.error": {"message": "rate limited", "fatal": True},
    "agent.result": {"ok": True, "text": "all done"},
    "agent.unknown": {"raw": "{not json"},
    "agent.output": {"data": {"i": 1}},
    "worker.started": {"pid": 4242, "argv": ["/usr/bin/claude", "-p"], "cwd": "/w", "agent_version": "2.1.197"},
    "worker.exited": {"state": "failed", "exit_code": 1, "reason": "agent failed"},
    "worker.state": {"state": "paused", "reason": "user"},
    "worker.log": {"line": "Ripgrep is not available."},
    "worker.bad_line": {"problem": "too_long", "size": 99999, "preview": "xxx"},
    "worker.milestone": {"text": "tests pass"},
    "worker.blocker": {"text": "need a key"},
    "worker.review_request": {"text": "look at api.py"},
    "worker.done": {"text": "wrote demo.txt"},
    "worker.committed": {"branch": "orchd/s-1.impl", "commit": "0123456789abcdef", "made": True,
                         "left_out": [".env", "node_modules/"], "left_out_more": 0},
    "worker.limit": {"limit": "wall_time", "detail": "over 600 s"},
    "worker.preflight": {"findings": [{"code": "root_yolo", "message": "claude refuses skip-permissions as root",
                                       "fixed": True, "fix": "IS_SANDBOX=1"},
                                      {"code": "untested_version", "message": "claude 2.2.0 is not 2.1.197"}]},
    "worker.failure": {"code": "rate_limit", "message": "429", "action": "relaunch", "remedy": {"backoff_s": 30}},
    "worker.launching": {"resume": True, "branch": "orchd/s-1/impl", "delay_s": 2.0, "reason": "daemon restart"},
    "session.submitted": {"task": "fix it", "target": "/repo", "assignments": [SPEC]},
    "session.planned": {"assignments": [SPEC, {"name": "tests", "agent": "codex"}], "source": "planner"},
    "session.state": {"state": "failed", "reason": "impl failed"},
    "session.note": {"message": "codex replaced by claude"},
    "session.warning": {"message": "the target has uncommitted changes", "files": ["M README"], "more": 0},
    "session.stop_requested": {"reason": "budget", "end_state": "failed"},
    "session.merged": {"branch": "orchd/s-1", "commit": "0123456789abcdef0123"},
    "daemon.started": {"pid": 7, "version": "0.1.0", "last_seq": 12},
    "daemon.stopping": {},
    "worker.question": {"text": "which database?"},
    "review.requested": {"review_id": "r1", "assignment": "impl", "round": 1, "triggers": ["milestone: x"],
                         "commit": "0123456789abcdef", "reviewers": ["codex", "gemini"]},
    "review.run": {"review_id": "r1", "spec": {"name": "_review-r1-1-1", "agent": "codex", "run_kind": "reviewer"},
                   "cwd": "/x"},
    "review.verdict": {"review_id": "r1", "reviewer": "codex", "verdict": "concern",
                       "summary": "no tests"},
    "decision.made": {"review_id": "r1", "decision": "log_warning", "reason": "1 concern of 2 verdict(s)",
                      "assignment": "impl"},
    "review.warning": {"review_id": "r1", "assignment": "impl", "concerns": ["codex: no tests"]},
    "review.skipped": {"assignment": "impl", "reason": "already reviewed"},
    "notify.sent": {"channel": "webhook", "key": "s-1/failed", "situation": "failed", "attempts": 3},
    "notify.failed": {"channel": "command", "key": "s-1/done", "situation": "done", "error": "exit code 2"},
    "session.question": {"question": "which database?", "source": "agent"},
    "session.answered": {"text": "sqlite"},
    "daemon.reloaded": {"applied": ["limits"], "needs_restart": ["control_endpoint"]},
    "daemon.reload_failed": {"error": "limits.stall_s: Input should be greater than 0, got -1"},
    "recovery.detected": {"code": "rate_limited", "message": "API Error: 429", "source": "API Error: 429"},
    "recovery.action": {"action": "escalate", "code": "auth_invalid", "reason": "log in to claude: 401",
                        "takeover": "cd /repo && claude --resume abc"},
}

EXACT = {
    "worker.preflight": "preflight: root_yolo (fixed: IS_SANDBOX=1); untested_version (warning)",
    "agent.usage": "tokens in=350 out=32 cost=$0.0123",
    "agent.tool_result": "failed permission denied",
    "agent.tool_call": "Bash ls -la",
    "agent.session": "agent session abc-123 model sonnet",
    "worker.started": "pid 4242 claude version 2.1.197",
    "session.planned": "plan (planner): impl(claude), tests(codex)",
    "session.state": "failed (impl failed)",
    "worker.state": "paused (user)",
    "agent.text": "hello ⏎ world",
    "daemon.stopping": "stopping",
    "daemon.reloaded": "config reloaded: applied limits; needs a restart: control_endpoint",
    "session.submitted": "task 'fix it' target /repo: impl(claude)",
    "worker.exited": "failed exit=1 (agent failed)",
    "review.requested": "review r1 of impl round 1 at 0123456789ab by codex, gemini (1 trigger(s))",
    "review.verdict": "codex: concern — no tests",
    "decision.made": "decision log_warning for impl: 1 concern of 2 verdict(s)",
    "session.answered": "answered: sqlite",
    "notify.sent": "notified failed by webhook (key s-1/failed) after 3 attempts",
    "notify.failed": "could not notify done by command after 1 attempt(s): exit code 2",
    "recovery.detected": "detected rate_limited: API Error: 429",
    "recovery.action": "recovery: escalate — log in to claude: 401; take over: cd /repo && claude --resume abc",
}


def _stamped(kind: str, body: dict, **stamp) -> dict:
    return {"seq": 5, "ts": 1764067200.0, "session": "s-1a2b", "worker": "impl", "agent": "claude",
            "gen": 0, "kind": kind, **body, **stamp}


def _union_kinds() -> set[str]:
    return {t.__struct_config__.tag for t in typing.get_args(p.Event)}


def test_every_kind_of_the_event_union_has_a_sample_and_a_summary():
    assert set(SAMPLES) == _union_kinds()
    dec = msgspec.json.Decoder(p.Event)
    for kind, body in SAMPLES.items():
        dec.decode(json.dumps({"kind": kind, **body}))  # the sample is a valid event of that kind
        assert kind in render._SUMMARIES, f"{kind} falls back to the generic summary"
        text = render.summary(_stamped(kind, body))
        assert text.strip(), kind
        assert len(text) <= render.SUMMARY_MAX


@pytest.mark.parametrize("kind", sorted(EXACT))
def test_exact_summaries(kind):
    assert render.summary(_stamped(kind, SAMPLES[kind])) == EXACT[kind]


def test_an_unknown_kind_falls_back_to_its_fields():
    assert render.summary(_stamped("agent.future", {"foo": 1, "bar": "z"})) == "foo=1 bar=z"
    assert render.summary(_stamped("agent.future", {})) == "(no fields)"
    # a known kind with a field of an unexpected type does not crash the watcher
    assert render.summary(_stamped("agent.usage", {"input_tokens": 1, "cost_usd": "lots"}))


def test_event_line_has_the_documented_columns():
    line = render.event_line(_stamped("agent.text", {"text": "hi"}))
    seq, ts, kind, session, worker, agent, gen, summary = line.split(None, 7)
    assert (seq, kind, session, worker, agent, gen, summary) == ("5", "agent.text", "s-1a2b", "impl", "claude", "g0", "hi")
    assert re.fullmatch(r"\d\d:\d\d:\d\d", ts)
    daemon_wide = render.event_line({"seq": 1, "ts": 0, "kind": "daemon.stopping", "reason": "SIGTERM"})
    assert daemon_wide.split(None, 7)[3:] == ["-", "-", "-", "-", "stopping: SIGTERM"]
    session_wide = render.event_line(_stamped("session.state", {"state": "running"}, worker=None, agent=None))
    assert session_wide.split(None, 7)[3:] == ["s-1a2b", "-", "-", "-", "running"]  # no generation without a worker


RAW_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def test_control_characters_are_shown_not_sent():
    evil_name = "\x1b]0;owned\x07w"
    ev = _stamped("agent.text", {"text": "\x1b[2Jcleared\rback\x7f\x9b"}, worker=evil_name, agent="\x1b[31m")
    line = render.event_line(ev)
    assert not RAW_CONTROL.search(line), repr(line)
    assert "\\x1b[2Jcleared\\x0dback\\x7f\\x9b" in line
    assert line.split(None, 7)[4].startswith("\\x1b]0;")
    log_line = render.event_line(_stamped("worker.log", {"line": "\x1b[31mred\x1b[0m \x07"}))
    assert not RAW_CONTROL.search(log_line) and "\\x1b[31mred" in log_line
    table = render.session(p.SessionInfo(id="s-1", state="running", reason="\x1b[2J", workers=[
        p.WorkerInfo(name=evil_name, agent="claude", state="running", reason="\x1b]0;t\x07")]))
    assert not RAW_CONTROL.search(table.replace("\n", "")), repr(table)
    assert "\\x1b]0;owned\\x07w" in table
    # newlines survive where asked (logs), every other control does not
    assert render.clean("a\nb\x1b", keep_newlines=True) == "a\nb\\x1b"


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                     max_leaves=8)
_field_names = st.sampled_from(sorted({k for body in SAMPLES.values() for k in body} | {"seq", "ts", "gen", "worker"}))


@settings(max_examples=200, deadline=None)
@given(kind=st.sampled_from(sorted(SAMPLES) + ["x.future", ""]), fields=st.dictionaries(_field_names, _json, max_size=6))
def test_any_event_renders_as_one_clean_line(kind, fields):
    """Whatever an event holds (a newer daemon, an agent's arbitrary JSON), watch prints one clean line."""
    line = render.event_line({**fields, "kind": kind})
    assert "\n" not in line and not RAW_CONTROL.search(line), repr(line)
    assert render.summary({**fields, "kind": kind}).strip()


def test_review_answer_and_reviews_are_listed_in_help_and_callable():
    parser = cli.build_parser()
    listed = re.findall(r"^    (\w+)", parser.format_help(), re.MULTILINE)
    assert "watch" in listed and "clean" in listed
    assert {"review", "answer", "reviews"} <= set(listed) and "SUPPRESS" not in parser.format_help()
    for name in cli.HIDDEN:
        assert name not in listed
    args = parser.parse_args(["answer", "s-1", "yes"])
    assert (args.session, args.text) == ("s-1", "yes")
    assert parser.parse_args(["review", "s-1"]).session == "s-1"
    assert parser.parse_args(["review", "s-1", "--worker", "impl"]).worker == "impl"


# ---------------------------------------------------------------- a real daemon


def _ev(kind: str, **fields) -> str:
    return "event:" + json.dumps({"kind": kind, **fields})


@pytest.fixture
def demo(daemon, git_repo, tmp_path):
    """A finished session of two command agents that produce most kinds of event."""
    plan = write_plan(tmp_path / "plan.json", [
        {"name": "alpha", "agent": "command", "argv": fake(
            _ev("agent.session", agent_session_id="sess-9", model="fake-1"),
            _ev("agent.tool_call", call_id="c1", tool="Bash", input={"command": "make test"}),
            _ev("agent.tool_result", call_id="c1", ok=True, output="12 passed"),
            _ev("agent.usage", input_tokens=100, output_tokens=20, cost_usd=0.5),
            "err:Warning: 256-color support not detected. Using a terminal with at least 256-color support",
            "err:[STARTUP] Phase 'cleanup_ops' was started but never ended. Skipping metrics.",
            "line:\x1b[2Jscreen cleared?",
            "line:MILESTONE: half way",
            _ev("agent.result", ok=True, text="finished"),
            "exit:0")},
        {"name": "beta", "agent": "command", "argv": fake("line:hello from beta", 'event:{"x": 1}', "exit:0")},
    ])
    sid = daemon.ctl_json("submit", "--plan", str(plan), "--target", str(git_repo))["session"]
    assert daemon.wait_session(sid)["state"] == "done"
    return daemon, sid


def _lines(res) -> list[list[str]]:
    assert res.returncode == 0, res.stderr
    assert not RAW_CONTROL.search(res.stdout.decode().replace("\n", "")), res.stdout
    return [line.split(None, 7) for line in res.stdout.decode().splitlines()]


def test_watch_human_output_summaries_filters_and_noise(demo):
    d, sid = demo
    rows = _lines(d.ctl("watch", sid, "--until-done"))
    assert rows and all(len(r) == 8 and r[7].strip() for r in rows), rows
    kinds = {r[2] for r in rows}
    assert {"session.submitted", "worker.started", "agent.session", "agent.tool_call", "agent.tool_result",
            "agent.usage", "agent.text", "worker.milestone", "agent.result", "agent.output", "worker.exited",
            "session.state"} <= kinds
    assert "worker.log" not in kinds  # the CLIs' stderr noise is hidden by default
    by_kind = {r[2]: r[7] for r in rows if r[4] == "alpha"}
    assert by_kind["agent.tool_result"] == "ok 12 passed"
    assert by_kind["agent.usage"] == "tokens in=100 out=20 cost=$0.5000"
    assert by_kind["agent.tool_call"] == "Bash make test"
    assert "\\x1b[2Jscreen cleared?" in [r[7] for r in rows if r[2] == "agent.text"]
    assert rows[-1][2] == "session.state" and rows[-1][7] == "done"

    everything = _lines(d.ctl("watch", sid, "--until-done", "--all"))
    logs = [r[7] for r in everything if r[2] == "worker.log"]
    assert any(x.startswith("[STARTUP]") for x in logs) and any("256-color" in x for x in logs)
    assert len(everything) == len(rows) + len(logs)

    only_logs = _lines(d.ctl("watch", sid, "--until-done", "--kind", "worker.log"))
    assert only_logs and {r[2] for r in only_logs} == {"worker.log"}
    agent = _lines(d.ctl("watch", sid, "--until-done", "--kind", "agent."))
    assert agent and all(r[2].startswith("agent.") for r in agent)
    assert {r[2] for r in agent} == {k for k in kinds if k.startswith("agent.")}
    beta = _lines(d.ctl("watch", sid, "--until-done", "--worker", "beta"))
    assert beta and {r[4] for r in beta} == {"beta"}
    assert "hello from beta" in [r[7] for r in beta]

    js = [json.loads(x) for x in d.ctl("watch", sid, "--until-done", "--json").stdout.splitlines()]
    assert any(e["kind"] == "worker.log" for e in js)  # --json is the log, noise included
    js_beta = [json.loads(x) for x in d.ctl("watch", sid, "--until-done", "--json", "--worker", "beta",
                                            "--kind", "agent.").stdout.splitlines()]
    assert js_beta and all(e["worker"] == "beta" and e["kind"].startswith("agent.") for e in js_beta)


def test_logs_shows_tool_results_and_refuses_an_unknown_worker(demo):
    d, sid = demo
    res = d.ctl("logs", sid, "--worker", "alpha")
    text = res.stdout.decode()
    assert "[alpha] tool ok 12 passed" in text
    assert "[alpha] [STARTUP] Phase" in text
    assert "\x1b" not in text and "[alpha] \\x1b[2Jscreen cleared?" in text
    assert "beta" not in text
    bad = d.ctl("logs", sid, "--worker", "NOPE", check=False)
    assert bad.returncode == 1 and bad.stdout == b""
    err = bad.stderr.decode().splitlines()
    assert len(err) == 1 and "NOPE" in err[0] and "alpha, beta" in err[0], err


def test_watch_filters_live_events_too(daemon, git_repo, tmp_path):
    """The filters apply to live frames, not only to the history read first."""
    go = tmp_path / "go"
    plan = write_plan(tmp_path / "plan.json", [
        {"name": "slow", "agent": "command", "argv": fake(f"touch:{tmp_path / 'up'}", f"waitfile:{go}",
                                                         "line:after the wait", "err:late noise", "exit:0")},
        {"name": "other", "agent": "command", "argv": fake(f"waitfile:{go}", "line:other text", "exit:0")},
    ])
    sid = daemon.ctl_json("submit", "--plan", str(plan), "--target", str(git_repo))["session"]
    wait_for(lambda: (tmp_path / "up").exists(), 30, "the agent to start")
    watcher = subprocess.Popen([sys.executable, "-m", "orchctl.cli", "watch", sid, "--until-done", "--worker", "slow",
                                "--runtime-dir", str(daemon.runtime_dir)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        first = watcher.stdout.readline()  # the history is printed: the watch is live from here on
        assert b"slow" in first, first
        go.touch()
        out, err = watcher.communicate(timeout=60)
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait()
    assert watcher.returncode == 0, err
    rows = [line.split(None, 7) for line in (first + out).decode().splitlines()]
    assert {r[4] for r in rows} == {"slow"}
    texts = [r[7] for r in rows if r[2] == "agent.text"]
    assert "after the wait" in texts and "other text" not in texts
    assert not any(r[2] == "worker.log" for r in rows)
