"""The daemon's liveness probe: the systemd watchdog, ``STATUS=`` and the state gauges.

Theory of operation
-------------------
Every ``tick_s`` (half of ``WatchdogSec=``, at most one second) the probe
sends a ``Barrier`` to the journal and a ``Probe`` to the session supervisor,
through their mailboxes like any other message, and waits for both answers
until the next tick.  Only when both came back does it send ``WATCHDOG=1``:
an actor stuck in a loop, deadlocked or no longer reading its mailbox makes
the pings stop, and systemd restarts the daemon after ``WatchdogSec=``.  A
journal that is retrying a log it cannot write counts as alive (it is
waiting on the disk on purpose and says so; a restart would not help).

The supervisor's answer carries a summary of its sessions, which becomes
the ``orchd_sessions`` / ``orchd_workers`` gauges and, when it changed, a
new ``STATUS=`` line.
"""

from __future__ import annotations

import asyncio
import secrets
import time

import msgspec
import zmq

from orchd import log, metrics, wire
from orchd import protocol as p
from orchd.actor import Mailbox, Outbox
from orchd.sdnotify import Notifier, status_line

_log = log.get("orchd.watchdog")

ENDPOINT = "inproc://daemon"
MAX_TICK_S = 1.0


class Watchdog:
    def __init__(self, ctx, out: Outbox, notifier: Notifier, journal_ep: str, supervisor_ep: str,
                 journal_failing=lambda: False) -> None:
        self.ctx, self.out, self.notifier = ctx, out, notifier
        self.journal_ep, self.supervisor_ep = journal_ep, supervisor_ep
        self.journal_failing = journal_failing
        self.tick_s = min(MAX_TICK_S, notifier.watchdog_s / 2) if notifier.watchdog_s else MAX_TICK_S
        self.status = ""
        self.alive = True

    async def run(self) -> None:
        inbox = Mailbox(self.ctx, ENDPOINT, hwm=100)
        try:
            while True:
                started = time.monotonic()
                answer, alive = await self._probe(inbox, started + self.tick_s)
                self._alive(alive)
                if answer is not None:
                    metrics.set_state(answer.sessions, answer.workers, answer.waiting)
                    line = status_line(answer.sessions, answer.workers, answer.waiting)
                    if line != self.status:
                        self.status = line
                        self.notifier.status(line)
                await asyncio.sleep(max(0.0, started + self.tick_s - time.monotonic()))
        finally:
            inbox.close()

    async def _probe(self, inbox: Mailbox, deadline: float) -> tuple[p.ProbeAnswer | None, bool]:
        token = secrets.token_hex(8)
        journal_ok = supervisor = None
        try:
            self.out.send_nowait(self.journal_ep, wire.pack(p.Barrier(token=token, reply_to=ENDPOINT)))
            self.out.send_nowait(self.supervisor_ep, wire.pack(p.Probe(token=token, reply_to=ENDPOINT)))
        except zmq.Again:  # a full mailbox: that actor is not keeping up, so no ping this tick
            return None, False
        while (journal_ok is None or supervisor is None) and (left := deadline - time.monotonic()) > 0:
            for raw in await inbox.recv_batch(timeout_s=left):
                try:
                    msg = wire.daemon_inbox.decode(raw)
                except msgspec.DecodeError as exc:
                    metrics.bad_messages.labels("daemon", exc.code).inc()
                    continue
                match msg:
                    case p.BarrierReached(token=t) if t == token:
                        journal_ok = True
                    case p.ProbeAnswer(token=t) if t == token:
                        supervisor = msg
                    case _:
                        pass  # an answer to an earlier tick, too late
        journal_alive = journal_ok is not None or self.journal_failing()
        return supervisor, journal_alive and supervisor is not None

    def _alive(self, alive: bool) -> None:
        if alive:
            if self.notifier.watchdog_s:
                self.notifier.watchdog()
            if not self.alive:
                _log.warning("actors_answering_again")
        elif self.alive:
            _log.error("actors_not_answering", tick_s=self.tick_s,
                       effect="no WATCHDOG=1 is sent until they answer (systemd restarts orchd after WatchdogSec)")
        self.alive = alive
