"""Gemini adapter: argv per profile, delta joining, ``-o json`` objects,
error catalogue."""

from __future__ import annotations

import json
from functools import partial

import pytest

from actors.agents import RunSpec, get_adapter
from actors.agents.base import MAX_TEXT_CHARS
from orchd.protocol import (
    AgentError, AgentResult, AgentSession, AgentText, AgentToolCall,
    AgentToolResult, AgentUnknown, AgentUsage,
)
from tests.helpers import feed_lines

A = get_adapter("gemini")


parse = partial(feed_lines, A)  # parse(lines, exit_code=0): every event, finish included


def j(obj: dict) -> str:
    return json.dumps(obj)


def delta(text: str) -> str:
    return j({"type": "message", "role": "assistant", "content": text, "delta": True})


# ---------------------------------------------------------------- launch

@pytest.mark.parametrize("profile, flags, confined", [
    ("workspace", ["--approval-mode", "auto_edit"], True),
    ("readonly", ["--approval-mode", "default"], True),
    ("yolo", ["--yolo"], False),
])
def test_profiles(profile, flags, confined):
    launch = A.build_launch(RunSpec(prompt="do it", cwd="/w", profile=profile))
    assert launch.argv == ["gemini", "--prompt=do it", "--output-format", "stream-json",
                           "--skip-trust"] + flags
    assert launch.confined is confined and launch.cwd == "/w" and launch.env == {}


def test_resume_model_and_env():
    spec = RunSpec(prompt="-x", cwd="/w", profile="yolo", model="gemini-2.5-flash",
                   resume_id="latest", binary="/b/gemini", home="/h", tmpdir="/t",
                   config_dir="/g")
    launch = A.build_launch(spec)
    assert launch.argv == ["/b/gemini", "--prompt=-x", "--output-format", "stream-json",
                           "--skip-trust", "--yolo", "-m", "gemini-2.5-flash", "--resume", "latest"]
    assert launch.env == {"HOME": "/h", "TMPDIR": "/t", "GEMINI_CLI_HOME": "/g"}


def test_version():
    assert A.version_argv("/b/g") == ["/b/g", "--version"] and A.tested_version == "0.61.0"


# ---------------------------------------------------------------- parsing

def test_deltas_join_into_one_text_flushed_by_the_next_event():
    events = parse([
        j({"type": "init", "session_id": "s", "model": "auto"}),
        j({"type": "message", "role": "user", "content": "the prompt"}),
        delta("Writing "), delta("the file."),
        j({"type": "tool_use", "tool_name": "write_file", "tool_id": "t1",
           "parameters": {"file_path": "a", "content": "b"}}),
        j({"type": "tool_result", "tool_id": "t1", "status": "success"}),
        delta("MILESTONE: a\n"), delta("DONE: x"),
        j({"type": "result", "status": "success",
           "stats": {"total_tokens": 9, "input_tokens": 7, "output_tokens": 2, "cached": 3}}),
    ])
    assert events == [
        AgentSession(agent_session_id="s", model="auto"),
        AgentText(text="Writing the file."),
        AgentToolCall(call_id="t1", tool="write_file", input={"file_path": "a", "content": "b"}),
        AgentToolResult(call_id="t1", ok=True, output=None),
        AgentText(text="MILESTONE: a\nDONE: x"),
        AgentUsage(input_tokens=7, output_tokens=2, cost_usd=None),
        AgentResult(ok=True, text="Writing the file.\nMILESTONE: a\nDONE: x"),
    ]


def test_finish_flushes_pending_deltas_and_closes_the_run():
    assert parse([delta("half "), delta("done")], None) == [
        AgentText(text="half done"), AgentResult(ok=False, text="half done")]


def test_error_result_and_error_events():
    events = parse([
        delta("trying"),
        j({"type": "error", "severity": "warning", "message": "Loop detected"}),
        j({"type": "tool_result", "tool_id": "t", "status": "error", "output": "raw",
           "error": {"type": "invalid_tool_params", "message": "Path not in workspace"}}),
        j({"type": "result", "status": "error",
           "error": {"type": "unknown", "message": "[API Error: quota]"}}),
    ], 1)
    assert events == [
        AgentText(text="trying"),
        AgentError(message="Loop detected", fatal=False),
        AgentToolResult(call_id="t", ok=False, output="Path not in workspace"),
        AgentError(message="[API Error: quota]", fatal=True),
        AgentResult(ok=False, text="trying"),
    ]


def test_json_output_object_success_and_error():
    ok = j({"session_id": "s1", "response": "All done.",
            "stats": {"models": {"a": {"tokens": {"prompt": 5, "candidates": 2, "total": 7}},
                                 "b": {"tokens": {"prompt": 1, "candidates": 1}}}}})
    assert parse([ok]) == [AgentSession(agent_session_id="s1", model=None),
                           AgentText(text="All done."),
                           AgentUsage(input_tokens=6, output_tokens=3, cost_usd=None),
                           AgentResult(ok=True, text="All done.")]
    err = j({"session_id": "s2", "error": {"type": "Error", "message": "Please set an Auth method",
                                           "code": 41}})
    assert parse([err], 41) == [AgentSession(agent_session_id="s2", model=None),
                                AgentError(message="Please set an Auth method", fatal=True),
                                AgentResult(ok=False, text="")]


def test_a_message_without_delta_is_a_whole_message():
    whole = j({"type": "message", "role": "assistant", "content": "whole"})
    assert parse([delta("a"), whole, delta("b")])[:3] == [
        AgentText(text="a"), AgentText(text="whole"), AgentText(text="b")]


def test_runaway_message_is_cut_to_keep_state_bounded():
    chunk = "x" * (MAX_TEXT_CHARS // 2 + 1)
    events = parse([delta(chunk), delta(chunk), delta(chunk)])
    texts = [e.text for e in events if isinstance(e, AgentText)]
    assert "".join(texts) == chunk * 3 and len(texts) == 3
    assert len(events[-1].text) == MAX_TEXT_CHARS  # the run text keeps its tail


@pytest.mark.parametrize("raw", [
    j({"type": "init"}),
    j({"type": "message", "role": "assistant", "content": 3, "delta": True}),
    j({"type": "tool_use", "tool_name": "x"}),
    j({"type": "tool_result", "tool_id": "t", "status": 1}),
    j({"type": "result", "status": "success", "stats": {"input_tokens": "lots"}}),
    j({"type": "future"}),
    j({"session_id": "s", "response": 5}),
    "Ripgrep is not available. Falling back to GrepTool.",
])
def test_malformed_known_events_are_unknown(raw):
    assert A.new_parser().feed_line(raw) == [AgentUnknown(raw=raw)]


def test_unknown_line_still_flushes_nothing_and_keeps_pending_text():
    p = A.new_parser()
    assert p.feed_line(delta("a")) == []
    assert p.feed_line("junk") == [AgentUnknown(raw="junk")]
    assert p.feed_line(delta("b")) == []
    assert p.finish(0) == [AgentText(text="ab"), AgentResult(ok=True, text="ab")]


# ---------------------------------------------------------------- catalogue

@pytest.mark.parametrize("exit_code, stderr, code, action, fix", [
    (41, ["Invalid auth method selected."], "not_logged_in", "escalate", None),
    (55, ["\x1b[31mGemini CLI is not running in a trusted directory. To proceed, either use "
          "`--skip-trust`\x1b[0m"], "untrusted_folder", "relaunch", {"env.GEMINI_CLI_TRUST_WORKSPACE": "true"}),
    (42, ["Error resuming session: No previous sessions found for this project."],
     "resume_not_found", "relaunch", {"resume_id": ""}),
    (1, ["Invalid values:", '  Argument: output-format, Given: "xml", Choices: "text", "json"'],
     "bad_flag", "relaunch", {"fallback": "--skip-trust",
                              "note": "the CLI may not be the tested version (0.61.0): check `orchd doctor`"}),
    (1, ['[API Error: {"error":{"code":429,"status":"RESOURCE_EXHAUSTED"}}]'],
     "rate_limited", "relaunch", {"backoff_s": "60"}),
])
def test_catalogue(exit_code, stderr, code, action, fix):
    failure = A.classify(exit_code, stderr, parse([], exit_code))
    assert (failure.code, failure.action, failure.fix) == (code, action, fix)


def test_check_stderr_is_silent_for_trust_downgrades():
    assert A.check_stderr('Approval mode overridden to "default" because the current folder '
                          'is not trusted.') is None
