"""The WAL stays bounded under a flood of large events (one journal in this process,
real sockets, real SQLite)."""

from __future__ import annotations

import asyncio
import sqlite3
import time

import zmq
import zmq.asyncio

from orchd import protocol as p
from orchd import wire
from orchd.journal import WAL_MAX_BYTES, JournalActor
from orchd.journal_sockets import JournalSockets

EVENT_TEXT = "x" * 8000        # an ~8 KiB event: the size that made the WAL grow to 1.9 GB
EVENTS = 12_000                # ~100 MB of events, three times the WAL bound


def _append(i: int) -> bytes:
    frame = wire.pending_frame(wire.topic("s-flood"), wire.stamp_prefix("s-flood", "w", "command", 0), time.time(),
                               p.WorkerMilestone(text=f"{i} {EVENT_TEXT}"))
    return wire.pack(p.Append(frames=[frame]))


def test_the_wal_stays_under_its_bound_while_a_flood_of_8kib_events_is_logged(tmp_path, short_tmp):
    db = tmp_path / "events.sqlite3"
    wal = tmp_path / "events.sqlite3-wal"

    async def main() -> int:
        ctx = zmq.asyncio.Context()
        sockets = JournalSockets(ctx, "inproc://journal", [f"ipc://{short_tmp}/ev"])
        sockets.open()
        producer = ctx.socket(zmq.PUSH)
        producer.linger = 0
        producer.sndhwm = 200
        producer.connect("inproc://journal")
        actor = asyncio.ensure_future(JournalActor(sockets, db).run(0))
        biggest = 0
        try:
            for i in range(EVENTS):
                await producer.send(_append(i))
                if i % 50 == 0 and wal.exists():
                    biggest = max(biggest, wal.stat().st_size)
            deadline = time.monotonic() + 60
            while actor.done() is False and time.monotonic() < deadline:
                if wal.exists():
                    biggest = max(biggest, wal.stat().st_size)
                conn = sqlite3.connect(db)
                try:
                    if conn.execute("SELECT count(*) FROM events").fetchone()[0] == EVENTS:
                        break
                finally:
                    conn.close()
                await asyncio.sleep(0.05)
            await sockets.flush_and_stop(10.0)
            assert actor.done() and actor.exception() is None
        finally:
            sockets.close()
            ctx.destroy(linger=0)
        return biggest

    biggest = asyncio.run(main())
    conn = sqlite3.connect(db)
    try:
        seqs = [r[0] for r in conn.execute("SELECT seq FROM events ORDER BY seq")]
    finally:
        conn.close()
    assert seqs == list(range(1, EVENTS + 1)), "an event was lost or duplicated"
    assert biggest > 0, "the WAL was never seen (the test measured nothing)"
    print(f"largest WAL {biggest / 2**20:.1f} MiB")
    assert biggest <= 2 * WAL_MAX_BYTES, f"the WAL reached {biggest / 2**20:.0f} MiB"
