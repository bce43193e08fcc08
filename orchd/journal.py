"""The journal actor: sequences events, logs them, then publishes them.

Theory of operation
-------------------
Every producer sends ``Append`` batches of pending frames to the journal's
mailbox.  The journal drains its mailbox, gives each frame the next
daemon-wide ``seq`` (and, for a session event, ``prev``: the seq of that
session's previous event), appends the whole drained batch to the log in one
commit (``orchd/store.py``: a small batch to the log's stage file with one
``write``, a large one to SQLite in one transaction; staged rows move into
SQLite within ``FLUSH_AFTER_S``, in a thread while the journal goes on
staging and publishing), and only then sends each frame on the events PUB and
forwards the kinds each follower asked for to that follower's mailbox
(``Committed``), so a follower never depends on a droppable PUB pipe.  A
subscriber never sees an event the log does not have, and the log's
``max(seq)`` is where numbering resumes after a crash.  Batching follows the
load: one frame per commit when idle (lowest latency), thousands per commit
under a flood (highest throughput).

**Restarts.**  The mailbox (PULL) and the PUB are bound once, by
``JournalSockets``, and outlive the actor.  inproc does not reconnect: a
journal that re-bound its mailbox after a crash would leave every producer
talking to a closed socket.  A restarted ``JournalActor`` takes the same
sockets and resumes from what ``JournalSockets`` keeps: the messages that
came after a ``Crash`` in its last batch, each session's last seq, whether the
log is failing.

**A log that cannot be written** (disk full, another process holding the
write lock, an I/O error) stops nothing and loses nothing.  The journal rolls
back and retries the same batch, with the seqs it already gave it, with
exponential backoff (50 ms doubling up to 2 s); a failed move of staged rows
into SQLite is retried the same way, and no batch is appended until it
succeeds.  It drains nothing more from its mailbox meanwhile, so producers
block on their PUSH high-water mark (a worker stops reading its agent's
stdout).  The first failure logs a warning, sets ``orchd_log_writable`` to 0
and sends ``LogHealth(error)`` to the followers; the first success after it
(of every write that was failing) does the reverse.  Nothing is published
before it is committed (so a ``~sync`` marker asked for meanwhile waits in the
mailbox too).  ``flush_and_stop`` returns within its deadline even then, and
logs how many events it could not write.

**PUB memory.**  ZeroMQ bounds a subscriber's queue in messages (SNDHWM),
not in bytes, and a new SNDHWM applies only to subscribers that connect later,
so it cannot follow event sizes.  The journal bounds the bytes of a message
instead: SNDHWM is ``pub_queue_bytes // pub_inline_max_bytes`` (8,192 with the
defaults 64 MiB and 8 KiB; at most ``pub_hwm``), and an event whose frame is
over ``pub_inline_max_bytes`` is logged and forwarded to followers but not
published.  A subscriber that stops reading therefore holds at most
``pub_queue_bytes`` of the daemon's memory (plus ZeroMQ's per-message
overhead).  It sees an unpublished event exactly like one dropped at the
high-water mark: as a gap in ``seq`` when it takes every event, or as a
``prev`` above the last seq it saw when it filters by session; ``Replay``
refills the gap from the log.  A batch also ends after SNDHWM / 2 events, so
publishing one batch (say the backlog of a log that just recovered) cannot by
itself overrun a subscriber that keeps up.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import msgspec
import zmq
import zmq.asyncio

from orchd import log, metrics, wire
from orchd import protocol as p
from orchd.actor import Outbox, Waker
from orchd.follow import SUPERVISOR_FOLLOWS, Follower
from orchd.journal_sockets import (PUB_HWM, PUB_INLINE_MAX_BYTES, PUB_QUEUE_BYTES, STOP_MARGIN_S, JournalSockets,
                                   drain)
from orchd.store import EventLog

_log = log.get("orchd.journal")
_NOBLOCK = int(zmq.NOBLOCK)

CHECKPOINT_EVERY = 5000            # events between WAL checkpoints (run in a thread, off the commit path)
CHECKPOINT_BYTES = 8 * 1024 * 1024  # ... or this many bytes of event bodies, whichever comes first
WAL_CHECK_BYTES = 1024 * 1024      # event bytes between looks at the WAL file's size
WAL_MAX_BYTES = 32 * 1024 * 1024   # a WAL above this is checkpointed and truncated before the next append
BATCH_MAX_BYTES = 8 * 1024 * 1024  # a batch ends after this many bytes of events (bounds the WAL's overshoot)
SESSIONS_REMEMBERED = 10_000       # sessions whose last seq the journal keeps for ``prev`` (least recent go)
BACKOFF_FIRST_S = 0.05             # first retry of a failed append; doubles up to BACKOFF_CAP_S
BACKOFF_CAP_S = 2.0
WRITE_BUSY_TIMEOUT_MS = 100        # longest one append blocks the event loop on another process's lock


def backoff_s(attempt: int) -> float:
    """Wait before retry ``attempt`` (0-based) of a failed append."""
    return min(BACKOFF_CAP_S, BACKOFF_FIRST_S * 2 ** min(attempt, 20))


class JournalActor:
    """One life of the journal: built fresh for every (re)start, handed the long-lived
    ``JournalSockets``.  ``run`` returns after ``flush_and_stop``; a bug, or a ``Crash``
    message, raises out of it for the supervisor to restart a new one."""

    def __init__(self, sockets: JournalSockets, log_path: Path | str, followers: Sequence[Follower] = ()) -> None:
        self.s = sockets
        self.log_path = Path(log_path)
        self.followers = list(followers)
        self.last_seq = 0
        self.unwritten = 0          # events given up on at the stop deadline (the log failing)
        self._log: EventLog | None = None
        self._out: Outbox | None = None
        self._routes: dict[bytes, tuple[int, ...]] = {}  # kind -> followers that want it
        self._uncommitted = False   # last_of holds seqs of a batch not committed yet
        self._since_ckpt = 0
        self._since_ckpt_bytes = 0
        self._since_wal_check = 0
        self._ckpt_task: asyncio.Task | None = None
        self._move: asyncio.Task | None = None  # staged rows on their way into SQLite (a thread)
        self._failing: set[str] = set()         # the writes failing now ("append", "move", "open")

    async def run(self, restarts: int = 0) -> None:
        s = self.s
        if not s.is_open:
            raise RuntimeError("JournalSockets.open() was not called")
        waker = Waker(s.pull)
        loop = asyncio.get_running_loop()  # its time() is time.monotonic(), the log's clock
        flush_timer: asyncio.TimerHandle | None = None

        def tick() -> None:
            nonlocal flush_timer
            flush_timer = None
            waker.poke()

        self._out = Outbox(s.ctx)
        metrics.last_seq.set_function(lambda: self.last_seq)
        try:
            if not await self._write(self._open, proves_writable=False, what="open"):
                _log.warning("journal_unwritten", events=self._count_left(), reason="the log could not be opened")
                return
            _log.info("journal_started", last_seq=self.last_seq, restarts=restarts)
            batch, s.unhandled = s.unhandled, []
            while True:
                while batch:
                    batch = await self._handle(batch)
                if s.stop_at is not None:
                    break
                if self._move is not None and s.log_error is not None:
                    await asyncio.wait({self._move})  # failing: drain nothing until it is in SQLite
                if self._move is not None and self._move.done():
                    self._move, done = None, self._move
                    done.result()  # a bug in it is the journal's crash
                due = self._log.flush_due() if self._move is None and s.stop_at is None else None
                if due is not None and time.monotonic() >= due:  # the staged rows into SQLite (store.py)
                    self._move = loop.create_task(self._move_staged())
                    self._move.add_done_callback(lambda _: waker.poke())
                elif due is not None and flush_timer is None:  # one timer per staging period
                    flush_timer = loop.call_at(due, tick)
                if await waker.wait(None) and (self._move is None or s.log_error is None):
                    batch = drain(s.pull)
            await self._flush()
        except BaseException:
            if self._uncommitted:  # those seqs will be given again, to other events
                s.last_of.clear()
            raise
        finally:
            if flush_timer is not None:
                flush_timer.cancel()
            waker.close()
            if self._move is not None:  # a stop ends its retries at the deadline; a crash cancels them
                if s.stop_at is None:
                    self._move.cancel()
                await asyncio.wait({self._move})
            if self._ckpt_task is not None:
                await asyncio.wait({self._ckpt_task})
            self._close_log()
            self._out.close()
            if s.stop_at is not None:
                s.stopped.set()

    # ------------------------------------------------------------ one batch

    async def _handle(self, msgs: list[bytes]) -> list[bytes]:
        """Log, publish and forward the events of ``msgs``; returns the messages it left for
        the next batch (a batch ends after ``batch_max_events``, so that publishing it cannot
        overrun the SNDHWM of a subscriber that keeps up, or after ``BATCH_MAX_BYTES``)."""
        s = self.s
        rows = []
        frames = []
        follow: list[list[bytes]] = [[] for _ in self.followers]
        routes = self._routes
        last_of = s.last_of
        inline_max = s.pub_inline_max_bytes
        seq = self.last_seq
        crash_at = -1
        wedged = False
        barriers: list[p.Barrier] = []
        rest: list[bytes] = []
        not_published = 0
        size = 0
        kinds: dict[bytes, int] = {}      # for the metrics: events per kind...
        details: list[bytes] = []         # ...and the few events whose fields they read
        metric_kinds = metrics.METRIC_KINDS
        reads: list[float] = []
        self._uncommitted = True
        for i, raw in enumerate(msgs):
            try:
                msg = wire.journal_inbox.decode(raw)
            except msgspec.DecodeError as exc:  # a broken producer is no reason to stop logging
                metrics.bad_messages.labels("journal", getattr(exc, "code", "invalid")).inc()
                _log.warning("journal_bad_message", error=str(exc), size=len(raw))
                continue
            match msg:
                case p.Append(frames=pending, read_at=read_at):
                    if read_at:
                        reads.append(read_at)
                    for pf in pending:
                        seq += 1
                        frame, topic, kind, js = wire.sequence_frame(pf, seq, last_of)
                        rows.append((seq, topic.decode(), kind.decode(), js))
                        size += len(js)
                        kinds[kind] = kinds.get(kind, 0) + 1
                        if kind in metric_kinds:
                            details.append(js)
                        if len(frame) <= inline_max:
                            frames.append(frame)
                        else:
                            not_published += 1
                        route = routes.get(kind)
                        if route is None:
                            route = self._route(kind)
                        for f in route:
                            follow[f].append(js)
                    if len(rows) >= s.batch_max_events or size >= BATCH_MAX_BYTES:
                        rest = msgs[i + 1:]
                        break
                case p.PublishSync(token=token):
                    frames.append(wire.SYNC_TOPIC + b" " + token.encode())
                case p.Barrier():
                    barriers.append(msg)
                case p.Crash():
                    crash_at = i
                    break
                case p.Wedge():
                    wedged = True
        if rows:
            move = self._move
            if move is not None and (s.log_error is not None or self._log.direct(len(rows), size)):
                await asyncio.wait({move})  # a failing move holds every append; SQLite is the move's
            if not await self._write(lambda: self._append(rows, size)):
                self.unwritten += len(rows)
                return rest
            self.last_seq = seq
            metrics.observe_batch(kinds, details)
            self._checkpoint_now_and_then(len(rows), size)
            wire.forget_oldest(last_of, SESSIONS_REMEMBERED)
        self._uncommitted = False
        send = s.pub.send
        for frame in frames:  # ~300-byte frames: a copy costs less than a zero-copy Frame
            send(frame, _NOBLOCK)
        if not_published:
            metrics.events_not_published.inc(not_published)
        if reads:
            now = time.monotonic()
            for read_at in reads:
                metrics.pipeline_seconds.observe(now - read_at)
        if s.stop_at is None:  # stopping: the followers are gone already
            for f, events in zip(self.followers, follow):
                if events:
                    await self._tell(f.endpoint, wire.pack(p.Committed(events=events)))
            for b in barriers:  # everything sent before it is logged now
                await self._tell(b.reply_to, wire.pack(p.BarrierReached(token=b.token, last_seq=self.last_seq)))
        if rows and self._since_wal_check >= WAL_CHECK_BYTES:
            await self._bound_wal()
        if crash_at >= 0:
            s.unhandled = msgs[crash_at + 1:]
            raise RuntimeError("injected fault")
        if wedged:  # alive but deaf until cancelled (the watchdog must notice)
            _log.warning("journal_wedged", reason="injected fault")
            await asyncio.Event().wait()
        return rest

    def _route(self, kind: bytes) -> tuple[int, ...]:
        name = kind.decode()
        route = self._routes[kind] = tuple(i for i, f in enumerate(self.followers) if f.follows.wants(name))
        return route

    async def _flush(self) -> None:
        """After a stop request: log what the mailbox holds now, until the deadline."""
        s = self.s
        batch = drain(s.pull)
        while batch and not self.unwritten and time.monotonic() < s.stop_at:
            batch = await self._handle(batch) or drain(s.pull)
        s.unhandled.extend(batch)
        left = self.unwritten + self._count_left()
        if left:
            _log.warning("journal_unwritten", events=left, error=s.log_error, last_seq=self.last_seq)
        else:
            _log.info("journal_flushed", last_seq=self.last_seq)

    def _count_left(self) -> int:
        """Empty the mailbox, counting the events in it (they will not be logged)."""
        n = 0
        pending, self.s.unhandled = self.s.unhandled, []
        until = time.monotonic() + STOP_MARGIN_S / 2  # producers still sending must not keep us here
        while pending and time.monotonic() < until:
            for raw in pending:
                try:
                    msg = wire.journal_inbox.decode(raw)
                except msgspec.DecodeError:
                    continue  # not an event either way
                if isinstance(msg, p.Append):
                    n += len(msg.frames)
            pending = drain(self.s.pull)
        return n

    # ------------------------------------------------------------ the log

    def _open(self) -> None:
        events = EventLog(self.log_path, busy_timeout_ms=WRITE_BUSY_TIMEOUT_MS)
        try:
            self.last_seq = events.last_seq()
        except BaseException:
            events.close(checkpoint=False)
            raise
        self._log = events

    async def _move_staged(self) -> None:
        """Move the staged rows into SQLite in a thread (retrying like an append), then replace
        the stage file by one with the rows staged meanwhile.  Gives up at the stop deadline: the
        rows stay staged, for ``close`` or the next open."""
        rows = self._log.move_start()
        if await self._write(lambda: self._log.move(rows), in_thread=True, what="move"):
            self._log.moved(time.monotonic())

    def _append(self, rows: list, size: int) -> None:
        started = time.perf_counter()
        self._log.append(rows, time.monotonic(), size)
        metrics.commit_seconds.observe(time.perf_counter() - started)

    async def _write(self, write: Callable[[], None], proves_writable: bool = True, in_thread: bool = False,
                     what: str = "append") -> bool:
        """Run ``write`` (``in_thread``: in a thread) until it succeeds (True), or until the stop
        deadline (False).  The log is healthy again when no write (``what``: an append, the move
        running beside it) is failing any more.

        While it fails, nothing else is drained from the mailbox: producers
        feel it through their PUSH high-water mark.  Opening the log proves
        nothing about writing it (``proves_writable=False``): only an append
        ends a failure.
        """
        s = self.s
        attempt = 0
        while True:
            try:
                if in_thread:
                    await asyncio.to_thread(write)
                else:
                    write()
            except (sqlite3.OperationalError, OSError) as exc:
                metrics.log_write_failures.inc()
                self._failing.add(what)
                await self._health(f"{type(exc).__name__}: {exc}")
            else:
                self._failing.discard(what)
                if s.log_error is not None and proves_writable and not self._failing:
                    await self._health(None, attempts=attempt + 1)
                return True
            delay = backoff_s(attempt)
            attempt += 1
            if s.stop_at is not None:
                left = s.stop_at - time.monotonic()
                if left <= 0:
                    return False
                delay = min(delay, left)
            await asyncio.sleep(delay)

    async def _health(self, error: str | None, attempts: int = 0) -> None:
        """Log, gauge and tell the followers when the log's health changes (not on every retry)."""
        s = self.s
        if (error is None) == (s.log_error is None):
            return
        s.log_error = error
        if error is not None:
            _log.warning("event_log_unwritable", error=error, last_seq=self.last_seq)
        else:
            _log.warning("event_log_writable", attempts=attempts, last_seq=self.last_seq)
        metrics.log_writable.set(0 if error else 1)
        if s.stop_at is None:
            msg = wire.pack(p.LogHealth(error=error))
            for f in self.followers:
                if f.log_health:
                    await self._tell(f.endpoint, msg)

    def _checkpoint_now_and_then(self, n: int, size: int) -> None:
        """A PASSIVE checkpoint in a thread every CHECKPOINT_EVERY events or CHECKPOINT_BYTES."""
        self._since_ckpt += n
        self._since_ckpt_bytes += size
        self._since_wal_check += size
        if ((self._since_ckpt >= CHECKPOINT_EVERY or self._since_ckpt_bytes >= CHECKPOINT_BYTES)
                and (self._ckpt_task is None or self._ckpt_task.done())):
            self._since_ckpt = self._since_ckpt_bytes = 0
            self._ckpt_task = asyncio.get_running_loop().create_task(asyncio.to_thread(self._checkpoint))

    async def _bound_wal(self) -> None:
        """Keep the WAL under WAL_MAX_BYTES, also under a flood.

        A PASSIVE checkpoint never catches up while appends go on during it, and
        SQLite only starts the WAL over when a checkpoint reached its end: under a
        steady flood the file grows without bound (1.9 GB beside a 1 GB log was
        measured).  Past WAL_MAX_BYTES the journal stops appending, waits for a
        TRUNCATE checkpoint in a thread (tens of ms for 32 MiB; the producers feel
        it through their high-water marks, the event loop keeps serving) and goes
        on.  It runs after a batch is published and forwarded, so it delays no
        event that is already committed."""
        self._since_wal_check = 0
        try:
            wal = self.log_path.with_name(self.log_path.name + "-wal").stat().st_size
        except OSError:
            return
        if wal <= WAL_MAX_BYTES:
            return
        if self._ckpt_task is not None:
            await asyncio.wait({self._ckpt_task})
        started = time.monotonic()
        busy = await asyncio.to_thread(self._checkpoint, "TRUNCATE")
        self._since_ckpt = self._since_ckpt_bytes = 0
        _log.info("event_log_wal_truncated", wal_bytes=wal, busy=busy,
                  ms=round((time.monotonic() - started) * 1000, 1))

    def _checkpoint(self, mode: str = "PASSIVE") -> bool | None:  # in a thread
        """Run a checkpoint; True when readers kept it from finishing, None when it failed."""
        try:
            return self._log.checkpoint(mode)
        except (sqlite3.OperationalError, OSError) as exc:  # the next one tries again; appends go on meanwhile
            _log.warning("event_log_checkpoint_failed", error=str(exc))
            return None

    def _close_log(self) -> None:
        if self._log is None:
            return
        try:
            self._log.close(checkpoint=self.s.log_error is None)
        except (sqlite3.OperationalError, OSError) as exc:  # closed anyway; the WAL is checkpointed next time
            _log.warning("event_log_checkpoint_failed", error=str(exc))
        self._log = None

    # ------------------------------------------------------------ followers

    async def _tell(self, endpoint: str, data: bytes) -> None:
        """Send to a follower; wait while its mailbox is full, but not past a stop request."""
        try:
            self._out.send_nowait(endpoint, data)
            return
        except zmq.Again:
            pass  # full: wait below
        sending = asyncio.ensure_future(self._out.send(endpoint, data))
        stopping = asyncio.ensure_future(self.s.stop_requested.wait())
        try:
            await asyncio.wait({sending, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sending, stopping):
                task.cancel()
            await asyncio.wait({sending, stopping})
        if sending.cancelled():
            _log.warning("follower_not_told", endpoint=endpoint, reason="stopping")
        else:
            sending.result()


class Journal:
    """The journal as the daemon runs it.

    ``JournalSockets`` are bound on the first ``run`` and kept; every ``run``
    (the first start and each restart by the supervisor) builds a fresh
    ``JournalActor`` on them.  ``followers`` is a list of ``Follower``; a plain
    endpoint string means one follower with ``SUPERVISOR_FOLLOWS``.
    """

    def __init__(self, ctx: zmq.asyncio.Context, log_path: Path | str, inbox: str, publish: Sequence[str],
                 followers: Sequence[Follower] | str | None = None, pub_hwm: int = PUB_HWM, *,
                 pub_queue_bytes: int = PUB_QUEUE_BYTES, pub_inline_max_bytes: int = PUB_INLINE_MAX_BYTES) -> None:
        if isinstance(followers, str):
            followers = [Follower(followers, SUPERVISOR_FOLLOWS)]
        self.sockets = JournalSockets(ctx, inbox, publish, pub_hwm=pub_hwm, pub_queue_bytes=pub_queue_bytes,
                                      pub_inline_max_bytes=pub_inline_max_bytes)
        self.log_path = log_path
        self.followers = list(followers or ())
        self.actor: JournalActor | None = None

    def new_actor(self) -> JournalActor:
        if not self.sockets.is_open:
            self.sockets.open()
        self.actor = JournalActor(self.sockets, self.log_path, self.followers)
        return self.actor

    async def run(self, restarts: int = 0) -> None:
        await self.new_actor().run(restarts)

    async def flush_and_stop(self, timeout_s: float = 5.0) -> None:
        await self.sockets.flush_and_stop(timeout_s)

    def close(self) -> None:
        self.sockets.close()
