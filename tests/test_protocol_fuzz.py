"""Garbage on every decoder: typed errors only, and the daemon keeps serving.

Three layers: random bytes and mistyped bodies on a real daemon's control
socket; structured requests of every ``ControlRequest`` type (strategies
derived from the protocol's own types with ``msgspec.inspect``, filled with
extreme values) through ``wire.decode_request`` in process and then through
a real daemon; and the actor inbox, reply and event decoders in process.
"""

from __future__ import annotations

import json
import socket
import urllib.request

import msgspec
import pytest
import zmq
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from orchd import protocol as p
from orchd import wire
from tests.conftest import fake, write_plan

MAX_FRAME = 65536


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Peer:
    """A raw DEALER on the daemon's control socket."""

    def __init__(self, endpoint: str) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.linger = 0
        self.sock.connect(endpoint)

    def ask(self, *frames: bytes) -> p.Reply:
        self.sock.send_multipart(list(frames))
        assert self.sock.poll(5000), f"no reply to {frames!r:.200}"
        return wire.decode_reply(self.sock.recv())

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()


REQUEST_TYPES = [t for t in msgspec.inspect.type_info(p.ControlRequest).types]
REQUEST_KINDS = {t.tag for t in REQUEST_TYPES}
ERROR_CODES = {v for k, v in vars(p.ErrorCode).items() if k.isupper()}

VALID_BODIES = [{"kind": "status"}, {"kind": "ping"}, {"kind": "pause", "session": "s-x"},
                {"kind": "replay", "since": 0, "limit": 1}]


def _expect_code(reply: p.Reply, *codes: str) -> None:
    assert isinstance(reply.body, p.Error), reply
    assert reply.body.code in codes, reply.body


junk_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
                         lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                         max_leaves=10)


def test_fuzzed_control_messages(daemon_factory):
    port = _free_port()
    d = daemon_factory(config=f"max_frame_bytes = {MAX_FRAME}\nmetrics_port = {port}\n")
    peer = Peer(f"ipc://{d.runtime_dir}/control")
    sent = {"n": 0}
    try:
        @settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))
        @given(st.binary(max_size=300))
        def random_bytes(data):
            sent["n"] += 1
            reply = peer.ask(data)
            assert isinstance(reply.body, (p.Error, p.Pong, p.StatusReply, p.ReplayReply))
            if not data.strip().startswith(b"{"):
                _expect_code(reply, "bad_json", "invalid")

        @settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
        @given(st.sampled_from(VALID_BODIES), st.integers(1, 60))
        def truncated(body, cut):
            sent["n"] += 1
            frame = json.dumps({"v": 1, "id": "t", "body": body}).encode()
            reply = peer.ask(frame[: max(0, len(frame) - cut)])
            _expect_code(reply, "bad_json", "invalid")

        @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
        @given(st.integers().filter(lambda v: v != p.VERSION), st.sampled_from(VALID_BODIES))
        def wrong_version(v, body):
            sent["n"] += 1
            reply = peer.ask(json.dumps({"v": v, "id": "w", "body": body}).encode())
            _expect_code(reply, "bad_version", "invalid")
            if reply.body.code == "bad_version":
                assert reply.id == "w"

        @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
        @given(st.text(min_size=1, max_size=30).filter(lambda k: k not in REQUEST_KINDS))
        def unknown_kind(kind):
            sent["n"] += 1
            reply = peer.ask(json.dumps({"v": 1, "id": "u", "body": {"kind": kind}}).encode())
            _expect_code(reply, "unknown_kind")
            assert reply.id == "u"

        @settings(max_examples=500, deadline=None, suppress_health_check=list(HealthCheck))
        @given(st.sampled_from(["pause", "resume", "stop", "answer", "submit", "replay", "sync", "clean"]),
               st.dictionaries(st.sampled_from(["session", "text", "target", "since", "limit", "token", "plan"]),
                               junk_json, max_size=3))
        def mistyped(kind, fields):
            sent["n"] += 1
            reply = peer.ask(json.dumps({"v": 1, "id": "m", "body": {"kind": kind, **fields}}).encode())
            assert isinstance(reply.body, (p.Error, p.Ok, p.ReplayReply, p.SubmitReply))
            if isinstance(reply.body, p.Error):
                assert reply.body.code in ("invalid", "not_found", "bad_request", "bad_state")

        random_bytes()
        truncated()
        wrong_version()
        unknown_kind()
        mistyped()

        # frames over the size limit, empty and multi-frame messages
        big = json.dumps({"v": 1, "id": "b", "body": {"kind": "status", "session": "x" * (MAX_FRAME + 10)}}).encode()
        _expect_code(peer.ask(big), "too_large")
        _expect_code(peer.ask(b""), "bad_json")
        _expect_code(peer.ask(b"{}", b"{}"), "bad_frames")
        _expect_code(peer.ask(b"", b"", b""), "bad_frames")
        junk_10mb = b"\xff" * (10 * 1024 * 1024)
        _expect_code(peer.ask(junk_10mb), "too_large")
        sent["n"] += 6

        # after all that, normal requests still work, through the real CLI too
        reply = peer.ask(wire.encode_request(p.Ping(), "ok"))
        assert isinstance(reply.body, p.Pong) and reply.id == "ok"
        assert d.ctl("status", "--json").returncode == 0
        assert d.proc.poll() is None

        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        counted = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                      if line.startswith("orchd_bad_requests_total{"))
        assert counted >= 1500, counted
        assert d.log().count('"event": "bad_request"') >= 1500
    finally:
        peer.close()


def test_req_socket_clients_are_served_too(daemon):
    """A REQ client (with its empty delimiter frame) gets its reply."""
    ctx = zmq.Context()
    req = ctx.socket(zmq.REQ)
    req.linger = 0
    req.connect(f"ipc://{daemon.runtime_dir}/control")
    try:
        req.send(wire.encode_request(p.Ping(), "r1"))
        assert req.poll(5000)
        reply = msgspec.json.decode(req.recv())
        assert reply["body"]["kind"] == "pong" and reply["id"] == "r1"
    finally:
        req.close(0)
        ctx.term()


# ---------------------------------------------------------------- structured values
# Strategies are derived from the protocol's types (msgspec.inspect), so a
# request type or field added later is fuzzed without touching this module,
# and a field of a type not handled here fails loudly (values_for raises).

class Num(str):
    """A JSON number token written as is: json.dumps cannot write ``1e999``, ``-0.0`` or 5,000 digits."""


class Deep:
    """``depth`` nested arrays (or objects) around ``leaf``, written without recursion."""

    def __init__(self, depth: int, objects: bool, leaf: object = 0) -> None:
        self.depth, self.objects, self.leaf = depth, objects, leaf

    def __repr__(self) -> str:
        return f"Deep({self.depth}, objects={self.objects})"


def to_json(value, ascii: bool = True) -> str:
    """JSON text of ``value``; strings may hold lone surrogates (escaped when ``ascii``)."""
    if isinstance(value, Num):
        return str(value)
    if isinstance(value, Deep):
        opening, closing = ('{"a":', "}") if value.objects else ("[", "]")
        return opening * value.depth + to_json(value.leaf, ascii) + closing * value.depth
    if isinstance(value, dict):
        return "{" + ",".join(json.dumps(str(k), ensure_ascii=ascii) + ":" + to_json(v, ascii)
                              for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(to_json(v, ascii) for v in value) + "]"
    return json.dumps(value, ensure_ascii=ascii)  # NaN / Infinity come out as (invalid) JSON tokens


def frame_of(value, ascii: bool) -> bytes:
    # not ascii: a lone surrogate becomes invalid UTF-8 bytes on the wire
    return to_json(value, ascii).encode("utf-8", "surrogatepass")


EXTREME_INTS = [0, -1, 1, 2**31, 2**53 + 1, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64 - 1, 2**64,
                10**30, -(10**30)]
ints = st.integers() | st.sampled_from(EXTREME_INTS) | st.sampled_from(
    [Num("1" + "0" * 400), Num("-" + "9" * 5000), Num("18446744073709551616")])
floats = st.floats() | st.sampled_from([1e308, -1e308, 5e-324, -0.0, float("nan"), float("inf")]) | st.sampled_from(
    [Num("1e999"), Num("-1e999"), Num("1e-999"), Num("-0.0"), Num("0e0"), Num("1.7976931348623159e308")])
texts = (st.text(st.characters(exclude_categories=()), max_size=30)
         | st.sampled_from(["", "\ud800", "\udcff", "a\ud83d", "\ude00b", "\ud83d\ude00", "\x00", "\u2028",
                            "x" * 20_000, "é" * 5_000, "s-" + "0" * 8, "../..", "~", "-"]))
scalars = st.none() | st.booleans() | ints | floats | texts
deep = st.builds(Deep, st.integers(1, 1500), st.booleans(), scalars)
json_any = st.recursive(scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(texts, c, max_size=4),
                        max_leaves=12) | deep


def values_for(t: msgspec.inspect.Type, fields: dict | None = None) -> st.SearchStrategy:
    """Valid-shaped values of type ``t`` with extreme contents (they may break its constraints)."""
    I = msgspec.inspect
    if isinstance(t, I.IntType):
        return ints
    if isinstance(t, I.FloatType):
        return floats
    if isinstance(t, I.StrType):
        return texts
    if isinstance(t, I.BoolType):
        return st.booleans()
    if isinstance(t, I.NoneType):
        return st.none()
    if isinstance(t, (I.AnyType, I.RawType)):
        return json_any
    if isinstance(t, I.BytesType):  # msgpack only (the inboxes)
        return st.binary(max_size=40)
    if isinstance(t, I.LiteralType):
        return st.sampled_from(t.values) | texts
    if isinstance(t, I.ListType):
        return st.lists(values_for(t.item_type, fields), max_size=5)
    if isinstance(t, I.DictType):
        return st.dictionaries(values_for(t.key_type, fields), values_for(t.value_type, fields), max_size=5) | deep
    if isinstance(t, I.UnionType):
        return st.one_of([values_for(x, fields) for x in t.types])
    if isinstance(t, I.StructType):
        return body_for(t, fields)
    raise AssertionError(f"no strategy for {t!r}: extend values_for")


def body_for(t: msgspec.inspect.StructType, fields: dict | None = None) -> st.SearchStrategy:
    """A struct as a JSON-able dict: every required field, some optional ones, its tag; now
    and then a field replaced by junk or an unknown field added.  ``fields`` overrides a
    field's strategy by name (e.g. Submit's target)."""
    fields = fields or {}

    def strategy(f) -> st.SearchStrategy:
        return fields[f.name] if f.name in fields else values_for(f.type, fields)

    shaped = st.fixed_dictionaries({f.encode_name: strategy(f) for f in t.fields if f.required},
                                   optional={f.encode_name: strategy(f) for f in t.fields if not f.required})
    junk = st.dictionaries(st.sampled_from([f.encode_name for f in t.fields] or ["x"]) | texts, json_any, max_size=2)

    def build(body: dict, extra: dict, corrupt: bool) -> dict:
        body = {**body, **extra} if corrupt else body
        return {t.tag_field: t.tag, **body} if t.tag_field else body

    return st.builds(build, shaped, junk, st.integers(0, 9).map(lambda n: n == 0))


# the free-form fields, also in the shape the daemon reads them in
assignment_t = msgspec.inspect.type_info(p.AssignmentSpec)
LIMIT_KEYS = ["wall_time_s", "stall_s", "max_turns", "max_tokens", "max_cost_usd", "max_review_rounds",
              "max_relaunches", "backoff_cap_s"]
free_form = st.none() | st.dictionaries(texts, json_any, max_size=5) | deep
SHAPED_FIELDS = {
    "plan": free_form | st.fixed_dictionaries({"assignments": st.lists(body_for(assignment_t, {
        "agent": st.sampled_from(["command", "claude", "codex", "gemini"]) | texts,
        "name": st.sampled_from(["a", "b", "c"]) | texts,
        "after": st.lists(st.sampled_from(["a", "b", "c"]), max_size=2),
        "weight": ints | floats}), max_size=4)}),
    "limits": free_form | st.dictionaries(st.sampled_from(LIMIT_KEYS), st.none() | ints | floats | texts, max_size=4),
    "scenario": free_form | st.fixed_dictionaries({"agents": st.dictionaries(
        st.sampled_from(["*", "claude", "codex", "gemini"]),
        st.lists(st.fixed_dictionaries({}, optional={"text": texts, "http_error": ints, "stall": st.booleans(),
                                                     "match": texts}), max_size=3), max_size=2)}),
}
"""Submit's free-form fields: any JSON object, or one in the shape the daemon reads."""


def request_frames(fields: dict | None = None, version: st.SearchStrategy = st.just(p.VERSION)):
    """``(kind, frame)`` of a request envelope around a structured body of any request type."""
    fields = {**SHAPED_FIELDS, **(fields or {})}
    return st.one_of([
        st.tuples(st.just(t.tag), st.builds(lambda v, rid, body, ascii: frame_of({"v": v, "id": rid, "body": body}, ascii),
                                            version, texts, body_for(t, fields), st.booleans()))
        for t in REQUEST_TYPES])


def _check_decoded(data: bytes, max_bytes: int = 1 << 20) -> p.Request | wire.WireError:
    """The property of ``decode_request``: a Request that encodes back to itself, or a WireError
    whose error reply can be encoded; nothing else."""
    try:
        req = wire.decode_request(data, max_bytes)
    except wire.WireError as exc:
        assert exc.code in ERROR_CODES, exc
        reply = wire.decode_reply(wire.encode_reply(p.Error(code=exc.code, detail=exc.detail), exc.request_id))
        assert reply.body.code == exc.code
        return exc
    assert isinstance(req, p.Request) and req.v == p.VERSION
    assert wire.decode_request(wire.encode_request(req.body, req.id), 1 << 30) == req
    return req


# ---------------------------------------------------------------- decode_request, in process

@settings(max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck))
@given(request_frames(version=st.just(p.VERSION) | ints))
def test_every_request_type_decodes_to_a_request_or_a_typed_error(kind_frame):
    kind, frame = kind_frame
    out = _check_decoded(frame)
    if isinstance(out, p.Request):
        assert out.body.__struct_config__.tag == kind


def test_the_strategies_reach_every_request_type_valid_and_invalid():
    """The structured strategy is not all junk: each type decodes, and each type is refused, sometimes."""
    seen: dict[str, set[str]] = {}

    # derandomized: a claim about the strategy, so the same examples every run (no flakiness)
    @settings(max_examples=1200, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(request_frames())
    def collect(kind_frame):
        kind, frame = kind_frame
        out = _check_decoded(frame)
        seen.setdefault(kind, set()).add("ok" if isinstance(out, p.Request) else out.code)

    collect()
    assert set(seen) == REQUEST_KINDS
    for kind, outcomes in seen.items():
        assert "ok" in outcomes and outcomes - {"ok"}, (kind, outcomes)


def _submit_frame(body_extra: str) -> bytes:
    return ('{"v":1,"id":"q","body":{"kind":"submit","target":"/nowhere",' + body_extra + "}}").encode()


def test_deep_nesting_is_a_typed_error_at_any_depth():
    for depth in (wire.MAX_NESTING + 1, 500, 1000, 5_000, 200_000):
        for opening, closing in (("[", "]"), ('{"a":', "}")):
            for where in ("plan", "scenario", "limits"):
                data = _submit_frame(f'"{where}":{{"k":' + opening * depth + "0" + closing * depth + "}")
                exc = _check_decoded(data, 1 << 30)
                assert isinstance(exc, wire.WireError) and exc.code == "invalid", (depth, where, exc)
            # nesting in a field nobody reads, and in the envelope itself
            exc = _check_decoded(b'{"v":1,"id":"q","zz":' + (opening * depth + "0" + closing * depth).encode()
                                 + b',"body":{"kind":"ping"}}', 1 << 30)
            assert isinstance(exc, (wire.WireError, p.Request)), exc  # skipped while shallow enough
    assert isinstance(_check_decoded(_submit_frame('"plan":{"k":' + "[" * 30 + "]" * 30 + "}")), p.Request)


@pytest.mark.parametrize("number, code", [
    ("1e999", "invalid"), ("-1e999", "invalid"), ("NaN", "bad_json"), ("Infinity", "bad_json"),
    ("-Infinity", "bad_json"), (str(2**64), "invalid"), (str(-(2**63) - 1), "invalid"), ("9" * 5000, "invalid"),
])
def test_non_finite_and_out_of_range_numbers_are_refused(number, code):
    for where in ('"limits":{"wall_time_s":%s}', '"plan":{"assignments":[{"name":"a","agent":"command","weight":%s}]}',
                  '"scenario":{"agents":{"*":[{"http_error":%s}]}}'):
        exc = _check_decoded(_submit_frame(where % number))
        assert isinstance(exc, wire.WireError) and exc.code == code and exc.request_id in ("q", ""), (where, exc)
    exc = _check_decoded(b'{"v":1,"id":"q","body":{"kind":"replay","since":%s}}' % number.encode())
    assert isinstance(exc, wire.WireError) and exc.code == code


def test_extreme_but_valid_numbers_are_taken():
    for number in ("1e308", "-0.0", "5e-324", str(2**63 - 1), str(2**64 - 1), str(-(2**63))):
        req = _check_decoded(_submit_frame('"limits":{"wall_time_s":%s}' % number))
        assert isinstance(req, p.Request), (number, req)


def test_lone_surrogates_are_refused_and_never_crash_an_encoder():
    for text in ('"\\ud800"', '"\\udcff"', '"a\\ud83d"', '"\\ude00b"'):
        exc = _check_decoded(b'{"v":1,"id":"q","body":{"kind":"status","session":%s}}' % text.encode())
        assert isinstance(exc, wire.WireError) and exc.code == "bad_json", (text, exc)
    raw = '{"v":1,"id":"q","body":{"kind":"status","session":"\ud800"}}'.encode("utf-8", "surrogatepass")
    exc = _check_decoded(raw)
    assert isinstance(exc, wire.WireError) and exc.code == "bad_json"
    # a reply or an event that echoes such text goes out with U+FFFD in its place
    frame = wire.encode_reply(p.Error(code="not_found", detail="no session '\udcff\ud800x'"), "id\udcff")
    reply = wire.decode_reply(frame)
    assert reply.id == "id\ufffd" and reply.body.detail == "no session '\ufffd\ufffdx'"
    assert wire.decode_reply(wire.encode_reply(p.Pong(version=1, pid=1, last_seq=0), "\ud83d\ude00")).id == "😀"
    ev = p.WorkerStarted(pid=1, argv=["/bin/\udcff"], cwd="/tmp/\udcfe")
    pending = wire.pending_frame(wire.topic("s-1"), wire.stamp_prefix("s-1", "w\udcff", None, 0), 1.5, ev)
    _, _, _, js = wire.sequence_frame(pending, 7)
    stamp, body = wire.decode_event(js)
    assert stamp.worker == "w\ufffd" and body.argv == ["/bin/\ufffd"] and body.cwd == "/tmp/\ufffd"
    assert msgspec.json.decode(wire.event_body(ev))["argv"] == ["/bin/\ufffd"]
    # a request is the user's own text: refused, not changed
    with pytest.raises(wire.WireError, match="not valid UTF-8") as err:
        wire.encode_request(p.Submit(target="/tmp/\udcff", task="t"), "r")
    assert err.value.code == "invalid"


def test_oversize_frames_are_too_large_before_any_parsing():
    frame = _submit_frame('"task":"' + "x" * 100 + '"')
    assert isinstance(_check_decoded(frame, len(frame)), p.Request)
    exc = _check_decoded(frame, len(frame) - 1)
    assert isinstance(exc, wire.WireError) and exc.code == "too_large"
    assert isinstance(_check_decoded(b"[" * 100_000, 1000), wire.WireError)


def test_wire_error_is_a_decode_error_so_existing_handlers_catch_it():
    with pytest.raises(msgspec.DecodeError):
        wire.decode_event(b'{"seq":1,"ts":0,"kind":"agent.output","data":' + b"[" * 5000 + b"]" * 5000 + b"}")


# ---------------------------------------------------------------- replies and events, in process

reply_types = msgspec.inspect.type_info(p.ControlReply).types
event_types = msgspec.inspect.type_info(p.Event).types
stamp_t = msgspec.inspect.type_info(p.Stamp)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.one_of([body_for(t) for t in reply_types]) | json_any, texts, st.booleans() | st.binary(max_size=200))
def test_decode_reply_gives_a_reply_or_a_wire_error(body, rid, mode):
    data = mode if isinstance(mode, bytes) else frame_of({"v": 1, "id": rid, "body": body}, mode)
    try:
        reply = wire.decode_reply(data)
    except wire.WireError as exc:
        assert exc.code in ERROR_CODES
    else:
        assert isinstance(reply, p.Reply)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(body_for(stamp_t), st.one_of([body_for(t) for t in event_types]), st.booleans() | st.binary(max_size=200))
def test_decode_event_gives_an_event_or_a_wire_error(stamp, body, mode):
    data = mode if isinstance(mode, bytes) else frame_of({**stamp, **body}, mode)
    try:
        stamp_d, ev = wire.decode_event(data)
    except wire.WireError as exc:
        assert exc.code in ERROR_CODES
    else:
        assert isinstance(stamp_d, p.Stamp) and isinstance(ev, p.Ev)
        assert wire.decode_event(b'{"seq":1,"ts":0,' + wire.event_body(ev)[1:])[1] == ev


# ---------------------------------------------------------------- actor inboxes (msgpack), in process

INBOXES = {"journal": (wire.journal_inbox, p.JournalInbox), "supervisor": (wire.supervisor_inbox, p.SupervisorInbox),
           "worker": (wire.worker_inbox, p.WorkerInbox), "daemon": (wire.daemon_inbox, p.DaemonInbox)}
_DEEP_MARK = "\x00deep\x00"
_mp = msgspec.msgpack.Encoder()


def _msgpack_plain(value):
    """``value`` made msgpack-able: Num → a number, ints clamped to msgpack's range, lone
    surrogates replaced, a Deep → a marker that ``_msgpack_frame`` splices deep arrays into."""
    if isinstance(value, Num):
        try:
            return _msgpack_plain(int(value))
        except ValueError:
            return float(value)
    if isinstance(value, Deep):
        return _DEEP_MARK
    if isinstance(value, (bool, float, bytes)) or value is None:
        return value
    if isinstance(value, int):
        return max(-(2**63), min(value, 2**64 - 1))
    if isinstance(value, str):
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if isinstance(value, dict):
        return {_msgpack_plain(k): _msgpack_plain(v) for k, v in value.items()}
    return [_msgpack_plain(v) for v in value]


def _msgpack_frame(value, depth: int) -> bytes:
    return _mp.encode(_msgpack_plain(value)).replace(_mp.encode(_DEEP_MARK), b"\x91" * depth + b"\xc0")


def inbox_values(union):
    return st.one_of([body_for(t) for t in msgspec.inspect.type_info(union).types])


@pytest.mark.parametrize("name", sorted(INBOXES))
def test_inbox_decoders_take_any_bytes(name):
    decoder, union = INBOXES[name]

    @settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
    @given(inbox_values(union) | json_any, st.integers(1, 5000), st.integers(0, 64), st.binary(max_size=300),
           st.sampled_from(["msg", "truncated", "bytes", "spliced"]))
    def check(value, depth, cut, junk, mode):
        whole = _msgpack_frame(value, depth)
        data = {"msg": whole, "truncated": whole[:max(0, len(whole) - cut)], "bytes": junk,
                "spliced": whole[:cut] + junk + whole[cut:]}[mode]
        try:
            msg = decoder.decode(data)
        except wire.WireError as exc:
            assert exc.code in ERROR_CODES and exc.detail.startswith(name)
        else:
            assert isinstance(msg, p.Msg)
            assert decoder.decode(wire.pack(msg)) == msg

    check()


def test_inbox_decoders_refuse_deep_and_malformed_messages():
    for decoder, _ in INBOXES.values():
        for data in (b"\x91" * 200_000 + b"\xc0", b"\x81\xa4kind" + b"\x91" * 200_000 + b"\xc0", b"\xc1", b"",
                     b"\xa2\xff\xfe", b"\xdd\xff\xff\xff\xff", b"\xc7\x01\x05x"):
            with pytest.raises(wire.WireError) as err:
                decoder.decode(data)
            assert err.value.code == "invalid"
    assert wire.journal_inbox.decode(wire.pack(p.Append(frames=[b"x"]))) == p.Append(frames=[b"x"])


# ---------------------------------------------------------------- every request type, on a real daemon

def _log_is_clean(d) -> None:
    log = d.log()
    assert "Traceback" not in log, log[-5000:]
    assert '"actor_crashed"' not in log and '"actor_restarting"' not in log, log[-5000:]


def test_every_request_type_fuzzed_against_a_daemon(daemon_factory, git_repo, tmp_path):
    """Structured requests of every type with extreme values: each gets a typed reply, no actor
    crashes, the daemon still answers ``ping`` and shuts down cleanly.  Submit only ever names
    targets that cannot hold a session (missing, a file, relative, not a git repository), so no
    fuzzed request creates one; one real session exists, so session commands reach a session."""
    d = daemon_factory(config=f"max_frame_bytes = {MAX_FRAME}\n")
    peer = Peer(f"ipc://{d.runtime_dir}/control")
    plan = write_plan(tmp_path / "plan.json", [{"name": "long", "agent": "command", "argv": fake("hang")}])
    sid = d.ctl_json("submit", "--plan", str(plan), "--target", str(git_repo))["session"]
    plain = tmp_path / "not-a-repo"
    plain.mkdir()
    (tmp_path / "a-file").write_text("x")
    targets = st.sampled_from([str(plain), str(plain / "missing"), str(tmp_path / "a-file"), "relative/dir", "",
                               "/nonexistent/x", "/"])
    outcomes: dict[str, set[str]] = {}
    try:
        # No shrinking: a failure depends on what the daemon was sent before, and each
        # request that gets no reply costs the whole reply deadline.
        @settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck),
                  phases=[Phase.explicit, Phase.generate])
        @given(request_frames({"target": targets, "session": texts | st.just(sid)}))
        def send(kind_frame):
            kind, frame = kind_frame
            peer.sock.send(frame)
            assert peer.sock.poll(5000), f"no reply to this {kind} request: {frame!r:.500}\n{d.log()[-3000:]}"
            body = wire.decode_reply(peer.sock.recv()).body
            if isinstance(body, p.Error):
                assert body.code in ERROR_CODES, body
                outcomes.setdefault(kind, set()).add(body.code)
            else:
                assert isinstance(body, (p.Ok, p.Pong, p.StatusReply, p.ReplayReply, p.ReviewsReply,
                                         p.RecoveriesReply, p.HostsReply)), (kind, body)
                outcomes.setdefault(kind, set()).add(body.__struct_config__.tag)

        send()
        assert set(outcomes) == REQUEST_KINDS, outcomes
        internal = {kind for kind, codes in outcomes.items() if "internal" in codes}
        assert internal <= KNOWN_INTERNAL, (internal, outcomes)
        reply = peer.ask(wire.encode_request(p.Ping(), "after"))
        assert isinstance(reply.body, p.Pong) and reply.id == "after"
        assert [s["id"] for s in d.ctl_json("status")["sessions"]] == [sid]  # no fuzzed submit made a session
        _log_is_clean(d)
    finally:
        peer.close()
    d.ctl("stop", sid, check=False)
    assert d.stop() == 0, d.log()[-3000:]
    _log_is_clean(d)


KNOWN_INTERNAL: set[str] = set()
"""Request kinds the daemon may answer ``internal`` (none)."""


def _chain_plan(n: int) -> dict:
    """``n`` assignments, each waiting for the next: one long ``after`` chain."""
    return {"assignments": [{"name": f"a{i}", "agent": "command", "argv": ["x"],
                             "after": [f"a{i + 1}"] if i < n - 1 else []} for i in range(n)]}


# Requests that once got no reply: the supervisor raised while serving them (found by the fuzzing
# above).  Each must get a typed error now.
DAEMON_BUGS = [
    pytest.param(p.Submit(target="~no-such-user-orchd/x", task="t"), "bad_request", id="target-unknown-user"),
    pytest.param(p.Submit(target="~a\x00b", task="t"), "bad_request", id="target-nul-after-tilde"),
    pytest.param(p.Submit(target="/" + "x" * 5000, task="t"), "bad_request", id="target-name-too-long"),
    pytest.param(p.Submit(target="/", plan=_chain_plan(3000)), "bad_request", id="plan-after-chain-3000"),
    pytest.param(p.InjectFault(actor="journal"), "bad_state", id="inject-fault-not-enabled"),
]


@pytest.mark.parametrize("body, code", DAEMON_BUGS)
def test_requests_that_once_crashed_the_supervisor_get_typed_errors(daemon_factory, body, code):
    d = daemon_factory()
    peer = Peer(f"ipc://{d.runtime_dir}/control")
    try:
        peer.sock.send(wire.encode_request(body, "bug"))
        assert peer.sock.poll(3000), "no reply"
        reply = wire.decode_reply(peer.sock.recv())
        assert isinstance(reply.body, p.Error) and reply.body.code == code, reply
        _log_is_clean(d)
    finally:
        peer.close()


def test_extreme_plan_weights_never_make_status_unreadable(daemon, git_repo):
    """Either the plan is refused, or its session's status stays readable (a finite progress)."""
    plan = {"assignments": [{"name": n, "agent": "command", "weight": 1e308, "argv": fake("exit:0")} for n in "ab"]}
    peer = Peer(f"ipc://{daemon.runtime_dir}/control")
    try:
        reply = peer.ask(wire.encode_request(p.Submit(target=str(git_repo), plan=plan), "w"))
    finally:
        peer.close()
    if isinstance(reply.body, p.Error):
        assert reply.body.code == "bad_request", reply
        return
    sid = reply.body.session
    res = daemon.ctl("watch", sid, "--until-done", "--json", check=False)
    assert res.returncode == 0, res.stderr.decode()
    assert daemon.status(sid)["progress"] == 1.0
