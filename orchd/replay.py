"""Serving ``Replay`` pages from the event log, off the event loop.

SQLite reads run in one thread of their own, so a client paging through a
million events never delays the loop that serves ``ping`` and ``status``.
Pages are bounded twice: at most ``limit`` events (capped at
``REPLAY_MAX``) and at most ``max_bytes`` of event JSON (always at least
one event, so a huge event still gets through).  ``more`` says whether to
ask again from ``last_seq``.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import msgspec

from orchd import protocol as p
from orchd import store

REPLAY_MAX = 10_000
PAGE_BYTES = 2 << 20
CHUNK = 500


class Replayer:
    def __init__(self, log_path: Path, max_bytes: int = PAGE_BYTES) -> None:
        self.log_path = log_path
        self.max_bytes = max_bytes
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="orchd-replay")
        self._reader: store.LogReader | None = None  # used by the pool's one thread only

    def page(self, since: int, session: str | None, limit: int) -> p.ReplayReply:
        """One page (blocking: runs in the replay thread), read in chunks of ``CHUNK`` rows so
        that a page of big events never holds more than one chunk past its byte bound."""
        if self._reader is None:
            self._reader = store.LogReader(self.log_path)
        limit = max(1, min(limit, REPLAY_MAX))
        events: list[msgspec.Raw] = []
        size = 0
        last = since
        full = False
        while not full and len(events) < limit:
            ask = min(CHUNK, limit - len(events))
            rows = self._reader.since(last, session, ask)
            for seq, body in rows:
                if events and size + len(body) > self.max_bytes:
                    full = True
                    break
                events.append(msgspec.Raw(body))
                size += len(body)
                last = seq
            if len(rows) < ask:
                break
        return p.ReplayReply(events=events, last_seq=last, more=full or len(events) == limit)

    async def serve(self, req: p.Replay) -> p.ReplayReply:
        return await asyncio.get_running_loop().run_in_executor(self._pool, self.page, req.since, req.session,
                                                                req.limit)

    def close(self) -> None:
        def _close():
            if self._reader is not None:
                self._reader.close()
        self._pool.submit(_close)
        self._pool.shutdown(wait=False, cancel_futures=False)
