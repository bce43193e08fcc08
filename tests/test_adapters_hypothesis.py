"""Property tests for every stream parser: no input makes one raise, every
event it emits encodes, a run is closed by exactly one result, parsers share
no state, and gemini's delta joining does not depend on how text is chunked.
"""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors.agents import ADAPTERS, get_adapter
from orchd.protocol import AgentResult, AgentText
from tests.helpers import feed_parser

NAMES = sorted(ADAPTERS)
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "agents"
REAL_LINES = sorted({
    line for p in FIXTURES.glob("*/*.jsonl") if not p.name.endswith(".expected.jsonl")
    for line in p.read_text(encoding="utf-8", errors="replace").splitlines() if line
})

# Every "type" (and "kind") the parsers dispatch on, so generated objects
# reach the typed decoders and not only the unknown-line path.
TYPES = ["system", "assistant", "user", "result", "stream_event", "rate_limit_event",
         "thread.started", "turn.started", "turn.completed", "turn.failed", "item.started",
         "item.completed", "item.updated", "error", "init", "message", "tool_use",
         "tool_result", "agent.text", "agent.result", "agent.usage", "agent.tool_call"]
KEYS = ["type", "subtype", "kind", "session_id", "model", "message", "content", "text", "item",
        "id", "role", "delta", "is_error", "result", "usage", "errors", "thread_id", "status",
        "stats", "error", "tool_id", "tool_name", "parameters", "output", "exit_code",
        "aggregated_output", "command", "changes", "input_tokens", "output_tokens", "response",
        "total_cost_usd", "tool_use_id", "name", "input", "ok", "fatal", "attempt", "server"]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20) | st.sampled_from(TYPES),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=5), inner, max_size=6),
    max_leaves=25,
)
objects = st.builds(
    lambda typ, sub, rest: {"type": typ, "subtype": sub, "kind": typ, **rest},
    st.sampled_from(TYPES), st.sampled_from(["init", "api_retry", "status", "x"]),
    st.dictionaries(st.sampled_from(KEYS), json_values, max_size=8))


def run(name: str, lines: list[str], exit_code: int | None) -> list:
    parser = get_adapter(name).new_parser()
    events = feed_parser(parser, lines, exit_code)
    assert parser.finish(exit_code) == []
    assert parser.feed_line(lines[0] if lines else "x") == []  # after finish: ignored
    return events


def check_run(name: str, lines: list[str], exit_code: int | None) -> None:
    events = run(name, lines, exit_code)
    for ev in events:
        msgspec.json.encode(ev)
    # a run always ends with a result: the CLI's own (more than one only if
    # the input holds several result lines) or the one finish invents
    assert any(isinstance(ev, AgentResult) for ev in events)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(NAMES), data=st.binary(max_size=2000),
       exit_code=st.none() | st.integers(-9, 255))
def test_random_bytes_never_crash_a_parser(name, data, exit_code):
    lines = data.decode("utf-8", errors="replace").split("\n")
    events = run(name, lines, exit_code)
    assert sum(isinstance(ev, AgentResult) for ev in events) == 1
    for ev in events:
        msgspec.json.encode(ev)


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(NAMES), objs=st.lists(objects, max_size=8),
       exit_code=st.none() | st.integers(0, 2))
def test_wrongly_typed_known_events_never_crash_a_parser(name, objs, exit_code):
    check_run(name, [json.dumps(o) for o in objs], exit_code)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(NAMES), picks=st.lists(st.sampled_from(REAL_LINES), max_size=6),
       key=st.sampled_from(KEYS), value=json_values, data=st.data())
def test_mutated_real_lines_never_crash_a_parser(name, picks, key, value, data):
    lines = []
    for line in picks:
        obj = json.loads(line)
        target = obj
        # mutate at the top or one level down (item, message, usage, stats...)
        nested = [v for v in obj.values() if isinstance(v, dict)]
        if nested and data.draw(st.booleans()):
            target = data.draw(st.sampled_from(nested))
        target[key] = value
        lines.append(json.dumps(obj))
    check_run(name, lines, 0)


@settings(max_examples=200)
@given(name=st.sampled_from(NAMES), lines=st.lists(st.sampled_from(REAL_LINES) | st.text(max_size=30),
                                                    max_size=10))
def test_parsers_share_no_state(name, lines):
    assert run(name, lines, 0) == run(name, lines, 0)


def delta(text: str) -> str:
    return json.dumps({"type": "message", "role": "assistant", "content": text, "delta": True})


@given(messages=st.lists(st.text(min_size=1, max_size=40), min_size=1, max_size=4),
       data=st.data())
def test_gemini_text_is_invariant_to_delta_chunking(messages, data):
    """Whatever the chunking, each message between tool events is one text."""
    def stream(chunked: bool) -> list[str]:
        lines = [json.dumps({"type": "init", "session_id": "s"})]
        for i, msg in enumerate(messages):
            if chunked:
                cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(msg) - 1)), max_size=5)))
                bounds = [0, *[c for c in cuts if c < len(msg)], len(msg)]
                lines += [delta(msg[a:b]) for a, b in zip(bounds, bounds[1:])]
            else:
                lines.append(delta(msg))
            lines.append(json.dumps({"type": "tool_use", "tool_name": "t", "tool_id": str(i)}))
        return lines

    whole = run("gemini", stream(False), 0)
    assert run("gemini", stream(True), 0) == whole
    assert [e.text for e in whole if isinstance(e, AgentText)] == messages
    assert whole[-1] == AgentResult(ok=True, text="\n".join(messages))
