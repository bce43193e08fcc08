"""The scenario validator: every documented form passes, every mistake is one line naming its path."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import msgspec
import pytest

from actors.rehearsal import dialects
from actors.rehearsal.scenario import (AGENT_KEYS, REPLY_KINDS, Agents, ScenarioError, default_scenario,
                                       load_scenario, validate_scenario)

REPO = Path(__file__).resolve().parents[1]

GOOD: list[dict[str, Any]] = [
    {"agents": {}},
    {"agents": {"*": []}},
    {"agents": {"claude": [{"text": "hi {assignment}"}], "codex": [{"text": "x"}], "gemini": [{"text": "y"}],
                "*": [{"text": "z"}]}},
    {"agents": {"*": [{"tool": "write_file", "path": "{assignment}.txt", "content": ""}]}},
    {"agents": {"*": [{"tool": "write_file", "path": "a.txt", "content": "x\n", "text": "writing", "match": "m"}]}},
    {"agents": {"*": [{"tool": "run", "command": "true", "text": "running"}]}},
    {"agents": {"*": [{"http_error": 401, "body": {"error": {"message": "no", "code": None}}}]}},
    {"agents": {"*": [{"http_error": 529}, {"http_error": 400, "match": "x"}]}},
    {"agents": {"*": [{"stall": True}, {"stall": True, "match": "again"}]}},
    {"agents": {"*": [{"text": "", "match": ""}]}},
    {"agents": {"codex": [{"json": {"verdict": "concern", "summary": "s", "findings": []},
                           "match": "orchd-review: impl round 1"}, {"json": None}]}},
]


@pytest.mark.parametrize("scenario", GOOD)
def test_documented_forms_are_accepted(scenario: dict[str, Any]) -> None:
    validate_scenario(scenario)


def test_the_default_scenario_is_valid_and_writes_then_finishes() -> None:
    typed = validate_scenario(default_scenario())
    assert [r.tool for r in typed.agents.fallback] == ["write_file", msgspec.UNSET]
    assert "DONE: {assignment}" in typed.agents.fallback[1].text.splitlines()


def _doc_examples() -> list[tuple[str, Any]]:
    text = (REPO / "docs" / "scenarios.md").read_text()
    found = []
    for lang, body in re.findall(r"```(json|toml)\n(.*?)```", text, re.S):
        try:
            data = json.loads(body) if lang == "json" else tomllib.loads(body)
        except ValueError:
            continue  # the format sketch ("reply, ...") is not a scenario
        found.append((lang, data))
    return found


def test_every_scenario_in_the_docs_is_valid() -> None:
    examples = _doc_examples()
    assert len(examples) >= 3, examples  # the default, the reviewer, the expired key
    for _, data in examples:
        validate_scenario(data)
    assert any(data == default_scenario() for _, data in examples), "the docs show the packaged default"


def test_the_agent_keys_are_the_dialects_agents() -> None:
    assert set(AGENT_KEYS) == set(dialects.AGENT_OF.values()) | {"*"}
    assert {f.encode_name for f in msgspec.structs.fields(Agents)} == set(AGENT_KEYS)
    assert REPLY_KINDS == ("text", "tool", "http_error", "stall", "json", "usage_limit")


BAD: list[tuple[Any, str]] = [
    # the shape around the replies
    ([], "expected object, got array"),
    ({}, "missing key 'agents'"),
    ({"agents": {}, "version": 2}, "unknown key 'version'"),
    ({"agents": []}, "agents: expected object, got array"),
    ({"agents": {"cladue": []}}, "agents: unknown key 'cladue' (expected claude, codex, gemini or *)"),
    ({"agents": {"claude": "x"}}, "agents.claude: expected array, got str"),
    ({"agents": {"claude": None}}, "agents.claude: expected array, got null"),
    ({"agents": {"*": ["hi"]}}, "agents.*[0]: expected object, got str"),
    # typos and unknown keys
    ({"agents": {"claude": [{"tol": "run", "command": "x"}]}}, "agents.claude[0]: unknown key 'tol'"),
    ({"agents": {"codex": [{"text": "a"}, {"txt": "b"}]}}, "agents.codex[1]: unknown key 'txt'"),
    # wrong types
    ({"agents": {"claude": [{"text": 3}]}}, "agents.claude[0].text: expected str, got int"),
    ({"agents": {"claude": [{"text": None}]}}, "agents.claude[0].text: expected str, got null"),
    ({"agents": {"*": [{"http_error": "401"}]}}, "agents.*[0].http_error: expected int, got str"),
    ({"agents": {"*": [{"http_error": 401.0}]}}, "agents.*[0].http_error: expected int, got float"),
    ({"agents": {"*": [{"http_error": True}]}}, "agents.*[0].http_error: expected int, got bool"),
    ({"agents": {"*": [{"http_error": 200}]}}, "agents.*[0].http_error: expected int >= 400"),
    ({"agents": {"*": [{"http_error": 600}]}}, "agents.*[0].http_error: expected int <= 599"),
    ({"agents": {"*": [{"http_error": 500, "body": []}]}}, "agents.*[0].body: expected object, got array"),
    ({"agents": {"*": [{"http_error": 500, "body": {"when": {1, 2}}}]}},
     "agents.*[0]: body is not JSON: Object of type set is not JSON serializable"),
    ({"agents": {"*": [{"stall": -1}]}}, "agents.*[0].stall: expected bool, got int"),
    ({"agents": {"*": [{"stall": False}]}}, "agents.*[0]: stall must be true"),
    ({"agents": {"*": [{"text": "x", "match": 3}]}}, "agents.*[0].match: expected str, got int"),
    ({"agents": {"*": [{"tool": 5}]}}, "agents.*[0].tool: expected str, got int"),
    ({"agents": {"*": [{"tool": "write_file", "path": "", "content": ""}]}},
     "agents.*[0].path: expected str of length >= 1"),
    # no kind, two kinds, keys of another kind
    ({"agents": {"*": [{}]}}, "agents.*[0]: a reply needs one of text, tool, http_error, stall, json, usage_limit"),
    ({"agents": {"*": [{"match": "x"}]}}, "agents.*[0]: a reply needs one of text, tool, http_error, stall, json, usage_limit"),
    ({"agents": {"*": [{"usage_limit": -1}]}}, "agents.*[0].usage_limit: expected float >= 0.0"),
    ({"agents": {"*": [{"usage_limit": 5, "body": {}}]}}, "agents.*[0]: body not allowed with usage_limit"),
    ({"agents": {"*": [{"tool": "run", "command": "x", "http_error": 500}]}},
     "agents.*[0]: a reply has one kind, got tool and http_error"),
    ({"agents": {"*": [{"text": "x", "stall": True}]}}, "agents.*[0]: text not allowed with stall"),
    ({"agents": {"*": [{"text": "x", "http_error": 500}]}}, "agents.*[0]: text not allowed with http_error"),
    ({"agents": {"*": [{"text": "x", "body": {}}]}}, "agents.*[0]: body not allowed with text"),
    ({"agents": {"*": [{"text": "x", "path": "p"}]}}, "agents.*[0]: path not allowed with text"),
    ({"agents": {"*": [{"json": {}, "text": "x"}]}}, "agents.*[0]: text not allowed with json"),
    ({"agents": {"*": [{"json": {}, "tool": "run", "command": "x"}]}},
     "agents.*[0]: a reply has one kind, got tool and json"),
    # tools
    ({"agents": {"*": [{"tool": "fly"}]}}, "agents.*[0]: unknown tool 'fly' (expected write_file or run)"),
    ({"agents": {"*": [{"tool": "write_file", "path": "x"}]}}, "agents.*[0]: write_file needs path and content"),
    ({"agents": {"*": [{"tool": "run"}]}}, "agents.*[0]: run needs command"),
    ({"agents": {"*": [{"tool": "run", "command": "x", "path": "p"}]}},
     "agents.*[0]: path not allowed with tool run"),
    ({"agents": {"*": [{"tool": "write_file", "path": "p", "content": "", "command": "x"}]}},
     "agents.*[0]: command not allowed with tool write_file"),
]


@pytest.mark.parametrize(("scenario", "message"), BAD, ids=[m for _, m in BAD])
def test_each_mistake_is_one_line_naming_its_path(scenario: Any, message: str) -> None:
    with pytest.raises(ScenarioError) as info:
        validate_scenario(scenario)
    assert str(info.value) == message


# ---------------------------------------------------------------- files

def test_load_scenario_reads_json_and_toml(tmp_path: Path) -> None:
    j = tmp_path / "s.json"
    j.write_text(json.dumps({"agents": {"*": [{"stall": True}]}}))
    assert load_scenario(j) == {"agents": {"*": [{"stall": True}]}}
    t = tmp_path / "s.toml"
    t.write_text('[[agents.codex]]\nhttp_error = 401\nbody = { error = { message = "no" } }\n'
                 '[[agents."*"]]\ntext = "hi"\n')
    assert load_scenario(t) == {"agents": {"codex": [{"http_error": 401, "body": {"error": {"message": "no"}}}],
                                           "*": [{"text": "hi"}]}}


@pytest.mark.parametrize(("name", "content", "message"), [
    ("missing.json", None, "cannot read: No such file or directory"),
    ("s.json", "{not json", "not valid JSON: "),
    ("s.toml", "agents = [", "not valid TOML: "),
    ("s.json", b"\xff\xfe", "not valid JSON: "),
    ("s.toml", '[[agents.claude]]\ntol = "run"\n', "agents.claude[0]: unknown key 'tol'"),
    ("s.toml", "[[agents.claude]]\nstall = 1\n", "agents.claude[0].stall: expected bool, got int"),
])
def test_load_scenario_errors_are_one_line(tmp_path: Path, name: str, content: str | bytes | None,
                                           message: str) -> None:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


def test_modelserver_cli_refuses_a_bad_scenario(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"agents": {"claude": [{"tol": "run"}]}}))
    res = subprocess.run([sys.executable, "-m", "actors.rehearsal.modelserver", "--scenario", str(bad)],
                         capture_output=True, text=True, cwd=REPO, timeout=30)
    assert res.returncode == 2
    assert res.stdout == ""  # no URL: the server never started
    assert res.stderr == f"modelserver: bad scenario {bad}: agents.claude[0]: unknown key 'tol'\n"
