"""``orchctl parse --agent NAME FILE|-`` as a real subprocess: the recorded
fixtures, stdin, random junk, and its usage errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import feed_stream

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "agents"
CASES = sorted(p for p in FIXTURES.glob("*/*.jsonl") if not p.name.endswith(".expected.jsonl"))


def orchctl_parse(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchctl.parse", *args], cwd=REPO,
                          input=stdin if stdin is not None else b"",
                          capture_output=True, timeout=30)


def in_process(agent: str, data: bytes) -> bytes:
    """What the library gives for the same bytes, framed the CLI's way."""
    events = feed_stream(agent, data, None)
    return b"".join(msgspec.json.encode(e) + b"\n" for e in events)


@pytest.mark.parametrize("path", CASES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_fixture_file(path: Path):
    proc = orchctl_parse("--agent", path.parent.name, str(path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == b""
    assert proc.stdout == in_process(path.parent.name, path.read_bytes())
    kinds = [json.loads(line)["kind"] for line in proc.stdout.splitlines()]
    assert kinds[-1] == "agent.result"


def test_stdin_and_json_flag():
    path = FIXTURES / "gemini" / "tool_call.jsonl"
    proc = orchctl_parse("--json", "--agent=gemini", "-", stdin=path.read_bytes())
    assert proc.returncode == 0
    assert proc.stdout == in_process("gemini", path.read_bytes())
    assert b'"kind":"agent.tool_call"' in proc.stdout


def test_last_line_without_newline_and_invalid_utf8():
    data = b'plain \xff text\n{"kind":"agent.text","text":"x"}'
    proc = orchctl_parse("--agent", "command", "-", stdin=data)
    assert proc.returncode == 0
    assert [json.loads(line) for line in proc.stdout.splitlines()] == [
        {"kind": "agent.text", "text": "plain \ufffd text"},
        {"kind": "agent.text", "text": "x"},
        {"kind": "agent.result", "ok": False, "text": "x"},  # exit code unknown: not ok
    ]


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(agent=st.sampled_from(["claude", "codex", "gemini", "command"]),
       junk=st.binary(max_size=3000))
def test_random_junk_is_parsed_not_crashed_on(agent, junk):
    proc = orchctl_parse("--agent", agent, "-", stdin=junk)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == in_process(agent, junk)
    lines = proc.stdout.splitlines()
    assert json.loads(lines[-1])["kind"] == "agent.result"


@pytest.mark.parametrize("args, message", [
    (["--agent", "aider", "x.jsonl"], b"unknown agent 'aider'"),
    (["--agent", "claude", "/nonexistent/x.jsonl"], b"cannot read /nonexistent/x.jsonl"),
    (["--agent", "claude", str(FIXTURES)], b"cannot read"),
    (["x.jsonl"], b"--agent NAME and FILE"),
    (["--agent"], b"--agent needs a NAME"),
    (["--agent", "claude", "a", "b"], b"unexpected argument 'b'"),
    (["--agent", "claude", "--bogus", "a"], b"unknown option '--bogus'"),
])
def test_usage_errors_exit_2(args, message):
    proc = orchctl_parse(*args)
    assert proc.returncode == 2
    assert message in proc.stderr and proc.stdout == b""


def test_imports_stay_light():
    code = ("import sys, orchctl.parse; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "{'orchd', 'actors', 'orchctl', 'zmq', 'pydantic', 'prometheus_client'}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         check=True, timeout=30).stdout
    loaded = set(json.loads(out.decode().replace("'", '"')))
    assert loaded <= {"orchd", "orchd.protocol", "orchctl", "orchctl.parse", "actors",
                      "actors.agents", "actors.agents.base", "actors.agents.claude",
                      "actors.agents.codex", "actors.agents.gemini", "actors.agents.command"}


def test_main_is_callable_in_process(capsysbinary):
    from orchctl.parse import main
    assert main(["--agent", "codex", str(FIXTURES / "codex" / "text.jsonl")]) == 0
    out = capsysbinary.readouterr().out
    assert out.splitlines()[0] == b'{"kind":"agent.session","agent_session_id":' \
                                  b'"01a2124d-c4ba-7ad0-b8e0-c1665ca9d571","model":null}'
