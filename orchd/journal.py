"""The journal actor: sequences events, logs them, then publishes them.

Theory of operation
-------------------
Every producer sends ``Append`` batches of pending frames to the journal's
mailbox.  The journal drains its mailbox, gives each frame the next
daemon-wide ``seq``, appends the whole drained batch to SQLite in one
transaction, commits, and only then sends each frame on the events PUB.
So a subscriber never sees an event the log does not have, and the log's
``max(seq)`` is where numbering resumes after a crash.  Batching follows
the load: one frame per commit when idle (lowest latency), thousands per
commit under a flood (highest throughput).

Events the supervisor derives state from (``FOLLOWED``) are also pushed to
its mailbox, so it never depends on a droppable PUB pipe.
"""

from __future__ import annotations

import asyncio

import msgspec
import zmq
import zmq.asyncio

from orchd import log, metrics, wire
from orchd import protocol as p
from orchd.actor import Mailbox, Outbox, sync_view
from orchd.store import EventLog

_log = log.get("orchd.journal")

# Kinds the supervisor's projection needs and does not produce itself.
FOLLOWED_PREFIX = b"worker."
FOLLOWED_EXTRA = frozenset({b"agent.session", b"agent.usage", b"agent.result", b"agent.error"})
SUPERVISOR_KINDS = frozenset({b"worker.launching"})
CHECKPOINT_EVERY = 5000  # events between WAL checkpoints (run in a thread, off the commit path)


class Journal:
    def __init__(self, ctx: zmq.asyncio.Context, log_path, inbox: str, publish: list[str],
                 follower: str | None, pub_hwm: int) -> None:
        self.ctx = ctx
        self.log_path = log_path
        self.inbox_ep = inbox
        self.publish_eps = publish
        self.follower = follower
        self.pub_hwm = pub_hwm
        self._task_wakeup = None
        self._since_ckpt = 0
        self._ckpt_task: asyncio.Task | None = None
        self._stopping = False
        self._stopped = asyncio.Event()

    async def flush_and_stop(self) -> None:
        """Ask ``run`` to handle what is already in its mailbox, then return."""
        self._stopping = True
        if self._task_wakeup is not None:
            await self._task_wakeup.send(wire.pack(p.Append(frames=[])))
        try:
            await asyncio.wait_for(self._stopped.wait(), 5.0)
        except TimeoutError:
            _log.warning("journal_flush_timeout")

    async def run(self, restarts: int = 0) -> None:
        self._stopping = False
        self._stopped = asyncio.Event()
        self._task_wakeup = self.ctx.socket(zmq.PUSH)
        self._task_wakeup.linger = 0
        self._task_wakeup.connect(self.inbox_ep)
        events = EventLog(self.log_path)
        pub = self.ctx.socket(zmq.PUB)
        pub.linger = 0
        pub.sndhwm = self.pub_hwm
        inbox = Mailbox(self.ctx, self.inbox_ep)
        out = Outbox(self.ctx)
        try:
            for ep in self.publish_eps:
                pub.bind(ep)
            self._pub_send = sync_view(pub).send
            seq = self.last_seq = events.last_seq()
            metrics.last_seq.set_function(lambda: self.last_seq)
            _log.info("journal_started", last_seq=seq, restarts=restarts)
            while not self._stopping:
                msgs = await inbox.recv_batch()
                seq = await self._handle(msgs, seq, events, pub, out)
            # stopping: log what is left in the mailbox; nobody follows any more
            self.follower = None
            seq = await self._handle(await inbox.recv_batch(timeout_s=0), seq, events, pub, out)
            _log.info("journal_flushed", last_seq=seq)
        finally:
            if self._ckpt_task is not None:
                await asyncio.wait({self._ckpt_task})
            self._stopped.set()
            self._task_wakeup.close(linger=0)
            inbox.close()
            out.close()
            pub.close(linger=0)
            events.close()

    async def _handle(self, msgs: list[bytes], seq: int, events: EventLog, pub, out: Outbox) -> int:
        rows = []
        frames = []
        followed = []
        barriers = []
        crash = False
        for raw in msgs:
            try:
                msg = wire.journal_inbox.decode(raw)
            except msgspec.DecodeError as exc:  # a broken producer is no reason to stop logging
                _log.warning("journal_bad_message", error=str(exc), size=len(raw))
                continue
            match msg:
                case p.Append(frames=pending):
                    for pf in pending:
                        seq += 1
                        frame, topic, kind, js = wire.sequence_frame(pf, seq)
                        rows.append((seq, topic.decode(), kind.decode(), js))
                        frames.append(frame)
                        if self.follower and (kind.startswith(FOLLOWED_PREFIX) or kind in FOLLOWED_EXTRA) \
                                and kind not in SUPERVISOR_KINDS:
                            followed.append(js)
                case p.PublishSync(token=token):
                    frames.append(wire.SYNC_TOPIC + b" " + token.encode())
                case p.Barrier(token=token):
                    barriers.append(token)
                case p.Crash():
                    crash = True  # raised once this batch is logged: an injected bug loses nothing
        if rows:
            events.append(rows)
            metrics.events.inc(len(rows))
            self.last_seq = seq
            self._since_ckpt += len(rows)
            if self._since_ckpt >= CHECKPOINT_EVERY and (self._ckpt_task is None or self._ckpt_task.done()):
                self._since_ckpt = 0
                self._ckpt_task = asyncio.get_running_loop().create_task(asyncio.to_thread(events.checkpoint))
        send = self._pub_send
        for frame in frames:
            send(frame, zmq.NOBLOCK, copy=False)
        if followed:
            await out.send(self.follower, wire.pack(p.Committed(events=followed)))
        for token in barriers:
            if self.follower:
                await out.send(self.follower, wire.pack(p.BarrierReached(token=token, last_seq=seq)))
        if crash:
            raise RuntimeError("injected fault")
        return seq
