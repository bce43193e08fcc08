"""The HTTP bridge's side of ZeroMQ: its control DEALER, its events SUB, and the SSE clients' queues.

``ControlLink`` lets many HTTP handlers wait on the one DEALER at once (each
request has an id and a deadline).  ``Hub`` connects the events SUB when the
first SSE client joins, syncs it (Clone pattern), hands every event to each
``SseClient`` without waiting, and closes the SUB a little after the last
client left: a daemon whose dashboard nobody watches handles each event once.
A client whose bounded queue is full is dropped, its connection aborted, and
its browser resumes from ``Last-Event-ID``.  See ``orchd.web``.
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
SUB_LINGER_S = 5.0      # the SUB stays this long after the last SSE client left (a browser reconnecting)


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
    """The events SUB, open only while SSE clients need it; tracks the last seq seen and hands
    every event to the SSE clients.

    ``run`` owns the SUB: it waits for a first client (``join``), connects the
    SUB and syncs it (``Sync`` → ``~sync <token>``, the Clone pattern), then
    reads until the last client has been gone for ``linger_s``, closes the SUB
    and waits again.  ``join`` returns only once the SUB is synced, so a client
    that reads the log after joining misses nothing: an event committed after
    its last read of the log is published after the sync, and reaches it live.
    """

    def __init__(self, ctx, endpoint: str, link: ControlLink, curve=None, linger_s: float = SUB_LINGER_S) -> None:
        self.ctx, self.endpoint, self.curve = ctx, endpoint, curve
        self.link = link
        self.linger_s = linger_s
        self.sub = None
        self.clients: set[SseClient] = set()
        self.last_seen = 0
        self.live = False                                # the SUB is connected and synced
        self._attempt: asyncio.Future | None = None      # the current connect + sync, awaited by joiners
        self._wake = asyncio.Event()                      # a client joined or left
        self._sync_want: bytes | None = None
        self._synced = asyncio.Event()

    async def join(self, client: SseClient) -> None:
        """Register ``client``; return once the SUB is live (``DaemonTimeout`` if it cannot sync)."""
        self.clients.add(client)
        self._wake.set()
        if self.live:
            return
        if self._attempt is None:
            self._attempt = asyncio.get_running_loop().create_future()
        try:
            await asyncio.shield(self._attempt)
        except BaseException:
            self.leave(client)
            raise

    def leave(self, client: SseClient) -> None:
        self.clients.discard(client)
        self._wake.set()

    async def seq(self) -> int:
        """Every event up to this seq is committed: the last one seen live, else the log's last (``Ping``)."""
        return self.last_seen if self.live else self.learn(await self.link.call(p.Ping()))

    def learn(self, reply: p.Msg) -> int:
        """``seq`` from a ``Ping``'s reply the caller has already: the log's last seq counts while no SUB is open."""
        if not self.live and isinstance(reply, p.Pong):
            self.last_seen = max(self.last_seen, reply.last_seq)
        return self.last_seen

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self.clients:
                continue
            attempt = self._attempt
            self.sub = bus.events_sub(self.ctx, self.endpoint, SUB_HWM, curve=self.curve)
            reader = asyncio.ensure_future(self._read())
            metrics.http_events_sub.set(1)
            _log.info("http_events_subscribed", clients=len(self.clients))
            try:
                try:
                    await self._sync()
                except DaemonTimeout as exc:
                    if attempt is not None and not attempt.done():
                        attempt.set_exception(exc)
                        attempt.exception()  # the joiners get it; nobody waiting is not an error
                    continue
                self.live = True
                if attempt is not None and not attempt.done():
                    attempt.set_result(None)
                await self._until_unused(reader)
            finally:
                # decided before the first await below: a client joining now starts a new attempt
                self.live = False
                self._attempt = None if self._attempt is attempt else self._attempt
                reader.cancel()
                await asyncio.wait({reader})
                self.sub.close(linger=0)
                self.sub = None
                self._synced.clear()
                metrics.http_events_sub.set(0)
                _log.info("http_events_unsubscribed")

    async def _until_unused(self, reader: asyncio.Future) -> None:
        """Return once no client has been connected for ``linger_s``; a reader's bug raises here."""
        while True:
            woken = asyncio.ensure_future(self._wake.wait())
            try:
                done, _ = await asyncio.wait({reader, woken}, return_when=asyncio.FIRST_COMPLETED,
                                             timeout=None if self.clients else self.linger_s)
            finally:
                woken.cancel()
            if reader in done:
                reader.result()
                raise RuntimeError("the events reader ended")
            if woken in done:
                self._wake.clear()
            elif not self.clients:
                return

    async def _read(self) -> None:
        """Wait for a frame, then take every frame already queued (up to ``DRAIN_MAX``) without
        going back to the event loop: under a flood one wake-up serves a batch, so the bridge
        inside the daemon costs a few µs per event instead of an asyncio round trip per event."""
        sub = self.sub
        raw = sync_view(sub)
        while True:
            frames = [await sub.recv()]
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

    async def _sync(self) -> None:
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
        reply = await self.link.call(p.Ping())
        if isinstance(reply, p.Pong):
            self.last_seen = max(self.last_seen, reply.last_seq)

    def close(self) -> None:
        if self.sub is not None:
            self.sub.close(linger=0)
            self.sub = None
