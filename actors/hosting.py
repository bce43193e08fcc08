"""``orchd host``: an agent host, running worker actors for a supervisor on another machine.

Theory of operation
-------------------
The host connects one DEALER (``orchd.bus.host_link_dealer``; CURVE on tcp) to the supervisor's
host-link ROUTER and says ``HostHello``: its name, its slots and the agent CLIs it has, with
versions (probed like ``orchd doctor`` does).  For each ``LinkAssign`` and its ``LinkBundle``
chunks it makes a working copy from the bundle (``actors.hostlink_git``), rewrites the machine's
own paths into the ``WorkerSpec`` (working copy, private TMPDIR, the CLI's path, the environment)
and runs the ordinary ``actors.worker.Worker`` with a journal endpoint of its own: what the worker
would append to the journal is forwarded to the supervisor as ``HostEvents``.  When the agent has
exited, the host commits what it left, sends the result bundle (``HostResult`` chunks), then the
``worker.exited`` event, then ``HostEnded``; so the supervisor has the result before it learns
that the run is over.

Everything sent about one worker generation is numbered (``seq``) and kept until the supervisor
acknowledges it; after a reconnect the host says hello again and resends what is unacknowledged,
in order (the supervisor takes each number once).  Heartbeats both ways: with no word from the
supervisor for three intervals the host makes a new socket and says hello again (Paranoid
Pirate); with none for ``grace_s`` it stops its agents (their end is reported when the link
comes back, and refused if the supervisor has moved the run elsewhere meanwhile).
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import zmq

from actors import hostlink_git
from actors.hostlink import chunk_bytes
from actors.launch import agent_env
from actors.worker import Worker, WorkerSpec, mailbox_endpoint
from orchd import bus, log, metrics, wire
from orchd import protocol as p
from orchd.actor import Mailbox, Outbox, Waker, sync_view

_log = log.get("actors.hosting")

_spec_dec = msgspec.msgpack.Decoder(WorkerSpec)
RECONNECT_BEATS = 3  # heartbeats without a word from the supervisor before a new socket


def probe_clis() -> dict[str, str]:
    """The agent CLIs this machine has, with versions ("" when ``--version`` gave none)."""
    from actors.agents import ADAPTERS
    from actors.doctor import cli_version, find_binary
    from concurrent.futures import ThreadPoolExecutor
    found = {n: b for n in sorted(ADAPTERS) if n != "command" and (b := find_binary(n)) is not None}
    with ThreadPoolExecutor(max_workers=max(1, len(found))) as pool:
        versions = dict(zip(found, pool.map(lambda nb: cli_version(*nb)[0] or "", found.items())))
    return versions


@dataclass
class _Run:
    key: str
    assign: p.LinkAssign
    chunks: list[bytes] = field(default_factory=list)
    seq: int = 0
    unacked: deque = field(default_factory=deque)
    task: asyncio.Task | None = None
    done: bool = False       # HostEnded queued
    dropped: bool = False


class AgentHost:
    def __init__(self, connect: str, name: str, slots: int, state_dir: Path, heartbeat_s: float, grace_s: float,
                 curve, max_frame_bytes: int = 4 * 1024 * 1024, stop_grace_s: float = 5.0) -> None:
        self.connect, self.name, self.slots, self.state_dir = connect, name, slots, state_dir
        self.heartbeat_s, self.grace_s = heartbeat_s, grace_s
        self.curve = curve  # orchd.keys.ClientCurve on tcp, None on ipc
        self.max_frame_bytes, self.stop_grace_s = max_frame_bytes, stop_grace_s
        self.runs: dict[str, _Run] = {}
        self.clis: dict[str, str] = {}

    async def run(self, stop: asyncio.Event | None = None) -> None:
        stop = stop or asyncio.Event()
        self.ctx = bus.context()
        self.out = Outbox(self.ctx, hwm=1000)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        # ``command`` runs need no CLI: offer the slots at once, then say hello again with the CLIs
        probe = asyncio.ensure_future(asyncio.to_thread(probe_clis))
        sock = self._open()
        heard_at = time.monotonic()
        stopped_agents = False
        next_beat = time.monotonic()
        try:
            while not stop.is_set():
                now = time.monotonic()
                if probe is not None and probe.done():
                    self.clis, probe = probe.result(), None
                    self._send(self._hello())
                if now >= next_beat:
                    self._send(p.HostBeat())
                    next_beat = now + self.heartbeat_s
                silent_s = now - heard_at
                if silent_s > self.grace_s and not stopped_agents:
                    stopped_agents = True
                    _log.warning("supervisor_silent", silent_s=round(silent_s, 1), action="stopping agents")
                    self._stop_all("the supervisor went silent")
                if now - max(heard_at, self._opened_at) > self._reconnect_after_s():
                    self._reconnects += 1
                    _log.warning("supervisor_silent", silent_s=round(silent_s, 1), action="reconnecting")
                    self._waker.close()
                    sock.close(linger=0)
                    sock = self._open()
                self._flush()
                wait_s = 0.01 if self._backlog else min(next_beat - now, 0.25)
                if await self._waker.wait(max(0.001, wait_s)):
                    heard_at, stopped_agents, self._reconnects = time.monotonic(), False, 0
                    for _ in range(1000):
                        try:
                            raw = self._raw.recv(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        self._receive(raw)
                    await asyncio.sleep(0)  # the runs' tasks go on while acknowledgements stream in
        finally:
            if probe is not None:
                await asyncio.wait({probe})
            self._stop_all("the agent host is stopping")
            tasks = [r.task for r in self.runs.values() if r.task is not None]
            if tasks:
                await asyncio.wait(tasks, timeout=self.stop_grace_s + 5)
            self._waker.close()
            sock.close(linger=0)
            self.out.close()
            self.ctx.term()

    _reconnects = 0
    _opened_at = 0.0

    def _reconnect_after_s(self) -> float:
        """Silence on a connection before a new one: three heartbeats, doubling after each
        reconnect that did not help (up to 10 s), so a slow handshake is not cut short forever."""
        first = RECONNECT_BEATS * self.heartbeat_s
        return min(first * 2 ** self._reconnects, max(first, 10.0))

    def _open(self):
        sock = bus.host_link_dealer(self.ctx, self.connect, self.name, self.heartbeat_s, self.curve)
        self._raw = sync_view(sock)
        self._backlog: deque[p.Msg] = deque()  # a new connection: everything unacknowledged is resent below
        self._waker = Waker(self._raw)
        self._opened_at = time.monotonic()
        self._send(self._hello())
        for run in self.runs.values():
            for msg in run.unacked:
                self._send(msg)
        _log.info("host_connecting", endpoint=self.connect, name=self.name, slots=self.slots)
        return sock

    def _hello(self) -> p.HostHello:
        return p.HostHello(name=self.name, slots=self.slots, clis=self.clis,
                           running=sorted(k for k, r in self.runs.items() if not r.dropped))

    def _send(self, msg: p.Msg) -> None:
        """Send now, or after what waits before it (the link's queue was full); in order."""
        if self._backlog:
            self._backlog.append(msg)
            return
        try:
            self._raw.send(wire.pack(msg), zmq.NOBLOCK, copy=False)
        except zmq.Again:
            self._backlog.append(msg)

    def _flush(self) -> None:
        while self._backlog:
            try:
                self._raw.send(wire.pack(self._backlog[0]), zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self._backlog.popleft()

    def _receive(self, raw: bytes) -> None:
        try:
            msg = wire.host_outbound.decode(raw)
        except msgspec.DecodeError as exc:
            metrics.bad_messages.labels("agent_host", getattr(exc, "code", "invalid")).inc()
            _log.warning("host_bad_message", error=str(exc))
            return
        match msg:
            case p.LinkBeat():
                pass
            case p.LinkAck(key=key, seq=seq):
                run = self.runs.get(key)
                if run is not None:
                    while run.unacked and run.unacked[0].seq <= seq:
                        run.unacked.popleft()
                    if run.done and not run.unacked:
                        del self.runs[key]
            case p.LinkAssign(key=key):
                if key not in self.runs:
                    self.runs[key] = _Run(key=key, assign=msg)
            case p.LinkBundle(key=key, index=index, data=data, last=last):
                run = self.runs.get(key)
                if run is None or run.task is not None or index != len(run.chunks):
                    return  # a resend of what is already here
                run.chunks.append(data)
                if last:
                    run.task = asyncio.get_running_loop().create_task(self._run(run))
            case p.LinkTell(key=key, msg=tell):
                if key in self.runs:
                    self._tell(key, tell)
            case p.LinkDrop(key=key, reason=reason):
                run = self.runs.pop(key, None)
                if run is not None:
                    run.dropped = True
                    run.unacked.clear()
                    _log.info("run_dropped", key=key, reason=reason)
                    self._tell(key, p.StopWorker(reason=f"the supervisor dropped it: {reason}", state="stopped"))
            case _:
                raise AssertionError(msg)

    def _tell(self, key: str, msg: p.Msg) -> None:
        session, name, gen = key.rsplit("/", 2)
        try:
            self.out.send_nowait(mailbox_endpoint(session, name, int(gen)), wire.pack(msg))
        except zmq.Again:
            _log.warning("worker_mailbox_full", key=key)

    def _stop_all(self, reason: str) -> None:
        for key, run in self.runs.items():
            if run.task is not None and not run.task.done():
                self._tell(key, p.StopWorker(reason=reason, state="stopped"))

    def _queue(self, run: _Run, make) -> None:
        if run.dropped:
            return
        run.seq += 1
        msg = make(run.seq)
        run.unacked.append(msg)
        self._send(msg)

    # ------------------------------------------------------------ one run

    def _local_spec(self, spec: WorkerSpec, wc: Path) -> WorkerSpec:
        """The supervisor's spec with this machine's paths: working copy, TMPDIR, CLI, environment."""
        from actors.doctor import find_binary
        run_dir = self.state_dir / "runs" / spec.session / spec.name / str(spec.gen)
        tmpdir = run_dir / "tmp"
        tmpdir.mkdir(parents=True, exist_ok=True)
        binary = spec.run.binary if spec.agent == "command" else find_binary(spec.agent)
        extra_env = dict(spec.extra_env)
        if binary and spec.agent != "command":
            extra_env["PATH"] = os.pathsep.join([os.path.dirname(binary), os.environ.get("PATH", os.defpath)])
        home = spec.run.home
        if home:
            home = str(self.state_dir / "homes" / spec.session / spec.name)
            Path(home).mkdir(parents=True, exist_ok=True)
        run = msgspec.structs.replace(spec.run, cwd=str(wc), tmpdir=str(tmpdir), binary=binary, home=home,
                                      config_dir=str(Path(home) / ".codex") if home and spec.agent == "codex" else None)
        return msgspec.structs.replace(spec, run=run, state_dir=str(self.state_dir), extra_env=extra_env,
                                       base_env=agent_env(os.environ, spec.agent, []))

    async def _run(self, run: _Run) -> None:
        a = run.assign
        key = run.key
        try:
            spec = _spec_dec.decode(a.spec)
        except msgspec.DecodeError as exc:
            _log.warning("host_bad_spec", key=key, error=str(exc))
            self._queue(run, lambda seq: p.HostEnded(key=key, seq=seq))
            run.done = True
            return
        stamp = wire.stamp_prefix(spec.session, spec.name, spec.agent, spec.gen)
        topic = wire.topic(spec.session)
        try:
            wc = await asyncio.to_thread(hostlink_git.working_copy, self.state_dir / "work", spec.session, spec.name,
                                         a.branch, a.base, b"".join(run.chunks))
        except (OSError, hostlink_git.GitError) as exc:
            frames = wire.pending_frames(topic, stamp, time.time(), [p.WorkerExited(
                state="failed", reason=f"agent host {self.name} could not make the working copy: {exc}")])
            self._queue(run, lambda seq: p.HostEvents(key=key, seq=seq, frames=frames))
            self._queue(run, lambda seq: p.HostEnded(key=key, seq=seq))
            run.done = True
            return
        run.chunks = []
        journal = f"inproc://host/out/{key}"
        pull = Mailbox(self.ctx, journal)
        worker = Worker(self.ctx, self._local_spec(spec, wc), journal)
        wtask = asyncio.get_running_loop().create_task(worker.run())
        exited: list[bytes] = []
        try:
            while not exited:
                raws = await pull.recv_batch(timeout_s=0.5)
                if not raws and wtask.done():
                    break
                batch: list[bytes] = []  # what the worker appended meanwhile goes as one message
                for raw in raws:
                    try:
                        msg = wire.journal_inbox.decode(raw)
                    except msgspec.DecodeError:
                        continue
                    if type(msg) is not p.Append or exited:
                        continue
                    frames = msg.frames
                    cut = next((i for i, f in enumerate(frames) if f.split(b" ", 2)[1] == b"worker.exited"), None)
                    if cut is not None:
                        frames, exited = frames[:cut], frames[cut:]
                    batch.extend(frames)
                if batch:
                    self._queue(run, lambda seq, frames=batch: p.HostEvents(key=key, seq=seq, frames=frames))
            await asyncio.wait({wtask})
            if not run.dropped:
                await self._send_result(run, spec, wc)
            if exited:
                self._queue(run, lambda seq: p.HostEvents(key=key, seq=seq, frames=exited))
            self._queue(run, lambda seq: p.HostEnded(key=key, seq=seq))
            run.done = True
            if run.dropped or not run.unacked:
                self.runs.pop(key, None)
        finally:
            if not wtask.done():
                wtask.cancel()
                await asyncio.wait({wtask})
            pull.close()

    async def _send_result(self, run: _Run, spec: WorkerSpec, wc: Path) -> None:
        a = run.assign
        try:
            data, head, wrapped = await asyncio.to_thread(
                hostlink_git.result_bundle, wc, a.branch, a.base, f"orchd: {spec.name} (agent host {self.name})",
                list(a.exclude))
        except (OSError, hostlink_git.GitError) as exc:
            _log.error("host_result_failed", key=run.key, error=str(exc))
            frames = wire.pending_frames(wire.topic(spec.session),
                                         wire.stamp_prefix(spec.session, spec.name, spec.agent, spec.gen), time.time(),
                                         [p.WorkerLog(line=f"orchd: agent host {self.name} could not bundle the "
                                                           f"result: {exc}")])
            self._queue(run, lambda seq: p.HostEvents(key=run.key, seq=seq, frames=frames))
            return
        size = chunk_bytes(self.max_frame_bytes)
        n = max(1, -(-len(data) // size))
        for i in range(n):
            part = data[i * size:(i + 1) * size]
            self._queue(run, lambda seq, part=part, last=i == n - 1: p.HostResult(
                key=run.key, seq=seq, data=part, last=last, head=head, wrapped=wrapped))


def default_name() -> str:
    return socket.gethostname()
