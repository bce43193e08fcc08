"""Actor plumbing: mailboxes on ZeroMQ sockets, and a runtime supervisor.

An actor is an asyncio task that owns a PULL socket (its mailbox) bound to
an endpoint (``inproc://...`` inside the daemon; a tcp endpoint would work
the same) and PUSH sockets to the mailboxes it talks to.  It handles one
message at a time, so it needs no locks; nothing else is shared.

``Mailbox.recv_batch`` waits for readability once and then drains with
non-blocking receives: one ``await`` per message is the 20× trap measured
in perf-baselines.md.

``Supervisor`` runs child actors as tasks and applies ``orchd.supervision``:
restart by type and intensity, escalate by raising ``Escalation`` from
``wait_escalation``.  Shutdown cancels children in reverse start order, each
with its own grace period; a child cleans up in its ``finally``.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import zmq
import zmq.asyncio

from orchd import bus, log, metrics
from orchd.supervision import Intensity, Restart, should_restart

_log = log.get("orchd.actor")

# plain ints: pyzmq's constants are enum members, and ``int & Flag`` runs enum code (~1 us) per test
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_NOBLOCK = int(zmq.NOBLOCK)


class Waker:
    """Wakes one coroutine when any of some ZeroMQ sockets has a message.

    A ZeroMQ socket's ``FD`` is edge-triggered: it signals that the socket's
    state *may* have changed, and reading ``EVENTS`` is what re-arms it.  The
    reader callback therefore reads ``EVENTS`` itself (so the fd never spins
    the loop) and sets an event only when a message is really there.  This
    costs one syscall-free check per wake-up, where zmq.asyncio's ``poll``
    future costs several loop turns per message.
    """

    def __init__(self, *socks: zmq.Socket) -> None:
        self._loop = asyncio.get_running_loop()
        self._event = asyncio.Event()
        self._poked = False
        self._socks = socks
        self._fds = []
        for sock in socks:
            fd = sock.getsockopt(zmq.FD)
            self._loop.add_reader(fd, self._check, sock)
            self._fds.append(fd)

    def _check(self, sock: zmq.Socket) -> None:
        if sock.getsockopt(_EVENTS) & _POLLIN:
            self._event.set()

    def readable(self) -> bool:
        for s in self._socks:
            if s.getsockopt(_EVENTS) & _POLLIN:
                return True
        return False

    def poke(self) -> None:
        """Make ``wait`` return False now, or at its next call (for a timer the owner keeps
        across many waits, which costs less than a timeout per wait)."""
        self._poked = True
        self._event.set()

    async def wait(self, timeout_s: float | None) -> bool:
        """True when a socket is readable, False after ``timeout_s`` or a ``poke``."""
        if self.readable():
            return True
        if self._poked:
            self._poked = False
            return False
        self._event.clear()
        if timeout_s is None:  # the common case of an idle actor: no timeout object per wake-up
            while True:
                await self._event.wait()
                self._event.clear()
                if self.readable():
                    return True
                if self._poked:
                    self._poked = False
                    return False
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    await self._event.wait()
                    self._event.clear()
                    if self.readable():
                        return True
        except TimeoutError:
            return False

    def close(self) -> None:
        for fd in self._fds:
            self._loop.remove_reader(fd)
        self._fds.clear()


class Mailbox:
    """A PULL socket bound at ``endpoint``; drains in batches."""

    def __init__(self, ctx: zmq.asyncio.Context, endpoint: str, hwm: int = 100_000) -> None:
        self.endpoint = endpoint
        self.sock = bus.mailbox(ctx, endpoint, hwm)
        self.raw = sync_view(self.sock)
        self._waker: Waker | None = None

    async def recv_batch(self, timeout_s: float | None = None, max_msgs: int = 10_000) -> list[bytes]:
        """Messages available now, waiting up to ``timeout_s`` for the first (``[]`` on timeout)."""
        if self._waker is None:
            self._waker = Waker(self.raw)
        if not await self._waker.wait(timeout_s):
            return []
        return drain(self.raw, max_msgs)

    def close(self) -> None:
        if self._waker is not None:
            self._waker.close()
        self.sock.close(linger=0)


def drain(raw: zmq.Socket, max_msgs: int = 10_000) -> list[bytes]:
    """Every message waiting on ``raw`` now (up to ``max_msgs``), without blocking.

    It asks ``EVENTS`` before each receive rather than receiving until ``zmq.Again``:
    building that exception costs more than a whole one-message batch."""
    out: list[bytes] = []
    recv, get = raw.recv, raw.getsockopt
    try:
        while len(out) < max_msgs and get(_EVENTS) & _POLLIN:
            out.append(recv(_NOBLOCK))
    except zmq.Again:
        pass  # EVENTS said a message was there; another reader took it
    return out


def sync_view(sock: zmq.asyncio.Socket) -> zmq.Socket:
    """A blocking-API view of an asyncio socket (same underlying socket).

    ``recv(NOBLOCK)`` on it returns bytes or raises ``zmq.Again`` at once,
    where the asyncio socket would return a future: the way to drain.
    """
    return zmq.Socket.shadow(sock.underlying)


class Outbox:
    """PUSH sockets to other actors' mailboxes, connected lazily by endpoint."""

    def __init__(self, ctx: zmq.asyncio.Context, hwm: int = 100_000, linger_s: float = 0.0) -> None:
        self._ctx = ctx
        self._hwm = hwm
        self._linger_s = linger_s
        self._socks: dict[str, tuple[zmq.asyncio.Socket, zmq.Socket]] = {}

    def _sock(self, endpoint: str) -> tuple[zmq.asyncio.Socket, zmq.Socket]:
        pair = self._socks.get(endpoint)
        if pair is None:
            sock = bus.push(self._ctx, endpoint, self._hwm, self._linger_s)
            pair = self._socks[endpoint] = (sock, sync_view(sock))
        return pair

    async def send(self, endpoint: str, data: bytes) -> None:
        """Send, waiting while the peer's queue is full (backpressure)."""
        sock, raw = self._sock(endpoint)
        try:
            raw.send(data, _NOBLOCK, copy=False)
        except zmq.Again:
            await sock.send(data, copy=False)

    def send_nowait(self, endpoint: str, data: bytes) -> None:
        """Send now; ``zmq.Again`` if the peer's queue is full (callers that cannot await)."""
        self._sock(endpoint)[1].send(data, _NOBLOCK, copy=False)

    def drop(self, endpoint: str) -> None:
        pair = self._socks.pop(endpoint, None)
        if pair is not None:
            pair[0].close(linger=0)

    def close(self) -> None:
        for sock, _ in self._socks.values():
            sock.close()
        self._socks.clear()


class JournalBacklog:
    """What an actor that cannot await (one ``match`` per inbox, never waiting) sends the journal.

    Messages go out in order; what the journal's queue has no room for waits here until the
    next ``flush`` (the actor's loop calls it every turn, and wakes sooner while it is not
    empty), so the loop goes on and nothing is lost or reordered."""

    def __init__(self, out: Outbox, journal_ep: str) -> None:
        self._out, self._ep = out, journal_ep
        self._queue: deque[bytes] = deque()

    def __bool__(self) -> bool:
        return bool(self._queue)

    def send(self, msg: bytes) -> None:
        self._queue.append(msg)
        self.flush()

    def flush(self) -> None:
        queue = self._queue
        while queue:
            try:
                self._out.send_nowait(self._ep, queue[0])
            except zmq.Again:  # the journal is behind: try again next turn
                return
            queue.popleft()


class Escalation(Exception):
    """A supervisor gave up restarting a child."""


@dataclass
class ChildSpec:
    name: str
    start: Callable[[int], Awaitable[None]]  # called with the restart count
    restart: Restart = Restart.PERMANENT
    shutdown_s: float = 5.0


class Supervisor:
    """Runs child actors as tasks and restarts them by policy.

    ``on_exit(name, crashed)`` is called when a child ends for good (not
    restarted), so the owning actor can turn it into a mailbox message.
    """

    def __init__(self, name: str, max_restarts: int = 3, period_s: float = 5.0,
                 on_exit: Callable[[str, bool], None] | None = None) -> None:
        self.name = name
        self.intensity = Intensity(max_restarts, period_s)
        self.on_exit = on_exit
        self._tasks: dict[str, tuple[ChildSpec, asyncio.Task]] = {}
        self._escalated: asyncio.Future | None = None
        self._shutting_down = False

    def start_child(self, spec: ChildSpec) -> None:
        if spec.name in self._tasks:
            raise ValueError(f"child {spec.name!r} is already running under {self.name}")
        task = asyncio.get_running_loop().create_task(self._run_child(spec), name=f"{self.name}/{spec.name}")
        self._tasks[spec.name] = (spec, task)

    def running(self) -> list[str]:
        return list(self._tasks)

    async def _run_child(self, spec: ChildSpec) -> None:
        restarts = 0
        try:
            while True:
                crashed = False
                try:
                    await spec.start(restarts)
                except asyncio.CancelledError:
                    raise
                except Exception:  # the one broad catch: a child's bug is the supervisor's business
                    crashed = True
                    _log.error("actor_crashed", exc_info=True, supervisor=self.name, actor=spec.name)
                if self._shutting_down or not should_restart(spec.restart, crashed):
                    break
                if not self.intensity.allow(time.monotonic()):
                    _log.error("restart_intensity_exceeded", supervisor=self.name, actor=spec.name,
                               max_restarts=self.intensity.max_restarts, period_s=self.intensity.period_s)
                    self._escalate(Escalation(f"{self.name}: {spec.name} crashed too often"))
                    return
                restarts += 1
                metrics.actor_restarts.labels(spec.name).inc()
                _log.warning("actor_restarting", supervisor=self.name, actor=spec.name, restarts=restarts)
        finally:
            self._tasks.pop(spec.name, None)
        if self.on_exit is not None:
            self.on_exit(spec.name, crashed)

    def _escalate(self, exc: Exception) -> None:
        fut = self._future()
        if not fut.done():
            fut.set_exception(exc)

    def _future(self) -> asyncio.Future:
        if self._escalated is None:
            self._escalated = asyncio.get_running_loop().create_future()
        return self._escalated

    async def wait_escalation(self) -> None:
        """Returns never; raises ``Escalation`` when a child exceeds the restart intensity.

        Cancelling a waiter leaves the escalation itself pending, so the next
        waiter (a restarted parent) still sees it.
        """
        await asyncio.shield(self._future())

    async def stop_child(self, name: str) -> None:
        entry = self._tasks.get(name)
        if entry is None:
            return
        spec, task = entry
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=spec.shutdown_s)
        if not done:
            _log.warning("actor_stop_timeout", supervisor=self.name, actor=name, grace_s=spec.shutdown_s)
        self._tasks.pop(name, None)

    def begin_shutdown(self) -> None:
        """From now on no child is restarted: one that ends during shutdown stays ended."""
        self._shutting_down = True

    async def shutdown(self, concurrent: bool = False) -> None:
        """Stop children in reverse start order, each within its grace period.

        ``concurrent``: stop them all at once (independent children, like
        worker actors, so shutdown takes one grace period, not one per child).
        """
        self._shutting_down = True
        names = list(reversed(list(self._tasks)))
        if concurrent:
            await asyncio.gather(*(self.stop_child(n) for n in names))
            return
        for name in names:
            await self.stop_child(name)
