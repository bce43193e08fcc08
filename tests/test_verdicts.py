"""actors.verdicts: the reviewer answer format, its schema, parsing and reconciling (pure)."""

from __future__ import annotations

import json

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors import verdicts as v

GOOD = {"verdict": "concern", "summary": "The retry loop never stops.",
        "findings": [{"severity": "concern", "file": "a.py", "line": 12,
                      "evidence": "while True: retry()", "confidence": 0.7}]}


def _text(obj) -> str:
    return json.dumps(obj)


def _finding(severity="concern", confidence=0.9, file="a.py", line=3):
    return {"severity": severity, "file": file, "line": line, "evidence": "e", "confidence": confidence}


# ---------------------------------------------------------------- where the object is found

def test_json_alone():
    r = v.parse_answer(_text(GOOD))
    assert isinstance(r, v.Parsed) and r.source == "json"
    assert r.answer.verdict == "concern"
    assert r.answer.findings == [v.Finding(severity="concern", file="a.py", line=12,
                                           evidence="while True: retry()", confidence=0.7)]


def test_json_in_a_fence_after_prose():
    text = f"I read the diff.\n\n```json\n{_text(GOOD)}\n```\nThat is all."
    r = v.parse_answer(text)
    assert isinstance(r, v.Parsed) and r.source == "fence" and r.answer.verdict == "concern"


def test_the_last_fence_wins():
    first = dict(GOOD, verdict="approve", findings=[])
    text = f"draft:\n```json\n{_text(first)}\n```\nfinal:\n```\n{_text(GOOD)}\n```"
    r = v.parse_answer(text)
    assert isinstance(r, v.Parsed) and r.answer.verdict == "concern"


def test_the_last_object_in_prose():
    earlier = dict(GOOD, verdict="blocker")
    text = f"Earlier I thought {_text(earlier)} but now: {_text(GOOD)} done."
    r = v.parse_answer(text)
    assert isinstance(r, v.Parsed) and r.source == "text" and r.answer.verdict == "concern"
    assert len(r.answer.findings) == 1  # the outer object, not its finding


def test_unknown_extra_keys_are_ignored():
    r = v.parse_answer(_text(dict(GOOD, mood="grumpy")))
    assert isinstance(r, v.Parsed)


def test_nullable_file_and_line():
    r = v.parse_answer(_text(dict(GOOD, findings=[_finding(file=None, line=None)])))
    assert isinstance(r, v.Parsed) and r.answer.findings[0].file is None


# ---------------------------------------------------------------- rejected

@pytest.mark.parametrize("text, reason", [
    ("", "empty"),
    ("   \n", "empty"),
    ("Looks good to me!", 'no JSON object with a "verdict"'),
    ("LGTM {not json}", 'no JSON object with a "verdict"'),
    (_text(dict(GOOD, verdict="lgtm")), "verdict"),
    (_text(dict(GOOD, verdict="APPROVE")), "verdict"),
    (_text({"verdict": "approve", "summary": "ok"}), "findings"),
    (_text({"verdict": "approve", "findings": []}), "summary"),
    (_text({"summary": "ok", "findings": []}), "verdict"),
    (_text(dict(GOOD, findings=[_finding(severity="major")])), "severity"),
    (_text(dict(GOOD, findings=[_finding(confidence=1.5)])), "confidence"),
    (_text(dict(GOOD, findings=[_finding(confidence=-0.1)])), "confidence"),
    (_text(dict(GOOD, findings=[{"severity": "nit", "file": "a", "line": 1, "evidence": "e"}])), "confidence"),
    (_text(dict(GOOD, findings=[_finding(line=10**30)])), "line"),
    (_text(dict(GOOD, findings=[_finding(confidence=float("nan"))])), "confidence"),
    (_text(dict(GOOD, summary=" ".join(["word"] * 2000))), "2000 words"),
    (_text(dict(GOOD, summary=" ".join(["word"] * 201))), "201 words"),
])
def test_rejected_with_a_reason(text, reason):
    r = v.parse_answer(text)
    assert isinstance(r, v.Invalid)
    assert reason in r.reason and "\n" not in r.reason


def test_exactly_200_words_is_fine():
    assert isinstance(v.parse_answer(_text(dict(GOOD, summary=" ".join(["w"] * 200)))), v.Parsed)


def test_over_the_byte_cap():
    text = _text(GOOD) + " " * 40_000
    r = v.parse_answer(text)
    assert isinstance(r, v.Invalid) and "bytes" in r.reason
    assert isinstance(v.parse_answer(text, max_bytes=50_000), v.Parsed)


def test_deep_nesting_is_invalid_not_a_crash():
    assert isinstance(v.parse_answer("[" * 100_000), v.Invalid)
    assert isinstance(v.parse_answer('{"verdict": ' + "[" * 20_000 + "]" * 20_000 + "}", max_bytes=10**6),
                      v.Invalid)


@settings(max_examples=500)
@given(st.text(max_size=400))
def test_any_text_gives_parsed_or_invalid(text):
    r = v.parse_answer(text)
    assert isinstance(r, (v.Parsed, v.Invalid))


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20)


@settings(max_examples=150)
@given(st.dictionaries(st.sampled_from(["verdict", "summary", "findings", "x"]), _json_values),
       st.text(max_size=50), st.sampled_from(["plain", "fence", "prose"]))
def test_json_shaped_noise_gives_parsed_or_invalid(obj, prose, form):
    body = json.dumps(obj)
    text = {"plain": body, "fence": f"{prose}\n```json\n{body}\n```", "prose": f"{prose} {body} {prose}"}[form]
    r = v.parse_answer(text)
    assert isinstance(r, (v.Parsed, v.Invalid))
    if isinstance(r, v.Parsed):
        assert r.answer.verdict in ("approve", "concern", "blocker")


@settings(max_examples=200)
@given(st.binary(max_size=300))
def test_random_bytes_as_text(data):
    assert isinstance(v.parse_answer(data.decode("utf-8", "surrogateescape")), (v.Parsed, v.Invalid))


# ---------------------------------------------------------------- reconcile

def _answer(verdict, *findings):
    return msgspec.convert({"verdict": verdict, "summary": "s", "findings": list(findings)}, v.Answer)


@pytest.mark.parametrize("verdict, findings, effective, mismatch", [
    ("approve", [], "approve", False),
    ("approve", [_finding("nit", 1.0)], "approve", False),
    ("approve", [_finding("blocker", 0.59)], "approve", False),
    ("approve", [_finding("blocker", 0.6)], "blocker", True),
    ("approve", [_finding("concern", 0.6)], "concern", True),
    ("approve", [_finding("concern", 0.9), _finding("blocker", 0.8)], "blocker", True),
    ("concern", [_finding("blocker", 0.95)], "blocker", True),
    ("concern", [_finding("concern", 0.95)], "concern", False),
    ("blocker", [], "blocker", False),            # never relaxed
    ("blocker", [_finding("nit", 0.9)], "blocker", False),
])
def test_reconcile(verdict, findings, effective, mismatch):
    got, why = v.reconcile(_answer(verdict, *findings))
    assert got == effective
    assert (why is not None) == mismatch
    if mismatch:
        assert f"stated {verdict}" in why and f"counted as {effective}" in why


def test_reconcile_names_where():
    _, why = v.reconcile(_answer("approve", _finding("blocker", 0.8, file="x.py", line=9)))
    assert why == "stated approve but a blocker finding (confidence 0.8) at x.py:9; counted as blocker"


def test_fallbacks_are_concerns_never_approvals():
    a = v.invalid_after_reask("not JSON\nat all")
    assert a.verdict == "concern" and "not JSON at all" in a.summary and a.findings == []
    b = v.reviewer_failed("timed out after 600 s")
    assert b.verdict == "concern" and "timed out" in b.summary
    long = v.invalid_after_reask("x " * 5000)
    assert len(long.summary.split()) <= v.MAX_SUMMARY_WORDS


def test_reask_prompt_says_why():
    assert "summary has 2000 words" in v.reask_prompt("summary has 2000 words, at most 200 allowed")


# ---------------------------------------------------------------- the schema

def _objects(schema):
    if isinstance(schema, dict):
        if schema.get("type") == "object":
            yield schema
        for value in schema.values():
            yield from _objects(value)
    elif isinstance(schema, list):
        for value in schema:
            yield from _objects(value)


def _keywords(schema):
    if isinstance(schema, dict):
        for key, value in schema.items():
            yield key
            if key != "properties":
                yield from _keywords(value)
            else:
                for sub in value.values():
                    yield from _keywords(sub)
    elif isinstance(schema, list):
        for value in schema:
            yield from _keywords(value)


def test_schema_is_strict_mode_compatible():
    objects = list(_objects(v.ANSWER_SCHEMA))
    assert len(objects) == 2
    for obj in objects:
        assert obj["additionalProperties"] is False
        assert sorted(obj["required"]) == sorted(obj["properties"])
    # bounds strict mode refuses are checked in code instead
    refused = {"maxLength", "minLength", "minimum", "maximum", "pattern", "format", "allOf", "$ref"}
    assert not refused & set(_keywords(v.ANSWER_SCHEMA))
    assert json.loads(v.schema_json()) == v.ANSWER_SCHEMA


def test_schema_matches_the_structs():
    props = v.ANSWER_SCHEMA["properties"]
    assert list(props) == list(v.Answer.__struct_fields__)
    assert list(props["findings"]["items"]["properties"]) == list(v.Finding.__struct_fields__)
    assert props["verdict"]["enum"] == ["approve", "concern", "blocker"]
    assert props["findings"]["items"]["properties"]["severity"]["enum"] == ["blocker", "concern", "nit"]


def test_what_the_schema_allows_parses():
    # one answer using every branch the schema allows
    obj = {"verdict": "blocker", "summary": "s",
           "findings": [_finding("blocker", 0.0, None, None), _finding("nit", 1, "f", 0)]}
    assert isinstance(v.parse_answer(json.dumps(obj)), v.Parsed)
