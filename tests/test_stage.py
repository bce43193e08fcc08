"""The event log's stage file (orchd/stage.py, orchd/store.py): its records cut at every byte,
corrupt or out of sequence; a reader following it; a writer whose write fails half-way; the
move into SQLite after a ``kill -9``; and the move the journal runs in a thread while it goes on
staging."""

from __future__ import annotations

import os
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading

from orchd import stage, store
from orchd.store import EventLog, LogReader, stage_path

ROWS = [
    (7, "s-1", "agent.text", b'{"text":"hello"}'),
    (8, "s-\u00e9t\u00e9", "worker.milestone", b""),
    (9, "", "daemon.started", b"x" * 300),
]


def test_whole_records_are_read_wherever_the_data_is_cut():
    data = stage.encode(ROWS)
    ends = [len(stage.encode(ROWS[:i])) for i in range(1, len(ROWS) + 1)]
    for cut in range(len(data) + 1):
        rows, used = stage.parse(data[:cut])
        whole = [e for e in ends if e <= cut]
        assert rows == ROWS[:len(whole)], cut
        assert used == (whole[-1] if whole else 0), cut


def test_reading_stops_at_a_corrupt_or_out_of_sequence_record():
    data = bytearray(stage.encode(ROWS))
    first = len(stage.encode(ROWS[:1]))
    for i in range(first, len(stage.encode(ROWS[:2]))):
        bad = bytearray(data)
        bad[i] ^= 0x40
        assert stage.parse(bytes(bad)) == (ROWS[:1], first), i
    gap = stage.encode([ROWS[0], (9, "s", "k", b"{}")])
    assert stage.parse(gap)[0] == ROWS[:1]
    assert stage.parse(bytes(data), after_seq=6)[0] == ROWS
    assert stage.parse(bytes(data), after_seq=7) == ([], 0)


def test_a_tail_follows_the_file_as_it_grows_and_when_it_is_replaced(tmp_path):
    path = tmp_path / "log-stage"
    writer = stage.StageWriter(path)
    tail = stage.StageTail(path)
    assert tail.rows() == []
    writer.append(ROWS[:1])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # events are for the owner alone, as the log
    assert tail.rows() == ROWS[:1]
    writer.append(ROWS[1:])
    assert tail.rows() == ROWS
    with open(path, "ab") as f:  # half a record: a write still under way
        f.write(stage.encode([(10, "s", "k", b"{}")])[:10])
    assert tail.rows() == ROWS
    writer.reset()
    assert not path.exists() and tail.rows() == []
    writer.append([(10, "s", "k", b"{}")])  # a new file (the next flush period)
    assert tail.rows() == [(10, "s", "k", b"{}")]
    writer.reset()  # and one bigger than the last: its inode number may well be the same
    bigger = [(seq, "s", "k", b"y" * 50) for seq in range(11, 16)]
    writer.append(bigger)
    assert tail.rows() == bigger
    writer.close()


def test_a_write_that_fails_half_way_is_cut_back_before_the_next_one(tmp_path):
    """RLIMIT_FSIZE makes the kernel take part of a write and refuse the rest (EFBIG), as a full
    disk does; the next append must not leave its records behind the torn one."""
    path = tmp_path / "log-stage"
    script = textwrap.dedent(f"""
        import resource, sys
        sys.path.insert(0, {os.getcwd()!r})
        from pathlib import Path
        from orchd import stage
        w = stage.StageWriter(Path({str(path)!r}))
        w.append([(1, "s", "k", b"a" * 100)])
        resource.setrlimit(resource.RLIMIT_FSIZE, (200, resource.RLIM_INFINITY))
        try:
            w.append([(2, "s", "k", b"b" * 100), (3, "s", "k", b"c" * 100)])
        except OSError as exc:
            print("failed", exc.errno)
        print("size", Path({str(path)!r}).stat().st_size)
        resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        w.append([(2, "s", "k", b"d" * 100)])
        w.close()
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split("\n")
    assert lines[0].startswith("failed "), out.stdout
    assert lines[1] == "size 200", out.stdout  # part of the batch did reach the file
    rows, good, size = stage.read_all(path)
    assert [(r[0], r[3][:1]) for r in rows] == [(1, b"a"), (2, b"d")]
    assert good == size


def test_staged_events_move_into_sqlite_when_the_log_is_opened_after_a_kill_9(tmp_path, caplog):
    db = tmp_path / "events.sqlite3"
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {os.getcwd()!r})
        from pathlib import Path
        from orchd.store import EventLog
        log = EventLog(Path({str(db)!r}))
        log.append([(i, "s-1", "agent.text", b'{{"i":%d}}' % i) for i in range(1, 70)], 0.0)  # SQLite
        for i in range(70, 75):
            log.append([(i, "s-1", "agent.text", b'{{"i":%d}}' % i)], 0.0)  # staged
        print("ready", flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        reader = LogReader(db)  # a reader sees the staged events while the writer lives
        assert reader.last_seq() == 74
        assert [r[0] for r in reader.since(60, "s-1", 100)] == list(range(61, 75))
        reader.close()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    with open(stage_path(db), "ab") as f:  # and a crash inside a write: half a record
        f.write(stage.encode([(75, "s-1", "agent.text", b"{}")])[:-3])
    caplog.set_level("INFO", logger="orchd.store")
    log = EventLog(db)
    assert log.last_seq() == 74
    log.close()
    assert not stage_path(db).exists()
    conn = sqlite3.connect(db)
    assert [r[0] for r in conn.execute("SELECT seq FROM events ORDER BY seq")] == list(range(1, 75))
    conn.close()
    torn = [r for r in caplog.records if r.getMessage() == "event_log_stage_torn"]
    assert torn and torn[0].kv["kept_rows"] == 5


def test_a_stage_already_in_sqlite_is_read_once_and_not_moved_twice(tmp_path):
    """A crash between SQLite's commit and the stage file's deletion leaves rows in both."""
    db = tmp_path / "events.sqlite3"
    log = EventLog(db)
    log.append([(i, "s-1", "k", b"%d" % i) for i in range(1, 6)], 0.0)
    log.flush()
    log.close()
    stage.StageWriter(stage_path(db)).append([(i, "s-1", "k", b"%d" % i) for i in range(3, 8)])
    reader = LogReader(db)
    assert [r[0] for r in reader.since(0, None, 100)] == list(range(1, 8))
    assert [r[0] for r in reader.since(0, "s-1", 4)] == [1, 2, 3, 4]
    assert [r[0] for r in reader.kinds_since(4, "x.", (), 100)] == [5, 6, 7]
    reader.close()
    log = EventLog(db)
    assert log.last_seq() == 7
    log.close()
    conn = sqlite3.connect(db)
    assert [r[0] for r in conn.execute("SELECT seq FROM events ORDER BY seq")] == list(range(1, 8))
    conn.close()


def _in_sqlite(db) -> list[int]:
    conn = sqlite3.connect(db)
    try:
        return [r[0] for r in conn.execute("SELECT seq FROM events ORDER BY seq")]
    finally:
        conn.close()


def _row(i: int) -> tuple[int, str, str, bytes]:
    return (i, "s-1", "agent.text", b'{"i":%d}' % i)


def test_rows_staged_during_a_move_stay_staged_in_a_file_that_replaces_the_old_one(tmp_path):
    """The journal moves staged rows into SQLite in a thread and goes on staging: a reader sees
    every row before, during and after the move; afterwards the stage file holds only the rows
    staged meanwhile, and SQLite the others."""
    db = tmp_path / "events.sqlite3"
    log = EventLog(db)
    reader = LogReader(db)
    every = lambda n: [r[0] for r in reader.since(0, None, 100)] == list(range(1, n + 1))  # noqa: E731
    log.append([_row(i) for i in range(1, 11)], 0.0)
    moving = log.move_start()
    assert [r[0] for r in moving] == list(range(1, 11))
    log.append([_row(11)], 0.1)
    log.append([_row(12)], 0.2)
    assert every(12)
    thread = threading.Thread(target=log.move, args=(moving,))
    thread.start()
    thread.join(10)
    assert _in_sqlite(db) == list(range(1, 11)) and every(12)
    log.moved(5.0)
    assert [r[0] for r in stage.read_all(stage_path(db))[0]] == [11, 12]
    assert not stage_path(db).with_name(stage_path(db).name + ".new").exists()
    assert every(12) and log.last_seq() == 12
    assert log.flush_due() == 5.0 + 2.0  # the rows left are as old as the end of the move, at most
    log.append([_row(13)], 5.5)  # the writer appends to the new file
    assert every(13)
    log.close()
    assert _in_sqlite(db) == list(range(1, 14)) and not stage_path(db).exists()
    reader.close()


def test_a_move_given_up_on_after_it_committed_is_not_inserted_twice(tmp_path):
    """A crash (or a cancelled move) between the thread's commit and ``moved``: flush, close and
    the next open go by what SQLite has, never inserting a row twice."""
    db = tmp_path / "events.sqlite3"
    log = EventLog(db)
    log.append([_row(i) for i in range(1, 6)], 0.0)
    log.move(log.move_start())  # committed; moved() never called
    log.append([_row(6)], 1.0)
    assert log.last_seq() == 6
    log.append([_row(i) for i in range(7, 7 + 64)], 2.0)  # a flood batch goes direct: 6 first, then it
    assert _in_sqlite(db) == list(range(1, 71)) and not stage_path(db).exists()
    log.append([_row(71)], 3.0)
    log.move(log.move_start())
    log.close()  # flush: nothing left to insert
    assert _in_sqlite(db) == list(range(1, 72))
    stage.StageWriter(stage_path(db)).append([_row(i) for i in range(70, 74)])  # crash: a stage, half in SQLite
    stage_path(db).with_name(stage_path(db).name + ".new").write_bytes(b"a replacement never renamed")
    log = EventLog(db)
    assert log.last_seq() == 73
    assert not stage_path(db).with_name(stage_path(db).name + ".new").exists()
    log.close()
    assert _in_sqlite(db) == list(range(1, 74))


def test_a_full_stage_is_due_at_once_and_a_big_one_goes_to_sqlite_directly(tmp_path):
    db = tmp_path / "events.sqlite3"
    log = EventLog(db)
    body = b"x" * 1000
    seq = 0
    while log.flush_due() is None or log.flush_due() > 1.0:
        seq += 1
        log.append([(seq, "s-1", "k", body)], 1.0)
    assert log.flush_due() == 1.0 and store.FLUSH_BYTES <= seq * 1000 < store.FLUSH_BYTES + 1000
    assert _in_sqlite(db) == []
    assert not log.direct(1, 1000) and log.direct(store.DIRECT_ROWS, 64)
    while not log.direct(1, 1000):
        seq += 1
        log.append([(seq, "s-1", "k", body)], 1.0)
    assert _in_sqlite(db) == []
    log.append([(seq + 1, "s-1", "k", body)], 1.0)
    assert _in_sqlite(db) == list(range(1, seq + 2)) and not stage_path(db).exists()
    log.close()


def test_a_state_rebuild_reads_sqlite_then_the_stage_in_batches(tmp_path):
    """``LogReader.state_batches``: what ``read_state`` returns, ``limit`` rows at a time, the
    staged rows after SQLite's, the excluded kinds left out (the rebuilds of the supervisor and
    of the review and recovery actors read the log this way)."""
    import asyncio

    db = tmp_path / "events.sqlite3"
    log = EventLog(db)
    kinds = ["session.state", "agent.text", "agent.result"]
    log.append([(i, "s-1", kinds[i % 3], b"%d" % i) for i in range(1, 21)], 0.0)
    log.flush()  # 1..20 in SQLite
    log.append([(i, "s-1", kinds[i % 3], b"%d" % i) for i in range(21, 27)], 0.0)  # 21..26 staged
    assert stage_path(db).exists()

    async def batches() -> list[list[int]]:
        return [[seq for seq, _ in rows] async for rows in LogReader.state_batches(db, "agent.", ("agent.result",), 5)]

    got = asyncio.run(batches())
    log.close()
    wanted = [i for i in range(1, 27) if kinds[i % 3] != "agent.text"]
    whole = LogReader.read_state(db, "agent.", ("agent.result",))
    assert [seq for batch in got for seq in batch] == wanted == [seq for seq, _ in whole]
    assert [len(b) for b in got] == [5, 5, 5, 2]  # 17 of the 26
