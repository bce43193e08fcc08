"""orchd.redact: every secret format is removed, nothing else is changed (pure)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchd import protocol as p
from orchd.redact import REDACTED, Redactor

ANT = "sk-ant-api03-Zx9Qw8Er7Ty6Ui5Op4As3Df2Gh1JkLz-AbCdEf_0"
PROJ = "sk-proj-Qw8Er7Ty6Ui5Op4As3Df2Gh1JkLzXc"
OPENAI = "sk-Qw8Er7Ty6Ui5Op4As3Df2Gh1JkLzXcVb"
GOOGLE = "AIzaSyQw8Er7Ty6Ui5Op4As3Df2Gh1JkLzXcVb"
BEARER_TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl"
ENV_VALUE = "pw-Mq7Rt5Vx3Zb1"

SECRETS = [ANT, PROJ, OPENAI, GOOGLE, BEARER_TOKEN, ENV_VALUE, "hunter2-abc", "ghp_Zx9Qw8Er7Ty6"]


@pytest.fixture
def r():
    return Redactor.from_environ({"DEPLOY_PASSWORD": ENV_VALUE, "HOME": "/root", "SHORT_TOKEN": "abc"})


@pytest.mark.parametrize("text, expected", [
    (f"key {ANT} here", f"key sk-ant-{REDACTED} here"),
    (f"use {PROJ}", f"use sk-proj-{REDACTED}"),
    (f"use {OPENAI}.", f"use sk-{REDACTED}."),
    (f"google {GOOGLE}", f"google AIza{REDACTED}"),
    (f"-H 'Authorization: Bearer {BEARER_TOKEN}'", f"-H 'Authorization: Bearer {REDACTED}'"),
    (f"authorization: bearer {BEARER_TOKEN}", f"authorization: bearer {REDACTED}"),
    ("export OPENAI_API_KEY=hunter2-abc", f"export OPENAI_API_KEY={REDACTED}"),
    ("GITHUB_TOKEN='ghp_Zx9Qw8Er7Ty6'", f"GITHUB_TOKEN='{REDACTED}'"),
    ("AWS_SECRET: hunter2-abc", f"AWS_SECRET: {REDACTED}"),
    ('{"api_key": "hunter2-abc", "n": 1}', f'{{"api_key": "{REDACTED}", "n": 1}}'),
    (f"the password is {ENV_VALUE}!", f"the password is [redacted:DEPLOY_PASSWORD]!"),
])
def test_each_format(r, text, expected):
    assert r(text) == expected


@pytest.mark.parametrize("text", [
    "task-list and sk-learn are fine; desk-top too",
    '{"max_tokens": 5000, "input_tokens": 12, "sort_key": "name"}',
    "max_tokens=500 tokens: 12",
    "a bearer of good news",  # too short to be a token? "of" is 2 chars: kept
    "/root is the home",       # HOME is not a credential name
    "abc",                     # SHORT_TOKEN's value is under 8 characters
    "",
])
def test_leaves_ordinary_text_alone(r, text):
    assert r(text) == text


def test_nothing_to_redact_returns_the_same_object(r):
    line = "compiled 14 modules in 2.3s; running pytest -q on tests/test_pure.py"
    assert r(line) is line
    ev = p.AgentText(text=line)
    assert r.event(ev) is ev


def test_events_are_walked(r):
    ev = p.AgentToolCall(call_id="1", tool="bash", input={
        "command": f"curl -H 'Authorization: Bearer {BEARER_TOKEN}' --key {ANT}",
        "env": {"OPENAI_API_KEY": "short1", "PATH": "/bin"}, "list": [ENV_VALUE, 3]})
    out = r.event(ev)
    dumped = json.dumps(out.input)
    for secret in (BEARER_TOKEN, ANT, "short1", ENV_VALUE):
        assert secret not in dumped
    assert out.input["env"]["PATH"] == "/bin" and out.input["list"][1] == 3
    spec = p.AssignmentSpec(name="a", agent="command", argv=["env", f"TOKEN={ENV_VALUE}"],
                            env={"GITHUB_TOKEN": "ghp_Zx9Qw8Er7Ty6"})
    sub = r.event(p.SessionSubmitted(task=f"use {GOOGLE}", target="/t", assignments=[spec]))
    assert GOOGLE not in sub.task and sub.assignments[0].env == {"GITHUB_TOKEN": REDACTED}
    assert ENV_VALUE not in sub.assignments[0].argv[1]


def test_json_stays_valid_and_loses_its_secrets(r):
    doc = {"text": f"OPENAI_API_KEY={OPENAI}", "nested": json.dumps({"token": "ghp_Zx9Qw8Er7Ty6"}),
           "max_token": 123456, "auth": f"Bearer {BEARER_TOKEN}"}
    out = r(json.dumps(doc))
    back = json.loads(out)
    assert back["max_token"] == 123456
    for secret in (OPENAI, "ghp_Zx9Qw8Er7Ty6", BEARER_TOKEN):
        assert secret not in out


@settings(max_examples=300)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=30)
                    | st.sampled_from(SECRETS + ["token", "api_key", "=", ":", '"', "\\", "Bearer "]),
                    lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.sampled_from(["token", "api_key", "a", "MY_SECRET", "x"]) | st.text(max_size=8),
                                      inner, max_size=4),
                    max_leaves=15))
def test_redacted_json_is_still_json(value):
    r = Redactor.from_environ({"DEPLOY_PASSWORD": ENV_VALUE})
    text = json.dumps(value)
    json.loads(r(text))  # never broken by a replacement


@settings(max_examples=300)
@given(st.text(max_size=80), st.sampled_from([ANT, PROJ, OPENAI, GOOGLE, f"Bearer {BEARER_TOKEN}", ENV_VALUE,
                                               "OPENAI_API_KEY=hunter2-abc"]), st.text(max_size=80))
def test_a_secret_anywhere_in_a_line_is_gone(before, secret, after):
    r = Redactor.from_environ({"DEPLOY_PASSWORD": ENV_VALUE})
    out = r(f"{before} {secret} {after}")
    assert secret.split()[-1].split("=")[-1] not in out
