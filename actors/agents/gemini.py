"""Google Gemini CLI 0.61.0 adapter: argv per profile, the stream-json
parser, and the error catalogue (agent-clis.md §2, §3, §5, §7).

Stream mapping (``-o stream-json``)
-----------------------------------
* ``init`` -> agent.session(session_id, model)
* assistant ``message`` with ``delta: true`` -> consecutive deltas are
  joined into ONE agent.text, flushed by the next non-delta event or by
  ``finish`` (a message without ``delta`` is a whole message of its own).
  User messages (the prompt echo) are ignored.
* ``tool_use`` -> agent.tool_call(tool_id, tool_name, parameters)
* ``tool_result`` -> agent.tool_result(ok = status == "success",
  output = ``output``, or ``error.message`` on failure)
* ``error`` -> agent.error(fatal=False): the ``result`` decides the run
* ``result`` -> agent.usage(stats.input_tokens, stats.output_tokens, cost
  None; input includes cached), agent.error(fatal) when status is not
  success, agent.result(ok = status == "success", text = the run's
  assistant messages joined with "\\n").

``-o json`` object on stdout (``{session_id, response, stats}`` or
``{session_id, error}``) is understood too: session, text, usage summed
over ``stats.models``, result.  Everything else is agent.unknown.
"""

from __future__ import annotations

from typing import Any

import msgspec

from orchd.protocol import (
    AgentError, AgentResult, AgentSession, AgentText, AgentToolCall,
    AgentToolResult, AgentUsage, Ev,
)

from .base import (
    MAX_TEXT_CHARS, PROVIDER_RULES, RESUME_FIX, USAGE_LIMIT, CliAdapter, Launch, Rule, RunSpec,
    StreamParser, bad_flag_fix, base_env, cap_tail, check_profile, load,
)


class _Init(msgspec.Struct):
    session_id: str
    model: str | None = None


class _Message(msgspec.Struct):
    role: str
    content: str | None = None
    delta: bool | None = None


class _ToolUse(msgspec.Struct):
    tool_id: str
    tool_name: str
    parameters: Any = None


class _Error(msgspec.Struct):
    message: str = ""
    type: str | None = None
    code: int | None = None


class _ToolResult(msgspec.Struct):
    tool_id: str
    status: str
    output: Any = None
    error: _Error | None = None


class _Stats(msgspec.Struct):
    input_tokens: int = 0
    output_tokens: int = 0


class _Result(msgspec.Struct):
    status: str
    error: _Error | None = None
    stats: _Stats | None = None


class _ErrorEvent(msgspec.Struct):
    message: str


class _ModelTokens(msgspec.Struct):
    prompt: int = 0
    candidates: int = 0


class _ModelStats(msgspec.Struct):
    tokens: _ModelTokens = msgspec.field(default_factory=_ModelTokens)


class _JsonStats(msgspec.Struct):
    models: dict[str, _ModelStats] = {}


class _JsonOutput(msgspec.Struct):
    """``gemini -o json``: the whole run as one object."""

    session_id: str | None = None
    response: str | None = None
    stats: _JsonStats | None = None
    error: _Error | None = None


class GeminiParser(StreamParser):
    def __init__(self) -> None:
        super().__init__()
        self._pending: list[str] = []   # deltas of the message being joined
        self._pending_len = 0
        self._run_text = ""             # every flushed message, "\n"-joined

    def _flush(self) -> list[Ev]:
        if not self._pending:
            return []
        return [self._emit_text("".join(self._pending))]

    def _emit_text(self, text: str) -> AgentText:
        self._pending, self._pending_len = [], 0
        self.last_text = text
        self._run_text = cap_tail(f"{self._run_text}\n{text}" if self._run_text else text)
        return AgentText(text=text)

    def _on_object(self, obj: dict[str, Any]) -> list[Ev] | None:
        typ = obj.get("type")
        if typ is not None and not isinstance(typ, str):
            return None
        if typ == "message":
            return self._on_message(load(obj, _Message))
        if typ == "init":
            init = load(obj, _Init)
            return self._flush() + [AgentSession(agent_session_id=init.session_id,
                                                 model=init.model)]
        if typ == "tool_use":
            t = load(obj, _ToolUse)
            return self._flush() + [AgentToolCall(call_id=t.tool_id, tool=t.tool_name,
                                                  input=t.parameters)]
        if typ == "tool_result":
            r = load(obj, _ToolResult)
            ok = r.status == "success"
            output = r.output if ok or r.error is None else r.error.message
            return self._flush() + [AgentToolResult(call_id=r.tool_id, ok=ok, output=output)]
        if typ == "error":
            return self._flush() + [AgentError(message=load(obj, _ErrorEvent).message,
                                               fatal=False)]
        if typ == "result":
            return self._on_result(load(obj, _Result))
        if typ is None and ("response" in obj or "error" in obj):
            return self._on_json_output(load(obj, _JsonOutput))
        return None

    def _on_message(self, m: _Message) -> list[Ev]:
        if m.role != "assistant":
            return []
        content = m.content or ""
        if not m.delta:
            out = self._flush()
            return out + [self._emit_text(content)] if content else out
        out: list[Ev] = []
        if self._pending_len + len(content) > MAX_TEXT_CHARS:
            # bounded state: a runaway message is cut into several texts
            out = self._flush()
        self._pending.append(content)
        self._pending_len += len(content)
        return out

    def _on_result(self, r: _Result) -> list[Ev]:
        out = self._flush()
        if r.stats is not None:
            out.append(AgentUsage(input_tokens=r.stats.input_tokens,
                                  output_tokens=r.stats.output_tokens, cost_usd=None))
        ok = r.status == "success"
        if not ok:
            message = ((r.error.message if r.error else "")
                       or f"gemini run ended with status {r.status}")
            out.append(AgentError(message=message, fatal=True))
        out.append(AgentResult(ok=ok, text=self._run_text))
        return out

    def _on_json_output(self, j: _JsonOutput) -> list[Ev]:
        out = self._flush()
        if j.session_id:
            out.append(AgentSession(agent_session_id=j.session_id, model=None))
        if j.response:
            out.append(self._emit_text(j.response))
        if j.stats is not None:
            ms = j.stats.models.values()
            out.append(AgentUsage(input_tokens=sum(m.tokens.prompt for m in ms),
                                  output_tokens=sum(m.tokens.candidates for m in ms),
                                  cost_usd=None))
        if j.error is not None:
            out.append(AgentError(message=j.error.message or "gemini reported an error",
                                  fatal=True))
        out.append(AgentResult(ok=j.error is None, text=self._run_text))
        return out

    def _on_finish(self, exit_code: int | None) -> list[Ev]:
        out = self._flush()
        # the result, when invented by finish, carries the whole run's text
        self.last_text = self._run_text
        return out


TRUST_ENV = "GEMINI_CLI_TRUST_WORKSPACE"
"""gemini 0.61 trusts the folder when this is "true" (agent-clis.md §2), the
same as ``--skip-trust``: the fallback launch uses it instead of the flag."""

FALLBACK_FLAGS = ("--skip-trust",)

RULES = (
    Rule("untrusted_folder", r"not running in a trusted directory", "relaunch",
         {f"env.{TRUST_ENV}": "true"}, exit_codes=(55,),
         cause="the folder is not trusted: gemini refuses to run headless (exit 55)"),
    Rule("not_logged_in", r"Please set an Auth method|Invalid auth method selected",
         exit_codes=(41,),
         cause="no auth method: log in to gemini (run `gemini` once) or set GEMINI_API_KEY"),
    USAGE_LIMIT,
    Rule("auth_invalid", r"API key not valid|API_KEY_INVALID|\b401\b|\b403\b|PERMISSION_DENIED"
                         r"|UNAUTHENTICATED",
         cause="the key or login was rejected (HTTP 401, 403, or 400 API_KEY_INVALID): fix the key"),
    Rule("resume_not_found", r"Error resuming session", "relaunch", RESUME_FIX, exit_codes=(42,),
         cause="there is no session to resume in this HOME"),
    Rule("bad_flag", r"Unknown arguments?:|Invalid values:|Not enough arguments",
         "relaunch", bad_flag_fix(FALLBACK_FLAGS, "0.61.0"),
         cause="the CLI refused a flag: it is not the tested version"),
    Rule("rate_limited", r"Attempt \d+ failed with status 429", "relaunch", {"backoff_s": "60"},
         cause="gemini's own retries of a 429 (HTTP 429)"),
    Rule("overloaded", r"Attempt \d+ failed with status 5(?:03|29)", "relaunch", {"backoff_s": "30"},
         cause="gemini's own retries of a 503"),
    *PROVIDER_RULES,
)


NOISE = (r"^Warning: 256-color support|^YOLO mode is enabled|^Ripgrep is not available"
         r"|^\[STARTUP\]")


class GeminiAdapter(CliAdapter):
    parser_class = GeminiParser
    rules = RULES
    noise = NOISE
    name = "gemini"
    tested_version: str | None = "0.61.0"
    fallback_flags = FALLBACK_FLAGS

    def build_launch(self, spec: RunSpec) -> Launch:
        """``--skip-trust`` always (the fallback launch sets
        GEMINI_CLI_TRUST_WORKSPACE=true instead): without it yolo is
        downgraded and, with a key set, the run exits 55 in an untrusted folder.  The prompt is
        passed as ``--prompt=TEXT`` so a prompt starting with "-" stays a
        value for yargs."""
        check_profile(spec)
        argv = [spec.binary or self.name, f"--prompt={spec.prompt}", "--output-format", "stream-json"]
        env = base_env(spec, "GEMINI_CLI_HOME")
        if spec.fallback:
            env.setdefault(TRUST_ENV, "true")
        else:
            argv += ["--skip-trust"]
        if spec.profile == "workspace":
            argv += ["--approval-mode", "auto_edit"]
        elif spec.profile == "readonly":
            argv += ["--approval-mode", "default"]
        else:
            argv += ["--yolo"]
        if spec.model:
            argv += ["-m", spec.model]
        if spec.resume_id:
            argv += ["--resume", spec.resume_id]
        return Launch(argv=argv, env=env, cwd=spec.cwd, confined=spec.profile != "yolo")

    def check_stderr(self, line: str) -> str | None:
        # gemini's confinement is which tools it offers; a downgrade
        # ("Approval mode overridden to default") only narrows them.
        return None
