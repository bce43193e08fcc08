"""The rehearsal scenario format and its strict validator (pure: no sockets).

A scenario is declared below as msgspec Structs that forbid unknown fields;
``validate_scenario`` converts the loaded JSON/TOML into them, so a typo, a
wrong type or a ``null`` fails with the path to the bad value, e.g.
``agents.claude[0]: unknown key 'tol'``.  What types cannot say (which keys
go with which kind of reply) is checked in ``Reply.__post_init__``; msgspec
reports those errors with the reply's path too.

The server keeps using the validated plain dicts; the Structs only judge
them.  orchctl imports this module lazily to check ``--rehearse FILE`` before
sending it, so it imports nothing heavy.  The format is documented in
``docs/scenarios.md``.
"""

from __future__ import annotations

import json
import re
import tomllib
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import msgspec
from msgspec import UNSET, Meta, UnsetType

REPLY_KINDS = ("text", "tool", "http_error", "stall", "json", "usage_limit")
TOOLS = ("write_file", "run")
AGENT_KEYS = ("claude", "codex", "gemini", "*")

# the keys each kind of reply may carry besides its own and "match"
_COMPANIONS = {
    "text": frozenset({"text"}),
    "tool": frozenset({"text", "path", "content", "command"}),
    "http_error": frozenset({"body"}),
    "stall": frozenset(),
    "json": frozenset(),
    "usage_limit": frozenset(),
}
_TOOL_KEYS = {"write_file": ("path", "content"), "run": ("command",)}


class ScenarioError(ValueError):
    """The scenario is malformed (our input, not the peer's); one line naming the path."""


NonEmpty = Annotated[str, Meta(min_length=1)]


class Reply(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One scripted model answer; exactly one kind (see ``REPLY_KINDS``)."""

    text: str | UnsetType = UNSET
    tool: str | UnsetType = UNSET
    path: NonEmpty | UnsetType = UNSET
    content: str | UnsetType = UNSET
    command: NonEmpty | UnsetType = UNSET
    http_error: Annotated[int, Meta(ge=400, le=599)] | UnsetType = UNSET
    body: dict[str, Any] | UnsetType = UNSET
    stall: bool | UnsetType = UNSET
    json: Any | UnsetType = UNSET   # a structured answer (a reviewer's verdict): sent as the CLI expects it
    usage_limit: Annotated[float, Meta(ge=0, le=30 * 86400)] | UnsetType = UNSET  # seconds until the limit resets
    match: str | UnsetType = UNSET

    def __post_init__(self) -> None:
        # ValueError here becomes a msgspec.ValidationError carrying this reply's path
        present = {f for f in self.__struct_fields__ if getattr(self, f) is not UNSET} - {"match"}
        # text is a kind of its own, or the text block before a tool call
        kinds = [k for k in ("tool", "http_error", "stall", "json", "usage_limit") if k in present]
        if not kinds and "text" in present:
            kinds = ["text"]
        if not kinds:
            raise ValueError(f"a reply needs one of {', '.join(REPLY_KINDS)}")
        if len(kinds) > 1:
            raise ValueError(f"a reply has one kind, got {' and '.join(kinds)}")
        kind = kinds[0]
        extra = sorted(present - {kind} - _COMPANIONS[kind])
        if extra:
            raise ValueError(f"{', '.join(extra)} not allowed with {kind}")
        if self.stall is False:
            raise ValueError("stall must be true")
        if kind == "tool":
            if self.tool not in _TOOL_KEYS:
                raise ValueError(f"unknown tool {self.tool!r} (expected {' or '.join(TOOLS)})")
            need = _TOOL_KEYS[self.tool]
            missing = [k for k in need if k not in present]
            if missing:
                raise ValueError(f"{self.tool} needs {' and '.join(need)}")
            wrong = sorted(present & {"path", "content", "command"} - set(need))
            if wrong:
                raise ValueError(f"{', '.join(wrong)} not allowed with tool {self.tool}")
        if self.json is not UNSET:
            try:
                json.dumps(self.json)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"json is not JSON: {exc}") from None
        if self.body is not UNSET:
            try:
                json.dumps(self.body)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"body is not JSON: {exc}") from None


class Agents(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Reply lists by agent; ``*`` serves an agent without a list of its own."""

    claude: list[Reply] | UnsetType = UNSET
    codex: list[Reply] | UnsetType = UNSET
    gemini: list[Reply] | UnsetType = UNSET
    fallback: list[Reply] | UnsetType = msgspec.field(default=UNSET, name="*")


class Scenario(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Reply lists by agent (``agents``) and by assignment name (``assignments``): an assignment's own
    list wins over its agent's.  At least one of the two keys is needed."""

    agents: Agents | UnsetType = UNSET
    assignments: dict[NonEmpty, list[Reply]] | UnsetType = UNSET

    def __post_init__(self) -> None:
        if self.agents is UNSET and self.assignments is UNSET:
            raise ValueError("missing key 'agents'")


_AT = re.compile(r"^(?P<msg>.*?) - at `(?P<key>key` in `)?\$(?P<path>[^`]*)`$", re.S)
_REWORDS = (
    (re.compile(r"^Object contains unknown field `(.*)`$"), r"unknown key '\1'"),
    (re.compile(r"^Object missing required field `(.*)`$"), r"missing key '\1'"),
    (re.compile(r"`([^`]*)`"), r"\1"),
)


def _message(exc: msgspec.ValidationError) -> str:
    """msgspec's message as ``path: what`` in the scenario's own words."""
    text = str(exc)
    m = _AT.match(text)
    msg, path = (m["msg"], m["path"].lstrip(".")) if m else (text, "")
    if m and m["key"]:
        path += " (a key)"
    for rx, repl in _REWORDS:
        msg = rx.sub(repl, msg)
    msg = msg[:1].lower() + msg[1:]
    if path == "agents" and msg.startswith("unknown key"):
        msg += f" (expected {', '.join(AGENT_KEYS[:-1])} or {AGENT_KEYS[-1]})"

    line = f"{path}: {msg}" if path else msg
    return line.replace("\n", " ")


def validate_scenario(data: Any) -> Scenario:
    """The typed scenario; ``ScenarioError`` names the first bad value's path."""
    if isinstance(data, dict) and isinstance(data.get("assignments"), dict):
        # each assignment's list alone first, so an error names the assignment (msgspec says "[...]")
        for name, replies in data["assignments"].items():
            try:
                msgspec.convert(replies, list[Reply])
            except msgspec.ValidationError as exc:
                where = _message(exc)
                sep = "" if where.startswith("[") else ": "
                raise ScenarioError(f"assignments.{name}{sep}{where}") from None
    try:
        return msgspec.convert(data, Scenario)
    except msgspec.ValidationError as exc:
        raise ScenarioError(_message(exc)) from None


def load_scenario(path: str | Path) -> dict[str, Any]:
    """Read and validate a ``.json`` or ``.toml`` (by suffix) scenario file.

    Every failure, unreadable file and bad syntax included, is a one-line
    ``ScenarioError``.
    """
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ScenarioError(f"cannot read: {exc.strerror}") from None
    toml = p.suffix == ".toml"
    try:
        data = tomllib.loads(raw.decode()) if toml else json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"not valid {'TOML' if toml else 'JSON'}: {exc}".replace("\n", " ")) from None
    validate_scenario(data)
    return data


def default_scenario() -> dict[str, Any]:
    """The packaged default: every agent writes ``{assignment}.txt`` and finishes."""
    text = resources.files(__package__).joinpath("scenarios/default.json").read_text(encoding="utf-8")
    return json.loads(text)
