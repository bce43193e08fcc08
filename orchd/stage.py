"""The event log's stage file: checksummed records appended in front of SQLite.

``orchd/store.py`` says why the log has a stage.  This module knows the file:
the record format, the writer (one ``write`` per batch, with the file cut
back to its last whole record when a write fails half-way, so a later record
is never hidden behind a torn one) and a reader that follows the file as it
grows without reading it twice.

A record is a ``HEAD`` (crc32 of everything after the crc, body length, seq,
session length, kind length) followed by the session and kind (UTF-8) and the
body.  A file holds consecutive seqs; reading stops at the first record that
is incomplete, fails its checksum or breaks the sequence (a crash inside a
``write``, or a disk that lost the end of the file): everything before it is
good.  Parsing is sans-I/O (``parse``); the classes do the file work.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

Row = tuple[int, str, str, bytes]
HEAD = struct.Struct("<IIQHH")  # crc32, body length, seq, session length, kind length
_CRC_FROM = 4


def encode(rows: list[Row]) -> bytes:
    """``rows`` as consecutive records (one buffer: one ``write``)."""
    out = bytearray()
    pack, crc32 = HEAD.pack, zlib.crc32
    for seq, session, kind, body in rows:
        s, k = session.encode(), kind.encode()
        tail = pack(0, len(body), seq, len(s), len(k))[_CRC_FROM:] + s + k + body
        out += crc32(tail).to_bytes(4, "little")
        out += tail
    return bytes(out)


def parse(data: bytes | memoryview, after_seq: int | None = None) -> tuple[list[Row], int]:
    """The whole records at the start of ``data``: (rows, bytes they take).

    ``after_seq``: the seq the first record must follow (None: any).  Stops at
    the first record that is incomplete, corrupt, or out of sequence."""
    view = memoryview(data)
    rows: list[Row] = []
    pos, end = 0, len(view)
    unpack, crc32, size = HEAD.unpack_from, zlib.crc32, HEAD.size
    expect = None if after_seq is None else after_seq + 1
    while end - pos >= size:
        crc, blen, seq, slen, klen = unpack(view, pos)
        total = size + slen + klen + blen
        if end - pos < total or crc32(view[pos + _CRC_FROM:pos + total]) != crc:
            break
        if expect is not None and seq != expect:
            break
        a = pos + size
        b = a + slen
        c = b + klen
        try:
            rows.append((seq, str(view[a:b], "utf-8"), str(view[b:c], "utf-8"), bytes(view[c:pos + total])))
        except UnicodeDecodeError:
            break
        expect = seq + 1
        pos += total
    return rows, pos


def read_all(path: Path) -> tuple[list[Row], int, int]:
    """Every good record of the file at ``path``: (rows, good bytes, file bytes); nothing if it is missing."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return [], 0, 0
    rows, good = parse(data)
    return rows, good, len(data)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:  # a regular file takes it all at once unless the disk fills up
        view = view[os.write(fd, view):]


class StageWriter:
    """Appends batches to the stage file (the journal's thread only).

    The file is created on the first append after a ``reset`` (0600, beside the
    log) and deleted by ``reset`` once SQLite has its rows."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._size = 0        # bytes of whole records in the file
        self._torn = False    # a failed write may have left bytes past _size
        self._maybe = True    # a file may be there that this writer did not open (a crash's)

    def append(self, rows: list[Row]) -> None:
        """All of ``rows`` or none of them (``OSError`` after cutting the file back)."""
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
            self._size = os.fstat(self._fd).st_size
        if self._torn:
            os.ftruncate(self._fd, self._size)
            self._torn = False
        data = encode(rows)
        self._torn = True
        _write_all(self._fd, data)
        self._torn = False
        self._size += len(data)

    def replace(self, rows: list[Row]) -> None:
        """Replace the file by one holding only ``rows`` (after a move into SQLite took the rows
        before them): written beside it, then renamed over it, so a reader opening the stage finds
        the old file or the new one, never none.  ``OSError``: the old file is kept as it was."""
        data = encode(rows)
        new = self._replacement()
        fd = os.open(new, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            _write_all(fd, data)
            os.rename(new, self.path)
        except BaseException:
            os.close(fd)
            self.discard_replacement()
            raise
        if self._fd is not None:
            os.close(self._fd)
        self._fd, self._size, self._torn = fd, len(data), False

    def _replacement(self) -> Path:
        return self.path.with_name(self.path.name + ".new")

    def discard_replacement(self) -> None:
        """Delete a replacement that was never renamed over the stage (a failed write, a crash)."""
        try:
            os.unlink(self._replacement())
        except FileNotFoundError:
            pass

    def reset(self) -> None:
        """Delete the file (its rows are in SQLite now); a no-op when there is none (a flood's
        batches go to SQLite directly, one after the other)."""
        if self._fd is None and not self._maybe:
            return
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._size = 0
        self._torn = False
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        self._maybe = False

    def close(self) -> None:
        if self._fd is not None:
            if self._torn:
                try:
                    os.ftruncate(self._fd, self._size)
                except OSError:
                    pass  # the reader stops at the torn record anyway
            os.close(self._fd)
            self._fd = None


class StageTail:
    """Follows the stage file for a reader: re-reads only what was appended since the last
    look, starts over when the writer replaced the file (another inode)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._ino: int | None = None
        self._good = 0
        self._rows: list[Row] = []

    def _same_file(self, fd: int, ino: int) -> bool:
        """The file read last time, grown or not?  An inode number is reused at once after an
        unlink, so the first record's seq must match too."""
        if ino != self._ino or not self._rows:
            return False
        head = os.pread(fd, HEAD.size, 0)
        return len(head) == HEAD.size and HEAD.unpack(head)[2] == self._rows[0][0]

    def rows(self) -> list[Row]:
        """The file's good rows now (a list the caller must not change)."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            self._ino, self._good, self._rows = None, 0, []
            return self._rows
        try:
            st = os.fstat(fd)
            if st.st_size < self._good or not self._same_file(fd, st.st_ino):
                self._ino, self._good, self._rows = st.st_ino, 0, []
            if st.st_size > self._good:
                data = os.pread(fd, st.st_size - self._good, self._good)
                after = self._rows[-1][0] if self._rows else None
                more, used = parse(data, after)
                if more:
                    self._rows = self._rows + more  # a new list: callers may hold the old one
                    self._good += used
        finally:
            os.close(fd)
        return self._rows
