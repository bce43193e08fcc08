"""The control socket's plumbing: framing, decoding, typed errors, replies.

``ControlSocket`` owns the control ROUTER (made by ``orchd.bus``).  Its
owner reads ``requests()`` — each a ``Call`` (who asked, what) — decides,
and answers with ``reply(call, body)``, now or later: a call can be kept
while slow work (git, a log read) runs elsewhere and answered when the
result comes back as a message, so the owner's loop never waits.

A frame that is not a valid request is answered here with a typed
``Error`` (``bad_frames``, ``too_large``, ``bad_json``, ``bad_version``,
``unknown_kind``, ``invalid``), counted and logged once as a warning; the
owner never sees it.  Each reply logs one ``request`` line (kind, id,
duration in ms, outcome; debug level for a successful ping, sync or
replay, which clients send in loops) and observes
``orchd_control_request_seconds{kind}``.  Replies are sent without
blocking: a client that stops reading loses replies beyond a small
per-peer queue (``bus.CONTROL_SNDHWM``) instead of growing the daemon.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import msgspec
import zmq
import zmq.asyncio

from orchd import bus, log, metrics, wire
from orchd import protocol as p
from orchd.actor import sync_view

_log = log.get("orchd.control")

QUIET_KINDS = frozenset({"replay", "sync", "ping"})
"""Requests logged at debug level when they succeed: clients send them in loops."""


@dataclass(frozen=True)
class Call:
    """One request waiting for its reply."""

    ident: bytes
    delim: tuple[bytes, ...]  # b"" for a REQ client's envelope, else empty
    request_id: str
    body: p.ControlRequest
    received_at: float        # monotonic

    @property
    def kind(self) -> str:
        return self.body.__struct_config__.tag


class ControlSocket:
    def __init__(self, ctx: zmq.asyncio.Context, endpoint: str, max_frame_bytes: int, **remote) -> None:
        # ``remote``: ``curve`` and ``curve_endpoints`` for bus.control_router (orchd.remote.control_binding)
        self.sock = bus.control_router(ctx, endpoint, max_frame_bytes, **remote)
        self.raw = sync_view(self.sock)
        self.max_frame_bytes = max_frame_bytes

    def requests(self, limit: int = 200) -> list[Call]:
        """Valid requests waiting now (bad ones are answered here)."""
        calls = []
        for _ in range(limit):
            try:
                frames = self.raw.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            call = self._parse(frames)
            if call is not None:
                calls.append(call)
        return calls

    def _parse(self, frames: list[bytes]) -> Call | None:
        ident, rest = frames[0], frames[1:]
        delim: tuple[bytes, ...] = ()
        if len(rest) == 2 and rest[0] == b"":  # a REQ client: keep its envelope delimiter
            delim, rest = (b"",), rest[1:]
        if len(rest) != 1:
            self._reject(ident, delim, p.ErrorCode.BAD_FRAMES, f"expected one frame per request, got {len(rest)}", "")
            return None
        try:
            req = wire.decode_request(rest[0], self.max_frame_bytes)
        except wire.WireError as exc:
            self._reject(ident, delim, exc.code, exc.detail, exc.request_id)
            return None
        except RecursionError:  # msgspec recurses once per nesting level
            self._reject(ident, delim, p.ErrorCode.BAD_JSON, "JSON nested too deeply", "")
            return None
        call = Call(ident=ident, delim=delim, request_id=req.id, body=req.body, received_at=time.monotonic())
        metrics.requests.labels(call.kind).inc()
        return call

    def _reject(self, ident: bytes, delim: tuple[bytes, ...], code: str, detail: str, request_id: str) -> None:
        metrics.bad_requests.labels(code).inc()
        metrics.bad_messages.labels("control", code).inc()
        _log.warning("bad_request", code=code, detail=detail[:200])
        self._send(ident, delim, p.Error(code=code, detail=detail), request_id)

    def reply(self, call: Call, body: p.ControlReply) -> None:
        """Send the reply, and log one line for the request with how long it took."""
        self._send(call.ident, call.delim, body, call.request_id)
        took_s = time.monotonic() - call.received_at
        kind = call.kind
        metrics.control_seconds.labels(kind).observe(took_s)
        if isinstance(body, p.Error):
            _log.info("request", kind=kind, id=call.request_id[:64], ms=round(took_s * 1000, 3), outcome="error",
                      code=body.code)
        elif kind in QUIET_KINDS:  # a watcher's sync and paging, every few ms while it catches up
            _log.debug("request", kind=kind, id=call.request_id[:64], ms=round(took_s * 1000, 3), outcome="ok")
        else:
            _log.info("request", kind=kind, id=call.request_id[:64], ms=round(took_s * 1000, 3), outcome="ok")

    def _send(self, ident: bytes, delim: tuple[bytes, ...], body: p.ControlReply, request_id: str) -> None:
        try:
            data = wire.encode_reply(body, request_id)
        except (msgspec.EncodeError, UnicodeEncodeError, OverflowError) as exc:  # e.g. a lone surrogate echoed from the request
            data = wire.encode_reply(p.Error(code=p.ErrorCode.INVALID, detail=f"reply not encodable: {exc}"), "")
        try:
            self.raw.send_multipart([ident, *delim, data], zmq.NOBLOCK, copy=False)
        except zmq.Again:
            metrics.bad_requests.labels("reply_dropped").inc()
            _log.warning("reply_dropped", reason="the client is not reading its replies")

    def close(self) -> None:
        self.sock.close(linger=0)

