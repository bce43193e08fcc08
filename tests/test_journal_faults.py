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
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import zmq
import zmq.asyncio

from orchctl.client import Client
from orchd import journal, metrics, wire
from orchd import protocol as p
from orchd.actor import ChildSpec, Supervisor, sync_view
from orchd import journal_sockets
from orchd import stage
from orchd.store import FLUSH_AFTER_S, EventLog, stage_path
from orchd.follow import SUPERVISOR_FOLLOWS, Follower, Follows
from orchd.journal import JournalActor, JournalSockets
from tests.conftest import fake, wait_for, write_plan

# ---------------------------------------------------------------- pure parts


def test_backoff_doubles_from_50ms_to_a_2s_cap():
    assert [journal.backoff_s(a) for a in range(7)] == [0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 2.0]
    assert journal.backoff_s(10_000) == 2.0


def test_pub_sndhwm_holds_the_queue_to_its_bytes():
    assert journal_sockets.pub_sndhwm(64 << 20, 8 << 10, 100_000) == 8192
    assert journal_sockets.pub_sndhwm(64 << 20, 8 << 10, 1000) == 1000      # pub_hwm still caps it
    assert journal_sockets.pub_sndhwm(64 << 20, 8 << 10, 0) == 8192         # 0: no cap in messages
    assert journal_sockets.pub_sndhwm(1 << 20, 4 << 20, 100_000) == 1       # never 0 (0 would be "no limit")


def test_follows_matches_prefixes_and_kinds_minus_exclusions():
    f = SUPERVISOR_FOLLOWS
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
    """Every event in the log: SQLite's rows and its stage file's (orchd/store.py), read here
    without orchd's reader; the stage first, as a row leaves it only once SQLite has it."""
    staged = {seq: (seq, session, body) for seq, session, _, body in stage.read_all(stage_path(db))[0]}
    conn = sqlite3.connect(db)
    try:
        rows = {r[0]: r for r in conn.execute("SELECT seq, session, body FROM events ORDER BY seq")}
    except sqlite3.OperationalError:  # no table: nothing was ever flushed into this file
        rows = {}
    finally:
        conn.close()
    return [rows.get(seq) or staged[seq] for seq in sorted(rows.keys() | staged.keys())]


class _Harness:
    """JournalSockets bound once, a producer PUSH connected once, a follower PULL and a SUB."""

    def __init__(self, tmp: Path, short: Path, producer_hwm: int = 1000, followers=None) -> None:
        self.db = tmp / "events.sqlite3"
        self.ctx = zmq.asyncio.Context()
        self.sockets = JournalSockets(self.ctx, "inproc://journal", [f"ipc://{short}/ev"])
        self.sockets.open()
        self.follower = self.ctx.socket(zmq.PULL)
        self.follower.linger = 0
        self.follower.bind("inproc://follower")
        self.followers = followers or [Follower("inproc://follower", Follows(prefixes=("worker.",)))]
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


def test_the_daemons_journal_comes_back_under_its_supervisor(tmp_path, short_tmp):
    """``Journal`` as app.py builds it: the root supervisor restarts it after a Crash, and
    the producers and the follower it had keep working with the new actor."""

    async def main():
        ctx = zmq.asyncio.Context()
        db = tmp_path / "events.sqlite3"
        j = journal.Journal(ctx, db, "inproc://journal", [f"ipc://{short_tmp}/ev"], "inproc://supervisor")
        box = ctx.socket(zmq.PULL)
        box.bind("inproc://supervisor")
        producer = ctx.socket(zmq.PUSH)
        producer.connect("inproc://journal")
        root = Supervisor("root", max_restarts=3, period_s=10.0)
        restarts = metrics.actor_restarts.labels("journal")._value.get()
        try:
            root.start_child(ChildSpec("journal", j.run, shutdown_s=5.0))
            for i in range(5):
                await producer.send(_append("s-1", str(i)))
            await producer.send(wire.pack(p.Crash()))
            for i in range(5, 10):
                await producer.send(_append("s-1", str(i)))
            committed: list[bytes] = []
            deadline = time.monotonic() + 10
            while len(committed) < 10:
                assert time.monotonic() < deadline, f"only {len(committed)} events reached the follower"
                if await box.poll(100):
                    committed.extend(wire.supervisor_inbox.decode(await box.recv()).events)
            assert metrics.actor_restarts.labels("journal")._value.get() == restarts + 1
            await j.flush_and_stop(5.0)
            root.begin_shutdown()
            await root.shutdown()
        finally:
            j.close()
            ctx.destroy(linger=0)
        events = _check_log(db, 10, {})
        assert [e["text"] for e in events] == [str(i) for i in range(10)]
        assert [json.loads(js)["seq"] for js in committed] == list(range(1, 11))

    asyncio.run(main())


def test_a_locked_log_holds_the_batch_and_pushes_back_on_producers(tmp_path, short_tmp):
    """While another connection holds SQLite's write lock, the journal's next move of staged
    events into SQLite fails; it retries that, drains nothing else (so the producer's PUSH fills
    up), publishes nothing more than it had staged, says so once; then logs everything in order."""

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
            await h.producer.send(_append("s-1", "1"))  # staged (a write beside the log) and published
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
            assert list(h.published) == [1, 2], "published before it was committed"
            assert [r[0] for r in _rows(h.db)] == [1, 2]  # staged, not in SQLite yet

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
            assert not stage_path(h.db).exists(), "a clean stop leaves everything in SQLite"
            assert task.done() and task.exception() is None
        finally:
            h.close()

    asyncio.run(main())


def test_a_staged_event_moves_into_sqlite_while_the_journal_is_idle(tmp_path, short_tmp):
    """The journal's flush timer: one event, then nothing; it still reaches SQLite (and leaves the
    stage file) about FLUSH_AFTER_S later, without another event to wake the journal."""

    def in_sqlite() -> list[int]:
        conn = sqlite3.connect(h.db)
        try:
            return [r[0] for r in conn.execute("SELECT seq FROM events")]
        except sqlite3.OperationalError:  # no table yet
            return []
        finally:
            conn.close()

    async def main():
        task = asyncio.ensure_future(h.actor().run(0))
        await h.subscribed()
        await h.producer.send(_append("s-1", "0"))
        await h.until(lambda: len(h.published) == 1, 5, "the event")
        t0 = time.monotonic()
        assert stage_path(h.db).exists() and in_sqlite() == []
        await h.until(lambda: in_sqlite() == [1], FLUSH_AFTER_S + 5, "the event in SQLite")
        assert time.monotonic() - t0 > FLUSH_AFTER_S / 2
        assert not stage_path(h.db).exists()
        await h.sockets.flush_and_stop(5.0)
        assert task.exception() is None

    h = _Harness(tmp_path, short_tmp)
    try:
        asyncio.run(main())
    finally:
        h.close()


def test_flush_and_stop_returns_in_time_while_the_log_is_locked_and_loses_nothing(tmp_path, short_tmp, caplog):
    """SQLite locked for good: the stop still returns in time; what was published is in the
    stage file, and the next open of the log (the lock gone) moves it into SQLite."""
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
            h.read()
            assert sorted(h.published) == list(range(1, 51))
            conn = sqlite3.connect(h.db)
            assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 0
            conn.close()
            _check_log(h.db, 50, h.published)  # all of it in the stage file
            EventLog(h.db).close()  # the next start
            assert not stage_path(h.db).exists()
            conn = sqlite3.connect(h.db)
            assert [r[0] for r in conn.execute("SELECT seq FROM events ORDER BY seq")] == list(range(1, 51))
            conn.close()
        finally:
            h.close()

    asyncio.run(main())
    assert not [r for r in caplog.records if r.getMessage() == "journal_unwritten"]


def test_each_follower_gets_the_kinds_it_asked_for_and_health_if_it_wants_it(tmp_path, short_tmp):
    async def main():
        workers = Follower("inproc://follower", Follows(prefixes=("worker.",), exclude=frozenset({"worker.log"})))
        notes = Follower("inproc://notes", Follows(kinds=frozenset({"session.note"})), log_health=False)
        h = _Harness(tmp_path, short_tmp, followers=[workers, notes])
        other = h.ctx.socket(zmq.PULL)
        other.bind("inproc://notes")
        try:
            task = asyncio.ensure_future(h.actor().run(0))
            kinds = [p.WorkerMilestone(text="m"), p.WorkerLog(line="l"), p.SessionNote(message="n"),
                     p.AgentText(text="t"), p.WorkerDone(text="d")]
            stamp = wire.stamp_prefix("s-1", "w", "command", 0)
            await h.producer.send(wire.pack(p.Append(frames=wire.pending_frames(b"s-1", stamp, 1.0, kinds))))
            await h.until(lambda: len(h.committed) == 2, 5, "the worker follower's events")
            assert [json.loads(js)["kind"] for js in h.committed] == ["worker.milestone", "worker.done"]
            got = wire.supervisor_inbox.decode(await asyncio.wait_for(other.recv(), 5))
            assert [json.loads(js)["kind"] for js in got.events] == ["session.note"]
            holder = sqlite3.connect(h.db, isolation_level=None)
            holder.execute("BEGIN IMMEDIATE")
            await h.producer.send(_append("s-1", "x"))
            await h.until(lambda: h.health, 10, "LogHealth to the follower that wants it")
            holder.execute("ROLLBACK")
            holder.close()
            await h.until(lambda: h.health == [h.health[0], None], 10, "LogHealth(None)")
            await h.sockets.flush_and_stop(5.0)
            assert await other.poll(0) == 0  # log_health=False: told nothing about it
            assert task.exception() is None
        finally:
            other.close(linger=0)
            h.close()

    asyncio.run(main())


# ---------------------------------------------------------------- a real daemon

CONFIG = 'worktree_dir = "{wt}"\nstop_grace_s = 2.0\nmetrics_port = {port}\n'
STOP_WITHIN_S = 20.0  # supervisor (stop_grace_s + its margin) then the journal's flush deadline (5 s)
MiB = 1024 * 1024


@pytest.fixture
def tmpfs_state(tmp_path):
    """``tmp_path/state`` on a 20 MiB tmpfs (the daemon fixtures put the state dir there)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    state = tmp_path / "state"
    state.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(state)], capture_output=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {res.stderr.decode().strip()}")
    try:
        yield state
    finally:
        subprocess.run(["umount", "-l", str(state)], check=True)


class _Sub:
    """A SUB on the daemon's events that keeps everything it is sent (seq -> json)."""

    def __init__(self, d, rcvhwm: int = 0) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.SUB)
        self.sock.linger = 0
        self.sock.rcvhwm = rcvhwm
        self.sock.setsockopt(zmq.SUBSCRIBE, b"")
        self.sock.connect(f"ipc://{d.runtime_dir}/events")
        self.client = Client(f"ipc://{d.runtime_dir}/control")
        self.seen: dict[int, bytes] = {}
        for attempt in range(100):  # the subscription is live once a sync marker comes through
            self.client.call(p.Sync(token=str(attempt)))
            if self.sock.poll(100):
                while not self.sock.recv().startswith(wire.SYNC_TOPIC):
                    pass
                return
        raise AssertionError("no sync marker on the events socket")

    def settle(self) -> None:
        """Until a new sync marker arrives: everything published before it was delivered (or dropped)."""
        token = f"settle-{time.monotonic_ns()}"
        self.client.call(p.Sync(token=token))
        want = wire.SYNC_TOPIC + b" " + token.encode()
        wait_for(lambda: self.drain() == want, 30, "the sync marker")

    def drain(self) -> bytes | None:
        """Keep what arrived; returns the last sync marker among it."""
        marker = None
        while True:
            try:
                frame = self.sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return marker
            if frame.startswith(wire.SYNC_TOPIC):
                marker = frame
            else:
                js = wire.split_frame(frame)[2]
                seq = json.loads(js)["seq"]
                assert seq not in self.seen, f"seq {seq} published twice"
                self.seen[seq] = js

    def close(self) -> None:
        self.client.close()
        self.ctx.destroy(linger=0)


def _until(sub: _Sub, cond, timeout_s: float, what: str):
    def check():
        sub.drain()
        return cond()
    return wait_for(check, timeout_s, what)


def _config(tmp_path: Path) -> str:
    with socket.socket() as s:  # a free loopback port for the metrics endpoint
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return CONFIG.format(wt=tmp_path / "wt", port=port)


def _metric(d, name: str) -> float:
    port = int(d.config.read_text().split("metrics_port = ")[1].split()[0])
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for line in body.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no metric {name}")


def _failing_for_a_while(d, sub: _Sub, error: str) -> int:
    """The journal found the log unwritable, retried three times, and published nothing it could not log;
    returns the last seq logged before."""
    _until(sub, lambda: _logged(d, "event_log_unwritable"), 30, "the journal to find the log unwritable")
    failed = _logged(d, "event_log_unwritable")[0]
    assert error in failed["error"]
    _until(sub, lambda: _metric(d, "orchd_log_write_failures_total") >= 3, 30, "three failed appends")
    assert _metric(d, "orchd_log_writable") == 0
    assert max(sub.seen) <= failed["last_seq"], "published an event the log does not have"
    assert not _logged(d, "actor_crashed")
    return failed["last_seq"]


def _logged(d, event: str) -> list[dict]:
    out = []
    for line in d.log().splitlines():
        if f'"event": "{event}"' in line:
            out.append(json.loads(line))
    return out


def _submit(d, git_repo: Path, tmp_path: Path, argv: list[str]) -> str:
    plan = write_plan(tmp_path / f"plan-{time.monotonic_ns()}.json", [{"name": "w", "agent": "command", "argv": argv}])
    return d.ctl_json("submit", "--plan", str(plan), "--target", str(git_repo))["session"]


def _fill(mount: Path, leave_bytes: int) -> Path:
    """A ballast file that leaves about ``leave_bytes`` free on ``mount``."""
    st = os.statvfs(mount)
    size = max(0, st.f_bavail * st.f_frsize - leave_bytes)
    ballast = mount / "ballast"
    with open(ballast, "wb") as fh:
        chunk = b"\0" * MiB
        while size > 0:
            fh.write(chunk[:min(size, MiB)])
            size -= MiB
    return ballast


def _stop(d) -> float:
    t0 = time.monotonic()
    code = d.stop(timeout_s=STOP_WITHIN_S + 10)
    elapsed = time.monotonic() - t0
    assert code == 0, f"daemon exited {code} on SIGTERM:\n{d.log()[-3000:]}"
    assert elapsed < STOP_WITHIN_S, f"SIGTERM took {elapsed:.1f}s"
    return elapsed


def _check_daemon_log(state: Path, seen: dict[int, bytes]) -> list[dict]:
    rows = _rows(state / "events.sqlite3")
    assert rows, "empty log"
    assert [r[0] for r in rows] == list(range(1, len(rows) + 1)), "the log's seq has a gap or a duplicate"
    for seq, js in seen.items():
        assert seq <= len(rows) and rows[seq - 1][2] == js, f"seq {seq} was published but is not in the log"
    events = [json.loads(r[2]) for r in rows]
    last: dict[str, int] = {}
    for ev in events:  # prev: the session's previous seq, 0 for the first since the daemon started
        if ev["kind"] == "daemon.started":
            last = {}
        elif ev["session"] is None:
            assert "prev" not in ev
        else:
            assert ev["prev"] == last.get(ev["session"], 0), ev
            last[ev["session"]] = ev["seq"]
    return events


def _flood_session(d, git_repo, tmp_path, n: int) -> tuple[str, Path]:
    """A session whose agent prints ``n`` JSON lines as fast as it can once ``go`` exists."""
    go = tmp_path / "go"
    sid = _submit(d, git_repo, tmp_path, fake(f"waitfile:{go}", f"json:{n}", "exit:0"))
    wait_for(lambda: d.status(sid)["workers"][0]["state"] == "running", 30, "the agent to run")
    return sid, go


def test_a_full_disk_holds_the_events_until_space_is_freed(tmpfs_state, daemon_factory, git_repo, tmp_path):
    d = daemon_factory(config=_config(tmp_path))
    sub = _Sub(d)
    try:
        sid, go = _flood_session(d, git_repo, tmp_path, 30_000)
        ballast = _fill(tmpfs_state, leave_bytes=512 * 1024)
        go.touch()
        failed_at = _failing_for_a_while(d, sub, "database or disk is full")
        ballast.unlink()
        _until(sub, lambda: _logged(d, "event_log_writable"), 30, "the journal to write again")
        assert _metric(d, "orchd_log_writable") == 1
        d.wait_session(sid, timeout_s=60)
        sub.settle()
        assert max(sub.seen) > failed_at, "nothing was published after the log recovered"
        assert d.status(sid)["state"] == "done"
        _stop(d)
        sub.drain()
    finally:
        sub.close()
    events = _check_daemon_log(tmpfs_state, sub.seen)
    outputs = [e["data"]["i"] for e in events if e["session"] == sid and e["kind"] == "agent.output"]
    assert outputs == list(range(30_000)), "events were lost or reordered while the disk was full"
    assert len(_logged(d, "event_log_unwritable")) == 1 and len(_logged(d, "event_log_writable")) == 1


def test_sigterm_while_the_disk_is_full_then_a_restart(tmpfs_state, daemon_factory, git_repo, tmp_path):
    config = _config(tmp_path)
    d = daemon_factory(config=config)
    sub = _Sub(d)
    try:
        sid, go = _flood_session(d, git_repo, tmp_path, 30_000)
        ballast = _fill(tmpfs_state, leave_bytes=512 * 1024)
        go.touch()
        _failing_for_a_while(d, sub, "database or disk is full")
        _stop(d)
        sub.drain()
    finally:
        sub.close()
    unwritten = _logged(d, "journal_unwritten")
    assert unwritten and unwritten[0]["events"] > 0, d.log()[-3000:]
    ballast.unlink()
    again = daemon_factory(config=config)  # same state dir: numbering goes on from the log
    _stop(again)
    events = _check_daemon_log(tmpfs_state, sub.seen)
    started = [e for e in events if e["kind"] == "daemon.started"]
    assert len(started) == 2 and started[1]["last_seq"] == started[1]["seq"] - 1


def test_a_log_locked_by_another_process_for_7s(daemon_factory, git_repo, tmp_path):
    d = daemon_factory(config=_config(tmp_path))
    sub = _Sub(d)
    holder = None
    try:
        sid, go = _flood_session(d, git_repo, tmp_path, 20_000)
        holder = subprocess.Popen(
            [sys.executable, "-c", "import sqlite3, sys, time\n"
             "c = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=10)\n"
             "c.execute('BEGIN EXCLUSIVE')\nprint('locked', flush=True)\ntime.sleep(7)\nc.execute('ROLLBACK')\n",
             str(d.state_dir / "events.sqlite3")], stdout=subprocess.PIPE)
        assert holder.stdout.readline() == b"locked\n"
        go.touch()
        failed_at = _failing_for_a_while(d, sub, "database is locked")
        _until(sub, lambda: holder.poll() is not None, 30, "the lock holder to end")
        assert holder.returncode == 0
        _until(sub, lambda: _logged(d, "event_log_writable"), 30, "the journal to write again")
        assert _metric(d, "orchd_log_writable") == 1
        d.wait_session(sid, timeout_s=60)
        sub.settle()
        assert max(sub.seen) > failed_at, "nothing was published after the log recovered"
        _stop(d)
        sub.drain()
    finally:
        if holder is not None and holder.poll() is None:
            holder.kill()
        sub.close()
    events = _check_daemon_log(d.state_dir, sub.seen)
    outputs = [e["data"]["i"] for e in events if e["session"] == sid and e["kind"] == "agent.output"]
    assert outputs == list(range(20_000))
    assert not _logged(d, "actor_crashed")


def _rss_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


FLOOD_8K = ("import sys\nline = b'x' * 7900 + b'\\n'\nw = sys.stdout.buffer.write\n"
            "for _ in range(int(sys.argv[1])):\n    w(line)\n")


def test_a_subscriber_that_never_reads_costs_the_daemon_under_100mb(daemon_factory, git_repo, tmp_path):
    d = daemon_factory(config=_config(tmp_path))
    warm = _submit(d, git_repo, tmp_path, [sys.executable, "-c", FLOOD_8K, "100"])
    d.wait_session(warm)
    frozen = _Sub(d, rcvhwm=10)  # synced, then never read again
    try:
        base_kib = _rss_kib(d.proc.pid, "VmRSS")
        n = 20_000  # 160 MB of events: a queue bounded in messages alone (100,000) would hold all of them
        sid = _submit(d, git_repo, tmp_path, [sys.executable, "-c", FLOOD_8K, str(n)])
        d.wait_session(sid, timeout_s=120)
        grown_mib = (_rss_kib(d.proc.pid, "VmHWM") - base_kib) / 1024
        assert grown_mib < 100, f"the daemon grew by {grown_mib:.0f} MB"
        texts = [r for r in _rows(d.state_dir / "events.sqlite3") if r[1] == sid and b'"agent.text"' in r[2]]
        assert len(texts) == n  # everything is in the log
        # the subscriber reads again: it got the start of the flood and missed the rest...
        while frozen.sock.poll(500):
            frozen.drain()
        got = sorted(s for s, js in frozen.seen.items() if json.loads(js)["session"] == sid)
        assert 0 < len(got) < n and got == list(range(got[0], got[-1] + 1))
        # ...which the next event it gets shows as a gap, filled from the log by Replay
        last = max(frozen.seen)
        after = _submit(d, git_repo, tmp_path, fake("exit:0"))
        wait_for(lambda: frozen.sock.poll(100) and (frozen.drain() or max(frozen.seen) > last), 10, "a new event")
        assert min(seq for seq in frozen.seen if seq > last) > last + 1
        reply = frozen.client.call(p.Replay(since=last, limit=10))
        assert isinstance(reply, p.ReplayReply) and json.loads(bytes(reply.events[0]))["seq"] == last + 1
        d.wait_session(after)
    finally:
        frozen.close()
    _stop(d)


def test_an_event_too_big_to_publish_is_logged_and_leaves_a_gap(daemon_factory, git_repo, tmp_path):
    d = daemon_factory(config=_config(tmp_path))
    sub = _Sub(d)
    try:
        sid = _submit(d, git_repo, tmp_path, fake("line:before", "long:20000", "line:after", "exit:0"))
        d.wait_session(sid)
        sub.settle()
    finally:
        sub.close()
    _stop(d)
    events = [e for e in _check_daemon_log(d.state_dir, sub.seen) if e["session"] == sid]
    texts = [e for e in events if e["kind"] == "agent.text"]
    assert [len(e["text"]) for e in texts] == [6, 20000, 5]
    big, after = texts[1], texts[2]
    assert big["seq"] not in sub.seen and after["seq"] in sub.seen
    assert after["prev"] == big["seq"]  # what tells a session subscriber it missed one
    assert all(e["seq"] in sub.seen for e in events if e is not big)
