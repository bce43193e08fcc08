"""Secret redaction: API keys and tokens never reach the event log, screens or the daemon's log (pure).

Theory of operation
-------------------
``Redactor(secrets)`` replaces, in any text:

* vendor keys: ``sk-ant-...``, ``sk-proj-...``, ``sk-...`` (16+ key
  characters after the prefix) and Google's ``AIza...`` (30+); the prefix
  is kept (``sk-ant-[redacted]``) so a reader knows what was there;
* bearer tokens: ``Bearer <8+ token characters>`` → ``Bearer [redacted]``;
* assignments to a credential name: a name ending in ``API_KEY``,
  ``APIKEY``, ``ACCESS_KEY``, ``PRIVATE_KEY``, ``TOKEN``, ``SECRET``,
  ``PASSWORD`` or ``PASSWD`` (any case) followed by ``=`` or ``:`` and a
  value of 4+ characters: ``OPENAI_API_KEY=abc...``, ``"token": "abc..."``
  (JSON, escaped JSON inside a string too) → the name stays, the value goes;
* the values of the daemon's own environment variables that hold
  credentials (``from_environ``: names containing KEY, TOKEN, SECRET or
  PASSWORD, values of 8+ characters), wherever they appear, as
  ``[redacted:NAME]``.

Speed: a line is first checked with a few substring tests (``maybe``); only
a line that may hold a secret goes through the regular expressions.  A
typical 200-byte line without a secret costs a handful of ``in`` tests (see
benchmarks/redact.py and benchmarks/README.md).

``event(ev)`` returns a protocol event (or any msgspec Struct) with every
string in it redacted (nested lists, dicts and Structs included; a dict
value under a credential name, such as an assignment's ``env``, is replaced
whole).  It returns the same object when nothing changed.

The daemon installs one redactor at start (``configure(os.environ)``); the
worker redacts its events before they are framed, the supervisor its own,
and the log formatter every line (``orchd.log``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import msgspec

REDACTED = "[redacted]"
MIN_ENV_SECRET_CHARS = 8

_CRED_WORD = r"(?i:api_?key|access_?key|private_?key|token|secret|password|passwd)"
_CRED_NAME_RE = re.compile(rf"[A-Za-z0-9_]*{_CRED_WORD}\Z")
_ENV_NAME_RE = re.compile(r"KEY|TOKEN|SECRET|PASSWORD", re.IGNORECASE)

# Each pattern starts with a literal, so the regex engine scans for it in C (an alternation, or a
# leading \b, makes it try every position: 5-50x slower), and runs only when its literal is in
# the text.  Word boundaries before a match are checked in ``_after_word``.
_SEP = r"(?:\\?[\"'][ \t]*:[ \t]*\\?[\"']|[ \t]*[=:][ \t]*(?:\\?[\"'])?)"
# after a quoted name (JSON, or JSON escaped inside a string) only a quoted value counts, so a
# number in JSON is never touched; a value never holds a quote, a backslash or a bracket, so a
# replacement cannot break the text around it
_VALUE = r"[^\s\"'\\,;&<>(){}\[\]]{4,}+(?!\[redacted)"  # not the rest of a key redacted already
_SK = re.compile(r"sk-(?:ant-|proj-)?[A-Za-z0-9_\-]{16,}")
_AIZA = re.compile(r"AIza[0-9A-Za-z_\-]{30,}")
_BEARER = re.compile(r"(bearer[ \t]+)[A-Za-z0-9._~+/\-]{8,}=*", re.IGNORECASE)
_ASSIGN = {  # lowercase hint -> the assignment it may start (group 1 is kept)
    "key": re.compile(rf"(key{_SEP}){_VALUE}", re.IGNORECASE),
    "token": re.compile(rf"(token{_SEP}){_VALUE}", re.IGNORECASE),
    "secret": re.compile(rf"(secret{_SEP}){_VALUE}", re.IGNORECASE),
    "passw": re.compile(rf"(passw(?:or)?d{_SEP}){_VALUE}", re.IGNORECASE),
}
_KEY_NAMES = ("api", "api_", "access", "access_", "private", "private_")  # *KEY counts only after these
_WORD = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")

# what a text must contain for a pattern to match (checked first: cheap): "sk-", "AIza", and in
# its lowercase form "key", "token", "bearer", "secret", "passw" (see ``maybe``)


def _after_word(m: re.Match[str]) -> bool:
    """True when the match continues a word (``task-...`` holds no ``sk-`` key)."""
    i = m.start()
    return i > 0 and m.string[i - 1] in _WORD


def _vendor(m: re.Match[str]) -> str:
    whole = m.group(0)
    if _after_word(m):
        return whole
    for prefix in ("sk-ant-", "sk-proj-", "sk-", "AIza"):
        if whole.startswith(prefix):
            return prefix + REDACTED
    return REDACTED


def _bearer(m: re.Match[str]) -> str:
    return m.group(0) if _after_word(m) else m.group(1) + REDACTED


def _assignment(m: re.Match[str]) -> str:
    return m.group(1) + REDACTED


def _key_assignment(m: re.Match[str]) -> str:
    before = m.string[max(0, m.start() - 8):m.start()].lower()
    return m.group(1) + REDACTED if before.endswith(_KEY_NAMES) else m.group(0)


class Redactor:
    """Redacts the formats above plus the given secret values (``{name: value}``)."""

    def __init__(self, secrets: Mapping[str, str] | None = None) -> None:
        values: dict[str, str] = {}
        for name, value in (secrets or {}).items():
            if len(value) >= MIN_ENV_SECRET_CHARS:
                values.setdefault(value, name)
                escaped = json.dumps(value)[1:-1]  # how it looks inside a JSON string
                values.setdefault(escaped, name)
        self._secrets = dict(secrets or {})
        self._names = values
        self._values = tuple(sorted(values, key=len, reverse=True))

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Redactor:
        """A redactor for the credentials in ``environ`` (names with KEY/TOKEN/SECRET/PASSWORD, values of 8+)."""
        return cls(credentials(environ))

    def extended(self, secrets: Mapping[str, str]) -> Redactor:
        """This redactor plus more secret values (a worker adds its assignment's credentials)."""
        if not any(len(v) >= MIN_ENV_SECRET_CHARS for v in secrets.values()):
            return self
        return Redactor({**self._secrets, **secrets})

    # ------------------------------------------------------------ text

    def maybe(self, text: str) -> bool:
        """False when ``text`` certainly holds nothing to redact (cheap: substring tests only)."""
        # unrolled on purpose: a loop over the hints costs more than the tests themselves
        if "sk-" in text or "AIza" in text:
            return True
        low = text.lower()
        if "key" in low or "token" in low or "bearer" in low or "secret" in low or "passw" in low:
            return True
        for value in self._values:
            if value in text:
                return True
        return False

    def maybe_bytes(self, data: bytes) -> bool:
        """``maybe`` for UTF-8 bytes (an encoded event frame).  Decoding first is faster than the
        same tests on bytes: ``str.lower`` has an ASCII fast path that ``bytes.lower`` lacks."""
        return self.maybe(data.decode("utf-8", "replace"))

    def __call__(self, text: str) -> str:
        if "sk-" not in text and "AIza" not in text:  # ``maybe``, inlined: this is the hot path
            low = text.lower()
            if not ("key" in low or "token" in low or "bearer" in low or "secret" in low or "passw" in low):
                for value in self._values:
                    if value in text:
                        break
                else:
                    return text
        for value in self._values:
            if value in text:
                text = text.replace(value, f"[redacted:{self._names[value]}]")
        if "sk-" in text:
            text = _SK.sub(_vendor, text)
        if "AIza" in text:
            text = _AIZA.sub(_vendor, text)
        low = text.lower()
        if "bearer" in low:
            text = _BEARER.sub(_bearer, text)
        for hint, pattern in _ASSIGN.items():
            if hint in low:
                text = pattern.sub(_key_assignment if hint == "key" else _assignment, text)
        return text

    # ------------------------------------------------------------ structured values

    def value(self, obj: Any) -> Any:
        """``obj`` with every string in it redacted; the same object when nothing changed."""
        if isinstance(obj, str):
            return self(obj)
        if isinstance(obj, list):
            out = [self.value(v) for v in obj]
            return obj if all(a is b for a, b in zip(out, obj)) else out
        if isinstance(obj, dict):
            changed = False
            new: dict[Any, Any] = {}
            for k, v in obj.items():
                if isinstance(k, str) and isinstance(v, str) and len(v) >= 4 and _CRED_NAME_RE.match(k):
                    nv = REDACTED
                else:
                    nv = self.value(v)
                nk = self(k) if isinstance(k, str) else k
                changed = changed or nv is not v or nk is not k
                new[nk] = nv
            return new if changed else obj
        if isinstance(obj, msgspec.Struct):
            return self.event(obj)
        return obj

    def event(self, ev: Any) -> Any:
        """A Struct (a protocol event) with every string field redacted; ``ev`` itself when none changed.

        A Struct with an ``env`` dict (an assignment) has the credentials in it redacted from
        its other fields too (its argv, its prompt)."""
        env = getattr(ev, "env", None)
        r = self.extended(credentials(env)) if isinstance(env, dict) and env else self
        changes = {}
        for name in ev.__struct_fields__:
            old = getattr(ev, name)
            new = r.value(old)
            if new is not old:
                changes[name] = new
        return msgspec.structs.replace(ev, **changes) if changes else ev


def credentials(environ: Mapping[str, str]) -> dict[str, str]:
    """The entries of ``environ`` whose names say they hold a credential (KEY, TOKEN, SECRET, PASSWORD)."""
    return {k: v for k, v in environ.items() if isinstance(v, str) and _ENV_NAME_RE.search(k)}


_current = Redactor()


def configure(environ: Mapping[str, str]) -> Redactor:
    """Install the daemon's redactor (the credentials of ``environ``); returns it."""
    global _current
    _current = Redactor.from_environ(environ)
    return _current


def current() -> Redactor:
    return _current


def redact(text: str) -> str:
    """``text`` through the installed redactor."""
    return _current(text)
