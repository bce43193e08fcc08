"""Claude Code 2.1.197 adapter: argv per profile, the stream-json parser,
and the error catalogue (agent-clis.md §2, §3, §5, §7).

Stream mapping (``-p --output-format stream-json --verbose``)
------------------------------------------------------------
* ``system/init`` -> agent.session(session_id, model)
* ``assistant`` text block -> agent.text (one per block); ``tool_use`` block
  -> agent.tool_call.  Text of a subagent (``parent_tool_use_id`` set) is
  not the agent's own message, so it is dropped; its tool calls are kept.
  A client-side failure arrives as a ``<synthetic>`` assistant message with
  a top-level ``error``: its text becomes a non-fatal agent.error, not
  agent.text (the result line repeats it as the fatal error).
* ``user`` tool_result block -> agent.tool_result(ok = not is_error)
* ``system/api_retry`` -> agent.error(fatal=False)
* ``result`` -> agent.usage, agent.error(fatal) when ``is_error``, then
  agent.result(ok = not is_error).  ``subtype`` is not trusted: auth and
  API failures say ``subtype:"success", is_error:true``.  A ``result``
  without ``is_error`` (trimmed by hand, or an older CLI) is still the
  result, judged by what it has: an ``error_*`` subtype or a non-empty
  ``errors[]`` fails it, anything else (``success``, only a ``result``
  text, nothing at all) is ok.  That verdict is a guess the event cannot
  mark, so it is kept as close to the CLI's own fields as possible; its
  cost and text are kept as for any result.

Usage: ``input_tokens`` includes the cache tokens (creation and read), so
it counts every prompt token the model processed, like codex's and
gemini's ``input_tokens`` (which include their cached tokens).

Ignored quietly (known noise): ``stream_event`` (raw SSE, only with
--include-partial-messages), ``rate_limit_event``, ``system`` subtypes
``status``, ``hook_*``, ``compact_boundary``, and user messages that are
not tool results.  Any other line is agent.unknown.
"""

from __future__ import annotations

import json
import re
from typing import Any

import msgspec

from orchd.protocol import (
    AgentError, AgentResult, AgentSession, AgentText, AgentToolCall,
    AgentToolResult, AgentUsage, Ev,
)

from .base import (
    PROVIDER_RULES, RESUME_FIX, USAGE_LIMIT, CliAdapter, Launch, Rule, RunSpec, StreamParser,
    bad_flag_fix, base_env, check_profile, load, strip_ansi,
)

MAX_RETRIES = "2"
"""CLAUDE_CODE_MAX_RETRIES: the default retries took over 60 s offline;
two keeps a transient 529 survivable and a dead network quick to report."""

_QUIET_TYPES = frozenset({"stream_event", "rate_limit_event"})
_QUIET_SYSTEM = frozenset({"status", "compact_boundary"})


# --- native schema (only the fields we read; unknown fields are ignored)

class _Init(msgspec.Struct):
    session_id: str
    model: str | None = None


class _Retry(msgspec.Struct):
    attempt: int | None = None
    max_retries: int | None = None
    error_status: int | None = None
    error: Any = None


class _Message(msgspec.Struct):
    content: list[dict[str, Any]] | str = []


class _Envelope(msgspec.Struct):
    message: _Message
    parent_tool_use_id: str | None = None
    error: str | None = None


class _Text(msgspec.Struct):
    text: str


class _ToolUse(msgspec.Struct):
    id: str
    name: str
    input: Any = None


class _ToolResult(msgspec.Struct):
    tool_use_id: str
    content: Any = None
    is_error: bool | None = None


class _Usage(msgspec.Struct):
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None


class _Result(msgspec.Struct):
    is_error: bool | None = None      # absent in hand-trimmed transcripts
    subtype: str | None = None
    result: str | None = None
    usage: _Usage | None = None
    total_cost_usd: float | None = None
    errors: list[Any] | None = None


def _tool_output(content: Any) -> Any:
    """A tool_result's content: a string, or a list of blocks.  A list of
    text blocks is joined into one string (what the model saw); anything
    else (images...) is passed through as is."""
    if isinstance(content, list) and content and all(
            isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str)
            for b in content):
        return "\n".join(b["text"] for b in content)
    return content


class ClaudeParser(StreamParser):
    def _on_object(self, obj: dict[str, Any]) -> list[Ev] | None:
        typ = obj.get("type")
        if not isinstance(typ, str):  # also keeps unhashable values out of the set lookups
            return None
        if typ == "system":
            return self._on_system(obj)
        if typ == "assistant":
            return self._on_assistant(load(obj, _Envelope))
        if typ == "user":
            return self._on_user(load(obj, _Envelope))
        if typ == "result":
            return self._on_result(load(obj, _Result))
        if typ in _QUIET_TYPES:
            return []
        return None

    def _on_system(self, obj: dict[str, Any]) -> list[Ev] | None:
        sub = obj.get("subtype")
        if not isinstance(sub, str):
            return None
        if sub == "init":
            init = load(obj, _Init)
            return [AgentSession(agent_session_id=init.session_id, model=init.model)]
        if sub == "api_retry":
            r = load(obj, _Retry)
            err = r.error if isinstance(r.error, str) else json.dumps(r.error)
            status = f" (HTTP {r.error_status})" if r.error_status is not None else ""
            return [AgentError(message=f"API retry {r.attempt}/{r.max_retries}{status}: {err}",
                               fatal=False)]
        if sub in _QUIET_SYSTEM or sub.startswith("hook_"):
            return []
        return None

    def _on_assistant(self, msg: _Envelope) -> list[Ev]:
        blocks = msg.message.content if isinstance(msg.message.content, list) else []
        # Validate every block before emitting any, so a bad block turns
        # the whole line into agent.unknown rather than half of it.
        parsed: list[Any] = []
        for b in blocks:
            if b.get("type") == "text":
                parsed.append(load(b, _Text))
            elif b.get("type") == "tool_use":
                parsed.append(load(b, _ToolUse))
        out: list[Ev] = []
        for p in parsed:
            if isinstance(p, _ToolUse):
                out.append(AgentToolCall(call_id=p.id, tool=p.name, input=p.input))
            elif msg.error is not None:
                out.append(AgentError(message=p.text, fatal=False))
            elif msg.parent_tool_use_id is None and p.text:
                self.last_text = p.text
                out.append(AgentText(text=p.text))
        return out

    def _on_user(self, msg: _Envelope) -> list[Ev]:
        blocks = msg.message.content if isinstance(msg.message.content, list) else []
        results = [load(b, _ToolResult) for b in blocks if b.get("type") == "tool_result"]
        return [AgentToolResult(call_id=r.tool_use_id, ok=not r.is_error,
                                output=_tool_output(r.content)) for r in results]

    def _on_result(self, r: _Result) -> list[Ev]:
        u = r.usage or _Usage()
        tokens_in = sum(x or 0 for x in (u.input_tokens, u.cache_creation_input_tokens,
                                         u.cache_read_input_tokens))
        out: list[Ev] = [AgentUsage(input_tokens=tokens_in, output_tokens=u.output_tokens or 0,
                                    cost_usd=r.total_cost_usd)]
        text = r.result or ""
        failed = r.is_error
        if failed is None:
            failed = (r.subtype is not None and r.subtype != "success") or bool(r.errors)
        if failed:
            # error_max_turns and friends carry no `result`, only errors[].
            reasons = [e if isinstance(e, str) else json.dumps(e) for e in r.errors or ()]
            message = text or "; ".join(reasons) or r.subtype or "claude reported an error"
            out.append(AgentError(message=message, fatal=True))
        out.append(AgentResult(ok=not failed, text=text))
        return out


# --- launch, catalogue

_SANDBOX_DISABLED = re.compile(
    r"Sandbox disabled:?\s*(.*)|(Commands will run WITHOUT sandboxing.*)")

FALLBACK_FLAGS = ("--max-turns",)
"""What the fallback launch leaves out: the worker counts turns itself
(limits.max_turns), so the run stays bounded without the flag."""

RULES = (
    Rule("root_refused", r"cannot be used with root/sudo privileges", "relaunch",
         {"env.IS_SANDBOX": "1"}, cause="as root, skip-permissions is refused unless IS_SANDBOX=1"),
    Rule("not_logged_in", r"Not logged in|Please run /login",
         cause="no API key and no login: log in to claude (`claude` then /login) or set ANTHROPIC_API_KEY"),
    Rule("resume_not_found", r"No conversation found with session ID", "relaunch", RESUME_FIX,
         cause="the session to resume is gone (another HOME, deleted)"),
    Rule("max_turns", r"Reached maximum number of turns|error_max_turns",
         cause="the run used every turn --max-turns allows"),
    Rule("max_budget", r"error_max_budget_usd|maximum budget", cause="the run hit its budget"),
    USAGE_LIMIT,
    Rule("auth_invalid", r"Invalid API key|authentication_failed|Failed to authenticate|\b401\b|\b403\b"
                         r"|invalid x-api-key|permission_error|OAuth token (?:has )?(?:expired|revoked)",
         cause="the key or login was rejected (HTTP 401, 403): log in to claude again or fix the key"),
    Rule("sandbox_unavailable", r"Sandbox disabled|sandbox.{0,40}(unavailable|not available)",
         cause="bubblewrap or socat is missing: the workspace sandbox cannot start (install them, "
               "or allow_unconfined = true to run without it)"),
    Rule("needs_verbose", r"stream-json requires --verbose", "relaunch", {"flag": "--verbose"},
         cause="stream-json output needs --verbose"),
    Rule("bad_flag", r"unknown option|argument '.*' is invalid"
                     r"|error: option|error: missing required argument",
         "relaunch", bad_flag_fix(FALLBACK_FLAGS, "2.1.197"),
         cause="the CLI refused a flag: it is not the tested version"),
    *PROVIDER_RULES,
)


def _sandbox_settings(spec: RunSpec) -> str:
    sandbox: dict[str, Any] = {"enabled": True, "autoAllowBashIfSandboxed": True,
                               # without this the model may retry a blocked
                               # command with dangerouslyDisableSandbox
                               "allowUnsandboxedCommands": False}
    if not spec.allow_unconfined:
        # missing bubblewrap/socat: refuse to start instead of warning on
        # stderr and running every command unconfined
        sandbox["failIfUnavailable"] = True
    return json.dumps({"sandbox": sandbox}, separators=(",", ":"))


class ClaudeAdapter(CliAdapter):
    parser_class = ClaudeParser
    rules = RULES
    """``allow_unconfined`` (workspace profile only): when False the sandbox
    settings carry ``failIfUnavailable`` so claude refuses to run without
    bubblewrap/socat; when True it warns ("Sandbox disabled: ...", caught
    by ``check_stderr``) and runs on unconfined."""

    name = "claude"
    tested_version: str | None = "2.1.197"
    fallback_flags = FALLBACK_FLAGS

    def build_launch(self, spec: RunSpec) -> Launch:
        check_profile(spec)
        argv = [spec.binary or self.name, "-p", "--output-format", "stream-json", "--verbose"]
        env = base_env(spec, "CLAUDE_CONFIG_DIR", {"CLAUDE_CODE_MAX_RETRIES": MAX_RETRIES})
        if spec.profile == "workspace":
            argv += ["--permission-mode", "acceptEdits", "--settings", _sandbox_settings(spec)]
        elif spec.profile == "readonly":
            argv += ["--permission-mode", "default"]
        else:
            argv += ["--dangerously-skip-permissions"]
            env["IS_SANDBOX"] = "1"  # as root the flag is refused without it
        if spec.max_turns is not None and not spec.fallback:
            argv += ["--max-turns", str(spec.max_turns)]
        if spec.model:
            argv += ["--model", spec.model]
        if spec.resume_id:
            argv += ["--resume", spec.resume_id]
        # "--" so a prompt starting with "-" is not read as an option
        argv += ["--", spec.prompt]
        return Launch(argv=argv, env=env, cwd=spec.cwd, confined=spec.profile != "yolo")

    def check_stderr(self, line: str) -> str | None:
        m = _SANDBOX_DISABLED.search(strip_ansi(line))
        if m is None:
            return None
        return (m.group(1) or m.group(2) or "sandbox disabled").strip()
