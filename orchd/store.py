"""The durable event log: SQLite in WAL mode, with a small append-only stage in front.

The log is the source of truth.  The journal appends batches of already
sequenced events and commits before it publishes them, so anything a
subscriber saw survives a ``kill -9`` of the daemon.  Readers open their own
connection; WAL lets them read while the journal writes.

**The stage.**  A small batch (an idle or paced daemon commits each event
alone, for latency) is not written to SQLite at once: it is appended to
``<log>-stage``, a file of checksummed records beside the database, with one
``write`` (the commit point: the bytes are in the OS once it returns, which is
what survives a process crash, exactly as a WAL commit with
``synchronous=NORMAL`` does).  The staged rows move into SQLite in one
transaction when they are ``FLUSH_AFTER_S`` old or pass ``FLUSH_BYTES``: the
journal runs that move in a thread (``move_start``, ``move``, ``moved``) and
keeps staging meanwhile, so a move (~1 ms per 64 KiB) holds no event up; the
rows staged during the move are written to a new stage file that replaces the
old one (``os.rename``), or the file is deleted when there are none.  A large
batch (a flood, or a stage past ``STAGE_MAX_BYTES``) goes straight to SQLite,
the unmoved staged rows first, in one transaction.  A
log opened for appending (the journal, the daemon at start) first moves a
leftover stage (a crash) into SQLite; a torn last record (a crash inside a
``write``) was never published and is dropped with a warning.

Why: a commit writes every page it touched to the WAL (a page plus a 24-byte
frame header), so one event per commit costs a whole 4 KiB page, ~5 KB of disk
written per ~300-byte event at 50 events/s (``benchmarks/pipeline.py``); a
stage record costs its own bytes, and SQLite then writes each page once per
flush.  1 KiB SQLite pages were measured as the alternative: ~1.8 KB per event,
but slower floods, scans twice as long and very slow reads of logs of 8 KiB
events.  The stage is also cheaper on the CPU (a ``write`` instead of an
``INSERT`` and a WAL frame).

**Readers see both.**  ``LogReader`` reads the stage file first and SQLite
second: rows leave the stage only after SQLite committed them (the file that
replaces the stage after a move holds only rows SQLite does not have), so
every row is in one or the other, and rows seen twice are taken once.  Which
rows SQLite has is one number, ``_in_sqlite`` (the log's seqs only grow):
opening, a move, a direct commit and ``flush`` all go by it, so a row is
never inserted twice, whatever order a crash or a cancelled move leaves.
Power loss: the stage is not fsynced, like the WAL under
``synchronous=NORMAL``; the records that reached the disk are kept up to the
first one that fails its checksum.
A tool that queries the SQLite file directly while the daemon runs may miss
the last ``FLUSH_AFTER_S`` of events; after a clean stop nothing is staged.

There is deliberately no index on ``session``: it cost ~1 µs of the ~11 µs
the daemon spends per event (benchmarks/pipeline.py), and a session replay
is a rowid range scan from ``since`` filtered by session, linear in the log
after that point (~1 s per million events), paid once per watcher.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from orchd import log
from orchd.stage import Row, StageTail, StageWriter, read_all

_log = log.get("orchd.store")

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq     INTEGER PRIMARY KEY,
    session TEXT NOT NULL,
    kind    TEXT NOT NULL,
    body    BLOB NOT NULL
);
"""

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


FLUSH_AFTER_S = 2.0             # staged rows move into SQLite (in the journal's thread) at this age...
FLUSH_BYTES = 64 * 1024         # ...or past this many bytes staged (a move takes ~1 ms per 64 KiB)
STAGE_MAX_BYTES = 1024 * 1024   # a batch that would stage past this goes to SQLite directly...
DIRECT_ROWS = 64                # ...and so does a batch of this many rows (a flood)
WRITER_CACHE_KIB = 512          # the appending connection's page cache (SQLite's default: 2 MiB)


def stage_path(path: Path) -> Path:
    return path.with_name(path.name + "-stage")


class EventLog:
    """Append side of the log (one per daemon, owned by the journal; ``orchd run`` opens one
    before the journal starts, under the daemon's lock).  Never open one beside a running
    daemon: it would move the live stage file into SQLite under the journal's feet.

    Its page cache is ``WRITER_CACHE_KIB`` (appends touch the last pages of one
    B-tree): with the move into SQLite in a thread, SQLite's default 2 MiB
    cache filled a second malloc arena as well (200 agents: 147 KB of RSS per
    agent with the default, 106 KB with this; the flood rate is unchanged).

    Automatic WAL checkpoints are off on this connection: SQLite would run
    them inside a commit, stalling the event pipeline for up to ~100 ms on
    a busy disk.  The journal calls ``checkpoint`` from a thread instead.

    ``busy_timeout_ms`` is how long a SQLite write blocks its thread waiting
    for another process's write lock before it raises ``database is
    locked``; the journal keeps it short and retries on its own schedule,
    so the daemon's event loop never stalls for seconds.

    Opening it moves a stage left by a crash into SQLite (so it raises like
    an append when the log cannot be written).  ``flush_due()`` says when
    the staged rows must move.  The journal then takes ``move_start()`` on
    its event loop, runs ``move(rows)`` in a thread and calls ``moved(now)``
    back on the loop; ``append`` may stage more meanwhile, but must not go to
    SQLite (``direct``) while a move runs.  ``flush`` is all three at once.
    Every SQLite write holds ``_lock``, so a move still running in its thread
    when the journal gives up on it (a crash, a stop) finishes before
    ``close`` writes.
    """

    def __init__(self, path: Path, busy_timeout_ms: int = 5000) -> None:
        self.path = path
        self._conn = connect(path, busy_timeout_ms)
        self._ckpt: sqlite3.Connection | None = None
        self._stage = StageWriter(stage_path(path))
        self._staged: list[Row] = []
        self._staged_bytes = 0
        self._staged_at = 0.0   # monotonic time of the oldest staged row
        self._lock = threading.Lock()  # held by every write to SQLite (a move runs in a thread)
        self._in_sqlite = 0     # the last seq SQLite has
        try:
            self._conn.execute("PRAGMA wal_autocheckpoint=0")
            self._conn.execute(f"PRAGMA cache_size=-{WRITER_CACHE_KIB}")
            self._in_sqlite = self._sqlite_last_seq()
            self._recover()
        except BaseException:
            self._conn.close()
            raise

    def _recover(self) -> None:
        self._stage.discard_replacement()  # a crash between writing a replacement and renaming it
        rows, good, size = read_all(self._stage.path)
        if size == 0 and not self._stage.path.exists():
            return
        if good < size:
            _log.warning("event_log_stage_torn", dropped_bytes=size - good, kept_rows=len(rows))
        rows = [r for r in rows if r[0] > self._in_sqlite]
        if rows:
            self._commit(rows)
            self._in_sqlite = rows[-1][0]
            _log.info("event_log_stage_recovered", rows=len(rows), last_seq=rows[-1][0])
        self._stage.reset()

    def checkpoint(self, mode: str = "PASSIVE") -> bool:
        """A WAL checkpoint (``PASSIVE`` or ``TRUNCATE``) on a connection of its own (safe
        from a thread, one at a time).  Returns True when readers kept it from finishing."""
        if mode not in ("PASSIVE", "TRUNCATE"):
            raise ValueError(mode)
        if self._ckpt is None:
            self._ckpt = connect(self.path, busy_timeout_ms=1000)
        busy, _, _ = self._ckpt.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
        return bool(busy)

    def _sqlite_last_seq(self) -> int:
        row = self._conn.execute("SELECT max(seq) FROM events").fetchone()
        return row[0] or 0

    def last_seq(self) -> int:
        return max(self._in_sqlite, self._staged[-1][0] if self._staged else 0)

    def direct(self, n: int, size: int) -> bool:
        """Would a batch of ``n`` rows and ``size`` body bytes go to SQLite (not to the stage)?"""
        return n >= DIRECT_ROWS or self._staged_bytes + size >= STAGE_MAX_BYTES

    def append(self, rows: list[Row], now: float, size: int | None = None) -> None:
        """All of ``rows`` durably (against a process crash), or none of them.

        A small batch is staged; a large one (``direct``) goes to SQLite with the
        unmoved staged rows before it, in one transaction.  A failure
        (``sqlite3.OperationalError``: locked, disk full, I/O error; ``OSError``
        from the stage) leaves nothing of ``rows`` behind, so the caller may
        retry the same rows.  ``size``: the bytes of their bodies, when the
        caller has counted them already."""
        if size is None:
            size = sum(len(r[3]) for r in rows)
        if self.direct(len(rows), size):
            with self._lock:
                self._commit(self._unmoved() + rows)
                self._in_sqlite = rows[-1][0]
            self._unstage([])
            return
        self._stage.append(rows)
        if not self._staged:
            self._staged_at = now
        self._staged += rows
        self._staged_bytes += size

    def flush_due(self) -> float | None:
        """The monotonic time at which the staged rows must move into SQLite; None: nothing staged."""
        if not self._staged:
            return None
        if self._staged_bytes >= FLUSH_BYTES:
            return self._staged_at
        return self._staged_at + FLUSH_AFTER_S

    def _unmoved(self) -> list[Row]:
        staged, top = self._staged, self._in_sqlite
        if not staged or staged[0][0] > top:
            return staged
        return [r for r in staged if r[0] > top]

    def move_start(self) -> list[Row]:
        """The staged rows SQLite does not have yet, for ``move`` (a list of their own)."""
        return list(self._unmoved())

    def move(self, rows: list[Row]) -> None:
        """Commit ``rows`` (from ``move_start``) to SQLite; safe in a thread.  Raises like
        ``append``; the rows stay staged then."""
        with self._lock:
            rows = [r for r in rows if r[0] > self._in_sqlite]
            if rows:
                self._commit(rows)
                self._in_sqlite = rows[-1][0]

    def moved(self, now: float) -> None:
        """After a ``move`` (on the thread that appends): forget the rows SQLite has now, and
        replace the stage file by one with the rows staged since, if any."""
        self._unstage(self._unmoved(), now)

    def flush(self) -> None:
        """Move the staged rows into SQLite now (raises like ``append``; they stay staged then)."""
        if self._staged:
            self.move(self.move_start())
            self.moved(0.0)

    def _unstage(self, rest: list[Row], now: float = 0.0) -> None:
        """Keep ``rest`` staged (rows SQLite does not have) and drop the others: delete the stage
        file, or replace it with one of ``rest``.  A file that cannot be deleted or replaced is
        harmless (its rows are read once, and skipped by the next open), so that is only logged:
        raising would make the caller append the same rows again."""
        self._staged = rest
        self._staged_bytes = sum(len(r[3]) for r in rest)
        self._staged_at = now
        try:
            if rest:
                self._stage.replace(rest)
            else:
                self._stage.reset()
        except OSError as exc:
            _log.warning("event_log_stage_not_replaced", error=str(exc), rows_left=len(rest))

    def _commit(self, rows: list[Row]) -> None:
        conn = self._conn
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        if len(rows) == 1:  # one statement is its own transaction: no BEGIN/COMMIT round trips
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
        """Move staged rows into SQLite, then close both connections; with ``checkpoint``, a
        last PASSIVE checkpoint first.  A failure (``sqlite3.OperationalError``, e.g. disk
        full or locked) is raised after closing; staged rows then stay in the stage file,
        for the next open."""
        try:
            self.flush()
            if checkpoint:
                with self._lock:
                    self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        finally:
            self._stage.close()
            if self._ckpt is not None:
                self._ckpt.close()
            with self._lock:
                self._conn.close()


class LogReader:
    """Read side: replay for clients and for the supervisor's projection (SQLite and the stage)."""

    def __init__(self, path: Path) -> None:
        self._conn = connect(path)
        self._stage = StageTail(stage_path(path))

    def _merge(self, staged: list[Row], rows: list, after: int, limit: int, keep) -> list[tuple[int, bytes]]:
        """SQLite's ``rows`` (read after ``staged``), then the staged rows past them that ``keep``
        takes, up to ``limit``.  A row in both (the stage was read just before its flush) counts once."""
        if len(rows) >= limit or not staged:
            return rows
        top = rows[-1][0] if rows else after
        for row in staged:
            if row[0] > top and keep(row):
                rows.append((row[0], row[3]))
                if len(rows) >= limit:
                    break
        return rows

    def since(self, seq: int, session: str | None, limit: int) -> list[tuple[int, bytes]]:
        staged = self._stage.rows()  # first: a row leaves the stage only once SQLite has it
        if session is None:
            cur = self._conn.execute(
                "SELECT seq, body FROM events WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit))
            return self._merge(staged, cur.fetchall(), seq, limit, lambda r: True)
        cur = self._conn.execute(
            "SELECT seq, body FROM events WHERE session = ? AND seq > ? ORDER BY seq LIMIT ?",
            (session, seq, limit))
        return self._merge(staged, cur.fetchall(), seq, limit, lambda r: r[1] == session)

    def kinds_since(self, seq: int, exclude_prefix: str, keep: tuple[str, ...], limit: int) -> list[tuple[int, bytes]]:
        """Events for rebuilding state: all kinds except ``exclude_prefix*`` unless in ``keep``."""
        staged = self._stage.rows()
        marks = ",".join("?" * len(keep)) or "''"
        cur = self._conn.execute(
            f"SELECT seq, body FROM events WHERE seq > ? AND (kind NOT LIKE ? OR kind IN ({marks})) "
            "ORDER BY seq LIMIT ?", (seq, exclude_prefix + "%", *keep, limit))
        def wanted(r: Row) -> bool:
            return not r[2].startswith(exclude_prefix) or r[2] in keep
        return self._merge(staged, cur.fetchall(), seq, limit, wanted)

    @classmethod
    async def state_batches(cls, path: Path, exclude_prefix: str, keep: tuple[str, ...],
                            limit: int = 10_000) -> AsyncIterator[list[tuple[int, bytes]]]:
        """``read_state``'s events, ``limit`` at a time, each batch read in a thread: a state rebuild
        applies one before the next is read, so the log is never in memory whole, and the event
        loop gets a turn between two batches.  The reader lives in one thread of its own, so a
        rebuild cancelled during a read closes it only after that read (in the same thread)."""
        loop = asyncio.get_running_loop()
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="orchd-rebuild")
        reader: LogReader | None = None
        try:
            reader = await loop.run_in_executor(pool, cls, path)
            seq = 0
            while batch := await loop.run_in_executor(pool, reader.kinds_since, seq, exclude_prefix, keep, limit):
                yield batch
                seq = batch[-1][0]
        finally:
            if reader is not None:
                pool.submit(reader.close)
            pool.shutdown(wait=False)

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
        staged = self._stage.rows()
        row = self._conn.execute("SELECT max(seq) FROM events").fetchone()
        return max(row[0] or 0, staged[-1][0] if staged else 0)

    def close(self) -> None:
        self._conn.close()
