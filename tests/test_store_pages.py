"""The event log's page size: small pages for a new log (disk per event), an old log untouched."""

import os
import sqlite3

from orchd.store import PAGE_SIZE_BYTES, EventLog, LogReader


def _write_bytes() -> int:
    with open("/proc/self/io") as f:
        for line in f:
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    return 0


def test_new_log_small_pages_and_wal_bytes_per_single_event_commit(tmp_path):
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
    assert conn.execute("PRAGMA page_size").fetchone()[0] == PAGE_SIZE_BYTES == 1024
    conn.close()
    assert wal_per_event < 2200, wal_per_event  # 4 KiB pages gave ~4,750 bytes per event
    assert per_event < 2200, per_event
    reader = LogReader(tmp_path / "events.db")
    assert reader.last_seq() == n
    assert [r[0] for r in reader.since(n - 2, "s-0123456789abcdef", 10)] == [n - 1, n]
    reader.close()


def test_existing_log_keeps_its_page_size(tmp_path):
    path = tmp_path / "events.db"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA page_size=4096")
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
    assert conn.execute("PRAGMA page_size").fetchone()[0] == 4096
    assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 2
    conn.close()
