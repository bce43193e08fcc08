"""A reviewer's answer: its format, its JSON Schema, parsing and reconciling (sans-I/O).

Theory of operation
-------------------
A reviewer answers with one JSON object::

    {"verdict": "approve" | "concern" | "blocker",
     "summary": "<at most 200 words>",
     "findings": [{"severity": "blocker" | "concern" | "nit", "file": "a.py" | null,
                   "line": 12 | null, "evidence": "...", "confidence": 0.0..1.0}]}

CLIs with a structured-output mode get ``ANSWER_SCHEMA`` (claude
``--json-schema '<schema>'``, codex ``exec --output-schema FILE``); the
others are asked for the same object in text.  ``ANSWER_SCHEMA`` keeps to
the subset both vendors' strict modes accept: every object has
``additionalProperties: false`` and lists *every* property in ``required``
(OpenAI strict mode rejects a schema otherwise, with ``invalid_json_schema``);
nullable fields use ``anyOf`` with ``null`` instead of being optional; no
length or numeric bounds (``maxLength``, ``minimum``... are refused by
strict mode), so the 200-word and 0..1 bounds are checked here instead.

``parse_answer(text)`` never raises: it returns ``Parsed`` or
``Invalid(reason)``.  The object is taken from, in order: the whole text;
the last fenced block (```` ```json ```` or a bare fence) holding a JSON
object; else the last ``{...}`` in the text that decodes to an object with a
``"verdict"`` key (reviewers that think aloud before answering).  Only
that object is validated; its errors are the reason.

``reconcile(answer)`` applies the rule for a verdict contradicting its own
findings: a finding with ``confidence >= MISMATCH_CONFIDENCE`` (0.6) of
severity ``blocker`` makes the effective verdict at least ``blocker``, one
of severity ``concern`` at least ``concern`` (``nit`` never counts).  The
stricter of stated and found wins; a verdict is never relaxed.  When they
differ, the mismatch is described so the caller can record it.

An answer still invalid after one re-ask, and a reviewer that timed out or
failed, count as ``concern`` (``invalid_after_reask``, ``reviewer_failed``):
never as approval.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

import msgspec

Verdict = Literal["approve", "concern", "blocker"]
Severity = Literal["blocker", "concern", "nit"]

MAX_SUMMARY_WORDS = 200
MAX_ANSWER_BYTES = 32_000
"""An answer (the whole text a reviewer printed) longer than this is invalid."""
MISMATCH_CONFIDENCE = 0.6
MAX_SCAN_OBJECTS = 256
"""At most this many ``{`` positions are tried when looking for the object in prose."""

_RANK: dict[str, int] = {"approve": 0, "concern": 1, "blocker": 2}


class Finding(msgspec.Struct, frozen=True, kw_only=True):
    severity: Severity
    file: str | None
    line: Annotated[int, msgspec.Meta(ge=0, le=2**31 - 1)] | None
    evidence: str
    confidence: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]


class Answer(msgspec.Struct, frozen=True, kw_only=True):
    """A reviewer's answer, validated (unknown extra keys are ignored)."""

    verdict: Verdict
    summary: str
    findings: list[Finding]


class Parsed(msgspec.Struct, frozen=True, kw_only=True):
    answer: Answer
    source: Literal["json", "fence", "text"]  # where in the text the object was found


class Invalid(msgspec.Struct, frozen=True, kw_only=True):
    reason: str  # one line, for the re-ask prompt and the record


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


ANSWER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["verdict", "summary", "findings"],
    "properties": {
        "verdict": {"type": "string", "enum": ["approve", "concern", "blocker"],
                    "description": "approve: nothing wrong; concern: should be looked at; "
                                   "blocker: must not go on as is"},
        "summary": {"type": "string", "description": f"At most {MAX_SUMMARY_WORDS} words."},
        "findings": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["severity", "file", "line", "evidence", "confidence"],
                "properties": {
                    "severity": {"type": "string", "enum": ["blocker", "concern", "nit"]},
                    "file": _nullable({"type": "string"}),
                    "line": _nullable({"type": "integer"}),
                    "evidence": {"type": "string",
                                 "description": "What you saw: code, command output, or reasoning."},
                    "confidence": {"type": "number", "description": "From 0 to 1."},
                },
            },
        },
    },
}


def schema_json() -> str:
    """``ANSWER_SCHEMA`` as compact JSON (claude's ``--json-schema`` argument, codex's schema file)."""
    return json.dumps(ANSWER_SCHEMA, separators=(",", ":"))


# ---------------------------------------------------------------- parsing

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_-]*)[ \t]*\r?\n(.*?)```", re.DOTALL)
_DECODER = json.JSONDecoder()


def _loads(text: str) -> Any:
    """A JSON value, or None when ``text`` is not exactly one (deep nesting included)."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def _last_object_in_prose(text: str) -> dict[str, Any] | None:
    pos = len(text)
    for _ in range(MAX_SCAN_OBJECTS):
        pos = text.rfind("{", 0, pos)
        if pos < 0:
            return None
        try:
            value, _end = _DECODER.raw_decode(text, pos)
        except (ValueError, RecursionError):
            continue
        if isinstance(value, dict) and "verdict" in value:
            return value
    return None


def _find_object(text: str) -> tuple[Any, Literal["json", "fence", "text"]] | None:
    stripped = text.strip()
    if stripped.startswith("{"):
        value = _loads(stripped)
        if isinstance(value, dict):
            return value, "json"
    for m in reversed(list(_FENCE.finditer(text))):
        if m.group(1).lower() not in ("", "json"):
            continue
        value = _loads(m.group(2))
        if isinstance(value, dict):
            return value, "fence"
    value = _last_object_in_prose(text)
    if value is not None:
        return value, "text"
    return None


def _one_line(s: str, limit: int = 300) -> str:
    s = " ".join(s.split())
    return s if len(s) <= limit else s[: limit - 1] + "…"


def validate(value: Any) -> Answer | Invalid:
    """An already-decoded JSON value (e.g. a CLI's structured output) checked as an answer."""
    try:
        answer = msgspec.convert(value, Answer)
    except msgspec.ValidationError as e:
        return Invalid(reason=_one_line(f"answer does not match the format: {e}"))
    except RecursionError:
        return Invalid(reason="answer is nested too deeply")
    words = len(answer.summary.split())
    if words > MAX_SUMMARY_WORDS:
        return Invalid(reason=f"summary has {words} words, at most {MAX_SUMMARY_WORDS} allowed")
    return answer


def parse_answer(text: str, *, max_bytes: int = MAX_ANSWER_BYTES) -> Parsed | Invalid:
    """A reviewer's text answer → ``Parsed`` or ``Invalid(reason)``; never raises."""
    size = len(text.encode("utf-8", "replace"))
    if size > max_bytes:
        return Invalid(reason=f"answer is {size} bytes, at most {max_bytes} allowed")
    if not text.strip():
        return Invalid(reason="answer is empty")
    found = _find_object(text)
    if found is None:
        return Invalid(reason='no JSON object with a "verdict" field in the answer')
    value, source = found
    checked = validate(value)
    if isinstance(checked, Invalid):
        return checked
    return Parsed(answer=checked, source=source)


# ---------------------------------------------------------------- verdicts

def reconcile(answer: Answer) -> tuple[Verdict, str | None]:
    """The effective verdict (stated, or stricter when its findings say so) and the mismatch, if any."""
    effective: Verdict = answer.verdict
    cause: Finding | None = None
    for f in answer.findings:
        if f.severity == "nit" or f.confidence < MISMATCH_CONFIDENCE:
            continue
        if _RANK[f.severity] > _RANK[effective]:
            effective, cause = f.severity, f
    if cause is None:
        return answer.verdict, None
    where = f" at {cause.file}" + (f":{cause.line}" if cause.line is not None else "") if cause.file else ""
    return effective, (f"stated {answer.verdict} but a {cause.severity} finding "
                       f"(confidence {cause.confidence:g}){where}; counted as {effective}")


def _as_concern(summary: str) -> Answer:
    words = summary.split()
    if len(words) > MAX_SUMMARY_WORDS:
        summary = " ".join(words[:MAX_SUMMARY_WORDS])
    return Answer(verdict="concern", summary=summary, findings=[])


def invalid_after_reask(reason: str) -> Answer:
    """The answer recorded for a reviewer whose answer was still invalid after one re-ask."""
    return _as_concern(f"reviewer answer invalid after one re-ask: {_one_line(reason)}")


def reviewer_failed(reason: str) -> Answer:
    """The answer recorded for a reviewer that timed out or failed (never an approval)."""
    return _as_concern(f"reviewer could not answer: {_one_line(reason)}")


def reask_prompt(reason: str) -> str:
    """The follow-up prompt for one re-ask after an invalid answer."""
    return (f"Your review answer could not be used: {_one_line(reason)}\n"
            "Answer again with only one JSON object of this form, and nothing else:\n"
            '{"verdict": "approve" | "concern" | "blocker", "summary": "at most 200 words", '
            '"findings": [{"severity": "blocker" | "concern" | "nit", "file": "path or null", '
            '"line": 1, "evidence": "what you saw", "confidence": 0.8}]}')
