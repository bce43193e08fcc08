"""The HTTP bridge's side of ZeroMQ: its control DEALER, its events SUB, and the SSE clients' queues.

``ControlLink`` lets many HTTP handlers wait on the one DEALER at once (each
request has an id and a deadline).  ``Hub`` reads the events SUB, syncs it
once (Clone pattern) and hands every event to each ``SseClient`` without
waiting: a client whose bounded queue is full is dropped, its connection
aborted, and its browser resumes from ``Last-Event-ID``.  See ``orchd.web``.
"""

from __future__ import annotations

import asyncio
import collections
import secrets
import time

import msgspec
import zmq
from aiohttp import web

from orchctl.cursor import Item
from orchd import bus, log, metrics, protocol as p, wire
from orchd.actor import sync_view

_log = log.get("orchd.web")

CALL_TIMEOUT_S = 10.0
SYNC_DEADLINE_S = 5.0
SSE_QUEUE = 10_000       # live events queued per SSE client before it is dropped (a few MiB at most)
SUB_HWM = 100_000


class DaemonTimeout(Exception):
    """The daemon did not answer a control request within its deadline."""


class _Stamp(msgspec.Struct):
    seq: int
    prev: int = 0
    session: str | None = None


_stamp = msgspec.json.Decoder(_Stamp)


DRAIN_MAX = 1000  # frames taken per wake-up of the bridge's SUB


def event_item(js: bytes) -> Item:
    st = _stamp.decode(js)
    return Item(st.seq, st.prev, (js, st.session))


class ControlLink:
    """A DEALER to the control socket; ``call`` may be awaited by many tasks at once."""

    def __init__(self, ctx, endpoint: str, curve=None) -> None:
        self.sock = bus.control_dealer(ctx, endpoint, curve=curve)  # curve: orchd.keys.ClientCurve (remote)
        self._pending: dict[str, asyncio.Future] = {}

    async def run(self) -> None:
        while True:
            raw = await self.sock.recv()
            try:
                reply = wire.decode_reply(raw)
            except wire.WireError as exc:
                _log.warning("bad_reply", error=str(exc))
                continue
            fut = self._pending.pop(reply.id, None)
            if fut is not None and not fut.done():
                fut.set_result(reply.body)

    async def call(self, body: p.ControlRequest, timeout_s: float = CALL_TIMEOUT_S) -> p.ControlReply:
        rid = secrets.token_hex(8)
        fut = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        try:
            await self.sock.send(wire.encode_request(body, rid))
            return await asyncio.wait_for(fut, timeout_s)
        except TimeoutError:
            raise DaemonTimeout(f"the daemon did not answer {type(body).__name__} within {timeout_s:g} s") from None
        finally:
            self._pending.pop(rid, None)

    def close(self) -> None:
        self.sock.close(linger=0)


class SseClient:
    """One browser's event stream: a bounded queue the hub appends to without waiting."""

    def __init__(self, session: str | None, request: web.Request, limit: int = SSE_QUEUE) -> None:
        self.session = session
        self.request = request
        self.limit = limit
        self.items: collections.deque[Item] = collections.deque()
        self.wake = asyncio.Event()
        self.dropped = False

    def offer(self, item: Item) -> None:
        if self.dropped or (self.session is not None and item.data[1] != self.session):
            return
        if len(self.items) >= self.limit:
            self.drop()
            return
        self.items.append(item)
        self.wake.set()

    def drop(self) -> None:
        self.dropped = True
        self.items.clear()
        self.wake.set()
        metrics.http_sse_dropped.inc()
        _log.warning("sse_client_dropped", session=self.session, peer=self.request.remote,
                     reason="its queue is full (the browser is not reading)")
        if self.request.transport is not None:
            self.request.transport.abort()  # a blocked write fails at once; close() would wait to flush

    def take(self) -> list[Item]:
        out = list(self.items)
        self.items.clear()
        self.wake.clear()
        return out


class Hub:
    """The events SUB: tracks the last seq seen and hands every event to the SSE clients."""

    def __init__(self, ctx, endpoint: str, link: ControlLink, curve=None) -> None:
        self.sub = bus.events_sub(ctx, endpoint, SUB_HWM, curve=curve)
        self.link = link
        self.clients: set[SseClient] = set()
        self.last_seen = 0
        self._sync_want: bytes | None = None
        self._synced = asyncio.Event()

    async def run(self) -> None:
        """Wait for a frame, then take every frame already queued (up to ``DRAIN_MAX``) without
        going back to the event loop: under a flood one wake-up serves a batch, so the bridge
        inside the daemon costs a few µs per event instead of an asyncio round trip per event."""
        raw = sync_view(self.sub)
        while True:
            frames = [await self.sub.recv()]
            while len(frames) < DRAIN_MAX:
                try:
                    frames.append(raw.recv(zmq.NOBLOCK))
                except zmq.Again:
                    break
            for frame in frames:
                self._take(frame)

    def _take(self, frame: bytes) -> None:
        if frame.startswith(wire.SYNC_TOPIC):
            if frame == self._sync_want:
                self._synced.set()
            return
        parts = frame.split(b" ", 2)
        try:
            item = event_item(parts[2])
        except (IndexError, msgspec.DecodeError) as exc:
            _log.warning("bad_event_frame", error=str(exc), frame=frame[:80])
            return
        self.last_seen = max(self.last_seen, item.seq)
        for client in list(self.clients):
            client.offer(item)

    async def sync(self) -> None:
        """Wait until the SUB's subscription is live (Clone pattern), then learn the log's last seq."""
        deadline = time.monotonic() + SYNC_DEADLINE_S
        while not self._synced.is_set():
            if time.monotonic() > deadline:
                raise DaemonTimeout("the events socket did not deliver a sync marker in time")
            token = secrets.token_hex(8)
            self._sync_want = wire.SYNC_TOPIC + b" " + token.encode()
            await self.link.call(p.Sync(token=token), timeout_s=max(0.1, min(1.0, deadline - time.monotonic())))
            try:
                await asyncio.wait_for(self._synced.wait(), 0.2)
            except TimeoutError:
                continue
        self.last_seen = max(self.last_seen, await self._tail_seq())

    async def _tail_seq(self) -> int:
        """The log's last seq, found with ``Replay(limit=1)`` probes (gallop, then bisect)."""
        async def after(s: int) -> bool:
            reply = await self.link.call(p.Replay(since=s, limit=1))
            return isinstance(reply, p.ReplayReply) and bool(reply.events)
        lo, step = 0, 1024
        while await after(lo + step):
            lo, step = lo + step, step * 2
        hi = lo + step  # after(lo) or lo == 0; not after(hi)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if await after(mid):
                lo = mid
            else:
                hi = mid
        return hi if await after(lo) else lo

    def close(self) -> None:
        self.sub.close(linger=0)
