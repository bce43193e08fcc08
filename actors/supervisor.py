"""The session supervisor: one loop, one ``match``, never waiting on git or SQLite.

Theory of operation
-------------------
The supervisor keeps a ``Projection`` of every session (``actors.sessions``),
rebuilt from the event log when it starts and then fed by events: its own,
applied as it emits them, and the workers', which the journal forwards
(``Committed``).  Its loop waits for its mailbox or the control socket,
then handles each message in ``_handle``'s one ``match``.  What a session
should do next is decided by the pure ``actors.decide``; this module only
carries the commands out.

Slow work never runs on the loop: git (worktrees, merges, cleaning, the
target check of a submit) runs in ``actors.workspace`` threads and comes
back as a message; a ``Replay`` page is read in ``orchd.replay``'s thread
and answered when it is ready.  So ``ping`` and ``status`` are answered
while a 50,000-file worktree is made or a million events are replayed.

What outlives a crash of this actor is made once by the daemon (``Ports``):
its mailbox, its PUSH to the journal and the runtime supervisor of the
worker actors.  A restarted supervisor is a fresh object: it sends a
``Barrier`` to the journal on that same PUSH, so when ``BarrierReached``
comes back the log holds every event its predecessor emitted; it rebuilds
from the log, adopts the workers still running and relaunches the rest.
Running agents are not touched by a supervisor restart.

A bug met while handling one session ends that session ``failed`` with the
error as its reason, and the daemon goes on serving the others; since the
end is logged, a restart does not meet the bug again.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import msgspec
import zmq

from actors import decide as d
from actors import submit, workspace
from actors.conduct import Conduct
from actors.agents import ADAPTERS
from actors.sessions import Projection, SessionView, WorkerView
from actors.worker import mailbox_endpoint
from orchd import log, metrics, redact, wire
from orchd import protocol as p
from orchd.actor import JournalBacklog, Mailbox, Outbox, Supervisor, Waker, drain
from orchd.config import Config
from orchd import remote
from orchd.control import Call, ControlSocket
from orchd.replay import Replayer
from orchd.store import LogReader

_log = log.get("actors.supervisor")

FOLLOWED_AGENT_KINDS = ("agent.session", "agent.usage", "agent.result", "agent.error")
BARRIER_TIMEOUT_S = 2.0


@dataclass
class Ports:
    """What outlives a restart of the supervisor (made once by the daemon)."""

    inbox: Mailbox        # inproc://supervisor
    out: Outbox           # to the journal (same socket across restarts: order is kept) and to workers
    inbox_ep: str
    journal_ep: str
    workers: Supervisor   # the worker actors' runtime supervisor
    review_ep: str | None = None  # the review actor's mailbox (``orchctl review`` is forwarded there)
    hosts: object | None = None   # actors.hostlink.HostLink when agent hosts may connect (host_link_endpoint)
    recovery_ep: str | None = None  # the recovery actor's mailbox (an injected fault is forwarded there)


class SessionSupervisor(Conduct):
    def __init__(self, ctx, cfg: Config, log_path: Path, ports: Ports, rehearsals=None) -> None:
        self.ctx, self.cfg, self.log_path, self.ports = ctx, cfg, log_path, ports
        self.rehearsals = rehearsals  # actors.rehearsal.sessions.Rehearsals or None
        from actors.review import review_on
        self.proj = Projection(review_on(cfg), recovery_on=ports.recovery_ep is not None)
        self.log_error: str | None = None
        self._calls: dict[str, tuple[Call, object]] = {}   # requests answered when git is done
        self._launches: dict[tuple[str, str], d.Launch] = {}  # waiting for their worktree
        self._plan_errors: dict[str, str] = {}
        self._tasks: set[asyncio.Task] = set()
        self._backlog = JournalBacklog(ports.out, ports.journal_ep)  # events the journal had no room for yet
        self._wedged = False             # testing only: InjectFault(fault="wedge")

    # ------------------------------------------------------------ lifecycle

    async def run(self, ready: asyncio.Event) -> None:
        ready.clear()
        self._workspace = workspace.Workspace(self._post)
        self._replayer = Replayer(self.log_path)
        self._seq_reader = None
        self._seq_known = 0  # the last seq read from the log (Pong), kept for a moment the log cannot be read
        control = self._control = ControlSocket(self.ctx, self.cfg.control(), self.cfg.max_frame_bytes,
                                                **remote.control_binding(self.cfg))
        waker = Waker(self.ports.inbox.raw)
        try:
            early = await self._barrier(waker)
            waker.close()
            waker = Waker(control.raw, self.ports.inbox.raw)
            await self._rebuild()
            self._reconcile()
            for raw in early:
                self._handle(raw)
            self._advance_all()
            ready.set()
            _log.info("supervisor_ready", sessions=len(self.proj.sessions), last_seq=self.proj.last_seq)
            esc = asyncio.ensure_future(self.ports.workers.wait_escalation())
            try:
                while not esc.done():
                    if self._wedged:  # InjectFault(wedge): alive but deaf, as a deadlock would leave it
                        await asyncio.Event().wait()
                    await waker.wait(0.05 if self._backlog else 1.0)
                    for raw in drain(self.ports.inbox.raw, 1000):
                        self._handle(raw)
                    for call in control.requests():
                        self._handle(call)
                    self._backlog.flush()
                esc.result()
            finally:
                esc.cancel()
        finally:
            waker.close()
            for t in self._tasks:
                t.cancel()
            control.close()
            self._replayer.close()
            if self._seq_reader is not None:
                self._seq_reader.close()
            await self._workspace.close(grace_s=1.0)

    async def _barrier(self, waker: Waker) -> list[bytes]:
        """Wait until the log holds everything sent before; return the messages that came meanwhile.

        Control requests wait in the socket meanwhile and are answered once the state is loaded.
        """
        token = secrets.token_hex(8)
        await self.ports.out.send(self.ports.journal_ep, wire.pack(p.Barrier(token=token, reply_to=self.ports.inbox_ep)))
        early: list[bytes] = []
        deadline = time.monotonic() + BARRIER_TIMEOUT_S
        while (left := deadline - time.monotonic()) > 0:
            await waker.wait(left)
            for raw in drain(self.ports.inbox.raw, 1000):
                try:
                    msg = wire.supervisor_inbox.decode(raw)
                except msgspec.DecodeError:
                    continue
                if isinstance(msg, p.BarrierReached):
                    if msg.token == token:
                        return early
                    continue  # a predecessor's barrier
                early.append(raw)
        _log.warning("journal_barrier_timeout", timeout_s=BARRIER_TIMEOUT_S)
        return early

    async def _rebuild(self) -> None:
        """The projection from the log (read in batches, in a thread; the kinds the supervisor follows only)."""
        n = 0
        async for rows in LogReader.state_batches(self.log_path, "agent.", FOLLOWED_AGENT_KINDS):
            for _, body in rows:
                self._apply_json(body)
            n += len(rows)
        _log.info("state_rebuilt", events=n, sessions=len(self.proj.sessions))

    def _reconcile(self) -> None:
        """After a restart: adopt live workers, relaunch (or settle) the ones that were running."""
        live = set(self.ports.workers.running())
        for s in self.proj.sessions.values():
            if s.state in p.SESSION_TERMINAL:
                continue
            for w in s.running():
                if f"{s.id}/{w.spec.name}/{w.gen}" in live:
                    continue  # only the supervisor restarted: the worker and its agent go on
                if w.run_kind == "reviewer":  # the review actor asks its review again
                    self.emit(s, p.WorkerExited(state="stopped", reason="orchd restarted during the review"), w)
                elif s.stop_reason is not None:
                    self.emit(s, p.WorkerExited(state="stopped", reason=f"{s.stop_reason} (orchd restarted)"), w)
                elif w.spec.agent == "command" and not (w.spec.rerun or w.spec.retry):
                    self.emit(s, p.WorkerExited(state="failed", reason="orchd restarted while it ran; a command is "
                                                "not run again unless its assignment sets retry = true (or rerun = true)"), w)
                else:
                    _log.info("relaunching_after_restart", session=s.id, worker=w.spec.name, gen=w.gen)
                    self._guarded(s, self._launch, s, w, d.Launch(worker=w.spec.name, resume=True,
                                                                  reason="orchd restarted"))

    # ------------------------------------------------------------ the one match

    def _handle(self, item: bytes | Call) -> None:
        if isinstance(item, bytes):
            try:
                item = wire.supervisor_inbox.decode(item)
            except msgspec.DecodeError as exc:
                metrics.bad_requests.labels("bad_message").inc()
                metrics.bad_messages.labels("supervisor", getattr(exc, "code", "invalid")).inc()
                _log.warning("supervisor_bad_message", error=str(exc)[:200])
                return
        s = self.proj.sessions.get(_session_named(item) or "")
        match item:
            case Call(body=p.InjectFault(fault="wedge") as fault) if self.cfg.fault_injection:
                if fault.actor == "journal":
                    self.ports.out.send_nowait(self.ports.journal_ep, wire.pack(p.Wedge()))
                else:
                    self._wedged = True  # the loop stops handling messages (see run)
                self._control.reply(item, p.Ok())
            case p.Crash() | Call(body=p.InjectFault(actor="supervisor")) if self._faults(item):
                if isinstance(item, Call):
                    self._control.reply(item, p.Ok())
                raise RuntimeError("injected fault")
            case Call(body=p.InjectFault(actor="recovery")) if self._faults(item):
                if self.ports.recovery_ep is None:
                    self._control.reply(item, _bad_state("the recovery actor is not running"))
                else:
                    self.ports.out.send_nowait(self.ports.recovery_ep, wire.pack(p.Crash()))
                    self._control.reply(item, p.Ok())
            case Call(body=p.InjectFault(actor="journal")) if self._faults(item):
                self.ports.out.send_nowait(self.ports.journal_ep, wire.pack(p.Crash()))
                self._control.reply(item, p.Ok())
            case Call(body=p.InjectFault()):
                pass  # refused by _faults
            case p.Committed(events=bodies):
                touched = {sid for body in bodies if (sid := self._apply_json(body))}
                for sid in touched:
                    self._advance(self.proj.sessions.get(sid))
            case p.BarrierReached():
                pass  # a predecessor's, late
            case p.Probe(token=token, reply_to=reply_to):
                self._answer_probe(token, reply_to)
            case p.LogHealth(error=error):
                self.log_error = error
                (_log.error if error else _log.info)("event_log_health", error=error)
                if error is None:
                    self._advance_all()
            case p.HostLost() if s is not None:
                self._guarded(s, self._host_lost, s, item)
            case p.WorkerEnded() if s is not None:
                self._guarded(s, self._worker_ended, s, item)
            case p.WorktreeReady() if s is not None:
                self._guarded(s, self._worktree_ready, s, item)
            case p.LaunchReviewer() if s is not None:
                self._guarded(s, self._launch_reviewer, s, item)
            case p.MergeFinished() if s is not None:
                self._guarded(s, self._merged, s, item)
            case p.CleanFinished(call=token, removed=n, error=error, kept=kept):
                call, _ = self._calls.pop(token)
                if s is not None:
                    self._committed(s, item.commits)
                if error is None and kept:  # work that could not be committed: its clone stays
                    error = "kept " + "; ".join(kept)
                if error is None and s is not None:
                    self.emit(s, p.SessionNote(message=f"removed {n} worktree(s)"))
                self._control.reply(call, p.Ok(detail=f"removed {n} worktree(s)") if error is None
                                    else p.Error(code=p.ErrorCode.INTERNAL, detail=f"clean failed: {error}"))
            case p.TargetChecked(call=token):
                call, checked = self._calls.pop(token)
                self._control.reply(call, self._create(item, checked))
            case Call(body=p.Hosts()):
                link = self.ports.hosts
                infos = [] if link is None else [p.HostInfo(**h) for h in link.hosts_info(time.time())]
                self._control.reply(item, p.HostsReply(hosts=infos, link=self.cfg.host_link_endpoint))
            case Call(body=p.Ping()):
                self._control.reply(item, p.Pong(version=p.VERSION, pid=os.getpid(), last_seq=self._last_seq(),
                                                 log_error=self.log_error))
            case Call(body=p.Status(session=None)):
                self._control.reply(item, p.StatusReply(sessions=[v.info() for v in self.proj.sessions.values()],
                                                        log_error=self.log_error))
            case Call(body=p.Replay() as req):
                self._spawn(self._replay(item, req))
            case Call(body=p.Sync(token=token)):
                self.ports.out.send_nowait(self.ports.journal_ep, wire.pack(p.PublishSync(token=token[:200])))
                self._control.reply(item, p.Ok())
            case Call(body=p.Submit() as req):
                self._control_guarded(item, self._submit, item, req)
            case Call(body=p.Status() | p.Pause() | p.Resume() | p.Stop() | p.Clean() | p.Review() | p.Answer()
                      | p.Reviews() | p.Recoveries()) if s is None:
                self._control.reply(item, p.Error(code=p.ErrorCode.NOT_FOUND, detail=f"no session {item.body.session!r}"))
            case Call(body=p.Status()):
                self._control.reply(item, p.StatusReply(sessions=[s.info()], log_error=self.log_error))
            case Call(body=p.Reviews()):
                self._control.reply(item, p.ReviewsReply(reviews=s.review_infos()))
            case Call(body=p.Recoveries()):
                self._control.reply(item, p.RecoveriesReply(recoveries=list(s.recoveries.values())))
            case Call():
                reply = self._guarded(s, self._command, s, item)
                if reply is not None:
                    self._control.reply(item, reply)
            case _:
                _log.warning("supervisor_unexpected_message", kind=type(item).__name__)

    def _answer_probe(self, token: str, reply_to: str) -> None:
        """The watchdog's liveness ping: answer with a summary of the sessions (``STATUS=``, gauges)."""
        sessions: dict[str, int] = {}
        workers: dict[str, int] = {}
        waiting = 0
        for v in self.proj.sessions.values():
            sessions[v.state] = sessions.get(v.state, 0) + 1
            if getattr(v, "waiting_for", None) == "answer":
                waiting += 1
            if v.state in p.SESSION_TERMINAL:
                continue  # their workers are history, not load
            for w in v.workers.values():
                key = f"{w.spec.agent}/{w.state}"
                workers[key] = workers.get(key, 0) + 1
        try:
            self.ports.out.send_nowait(reply_to, wire.pack(p.ProbeAnswer(token=token, sessions=sessions,
                                                                         workers=workers, waiting=waiting)))
        except zmq.Again:  # the daemon is not reading its answers: it will ask again
            _log.warning("probe_answer_dropped", reply_to=reply_to)

    def _faults(self, item) -> bool:
        if isinstance(item, p.Crash) or self.cfg.fault_injection:
            return True
        self._control.reply(item, p.Error(code=p.ErrorCode.BAD_STATE, detail="fault injection is off"))
        return False

    # ------------------------------------------------------------ containment

    def _guarded(self, s: SessionView | None, fn, *args):
        """Run ``fn``; a bug ends session ``s`` failed instead of the daemon."""
        try:
            return fn(*args)
        except Exception as exc:  # one session's bug must not take the others down
            _log.error("session_handler_crashed", exc_info=True, session=s.id if s else None)
            if s is not None and s.state not in p.SESSION_TERMINAL:
                self._fail(s, f"orchd could not handle this session: {type(exc).__name__}: {exc}"[:500])
            return p.Error(code=p.ErrorCode.INTERNAL, detail=f"{type(exc).__name__}: {exc}"[:500])

    def _control_guarded(self, call: Call, fn, *args) -> None:
        try:
            fn(*args)
        except Exception as exc:  # a request's bug is answered, not fatal
            _log.error("request_crashed", exc_info=True, kind=call.kind)
            self._control.reply(call, p.Error(code=p.ErrorCode.INTERNAL, detail=f"{type(exc).__name__}: {exc}"[:500]))

    def _fail(self, s: SessionView, reason: str) -> None:
        for w in s.running():
            self._tell(s, w, p.StopWorker(reason=reason, state="failed"))
        self.emit(s, p.SessionStateChanged(state="failed", reason=reason))
        self._end_rehearsal(s)

    # ------------------------------------------------------------ emitting and telling

    def emit(self, s: SessionView | str | None, ev: p.Ev, w: WorkerView | None = None, gen: int | None = None) -> None:
        sid = s.id if isinstance(s, SessionView) else s
        worker, agent = (w.spec.name, w.spec.agent) if w else (None, None)
        gen = (w.gen if w else 0) if gen is None else gen
        ts = time.time()
        self.proj.apply(p.Stamp(seq=0, ts=ts, session=sid, worker=worker, agent=agent, gen=gen), ev)
        # the projection keeps what was asked for; the log gets it redacted (a plan's env, error texts)
        self._backlog.send(wire.append_one(sid, redact.current().event(ev), ts, worker=worker, agent=agent, gen=gen))

    def _tell(self, s: SessionView, w: WorkerView, msg: p.Msg) -> None:
        try:
            self.ports.out.send_nowait(mailbox_endpoint(s.id, w.spec.name, w.gen), wire.pack(msg))
        except zmq.Again:  # a worker that does not read its mailbox
            _log.warning("worker_mailbox_full", session=s.id, worker=w.spec.name)

    def _post(self, msg: p.Msg) -> None:
        """A result of work done elsewhere, into our own mailbox (handled in order, like any message)."""
        self.ports.out.send_nowait(self.ports.inbox_ep, wire.pack(msg))

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _apply_json(self, body: bytes) -> str | None:
        try:
            stamp, ev = wire.decode_event(body)
        except msgspec.DecodeError as exc:
            _log.warning("unreadable_event", error=str(exc)[:200], preview=body[:200])
            return None
        self.proj.apply(stamp, ev)
        return stamp.session

    def _last_seq(self) -> int:
        """The log's last seq: one B-tree lookup (WAL readers never wait for the writer)."""
        try:
            if self._seq_reader is None:
                self._seq_reader = LogReader(self.log_path)
            self._seq_known = self._seq_reader.last_seq()
        except sqlite3.DatabaseError as exc:  # the log unreadable for a moment: the last known, a new reader next time
            _log.warning("last_seq_unread", error=str(exc))
            if self._seq_reader is not None:
                self._seq_reader.close()
                self._seq_reader = None
        return self._seq_known

    # ------------------------------------------------------------ requests

    async def _replay(self, call: Call, req: p.Replay) -> None:
        try:
            reply = await self._replayer.serve(req)
        except sqlite3.DatabaseError as exc:  # the client gets an answer, and may ask again
            _log.warning("replay_failed", error=str(exc), since=req.since)
            reply = p.Error(code=p.ErrorCode.INTERNAL, detail=f"the event log could not be read: {exc}")
        self._control.reply(call, reply)

    def _submit(self, call: Call, req: p.Submit) -> None:
        from actors.rehearsal.scenario import validate_scenario
        checked = submit.check(req, self.cfg, set(ADAPTERS), self._find, self.rehearsals is not None,
                               validate_scenario)
        if isinstance(checked, p.Error):
            _log.info("submit_refused", code=checked.code, detail=checked.detail[:300])
            self._control.reply(call, checked)
            return
        token = secrets.token_hex(8)
        self._calls[token] = (call, (req, checked))
        self._workspace.start(str(checked.target), workspace.check_target, str(checked.target), token)

    def _create(self, msg: p.TargetChecked, pending) -> p.ControlReply:
        req, checked = pending
        if msg.error is not None:
            _log.info("submit_refused", code=p.ErrorCode.BAD_REQUEST, detail=msg.error[:300])
            return p.Error(code=p.ErrorCode.BAD_REQUEST, detail=msg.error)
        sid = "s-" + secrets.token_hex(4)
        self.emit(sid, p.SessionSubmitted(task=req.task, target=str(checked.target), assignments=checked.assignments,
                                          rehearse=req.rehearse, scenario=req.scenario, limits=checked.limits,
                                          base_commit=msg.base_commit, planner=req.planner))
        if checked.moved:
            self.emit(sid, submit.moved_note(checked.moved))
        warnings = []
        if msg.dirty:
            warnings.append(workspace.dirty_warning(msg.base_commit or "", msg.dirty, msg.dirty_more))
            self.emit(sid, p.SessionWarning(message=warnings[-1], files=msg.dirty, more=msg.dirty_more))
        self.emit(sid, p.SessionStateChanged(state="running"))
        _log.info("session_submitted", session=sid, assignments=len(checked.assignments), target=str(checked.target))
        self._advance(self.proj.sessions[sid])
        return p.SubmitReply(session=sid, assignments=[a.name for a in checked.assignments], warnings=warnings)

    def _command(self, s: SessionView, call: Call) -> p.ControlReply | None:
        """Pause, resume, stop, clean: the reply now, or None when it comes later."""
        match call.body:
            case p.Pause() if s.state != "running":
                return _bad_state(f"session {s.id} is {s.state}, not running")
            case p.Pause():
                for w in s.running():
                    self._tell(s, w, p.PauseWorker())
                self.emit(s, p.SessionStateChanged(state="paused", reason="paused by user"))
            case p.Resume() if s.state != "paused":
                return _bad_state(f"session {s.id} is {s.state}, not paused")
            case p.Resume() if s.waiting_for == "answer":
                return _bad_state(f"session {s.id} waits for an answer: orchctl answer {s.id} \"TEXT\"")
            case p.Resume():
                for w in s.running():
                    self._tell(s, w, p.ResumeWorker())
                self.emit(s, p.SessionStateChanged(state="running"))
                self._advance(s)
            case p.Stop() if s.state in p.SESSION_TERMINAL:
                return _bad_state(f"session {s.id} is already {s.state}")
            case p.Stop() if s.stop_reason is not None:
                return _bad_state(f"session {s.id} is already stopping")
            case p.Stop():
                # logged first, so a restarted daemon finishes the stop instead of relaunching
                self._carry_out(s, d.StopAll(reason="stopped by user"))
                self._advance(s)  # "stopped" once every worker has exited (now, if none runs)
            case p.Review() if s.state in p.SESSION_TERMINAL:
                return _bad_state(f"session {s.id} is already {s.state}")
            case p.Review(worker=name) if name is not None and (name not in s.workers
                                                                 or s.workers[name].run_kind != "assignment"):
                return p.Error(code=p.ErrorCode.NOT_FOUND, detail=f"session {s.id} has no assignment {name!r} "
                               f"(assignments: {', '.join(w.spec.name for w in s.assignments())})")
            case p.Review(worker=name) if not any(w.reviewed for w in s.assignments()
                                                  if name is None or w.spec.name == name):
                return _bad_state(f"no reviewer for session {s.id}: reviewers are the session's other agents "
                                  f"(or [review] reviewers / [review] command)")
            case p.Review(worker=name):
                if self.ports.review_ep is None:
                    return _bad_state("the review actor is not running")
                self.ports.out.send_nowait(self.ports.review_ep, wire.pack(p.ReviewNow(session=s.id, worker=name)))
                return p.Ok(detail="review requested")
            case p.Answer() if s.waiting_for != "answer":
                return _bad_state(f"session {s.id} is {s.state} and asks nothing")
            case p.Answer(text=text):
                self.emit(s, p.SessionAnswered(text=text, question=s.question or "", worker=s.question_worker))
                if s.state == "paused":
                    self.emit(s, p.SessionStateChanged(state="running"))
                self._advance(s)
                return p.Ok(detail="answered; resuming")
            case p.Clean() if s.state not in p.SESSION_TERMINAL:
                return _bad_state(f"session {s.id} is {s.state}; stop it first")
            case p.Clean():
                token = secrets.token_hex(8)
                self._calls[token] = (call, None)
                self._workspace.start(s.target, workspace.clean,
                                      *workspace.clean_args(s, self.cfg.worktrees(), token, self.cfg.commit_exclude))
                return None
        return p.Ok()


def _session_named(item) -> str | None:
    """The session a message or a request is about, if any."""
    if isinstance(item, Call):
        return getattr(item.body, "session", None)
    return getattr(item, "session", None)


def _bad_state(detail: str) -> p.Error:
    return p.Error(code=p.ErrorCode.BAD_STATE, detail=detail)
