"""The event log's stage file (orchd/stage.py, orchd/store.py): its records cut at every byte,
corrupt or out of sequence; a reader following it; a writer whose write fails half-way; and the
move into SQLite after a ``kill -9``."""

from __future__ import annotations

import os
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap

from orchd import stage
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
