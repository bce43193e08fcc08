"""Garbage on the control socket: typed errors, a warning, a counter, and the daemon keeps serving."""

from __future__ import annotations

import json
import socket
import urllib.request

import msgspec
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchd import protocol as p
from orchd import wire

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
        @given(st.text(min_size=1, max_size=30).filter(
            lambda k: k not in {"ping", "submit", "status", "pause", "resume", "stop", "review", "answer",
                                "clean", "replay", "sync"}))
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
