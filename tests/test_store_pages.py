"""The event log's page size, and what one single-event commit writes (benchmarks/README.md)."""

import os
import sqlite3

from orchd.store import PAGE_SIZE_BYTES, EventLog, LogReader


def _write_bytes() -> int:
    with open("/proc/self/io") as f:
        for line in f:
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    return 0


def test_a_single_event_commit_writes_about_one_page_to_the_wal(tmp_path):
    log = EventLog(tmp_path / "events.db")
    try:
        body = b'{"kind":"agent.output","data":{"text":"' + b"x" * 200 + b'"}}'
        n = 300
        before = _write_bytes()
        for seq in range(1, n + 1):  # one event per commit: an idle daemon's case
            log.append([(seq, "s-0123456789abcdef", "agent.output", body)])
        per_event = (_write_bytes() - before) / n
        wal_per_event = os.path.getsize(tmp_path / "events.db-wal") / n
    finally:
        log.close(checkpoint=False)
    conn = sqlite3.connect(tmp_path / "events.db")
    assert conn.execute("PRAGMA page_size").fetchone()[0] == PAGE_SIZE_BYTES
    conn.close()
    frame = PAGE_SIZE_BYTES + 24  # a WAL frame: one page and its header
    # the last leaf page every commit, page 1 and a parent page when the file grows: ~1.2 frames
    assert frame <= wal_per_event < 1.5 * frame, wal_per_event
    assert per_event < 1.5 * frame, per_event  # what the process made the kernel write: the WAL, no more
    reader = LogReader(tmp_path / "events.db")
    assert reader.last_seq() == n
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
        log.append([(2, "s", "k", b"{}")])
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
        log.append([(1, "s", "k", b"{}")])
        reader = LogReader(db)  # a second connection in this process, as the supervisor's
        out = subprocess.run([sys.executable, "-c", "import sqlite3, sys\nc = sqlite3.connect(sys.argv[1])\n"
                              "print(c.execute('SELECT count(*) FROM events').fetchone()[0])\nc.close()", str(db)],
                             capture_output=True, text=True, timeout=30)
        assert out.stdout.strip() == "1", out.stderr
        assert (tmp_path / "events.sqlite3-wal").exists(), "another process deleted the daemon's WAL"
        log.append([(2, "s", "k", b"{}")])
        fresh = LogReader(db)
        assert fresh.last_seq() == 2 and reader.last_seq() == 2
        fresh.close()
        reader.close()
    finally:
        log.close()
