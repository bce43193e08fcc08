"""Held-out transcripts written by others (the CLI vendors' tests and docs,
peer projects' captures) parse to the facts their MANIFEST.json lists.

The transcripts live outside the repository, in ``shared/peer-transcripts``
beside it (or beside an ancestor, for a worktree), and are read from there at test time (never copied in): they
are a check on the parsers, not fixtures the parsers were fitted to.  Each
is parsed as ``orchctl parse`` does it, framed like the worker and finished
with no exit code.  A fact that is absent or null in the manifest is not
determined by its source and is not checked; a fact this module does not
know fails the test, so a new kind of fact is never skipped silently.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchd.protocol import (
    AgentError, AgentResult, AgentSession, AgentText, AgentToolCall,
    AgentToolResult, AgentUnknown, AgentUsage,
)
from tests.helpers import feed_stream

REPO = Path(__file__).resolve().parents[1]
# ``shared/`` sits beside the main checkout; a worktree is one level deeper.
PEER = next((d / "shared" / "peer-transcripts" for d in REPO.parents
             if (d / "shared" / "peer-transcripts" / "MANIFEST.json").is_file()),
            REPO.parent / "shared" / "peer-transcripts")
MANIFEST = PEER / "MANIFEST.json"

if not MANIFEST.is_file():
    pytest.skip(f"no peer transcripts at {PEER}", allow_module_level=True)

TRANSCRIPTS: dict[str, dict] = json.loads(MANIFEST.read_text(encoding="utf-8"))["transcripts"]

KNOWN_FACTS = {"session_id", "model", "ok", "final_text", "final_text_contains",
               "text_contains", "tool_calls", "tool_calls_optional", "tool_errors",
               "usage", "cost_usd", "errors_surface", "error_contains"}


def parse(name: str) -> list:
    entry = TRANSCRIPTS[name]
    return feed_stream(entry["agent"], (PEER / name).read_bytes(), None)


def of(events: list, typ: type) -> list:
    return [e for e in events if isinstance(e, typ)]


def test_manifest_and_directory_agree():
    on_disk = {p.name for p in PEER.glob("*.jsonl")}
    assert on_disk == set(TRANSCRIPTS)
    assert {e["agent"] for e in TRANSCRIPTS.values()} <= {"claude", "codex", "gemini"}


@pytest.mark.parametrize("name", sorted(TRANSCRIPTS))
def test_transcript_parses_to_its_facts(name: str):
    entry = TRANSCRIPTS[name]
    agent = entry["agent"]
    expect = {k: v for k, v in entry["expect"].items() if v is not None}
    assert set(expect) <= KNOWN_FACTS, f"facts this test does not check: {set(expect) - KNOWN_FACTS}"
    events = parse(name)

    # Whatever the facts: the run is closed by exactly one agent.result, last,
    # and every line of these well-formed transcripts was understood.
    results = of(events, AgentResult)
    assert len(results) == 1 and events[-1] is results[0], events
    result = results[0]
    assert of(events, AgentUnknown) == []

    sessions = of(events, AgentSession)
    if "session_id" in expect:
        assert [s.agent_session_id for s in sessions] == [expect["session_id"]]
    if "model" in expect:
        assert [s.model for s in sessions] == [expect["model"]]

    if "ok" in expect:
        assert result.ok is expect["ok"], events
    if "final_text" in expect:
        assert result.text == expect["final_text"]
    if "final_text_contains" in expect:
        assert expect["final_text_contains"] in result.text

    joined = "\n".join(t.text for t in of(events, AgentText))
    for s in expect.get("text_contains", ()):
        assert s in joined

    if "tool_calls" in expect:
        n = len(of(events, AgentToolCall))
        allowed = expect["tool_calls"] + expect.get("tool_calls_optional", 0)
        assert expect["tool_calls"] <= n <= allowed, events
    if "tool_errors" in expect:
        assert sum(not r.ok for r in of(events, AgentToolResult)) == expect["tool_errors"]

    usages = of(events, AgentUsage)
    if "usage" in expect:
        want = expect["usage"]
        assert usages, "no agent.usage"
        last = usages[-1]
        assert last.output_tokens == want["output_tokens"]
        accepted = {want["input_tokens"]}
        if agent == "claude":
            # the design leaves cache accounting open: with or without the cache tokens
            accepted.add(want["input_tokens"] + want.get("cache_creation_input_tokens", 0)
                         + want.get("cache_read_input_tokens", 0))
        assert last.input_tokens in accepted
    if "cost_usd" in expect:
        assert usages, "no agent.usage"
        assert usages[-1].cost_usd == expect["cost_usd"]

    errors = of(events, AgentError)
    if expect.get("errors_surface") is True:
        assert errors, "the source shows an error; no agent.error surfaced it"
    elif expect.get("errors_surface") is False:
        assert [e for e in errors if e.fatal] == []
    if "error_contains" in expect:
        assert any(expect["error_contains"] in e.message for e in errors), errors


@pytest.mark.parametrize("name", sorted(TRANSCRIPTS))
def test_every_truncation_of_a_transcript_parses(name: str):
    """A run killed at any byte: no parser raises, and the stream is still
    closed by exactly one agent.result."""
    entry = TRANSCRIPTS[name]
    data = (PEER / name).read_bytes()
    for cut in range(len(data) + 1):
        events = feed_stream(entry["agent"], data[:cut], None)
        assert len(of(events, AgentResult)) == 1 and isinstance(events[-1], AgentResult)
