"""Codex adapter: argv per profile and for ``exec resume``, stream parsing of
the item kinds the recordings do not cover, error catalogue."""

from __future__ import annotations

import json
from functools import partial

import pytest

from actors.agents import RunSpec, get_adapter
from actors.agents.codex import MAX_OPEN_CALLS
from orchd.protocol import (
    AgentError, AgentResult, AgentSession, AgentText, AgentToolCall,
    AgentToolResult, AgentUnknown, AgentUsage,
)
from tests.helpers import feed_lines

A = get_adapter("codex")
HEAD = ["codex", "exec", "--json", "--skip-git-repo-check", "-C", "/w"]


parse = partial(feed_lines, A)  # parse(lines, exit_code=0): every event, finish included


def j(obj: dict) -> str:
    return json.dumps(obj)


def item(stage: str, **fields) -> str:
    return j({"type": f"item.{stage}", "item": fields})


# ---------------------------------------------------------------- launch

@pytest.mark.parametrize("profile, flags, confined", [
    ("workspace", ["--sandbox", "workspace-write", "-c", "sandbox_workspace_write.exclude_slash_tmp=true"], True),
    ("readonly", ["--sandbox", "read-only"], True),
    ("yolo", ["--dangerously-bypass-approvals-and-sandbox"], False),
])
def test_profiles(profile, flags, confined):
    launch = A.build_launch(RunSpec(prompt="do it", cwd="/w", profile=profile))
    assert launch.argv == HEAD + flags + ["--", "do it"]
    assert launch.confined is confined and launch.cwd == "/w" and launch.env == {}


def test_resume_puts_exec_options_before_the_subcommand():
    # `codex exec resume --help` (0.169.0) has no --sandbox and no -C: they
    # are exec's options, so they must precede `resume`.
    spec = RunSpec(prompt="-go on", cwd="/w", model="gpt-5.5", resume_id="01a2124d-d19e",
                   binary="/b/codex", home="/h", tmpdir="/t", config_dir="/c", env={"X": "1"})
    launch = A.build_launch(spec)
    assert launch.argv == ["/b/codex"] + HEAD[1:] + [
        "--sandbox", "workspace-write", "-c", "sandbox_workspace_write.exclude_slash_tmp=true", "--model", "gpt-5.5", "resume", "01a2124d-d19e",
        "--", "-go on"]
    assert launch.env == {"X": "1", "HOME": "/h", "TMPDIR": "/t", "CODEX_HOME": "/c"}


def test_version():
    assert A.version_argv() == ["codex", "--version"] and A.tested_version == "0.169.0"


# ---------------------------------------------------------------- parsing

def test_command_execution_announced_on_start_and_finished_on_completion():
    cmd = "/bin/bash -lc 'false'"
    events = parse([
        j({"type": "thread.started", "thread_id": "t-1"}),
        j({"type": "turn.started"}),
        item("started", id="item_0", type="command_execution", command=cmd,
             aggregated_output="", exit_code=None, status="in_progress"),
        j({"type": "item.updated", "item": {"id": "item_0", "type": "command_execution"}}),
        item("completed", id="item_0", type="command_execution", command=cmd,
             aggregated_output="boom\n", exit_code=1, status="failed"),
        # never started: the call is announced on completion
        item("completed", id="item_1", type="command_execution", command="ls",
             aggregated_output="a\n", exit_code=0, status="completed"),
        item("completed", id="item_2", type="reasoning", text="thinking"),
        item("completed", id="item_3", type="agent_message", text="first"),
        item("completed", id="item_4", type="agent_message", text="final"),
        j({"type": "turn.completed", "usage": {"input_tokens": 10, "cached_input_tokens": 4,
                                               "output_tokens": 3, "reasoning_output_tokens": 1}}),
    ], 0)
    assert events == [
        AgentSession(agent_session_id="t-1", model=None),
        AgentToolCall(call_id="item_0", tool="shell", input={"command": cmd}),
        AgentToolResult(call_id="item_0", ok=False, output="boom\n"),
        AgentToolCall(call_id="item_1", tool="shell", input={"command": "ls"}),
        AgentToolResult(call_id="item_1", ok=True, output="a\n"),
        AgentText(text="first"),
        AgentText(text="final"),
        AgentUsage(input_tokens=10, output_tokens=3, cost_usd=None),
        AgentResult(ok=True, text="final"),
    ]


def test_mcp_web_search_and_item_errors():
    events = parse([
        item("started", id="m1", type="mcp_tool_call", server="docs", tool="lookup",
             arguments={"q": "x"}, status="in_progress"),
        item("completed", id="m1", type="mcp_tool_call", server="docs", tool="lookup",
             arguments={"q": "x"}, result={"content": [{"type": "text", "text": "hit"}]},
             error=None, status="completed"),
        item("completed", id="m2", type="mcp_tool_call", server="docs", tool="lookup",
             arguments={}, result=None, error={"message": "server gone"}, status="failed"),
        item("completed", id="w1", type="web_search", query="msgspec"),
        item("completed", id="e1", type="error",
             message="Model metadata for `gpt-fake` not found. Defaulting to fallback metadata; "
                     "this can degrade performance and cause issues."),
        item("completed", id="td", type="todo_list", items=[]),
    ], 0)
    assert events == [
        AgentToolCall(call_id="m1", tool="mcp:docs/lookup", input={"q": "x"}),
        AgentToolResult(call_id="m1", ok=True, output={"content": [{"type": "text", "text": "hit"}]}),
        AgentToolCall(call_id="m2", tool="mcp:docs/lookup", input={}),
        AgentToolResult(call_id="m2", ok=False, output="server gone"),
        AgentToolCall(call_id="w1", tool="web_search", input={"query": "msgspec"}),
        AgentToolResult(call_id="w1", ok=True, output=None),
        AgentError(message="Model metadata for `gpt-fake` not found. Defaulting to fallback "
                           "metadata; this can degrade performance and cause issues.", fatal=False),
        AgentResult(ok=True, text=""),
    ]


def test_turn_failed_without_a_preceding_error_is_reported_once():
    events = parse([item("completed", id="a", type="agent_message", text="partial"),
                    j({"type": "turn.failed", "error": {"message": "boom"}})], 1)
    assert events == [AgentText(text="partial"), AgentError(message="boom", fatal=True),
                      AgentResult(ok=False, text="partial")]


def test_retry_notices_are_not_fatal_but_other_errors_are():
    lines = [j({"type": "error", "message": "Reconnecting... 2/5 (stream disconnected before "
                                            "completion: failed to lookup address information)"}),
             j({"type": "error", "message": "Falling back from WebSockets to HTTPS transport. x"}),
             j({"type": "error", "message": "something broke"})]
    assert [e.fatal for e in parse(lines, None)[:3]] == [False, False, True]
    # exit 0 but a fatal error: the run did not succeed
    assert parse(lines, 0)[-1] == AgentResult(ok=False, text="")



TURN_DONE = j({"type": "turn.completed", "usage": {"input_tokens": 7, "output_tokens": 2}})
ANSWER = item("completed", id="a", type="agent_message", text="4")


def test_turn_completed_is_a_success_without_an_exit_code():
    # `orchctl parse` knows no exit code; the turn itself says it succeeded
    events = parse([j({"type": "thread.started", "thread_id": "t"}), ANSWER, TURN_DONE], None)
    assert events[-2:] == [AgentUsage(input_tokens=7, output_tokens=2, cost_usd=None),
                           AgentResult(ok=True, text="4")]
    assert parse([ANSWER, TURN_DONE], 0)[-1] == AgentResult(ok=True, text="4")


@pytest.mark.parametrize("exit_code", [1, 137, -9])
def test_a_crash_after_turn_completed_still_fails_the_run(exit_code):
    assert parse([ANSWER, TURN_DONE], exit_code)[-1] == AgentResult(ok=False, text="4")


def test_without_turn_completed_and_exit_code_the_run_is_not_a_success():
    events = parse([j({"type": "thread.started", "thread_id": "t"}), j({"type": "turn.started"}),
                    ANSWER], None)
    assert events[-1] == AgentResult(ok=False, text="4")
    assert not any(isinstance(e, AgentError) for e in events)


def test_turn_failed_after_turn_completed_gives_one_failed_result():
    events = parse([ANSWER, TURN_DONE, j({"type": "turn.failed", "error": {"message": "x"}})],
                   None)
    assert [e for e in events if isinstance(e, AgentResult)] == [AgentResult(ok=False, text="4")]


@pytest.mark.parametrize("message", [
    "Reconnecting... 1/5",
    "Reconnecting... 3/5 (stream disconnected before completion: error sending request)",
    "retrying",
    "stream error: stream disconnected before completion; retrying 1/5 in 189ms…",
])
def test_retry_notices_in_a_successful_run_are_not_fatal(message):
    events = parse([j({"type": "error", "message": message}), ANSWER, TURN_DONE], None)
    assert events[0] == AgentError(message=message, fatal=False)
    assert events[-1] == AgentResult(ok=True, text="4")
    assert A.classify(0, [], parse([j({"type": "error", "message": message}), ANSWER, TURN_DONE],
                                   0)) is None

def test_open_calls_are_bounded():
    p = A.new_parser()
    for i in range(MAX_OPEN_CALLS + 10):
        p.feed_line(item("started", id=f"c{i}", type="command_execution", command="x"))
    assert len(p._open) == MAX_OPEN_CALLS
    # the oldest was forgotten: its completion announces the call again
    done = p.feed_line(item("completed", id="c0", type="command_execution", command="x",
                            aggregated_output="", exit_code=0))
    assert [type(e) for e in done] == [AgentToolCall, AgentToolResult]


@pytest.mark.parametrize("raw", [
    j({"type": "thread.started"}),
    j({"type": "thread.started", "thread_id": 7}),
    j({"type": "item.completed", "item": {"type": "agent_message", "text": "no id"}}),
    j({"type": "item.completed", "item": {"id": "x", "type": "agent_message", "text": None}}),
    j({"type": "item.completed", "item": "nope"}),
    j({"type": "item.completed", "item": {"id": "x", "type": "new_kind"}}),
    j({"type": "turn.completed", "usage": {"input_tokens": "many"}}),
    j({"type": "turn.failed", "error": "flat"}),
    j({"type": "brand.new"}),
    "Reading additional input from stdin...",
])
def test_malformed_known_events_are_unknown(raw):
    assert A.new_parser().feed_line(raw) == [AgentUnknown(raw=raw)]


# ---------------------------------------------------------------- catalogue

@pytest.mark.parametrize("exit_code, stderr, lines, code, action", [
    (1, [], [j({"type": "error", "message": "unexpected status 429 Too Many Requests: Rate limit "
                                            "reached for requests"}),
             j({"type": "turn.failed", "error": {"message": "unexpected status 429 Too Many "
                                                            "Requests: Rate limit reached"}})],
     "rate_limited", "relaunch"),
    (2, ["error: invalid value 'bogus' for '--sandbox <SANDBOX_MODE>'"], [], "bad_flag", "relaunch"),
    (1, ["Error: thread/resume: thread/resume failed: no rollout found for thread id 0199a213 "
         "(code -32600)"], [], "resume_not_found", "relaunch"),
    (None, ["Reading additional input from stdin..."],
     [j({"type": "error", "message": "Reconnecting... 2/5 (stream disconnected before completion: "
                                     "failed to lookup address information: Name does not resolve)"})],
     "network", "relaunch"),
])
def test_catalogue(exit_code, stderr, lines, code, action):
    failure = A.classify(exit_code, stderr, parse(lines, exit_code))
    assert (failure.code, failure.action) == (code, action)


def test_a_transient_reconnect_in_a_successful_run_is_no_failure():
    lines = [j({"type": "error", "message": "Reconnecting... 1/5 (stream disconnected)"}),
             item("completed", id="a", type="agent_message", text="done")]
    assert A.classify(0, [], parse(lines, 0)) is None


def test_check_stderr_never_claims_unconfined():
    assert A.check_stderr("WARNING: proceeding, even though we could not create PATH aliases") is None
