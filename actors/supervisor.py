"""The supervisor actor: serves the control socket, runs sessions, supervises workers.

Theory of operation
-------------------
The supervisor owns the control ROUTER and its own mailbox.  It keeps a
``Projection`` of every session, built from the event log at start and
then from events: its own (applied as it emits them) and those the
journal forwards (``Committed``) from the workers.  Every decision (launch
the next assignment, end a session, stop on a budget) is taken from that
projection, so a restarted daemon takes the same decisions from the log.

Worker actors run as ``temporary`` children of a runtime ``Supervisor``:
a worker that ends, normally or by a bug, comes back as a ``WorkerEnded``
message; a crash is recorded as a failed run of that generation.

Git work (worktrees, commits, merges) runs in a thread so the control
socket stays responsive.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from pathlib import Path

import msgspec
import zmq
import zmq.asyncio

from actors import doctor, plans, recovery, worktrees
from actors.agents import ADAPTERS
from actors.agents.base import RunSpec
from actors.sessions import Projection, SessionView, WorkerView
from actors.worker import Worker, WorkerSpec, mailbox_endpoint
from orchd import log, metrics, wire
from orchd import protocol as p
from orchd.actor import ChildSpec, Mailbox, Outbox, Supervisor, Waker, drain, sync_view
from orchd.config import Config
from orchd.store import LogReader
from orchd.supervision import Restart

_log = log.get("actors.supervisor")

FOLLOWED_AGENT_KINDS = ("agent.session", "agent.usage", "agent.result", "agent.error")
REPLAY_MAX = 10_000
PLAN_RUN = "_plan"      # the planning run's worker name (plan names cannot start with "_")
PLAN_TREE = plans.PLAN_TREE
PLAN_ATTEMPTS = 2       # an invalid plan is asked for again once, then the default plan is used


class SessionSupervisor:
    def __init__(self, ctx: zmq.asyncio.Context, cfg: Config, log_path: Path,
                 inbox: str, journal: str, rehearsals=None) -> None:
        self.ctx = ctx
        self.cfg = cfg
        self.log_path = log_path
        self.inbox_ep = inbox
        self.journal = journal
        self.rehearsals = rehearsals  # actors.rehearse.Rehearsals or None
        self.proj = Projection()
        self.workers = Supervisor("workers", max_restarts=10**6, period_s=1.0, on_exit=self._child_exited)
        self._out: Outbox | None = None
        self._reader: LogReader | None = None
        self._plan_errors: dict[str, str] = {}

    # ------------------------------------------------------------ lifecycle

    async def run(self, restarts: int = 0) -> None:
        cfg = self.cfg
        self._out = Outbox(self.ctx)
        self._reader = LogReader(self.log_path)
        inbox = Mailbox(self.ctx, self.inbox_ep)
        router = self.ctx.socket(zmq.ROUTER)
        router.linger = 0
        # hard cap: over it libzmq drops the peer without a reply; under it, too_large is answered
        router.maxmsgsize = max(cfg.max_frame_bytes * 4, 64 << 20)
        router.router_mandatory = False
        try:
            router.bind(cfg.control())
            router_raw = sync_view(router)
            self._rebuild()
            await self._reconcile()
            waker = Waker(router_raw, inbox.raw)
            esc = asyncio.ensure_future(self.workers.wait_escalation())
            try:
                while True:
                    await waker.wait(1.0)
                    for raw in drain(inbox.raw):
                        await self._on_message(raw)
                    for frames in self._drain_multipart(router_raw):
                        await self._on_request(router_raw, frames)
                    if esc.done():
                        esc.result()
            finally:
                esc.cancel()
                waker.close()
        finally:
            await self.workers.shutdown()
            router.close(linger=0)
            inbox.close()
            self._out.close()
            self._reader.close()

    @staticmethod
    def _drain_multipart(sock, limit: int = 1000) -> list[list[bytes]]:
        out = []
        while len(out) < limit:
            try:
                out.append(sock.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                break
        return out

    def _rebuild(self) -> None:
        """Rebuild the projection from the log (kinds the supervisor follows only)."""
        seq = 0
        n = 0
        while True:
            rows = self._reader.kinds_since(seq, "agent.", FOLLOWED_AGENT_KINDS, REPLAY_MAX)
            for seq, body in rows:
                self._apply_json(body)
                n += 1
            if len(rows) < REPLAY_MAX:
                break
        _log.info("state_rebuilt", events=n, sessions=len(self.proj.sessions))

    def _apply_json(self, body: bytes) -> None:
        try:
            stamp, ev = wire.decode_event(body)
        except msgspec.DecodeError as exc:
            _log.warning("unreadable_event", error=str(exc), preview=body[:200])
            return
        self.proj.apply(stamp, ev)

    async def _reconcile(self) -> None:
        """After a restart: relaunch what was running, finish what can finish."""
        for s in list(self.proj.sessions.values()):
            if s.state in p.SESSION_TERMINAL:
                continue
            for w in s.workers.values():
                if w.state in ("running", "paused") and s.stop_reason is not None:
                    await self.emit(s.id, p.WorkerExited(state="stopped", reason=f"{s.stop_reason} (orchd restarted)"),
                                    worker=w.spec.name, agent=w.spec.agent, gen=w.gen)
                elif w.state in ("running", "paused"):
                    _log.info("relaunching_after_restart", session=s.id, worker=w.spec.name, gen=w.gen)
                    await self._launch(s, w, resume=True, reason="orchd restarted")
            await self._advance(s)

    # ------------------------------------------------------------ emitting

    async def emit(self, session: str | None, ev: p.Ev, worker: str | None = None,
                   agent: str | None = None, gen: int = 0) -> None:
        ts = time.time()
        self.proj.apply(p.Stamp(seq=0, ts=ts, session=session, worker=worker, agent=agent, gen=gen), ev)
        frame = wire.pending_frame(wire.topic(session), wire.stamp_prefix(session, worker, agent, gen), ts, ev)
        await self._out.send(self.journal, wire.pack(p.Append(frames=[frame])))

    # ------------------------------------------------------------ mailbox

    async def _on_message(self, raw: bytes) -> None:
        try:
            msg = wire.supervisor_inbox.decode(raw)
        except msgspec.DecodeError as exc:
            _log.warning("supervisor_bad_message", error=str(exc))
            return
        match msg:
            case p.Committed(events=bodies):
                touched = set()
                for body in bodies:
                    self._apply_json(body)
                    touched.add(_session_of(body))
                for sid in touched:
                    s = self.proj.sessions.get(sid)
                    if s is not None:
                        await self._advance(s)
            case p.WorkerEnded():
                await self._worker_ended(msg)

    def _child_exited(self, name: str, crashed: bool) -> None:
        """A worker task ended for good: tell ourselves, as a mailbox message (it wakes the loop)."""
        session, worker, gen = name.split("/")
        msg = p.WorkerEnded(session=session, worker=worker, gen=int(gen), crashed=crashed)
        self._out.send_nowait(self.inbox_ep, wire.pack(msg))

    async def _worker_ended(self, msg: p.WorkerEnded) -> None:
        s = self.proj.sessions.get(msg.session)
        if s is None:
            return
        w = s.workers.get(msg.worker)
        if w is None or w.gen != msg.gen:
            return
        self._out.drop(mailbox_endpoint(msg.session, msg.worker, msg.gen))
        if msg.crashed and w.state not in p.WORKER_TERMINAL:
            await self.emit(s.id, p.WorkerExited(state="failed", reason="worker actor crashed (see the daemon log)"),
                            worker=w.spec.name, agent=w.spec.agent, gen=w.gen)
            await self._advance(s)

    # ------------------------------------------------------------ session logic

    async def _advance(self, s: SessionView) -> None:
        """Take every decision the session's state allows now."""
        if s.state in p.SESSION_TERMINAL:
            return
        await self._check_budget(s)
        if s.state in p.SESSION_TERMINAL:
            return
        if not s.planned:
            await self._plan_step(s)
        if s.state == "running" and s.stop_reason is None:
            await self._recover(s)
        if s.state == "running":
            for name in s.ready():
                await self._launch(s, s.workers[name], resume=False)
        outcome = s.outcome()
        if outcome is None:
            return
        state, reason = outcome
        if state == "done" and s.base_commit:
            state, reason = await self._merge(s)
        await self.emit(s.id, p.SessionStateChanged(state=state, reason=reason))
        if s.rehearse and self.rehearsals is not None:
            # its scripted model server has nobody left to serve (stop joins its threads: off the loop)
            await asyncio.to_thread(self.rehearsals.stop, s.id)
        self._update_gauges()

    async def _plan_step(self, s: SessionView) -> None:
        """Planner mode: run the planner, take its plan, ask again once, else the default plan."""
        w = s.workers[PLAN_RUN]
        if s.state != "running" or w.state in ("running", "paused"):
            return
        if w.state == "pending" and w.gen < 0:
            await self._launch(s, w, resume=False)
            return
        error = None
        if w.state == "done":
            try:
                assignments = plans.plan_from_answer(w.result_text, set(ADAPTERS) - {"command"})
            except plans.PlanError as exc:
                error = str(exc)
            else:
                assignments, moved = self._preflight(assignments)
                if isinstance(assignments, p.Error):
                    error = assignments.detail
                else:
                    await self._planned(s, assignments, "planner", None, moved)
                    return
        else:
            error = f"the planning run ended {w.state}: {w.reason}"
        self._plan_errors[s.id] = error
        if w.gen + 1 < PLAN_ATTEMPTS:
            await self.emit(s.id, p.SessionNote(message=f"asking the planner again: {error}"))
            await self._launch(s, w, resume=False)
            return
        assignments = plans.validate(plans.default_plan([r.model_dump() for r in self.cfg.roles], None),
                                     set(ADAPTERS))
        assignments, moved = self._preflight(assignments)
        if isinstance(assignments, p.Error):
            await self.emit(s.id, p.SessionStateChanged(state="failed", reason=assignments.detail))
            return
        await self._planned(s, assignments, "default",
                            f"planner gave no valid plan ({error}); using the default plan", moved)

    async def _planned(self, s: SessionView, assignments, source: str, note: str | None, moved) -> None:
        await self.emit(s.id, p.SessionPlanned(assignments=assignments, source=source, note=note))
        if moved:
            await self._note_moved(s.id, moved)

    async def _recover(self, s: SessionView) -> None:
        """Relaunch failed runs whose failure a relaunch can fix (policy: actors/recovery.py)."""
        limits = self._limits(s)
        for w in s.assignments():
            if w.state != "failed":
                continue
            d = recovery.decide(w.failure, w.spec.agent, w.relaunches, limits.max_relaunches,
                                bool(w.agent_session_id), limits.backoff_cap_s)
            if d is not None:
                _log.info("relaunching_after_failure", session=s.id, worker=w.spec.name, reason=d.reason,
                          delay_s=d.delay_s)
                await self._launch(s, w, resume=d.resume, reason=d.reason, delay_s=d.delay_s, env=d.env)

    async def _check_budget(self, s: SessionView) -> None:
        limits = self._limits(s)
        tokens, cost = s.tokens()
        over = None
        if limits.max_tokens is not None and tokens > limits.max_tokens:
            over = ("tokens", f"session used {tokens} tokens, budget {limits.max_tokens}")
        elif limits.max_cost_usd is not None and cost is not None and cost > limits.max_cost_usd:
            over = ("cost", f"session cost ${cost:.4f}, budget ${limits.max_cost_usd:.4f}")
        if over is None or s.stop_reason is not None:
            return
        await self.emit(s.id, p.SessionNote(message=f"budget exceeded: {over[1]}",
                                            data={"stop_requested": f"budget exceeded: {over[1]}",
                                                  "end_state": "failed"}))
        for w in s.running():
            await self.emit(s.id, p.WorkerLimit(limit=over[0], detail=over[1]),
                            worker=w.spec.name, agent=w.spec.agent, gen=w.gen)
            await self._tell(s, w, p.StopWorker(reason=f"limit {over[0]}: {over[1]}", state="failed"))

    def _limits(self, s: SessionView):
        return self.cfg.limits.model_copy(update=s.limits) if s.limits else self.cfg.limits

    async def _merge(self, s: SessionView) -> tuple[str, str | None]:
        names = [w.spec.name for w in s.assignments()]
        trees = [Path(w.worktree) for w in s.assignments() if w.worktree]

        def commit_and_merge():
            for tree in trees:
                worktrees.commit_all(tree, f"orchd: {tree.name}")
            return worktrees.merge_session(Path(s.target), self.cfg.worktrees(), s.id, names, s.base_commit)
        try:
            res = await asyncio.to_thread(commit_and_merge)
        except worktrees.GitError as exc:
            return "escalated", f"merge failed: {exc}"
        if not res.ok:
            await self.emit(s.id, p.SessionNote(message="merge conflict; branches kept",
                                                data={"conflicts": list(res.conflicts)}))
            return "escalated", "merge conflict in: " + ", ".join(res.conflicts)
        await self.emit(s.id, p.SessionNote(message=f"merged into {res.branch}",
                                            data={"branch": res.branch, "commit": res.commit}))
        return "done", None

    async def _launch(self, s: SessionView, w: WorkerView, resume: bool, reason: str | None = None,
                      delay_s: float = 0.0, env: dict[str, str] | None = None) -> None:
        a = w.spec
        gen = w.gen + 1
        limits = self._limits(s)
        cfg = self.cfg
        acfg = cfg.agent(a.agent)
        run_dir = cfg.state_dir / "runs" / s.id / a.name / str(gen)
        tmpdir = run_dir / "tmp"
        tmpdir.mkdir(parents=True, exist_ok=True)
        cwd, branch = s.target, None
        if s.base_commit:
            try:
                cwd, branch = await asyncio.to_thread(self._prepare_worktree, s, w)
            except worktrees.GitError as exc:
                await self.emit(s.id, p.WorkerLaunching(resume=False), worker=a.name, agent=a.agent, gen=gen)
                await self.emit(s.id, p.WorkerExited(state="failed", reason=f"worktree: {exc}"),
                                worker=a.name, agent=a.agent, gen=gen)
                return
        home = acfg.home
        extra_env: dict[str, str] = {}
        if s.rehearse and a.agent != "command":
            home = home or str(cfg.state_dir / "homes" / s.id / a.name)
            extra_env = self.rehearsals.env_for(s.id, s.scenario, a.agent, Path(home),
                                                Path(home) / ".codex")
        if home:
            Path(home).mkdir(parents=True, exist_ok=True)
        extra_env.update(env or {})
        resume_id = None
        if resume and a.agent != "command" and w.agent_session_id:
            resume_id = "latest" if a.agent == "gemini" else w.agent_session_id
        before = [(s.workers[d].spec, s.workers[d].result_text, s.workers[d].branch) for d in a.after]
        if a.name == PLAN_RUN:
            prompt = plans.planner_prompt(s.task, sorted(n for n in ADAPTERS if n != "command"),
                                          self._plan_errors.get(s.id))
        elif a.agent == "command":
            prompt = a.prompt
        else:
            prompt = plans.prompt_for(s.task, a, before)
        if resume_id:
            lead = ("orchd restarted while you were working." if reason in (None, "orchd restarted")
                    else f"Your previous run stopped ({reason}).")
            prompt = f"{lead} Continue your assignment where you left off.\n" \
                     f"orchd-assignment: {a.name}\n\n" + plans.MARKER_PROTOCOL
        binary = acfg.binary
        if a.agent != "command":
            binary = doctor.find_binary(a.agent, acfg.binary) or acfg.binary
            if binary:  # codex and gemini are node scripts whose helpers live beside them
                extra_env["PATH"] = os.pathsep.join([os.path.dirname(binary), os.environ.get("PATH", os.defpath)])
        run = RunSpec(prompt=prompt, cwd=str(cwd), profile=a.profile or acfg.profile, binary=binary,
                      model=acfg.model, max_turns=limits.max_turns, resume_id=resume_id, home=home,
                      config_dir=(str(Path(home) / ".codex") if home and a.agent == "codex" else None),
                      tmpdir=str(tmpdir), allow_unconfined=cfg.allow_unconfined,
                      argv=a.argv, env=a.env)
        spec = WorkerSpec(session=s.id, name=a.name, agent=a.agent, gen=gen, run=run,
                          wall_time_s=limits.wall_time_s, stall_s=limits.stall_s,
                          max_line_bytes=cfg.max_line_bytes, stop_grace_s=cfg.stop_grace_s,
                          state_dir=str(cfg.state_dir), allow_unconfined=cfg.allow_unconfined,
                          extra_env=extra_env, start_delay_s=delay_s)
        await self.emit(s.id, p.WorkerLaunching(resume=bool(resume_id), worktree=str(cwd) if branch else None,
                                                branch=branch, reason=reason, delay_s=delay_s),
                        worker=a.name, agent=a.agent, gen=gen)
        worker = Worker(self.ctx, spec, self.journal)
        self.workers.start_child(ChildSpec(name=f"{s.id}/{a.name}/{gen}", start=worker.run,
                                           restart=Restart.TEMPORARY, shutdown_s=cfg.stop_grace_s + 5))

    def _prepare_worktree(self, s: SessionView, w: WorkerView) -> tuple[Path, str]:
        root = self.cfg.worktrees()
        deps = [s.workers[d] for d in w.spec.after]
        commits = [worktrees.commit_all(Path(d.worktree), f"orchd: {d.spec.name}") for d in deps if d.worktree]
        if not commits:
            base = s.base_commit
        else:
            base = worktrees.merged_base(Path(s.target), root, s.id, w.spec.name, commits)
        # the planning run's worker name cannot be a branch name; its worktree gets a reserved one
        label = PLAN_TREE if w.spec.name == PLAN_RUN else w.spec.name
        return worktrees.create_worktree(Path(s.target), root, s.id, label, base)

    async def _tell(self, s: SessionView, w: WorkerView, msg: p.Msg) -> None:
        await self._out.send(mailbox_endpoint(s.id, w.spec.name, w.gen), wire.pack(msg))

    def _update_gauges(self) -> None:
        counts: dict[str, int] = {}
        for s in self.proj.sessions.values():
            counts[s.state] = counts.get(s.state, 0) + 1
        for state in ("queued", "running", "paused", "done", "failed", "stopped", "escalated"):
            metrics.sessions.labels(state).set(counts.get(state, 0))

    # ------------------------------------------------------------ control socket

    async def _on_request(self, router, frames: list[bytes]) -> None:
        ident = frames[0]
        rest = frames[1:]
        delim: list[bytes] = []
        if len(rest) == 2 and rest[0] == b"":  # a REQ client: keep its envelope delimiter
            delim, rest = [b""], rest[1:]
        if len(rest) != 1:
            await self._reject(router, ident, delim, p.ErrorCode.BAD_FRAMES,
                               f"expected one frame per request, got {len(rest)}", "")
            return
        try:
            req = wire.decode_request(rest[0], self.cfg.max_frame_bytes)
        except wire.WireError as exc:
            await self._reject(router, ident, delim, exc.code, exc.detail, exc.request_id)
            return
        kind = req.body.__struct_config__.tag
        metrics.requests.labels(kind).inc()
        try:
            reply = await self._serve(req.body)
        except plans.PlanError as exc:
            reply = p.Error(code=p.ErrorCode.BAD_REQUEST, detail=str(exc))
        router.send_multipart([ident, *delim, wire.encode_reply(reply, req.id)])

    async def _reject(self, router, ident, delim, code, detail, request_id) -> None:
        metrics.bad_requests.labels(code).inc()
        _log.warning("bad_request", code=code, detail=detail[:200])
        router.send_multipart([ident, *delim, wire.encode_reply(p.Error(code=code, detail=detail), request_id)])

    async def _serve(self, req: p.ControlRequest) -> p.ControlReply:
        match req:
            case p.Ping():
                return p.Pong(version=p.VERSION, pid=os.getpid(), last_seq=self._reader.last_seq())
            case p.Submit():
                return await self._submit(req)
            case p.Status(session=sid):
                if sid is None:
                    return p.StatusReply(sessions=[s.info() for s in self.proj.sessions.values()])
                s = self.proj.sessions.get(sid)
                if s is None:
                    return _not_found(sid)
                return p.StatusReply(sessions=[s.info()])
            case p.Pause(session=sid) | p.Resume(session=sid) | p.Stop(session=sid) | p.Clean(session=sid):
                s = self.proj.sessions.get(sid)
                if s is None:
                    return _not_found(sid)
                return await self._command(s, req)
            case p.Review(session=sid) | p.Answer(session=sid):
                s = self.proj.sessions.get(sid)
                if s is None:
                    return _not_found(sid)
                return p.Error(code=p.ErrorCode.BAD_STATE,
                               detail="reviews are not available in this version of orchd (no review actor yet)")
            case p.Replay(since=since, session=sid, limit=limit):
                limit = max(1, min(limit, REPLAY_MAX))
                rows = self._reader.since(since, sid, limit)
                last = rows[-1][0] if rows else since
                return p.ReplayReply(events=[msgspec.Raw(body) for _, body in rows], last_seq=last,
                                     more=len(rows) == limit)
            case p.Sync(token=token):
                await self._out.send(self.journal, wire.pack(p.PublishSync(token=token[:200])))
                return p.Ok()
        return p.Error(code=p.ErrorCode.INTERNAL, detail="unhandled request")  # pragma: no cover

    async def _submit(self, req: p.Submit) -> p.ControlReply:
        target = Path(req.target).expanduser()
        if not target.is_absolute():
            return p.Error(code=p.ErrorCode.BAD_REQUEST, detail=f"target must be an absolute path, got {req.target!r}")
        if not target.is_dir():
            return p.Error(code=p.ErrorCode.BAD_REQUEST, detail=f"target {target} is not a directory")
        known = set(ADAPTERS)
        if req.planner is not None:
            if req.planner not in known or req.planner == "command":
                return p.Error(code=p.ErrorCode.BAD_REQUEST, detail=f"unknown planner agent {req.planner!r}")
            if req.plan is not None:
                return p.Error(code=p.ErrorCode.BAD_REQUEST, detail="give either --plan or --planner, not both")
            assignments = [p.AssignmentSpec(name=PLAN_RUN, agent=req.planner, role="planner", weight=0.0,
                                            profile="readonly")]
        elif req.plan is not None:
            assignments = plans.load_plan(req.plan, known)
        else:
            if not req.task.strip():
                return p.Error(code=p.ErrorCode.BAD_REQUEST, detail="give a task text or a --plan file")
            assignments = plans.validate(
                plans.default_plan([r.model_dump() for r in self.cfg.roles], req.agents), known)
        limits = req.limits or {}
        try:
            type(self.cfg.limits).model_validate({**self.cfg.limits.model_dump(), **limits})
        except ValueError as exc:
            return p.Error(code=p.ErrorCode.BAD_REQUEST, detail=f"invalid limits: {exc}")
        assignments, moved = self._preflight(assignments)
        if isinstance(assignments, p.Error):
            return assignments
        try:
            base = await asyncio.to_thread(worktrees.head_commit, target)
        except worktrees.GitError as exc:
            return p.Error(code=p.ErrorCode.BAD_REQUEST, detail=str(exc))
        if req.rehearse and self.rehearsals is None:
            return p.Error(code=p.ErrorCode.BAD_STATE, detail="rehearsals are not available")
        sid = "s-" + secrets.token_hex(4)
        await self.emit(sid, p.SessionSubmitted(task=req.task, target=str(target), assignments=assignments,
                                                rehearse=req.rehearse, scenario=req.scenario, limits=limits,
                                                base_commit=base, planner=req.planner))
        if moved:
            await self._note_moved(sid, moved)
        await self.emit(sid, p.SessionStateChanged(state="running"))
        _log.info("session_submitted", session=sid, assignments=len(assignments), target=str(target))
        await self._advance(self.proj.sessions[sid])
        return p.SubmitReply(session=sid, assignments=[a.name for a in assignments])

    async def _note_moved(self, sid: str, moved: dict[str, tuple[str, str, str]]) -> None:
        await self.emit(sid, p.SessionNote(
            message="reassigned: " + "; ".join(f"{n} from {f} to {t} ({why})" for n, (f, t, why) in moved.items()),
            data={"reassigned": {n: {"from": f, "to": t, "why": why} for n, (f, t, why) in moved.items()}}))

    def _preflight(self, assignments: list[p.AssignmentSpec]):
        """Move assignments whose agent CLI is missing to the next available agent.

        The order is ``agent_preference`` from the config.  Returns the
        assignments and ``{name: (from, to, why)}``, or an Error when no
        agent CLI can take them.
        """
        cache: dict[str, str | None] = {}

        def missing(agent: str) -> str | None:
            if agent == "command":
                return None
            if agent not in cache:
                found = doctor.find_binary(agent, self.cfg.agent(agent).binary)
                cache[agent] = None if found else f"{agent} CLI not found"
            return cache[agent]

        moved: dict[str, tuple[str, str, str]] = {}
        out = []
        for a in assignments:
            why = missing(a.agent)
            if why is None:
                out.append(a)
                continue
            to = next((c for c in self.cfg.agent_preference if c != a.agent and missing(c) is None), None)
            if to is None:
                return p.Error(code=p.ErrorCode.BAD_REQUEST,
                               detail=f"assignment {a.name!r}: {why}, and no other agent CLI is available "
                                      f"(preference: {', '.join(self.cfg.agent_preference)}); see 'orchd doctor'"), {}
            moved[a.name] = (a.agent, to, why)
            out.append(msgspec.structs.replace(a, agent=to))
        return out, moved

    async def _command(self, s: SessionView, req: p.ControlRequest) -> p.ControlReply:
        match req:
            case p.Pause():
                if s.state != "running":
                    return p.Error(code=p.ErrorCode.BAD_STATE, detail=f"session {s.id} is {s.state}, not running")
                for w in s.running():
                    await self._tell(s, w, p.PauseWorker())
                await self.emit(s.id, p.SessionStateChanged(state="paused", reason="paused by user"))
            case p.Resume():
                if s.state != "paused":
                    return p.Error(code=p.ErrorCode.BAD_STATE, detail=f"session {s.id} is {s.state}, not paused")
                for w in s.running():
                    await self._tell(s, w, p.ResumeWorker())
                await self.emit(s.id, p.SessionStateChanged(state="running"))
                await self._advance(s)
            case p.Stop():
                if s.state in p.SESSION_TERMINAL:
                    return p.Error(code=p.ErrorCode.BAD_STATE, detail=f"session {s.id} is already {s.state}")
                if s.stop_reason is not None:
                    return p.Error(code=p.ErrorCode.BAD_STATE, detail=f"session {s.id} is already stopping")
                # logged first, so a restarted daemon finishes the stop instead of relaunching
                await self.emit(s.id, p.SessionNote(message="stop requested by user",
                                                    data={"stop_requested": "stopped by user"}))
                for w in s.running():
                    await self._tell(s, w, p.StopWorker(reason="stopped by user"))
                # session.state "stopped" once every worker has exited (now, if none runs)
                await self._advance(s)
            case p.Clean():
                if s.state not in p.SESSION_TERMINAL:
                    return p.Error(code=p.ErrorCode.BAD_STATE, detail=f"session {s.id} is {s.state}; stop it first")
                removed = await asyncio.to_thread(worktrees.clean, Path(s.target), self.cfg.worktrees(), s.id)
                await self.emit(s.id, p.SessionNote(message=f"removed {len(removed)} worktree(s)"))
                return p.Ok(detail=f"removed {len(removed)} worktree(s)")
        return p.Ok()


def _not_found(sid: str) -> p.Error:
    return p.Error(code=p.ErrorCode.NOT_FOUND, detail=f"no session {sid!r}")


def _session_of(body: bytes) -> str | None:
    try:
        return wire.decode_event(body)[0].session
    except msgspec.DecodeError:
        return None
