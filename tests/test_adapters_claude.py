"""Claude adapter: argv per profile, stream parsing, error catalogue.

The stream lines below are trimmed copies of what claude 2.1.197 printed
(init keeps only the fields read; the rest is as printed)."""

from __future__ import annotations

import json
from functools import partial

import pytest

from actors.agents import RunSpec, get_adapter
from orchd.protocol import (
    AgentError, AgentResult, AgentSession, AgentText, AgentToolCall,
    AgentToolResult, AgentUnknown, AgentUsage,
)
from tests.helpers import feed_lines

A = get_adapter("claude")
HEAD = ["claude", "-p", "--output-format", "stream-json", "--verbose"]


parse = partial(feed_lines, A)  # parse(lines, exit_code=0): every event, finish included


def j(obj: dict) -> str:
    return json.dumps(obj, ensure_ascii=False)


# ---------------------------------------------------------------- launch

def test_workspace_profile_uses_accept_edits_and_a_sandbox_that_refuses_to_degrade():
    launch = A.build_launch(RunSpec(prompt="do it", cwd="/w"))
    assert launch.argv[:5] == HEAD
    assert launch.argv[5:9] == ["--permission-mode", "acceptEdits", "--settings", launch.argv[8]]
    assert json.loads(launch.argv[8]) == {"sandbox": {
        "enabled": True, "autoAllowBashIfSandboxed": True,
        "allowUnsandboxedCommands": False, "failIfUnavailable": True}}
    assert launch.argv[-2:] == ["--", "do it"]
    assert launch.cwd == "/w" and launch.confined is True
    assert launch.env == {"CLAUDE_CODE_MAX_RETRIES": "2"}


def test_workspace_allow_unconfined_drops_fail_if_unavailable():
    launch = A.build_launch(RunSpec(prompt="p", cwd="/w", allow_unconfined=True))
    settings = json.loads(launch.argv[launch.argv.index("--settings") + 1])
    assert "failIfUnavailable" not in settings["sandbox"]
    assert settings["sandbox"]["enabled"] is True


def test_readonly_profile_is_the_default_permission_mode():
    launch = A.build_launch(RunSpec(prompt="p", cwd="/w", profile="readonly"))
    assert launch.argv == HEAD + ["--permission-mode", "default", "--", "p"]
    assert launch.confined is True


def test_yolo_skips_permissions_and_sets_is_sandbox_for_root():
    launch = A.build_launch(RunSpec(prompt="p", cwd="/w", profile="yolo"))
    assert launch.argv == HEAD + ["--dangerously-skip-permissions", "--", "p"]
    assert launch.env["IS_SANDBOX"] == "1"
    assert launch.confined is False


def test_resume_model_turns_binary_and_isolation_env():
    spec = RunSpec(prompt="-starts with a dash", cwd="/w", profile="readonly", binary="/opt/claude",
                   model="opus", max_turns=3, resume_id="sess-1", home="/h", tmpdir="/t",
                   config_dir="/c", env={"FOO": "bar", "HOME": "/nope",
                                         "CLAUDE_CODE_MAX_RETRIES": "0"})
    launch = A.build_launch(spec)
    assert launch.argv == ["/opt/claude"] + HEAD[1:] + [
        "--permission-mode", "default", "--max-turns", "3", "--model", "opus",
        "--resume", "sess-1", "--", "-starts with a dash"]
    # the assignment may tune retries, but never undo the per-run isolation
    assert launch.env == {"CLAUDE_CODE_MAX_RETRIES": "0", "FOO": "bar", "HOME": "/h",
                          "TMPDIR": "/t", "CLAUDE_CONFIG_DIR": "/c"}


def test_unknown_profile_is_refused():
    with pytest.raises(ValueError, match="profile"):
        A.build_launch(RunSpec(prompt="p", cwd="/w", profile="root"))


def test_version_argv():
    assert A.version_argv() == ["claude", "--version"]
    assert A.version_argv("/x/claude") == ["/x/claude", "--version"]
    assert A.tested_version == "2.1.197"


# ---------------------------------------------------------------- parsing

INIT = j({"type": "system", "subtype": "init", "session_id": "0b30287e", "model": "claude-opus-4-8[1m]",
          "permissionMode": "default", "tools": ["Bash"]})
RETRY = j({"type": "system", "subtype": "api_retry", "attempt": 1, "max_retries": 1,
           "retry_delay_ms": 582.28, "error_status": None, "error": "unknown",
           "session_id": "0b30287e"})
SYNTHETIC = j({"type": "assistant", "message": {
    "model": "<synthetic>", "role": "assistant", "type": "message",
    "content": [{"type": "text", "text": "API Error: Unable to connect to API (ConnectionRefused)"}]},
    "parent_tool_use_id": None, "session_id": "0b30287e", "error": "server_error"})
REFUSED_RESULT = j({"type": "result", "subtype": "success", "is_error": True, "api_error_status": None,
                    "num_turns": 1, "result": "API Error: Unable to connect to API (ConnectionRefused)",
                    "total_cost_usd": 0, "usage": {"input_tokens": 0, "cache_creation_input_tokens": 0,
                                                   "cache_read_input_tokens": 0, "output_tokens": 0},
                    "terminal_reason": "completed"})


def test_connection_refused_stream():
    assert parse([INIT, RETRY, SYNTHETIC, REFUSED_RESULT], 1) == [
        AgentSession(agent_session_id="0b30287e", model="claude-opus-4-8[1m]"),
        AgentError(message="API retry 1/1: unknown", fatal=False),
        # the synthetic message is the client's error, not the model's text
        AgentError(message="API Error: Unable to connect to API (ConnectionRefused)", fatal=False),
        AgentUsage(input_tokens=0, output_tokens=0, cost_usd=0.0),
        AgentError(message="API Error: Unable to connect to API (ConnectionRefused)", fatal=True),
        AgentResult(ok=False, text="API Error: Unable to connect to API (ConnectionRefused)"),
    ]


def test_tool_round_trip_and_usage_counts_cache_tokens():
    lines = [
        INIT,
        j({"type": "assistant", "message": {"content": [
            {"type": "thinking", "thinking": "hmm"},
            {"type": "text", "text": "Writing it."},
            {"type": "tool_use", "id": "toolu_1", "name": "Write",
             "input": {"file_path": "/w/hello.txt", "content": "hi\n"}}]},
            "parent_tool_use_id": None}),
        j({"type": "user", "message": {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1",
             "content": "File created successfully at: /w/hello.txt"}]},
           "tool_use_result": {"type": "create"}}),
        j({"type": "user", "message": {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_2", "is_error": True,
             "content": [{"type": "text", "text": "denied"}, {"type": "text", "text": "twice"}]}]}}),
        j({"type": "assistant", "message": {"content": [{"type": "text", "text": "DONE: x"}]},
           "parent_tool_use_id": None}),
        j({"type": "result", "subtype": "success", "is_error": False, "result": "DONE: x",
           "total_cost_usd": 0.0123, "usage": {"input_tokens": 10, "cache_creation_input_tokens": 100,
                                                "cache_read_input_tokens": 1000, "output_tokens": 7}}),
    ]
    assert parse(lines)[1:] == [
        AgentText(text="Writing it."),
        AgentToolCall(call_id="toolu_1", tool="Write",
                      input={"file_path": "/w/hello.txt", "content": "hi\n"}),
        AgentToolResult(call_id="toolu_1", ok=True, output="File created successfully at: /w/hello.txt"),
        AgentToolResult(call_id="toolu_2", ok=False, output="denied\ntwice"),
        AgentText(text="DONE: x"),
        AgentUsage(input_tokens=1110, output_tokens=7, cost_usd=0.0123),
        AgentResult(ok=True, text="DONE: x"),
    ]


def test_subagent_text_is_dropped_but_its_tool_calls_kept():
    line = j({"type": "assistant", "parent_tool_use_id": "toolu_task", "message": {"content": [
        {"type": "text", "text": "MILESTONE: not mine"},
        {"type": "tool_use", "id": "toolu_9", "name": "Read", "input": {}}]}})
    assert parse([line])[:-1] == [AgentToolCall(call_id="toolu_9", tool="Read", input={})]


def test_is_error_wins_over_subtype_and_errors_list_is_the_message():
    max_turns = j({"type": "result", "subtype": "error_max_turns", "is_error": True,
                   "errors": ["Reached maximum number of turns (1)"], "terminal_reason": "max_turns",
                   "usage": {"input_tokens": 5, "output_tokens": 1}, "total_cost_usd": 0.5})
    assert parse([max_turns], 1) == [
        AgentUsage(input_tokens=5, output_tokens=1, cost_usd=0.5),
        AgentError(message="Reached maximum number of turns (1)", fatal=True),
        AgentResult(ok=False, text=""),
    ]
    ok_despite_subtype = j({"type": "result", "subtype": "error_during_execution", "is_error": False,
                            "result": "fine"})
    assert parse([ok_despite_subtype])[-1] == AgentResult(ok=True, text="fine")



@pytest.mark.parametrize("fields, ok", [
    ({"result": "done"}, True),                                   # trimmed: only the text
    ({"subtype": "success"}, True),
    ({}, True),                                                   # nothing says it failed
    ({"subtype": "error_max_turns"}, False),
    ({"subtype": "success", "errors": ["Tool execution failed"]}, False),
])
def test_a_result_without_is_error_is_judged_by_what_it_has(fields, ok):
    line = j({"type": "result", "total_cost_usd": 0.0347, **fields})
    for exit_code in (None, 0):
        events = parse([line], exit_code)
        # still the run's one result, with its cost and text: never agent.unknown
        assert events[0] == AgentUsage(input_tokens=0, output_tokens=0, cost_usd=0.0347)
        assert events[-1] == AgentResult(ok=ok, text=fields.get("result", ""))
        assert sum(isinstance(e, AgentResult) for e in events) == 1
        assert any(isinstance(e, AgentError) and e.fatal for e in events) is not ok

def test_sandbox_refusal_real_stream():
    # claude 2.1.197, failIfUnavailable set, socat missing from PATH
    line = j({"type": "result", "subtype": "error_during_execution", "duration_ms": 0, "is_error": True,
              "num_turns": 0, "stop_reason": None, "session_id": "0c71acc2", "total_cost_usd": 0,
              "usage": {"input_tokens": 0, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
                        "output_tokens": 0}, "modelUsage": {}, "permission_denials": [],
              "errors": ["Sandbox required but unavailable: sandbox is enabled but dependencies are "
                         "missing: socat not installed · install missing tools (e.g. apt install "
                         "bubblewrap socat) or see https://code.claude.com/docs/en/sandboxing. Set "
                         "sandbox.failIfUnavailable=false to allow unsandboxed execution."]})
    events = parse([line], 1)
    assert events[1].fatal and events[1].message.startswith("Sandbox required but unavailable")
    failure = A.classify(1, [
        "Error: sandbox required but unavailable: sandbox is enabled but dependencies are missing: "
        "socat not installed", "  sandbox.failIfUnavailable is set — refusing to start without a "
        "working sandbox."], events)
    assert failure.code == "sandbox_unavailable" and failure.action == "escalate"


def test_noise_is_quiet_and_unknown_lines_are_reported():
    quiet = [j({"type": "stream_event", "event": {"type": "message_start"}}),
             j({"type": "system", "subtype": "status", "status": "requesting"}),
             j({"type": "system", "subtype": "hook_started"}),
             j({"type": "rate_limit_event", "rate_limit_info": {}}),
             j({"type": "user", "message": {"role": "user", "content": "the prompt"}}),
             ""]
    p = A.new_parser()
    assert [ev for line in quiet for ev in p.feed_line(line)] == []
    for raw in ["not json", "[1,2]", "42", j({"type": "mystery"}),
                j({"type": "system", "subtype": "new_thing"}),
                j({"type": "system", "subtype": "init"}),                     # no session_id
                j({"type": "result", "is_error": "yes"}),                     # wrong type
                j({"type": "assistant", "message": {"content": [{"type": "text", "text": 5}]}}),
                j({"type": "user", "message": {"content": [{"type": "tool_result"}]}})]:
        assert A.new_parser().feed_line(raw) == [AgentUnknown(raw=raw)], raw


def test_finish_without_result_closes_the_run_with_the_last_text():
    text = j({"type": "assistant", "message": {"content": [{"type": "text", "text": "half"}]}})
    assert parse([INIT, text], None)[-1] == AgentResult(ok=False, text="half")
    assert parse([INIT, text], 0)[-1] == AgentResult(ok=True, text="half")
    p = A.new_parser()
    p.feed_line(REFUSED_RESULT)
    assert p.finish(1) == [] and p.finish(1) == []


# ---------------------------------------------------------------- catalogue

def classify(exit_code, stderr=(), lines=()):
    return A.classify(exit_code, list(stderr), parse(list(lines), exit_code))


def result_line(text: str, **extra) -> str:
    return j({"type": "result", "subtype": "success", "is_error": True, "result": text, **extra})


BAD_FLAG_FIX = {"fallback": "--max-turns",
                "note": "the CLI may not be the tested version (2.1.197): check `orchd doctor`"}


@pytest.mark.parametrize("exit_code, stderr, lines, code, action, fix", [
    (1, [], [result_line("Not logged in · Please run /login")], "not_logged_in", "escalate", None),
    (1, ["--dangerously-skip-permissions cannot be used with root/sudo privileges for security reasons"],
     [], "root_refused", "relaunch", {"env.IS_SANDBOX": "1"}),
    (1, [], [result_line("Invalid API key · Fix external API key", api_error_status=401)],
     "auth_invalid", "escalate", None),
    (1, [], [RETRY, REFUSED_RESULT], "network", "relaunch", {"backoff_s": "10"}),
    (1, [], [result_line('API Error: 429 {"type":"error","error":{"type":"rate_limit_error"}}')],
     "rate_limited", "relaunch", {"backoff_s": "60"}),
    (1, [], [result_line("API Error: 529 Overloaded")], "overloaded", "relaunch", {"backoff_s": "30"}),
    (1, ["error: unknown option '--no-such-flag'"], [], "bad_flag", "relaunch", BAD_FLAG_FIX),
    (1, ["error: option '--output-format <format>' argument 'xml' is invalid. Allowed choices are "
         "text, json, stream-json."], [], "bad_flag", "relaunch", BAD_FLAG_FIX),
    (1, ["Error: When using --print, --output-format=stream-json requires --verbose"], [],
     "needs_verbose", "relaunch", {"flag": "--verbose"}),
    (1, [], [j({"type": "result", "subtype": "error_max_turns", "is_error": True,
                "errors": ["Reached maximum number of turns (1)"]})], "max_turns", "escalate", None),
    (137, ["something odd"], [], "crashed", "relaunch", None),
])
def test_catalogue(exit_code, stderr, lines, code, action, fix):
    failure = classify(exit_code, stderr, lines)
    assert (failure.code, failure.action, failure.fix) == (code, action, fix)
    assert failure.message


def test_success_is_not_a_failure_even_after_retries():
    ok = j({"type": "result", "subtype": "success", "is_error": False, "result": "done"})
    assert classify(0, ["some warning"], [RETRY, ok]) is None


def test_killed_without_output_is_crashed():
    failure = A.classify(None, [], [])
    assert failure.code == "crashed" and failure.message == "killed by a signal"


def test_check_stderr_catches_sandbox_disabled():
    # as claude 2.1.197 printed it with socat missing
    line = ("\x1b[33m⚠ Sandbox disabled: sandbox is enabled but dependencies are missing: socat not "
            "installed · install missing tools (e.g. apt install bubblewrap socat) or see "
            "https://code.claude.com/docs/en/sandboxing\x1b[39m")
    reason = A.check_stderr(line)
    assert reason.startswith("sandbox is enabled but dependencies are missing: socat not installed")
    assert A.check_stderr("  Commands will run WITHOUT sandboxing. Network and filesystem "
                          "restrictions will NOT be enforced.").startswith("Commands will run WITHOUT")
    assert A.check_stderr("Not logged in · Please run /login") is None
    assert A.check_stderr("") is None
