"""The only place that encodes and decodes wire types.

Theory of operation
-------------------
Encoders and decoders are built once at import.  Every decoder turns any
input into either its typed message or a ``WireError`` carrying the stable
``ErrorCode`` to reply with; it never raises anything else, whatever a peer
sends: malformed JSON or msgpack, strings that are not UTF-8 (msgspec
raises ``UnicodeDecodeError`` for those), fields of the wrong type, nesting deep
enough to exhaust msgspec's recursion guard (``RecursionError``), numbers
out of range.  ``WireError`` is a ``msgspec.DecodeError``, so a caller that
catches msgspec's error catches it too.

A control request is checked beyond its schema as well: its free-form
fields (a plan, a scenario, limits) may nest at most ``MAX_NESTING`` levels
and hold only finite numbers in the 64-bit range, so nothing a client sends
can later fail to encode, overflow SQLite, or exhaust the stack of an actor
that re-encodes it.

Encoders never fail on text: a string holding a lone surrogate (a file name
decoded with ``surrogateescape``, say) is not valid UTF-8, so a reply or an
event that holds one goes out with U+FFFD in its place.  A request is the
client's own input, so ``encode_request`` refuses it with a ``WireError``
instead of changing what the user typed.
"""

from __future__ import annotations

import math
from typing import Any

import msgspec

from orchd import protocol as p

MAX_NESTING = 32
"""How deep lists and objects may nest inside one field of a control request."""
INT_MIN, INT_MAX = -(2**63), 2**64 - 1
"""The integers a request may carry: what msgpack, SQLite and most JSON readers hold."""

_json_enc = msgspec.json.Encoder()
_req_dec = msgspec.json.Decoder(p.Request)
_rep_dec = msgspec.json.Decoder(p.Reply)
_event_dec = msgspec.json.Decoder(p.Event)
_stamp_dec = msgspec.json.Decoder(p.Stamp)


class _Head(msgspec.Struct):
    """Just enough of an envelope to report version and id errors precisely."""

    v: int
    id: str = ""
    body: msgspec.Raw = msgspec.Raw(b"")


_head_dec = msgspec.json.Decoder(_Head)


class WireError(msgspec.DecodeError):
    """A peer sent something that is not a valid message (not our bug).

    ``code`` is one of ``protocol.ErrorCode``; ``request_id`` is the
    request's id when it could be read, else ``""``.
    """

    def __init__(self, code: str, detail: str, request_id: str = "") -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
        self.request_id = request_id


_TOO_DEEP = "nested too deeply to decode"


def _not_utf8(exc: UnicodeDecodeError) -> str:
    # msgspec raises UnicodeDecodeError (not a DecodeError) for a string that is not UTF-8
    return f"a string is not valid UTF-8 ({exc.reason})"


def _fix_text(s: str) -> str:
    """``s`` with every lone surrogate replaced by U+FFFD (paired ones become their character)."""
    return s.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def _scrubbed(value: Any) -> Any:
    """Builtins (from ``msgspec.to_builtins``) with every string made valid UTF-8."""
    if isinstance(value, str):
        return _fix_text(value)
    if isinstance(value, dict):
        return {_scrubbed(k): _scrubbed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrubbed(v) for v in value]
    return value


def _encode_text_safe(obj: Any) -> bytes:
    """JSON of ``obj``; strings that are not valid UTF-8 are repaired, not fatal."""
    try:
        return _json_enc.encode(obj)
    except UnicodeEncodeError:
        return _json_enc.encode(_scrubbed(msgspec.to_builtins(obj, builtin_types=(msgspec.Raw,))))


def encode(obj: msgspec.Struct) -> bytes:
    return _encode_text_safe(obj)


def encode_request(body: p.ControlRequest, request_id: str) -> bytes:
    """A request's frame; ``WireError`` (``invalid``) if its text is not valid UTF-8."""
    try:
        return _json_enc.encode(p.Request(v=p.VERSION, id=request_id, body=body))
    except UnicodeEncodeError as exc:
        raise WireError(p.ErrorCode.INVALID, f"the request holds text that is not valid UTF-8 (a lone surrogate "
                                             f"at character {exc.start} of {exc.object[:80]!r})") from None


def encode_reply(body: p.ControlReply, request_id: str) -> bytes:
    """A reply's frame; never fails (text that is not valid UTF-8 is repaired)."""
    return _encode_text_safe(p.Reply(v=p.VERSION, id=request_id, body=body))


def decode_request(data: bytes, max_bytes: int) -> p.Request:
    """Decode one control frame, or raise ``WireError`` with the code to reply."""
    if len(data) > max_bytes:
        raise WireError(p.ErrorCode.TOO_LARGE, f"frame of {len(data)} bytes is over the limit of {max_bytes}")
    try:
        head = _head_dec.decode(data)
    except msgspec.ValidationError as exc:
        raise WireError(p.ErrorCode.INVALID, f"envelope: {exc}") from None
    except msgspec.DecodeError as exc:
        raise WireError(p.ErrorCode.BAD_JSON, str(exc)) from None
    except UnicodeDecodeError as exc:
        raise WireError(p.ErrorCode.BAD_JSON, _not_utf8(exc)) from None
    except RecursionError:
        raise WireError(p.ErrorCode.INVALID, f"the frame is {_TOO_DEEP}") from None
    if head.v != p.VERSION:
        shown = str(head.v) if abs(head.v) < 10**20 else "out of range"
        raise WireError(p.ErrorCode.BAD_VERSION,
                        f"protocol version {shown} is not supported (this daemon speaks {p.VERSION})", head.id)
    try:
        req = _req_dec.decode(data)
    except msgspec.ValidationError as exc:
        msg = str(exc)
        code = p.ErrorCode.UNKNOWN_KIND if "$.body.kind" in msg and "Invalid value" in msg else p.ErrorCode.INVALID
        raise WireError(code, msg, head.id) from None
    except msgspec.DecodeError as exc:  # pragma: no cover - head decoded, so JSON is sound
        raise WireError(p.ErrorCode.BAD_JSON, str(exc), head.id) from None
    except UnicodeDecodeError as exc:  # in the body: the head decoder only skipped it
        raise WireError(p.ErrorCode.BAD_JSON, _not_utf8(exc), head.id) from None
    except RecursionError:  # pragma: no cover - the head decoder recursed as deep
        raise WireError(p.ErrorCode.INVALID, f"the frame is {_TOO_DEEP}", head.id) from None
    problem = _check_values(req.body)
    if problem is not None:
        raise WireError(p.ErrorCode.INVALID, problem, head.id)
    return req


def _check_values(body: msgspec.Struct) -> str | None:
    """Why a decoded request's values cannot be taken (see the module docstring), or None.

    Iterative, so a deep value cannot exhaust the stack here either.
    """
    stack: list[tuple[Any, str, int]] = [
        (getattr(body, name), f"$.body.{name}", 0) for name in body.__struct_fields__]
    while stack:
        value, where, depth = stack.pop()
        if isinstance(value, bool) or value is None or isinstance(value, str):
            continue
        if isinstance(value, int):
            if not INT_MIN <= value <= INT_MAX:
                return f"integer out of the 64-bit range at `{where}`"
        elif isinstance(value, float):
            if not math.isfinite(value):
                return f"number is not finite at `{where}`"
        elif isinstance(value, (dict, list)):
            if depth >= MAX_NESTING:
                return f"`{where}` nests deeper than {MAX_NESTING} levels"
            items = value.items() if isinstance(value, dict) else enumerate(value)
            stack.extend((v, f"{where}[{k!r}]" if isinstance(value, dict) else f"{where}[{k}]", depth + 1)
                         for k, v in items)
    return None


def decode_reply(data: bytes) -> p.Reply:
    """Decode a reply (client side); a malformed one raises ``WireError``."""
    return _decode(_rep_dec, data, "malformed reply from daemon", invalid=p.ErrorCode.BAD_JSON,
                   too_deep=p.ErrorCode.BAD_JSON)


def _decode(dec, data: bytes, what: str, *, invalid: str = p.ErrorCode.INVALID,
            malformed: str = p.ErrorCode.BAD_JSON, too_deep: str = p.ErrorCode.INVALID):
    """``dec.decode(data)``, any failure as a ``WireError`` whose detail starts with ``what``.

    ``invalid``: the code for a schema mismatch; ``malformed``: for bytes that do
    not parse (bad syntax, invalid UTF-8); ``too_deep``: for nesting that exhausts
    the decoder's recursion.
    """
    try:
        return dec.decode(data)
    except msgspec.ValidationError as exc:
        raise WireError(invalid, f"{what}: {exc}") from None
    except msgspec.DecodeError as exc:
        raise WireError(malformed, f"{what}: {exc}") from None
    except UnicodeDecodeError as exc:
        raise WireError(malformed, f"{what}: {_not_utf8(exc)}") from None
    except RecursionError:
        raise WireError(too_deep, f"{what}: {_TOO_DEEP}") from None


# ---------------------------------------------------------------- events

def event_body(ev: p.Ev) -> bytes:
    """JSON of an event body: ``{"kind":...,...}``."""
    return _encode_text_safe(ev)


def stamp_prefix(session: str | None, worker: str | None, agent: str | None, gen: int) -> bytes:
    """The constant part of a producer's stamp, spliced into every event it emits.

    Returns the JSON members (with a trailing comma) that follow ``"ts"``.
    """
    return (
        b'"session":' + _encode_text_safe(session)
        + b',"worker":' + _encode_text_safe(worker)
        + b',"agent":' + _encode_text_safe(agent)
        + b',"gen":' + str(int(gen)).encode() + b","
    )


def topic(session: str | None) -> bytes:
    return (session or "-").encode()


def pending_frame(topic_b: bytes, stamp: bytes, ts: float, ev: p.Ev) -> bytes:
    """A not-yet-sequenced frame: ``<topic> <kind> "ts":T,<stamp>"kind":...}``.

    The journal completes it with ``{"seq":N,`` (see ``sequence_frame``).
    """
    return pending_frames(topic_b, stamp, ts, (ev,))[0]


def pending_frames(topic_b: bytes, stamp: bytes, ts: float, events) -> list[bytes]:
    """``pending_frame`` for several events sharing one timestamp (one chunk of output)."""
    return frames_of(topic_b, stamp, ts, events, event_bodies(events))


def event_bodies(events) -> list[bytes]:
    """Each event's JSON, as ``frames_of`` splices it: all an event's own text is in it (the rest
    of a frame is its producer's stamp), so a producer checks these for secrets
    (``actors.worker``)."""
    try:
        return [_json_enc.encode(ev) for ev in events]
    except UnicodeEncodeError:  # rare (a path decoded with surrogateescape): repair, do not fail
        return [_encode_text_safe(ev) for ev in events]


def frames_of(topic_b: bytes, stamp: bytes, ts: float, events, bodies: list[bytes]) -> list[bytes]:
    """``pending_frames`` of ``events`` whose ``event_bodies`` are ``bodies``."""
    head_ts = b"\"ts\":%.6f," % ts
    return [b"%s %s %s%s%s" % (topic_b, ev.__struct_config__.tag.encode(), head_ts, stamp, body[1:])
            for ev, body in zip(events, bodies)]


def append_one(session: str | None, ev: p.Ev, ts: float, worker: str | None = None,
               agent: str | None = None, gen: int = 0) -> bytes:
    """One event, stamped and packed as the journal's ``Append`` (what every producer but
    the worker, which frames whole chunks, sends)."""
    return pack(p.Append(frames=[pending_frame(topic(session), stamp_prefix(session, worker, agent, gen), ts, ev)]))


def sequence_frame(pending: bytes, seq: int,
                   last_of: dict[bytes, int] | None = None) -> tuple[bytes, bytes, bytes, bytes]:
    """Complete a pending frame with its seq (and, given ``last_of``, its session's ``prev``).

    Returns ``(frame, topic, kind, json)`` where frame is what goes on PUB.
    ``last_of`` maps a session topic to the seq of that session's last event:
    a session event then gets ``"prev":M`` right after its seq (M is 0 for a
    session not in the map) and becomes its session's last, moved to the
    end of the map, so the map's order is least recently used first.
    Daemon-wide events (topic ``-``) get no ``prev``.
    Raises ``ValueError`` for a malformed pending frame (our bug, not a peer's).
    """
    t_end = pending.index(b" ")
    k_end = pending.index(b" ", t_end + 1)
    topic = pending[:t_end]
    if last_of is None or topic == b"-":
        js = b'{"seq":%d,%s' % (seq, pending[k_end + 1:])
    else:
        js = b'{"seq":%d,"prev":%d,%s' % (seq, last_of.pop(topic, 0), pending[k_end + 1:])
        last_of[topic] = seq
    return pending[: k_end + 1] + js, topic, pending[t_end + 1:k_end], js


def forget_oldest(last_of: dict[bytes, int], keep: int) -> None:
    """Bound a ``sequence_frame`` map to its ``keep`` most recently used sessions."""
    for _ in range(len(last_of) - keep):
        del last_of[next(iter(last_of))]


def split_frame(frame: bytes) -> tuple[bytes, bytes, bytes]:
    """``<topic> <kind> <json>`` → (topic, kind, json)."""
    t, k, js = frame.split(b" ", 2)
    return t, k, js


def decode_event(js: bytes) -> tuple[p.Stamp, p.Ev]:
    """Decode a published event's JSON into its stamp and body, or raise ``WireError``."""
    return _decode(_stamp_dec, js, "event"), _decode(_event_dec, js, "event")


SYNC_TOPIC = b"~sync"


# ---------------------------------------------------------------- actor inboxes (msgpack)

_mp_enc = msgspec.msgpack.Encoder()


class InboxDecoder:
    """Decodes one actor inbox's msgpack messages: ``decode(raw)`` returns a
    message of the inbox's union or raises ``WireError`` (code ``invalid``),
    never anything else, so an actor catches exactly one error type."""

    def __init__(self, inbox: Any, name: str) -> None:
        self._dec = msgspec.msgpack.Decoder(inbox)
        self.name = name

    def decode(self, raw: bytes) -> p.Msg:
        return _decode(self._dec, raw, f"{self.name} inbox", malformed=p.ErrorCode.INVALID)

    def __repr__(self) -> str:
        return f"InboxDecoder({self.name})"


journal_inbox = InboxDecoder(p.JournalInbox, "journal")
supervisor_inbox = InboxDecoder(p.SupervisorInbox, "supervisor")
worker_inbox = InboxDecoder(p.WorkerInbox, "worker")
daemon_inbox = InboxDecoder(p.DaemonInbox, "daemon")


def pack(msg: p.Msg) -> bytes:
    return _mp_enc.encode(msg)
host_inbound = InboxDecoder(p.HostInbound, "host link")      # what agent hosts send the supervisor
host_outbound = InboxDecoder(p.HostOutbound, "agent host")   # what the supervisor sends an agent host
