"""The worker actor: one running agent process, its output turned into events.

Theory of operation
-------------------
A worker owns exactly one agent process (a process group, see
``orchd.proc``).  Before it starts the agent it may wait: out a start delay
(a recovery backoff) and, when the session is paused (``start_paused``, or
a pause that arrives meanwhile), until it is resumed; a stop meanwhile ends
it without starting anything.

While the agent runs, three tasks run under one TaskGroup:

* stdout: each chunk the pipe gives (handled in the read callback, see
  ``_stdout``), cut into lines by the sans-I/O
  ``LineFramer``, each line fed to the agent adapter's sans-I/O parser; the
  events of one chunk go to the journal as ONE ``Append`` message (one
  timestamp per chunk).  Assistant text is scanned for the marker lines
  (``MILESTONE:`` ...), which become ``worker.*`` events.
* stderr: every line becomes ``worker.log``; the adapter may say a line
  means "your sandbox is off", which ends an unconfined run that claimed
  to be confined (unless the user allowed unconfined runs).
* control (the TaskGroup's body): the mailbox (stop, pause, resume from
  the supervisor), the agent's exit, and the deadlines of
  ``actors.deadlines`` (stall, wall time, exit grace), on the monotonic
  clock.

The worker ends when the agent's main process exits, not when its pipes
close: a background process the agent left behind may hold them open.
After the exit it reads on for ``exit_grace_s``, kills the process group,
drains what is buffered, and emits ``worker.exited`` with the exit code or
signal.  An agent that fails is an event, not an exception; only a bug
escapes ``run``.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from collections import deque
from pathlib import Path
from typing import assert_never

import msgspec
import zmq.asyncio

from actors.agents import get_adapter
from actors.agents.base import RunSpec
from actors.deadlines import Deadlines
from orchd import log, metrics, proc, redact, wire
from orchd import protocol as p
from orchd.actor import Mailbox, Outbox
from orchd.lines import LineFramer

_log = log.get("actors.worker")

MARKERS = re.compile(r"^[ \t>*_`#-]*(MILESTONE|BLOCKER|REQUEST_REVIEW|DONE|QUESTION)[*_`]*:[ \t]*(.*)$", re.MULTILINE)
MARKER_EVENTS = {
    "MILESTONE": p.WorkerMilestone,
    "BLOCKER": p.WorkerBlocker,
    "REQUEST_REVIEW": p.WorkerReviewRequest,
    "DONE": p.WorkerDone,
    "QUESTION": p.WorkerQuestion,
}
# What one worker may hold of its agent's output while the log is slow or stuck: Appends in
# flight to the journal (WORKER_OUTBOX_HWM, plus the journal's MAILBOX_HWM), each one read of at
# most READ_CHUNK, and one more read held while the journal is full.  Past that the agent is held
# back by its stdout pipe: ~5 MiB per worker (it was ~80 MiB with 1 MiB reads and 1,000 Appends).
# Lines longer than a read are joined by the line framer, not by the stream.
READ_CHUNK = 64 * 1024
WORKER_OUTBOX_HWM = 16
STDERR_TAIL = 50
# the longest a worker waiting to start (start delay, or paused before its start) waits on its mailbox
# before looking at its start deadline again; the running agent's control loop has no such timeout
MAILBOX_RECHECK_S = 1.0


class WorkerSpec(msgspec.Struct, frozen=True, kw_only=True):
    """What the supervisor asks a worker to run (one generation of one assignment)."""

    session: str
    name: str
    agent: str
    gen: int
    run: RunSpec
    wall_time_s: float | None = None
    stall_s: float | None = None
    max_line_bytes: int = 8 * 1024 * 1024
    stop_grace_s: float = 5.0
    state_dir: str = ""
    allow_unconfined: bool = False
    extra_env: dict[str, str] = {}
    start_delay_s: float = 0.0  # a recovery backoff: wait (stoppable) before starting the agent
    start_paused: bool = False  # the session is paused: wait for ResumeWorker before starting the agent
    nice: int = 0  # the agent runs this many nice levels below the daemon (config agent_nice; orchd.proc)
    exit_grace_s: float = 2.0  # after the agent exits, how long to read on before killing what it left
    base_env: dict[str, str] | None = None  # the environment the agent starts from (actors.launch.agent_env);
                                            # None: the daemon's whole environment


def mailbox_endpoint(session: str, name: str, gen: int) -> str:
    return f"inproc://worker/{session}/{name}/{gen}"


class Worker:
    def __init__(self, ctx: zmq.asyncio.Context, spec: WorkerSpec, journal: str) -> None:
        self.ctx = ctx
        self.spec = spec
        self.journal = journal
        self.adapter = get_adapter(spec.agent)
        self._topic = wire.topic(spec.session)
        self._stamp = wire.stamp_prefix(spec.session, spec.name, spec.agent, spec.gen)
        self._out: Outbox | None = None
        self._deadlines: Deadlines | None = None  # made when run() starts: its clock starts then
        self._stop: p.StopWorker | None = None
        self._stderr_tail: list[str] = []
        self._agent_events: deque[p.Ev] = deque(maxlen=1000)  # the last ones, for the failure catalogue
        self._result_ok: bool | None = None
        self._child: proc.Child | None = None
        self._held: deque[bytes] = deque()  # stdout Appends the journal had no room for yet
        self._sender: asyncio.Future | None = None
        self._stopper: asyncio.Task | None = None
        self._out_framer = LineFramer(spec.max_line_bytes)
        self._parser = self.adapter.new_parser()
        self._redactor = redact.current()  # plus the run's own credentials once its env is known

    # ------------------------------------------------------------ emitting

    def _frames(self, events: list[p.Ev], ts: float | None = None) -> list[bytes]:
        """Every event of this worker is framed here, so secrets are redacted here (``orchd.redact``):
        agent text, tool inputs and outputs, stderr lines, argv, error messages."""
        ts = time.time() if ts is None else ts
        bodies = wire.event_bodies(events)
        r = self._redactor
        # one check of the events' own JSON for the whole chunk (a join only adds false alarms; the
        # stamp around it holds no agent text); rare: only then are events walked
        if r.maybe_bytes(bodies[0] if len(bodies) == 1 else b"\n".join(bodies)):
            events = [r.event(ev) for ev in events]
            bodies = wire.event_bodies(events)
        return wire.frames_of(self._topic, self._stamp, ts, events, bodies)

    async def emit(self, *events: p.Ev) -> None:
        await self._out.send(self.journal, wire.pack(p.Append(frames=self._frames(list(events)))))

    # ------------------------------------------------------------ run

    async def run(self, restarts: int = 0) -> None:
        spec = self.spec
        self._out = Outbox(self.ctx, hwm=WORKER_OUTBOX_HWM)
        inbox = Mailbox(self.ctx, mailbox_endpoint(spec.session, spec.name, spec.gen))
        self._deadlines = Deadlines(time.monotonic(), start_delay_s=spec.start_delay_s,
                                    wall_time_s=spec.wall_time_s, stall_s=spec.stall_s,
                                    exit_grace_s=spec.exit_grace_s, paused=spec.start_paused)
        try:
            await self._run(inbox)
        finally:
            if self._sender is not None:  # cancelled while the journal was full: what it held goes
                self._sender.cancel()
            inbox.close()
            self._out.close()

    async def _run(self, inbox: Mailbox) -> None:
        spec = self.spec
        if spec.start_paused:
            await self.emit(p.WorkerStateChanged(state="paused", reason="session paused"))
        if not await self._wait_to_start(inbox):
            return
        try:
            launch = self.adapter.build_launch(spec.run)
        except (ValueError, OSError) as exc:
            await self.emit(p.WorkerExited(state="failed", reason=f"cannot build the command: {exc}"))
            return
        env = dict(os.environ if spec.base_env is None else spec.base_env)
        env.update(launch.env)
        env.update(spec.extra_env)
        # a credential given to this run (a plan's env) is as secret as the daemon's own
        self._redactor = redact.current().extended(redact.credentials({**launch.env, **spec.extra_env}))
        env[proc.MARKER] = spec.state_dir
        env["ORCHD_SESSION"] = spec.session
        env["ORCHD_WORKER"] = spec.name
        env["ORCHD_GEN"] = str(spec.gen)
        version = None
        if spec.agent != "command":
            version = await proc.cli_version(self.adapter.version_argv(spec.run.binary), env)
        try:
            if not Path(launch.cwd).is_dir():
                raise FileNotFoundError(f"working directory {launch.cwd} does not exist")
            child = await proc.spawn(launch.argv, launch.cwd, env, limit=READ_CHUNK, nice=spec.nice)
        except OSError as exc:
            _log.warning("agent_spawn_failed", session=spec.session, worker=spec.name, error=str(exc))
            await self.emit(p.WorkerExited(state="failed", reason=f"cannot start {launch.argv[0]!r}: {exc}"))
            return
        self._child = child
        # the stall clock starts with the process, not the version probe
        self._deadlines.started(time.monotonic())
        metrics.workers_running.inc()
        try:
            await self.emit(p.WorkerStarted(pid=child.pid, argv=launch.argv, cwd=launch.cwd,
                                            agent_version=version, resumed_from=spec.run.resume_id,
                                            confined=launch.confined))
            _log.info("agent_started", session=spec.session, worker=spec.name, gen=spec.gen, pid=child.pid)
            async with asyncio.TaskGroup() as tg:
                readers = (tg.create_task(self._stdout(child)), tg.create_task(self._stderr(child, launch.confined)))
                exit_task = tg.create_task(child.wait_exit())
                await self._control(inbox, child, exit_task, readers)
        finally:
            if child.returncode is None:  # cancelled (daemon stopping): end the agent
                await proc.terminate(child, spec.stop_grace_s)
            else:  # whatever it left behind in its group goes with it
                child.kill_group()
            if self._stopper is not None:
                await self._stopper
            child.close_pipes()
            metrics.workers_running.dec()
        tail = self._stdout_lines(self._out_framer.close(), self._parser)
        tail += self._agent(self._parser.finish(child.returncode))
        if tail:
            await self.emit(*tail)
        await self._exited(child.returncode)

    async def _wait_to_start(self, inbox: Mailbox) -> bool:
        """Wait out the start delay and any pause; False (and the run ended) if told to stop meanwhile."""
        dl = self._deadlines
        while dl.expired(time.monotonic()) != "start":
            wait_s = self._deadline_wait_s()
            await self._receive(await inbox.recv_batch(
                timeout_s=MAILBOX_RECHECK_S if wait_s is None else min(wait_s, MAILBOX_RECHECK_S)))
            if self._stop is not None:
                await self.emit(p.WorkerExited(state=self._stop.state, reason=self._stop.reason))
                return False
        return True

    def _deadline_wait_s(self) -> float | None:
        """How long to wait for something else to happen before the next deadline (None: no deadline)."""
        timeout = self._deadlines.timeout_s(time.monotonic())
        # never a zero timeout: a busy loop here would starve the event loop's selector
        return None if timeout is None else max(timeout, 0.005)

    async def _receive(self, raws: list[bytes]) -> None:
        for raw in raws:
            try:
                msg = wire.worker_inbox.decode(raw)
            except msgspec.DecodeError as exc:
                metrics.bad_messages.labels("worker", getattr(exc, "code", "invalid")).inc()
                _log.warning("worker_bad_message", worker=self.spec.name, error=str(exc))
                continue
            await self._handle(msg)

    async def _exited(self, rc: int | None) -> None:
        code = rc if rc is not None and rc >= 0 else None
        sig = -rc if rc is not None and rc < 0 else None
        if self._stop is not None:
            state, reason = self._stop.state, self._stop.reason
        elif code == 0 and self._result_ok is not False:
            state, reason = "done", None
        else:
            state = "failed"
            reason = f"exit code {code}" if code is not None else f"killed by signal {sig}"
            failure = self.adapter.classify(code, self._stderr_tail, list(self._agent_events))
            if failure is not None:
                await self.emit(p.WorkerFailure(code=failure.code, message=failure.message, action=failure.action,
                                                fix=failure.fix, source=failure.source[:2000]))
                reason = f"{failure.code}: {failure.message}"
        _log.info("agent_exited", session=self.spec.session, worker=self.spec.name, state=state,
                  exit_code=code, signal=sig)
        await self.emit(p.WorkerExited(state=state, exit_code=code, signal=sig, reason=reason))

    # ------------------------------------------------------------ streams

    async def _stdout(self, child: proc.Child) -> None:
        """Turn stdout into events as it arrives, until EOF and until what the journal had no
        room for is sent; the partial last line and the parser's end are ``_run``'s.

        Each chunk is handled in the event loop's read callback (``_on_stdout``), not by a
        task woken per chunk.  When the journal's queue is full the chunk's ``Append`` is
        held, reading stops (the agent feels it through its pipe) and ``_send_held`` sends
        in order and reads on; so output keeps its order and one worker holds at most one
        chunk more than before."""
        await child.read_stdout(self._on_stdout)
        if self._sender is not None:
            await self._sender

    def _on_stdout(self, data: bytes) -> None:
        read_at = time.monotonic()
        self._deadlines.output(read_at)
        events = self._stdout_lines(self._out_framer.feed(data), self._parser)
        if not events:
            return
        msg = wire.pack(p.Append(frames=self._frames(events), read_at=read_at))
        if not self._held:
            try:
                self._out.send_nowait(self.journal, msg)
                return
            except zmq.Again:
                pass
        self._held.append(msg)
        if self._sender is None:
            self._child.pause_stdout()
            self._sender = asyncio.ensure_future(self._send_held())

    async def _send_held(self) -> None:
        while self._held:
            await self._out.send(self.journal, self._held[0])
            self._held.popleft()
        self._sender = None
        self._child.resume_stdout()

    def _stdout_lines(self, lines, parser) -> list[p.Ev]:
        events: list[p.Ev] = []
        for text, problems, size in lines:
            if problems:
                events.extend(self._bad_line(problems, "stdout", size, text))
                if "too_long" in problems:
                    continue
            events.extend(self._agent(parser.feed_line(text)))
        return events

    def _agent(self, evs: list[p.Ev]) -> list[p.Ev]:
        """Add marker events after assistant text; remember what classify needs."""
        if not evs:
            return evs
        out: list[p.Ev] = []
        for ev in evs:
            out.append(ev)
            if type(ev) is p.AgentText:
                text = ev.text
                if ":" in text:
                    for m in MARKERS.finditer(text):
                        out.append(MARKER_EVENTS[m.group(1)](text=m.group(2).strip()))
            elif type(ev) in (p.AgentError, p.AgentResult, p.AgentUsage, p.AgentSession):
                self._agent_events.append(ev)
                if type(ev) is p.AgentResult:
                    self._result_ok = ev.ok
        return out

    def _bad_line(self, problems, stream: str, size: int, text: str) -> list[p.Ev]:
        out = []
        for problem in problems:
            metrics.bad_lines.labels(problem).inc()
            out.append(p.WorkerBadLine(problem=problem, stream=stream, size=size, preview=text[:200]))
        return out

    async def _stderr(self, child: proc.Child, confined: bool | None) -> None:
        framer = LineFramer(self.spec.max_line_bytes)
        read = child.stderr.read
        while True:
            data = await read(READ_CHUNK)
            lines = framer.feed(data) if data else framer.close()
            if data:
                self._deadlines.output(time.monotonic())
            events: list[p.Ev] = []
            for text, problems, size in lines:
                if problems:
                    events.extend(self._bad_line(problems, "stderr", size, text))
                    if "too_long" in problems:
                        continue
                events.append(p.WorkerLog(line=text))
                self._stderr_tail.append(text)
                del self._stderr_tail[:-STDERR_TAIL]
                reason = self.adapter.check_stderr(text)
                if reason and confined:
                    events.extend(await self._unconfined(reason))
            if events:
                await self.emit(*events)
            if not data:
                return

    async def _unconfined(self, reason: str) -> list[p.Ev]:
        if self.spec.allow_unconfined or self.spec.run.allow_unconfined:
            return [p.SessionNote(message=f"{self.spec.name} runs UNCONFINED (allowed by configuration): {reason}")]
        self._request_stop(p.StopWorker(reason=f"sandbox unavailable: {reason}", state="failed"))
        return [p.WorkerFailure(code="sandbox_unavailable", message=reason, action="escalate")]

    # ------------------------------------------------------------ control

    def _request_stop(self, msg: p.StopWorker) -> None:
        """Record why, and (once started) TERM → grace → KILL the group (once)."""
        if self._stop is None:
            self._stop = msg
            self._deadlines.stop()
            if self._child is not None:
                self._stopper = asyncio.get_running_loop().create_task(
                    proc.terminate(self._child, self.spec.stop_grace_s))

    async def _control(self, inbox: Mailbox, child: proc.Child, exit_task: asyncio.Task,
                       readers: tuple[asyncio.Task, ...]) -> None:
        """Mailbox, exit and deadlines, until the agent has exited and its pipes are drained (or given up)."""
        dl = self._deadlines
        recv: asyncio.Task | None = None
        try:
            while True:
                now = time.monotonic()
                if exit_task.done():
                    dl.exited(now)
                    if all(r.done() for r in readers):
                        return
                match dl.expired(now):
                    case "wall_time":
                        await self._limit("wall_time", f"ran longer than {self.spec.wall_time_s:g} s")
                    case "stall":
                        await self._limit("stall", f"no output for {self.spec.stall_s:g} s")
                    case "exit_grace":
                        self._kill_leftovers(child, now)
                    case "drain":
                        # something outside the group still holds a pipe: stop reading it
                        _log.warning("agent_pipes_abandoned", session=self.spec.session, worker=self.spec.name)
                        child.close_pipes()
                        dl.pipes_closed()
                    case "start" | None:
                        pass
                if recv is None:  # no timeout: a Waker misses no message, and 200 idle agents waking
                    recv = asyncio.create_task(inbox.recv_batch())  # every second cost ~3% of a core
                # wake on a message, the agent's exit, a pipe's EOF, or the next deadline
                waits = {recv, *(r for r in readers if not r.done())}
                if not exit_task.done():
                    waits.add(exit_task)
                done, _ = await asyncio.wait(waits, timeout=self._deadline_wait_s(),
                                             return_when=asyncio.FIRST_COMPLETED)
                if recv in done:
                    raws, recv = recv.result(), None
                    await self._receive(raws)
        finally:
            if recv is not None:
                recv.cancel()
                await asyncio.wait({recv})  # let it finish cancelling (its error, if any, is the cancel)

    def _kill_leftovers(self, child: proc.Child, now: float) -> None:
        """The exit grace is over (or a stop came after the exit): kill what the agent left in its group."""
        if child.kill_group():
            _log.info("agent_leftovers_killed", session=self.spec.session, worker=self.spec.name)
        self._deadlines.exited(now)  # (a no-op unless the stop came before the loop saw the exit)
        self._deadlines.killed(now)

    async def _limit(self, limit: str, detail: str) -> None:
        _log.warning("worker_limit", session=self.spec.session, worker=self.spec.name, limit=limit)
        await self.emit(p.WorkerLimit(limit=limit, detail=detail))
        self._request_stop(p.StopWorker(reason=f"limit {limit}: {detail}", state="failed"))

    async def _handle(self, msg: p.WorkerInbox) -> None:
        """One message from the supervisor, in whatever phase the worker is."""
        dl = self._deadlines
        child = self._child
        exited = child is not None and child.returncode is not None
        now = time.monotonic()
        match msg:
            case p.StopWorker():
                if not exited:
                    self._request_stop(msg)
                else:  # the agent already ended on its own, so its exit decides the state
                    self._kill_leftovers(child, now)
            case p.PauseWorker():
                if exited or dl.paused:
                    return
                if child is None or proc.signal_group(child.pid, signal.SIGSTOP):
                    dl.pause(now)
                    await self.emit(p.WorkerStateChanged(state="paused"))
            case p.ResumeWorker():
                if dl.paused:
                    if child is not None:
                        proc.signal_group(child.pid, signal.SIGCONT)
                    dl.resume(now)  # time spent paused is not a stall
                    await self.emit(p.WorkerStateChanged(state="running"))
            case _:
                assert_never(msg)
