"""The supervisor's end of the agent-host link: a ROUTER, the hosts it knows, remote workers' stand-ins.

Theory of operation
-------------------
``orchd host`` processes connect a DEALER to the host-link ROUTER (``host_link_endpoint``; tcp
only with CURVE) and say ``HostHello``: their name, slots and agent CLIs.  The supervisor places
a run (``actors.placement``) when it starts a worker: a run placed on a host gets a
``RemoteWorker`` instead of a ``Worker``.  The stand-in is a worker actor like any other for the
daemon (same child name, same mailbox endpoint, so stop/pause/resume, ``WorkerEnded`` and the
adoption after a supervisor restart work unchanged); it bundles the assignment's branch, sends it
and the ``WorkerSpec`` to the host, forwards its mailbox to the host, and hands what the host sends
back to the journal (``Append``), so the events are committed as if the worker ran here.

Reliability (the ZeroMQ Guide's Paranoid Pirate, plus numbered messages): both ends send a
heartbeat every ``heartbeat_s``.  A host silent for ``host_timeout_s`` is lost: each of its
stand-ins tells the supervisor (``HostLost``), which fails the run (``host_lost``) for the recovery
actor to relaunch it elsewhere, fresh, within the relaunch bound, and ends.  What a host sends about one
worker generation is numbered (``seq``); this end takes each number once, in order, acknowledges
it, and answers a duplicate with the acknowledgement again, so the host can resend what was not
acknowledged after a reconnect.  Events of a generation this end no longer runs (its host was
declared lost meanwhile) are refused with ``LinkDrop``: the relaunch is the one that counts.
What this end sends a host is not numbered; a hello (every reconnect) makes each stand-in resend
what may have been lost with the old connection: the assignment until the host has it, and the
last pause or resume and the stop, which the host's worker takes idempotently.

The link and its stand-ins share the daemon's event loop: the stand-ins call the link's
``send``/``attach`` and the supervisor calls ``place``/``hosts_info``, all synchronous and short.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import zmq

from actors import hostlink_git, placement
from actors.worker import WORKER_OUTBOX_HWM, WorkerSpec, mailbox_endpoint
from orchd import bus, log, metrics, wire
from orchd import protocol as p
from orchd.actor import Mailbox, Outbox, Waker, sync_view
from orchd.config import Config

_log = log.get("actors.hostlink")

CHUNK_MAX_BYTES = 1 << 20


def chunk_bytes(max_frame_bytes: int) -> int:
    """Bundle chunk size: frames stay well under the receiving socket's limit."""
    return max(64 * 1024, min(CHUNK_MAX_BYTES, max_frame_bytes // 2))


def key_of(session: str, worker: str, gen: int) -> str:
    return f"{session}/{worker}/{gen}"


@dataclass
class _Host:
    name: str
    slots: int
    clis: dict[str, str]
    seen_at: float        # monotonic
    seen_wall: float      # for ``orchctl hosts``
    placed: set[str] = field(default_factory=set)


class HostLink:
    def __init__(self, ctx, cfg: Config, server_keys: tuple[bytes, bytes] | None) -> None:
        self.ctx, self.cfg, self.server_keys = ctx, cfg, server_keys
        self.hosts: dict[str, _Host] = {}
        self.proxies: dict[str, RemoteWorker] = {}
        self._taken: dict[str, int] = {}  # key -> the last seq handed on
        self._raw: zmq.Socket | None = None

    # ------------------------------------------------------------ the supervisor's side

    def place(self, agent: str, movable: bool, local_busy: int, key: str) -> str | None:
        """Where run ``key`` goes (None: here); a host's slot is taken at once, so runs placed in
        one turn of the loop do not all see the same free slot."""
        pc = self.cfg.placement
        hosts = [placement.HostSlots(name=h.name, slots=h.slots, busy=len(h.placed), clis=frozenset(h.clis))
                 for h in self.hosts.values()]
        name = placement.place(agent, movable, local_busy, pc.local_slots, pc.agents.get(agent, "any"), hosts)
        if name is not None:
            self.hosts[name].placed.add(key)
        return name

    def remote_count(self) -> int:
        return sum(len(h.placed) for h in self.hosts.values())

    def hosts_info(self, now_wall: float) -> list[dict]:
        return [{"name": h.name, "slots": h.slots, "busy": len(h.placed), "clis": dict(h.clis),
                 "last_heartbeat_s": round(now_wall - h.seen_wall, 3), "running": sorted(h.placed)}
                for h in sorted(self.hosts.values(), key=lambda h: h.name)]

    # ------------------------------------------------------------ the stand-ins' side

    def attach(self, proxy: RemoteWorker) -> bool:
        host = self.hosts.get(proxy.host)
        if host is None:
            return False
        self.proxies[proxy.key] = proxy
        host.placed.add(proxy.key)
        return True

    def detach(self, key: str) -> None:
        proxy = self.proxies.pop(key, None)
        self._taken.pop(key, None)
        if proxy is not None and proxy.host in self.hosts:
            self.hosts[proxy.host].placed.discard(key)

    def send(self, host: str, msg: p.Msg) -> None:
        if self._raw is None or host not in self.hosts:
            return  # resent after the host's next hello (``RemoteWorker.hello``)
        try:
            self._raw.send_multipart([host.encode(), wire.pack(msg)], zmq.NOBLOCK, copy=False)
        except zmq.Again:
            _log.warning("host_link_queue_full", host=host, kind=type(msg).__name__)

    # ------------------------------------------------------------ the loop

    async def run(self, restarts: int = 0) -> None:
        cfg = self.cfg
        sock = bus.host_link_router(self.ctx, cfg.host_link_endpoint, cfg.max_frame_bytes,
                                    cfg.placement.heartbeat_s, self.server_keys)
        self._raw = sync_view(sock)
        waker = Waker(self._raw)
        _log.info("host_link_listening", endpoint=cfg.host_link_endpoint, curve=self.server_keys is not None)
        beat_s = cfg.placement.heartbeat_s
        next_beat = time.monotonic()
        try:
            while True:
                now = time.monotonic()
                if now >= next_beat:
                    self._beat(now)
                    next_beat = now + beat_s
                if await waker.wait(max(0.001, next_beat - now)):
                    for _ in range(1000):
                        try:
                            frames = self._raw.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        self._receive(frames, time.monotonic())
                # let the stand-ins hand on what was just delivered: the wait above does not yield
                # while the socket stays readable, and a steady stream would keep them waiting
                await asyncio.sleep(0)
        finally:
            waker.close()
            self._raw = None
            sock.close(linger=0)

    def _beat(self, now: float) -> None:
        for host in list(self.hosts.values()):
            if now - host.seen_at > self.cfg.placement.host_timeout_s:
                self._lost(host, f"silent for more than {self.cfg.placement.host_timeout_s:g} s")
            else:
                self.send(host.name, p.LinkBeat())

    def _lost(self, host: _Host, reason: str) -> None:
        _log.warning("host_lost", host=host.name, reason=reason, running=len(host.placed))
        del self.hosts[host.name]
        for key in sorted(host.placed):
            proxy = self.proxies.get(key)
            if proxy is not None:
                proxy.lost(f"agent host {host.name} lost: {reason}")

    def _receive(self, frames: list[bytes], now: float) -> None:
        if len(frames) != 2:
            metrics.bad_messages.labels("host_link", "frames").inc()
            _log.warning("host_link_bad_message", error=f"{len(frames)} frames")
            return
        ident, raw = frames
        name = ident.decode("utf-8", "replace")
        try:
            msg = wire.host_inbound.decode(raw)
        except msgspec.DecodeError as exc:
            metrics.bad_messages.labels("host_link", getattr(exc, "code", "invalid")).inc()
            _log.warning("host_link_bad_message", host=name, error=str(exc))
            return
        host = self.hosts.get(name)
        if host is not None:
            host.seen_at, host.seen_wall = now, time.time()
        match msg:
            case p.HostHello():
                self._hello(name, msg, now)
            case p.HostBeat():
                pass  # an unknown host hears no beats back, so it reconnects and says hello
            case p.HostEvents() | p.HostResult() | p.HostEnded() if host is not None:
                self._item(host, msg)
            case p.HostEvents() | p.HostResult() | p.HostEnded():
                pass  # not known (lost meanwhile): it says hello again and resends
            case _:
                raise AssertionError(msg)

    def _hello(self, name: str, msg: p.HostHello, now: float) -> None:
        host = self.hosts.get(name)
        if msg.name != name:
            _log.warning("host_link_bad_hello", host=name, said=msg.name)
            return
        if host is None:
            host = self.hosts[name] = _Host(name=name, slots=msg.slots, clis=dict(msg.clis), seen_at=now,
                                            seen_wall=time.time())
            _log.info("host_joined", host=name, slots=msg.slots, clis=sorted(msg.clis))
        else:
            host.slots, host.clis = msg.slots, dict(msg.clis)
        running = set(msg.running)
        for key in sorted(running - host.placed):
            self.send(name, p.LinkDrop(key=key, reason="not running here"))
        for key in sorted(host.placed):
            proxy = self.proxies.get(key)  # (None: placed, its stand-in not started yet)
            if proxy is not None:
                proxy.hello(key in running)

    def _item(self, host: _Host, msg: p.HostEvents | p.HostResult | p.HostEnded) -> None:
        proxy = self.proxies.get(msg.key)
        if proxy is None or proxy.host != host.name:
            self.send(host.name, p.LinkDrop(key=msg.key, reason="not running here"))
            return
        last = self._taken.get(msg.key, 0)
        if msg.seq == last + 1:
            self._taken[msg.key] = msg.seq
            proxy.deliver(msg)
        elif msg.seq > last + 1:
            return  # a gap: the host resends from its oldest unacknowledged message
        self.send(host.name, p.LinkAck(key=msg.key, seq=self._taken[msg.key]))


class RemoteWorker:
    """A worker generation placed on an agent host, as the daemon sees it (see the module doc)."""

    def __init__(self, ctx, spec: WorkerSpec, journal: str, supervisor: str, link: HostLink, host: str,
                 clone: str, branch: str, exclude: list[str]) -> None:
        self.ctx, self.spec, self.journal, self.supervisor = ctx, spec, journal, supervisor
        self.link, self.host = link, host
        self.clone, self.branch, self.exclude = Path(clone), branch, exclude
        self.key = key_of(spec.session, spec.name, spec.gen)
        self._items: asyncio.Queue = asyncio.Queue()
        self._assign: list[p.Msg] = []   # the assignment and its bundle chunks, until the host has it
        self._delivered = False
        self._stop: p.StopWorker | None = None
        self._held: p.PauseWorker | p.ResumeWorker | None = None  # the last pause or resume sent
        self._result: list[bytes] = []

    # called by the link (same loop)
    def deliver(self, msg: p.HostEvents | p.HostResult | p.HostEnded) -> None:
        self._delivered = True
        self._items.put_nowait(msg)

    def lost(self, reason: str) -> None:
        self._items.put_nowait(reason)

    def hello(self, running: bool) -> None:
        """The host (re)connected: resend what it may have missed.  What this end sends a host is
        not numbered (what a host sends is): the assignment until the host has it, and the
        commands as state, the last pause or resume and the stop, each idempotent on the host."""
        self._delivered = self._delivered or running
        if not self._delivered:
            for msg in self._assign:
                self.link.send(self.host, msg)
        if self._stop is not None:
            self.link.send(self.host, p.LinkTell(key=self.key, msg=self._stop))
        elif self._held is not None:
            self.link.send(self.host, p.LinkTell(key=self.key, msg=self._held))

    async def run(self, restarts: int = 0) -> None:
        spec = self.spec
        out = Outbox(self.ctx, hwm=WORKER_OUTBOX_HWM)
        inbox = Mailbox(self.ctx, mailbox_endpoint(spec.session, spec.name, spec.gen))
        recv = get = None
        try:
            if not self.link.attach(self):
                await self._emit(out, p.WorkerLog(line=f"orchd: agent host {self.host} is gone"))
                await out.send(self.supervisor, wire.pack(p.HostLost(
                    session=spec.session, worker=spec.name, gen=spec.gen, host=self.host, reason="gone")))
                return
            data, base = await asyncio.to_thread(hostlink_git.base_bundle, self.clone, self.branch)
            self._assign = [p.LinkAssign(key=self.key, spec=msgspec.msgpack.encode(spec), branch=self.branch,
                                         base=base, exclude=self.exclude)]
            size = chunk_bytes(self.link.cfg.max_frame_bytes)
            n = max(1, -(-len(data) // size))
            self._assign += [p.LinkBundle(key=self.key, index=i, data=data[i * size:(i + 1) * size], last=i == n - 1)
                             for i in range(n)]
            for msg in self._assign:
                self.link.send(self.host, msg)
            while True:
                recv = recv or asyncio.ensure_future(inbox.recv_batch(timeout_s=1.0))
                get = get or asyncio.ensure_future(self._items.get())
                done, _ = await asyncio.wait({recv, get}, return_when=asyncio.FIRST_COMPLETED)
                if recv in done:
                    for raw in recv.result():
                        self._tell(raw)
                    recv = None
                if get in done:
                    items, get = [get.result()], None
                    while not self._items.empty():  # all that came meanwhile: one loop turn, not one each
                        items.append(self._items.get_nowait())
                    if await self._handle_all(items, out):
                        return
        finally:
            for t in (recv, get):
                if t is not None:
                    t.cancel()
                    await asyncio.wait({t})
            self.link.detach(self.key)
            inbox.close()
            out.close()

    def _tell(self, raw: bytes) -> None:
        try:
            msg = wire.worker_inbox.decode(raw)
        except msgspec.DecodeError as exc:
            metrics.bad_messages.labels("worker", getattr(exc, "code", "invalid")).inc()
            _log.warning("worker_bad_message", worker=self.spec.name, error=str(exc))
            return
        if type(msg) is p.StopWorker and self._stop is None:
            self._stop = msg
        elif type(msg) in (p.PauseWorker, p.ResumeWorker):
            self._held = msg
        self.link.send(self.host, p.LinkTell(key=self.key, msg=msg))

    async def _handle_all(self, items: list, out: Outbox) -> bool:
        """Items in order; consecutive events go to the journal as one ``Append``."""
        frames: list[bytes] = []
        for item in items:
            if type(item) is p.HostEvents:
                frames.extend(self._checked(item.frames))
                continue
            if frames:
                await out.send(self.journal, wire.pack(p.Append(frames=frames)))
                frames = []
            if await self._handle(item, out):
                return True
        if frames:
            await out.send(self.journal, wire.pack(p.Append(frames=frames)))
        return False

    def _checked(self, frames: list[bytes]) -> list[bytes]:
        ok = [f for f in frames if self._own(f)]
        if len(ok) < len(frames):
            metrics.bad_messages.labels("host_link", "foreign_event").inc(len(frames) - len(ok))
            _log.warning("host_foreign_events", host=self.host, worker=self.spec.name, refused=len(frames) - len(ok))
        return ok

    async def _handle(self, item, out: Outbox) -> bool:
        """One thing from the host (or its loss), in order; True when this generation is over here."""
        spec = self.spec
        match item:
            case p.HostEvents(frames=frames):
                ok = self._checked(frames)
                if ok:
                    await out.send(self.journal, wire.pack(p.Append(frames=ok)))
            case p.HostResult(data=data, last=last, head=head, wrapped=wrapped):
                self._result.append(data)
                if last:
                    blob, self._result = b"".join(self._result), []
                    try:
                        await asyncio.to_thread(hostlink_git.apply_result, self.clone, self.branch, blob, head, wrapped)
                    except (OSError, hostlink_git.GitError) as exc:
                        _log.error("host_result_not_applied", host=self.host, worker=spec.name, error=str(exc))
                        await self._emit(out, p.WorkerLog(line=f"orchd: the result from agent host {self.host} "
                                                               f"could not be applied: {exc}"))
            case p.HostEnded():
                return True
            case str(reason):
                _log.warning("remote_worker_lost", session=spec.session, worker=spec.name, gen=spec.gen,
                             host=self.host)
                await out.send(self.supervisor, wire.pack(p.HostLost(session=spec.session, worker=spec.name,
                                                                      gen=spec.gen, host=self.host, reason=reason)))
                return True
        return False

    def _own(self, frame: bytes) -> bool:
        """Is ``frame`` an event this worker generation may emit?  A host is trusted with its runs'
        events only: right topic and stamp, a worker's kind, valid JSON of that kind."""
        s = self.spec
        parts = frame.split(b" ", 2)
        if len(parts) != 3:
            return False
        topic, kind, js = parts
        if topic != wire.topic(s.session) or not (kind.startswith((b"agent.", b"worker.")) or kind == b"session.note") \
                or kind in (b"worker.launching", b"worker.committed"):
            return False
        comma = js.find(b",")
        if comma < 0 or not js[comma + 1:].startswith(wire.stamp_prefix(s.session, s.name, s.agent, s.gen)):
            return False
        try:
            _, ev = wire.decode_event(b'{"seq":0,' + js)
        except msgspec.DecodeError:
            return False
        return ev.__struct_config__.tag.encode() == kind

    async def _emit(self, out: Outbox, ev: p.Ev) -> None:
        s = self.spec
        frames = wire.pending_frames(wire.topic(s.session), wire.stamp_prefix(s.session, s.name, s.agent, s.gen),
                                     time.time(), [ev])
        await out.send(self.journal, wire.pack(p.Append(frames=frames)))
