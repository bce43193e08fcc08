"""What every agent adapter shares: the run spec, the launch, the failure
record, the stream-parser base and the error-catalogue matcher.

Theory of operation
-------------------
An adapter is pure: ``build_launch`` turns a ``RunSpec`` into the argv and
env to start, ``new_parser`` returns a sans-I/O ``StreamParser`` that the
worker feeds one decoded stdout line at a time, and ``classify`` looks at
how a run ended (exit code, stderr lines, the events it produced) and names
the failure from the CLI's error catalogue.  Nothing here touches a pipe, a
socket, a clock or the filesystem (like h11: bytes in, events out).

A parser never raises on its input.  A line that is not JSON, JSON that is
not an object, and a known event whose fields have the wrong types all
become ``AgentUnknown(raw=line)``: the peer misbehaved, that is not our bug.
Only msgspec's decode/validation errors are caught; anything else is a bug
in the adapter and must crash loudly (STYLE.md "Errors").
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any, Iterable, Protocol, TypeVar

import msgspec

from orchd.protocol import AgentError, AgentResult, AgentUnknown, Ev

PROFILES = ("workspace", "readonly", "yolo")

MAX_TEXT_CHARS = 1 << 20
"""Cap on text a parser holds (gemini's joined deltas, the run's final text).

A parser's state must stay bounded whatever the agent prints; past the cap
the joined message is flushed early and the run text keeps its tail (the
final answer is at the end)."""


class RunSpec(msgspec.Struct, frozen=True, kw_only=True):
    """What the worker wants run; the adapter turns it into a ``Launch``."""

    prompt: str
    cwd: str
    profile: str = "workspace"        # workspace | readonly | yolo
    binary: str | None = None         # path to the CLI; default: the adapter's name on PATH
    model: str | None = None
    max_turns: int | None = None
    resume_id: str | None = None      # claude session_id, codex thread_id, gemini "latest" or id
    home: str | None = None           # per-run HOME (isolation); None = inherit
    config_dir: str | None = None     # CLAUDE_CONFIG_DIR / CODEX_HOME / GEMINI_CLI_HOME
    tmpdir: str | None = None         # private TMPDIR for the run
    allow_unconfined: bool = False    # may the run go on when its sandbox is missing (claude)
    argv: list[str] | None = None     # command agent only
    env: dict[str, str] | None = None # extra env from the assignment
    output_schema: str | None = None  # JSON Schema of the answer (reviewers): claude --json-schema
    output_schema_file: str | None = None  # the same schema in a file: codex exec --output-schema
    fallback: bool = False            # the adapter's fallback launch: leave out its optional flags (bad_flag)


class Launch(msgspec.Struct, frozen=True, kw_only=True):
    """How to start the process.

    ``env`` holds only the variables to add or override on top of the
    daemon's environment.  Every agent CLI must get stdin from /dev/null:
    codex appends a piped stdin to the prompt and gemini reads it.
    ``confined`` is True when the profile's confinement is the CLI's own
    sandbox/permission mode, False when the run is unconfined (yolo), None
    when the adapter cannot say (command).
    """

    argv: list[str]
    env: dict[str, str]
    cwd: str
    confined: bool | None


class Failure(msgspec.Struct, frozen=True, kw_only=True):
    """A failure recognised from a CLI's error catalogue.

    ``action`` is ``relaunch`` (apply ``fix`` and start again), ``park``
    (a usage limit: wait for the reset named in ``message``, then resume) or
    ``escalate`` (a human must act: credentials, limits, sandbox).  ``fix``
    keys: ``env.NAME`` (set env var NAME), ``flag`` (add this flag),
    ``backoff_s`` (wait this long before relaunching), ``resume_id`` (resume
    this session instead; "" = start a fresh session), ``fallback`` (relaunch
    with the adapter's fallback launch, which leaves out these comma-joined
    flags), ``note`` (what a human should know, e.g. an untested CLI version).
    """

    code: str
    message: str
    action: str
    fix: dict[str, str] | None = None
    source: str = ""  # where the message was read: "stderr: <the raw line>", "agent error: ...", "exit code N"


class Adapter(Protocol):
    name: str
    tested_version: str | None

    def build_launch(self, spec: RunSpec) -> Launch: ...
    def version_argv(self, binary: str | None = None) -> list[str]: ...
    def new_parser(self) -> "StreamParser": ...
    def classify(self, exit_code: int | None, stderr_lines: list[str],
                 events: list) -> Failure | None: ...
    def check_stderr(self, line: str) -> str | None: ...


# ---------------------------------------------------------------- parsing

T = TypeVar("T")
_BAD_JSON = (msgspec.DecodeError, RecursionError, UnicodeEncodeError)


def load(obj: Any, typ: type[T]) -> T:
    """Validate a decoded JSON object against a native-schema struct.

    Raises ``msgspec.ValidationError``, which ``feed_line`` turns into
    ``AgentUnknown``.  Unknown fields are ignored (the CLIs add fields in
    every release), missing optional ones take their defaults.
    """
    return msgspec.convert(obj, typ)


class StreamParser:
    """Base of the per-CLI stream parsers.

    Subclasses implement ``_on_object(obj)`` (a decoded JSON object; raise
    ``msgspec.ValidationError`` by way of ``load`` for wrong types) and may
    override ``_on_finish(exit_code)``.  ``result_sent`` records that the
    CLI's own terminal event was turned into an ``AgentResult``, so
    ``finish`` does not invent a second one.
    """

    def __init__(self) -> None:
        self.result_sent = False
        self.fatal_seen = False
        self.last_text = ""
        self._finished = False

    def feed_line(self, line: str) -> list[Ev]:
        """One complete stdout line (no newline).  Never raises on input."""
        if self._finished or not line.strip():
            # Blank lines carry nothing in any of the JSONL dialects.
            return []
        try:
            obj = msgspec.json.decode(line)
        except _BAD_JSON:
            return self._on_non_json(line)
        if not isinstance(obj, dict):
            return self._on_non_object(obj, line)
        try:
            events = self._on_object(obj)
        except msgspec.ValidationError:
            return [AgentUnknown(raw=line)]
        if events is None:
            return [AgentUnknown(raw=line)]
        for ev in events:
            if isinstance(ev, AgentResult):
                self.result_sent = True
            elif isinstance(ev, AgentError) and ev.fatal:
                self.fatal_seen = True
        return events

    def finish(self, exit_code: int | None) -> list[Ev]:
        """The stream ended.  Flush, and close the run with an
        ``AgentResult`` if the CLI never sent one.  Idempotent."""
        if self._finished:
            return []
        self._finished = True
        events = self._on_finish(exit_code)
        if not self.result_sent:
            self.result_sent = True
            ok = exit_code == 0 and not self.fatal_seen
            events.append(AgentResult(ok=ok, text=self.last_text))
        return events

    # hooks -----------------------------------------------------------
    def _on_non_json(self, line: str) -> list[Ev]:
        return [AgentUnknown(raw=line)]

    def _on_non_object(self, obj: Any, line: str) -> list[Ev]:
        return [AgentUnknown(raw=line)]

    def _on_object(self, obj: dict[str, Any]) -> list[Ev] | None:
        """Events for one JSON object, or None when it is not understood."""
        raise NotImplementedError

    def _on_finish(self, exit_code: int | None) -> list[Ev]:
        return []


def cap_tail(text: str) -> str:
    return text if len(text) <= MAX_TEXT_CHARS else text[-MAX_TEXT_CHARS:]


# ---------------------------------------------------------------- launching

def base_env(spec: RunSpec, config_var: str | None,
             defaults: dict[str, str] | None = None) -> dict[str, str]:
    """The env a launch adds: adapter defaults, then the assignment's env,
    then the isolation vars, which nothing may override (an assignment
    must not undo the per-run HOME or TMPDIR)."""
    env = dict(defaults or {})
    env.update(spec.env or {})
    if spec.home is not None:
        env["HOME"] = spec.home
    if spec.tmpdir is not None:
        env["TMPDIR"] = spec.tmpdir
    if spec.config_dir is not None and config_var is not None:
        env[config_var] = spec.config_dir
    return env


def check_profile(spec: RunSpec) -> None:
    if spec.profile not in PROFILES:
        raise ValueError(f"unknown profile {spec.profile!r}; expected one of {PROFILES}")


# ---------------------------------------------------------------- classify

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def strip_ansi(s: str) -> str:
    return _ANSI.sub("", s)


class Rule(msgspec.Struct, frozen=True):
    """One error-catalogue entry: a regex over the CLI's messages, or an
    exit code that means exactly one thing (gemini's 41 and 55).

    ``cause`` says in a few words why the CLI said it; docs/recovery.md
    lists every entry of every adapter with its real message and fix."""

    code: str
    pattern: str | None
    action: str = "escalate"
    fix: dict[str, str] | None = None
    exit_codes: tuple[int, ...] = ()
    cause: str = ""


ACTIONS = ("relaunch", "escalate", "park")
"""``relaunch``: apply the fix and start again (after its backoff);
``escalate``: a human must act, never retried; ``park``: a usage limit or
quota ran out, wait for its reset (the recovery actor reads the reset time
from the message) and resume then."""

RESUME_FIX = {"resume_id": ""}
"""The session to resume is gone (another HOME, deleted): relaunch fresh."""

# Shared tail of every catalogue: provider and transport failures.  Adapter
# rules come first so a specific message wins over these, and a usage limit
# wins over a rate limit (a quota message often says 429 or
# RESOURCE_EXHAUSTED too).
USAGE_LIMIT = Rule(
    "usage_limit",
    r"usage limit|usage_limit|hit your (?:\w+ )?limit|(?:hour|daily|weekly|session|monthly) limit reached"
    r"|quota (?:exceeded|exhausted)|exceeded your current quota|exhausted your (?:\w+ )?quota"
    r"|TerminalQuotaError|out of (?:usage )?credits|credit balance (?:is )?too low",
    "park", {"backoff_s": "300"},
    cause="the account's usage limit or quota ran out; the message usually says when it resets")
RATE_LIMITED = Rule("rate_limited",
                    r"\b429\b|rate.?limit|too many requests|RESOURCE_EXHAUSTED",
                    "relaunch", {"backoff_s": "60"},
                    cause="too many requests for now (HTTP 429)")
OVERLOADED = Rule("overloaded",
                  r"\b529\b|\b503\b|overloaded|Service Unavailable|(?-i:\bUNAVAILABLE\b)|high load",
                  "relaunch", {"backoff_s": "30"},
                  cause="the provider is overloaded or briefly unavailable (HTTP 529, 503)")
SERVER_ERROR = Rule("server_error",
                    r"(?:API Error:|status:?|unexpected status|HTTP|\"code\":)\s*5(?:0[0-9]|[1-9][0-9])\b"
                    r"|Internal server error|(?-i:\bINTERNAL\b)|Bad Gateway|Gateway Time-?out|high demand"
                    r"|An internal error has occurred",
                    "relaunch", {"backoff_s": "30"},
                    cause="the provider failed (another HTTP 5xx: 500, 502, 504)")
NETWORK = Rule("network",
               r"Reconnecting\.\.\.|waiting for network|error sending request"
               r"|connection ?refused|ECONNREFUSED|ECONNRESET|ENOTFOUND|ETIMEDOUT"
               r"|fetch failed|Unable to connect|failed to lookup address"
               r"|stream disconnected|network is unreachable|Stream idle timeout",
               "relaunch", {"backoff_s": "10"},
               cause="the provider cannot be reached, or the connection broke")
PROVIDER_RULES = (USAGE_LIMIT, RATE_LIMITED, OVERLOADED, SERVER_ERROR, NETWORK)
"""The shared tail, in matching order."""

UNTESTED_NOTE = "the CLI may not be the tested version ({tested}): check `orchd doctor`"


def bad_flag_fix(fallback: tuple[str, ...], tested: str | None) -> dict[str, str]:
    """The remedy of ``bad_flag``: relaunch with the adapter's fallback launch,
    which leaves out the ``fallback`` flags (comma-joined in ``fallback``)."""
    return {"fallback": ",".join(fallback), "note": UNTESTED_NOTE.format(tested=tested or "unknown")}


class Evidence(msgspec.Struct, frozen=True):
    """What a finished run left behind, split by how telling it is."""

    fatal: list[str]        # fatal error messages, then a failed result's text
    stderr: list[str]       # stderr lines, ANSI stripped, blanks dropped
    soft: list[str]         # non-fatal error messages (retry notices)
    result_ok: bool | None  # the last AgentResult's ok, None if there was none

    def texts(self) -> list[str]:
        """Most telling first: a rule is tried against these in order."""
        return self.fatal + self.stderr + self.soft

    def headline(self) -> str | None:
        """The best single message for an unrecognised failure: the CLI's
        own fatal message, else its last stderr line (the first ones are
        often warnings), else the last retry notice."""
        if self.fatal:
            return self.fatal[0]
        if self.stderr:
            return self.stderr[-1]
        return self.soft[-1] if self.soft else None


_JSON_MESSAGE = re.compile(r'^"message":\s*"(.*)",?$')


def _unjson(line: str) -> str:
    """gemini pretty-prints its ``-o json`` error object on stderr; keep the
    message line's text, not its JSON quoting."""
    m = _JSON_MESSAGE.match(line)
    if m is None:
        return line
    try:
        return msgspec.json.decode(f'"{m.group(1)}"')
    except msgspec.DecodeError:
        return m.group(1)


def evidence(stderr_lines: Iterable[str], events: Iterable[Any],
             noise: str | None = None) -> Evidence:
    fatal: list[str] = []
    soft: list[str] = []
    result_ok: bool | None = None
    result_text: list[str] = []
    for ev in events:
        if isinstance(ev, AgentError):
            (fatal if ev.fatal else soft).append(ev.message)
        elif isinstance(ev, AgentResult):
            result_ok = ev.ok
            result_text = [] if ev.ok or not ev.text else [ev.text]
    err = [_unjson(strip_ansi(s).strip()) for s in stderr_lines]
    err = [s for s in err if s and not (noise and re.search(noise, s))]
    return Evidence(fatal + result_text, err, soft, result_ok)


def _source(hit: str, ev: Evidence, stderr_lines: list[str], exit_code: int | None) -> str:
    """Where a matched message came from, with the line as the CLI wrote it (ANSI and all)."""
    if hit in ev.fatal:
        return f"agent error: {hit}"
    if hit in ev.stderr:
        raw = next((line for line in stderr_lines if hit in _unjson(strip_ansi(line).strip())), hit)
        return f"stderr: {raw.rstrip()}"
    if hit in ev.soft:
        return f"agent retry notice: {hit}"
    return f"exit code {exit_code}" if exit_code is not None else "killed by a signal"


def match_catalogue(rules: Iterable[Rule], exit_code: int | None,
                    stderr_lines: list[str], events: list,
                    noise: str | None = None) -> Failure | None:
    """Name the failure of a finished run, or None when it succeeded.

    A run succeeded when it exited 0, reported no fatal error and its
    result (if any) was ok; retry notices along the way do not matter.
    Otherwise the first rule (in catalogue order) that matches any text
    wins, so specific messages beat the generic network/rate-limit ones.
    Unmatched failures are ``crashed`` (non-zero exit or killed: a relaunch
    with resume may get further) or ``failed`` (exit 0 but the agent said
    it failed: a human should look).  ``noise`` matches stderr lines the
    CLI prints on every run (banners, warnings) so they never become the
    message of an unrecognised failure.
    """
    ev = evidence(stderr_lines, events, noise)
    if exit_code == 0 and not ev.fatal and ev.result_ok is not False:
        return None
    texts = ev.texts()
    headline = ev.headline() or (
        f"exit code {exit_code}" if exit_code is not None else "killed by a signal")
    for rule in rules:
        hit = None
        if rule.pattern is not None:
            hit = next((t for t in texts if re.search(rule.pattern, t, re.I)), None)
        if hit is None and exit_code is not None and exit_code in rule.exit_codes:
            hit = headline
        if hit is not None:
            source = _source(hit, ev, stderr_lines, exit_code)
            if rule.action == "park":
                hit = _with_reset(hit, texts)
            return Failure(code=rule.code, message=hit, action=rule.action,
                           fix=dict(rule.fix) if rule.fix else None, source=source)
    if exit_code == 0:
        return Failure(code="failed", message=headline, action="escalate")
    return Failure(code="crashed", message=headline, action="relaunch")


_ANY_TIME = datetime(2001, 1, 1, tzinfo=timezone.utc)
"""A reference moment for asking whether a text names a reset time at all
(which moment is the recovery actor's business, with its own clock)."""


def _with_reset(hit: str, texts: list[str]) -> str:
    """A usage-limit message, with the line that says when it resets when the
    message itself does not (gemini puts "Please retry in 41.2s" in the
    error's cause on stderr, its headline says only "exhausted your quota")."""
    from actors.quota import reset_at  # only for a usage limit: ``orchctl parse`` stays light
    if reset_at(hit, _ANY_TIME) is not None:
        return hit
    when = next((t for t in texts if t != hit and reset_at(t, _ANY_TIME) is not None), None)
    return hit if when is None else f"{hit} ({when.strip()[:300]})"


class CliAdapter:
    """What the three agent-CLI adapters share: ``--version``, a fresh parser,
    and classification by the adapter's catalogue (``rules``, ``noise``)."""

    name: str
    parser_class: type[StreamParser]
    rules: tuple = ()
    noise: str | None = None
    fallback_flags: tuple[str, ...] = ()
    """Optional flags the fallback launch (``RunSpec.fallback``) leaves out."""

    def version_argv(self, binary: str | None = None) -> list[str]:
        return [binary or self.name, "--version"]

    def new_parser(self) -> StreamParser:
        return self.parser_class()

    def classify(self, exit_code: int | None, stderr_lines: list[str],
                 events: list) -> Failure | None:
        return match_catalogue(self.rules, exit_code, stderr_lines, events, self.noise)
