"""The generic ``command`` agent and the adapter registry."""

from __future__ import annotations

import json
from functools import partial

import pytest

from actors.agents import ADAPTERS, RunSpec, get_adapter
from orchd.protocol import (
    AgentError, AgentOutput, AgentResult, AgentText, AgentToolCall, AgentUsage,
)
from tests.helpers import feed_lines

A = get_adapter("command")


parse = partial(feed_lines, A)  # parse(lines, exit_code=0): every event, finish included


def test_registry_names_every_adapter():
    assert sorted(ADAPTERS) == ["claude", "codex", "command", "gemini"]
    for name, adapter in ADAPTERS.items():
        assert adapter.name == name and get_adapter(name) is adapter
    with pytest.raises(KeyError, match="known: claude, codex, command, gemini"):
        get_adapter("aider")


def test_build_launch_passes_argv_env_cwd_through():
    spec = RunSpec(prompt="ignored", cwd="/w", argv=["python", "-c", "print(1)"],
                   env={"A": "1"}, tmpdir="/t", profile="yolo")
    launch = A.build_launch(spec)
    assert launch.argv == ["python", "-c", "print(1)"]
    assert launch.env == {"A": "1", "TMPDIR": "/t"}
    assert launch.cwd == "/w" and launch.confined is None


@pytest.mark.parametrize("argv", [None, []])
def test_build_launch_needs_argv(argv):
    with pytest.raises(ValueError, match="argv"):
        A.build_launch(RunSpec(prompt="p", cwd="/w", argv=argv))


def test_lines_become_events():
    lines = [
        "plain words",
        json.dumps({"kind": "agent.text", "text": "MILESTONE: half"}),
        json.dumps({"kind": "agent.tool_call", "call_id": "c", "tool": "sh", "input": {"x": 1}}),
        json.dumps({"kind": "agent.usage", "input_tokens": 3, "output_tokens": 4}),
        json.dumps({"kind": "agent.text"}),                    # missing field
        json.dumps({"kind": "agent.usage", "input_tokens": "3"}),  # wrong type
        json.dumps({"kind": "worker.done", "text": "not an agent kind"}),
        json.dumps({"progress": 0.5}),
        "[1, 2]",
        "42",
        "   ",
        "{not json",
    ]
    assert parse(lines, 3) == [
        AgentText(text="plain words"),
        AgentText(text="MILESTONE: half"),
        AgentToolCall(call_id="c", tool="sh", input={"x": 1}),
        AgentUsage(input_tokens=3, output_tokens=4, cost_usd=None),
        AgentOutput(data={"kind": "agent.text"}),
        AgentOutput(data={"kind": "agent.usage", "input_tokens": "3"}),
        AgentOutput(data={"kind": "worker.done", "text": "not an agent kind"}),
        AgentOutput(data={"progress": 0.5}),
        AgentOutput(data=[1, 2]),
        AgentOutput(data=42),
        AgentText(text="{not json"),
        AgentResult(ok=False, text="{not json"),
    ]


def test_the_programs_own_result_wins_over_the_exit_code():
    own = json.dumps({"kind": "agent.result", "ok": True, "text": "fine"})
    assert parse([own], 1) == [AgentResult(ok=True, text="fine")]
    err = json.dumps({"kind": "agent.error", "message": "bad", "fatal": True})
    assert parse([err], 0) == [AgentError(message="bad", fatal=True), AgentResult(ok=False, text="")]


def test_classify_has_no_catalogue():
    assert A.classify(0, [], parse([])) is None
    failure = A.classify(2, ["Traceback ...", "ValueError: x"], parse([], 2))
    assert (failure.code, failure.message, failure.action) == ("crashed", "ValueError: x", "relaunch")
    assert A.check_stderr("Sandbox disabled: whatever") is None
    assert A.version_argv() == [] and A.tested_version is None
