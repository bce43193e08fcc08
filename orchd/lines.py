"""A sans-I/O line framer with a size limit.

Feed it bytes as they arrive (``feed``), take complete lines out; at end
of stream call ``close``.  It never raises on content and never holds more
than ``max_line`` bytes of a line: a line over the limit is skipped (its
first bytes kept for a preview) and reported as ``too_long`` once it ends.

Each line comes out as ``(text, problems, size)``: ``text`` is the decoded
line without its newline; ``problems`` is a tuple of ``too_long``,
``invalid_utf8`` (decoded with U+FFFD replacement), ``nul`` (NUL bytes
removed) and ``partial`` (the stream ended without a newline).
"""

from __future__ import annotations

PREVIEW_BYTES = 200

Line = tuple[str, tuple[str, ...], int]


class LineFramer:
    __slots__ = ("max_line", "_buf", "_skipping", "_skipped", "_preview", "_pn")

    def __init__(self, max_line: int) -> None:
        self.max_line = max_line
        # a too-long line's preview: the bytes held when it went over the limit, at most
        self._pn = min(PREVIEW_BYTES, max_line + 1)
        self._buf = bytearray()
        self._skipping = False   # inside an over-limit line, discarding until b"\n"
        self._skipped = 0
        self._preview = b""

    def feed(self, data: bytes) -> list[Line]:
        out: list[Line] = []
        if self._skipping:
            nl = data.find(b"\n")
            if nl < 0:
                self._skipped += len(data)
                return out
            self._skipped += nl
            out.append((_decode(self._preview)[0], ("too_long",), self._skipped))
            self._skipping = False
            data = data[nl + 1:]
        buf = self._buf
        if buf:
            buf += data
            data = bytes(buf)
            buf.clear()
        start = 0
        find = data.find
        while True:
            nl = find(b"\n", start)
            if nl < 0:
                break
            if nl - start > self.max_line:
                out.append((_decode(data[start:start + self._pn])[0], ("too_long",), nl - start))
            else:
                out.append(_line(data[start:nl]))
            start = nl + 1
        rest = len(data) - start
        if rest > self.max_line:
            self._skipping = True
            self._skipped = rest
            self._preview = data[start:start + self._pn]
        elif rest:
            buf += data[start:]
        return out

    def close(self) -> list[Line]:
        """End of stream: report what is left as a ``partial`` line."""
        if self._skipping:
            self._skipping = False
            return [(_decode(self._preview)[0], ("too_long", "partial"), self._skipped)]
        if not self._buf:
            return []
        text, probs, size = _line(bytes(self._buf))
        self._buf.clear()
        return [(text, probs + ("partial",), size)]


def _line(raw: bytes) -> Line:
    if raw.endswith(b"\r"):
        raw = raw[:-1]
    text, probs = _decode(raw)
    return text, probs, len(raw)


def _decode(raw: bytes) -> tuple[str, tuple[str, ...]]:
    try:
        text = raw.decode()
        probs: tuple[str, ...] = ()
    except UnicodeDecodeError:
        text = raw.decode(errors="replace")
        probs = ("invalid_utf8",)
    if "\x00" in text:
        text = text.replace("\x00", "")
        probs += ("nul",)
    return text, probs
