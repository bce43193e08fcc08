"""What of the journal outlives its actor: its mailbox and PUB, bound once.

A restarted journal actor is handed the same ``JournalSockets``, so
producers (connected to the mailbox by inproc, which does not reconnect)
keep sending to it, and it resumes from the state kept here: messages a
crashed actor drained but did not handle, each session's last seq (for
``prev``), whether the log is failing, and the shutdown deadline.

The PUB's send queue per subscriber is bounded in bytes: its SNDHWM is
``pub_queue_bytes // pub_inline_max_bytes`` frames, and a frame larger than
``pub_inline_max_bytes`` is logged but not published (a subscriber sees the
gap and replays it).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import zmq
import zmq.asyncio

from orchd import bus, log, wire
from orchd import protocol as p
from orchd.actor import sync_view

_log = log.get("orchd.journal")

BATCH_MAX_MSGS = 10_000            # one drained batch: at most this many messages...
BATCH_MAX_BYTES = 8 * 1024 * 1024  # ...and about this many bytes (also what is held while the log fails)
BATCH_MIN_EVENTS = 256             # a batch ends after max(this, SNDHWM / 2) events (see _handle)
MAILBOX_HWM = 64                   # the PULL's share of the mailbox high-water mark (producers add theirs)
STOP_MARGIN_S = 0.5                # the actor gives up this long before flush_and_stop's deadline
PUB_HWM = 100_000
PUB_QUEUE_BYTES = 64 * 1024 * 1024
PUB_INLINE_MAX_BYTES = 8 * 1024
_WAKE = wire.pack(p.Append(frames=[]))
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_NOBLOCK = int(zmq.NOBLOCK)


def pub_sndhwm(queue_bytes: int, inline_max_bytes: int, max_hwm: int = PUB_HWM) -> int:
    """The PUB's SNDHWM: ``queue_bytes`` of frames of at most ``inline_max_bytes`` (0 = no ``max_hwm``)."""
    hwm = max(1, queue_bytes // max(1, inline_max_bytes))
    return min(hwm, max_hwm) if max_hwm > 0 else hwm


def drain(raw: zmq.Socket, max_msgs: int = BATCH_MAX_MSGS, max_bytes: int = BATCH_MAX_BYTES) -> list[bytes]:
    """Messages waiting on ``raw`` now, without blocking, up to ``max_msgs`` or about ``max_bytes``."""
    out: list[bytes] = []
    size = 0
    recv, get = raw.recv, raw.getsockopt
    try:  # EVENTS before each receive: cheaper than the zmq.Again that would end the drain
        while len(out) < max_msgs and size < max_bytes and get(_EVENTS) & _POLLIN:
            msg = recv(_NOBLOCK)
            out.append(msg)
            size += len(msg)
    except zmq.Again:
        pass  # nothing more waiting: the batch is what we have
    return out


class JournalSockets:
    """What of the journal outlives its actor: its mailbox and PUB, bound once, and
    the state a restarted actor resumes from.

    The daemon makes one, calls ``open`` before any producer sends (it binds
    the mailbox and the PUB endpoints; ``zmq.ZMQError`` if one is taken), hands
    it to every ``JournalActor`` it starts, calls ``flush_and_stop`` at
    shutdown and ``close`` at the end.
    """

    def __init__(self, ctx: zmq.asyncio.Context, inbox: str, publish: Sequence[str], *,
                 pub_hwm: int = PUB_HWM, pub_queue_bytes: int = PUB_QUEUE_BYTES,
                 pub_inline_max_bytes: int = PUB_INLINE_MAX_BYTES, mailbox_hwm: int = MAILBOX_HWM,
                 **remote) -> None:
        self.ctx = ctx
        self.remote = remote  # ``curve`` and ``curve_endpoints`` for bus.events_pub (orchd.remote.events_binding)
        self.inbox = inbox
        self.publish = list(publish)
        self.pub_inline_max_bytes = pub_inline_max_bytes
        self.pub_sndhwm = pub_sndhwm(pub_queue_bytes, pub_inline_max_bytes, pub_hwm)
        self.batch_max_events = max(BATCH_MIN_EVENTS, self.pub_sndhwm // 2)
        self.mailbox_hwm = mailbox_hwm
        self.pull: zmq.Socket | None = None   # blocking views of the sockets (non-blocking calls only)
        self.pub: zmq.Socket | None = None
        self._socks: list[zmq.asyncio.Socket] = []
        self._wake: zmq.Socket | None = None
        # resumed by the next actor
        self.unhandled: list[bytes] = []      # drained by an actor that ended before handling them
        self.last_of: dict[bytes, int] = {}   # session topic -> seq of its last logged event (``prev``)
        self.log_error: str | None = None     # set while appends fail (followers were told)
        # shutdown
        self.stop_at: float | None = None     # monotonic deadline, once flush_and_stop was called
        self.stop_requested = asyncio.Event()
        self.stopped = asyncio.Event()

    @property
    def is_open(self) -> bool:
        return self.pull is not None

    def open(self) -> None:
        self._socks = []
        try:
            pull = bus.mailbox(self.ctx, self.inbox, self.mailbox_hwm)
            self._socks.append(pull)
            # sndhwm is set before bind: a subscriber's pipe takes it when it connects
            pub = bus.events_pub(self.ctx, self.publish, self.pub_sndhwm, **self.remote)
            self._socks.append(pub)
            wake = bus.push(self.ctx, self.inbox, 1000)
            self._socks.append(wake)
        except BaseException:
            self.close()
            raise
        self.pull, self.pub, self._wake = sync_view(pull), sync_view(pub), sync_view(wake)

    async def flush_and_stop(self, timeout_s: float = 5.0) -> None:
        """Ask the actor to log what is already in its mailbox and end; returns within ``timeout_s``.

        While the log cannot be written the actor keeps retrying until just
        before the deadline, then logs how many events it could not write.
        """
        if self.stop_at is None:
            self.stop_at = time.monotonic() + max(0.0, timeout_s - STOP_MARGIN_S)
        self.stop_requested.set()
        if self._wake is not None:
            try:
                self._wake.send(_WAKE, zmq.NOBLOCK)
            except zmq.Again:
                pass  # the mailbox is full, so the actor is not idle: it sees stop_at when it looks next
        try:
            async with asyncio.timeout(timeout_s):
                await self.stopped.wait()
        except TimeoutError:
            _log.warning("journal_flush_timeout", timeout_s=timeout_s)

    def close(self) -> None:
        for sock in self._socks:
            sock.close(linger=0)
        self._socks = []
        self.pull = self.pub = self._wake = None
