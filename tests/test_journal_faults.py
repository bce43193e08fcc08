"""The journal under faults: a log it cannot write, a subscriber that does not read, a crash.

Actor-level tests run one journal in this process on real inproc/ipc sockets
and a real SQLite file; daemon-level tests run ``orchd run`` with its state on
a 20 MiB tmpfs (root only) or with another process holding the log's write
lock.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import pytest
import zmq
import zmq.asyncio

from orchctl.client import Client
from orchd import journal, metrics, wire
from orchd import protocol as p
from orchd.actor import sync_view
from orchd.journal import Follower, Follows, JournalActor, JournalSockets
from tests.conftest import fake, wait_for, write_plan

# ---------------------------------------------------------------- pure parts


def test_backoff_doubles_from_50ms_to_a_2s_cap():
    assert [journal.backoff_s(a) for a in range(7)] == [0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 2.0]
    assert journal.backoff_s(10_000) == 2.0


def test_pub_sndhwm_holds_the_queue_to_its_bytes():
    assert journal.pub_sndhwm(64 << 20, 8 << 10, 100_000) == 8192
    assert journal.pub_sndhwm(64 << 20, 8 << 10, 1000) == 1000      # pub_hwm still caps it
    assert journal.pub_sndhwm(64 << 20, 8 << 10, 0) == 8192         # 0: no cap in messages
    assert journal.pub_sndhwm(1 << 20, 4 << 20, 100_000) == 1       # never 0 (0 would be "no limit")


def test_follows_matches_prefixes_and_kinds_minus_exclusions():
    f = journal.SUPERVISOR_FOLLOWS
    assert f.wants("worker.exited") and f.wants("worker.milestone") and f.wants("agent.result")
    assert not f.wants("worker.launching") and not f.wants("agent.text") and not f.wants("session.state")
    assert not Follows().wants("worker.exited")


def test_sequence_frame_writes_each_sessions_prev_and_forgets_the_least_recent():
    def pending(session):
        return wire.pending_frame(wire.topic(session), wire.stamp_prefix(session, None, None, 0), 1.5,
                                  p.SessionNote(message="m"))

    last_of: dict[bytes, int] = {}
    prevs = {}
    for seq, sid in enumerate(["s-a", "s-b", "s-a", None, "s-a", "s-c", "s-b"], start=1):
        frame, topic, kind, js = wire.sequence_frame(pending(sid), seq, last_of)
        assert js.startswith(b'{"seq":%d,' % seq)
        assert frame == topic + b" " + kind + b" " + js
        stamp, ev = wire.decode_event(js)
        assert stamp.seq == seq and ev == p.SessionNote(message="m")
        prevs[seq] = (sid, stamp.prev, b'"prev"' in js)
    assert prevs == {1: ("s-a", 0, True), 2: ("s-b", 0, True), 3: ("s-a", 1, True), 4: (None, 0, False),
                     5: ("s-a", 3, True), 6: ("s-c", 0, True), 7: ("s-b", 2, True)}
    assert list(last_of) == [b"s-a", b"s-c", b"s-b"]  # least recently used first
    wire.forget_oldest(last_of, 2)
    assert last_of == {b"s-c": 6, b"s-b": 7}
    # without a map the frame is what it always was
    assert wire.sequence_frame(pending("s-a"), 9)[3].startswith(b'{"seq":9,"ts":1.500000,')


# ---------------------------------------------------------------- one journal in this process

def _append(session: str | None, text: str) -> bytes:
    frame = wire.pending_frame(wire.topic(session), wire.stamp_prefix(session, "w", "command", 0), time.time(),
                               p.WorkerMilestone(text=text))
    return wire.pack(p.Append(frames=[frame]))


def _rows(db: Path) -> list[tuple[int, str, bytes]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT seq, session, body FROM events ORDER BY seq").fetchall()
    finally:
        conn.close()


class _Harness:
    """JournalSockets bound once, a producer PUSH connected once, a follower PULL and a SUB."""

    def __init__(self, tmp: Path, short: Path, producer_hwm: int = 1000) -> None:
        self.db = tmp / "events.sqlite3"
        self.ctx = zmq.asyncio.Context()
        self.sockets = JournalSockets(self.ctx, "inproc://journal", [f"ipc://{short}/ev"])
        self.sockets.open()
        self.follower = self.ctx.socket(zmq.PULL)
        self.follower.linger = 0
        self.follower.bind("inproc://follower")
        self.followers = [Follower("inproc://follower", Follows(prefixes=("worker.",)))]
        self.producer = self.ctx.socket(zmq.PUSH)
        self.producer.linger = 0
        self.producer.sndhwm = producer_hwm
        self.producer.connect("inproc://journal")
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.linger = 0
        self.sub.rcvhwm = 0
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.sub.connect(f"ipc://{short}/ev")
        self._sub, self._follower = sync_view(self.sub), sync_view(self.follower)
        self.published: dict[int, bytes] = {}
        self.committed: list[bytes] = []
        self.health: list[str | None] = []

    def actor(self) -> JournalActor:
        return JournalActor(self.sockets, self.db, self.followers)

    async def subscribed(self) -> None:
        """Until a sync marker comes through, the SUB's subscription may not have reached the PUB."""
        for attempt in range(100):
            await self.producer.send(wire.pack(p.PublishSync(token=str(attempt))))
            if await self.sub.poll(100):
                await self.sub.recv()
                return
        raise AssertionError("the SUB never got a sync marker")

    def read(self) -> None:
        """Take what the SUB and the follower have now."""
        raw = wire.split_frame
        while True:
            try:
                frame = self._sub.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            if not frame.startswith(wire.SYNC_TOPIC):
                js = raw(frame)[2]
                self.published[json.loads(js)["seq"]] = js
        while True:
            try:
                msg = wire.supervisor_inbox.decode(self._follower.recv(zmq.NOBLOCK))
            except zmq.Again:
                break
            if isinstance(msg, p.Committed):
                self.committed.extend(msg.events)
            elif isinstance(msg, p.LogHealth):
                self.health.append(msg.error)

    async def until(self, cond, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            self.read()
            if cond():
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
            await asyncio.sleep(0.01)

    def close(self) -> None:
        self.sockets.close()
        self.ctx.destroy(linger=0)


def _check_log(db: Path, n: int, published: dict[int, bytes]) -> list[dict]:
    rows = _rows(db)
    assert [r[0] for r in rows] == list(range(1, n + 1)), "the log's seq has a gap or a duplicate"
    for seq, js in published.items():
        assert rows[seq - 1][2] == js, f"seq {seq} was published but the log has something else"
    events = [json.loads(r[2]) for r in rows]
    last: dict[str, int] = {}
    for ev in events:  # every session event knows its session's previous one
        assert ev["prev"] == last.get(ev["session"], 0), ev
        last[ev["session"]] = ev["seq"]
    return events


def test_a_restarted_journal_keeps_its_producers(tmp_path, short_tmp):
    """A Crash ends the actor after logging what came before it; a new actor on the same
    sockets takes the messages after it and everything the same producer sends next."""

    async def main():
        h = _Harness(tmp_path, short_tmp)
        try:
            first = asyncio.ensure_future(h.actor().run(0))
            await h.subscribed()
            # one batch: 10 events, the fault, 5 more (all queued before the actor looks again)
            for i in range(10):
                await h.producer.send(_append(f"s-{i % 3}", str(i)))
            await h.producer.send(wire.pack(p.Crash()))
            for i in range(10, 15):
                await h.producer.send(_append(f"s-{i % 3}", str(i)))
            with pytest.raises(RuntimeError, match="injected fault"):
                await asyncio.wait_for(first, 10)
            assert [r[0] for r in _rows(h.db)] == list(range(1, 11))
            await h.until(lambda: len(h.published) == 10, 5, "the 10 logged events on the SUB")

            second = asyncio.ensure_future(h.actor().run(1))
            for i in range(15, 40):  # the same producer socket: no reconnect, nothing re-bound
                await h.producer.send(_append(f"s-{i % 3}", str(i)))
            await h.until(lambda: len(h.published) == 40 and len(h.committed) == 40, 10, "40 events")
            await h.sockets.flush_and_stop(5.0)
            assert second.done() and second.exception() is None
            events = _check_log(h.db, 40, h.published)
            assert [e["text"] for e in events] == [str(i) for i in range(40)]
            assert [json.loads(js)["seq"] for js in h.committed] == list(range(1, 41))
            assert events[10]["prev"] == 8  # s-1's last before the restart: the map outlives the actor
        finally:
            h.close()

    asyncio.run(main())


def test_a_locked_log_holds_the_batch_and_pushes_back_on_producers(tmp_path, short_tmp):
    """While another connection holds the write lock the journal retries one batch, drains
    nothing else (so the producer's PUSH fills up), publishes nothing, says so once; then
    logs everything in order."""

    async def main():
        h = _Harness(tmp_path, short_tmp, producer_hwm=10)
        try:
            task = asyncio.ensure_future(h.actor().run(0))
            await h.subscribed()
            await h.producer.send(_append("s-1", "0"))
            await h.until(lambda: len(h.published) == 1, 5, "the first event")

            holder = sqlite3.connect(h.db, isolation_level=None)
            holder.execute("BEGIN IMMEDIATE")
            failures = metrics.log_write_failures._value.get()
            await h.producer.send(_append("s-1", "1"))
            await h.until(lambda: h.health == ["OperationalError: database is locked"], 10, "LogHealth(error)")
            sent = 2
            push = sync_view(h.producer)
            with pytest.raises(zmq.Again):  # the journal stopped draining: the PUSH fills up
                for _ in range(20_000):
                    push.send(_append("s-1", str(sent)), zmq.NOBLOCK)
                    sent += 1
            assert sent < 5000
            tries = metrics.log_write_failures._value.get()
            await h.until(lambda: metrics.log_write_failures._value.get() >= tries + 2, 10, "two more retries")
            with pytest.raises(zmq.Again):
                push.send(_append("s-1", "x"), zmq.NOBLOCK)
            assert metrics.log_writable._value.get() == 0
            assert metrics.log_write_failures._value.get() > failures
            h.read()
            assert list(h.published) == [1], "published before it was committed"
            assert _rows(h.db)[-1][0] == 1

            holder.execute("ROLLBACK")
            holder.close()
            for i in range(sent, sent + 100):  # the producer goes on where it was stopped
                await h.producer.send(_append("s-1", str(i)))
            total = sent + 100
            await h.until(lambda: len(h.published) == total, 20, "every event published")
            assert h.health == ["OperationalError: database is locked", None]
            assert metrics.log_writable._value.get() == 1
            await h.sockets.flush_and_stop(5.0)
            events = _check_log(h.db, total, h.published)
            assert [e["text"] for e in events] == [str(i) for i in range(total)]
            assert task.done() and task.exception() is None
        finally:
            h.close()

    asyncio.run(main())


def test_flush_and_stop_returns_in_time_while_the_log_is_locked(tmp_path, short_tmp, caplog):
    caplog.set_level("INFO", logger="orchd.journal")

    async def main():
        h = _Harness(tmp_path, short_tmp)
        try:
            task = asyncio.ensure_future(h.actor().run(0))
            await h.subscribed()
            holder = sqlite3.connect(h.db, isolation_level=None)
            holder.execute("BEGIN IMMEDIATE")
            for i in range(50):
                await h.producer.send(_append("s-1", str(i)))
            await h.until(lambda: h.health, 10, "LogHealth(error)")
            t0 = time.monotonic()
            await h.sockets.flush_and_stop(2.0)
            assert time.monotonic() - t0 < 2.5
            assert task.done() and task.exception() is None
            holder.execute("ROLLBACK")
            holder.close()
            assert _rows(h.db) == []
            h.read()
            assert h.published == {}
        finally:
            h.close()

    asyncio.run(main())
    unwritten = [r for r in caplog.records if r.getMessage() == "journal_unwritten"]
    assert unwritten and unwritten[0].kv["events"] == 50
