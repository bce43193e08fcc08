"""OpenAI Codex CLI 0.169.0 adapter: ``codex exec --json`` argv per profile,
the JSONL parser, and the error catalogue (agent-clis.md §2, §3, §5, §7).

Stream mapping
--------------
* ``thread.started`` -> agent.session(thread_id, model None)
* ``item.completed`` ``agent_message`` -> agent.text (the last is the answer)
* ``command_execution`` -> agent.tool_call("shell", {command}) on
  ``item.started`` (or on completion if it never started), then
  agent.tool_result(ok = exit_code == 0, output = aggregated_output)
* ``file_change`` -> agent.tool_call("file_change", {changes}) and
  agent.tool_result(ok = status == "completed", output = changes)
* ``mcp_tool_call`` -> agent.tool_call("mcp:SERVER/TOOL", arguments) and
  agent.tool_result(ok = no error and status != "failed", output = result
  or error message)
* ``web_search`` -> agent.tool_call("web_search", {query}) + an ok result
* item ``error`` -> agent.error(fatal=False) (e.g. unknown model metadata)
* ``turn.completed`` -> agent.usage.  Codex reports totals for the *thread*,
  so after ``exec resume`` they include the earlier runs: treat each usage
  event as the latest total, never add them up.  ``input_tokens`` already
  includes ``cached_input_tokens``; no cost is reported (cost_usd None).
* ``error`` -> agent.error; fatal unless it is a retry notice
  ("Reconnecting... 1/5", "Falling back from WebSockets...", "stream
  error: ...; retrying 1/5 in 200ms")
* ``turn.failed`` -> agent.error(fatal) (skipped when the preceding ``error``
  said the same) + agent.result(ok=False, text = last agent_message)

How a run ends: codex sends ``turn.completed`` only when the turn had no
fatal error (it sends ``turn.failed`` instead), so a ``turn.completed``
with no ``turn.failed`` is a successful run, exit code or not (``orchctl
parse`` has none).  Its agent.result waits for ``finish``: only the exit
code can overrule it (a crash or non-zero exit after ``turn.completed``
fails the run).  A stream that ends with neither is judged as for every
CLI: a success only with exit code 0 and no fatal error (so a stream cut
off mid-turn, with no exit code, is not a success).

Ignored quietly: ``turn.started``, ``item.updated``, and items of type
``reasoning`` and ``todo_list``.  Other lines are agent.unknown.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from orchd.protocol import (
    AgentError, AgentResult, AgentSession, AgentText, AgentToolCall,
    AgentToolResult, AgentUsage, Ev,
)

from .base import (
    PROVIDER_RULES, RESUME_FIX, USAGE_LIMIT, CliAdapter, Launch, Rule, RunSpec, StreamParser,
    bad_flag_fix, base_env, check_profile, load,
)

MAX_OPEN_CALLS = 4096
"""Bound on remembered started-but-not-completed items (bounded state)."""

_QUIET_TYPES = frozenset({"turn.started", "item.updated"})
_QUIET_ITEMS = frozenset({"reasoning", "todo_list"})
_NOTICE = re.compile(r"^(Reconnecting\.\.\.|Falling back from WebSockets|retrying\b)"
                     r"|; retrying \d+/\d+", re.I)


class _Thread(msgspec.Struct):
    thread_id: str


class _Item(msgspec.Struct):
    id: str
    type: str


class _Message(msgspec.Struct):
    text: str


class _Command(msgspec.Struct):
    command: str = ""
    aggregated_output: str = ""
    exit_code: int | None = None
    status: str = ""


class _FileChange(msgspec.Struct):
    changes: list[Any] = []
    status: str = ""


class _McpError(msgspec.Struct):
    message: str = ""


class _Mcp(msgspec.Struct):
    server: str = ""
    tool: str = ""
    arguments: Any = None
    result: Any = None
    error: _McpError | None = None
    status: str = ""


class _Search(msgspec.Struct):
    query: str = ""


class _ItemError(msgspec.Struct):
    message: str


class _ItemEvent(msgspec.Struct):
    item: dict[str, Any]


class _Usage(msgspec.Struct):
    input_tokens: int = 0
    output_tokens: int = 0


class _Turn(msgspec.Struct):
    usage: _Usage


class _Err(msgspec.Struct):
    message: str


class _TurnFailed(msgspec.Struct):
    error: _Err


class CodexParser(StreamParser):
    def __init__(self) -> None:
        super().__init__()
        self._open: dict[str, None] = {}  # ordered set of started item ids
        self._last_error = ""
        self._turn_completed = False

    def _on_object(self, obj: dict[str, Any]) -> list[Ev] | None:
        typ = obj.get("type")
        if not isinstance(typ, str):  # also keeps unhashable values out of the set lookups
            return None
        if typ == "thread.started":
            return [AgentSession(agent_session_id=load(obj, _Thread).thread_id, model=None)]
        if typ in ("item.started", "item.completed"):
            raw = load(obj, _ItemEvent).item
            return self._on_item(load(raw, _Item), raw, typ == "item.completed")
        if typ == "turn.completed":
            u = load(obj, _Turn).usage
            self._turn_completed = True
            return [AgentUsage(input_tokens=u.input_tokens, output_tokens=u.output_tokens,
                               cost_usd=None)]
        if typ == "error":
            message = load(obj, _Err).message
            fatal = _NOTICE.search(message) is None
            if fatal:
                self._last_error = message
            return [AgentError(message=message, fatal=fatal)]
        if typ == "turn.failed":
            message = load(obj, _TurnFailed).error.message
            out: list[Ev] = []
            if message != self._last_error:
                out.append(AgentError(message=message, fatal=True))
            out.append(AgentResult(ok=False, text=self.last_text))
            return out
        if typ in _QUIET_TYPES:
            return []
        return None

    def _on_finish(self, exit_code: int | None) -> list[Ev]:
        if self.result_sent:  # turn.failed already closed the run
            return []
        self.result_sent = True
        if self._turn_completed:
            ok = exit_code in (None, 0)
        else:
            ok = exit_code == 0 and not self.fatal_seen
        return [AgentResult(ok=ok, text=self.last_text)]

    def _call(self, item_id: str, completed: bool, tool: str, input: Any) -> list[Ev]:
        """The tool_call for an item, once: on start, or on completion when
        codex never announced the start."""
        if not completed:
            if len(self._open) >= MAX_OPEN_CALLS:
                del self._open[next(iter(self._open))]
            self._open[item_id] = None
            return [AgentToolCall(call_id=item_id, tool=tool, input=input)]
        if item_id in self._open:
            del self._open[item_id]
            return []
        return [AgentToolCall(call_id=item_id, tool=tool, input=input)]

    def _on_item(self, item: _Item, raw: dict[str, Any], completed: bool) -> list[Ev] | None:
        kind, iid = item.type, item.id
        if kind == "agent_message":
            if not completed:
                return []
            text = load(raw, _Message).text
            self.last_text = text
            return [AgentText(text=text)]
        if kind == "command_execution":
            c = load(raw, _Command)
            out = self._call(iid, completed, "shell", {"command": c.command})
            if completed:
                out.append(AgentToolResult(call_id=iid, ok=c.exit_code == 0,
                                           output=c.aggregated_output))
            return out
        if kind == "file_change":
            f = load(raw, _FileChange)
            out = self._call(iid, completed, "file_change", {"changes": f.changes})
            if completed:
                out.append(AgentToolResult(call_id=iid, ok=f.status == "completed",
                                           output=f.changes))
            return out
        if kind == "mcp_tool_call":
            m = load(raw, _Mcp)
            out = self._call(iid, completed, f"mcp:{m.server}/{m.tool}", m.arguments)
            if completed:
                ok = m.error is None and m.status != "failed"
                out.append(AgentToolResult(call_id=iid, ok=ok,
                                           output=m.result if m.error is None else m.error.message))
            return out
        if kind == "web_search":
            q = load(raw, _Search)
            out = self._call(iid, completed, "web_search", {"query": q.query})
            if completed:
                out.append(AgentToolResult(call_id=iid, ok=True, output=None))
            return out
        if kind == "error":
            if not completed:
                return []
            return [AgentError(message=load(raw, _ItemError).message, fatal=False)]
        if kind in _QUIET_ITEMS:
            return []
        return None


FALLBACK_FLAGS = ("--output-schema",)
"""What the fallback launch leaves out: a reviewer's answer schema is also
in its prompt, and the answer is validated by orchd."""

RULES = (
    Rule("not_git_repo", r"Not inside a trusted directory", "relaunch",
         {"flag": "--skip-git-repo-check"},
         cause="the directory is not a git repository and --skip-git-repo-check was not given"),
    Rule("not_logged_in", r"Missing environment variable|Not logged in|codex login",
         cause="no API key and no login: log in to codex (`codex login`) or set OPENAI_API_KEY"),
    Rule("resume_not_found", r"no rollout found|thread/resume failed", "relaunch", RESUME_FIX,
         cause="the thread to resume is gone (another CODEX_HOME, deleted)"),
    USAGE_LIMIT,
    Rule("auth_invalid", r"\b401\b|\b403\b|Unauthorized|Forbidden|Incorrect API key|invalid.api.key"
                         r"|insufficient permissions",
         cause="the key or login was rejected (HTTP 401, 403): log in to codex again or fix the key"),
    Rule("bad_flag", r"unexpected argument|invalid value '.*' for|unrecognized subcommand"
                     r"|error: .*required arguments were not provided",
         "relaunch", bad_flag_fix(FALLBACK_FLAGS, "0.169.0"),
         cause="the CLI refused a flag: it is not the tested version"),
    Rule("sandbox_unavailable", r"bwrap: .*(Operation not permitted|namespace)"
                                r"|sandbox.{0,40}(unavailable|not available|not supported)",
         cause="codex's bubblewrap sandbox cannot start here (user namespaces off)"),
    *PROVIDER_RULES,
)


NOISE = r"^Reading additional input from stdin|^WARNING: proceeding, even though"


class CodexAdapter(CliAdapter):
    parser_class = CodexParser
    rules = RULES
    noise = NOISE
    name = "codex"
    tested_version: str | None = "0.169.0"
    fallback_flags = FALLBACK_FLAGS

    def build_launch(self, spec: RunSpec) -> Launch:
        """``codex exec [OPTIONS] [resume ID] -- PROMPT``.

        For resume every option goes before the ``resume`` subcommand: they
        are ``exec``'s options and clap only reads them there; ``exec
        resume`` keeps the thread's id and applies the given sandbox.
        """
        check_profile(spec)
        argv = [spec.binary or self.name, "exec", "--json", "--skip-git-repo-check",
                "-C", spec.cwd]
        if spec.profile == "workspace":
            # workspace-write also makes /tmp writable; that is shared with other
            # sessions (and may hold worktrees), so only the private $TMPDIR stays open
            argv += ["--sandbox", "workspace-write", "-c", "sandbox_workspace_write.exclude_slash_tmp=true"]
        elif spec.profile == "readonly":
            argv += ["--sandbox", "read-only"]
        else:
            argv += ["--dangerously-bypass-approvals-and-sandbox"]
        if spec.model:
            argv += ["--model", spec.model]
        if spec.output_schema_file and not spec.fallback:
            argv += ["--output-schema", spec.output_schema_file]
        if spec.resume_id:
            argv += ["resume", spec.resume_id]
        argv += ["--", spec.prompt]
        return Launch(argv=argv, env=base_env(spec, "CODEX_HOME"), cwd=spec.cwd,
                      confined=spec.profile != "yolo")

    def check_stderr(self, line: str) -> str | None:
        # codex's sandbox never degrades to running unconfined: a missing
        # bwrap makes the command fail, it does not run it outside.
        return None
