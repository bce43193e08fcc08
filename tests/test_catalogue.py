"""Every error-catalogue entry of every CLI, fed its REAL message.

The messages come from runs of the pinned CLIs against the scripted model
server (tests/fixtures/agents, recorded by tests/fixtures/record.py), from
agent-clis.md's table of the CLIs' own error output, from the peer
transcripts, and, for the usage-limit texts the scripted server cannot make
the CLI print (claude builds them from rate-limit headers), from the
strings in the pinned CLI bundle itself (``You've hit your ${limit} ·
resets ${when}`` in claude 2.1.197, ``Claude AI usage limit reached|<epoch>``
in earlier ones).  Each row asserts the code, the action and the fix;
``test_every_entry_is_covered`` fails when a catalogue entry has no row.
docs/recovery.md is the same table for humans.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest

from actors.agents import RunSpec, get_adapter
from actors.agents.base import ACTIONS, UNTESTED_NOTE
from actors.quota import reset_at
from tests.helpers import feed_stream

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "agents"
DOCS = Path(__file__).resolve().parents[1] / "docs" / "recovery.md"
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)


def j(obj) -> str:
    return json.dumps(obj)


def claude_result(text: str, status: int | None = None) -> list[str]:
    return [j({"type": "result", "subtype": "success", "is_error": True, "result": text,
               "api_error_status": status, "session_id": "s"})]


def codex_failed(message: str) -> list[str]:
    return [j({"type": "error", "message": message}), j({"type": "turn.failed", "error": {"message": message}})]


def fixture(cli: str, case: str) -> tuple[int | None, list[str], list[str]]:
    """(exit code, stderr lines, stdout lines) of a recorded run; 124 is the recorder's kill."""
    meta = json.loads((FIXTURES / cli / f"{case}.meta.json").read_text())
    code = None if meta["exit_code"] == 124 else meta["exit_code"]
    return code, meta["stderr"].splitlines(), (FIXTURES / cli / f"{case}.jsonl").read_text().splitlines()


def msg(exit_code, stderr=(), stdout=()) -> tuple[int | None, list[str], list[str]]:
    return exit_code, list(stderr), list(stdout)


BACKOFF = {"rate_limited": {"backoff_s": "60"}, "overloaded": {"backoff_s": "30"},
           "server_error": {"backoff_s": "30"}, "network": {"backoff_s": "10"},
           "usage_limit": {"backoff_s": "300"}}


def bad_flag(fallback: str, tested: str) -> dict[str, str]:
    return {"fallback": fallback, "note": UNTESTED_NOTE.format(tested=tested)}


# (cli, run, code, action, fix) -- run is (exit code, stderr lines, stdout lines)
ROWS = [
    # ---------------------------------------------------------------- claude
    ("claude", fixture("claude", "not_logged_in"), "not_logged_in", "escalate", None),
    ("claude", fixture("claude", "http_401"), "auth_invalid", "escalate", None),
    ("claude", fixture("claude", "http_403"), "auth_invalid", "escalate", None),
    ("claude", fixture("claude", "http_429"), "rate_limited", "relaunch", BACKOFF["rate_limited"]),
    ("claude", fixture("claude", "http_529"), "overloaded", "relaunch", BACKOFF["overloaded"]),
    ("claude", fixture("claude", "http_503"), "overloaded", "relaunch", BACKOFF["overloaded"]),
    ("claude", fixture("claude", "http_500"), "server_error", "relaunch", BACKOFF["server_error"]),
    ("claude", fixture("claude", "connection_refused"), "network", "relaunch", BACKOFF["network"]),
    # peer transcript: a stream that went quiet mid-answer
    ("claude", msg(1, stdout=claude_result("API Error: Stream idle timeout - no chunks received")),
     "network", "relaunch", BACKOFF["network"]),
    ("claude", msg(1, stdout=claude_result("You've hit your session limit · resets 3pm")),
     "usage_limit", "park", BACKOFF["usage_limit"]),
    ("claude", msg(1, stdout=claude_result("You've hit your weekly limit · resets Dec 1, 9am")),
     "usage_limit", "park", BACKOFF["usage_limit"]),
    ("claude", msg(1, stdout=claude_result("Claude AI usage limit reached|1750176000", 429)),
     "usage_limit", "park", BACKOFF["usage_limit"]),
    ("claude", fixture("claude", "root_skip_permissions"), "root_refused", "relaunch", {"env.IS_SANDBOX": "1"}),
    ("claude", fixture("claude", "stream_json_no_verbose"), "needs_verbose", "relaunch", {"flag": "--verbose"}),
    ("claude", fixture("claude", "unknown_flag"), "bad_flag", "relaunch", bad_flag("--max-turns", "2.1.197")),
    ("claude", fixture("claude", "max_turns"), "max_turns", "escalate", None),
    ("claude", msg(1, stdout=[j({"type": "result", "subtype": "error_max_budget_usd", "is_error": True,
                                 "errors": ["Reached maximum budget ($0.01)"]})]),
     "max_budget", "escalate", None),
    ("claude", msg(1, ["No conversation found with session ID: 0c1ad0b4-4c7f-4d3b-9a1e-6f0d1c2b3a4e"]),
     "resume_not_found", "relaunch", {"resume_id": ""}),
    # agent-clis.md: the warning claude prints when bwrap/socat are missing
    ("claude", msg(1, ["⚠ Sandbox disabled: sandbox is enabled but dependencies are missing: socat not installed"
                       " · install missing tools (e.g. apt install bubblewrap socat)"]),
     "sandbox_unavailable", "escalate", None),
    ("claude", msg(None, ["something odd"]), "crashed", "relaunch", None),
    # ---------------------------------------------------------------- codex
    ("codex", fixture("codex", "missing_env_key"), "not_logged_in", "escalate", None),
    ("codex", fixture("codex", "http_401"), "auth_invalid", "escalate", None),
    ("codex", fixture("codex", "http_403"), "auth_invalid", "escalate", None),
    ("codex", fixture("codex", "http_429"), "rate_limited", "relaunch", BACKOFF["rate_limited"]),
    ("codex", fixture("codex", "usage_limit"), "usage_limit", "park", BACKOFF["usage_limit"]),
    # the same without a reset time (a usage_limit_reached body without resets_at)
    ("codex", msg(1, stdout=codex_failed(
        "You’ve hit your usage limit. Upgrade to Pro (https://chatgpt.com/explore/pro), visit "
        "https://chatgpt.com/settings/usage to purchase more credits or try again later.")),
     "usage_limit", "park", BACKOFF["usage_limit"]),
    ("codex", fixture("codex", "http_503"), "overloaded", "relaunch", BACKOFF["overloaded"]),
    ("codex", fixture("codex", "http_500"), "server_error", "relaunch", BACKOFF["server_error"]),
    ("codex", fixture("codex", "connection_refused"), "network", "relaunch", BACKOFF["network"]),
    # agent-clis.md: no network; codex retries "Reconnecting... n/5" and never exits
    ("codex", msg(None, stdout=[j({"type": "error", "message": "Reconnecting... 2/5 (stream disconnected before "
                                   "completion: failed to lookup address information: Name does not resolve)"})]),
     "network", "relaunch", BACKOFF["network"]),
    ("codex", fixture("codex", "not_git"), "not_git_repo", "relaunch", {"flag": "--skip-git-repo-check"}),
    ("codex", fixture("codex", "unknown_flag"), "bad_flag", "relaunch", bad_flag("--output-schema", "0.169.0")),
    ("codex", msg(1, ["Error: thread/resume: thread/resume failed: no rollout found for thread id 0199a213 "
                      "(code -32600)"]), "resume_not_found", "relaunch", {"resume_id": ""}),
    ("codex", msg(1, stdout=codex_failed("bwrap: setting up uid map: Operation not permitted"))
     , "sandbox_unavailable", "escalate", None),
    ("codex", msg(-9), "crashed", "relaunch", None),
    # ---------------------------------------------------------------- gemini
    ("gemini", fixture("gemini", "no_credentials"), "not_logged_in", "escalate", None),
    ("gemini", fixture("gemini", "http_400_key"), "auth_invalid", "escalate", None),
    ("gemini", fixture("gemini", "http_401"), "auth_invalid", "escalate", None),
    ("gemini", fixture("gemini", "http_403"), "auth_invalid", "escalate", None),
    ("gemini", fixture("gemini", "usage_limit"), "usage_limit", "park", BACKOFF["usage_limit"]),
    # RESOURCE_EXHAUSTED that names a quota and a retryDelay: a usage limit, not a rate limit
    ("gemini", msg(1, ['[API Error: {"error":{"code":429,"message":"Quota exceeded for quota metric '
                       '\'Generate Content API requests per minute\'","status":"RESOURCE_EXHAUSTED",'
                       '"details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"41s"}]}}]']),
     "usage_limit", "park", BACKOFF["usage_limit"]),
    ("gemini", fixture("gemini", "http_429"), "rate_limited", "relaunch", BACKOFF["rate_limited"]),
    ("gemini", fixture("gemini", "http_503"), "overloaded", "relaunch", BACKOFF["overloaded"]),
    ("gemini", fixture("gemini", "http_500"), "server_error", "relaunch", BACKOFF["server_error"]),
    ("gemini", fixture("gemini", "connection_refused"), "network", "relaunch", BACKOFF["network"]),
    ("gemini", fixture("gemini", "untrusted"), "untrusted_folder", "relaunch",
     {"env.GEMINI_CLI_TRUST_WORKSPACE": "true"}),
    ("gemini", fixture("gemini", "unknown_flag"), "bad_flag", "relaunch", bad_flag("--skip-trust", "0.61.0")),
    ("gemini", msg(42, ["Error resuming session: No previous sessions found for this project."]),
     "resume_not_found", "relaunch", {"resume_id": ""}),
    ("gemini", msg(None), "crashed", "relaunch", None),
]


def _id(row) -> str:
    return f"{row[0]}-{row[2]}"


def classify(cli: str, run):
    exit_code, stderr, stdout = run
    events = feed_stream(cli, "".join(f"{line}\n" for line in stdout).encode(), exit_code)
    return get_adapter(cli).classify(exit_code, stderr, events)


@pytest.mark.parametrize("cli, run, code, action, fix", ROWS, ids=[_id(r) for r in ROWS])
def test_entry(cli, run, code, action, fix):
    failure = classify(cli, run)
    assert failure is not None
    assert (failure.code, failure.action, failure.fix) == (code, action, fix), failure
    assert failure.message and action in ACTIONS


@pytest.mark.parametrize("cli", ["claude", "codex", "gemini"])
def test_every_entry_is_covered(cli):
    """A catalogue entry without a row here is untested: add its real message."""
    covered = {r[2] for r in ROWS if r[0] == cli}
    assert {rule.code for rule in get_adapter(cli).rules} <= covered


def test_every_entry_is_documented():
    text = DOCS.read_text(encoding="utf-8")
    for cli in ("claude", "codex", "gemini"):
        for rule in get_adapter(cli).rules:
            assert f"`{rule.code}`" in text, f"{cli} {rule.code} is not in docs/recovery.md"


@pytest.mark.parametrize("cli, case", [("codex", "usage_limit"), ("gemini", "usage_limit")])
def test_a_usage_limit_message_carries_its_reset_time(cli, case):
    """The recovery actor reads the reset from the message: gemini's headline
    has none, so the stderr line that has it ("Please retry in 41.2s") is added."""
    failure = classify(cli, fixture(cli, case))
    assert failure.code == "usage_limit"
    assert reset_at(failure.message, NOW) is not None, failure.message


def test_a_usage_limit_wins_over_a_rate_limit_and_auth():
    # claude's usage-limit result also says 429; codex's says nothing of a status
    f = classify("claude", msg(1, stdout=claude_result("Claude AI usage limit reached|1750176000", 429)))
    assert f.code == "usage_limit" and reset_at(f.message, NOW) == datetime(2025, 6, 17, 16, 0, tzinfo=timezone.utc)


def test_fallback_launches_leave_out_the_optional_flags():
    base = dict(prompt="p", cwd="/w", profile="yolo", max_turns=5, output_schema_file="/s.json")
    for cli, flag in (("claude", "--max-turns"), ("codex", "--output-schema"), ("gemini", "--skip-trust")):
        adapter = get_adapter(cli)
        normal = adapter.build_launch(RunSpec(**base))
        fallback = adapter.build_launch(RunSpec(**base, fallback=True))
        assert flag in normal.argv and flag not in fallback.argv, cli
        assert adapter.fallback_flags == (flag,)
    gem = get_adapter("gemini").build_launch(RunSpec(**base, fallback=True))
    assert gem.env["GEMINI_CLI_TRUST_WORKSPACE"] == "true"


def test_a_failure_names_the_line_its_message_was_read_from():
    # a stderr line keeps its raw form (colours and all) in the source; the message is the clean text
    f = classify("claude", msg(1, ["\x1b[33mwarning: something\x1b[0m", "\x1b[31mError: Invalid API key\x1b[0m"]))
    assert (f.code, f.message) == ("auth_invalid", "Error: Invalid API key")
    assert f.source == "stderr: \x1b[31mError: Invalid API key\x1b[0m"
    # an error event of the stream
    g = classify("codex", msg(1, stdout=codex_failed("unexpected status 401 Unauthorized")))
    assert g.code == "auth_invalid" and g.source == f"agent error: {g.message}"
    # nothing matched but the exit code: the source says so
    h = classify("gemini", msg(None))
    assert h.code == "crashed" and h.source == ""
