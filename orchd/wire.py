"""The only place that encodes and decodes wire types.

Encoders and decoders are built once at import.  ``decode_request`` turns
any bytes into either a ``Request`` or a ``WireError`` carrying the stable
error code to reply with; it never raises anything else.
"""

from __future__ import annotations

import msgspec

from orchd import protocol as p

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


class WireError(Exception):
    """A peer sent something that is not a valid message (not our bug)."""

    def __init__(self, code: str, detail: str, request_id: str = "") -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
        self.request_id = request_id


def encode(obj: msgspec.Struct) -> bytes:
    return _json_enc.encode(obj)


def encode_request(body: p.ControlRequest, request_id: str) -> bytes:
    return _json_enc.encode(p.Request(v=p.VERSION, id=request_id, body=body))


def encode_reply(body: p.ControlReply, request_id: str) -> bytes:
    return _json_enc.encode(p.Reply(v=p.VERSION, id=request_id, body=body))


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
    if head.v != p.VERSION:
        raise WireError(p.ErrorCode.BAD_VERSION, f"protocol version {head.v} is not supported (this daemon speaks {p.VERSION})", head.id)
    try:
        return _req_dec.decode(data)
    except msgspec.ValidationError as exc:
        msg = str(exc)
        code = p.ErrorCode.UNKNOWN_KIND if "$.body.kind" in msg and "Invalid value" in msg else p.ErrorCode.INVALID
        raise WireError(code, msg, head.id) from None
    except msgspec.DecodeError as exc:  # pragma: no cover - head decoded, so JSON is sound
        raise WireError(p.ErrorCode.BAD_JSON, str(exc), head.id) from None


def decode_reply(data: bytes) -> p.Reply:
    """Decode a reply (client side); a malformed one raises ``WireError``."""
    try:
        return _rep_dec.decode(data)
    except msgspec.DecodeError as exc:
        raise WireError(p.ErrorCode.BAD_JSON, f"malformed reply from daemon: {exc}") from None


# ---------------------------------------------------------------- events

def event_body(ev: p.Ev) -> bytes:
    """JSON of an event body: ``{"kind":...,...}``."""
    return _json_enc.encode(ev)


def stamp_prefix(session: str | None, worker: str | None, agent: str | None, gen: int) -> bytes:
    """The constant part of a producer's stamp, spliced into every event it emits.

    Returns the JSON members (with a trailing comma) that follow ``"ts"``.
    """
    return (
        b'"session":' + _json_enc.encode(session)
        + b',"worker":' + _json_enc.encode(worker)
        + b',"agent":' + _json_enc.encode(agent)
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
    head_ts = b"\"ts\":%.6f," % ts
    enc = _json_enc.encode
    return [b"%s %s %s%s%s" % (topic_b, ev.__struct_config__.tag.encode(), head_ts, stamp, enc(ev)[1:])
            for ev in events]


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
    """Decode a published event's JSON into its stamp and body."""
    return _stamp_dec.decode(js), _event_dec.decode(js)


SYNC_TOPIC = b"~sync"


# ---------------------------------------------------------------- actor inboxes (msgpack)

_mp_enc = msgspec.msgpack.Encoder()
journal_inbox = msgspec.msgpack.Decoder(p.JournalInbox)
supervisor_inbox = msgspec.msgpack.Decoder(p.SupervisorInbox)
worker_inbox = msgspec.msgpack.Decoder(p.WorkerInbox)


def pack(msg: p.Msg) -> bytes:
    return _mp_enc.encode(msg)
