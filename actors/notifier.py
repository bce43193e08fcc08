"""The notifier actor: tells a human when a session needs one or has ended.

Theory of operation
-------------------
The notifier is a follower of the journal: it gets ``Committed`` batches of
the kinds in ``orchd.notify.FOLLOWS`` on its own mailbox (never from the
droppable PUB).  The pure ``orchd.notify.Tracker`` decides what to send; this
actor only delivers it, on each configured channel that wants it
(``[notify]`` in the config):

* ``command``: the program runs in its own process group with the
  notification as JSON on stdin; after ``command_timeout_s`` the group is
  killed.  One attempt: a command that fails is reported, not repeated.
* ``webhook``: the JSON is POSTed (urllib, in the notifier's own small
  thread pool, so a slow server never holds up the event loop or anyone
  else's threads; urllib, and with it ``ssl``, is imported on the first
  delivery).  5xx, 408, 429, timeouts and connection errors are tried
  again, ``webhook_attempts`` times in all, after ``retry_delay_s``
  (exponential backoff with jitter); other statuses fail at once.

Each delivery is its own task, so a dead webhook delays nothing else, and
ends with one event: ``notify.sent`` or ``notify.failed`` (channel, key,
situation, error, attempts).  Before handling new events the notifier
reads the log's followed events into the tracker: those committed before
the daemon started (or handled by an earlier life of this actor, as
``NotifierPorts.handled_seq`` says) send nothing; later ones are notified
(see ``orchd.notify``).  When the daemon stops, or the actor crashes,
deliveries still in flight are abandoned.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import msgspec

from orchd import __version__, log, notify, proc, wire
from orchd import protocol as p
from orchd.actor import Mailbox, Outbox
from orchd.config import Config, NotifyConfig
from orchd.store import LogReader

_log = log.get("actors.notifier")

notifier_inbox = wire.InboxDecoder(p.NotifierInbox, "notifier")
WEBHOOK_THREADS = 4


class Notifier:
    """One life of the notifier (a fresh object on every restart; mailbox and outbox outlive it)."""

    def __init__(self, cfg: NotifyConfig, log_path: Path, ports: NotifierPorts, state_dir: str) -> None:
        self.cfg, self.log_path, self.ports = cfg, log_path, ports
        self.inbox, self.out, self.journal_ep = ports.inbox, ports.out, ports.journal_ep
        self.state_dir = state_dir
        self.tracker = notify.Tracker()
        self.channels = cfg.channels()
        self._pending: list[notify.Notification] = []  # due for events committed while we started
        self._pool: ThreadPoolExecutor | None = None

    async def run(self, restarts: int = 0) -> None:
        replayed = await asyncio.to_thread(self._replay)
        _log.info("notifier_ready", channels=",".join(self.channels), replayed_to=replayed, restarts=restarts)
        self._pool = ThreadPoolExecutor(max_workers=WEBHOOK_THREADS, thread_name_prefix="orchd-webhook")
        try:
            async with asyncio.TaskGroup() as tg:
                for n in self._pending:
                    self._send(n, tg)
                while True:
                    for raw in await self.inbox.recv_batch(None):
                        self._handle(raw, replayed, tg)
        finally:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def _replay(self) -> int:
        """Read the log's followed events into the tracker; the last seq read.

        Events up to ``ports.handled_seq`` (at the daemon's start: the log's last seq then;
        later: the last one an earlier life of this actor handled) send nothing; later ones
        (committed while we started) are handled like new ones.
        """
        rows = LogReader.read_state(self.log_path, "", tuple(notify.FOLLOWS.kinds))
        for _, body in rows:
            decoded = self._decode(body)
            if decoded is None:
                continue
            if decoded[0].seq <= self.ports.handled_seq:
                self.tracker.replay(*decoded)
            else:
                self._pending += self.tracker.feed(*decoded)
                self.ports.handled_seq = decoded[0].seq
        return rows[-1][0] if rows else 0

    def _decode(self, body: bytes) -> tuple[p.Stamp, p.Ev] | None:
        try:
            return wire.decode_event(body)
        except msgspec.DecodeError as exc:
            _log.warning("unreadable_event", error=str(exc)[:200], preview=body[:200])
            return None

    def _handle(self, raw: bytes, replayed: int, tg: asyncio.TaskGroup) -> None:
        try:
            msg = notifier_inbox.decode(raw)
        except msgspec.DecodeError as exc:
            _log.warning("notifier_bad_message", error=str(exc)[:200])
            return
        match msg:
            case p.Committed(events=bodies):
                for body in bodies:
                    decoded = self._decode(body)
                    if decoded is None or decoded[0].seq <= replayed:
                        continue  # already read by the replay
                    for n in self.tracker.feed(*decoded):
                        self._send(n, tg)
                    self.ports.handled_seq = max(self.ports.handled_seq, decoded[0].seq)
            case p.LogHealth():
                pass  # not followed for health; events come once they are committed
            case p.Crash():
                raise RuntimeError("injected fault")

    # ------------------------------------------------------------ delivery

    def _send(self, n: notify.Notification, tg: asyncio.TaskGroup) -> None:
        _log.info("notify", situation=n.situation, key=n.key, session=n.session)
        for channel, situations in self.channels.items():
            if notify.wanted(n, situations):
                tg.create_task(self._deliver(channel, n))

    async def _deliver(self, channel: str, n: notify.Notification) -> None:
        payload = wire.encode(n)  # never fails on text (a lone surrogate is repaired)
        if channel == "command":
            error, attempts = await self._command(payload), 1
        else:
            error, attempts = await self._webhook(payload, n.key)
        if error is None:
            ev: p.Ev = p.NotifySent(channel=channel, key=n.key, situation=n.situation, attempts=attempts)
        else:
            _log.warning("notify_failed", channel=channel, key=n.key, error=error, attempts=attempts)
            ev = p.NotifyFailed(channel=channel, key=n.key, situation=n.situation, error=error, attempts=attempts)
        await self.out.send(self.journal_ep, wire.append_one(n.session, ev, time.time()))

    async def _command(self, payload: bytes) -> str | None:
        env = dict(os.environ)
        env[proc.MARKER] = self.state_dir  # a restarted daemon ends one that outlived a crash
        timeout_s = self.cfg.command_timeout_s
        try:
            code, err = await proc.run_with_input(list(self.cfg.command or ()), payload, timeout_s, env)
        except OSError as exc:
            return f"cannot start {self.cfg.command[0]!r}: {exc.strerror or exc}"
        if code is None:
            return f"no exit within {timeout_s:g} s: killed"
        if code != 0:
            return f"exit code {code}" + (f": {err}" if err else "")
        return None

    async def _webhook(self, payload: bytes, key: str) -> tuple[str | None, int]:
        cfg = self.cfg
        loop = asyncio.get_running_loop()
        error = None
        for attempt in range(1, cfg.webhook_attempts + 1):
            if attempt > 1:
                await asyncio.sleep(notify.retry_delay_s(attempt - 1, cfg.webhook_backoff_s,
                                                         cfg.webhook_backoff_cap_s, random.random()))
            error, retry = await loop.run_in_executor(self._pool, _post, cfg.webhook, payload, key,
                                                      cfg.webhook_timeout_s)
            if error is None:
                return None, attempt
            if not retry:
                return error, attempt
        return error, cfg.webhook_attempts


def _post(url: str, payload: bytes, key: str, timeout_s: float) -> tuple[str | None, bool]:
    """POST ``payload`` (in a pool thread): ``(None, _)`` when delivered, else ``(error, worth a retry)``.

    urllib is imported here, on the first delivery, not with the module: ``urllib.request``
    imports ``ssl`` (OpenSSL, ~4.5 MB), which a daemon that sends no notification never needs.
    """
    import http.client
    import urllib.error
    import urllib.request
    req = urllib.request.Request(url, data=payload, method="POST", headers={
        "Content-Type": "application/json", "User-Agent": f"orchd/{__version__}", "Idempotency-Key": key})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:  # noqa: S310 (the scheme is checked at load)
            resp.read(65536)
            return None, False
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}", notify.retryable_status(exc.code)
    except (urllib.error.URLError, OSError, TimeoutError, http.client.HTTPException) as exc:
        # connection refused or reset, DNS, timeouts, a garbled response: the server's trouble
        reason = getattr(exc, "reason", exc)
        return f"{type(exc).__name__}: {reason}"[:300], True
    except ValueError as exc:  # a URL urllib cannot use (a bad port...): no attempt will do better
        return f"bad webhook URL: {exc}"[:300], False


class NotifierPorts:
    """What outlives a restart of the notifier (made once by the daemon): its mailbox, bound
    before the journal starts forwarding to it, and its PUSH to the journal."""

    def __init__(self, ctx, cfg: Config, log_path: Path, endpoint: str, journal_ep: str, start_seq: int) -> None:
        self.cfg, self.log_path, self.journal_ep = cfg, log_path, journal_ep
        self.inbox = Mailbox(ctx, endpoint, hwm=10_000)
        self.out = Outbox(ctx, hwm=1000, linger_s=1.0)
        self.handled_seq = start_seq  # events up to here were notified (or were before our time)

    def start(self, restarts: int):
        """A fresh actor on every (re)start."""
        return Notifier(self.cfg.notify, self.log_path, self, str(self.cfg.state_dir)).run(restarts)

    def close(self) -> None:
        self.inbox.close()
        self.out.close()
