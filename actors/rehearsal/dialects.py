"""The three model-API dialects of the scripted model server, without I/O.

``read_turn`` turns a request body into a dialect-neutral ``Turn``;
``render_sse`` / ``render_json`` turn a scenario reply into that dialect's
native response.  The shapes follow what the pinned CLIs send and accept
(see /work/shared/reference/agent-requests and tests/fixtures/agents).
"""

from __future__ import annotations

import json
import posixpath
import re
import shlex
import time
import uuid
from dataclasses import dataclass
from typing import Any, Iterator

ASSIGNMENT_RE = re.compile(r"orchd-assignment: (\S+)")
CLAUDE_CWD_RE = re.compile(r"Primary working directory: (.+)")
CODEX_CWD_RE = re.compile(r"<cwd>(.*?)</cwd>")
GEMINI_CWD_RE = re.compile(r"Workspace Directories:\*\*\n\s*- (.+)")

# path -> dialect.  Query strings (claude's ?beta=true, gemini's ?alt=sse) are ignored.
ANTHROPIC, OPENAI, GEMINI = "anthropic", "openai", "gemini"
AGENT_OF = {ANTHROPIC: "claude", OPENAI: "codex", GEMINI: "gemini"}


@dataclass(frozen=True, kw_only=True)
class Turn:
    """One model call, as far as the script cares."""

    agent: str                  # "claude" | "codex" | "gemini": the scenario key
    prompt: str                 # user-side text of the whole conversation (not system prompts)
    assignment: str | None      # from "orchd-assignment: NAME"
    cwd: str | None             # the agent's working directory, if the request names it
    tools: frozenset[str]       # names of the tools the CLI offered
    model: str
    stream: bool
    side_call: bool = False     # a structured-output call the CLI makes on its own
    schema: dict[str, Any] | None = None

    @property
    def name(self) -> str:
        """What ``{assignment}`` expands to: the assignment, else the agent name."""
        return self.assignment or self.agent


def route(path: str) -> str | None:
    bare = path.split("?", 1)[0]
    if bare.startswith("/v1/messages"):
        return ANTHROPIC
    if bare == "/v1/responses":
        return OPENAI
    if bare.startswith("/v1beta/models/") and (bare.endswith(":generateContent")
                                               or bare.endswith(":streamGenerateContent")):
        return GEMINI
    return None


def _search(rx: re.Pattern[str], text: str) -> str | None:
    m = rx.search(text)
    return m.group(1).strip() if m else None


def _texts(value: Any) -> Iterator[str]:
    """Every string under a content value (str, block list, nested results)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for v in value:
            yield from _texts(v)
    elif isinstance(value, dict):
        for k in ("text", "content", "output", "response"):
            if k in value:
                yield from _texts(value[k])


class BadRequest(ValueError):
    """The request body does not have the dialect's shape (the peer misbehaved)."""


def read_turn(dialect: str, path: str, body: dict[str, Any]) -> Turn:
    """The ``Turn`` a request body describes; ``BadRequest`` if it is malformed."""
    try:
        return _read_turn(dialect, path, body)
    except (AttributeError, TypeError, KeyError, IndexError) as e:
        # Any shape mismatch lands here: a wrong type anywhere in the body is
        # the client's error and gets a 400, never a dropped connection.
        raise BadRequest(f"malformed {dialect} request: {e}") from e


def _read_turn(dialect: str, path: str, body: dict[str, Any]) -> Turn:
    if dialect == ANTHROPIC:
        msgs = body.get("messages") or []
        prompt = "\n".join(t for m in msgs if m.get("role") == "user" for t in _texts(m.get("content")))
        system = "\n".join(_texts(body.get("system") or []))
        tools = frozenset(t.get("name", "") for t in body.get("tools") or [])
        schema = ((body.get("output_config") or {}).get("format") or {}).get("schema")
        return Turn(agent="claude", prompt=prompt, assignment=_search(ASSIGNMENT_RE, prompt),
                    cwd=_search(CLAUDE_CWD_RE, system), tools=tools, model=body.get("model", "claude"),
                    stream=bool(body.get("stream")), side_call=schema is not None and not tools, schema=schema)
    if dialect == OPENAI:
        items = body.get("input") or []
        if isinstance(items, str):
            items = [{"role": "user", "content": items}]
        prompt = "\n".join(t for it in items if it.get("role") != "developer" and it.get("role") != "system"
                           for t in _texts(it.get("content", it.get("output", ""))))
        tools = frozenset(t.get("name", t.get("type", "")) for t in body.get("tools") or [])
        return Turn(agent="codex", prompt=prompt, assignment=_search(ASSIGNMENT_RE, prompt),
                    cwd=_search(CODEX_CWD_RE, prompt), tools=tools, model=body.get("model", "gpt"),
                    stream=bool(body.get("stream", True)))
    contents = body.get("contents") or []
    prompt = "\n".join(t for c in contents if c.get("role", "user") == "user"
                       for p in c.get("parts", []) for t in _texts(p.get("text", p.get("functionResponse", ""))))
    gen = body.get("generationConfig") or {}
    schema = gen.get("responseJsonSchema") or gen.get("responseSchema")
    tools = frozenset(fd.get("name", "") for t in body.get("tools") or [] for fd in t.get("functionDeclarations", []))
    model = path.split("/v1beta/models/", 1)[1].split(":", 1)[0]
    return Turn(agent="gemini", prompt=prompt, assignment=_search(ASSIGNMENT_RE, prompt),
                cwd=_search(GEMINI_CWD_RE, prompt), tools=tools, model=model,
                stream=":streamGenerateContent" in path, side_call=schema is not None, schema=schema)


# ---------------------------------------------------------------- side calls

def synthesize(schema: Any) -> Any:
    """A small value that satisfies a JSON schema (OpenAPI-style upper-case types too)."""
    if not isinstance(schema, dict):
        return None
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        # gemini's next-speaker check offers ["user", "model"]: "user" ends the turn.
        return "user" if "user" in enum else enum[0]
    kind = str(schema.get("type", "object")).lower()
    if kind == "object":
        props = schema.get("properties")
        return {str(k): synthesize(v) for k, v in props.items()} if isinstance(props, dict) else {}
    if kind == "array":
        return []
    if kind in ("integer", "number"):
        low = schema.get("minimum")
        return max(1, low) if isinstance(low, int) and not isinstance(low, bool) else 1
    if kind == "boolean":
        return False
    return "rehearsal"


def side_reply(turn: Turn) -> dict[str, Any]:
    return {"text": json.dumps(synthesize(turn.schema))}


def error_body(dialect: str, status: int) -> dict[str, Any]:
    """A realistic error body for ``{"http_error": status}`` without ``body``."""
    if dialect == ANTHROPIC:
        kind = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error",
                529: "overloaded_error"}.get(status, "api_error")
        return {"type": "error", "error": {"type": kind, "message": f"rehearsal error {status}"}}
    if dialect == OPENAI:
        return {"error": {"message": f"rehearsal error {status}", "type": "invalid_request_error",
                          "code": "invalid_api_key" if status == 401 else None}}
    return {"error": {"code": status, "message": f"rehearsal error {status}", "status": "INVALID_ARGUMENT"}}


def usage_limit_body(dialect: str, now: float, wait_s: float) -> dict[str, Any]:
    """A usage limit (quota) that resets ``wait_s`` after ``now`` (unix seconds), in each vendor's shape.

    Anthropic: a 429 ``rate_limit_error`` whose message is claude's ``Claude AI usage limit
    reached|<unix seconds>``; OpenAI (codex): ``usage_limit_reached`` with ``resets_at`` and
    ``resets_in_seconds``; Gemini: ``RESOURCE_EXHAUSTED`` quota with a ``RetryInfo`` delay.
    """
    reset = int(now + wait_s) + 1  # whole seconds, never before the wait is over
    wait_s = reset - int(now)
    if dialect == ANTHROPIC:
        return {"type": "error", "error": {"type": "rate_limit_error",
                                           "message": f"Claude AI usage limit reached|{reset}"}}
    if dialect == OPENAI:
        return {"error": {"type": "usage_limit_reached", "message": f"You've hit your usage limit. "
                          f"Try again in {wait_s} seconds.", "resets_at": reset, "resets_in_seconds": wait_s}}
    return {"error": {"code": 429, "status": "RESOURCE_EXHAUSTED",
                      "message": f"Quota exceeded for quota metric 'Generate Content API requests per day'. "
                                 f"Please retry in {wait_s}s.",
                      "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{wait_s}s"}]}}


# ---------------------------------------------------------------- tool calls per dialect

def _abs(path: str, cwd: str | None) -> str:
    return path if posixpath.isabs(path) or cwd is None else posixpath.join(cwd, path)


def _tool_call(turn: Turn, reply: dict[str, Any]) -> tuple[str, dict[str, Any] | str] | None:
    """(tool name, arguments) in the CLI's native tool vocabulary; a str means a freeform input."""
    tool = reply.get("tool")
    if tool is None:
        return None
    if turn.agent == "claude":
        if tool == "write_file":
            return "Write", {"file_path": _abs(reply["path"], turn.cwd), "content": reply["content"]}
        return "Bash", {"command": reply["command"], "description": "scripted command"}
    if turn.agent == "gemini":
        if tool == "write_file":
            return "write_file", {"file_path": _abs(reply["path"], turn.cwd), "content": reply["content"]}
        return "run_shell_command", {"command": reply["command"], "description": "scripted command"}
    # codex: apply_patch (freeform) when the model slug offers it, else a shell command.
    if tool == "write_file" and "apply_patch" in turn.tools:
        lines = "".join(f"+{line}\n" for line in reply["content"].splitlines())
        return "apply_patch", f"*** Begin Patch\n*** Add File: {reply['path']}\n{lines}*** End Patch\n"
    if tool == "write_file":
        path = shlex.quote(reply["path"])
        cmd = f"mkdir -p \"$(dirname {path})\" && printf %s {shlex.quote(reply['content'])} > {path}"
    else:
        cmd = reply["command"]
    return "exec_command", {"cmd": cmd}


def _tokens(text: str) -> int:
    return max(1, len(text) // 4)


def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


# ---------------------------------------------------------------- anthropic

def _sse(event: str | None, data: dict[str, Any]) -> str:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data)}\n\n"


def _anthropic_blocks(turn: Turn, reply: dict[str, Any]) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    if reply.get("text"):
        blocks.append({"type": "text", "text": reply["text"]})
    call = _tool_call(turn, reply)
    if call:
        blocks.append({"type": "tool_use", "id": _id("toolu"), "name": call[0], "input": call[1]})
    return blocks


def _anthropic_usage(turn: Turn, out: int) -> dict[str, int]:
    return {"input_tokens": _tokens(turn.prompt), "output_tokens": out,
            "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}


def _anthropic_sse(turn: Turn, reply: dict[str, Any]) -> Iterator[str]:
    blocks = _anthropic_blocks(turn, reply)
    stop = "tool_use" if any(b["type"] == "tool_use" for b in blocks) else "end_turn"
    out = _tokens(json.dumps(blocks))
    yield _sse("message_start", {"type": "message_start", "message": {
        "id": _id("msg"), "type": "message", "role": "assistant", "model": turn.model, "content": [],
        "stop_reason": None, "stop_sequence": None, "usage": _anthropic_usage(turn, 1)}})
    for i, b in enumerate(blocks):
        if b["type"] == "text":
            yield _sse("content_block_start", {"type": "content_block_start", "index": i,
                                               "content_block": {"type": "text", "text": ""}})
            delta = {"type": "text_delta", "text": b["text"]}
        else:
            start = dict(b, input={})
            yield _sse("content_block_start", {"type": "content_block_start", "index": i, "content_block": start})
            delta = {"type": "input_json_delta", "partial_json": json.dumps(b["input"])}
        yield _sse("content_block_delta", {"type": "content_block_delta", "index": i, "delta": delta})
        yield _sse("content_block_stop", {"type": "content_block_stop", "index": i})
    yield _sse("message_delta", {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
                                 "usage": {"output_tokens": out}})
    yield _sse("message_stop", {"type": "message_stop"})


# ---------------------------------------------------------------- openai responses

def _openai_items(turn: Turn, reply: dict[str, Any]) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    if reply.get("text"):
        items.append({"id": _id("msg"), "type": "message", "status": "completed", "role": "assistant",
                      "content": [{"type": "output_text", "text": reply["text"], "annotations": []}]})
    call = _tool_call(turn, reply)
    if call and isinstance(call[1], str):
        items.append({"id": _id("ctc"), "type": "custom_tool_call", "status": "completed",
                      "call_id": _id("call"), "name": call[0], "input": call[1]})
    elif call:
        items.append({"id": _id("fc"), "type": "function_call", "status": "completed",
                      "call_id": _id("call"), "name": call[0], "arguments": json.dumps(call[1])})
    return items


def _openai_response(turn: Turn, status: str, output: list[dict[str, Any]], rid: str) -> dict[str, Any]:
    out = _tokens(json.dumps(output)) if output else 0
    inp = _tokens(turn.prompt)
    return {"id": rid, "object": "response", "created_at": int(time.time()), "status": status,
            "model": turn.model, "output": output,
            "usage": {"input_tokens": inp, "input_tokens_details": {"cached_tokens": 0},
                      "output_tokens": out, "output_tokens_details": {"reasoning_tokens": 0},
                      "total_tokens": inp + out}}


def _openai_sse(turn: Turn, reply: dict[str, Any]) -> Iterator[str]:
    rid, seq = _id("resp"), iter(range(1 << 30))
    items = _openai_items(turn, reply)

    def ev(kind: str, **data: Any) -> str:
        return _sse(kind, {"type": kind, "sequence_number": next(seq), **data})

    yield ev("response.created", response=_openai_response(turn, "in_progress", [], rid))
    yield ev("response.in_progress", response=_openai_response(turn, "in_progress", [], rid))
    for n, item in enumerate(items):
        if item["type"] == "message":
            text = item["content"][0]["text"]
            yield ev("response.output_item.added", output_index=n, item=dict(item, status="in_progress", content=[]))
            part = {"type": "output_text", "text": "", "annotations": []}
            loc = {"item_id": item["id"], "output_index": n, "content_index": 0}
            yield ev("response.content_part.added", **loc, part=part)
            yield ev("response.output_text.delta", **loc, delta=text)
            yield ev("response.output_text.done", **loc, text=text)
            yield ev("response.content_part.done", **loc, part=dict(part, text=text))
        elif item["type"] == "function_call":
            yield ev("response.output_item.added", output_index=n,
                     item=dict(item, status="in_progress", arguments=""))
            loc = {"item_id": item["id"], "output_index": n}
            yield ev("response.function_call_arguments.delta", **loc, delta=item["arguments"])
            yield ev("response.function_call_arguments.done", **loc, arguments=item["arguments"])
        else:
            yield ev("response.output_item.added", output_index=n, item=dict(item, status="in_progress", input=""))
            loc = {"item_id": item["id"], "output_index": n}
            yield ev("response.custom_tool_call_input.delta", **loc, delta=item["input"])
            yield ev("response.custom_tool_call_input.done", **loc, input=item["input"])
        yield ev("response.output_item.done", output_index=n, item=item)
    yield ev("response.completed", response=_openai_response(turn, "completed", items, rid))


# ---------------------------------------------------------------- gemini

def _gemini_chunk(turn: Turn, reply: dict[str, Any]) -> dict[str, Any]:
    parts: list[dict[str, Any]] = []
    if reply.get("text"):
        parts.append({"text": reply["text"]})
    call = _tool_call(turn, reply)
    if call:
        parts.append({"functionCall": {"name": call[0], "args": call[1]}})
    out = _tokens(json.dumps(parts))
    inp = _tokens(turn.prompt)
    return {"candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": "STOP", "index": 0}],
            "usageMetadata": {"promptTokenCount": inp, "candidatesTokenCount": out, "totalTokenCount": inp + out},
            "modelVersion": turn.model, "responseId": _id("resp")}


# ---------------------------------------------------------------- entry points

def render_sse(dialect: str, turn: Turn, reply: dict[str, Any]) -> Iterator[str]:
    """The reply as the dialect's server-sent-event stream."""
    if dialect == ANTHROPIC:
        return _anthropic_sse(turn, reply)
    if dialect == OPENAI:
        return _openai_sse(turn, reply)
    return iter([_sse(None, _gemini_chunk(turn, reply))])


def render_json(dialect: str, turn: Turn, reply: dict[str, Any]) -> dict[str, Any]:
    """The reply as one non-streamed JSON response."""
    if dialect == ANTHROPIC:
        blocks = _anthropic_blocks(turn, reply)
        stop = "tool_use" if any(b["type"] == "tool_use" for b in blocks) else "end_turn"
        return {"id": _id("msg"), "type": "message", "role": "assistant", "model": turn.model, "content": blocks,
                "stop_reason": stop, "stop_sequence": None,
                "usage": _anthropic_usage(turn, _tokens(json.dumps(blocks)))}
    if dialect == OPENAI:
        return _openai_response(turn, "completed", _openai_items(turn, reply), _id("resp"))
    return _gemini_chunk(turn, reply)
