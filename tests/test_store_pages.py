"""The event log's page size, and what events at a paced rate write (benchmarks/README.md)."""

import os
import sqlite3

from orchd.store import FLUSH_AFTER_S, PAGE_SIZE_BYTES, EventLog, LogReader


def _io() -> dict[str, int]:
    with open("/proc/self/io") as f:
        return {k: int(v) for k, v in (line.split(":") for line in f)}


def test_events_at_a_paced_rate_cost_their_own_bytes_not_a_page_each(tmp_path):
    """One event per commit (an idle daemon's case), 50 events/s of the log's own clock: each
    is staged with one write, and SQLite gets them a flush at a time, so the disk sees about
    the events' bytes, not a 4 KiB WAL frame per event (benchmarks/README.md, disk per event)."""
    log = EventLog(tmp_path / "events.db")
    stage = tmp_path / "events.db-stage"
    reader = LogReader(tmp_path / "events.db")
    try:
        body = b'{"kind":"agent.output","data":{"text":"' + b"x" * 200 + b'"}}'
        n = 1000
        before = _io()
        flushes = 0
        for seq in range(1, n + 1):
            now = seq / 50
            log.append([(seq, "s-0123456789abcdef", "agent.output", body)], now)
            if seq == 10:  # staged: in the stage file, not in SQLite yet, and readers see it
                assert stage.exists()
                assert log._sqlite_last_seq() == 0
                assert [r[0] for r in reader.since(7, "s-0123456789abcdef", 10)] == [8, 9, 10]
                assert reader.last_seq() == 10
            if log.flush_due() <= now:
                log.flush()
                flushes += 1
                assert not stage.exists()
        after = _io()
        wal_per_event = os.path.getsize(tmp_path / "events.db-wal") / n
        assert log.last_seq() == n
    finally:
        log.close(checkpoint=False)
    assert n // (50 * FLUSH_AFTER_S) - 1 <= flushes <= n // (50 * FLUSH_AFTER_S)
    assert not stage.exists(), "a clean close leaves nothing staged"
    conn = sqlite3.connect(tmp_path / "events.db")
    assert conn.execute("PRAGMA page_size").fetchone()[0] == PAGE_SIZE_BYTES
    assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == n
    conn.close()
    frame = PAGE_SIZE_BYTES + 24  # a WAL frame: one page and its header
    assert wal_per_event < frame / 4, wal_per_event  # one commit per event would write ~1.2 frames
    written = after["write_bytes"] - before["write_bytes"]
    print(f"written per event {written / n:.0f} B, WAL per event {wal_per_event:.0f} B")
    assert written / n < 1024, written / n  # stage + WAL, as the kernel counts it
    assert [r[0] for r in reader.since(n - 2, "s-0123456789abcdef", 10)] == [n - 1, n]
    reader.close()


def test_existing_log_keeps_its_page_size(tmp_path):
    path = tmp_path / "events.db"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA page_size=2048")
    conn.execute("CREATE TABLE events (seq INTEGER PRIMARY KEY, session TEXT NOT NULL, kind TEXT NOT NULL, "
                 "body BLOB NOT NULL)")
    conn.execute("INSERT INTO events VALUES (1, 's', 'k', x'7b7d')")
    conn.commit()
    conn.close()
    log = EventLog(path)
    try:
        assert log.last_seq() == 1
        log.append([(2, "s", "k", b"{}")], 0.0)
    finally:
        log.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA page_size").fetchone()[0] == 2048
    assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 2
    conn.close()


def test_a_second_connection_in_the_daemon_keeps_its_locks_so_another_process_leaves_the_wal(tmp_path):
    """The daemon opens more connections to its log while the journal's is open (replay, the
    seq for ``Pong``).  Opening one must not drop the locks the others hold: then another
    process that reads the log and closes its connection would delete the WAL and the -shm
    under them, and every connection opened after would fail with "disk I/O error"."""
    import subprocess
    import sys

    db = tmp_path / "events.sqlite3"
    log = EventLog(db)
    try:
        log.append([(1, "s", "k", b"{}")], 0.0)
        log.flush()  # into SQLite: the WAL exists
        reader = LogReader(db)  # a second connection in this process, as the supervisor's
        out = subprocess.run([sys.executable, "-c", "import sqlite3, sys\nc = sqlite3.connect(sys.argv[1])\n"
                              "print(c.execute('SELECT count(*) FROM events').fetchone()[0])\nc.close()", str(db)],
                             capture_output=True, text=True, timeout=30)
        assert out.stdout.strip() == "1", out.stderr
        assert (tmp_path / "events.sqlite3-wal").exists(), "another process deleted the daemon's WAL"
        log.append([(2, "s", "k", b"{}")], 0.0)
        fresh = LogReader(db)
        assert fresh.last_seq() == 2 and reader.last_seq() == 2
        fresh.close()
        reader.close()
    finally:
        log.close()
