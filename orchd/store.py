"""The durable event log: SQLite in WAL mode.

The log is the source of truth.  The journal appends batches of already
sequenced events and commits before it publishes them, so anything a
subscriber saw survives a ``kill -9`` of the daemon (WAL pages reach the
OS on commit; ``synchronous=NORMAL`` only defers the fsync to checkpoints,
which matters for power loss, not for a process crash).  Readers open their
own connection; WAL lets them read while the journal writes.

**Disk per event.**  A commit writes every page it touched to the WAL (a page plus
a 24-byte frame header), and with one event per commit (an idle daemon commits each
event alone, for latency) that is the table's last leaf page, plus page 1 and the
parent page whenever the file grows by a page: ~4.8 KB written per ~300-byte event
with 4 KiB pages (measured with ``/proc/self/io``; benchmarks/README.md).  1 KiB pages
were measured too: ~1.8 KB per event, but a flood insert cost ~1.3 µs more per row, a
full scan twice as long, and a log of 8 KiB events (overflow pages) became so slow to
read that a ``Replay`` in tests/test_journal_faults.py took over 10 s; so the log keeps
4 KiB pages (``PAGE_SIZE_BYTES``, fixed by SQLite when the file is created).  Fewer
bytes per event at low rates needs fewer commits, i.e. holding events back before
publishing them, which the latency target forbids.

There is deliberately no index on ``session``: it cost ~1 µs of the ~11 µs
the daemon spends per event (benchmarks/pipeline.py), and a session replay
is a rowid range scan from ``since`` filtered by session, linear in the log
after that point (~1 s per million events), paid once per watcher.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq     INTEGER PRIMARY KEY,
    session TEXT NOT NULL,
    kind    TEXT NOT NULL,
    body    BLOB NOT NULL
);
"""

Row = tuple[int, str, str, bytes]
_INSERT = "INSERT INTO events(seq, session, kind, body) VALUES (?,?,?,?)"
PAGE_SIZE_BYTES = 4096  # of a new log (see "Disk per event" above); an existing log keeps its own


def connect(path: Path, busy_timeout_ms: int = 5000) -> sqlite3.Connection:
    """Open (creating it 0600 if missing) the log; SQLite gives -wal and -shm the same mode.

    The file is created here only when it is not there (``O_EXCL``): closing a descriptor
    of an existing log would drop every POSIX lock this process holds on it, SQLite's
    included, and the next process to close a connection to the log (an ``sqlite3``
    shell, a test) would then take it for the last one and delete the WAL and the -shm
    under the daemon's open connections ("disk I/O error" on every new connection after)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
    except FileExistsError:
        pass
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        conn.execute(f"PRAGMA page_size={PAGE_SIZE_BYTES}")  # only takes effect on a new, empty file
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(SCHEMA)
    except BaseException:
        conn.close()
        raise
    return conn


class EventLog:
    """Append side of the log (one per daemon, owned by the journal).

    Automatic WAL checkpoints are off on this connection: SQLite would run
    them inside a commit, stalling the event pipeline for up to ~100 ms on
    a busy disk.  The journal calls ``checkpoint`` from a thread instead.

    ``busy_timeout_ms`` is how long ``append`` blocks its thread waiting
    for another process's write lock before it raises ``database is
    locked``; the journal keeps it short and retries on its own schedule,
    so the daemon's event loop never stalls for seconds.
    """

    def __init__(self, path: Path, busy_timeout_ms: int = 5000) -> None:
        self.path = path
        self._conn = connect(path, busy_timeout_ms)
        self._conn.execute("PRAGMA wal_autocheckpoint=0")
        self._ckpt: sqlite3.Connection | None = None

    def checkpoint(self, mode: str = "PASSIVE") -> bool:
        """A WAL checkpoint (``PASSIVE`` or ``TRUNCATE``) on a connection of its own (safe
        from a thread, one at a time).  Returns True when readers kept it from finishing."""
        if mode not in ("PASSIVE", "TRUNCATE"):
            raise ValueError(mode)
        if self._ckpt is None:
            self._ckpt = connect(self.path, busy_timeout_ms=1000)
        busy, _, _ = self._ckpt.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
        return bool(busy)

    def last_seq(self) -> int:
        row = self._conn.execute("SELECT max(seq) FROM events").fetchone()
        return row[0] or 0

    def append(self, rows: list[Row]) -> None:
        """All of ``rows`` in one transaction, or none of them.

        A failure (``sqlite3.OperationalError``: disk full, locked, I/O
        error) leaves nothing behind, so the caller may retry the same rows.
        If the rollback itself failed, the next call rolls back first.
        """
        conn = self._conn
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        if len(rows) == 1:  # one statement is its own transaction: no BEGIN/COMMIT round trips (idle pace)
            conn.execute(_INSERT, rows[0])
            return
        conn.execute("BEGIN IMMEDIATE")  # take the write lock now: a locked log fails before any work
        try:
            conn.executemany(_INSERT, rows)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:  # SQLite may already have rolled back (disk full, I/O error)
                conn.execute("ROLLBACK")
            raise

    def close(self, checkpoint: bool = True) -> None:
        """Close both connections; with ``checkpoint``, a last PASSIVE checkpoint first
        (its ``sqlite3.OperationalError``, e.g. disk full, is raised after closing)."""
        try:
            if checkpoint:
                self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        finally:
            if self._ckpt is not None:
                self._ckpt.close()
            self._conn.close()


class LogReader:
    """Read side: replay for clients and for the supervisor's projection."""

    def __init__(self, path: Path) -> None:
        self._conn = connect(path)

    def since(self, seq: int, session: str | None, limit: int) -> list[tuple[int, bytes]]:
        if session is None:
            cur = self._conn.execute(
                "SELECT seq, body FROM events WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit))
        else:
            cur = self._conn.execute(
                "SELECT seq, body FROM events WHERE session = ? AND seq > ? ORDER BY seq LIMIT ?",
                (session, seq, limit))
        return cur.fetchall()

    def kinds_since(self, seq: int, exclude_prefix: str, keep: tuple[str, ...], limit: int) -> list[tuple[int, bytes]]:
        """Events for rebuilding state: all kinds except ``exclude_prefix*`` unless in ``keep``."""
        marks = ",".join("?" * len(keep)) or "''"
        cur = self._conn.execute(
            f"SELECT seq, body FROM events WHERE seq > ? AND (kind NOT LIKE ? OR kind IN ({marks})) "
            "ORDER BY seq LIMIT ?", (seq, exclude_prefix + "%", *keep, limit))
        return cur.fetchall()

    @classmethod
    def read_state(cls, path: Path, exclude_prefix: str, keep: tuple[str, ...]) -> list[tuple[int, bytes]]:
        """Every event a state rebuild needs (``kinds_since`` from the start), on a connection of its own."""
        reader = cls(path)
        try:
            rows: list[tuple[int, bytes]] = []
            seq = 0
            while batch := reader.kinds_since(seq, exclude_prefix, keep, 10_000):
                rows += batch
                seq = batch[-1][0]
            return rows
        finally:
            reader.close()

    def last_seq(self) -> int:
        row = self._conn.execute("SELECT max(seq) FROM events").fetchone()
        return row[0] or 0

    def close(self) -> None:
        self._conn.close()
