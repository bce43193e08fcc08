"""Carrying out a session's decisions (the supervisor's hands; mixed into ``SessionSupervisor``).

``actors.decide`` says what to do; these methods do it: launch an
assignment (its worktree first, in a workspace thread; then the worker
actor), take a plan, merge, end a session.  They run on the supervisor's
loop, one message at a time, and only emit events, tell actors and start
workspace jobs: nothing here waits.  The state they read and change is
the supervisor's (``proj``, ``_launches``, ``_plan_errors``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path

import msgspec

from actors import decide as d
from actors import launch, preflight, submit, workspace
from actors.agents import ADAPTERS
from actors.doctor import find_binary
from actors.recovering import HOST_LOST, fresh_start_files
from actors.sessions import SessionView, WorkerView
from actors.worker import Worker, WorkerSpec, mailbox_endpoint
from orchd import metrics
from orchd import protocol as p
from orchd.actor import ChildSpec
from orchd.supervision import Restart

AGENTS = sorted(n for n in ADAPTERS if n != "command")


class Conduct:
    def _advance_all(self) -> None:
        for s in list(self.proj.sessions.values()):
            self._advance(s)

    def _advance(self, s: SessionView | None) -> None:
        if s is None or s.state in p.SESSION_TERMINAL:
            return
        self._guarded(s, self._advance_unguarded, s)

    def _advance_unguarded(self, s: SessionView) -> None:
        limits = d.effective_limits(self.cfg.limits, s.limits)
        for _ in range(100):  # each round's events change the view; stop when nothing is left to do
            commands = d.decide(s, limits, time.time(), self.log_error is None, frozenset(ADAPTERS) - {"command"})
            if not commands:
                return
            for cmd in commands:
                self._carry_out(s, cmd)
            if s.state in p.SESSION_TERMINAL:
                return
        raise RuntimeError("decide() did not settle after 100 rounds")

    def _carry_out(self, s: SessionView, cmd: d.Command) -> None:
        match cmd:
            case d.Launch(worker=name):
                self._launch(s, s.workers[name], cmd)
            case d.StopAll(reason=reason, end_state=end_state, limit=limit):
                self.emit(s, p.SessionStopRequested(reason=reason, end_state=end_state))
                for w in s.running():
                    if limit:
                        self.emit(s, p.WorkerLimit(limit=limit, detail=reason), w)
                    self._tell(s, w, p.StopWorker(reason=f"limit {limit}: {reason}" if limit else reason,
                                                  state="stopped" if end_state == "escalated" else end_state))
            case d.AskHuman(question=question, worker=name, source=source, review_id=rid):
                self.emit(s, p.SessionQuestion(question=question, worker=name, source=source, review_id=rid))
                if s.state == "running":
                    self.emit(s, p.SessionStateChanged(state="paused", reason="waiting for an answer"))
                w = s.workers.get(name or "")
                if w is not None and w.state in ("running", "paused"):
                    # stopped now and resumed with its CLI's resume flag after the answer (a CLI left
                    # SIGSTOPped for hours would lose its API stream)
                    if w.state == "paused":
                        self._tell(s, w, p.ResumeWorker())
                    self._tell(s, w, p.StopWorker(reason="paused for an answer", state="stopped"))
            case d.TakePlan(assignments=assignments):
                self._planned(s, assignments, "planner", None)
            case d.AskPlannerAgain(error=error):
                self._plan_errors[s.id] = error
                self.emit(s, p.SessionNote(message=f"asking the planner again: {error}"))
                planner = next(w for w in s.workers.values() if w.run_kind == "planner")
                self._launch(s, planner, d.Launch(worker=planner.spec.name))
            case d.UseDefaultPlan(error=error):
                from actors import plans
                default = plans.validate(plans.default_plan([r.model_dump() for r in self.cfg.roles], None),
                                         set(ADAPTERS))
                self._planned(s, default, "default", f"planner gave no valid plan ({error}); using the default plan")
            case d.Merge():
                s.merging = True
                self._workspace.start(s.target, workspace.merge,
                                      *workspace.merge_args(s, self.cfg.worktrees(), self.cfg.commit_exclude))
            case d.End(state=state, reason=reason):
                self.emit(s, p.SessionStateChanged(state=state, reason=reason))
                self._end_rehearsal(s)

    def _planned(self, s: SessionView, assignments: list[p.AssignmentSpec], source: str, note: str | None) -> None:
        moved = submit.preflight(assignments, self.cfg.agent_preference, self._find)
        if isinstance(moved, p.Error):
            self.emit(s, p.SessionStateChanged(state="failed", reason=moved.detail))
            return
        assignments = [msgspec.structs.replace(a, agent=moved[a.name][1]) if a.name in moved else a
                       for a in assignments]
        self.emit(s, p.SessionPlanned(assignments=assignments, source=source, note=note))
        if moved:
            self.emit(s, submit.moved_note(moved))

    def _launch_reviewer(self, s: SessionView, msg: p.LaunchReviewer) -> None:
        """A review actor's reviewer run: a worker of the session (limits, costs and rehearsal apply)."""
        if s.state in p.SESSION_TERMINAL or s.stop_reason is not None:
            return  # the review actor counts the missing answer when the review is stopped
        spec = p.AssignmentSpec(name=msg.name, agent=msg.agent, role="reviewer", prompt=msg.prompt, weight=0.0,
                                profile="readonly", run_kind="reviewer",
                                argv=list(self.cfg.review.command) if msg.agent == "command" and self.cfg.review.command
                                else None, env={"ORCHD_REVIEWER": msg.name} if msg.agent == "command" else None)
        self.emit(s, p.ReviewRun(review_id=msg.review_id, spec=spec, cwd=msg.cwd, attempt=msg.attempt))
        w = s.workers[msg.name]
        self._start_worker(s, w, d.Launch(worker=msg.name, reason=f"review {msg.review_id}"), msg.cwd, None)

    def _launch(self, s: SessionView, w: WorkerView, cmd: d.Launch) -> None:
        if w.run_kind == "reviewer":
            return  # reviewer runs are started by the review actor only (never relaunched)
        if not s.base_commit:
            self._start_worker(s, w, cmd, s.target, None)
            return
        w.preparing = True
        self._launches[(s.id, w.spec.name)] = cmd
        label = launch_label(w)
        self._workspace.start(s.target, workspace.prepare,
                              *workspace.prepare_args(s, w, self.cfg.worktrees(), label, self.cfg.commit_exclude,
                                                      changes=cmd.summary is not None))

    def _worktree_ready(self, s: SessionView, msg: p.WorktreeReady) -> None:
        self._committed(s, msg.commits)
        w = s.workers[msg.worker]
        cmd = self._launches.pop((s.id, w.spec.name), None)
        w.preparing = False
        if cmd is None or msg.gen != w.gen + 1:
            return
        if s.state in p.SESSION_TERMINAL or s.stop_reason is not None:
            self._advance(s)  # stopped while its worktree was made: it never starts
        elif msg.error is not None:
            self.emit(s, p.WorkerLaunching(resume=False), w, gen=msg.gen)
            self.emit(s, p.WorkerExited(state="failed", reason=msg.error), w)
            self._advance(s)
        else:
            if cmd.summary is not None and msg.changed:
                cmd = dataclasses.replace(cmd, summary=f"{cmd.summary}\n{fresh_start_files(msg.changed)}")
            self._start_worker(s, w, cmd, msg.cwd, msg.branch)

    def _start_worker(self, s: SessionView, w: WorkerView, cmd: d.Launch, cwd: str, branch: str | None) -> None:
        a, cfg = w.spec, self.cfg
        acfg = cfg.agent(a.agent)
        gen = w.gen + 1
        _, tmpdir = launch.run_dirs(cfg, s.id, a.name, gen)
        tmpdir.mkdir(parents=True, exist_ok=True)
        home, renv = acfg.home, {}
        if s.rehearse and a.agent != "command":
            home = home or str(launch.rehearsal_home(cfg, s.id, a.name))
            renv = self.rehearsals.env_for(s.id, s.scenario, a.agent, Path(home), Path(home) / ".codex")
        if home:
            Path(home).mkdir(parents=True, exist_ok=True)
        binary = self._find(a.agent) or acfg.binary if a.agent != "command" else acfg.binary
        schema = schema_file = None
        if w.run_kind == "reviewer":
            from actors import verdicts
            schema = verdicts.schema_json()
            schema_file = tmpdir / "review-answer.schema.json"
            schema_file.write_text(schema)
        found = launch.Found(cwd=cwd, branch=branch, binary=binary, home=home, rehearsal_env=renv,
                             plan_error=self._plan_errors.get(s.id), output_schema=schema,
                             output_schema_file=str(schema_file) if schema_file else None)
        spec, ev = launch.recipe(cfg, d.effective_limits(cfg.limits, s.limits), s, w, cmd, found, AGENTS,
                                 start_paused=s.state == "paused" and w.run_kind != "reviewer")
        if cmd.summary and not spec.run.resume_id:  # a fresh start after a resume failed: what came before
            spec = msgspec.structs.replace(spec, run=msgspec.structs.replace(
                spec.run, prompt=f"{spec.run.prompt}\n\n{cmd.summary}"))
        host = self._place(s, w, branch, gen)
        if host is not None:
            ev = msgspec.structs.replace(ev, host=host)
        self.emit(s, ev, w, gen=gen)
        # a run placed on an agent host is checked there (the host's doctor and its CLIs), not here
        if host is None and self._preflight_blocks(s, w, spec):
            return
        if host is not None:
            from actors.hostlink import RemoteWorker
            worker = RemoteWorker(self.ctx, spec, self.ports.journal_ep, self.ports.inbox_ep, self.ports.hosts, host,
                                  cwd, branch, list(cfg.commit_exclude))
        else:
            worker = Worker(self.ctx, spec, self.ports.journal_ep)
        self.ports.workers.start_child(ChildSpec(name=f"{s.id}/{a.name}/{gen}", start=worker.run,
                                                 restart=Restart.TEMPORARY, shutdown_s=cfg.stop_grace_s + 5))

    def _place(self, s: SessionView, w: WorkerView, branch: str | None, gen: int) -> str | None:
        """The agent host this run goes to, or None (here): ``actors.placement`` decides."""
        link = self.ports.hosts
        if link is None:
            return None
        local_busy = len(self.ports.workers.running()) - link.remote_count()
        return link.place(w.spec.agent, w.run_kind == "assignment" and branch is not None, local_busy,
                          f"{s.id}/{w.spec.name}/{gen}")

    def _preflight_blocks(self, s: SessionView, w: WorkerView, spec: WorkerSpec) -> bool:
        """Record what preflight found; a blocking finding fails the run before it starts."""
        findings = preflight.before_launch(spec, s.rehearse)
        if findings:
            self.emit(s, p.WorkerPreflight(findings=findings), w)
        stop = preflight.blocking(findings)
        if stop is None:
            return False
        message = preflight.failure_message(stop)
        self.emit(s, p.WorkerFailure(code=stop.code, message=message, action="escalate"), w)
        self.emit(s, p.WorkerExited(state="failed", reason=message), w)
        self._advance(s)
        return True

    def _host_lost(self, s: SessionView, msg: p.HostLost) -> None:
        """A run's agent host went silent: the run failed with it (``host_lost``), and the recovery
        actor decides what follows like for any failed run: a relaunch, placed anew, from the
        assignment's branch as the daemon has it (what the lost run did is lost with it), within
        ``max_relaunches`` per ``window_s`` like every relaunch, so a host that keeps dropping
        escalates the session instead of relaunching it forever."""
        w = s.workers.get(msg.worker)
        if w is None or w.gen != msg.gen or w.state in p.WORKER_TERMINAL:
            return
        if s.state in p.SESSION_TERMINAL or s.stop_reason is not None:
            self.emit(s, p.SessionNote(message=f"{msg.reason}; {w.spec.name} stops with it"), w)
            self.emit(s, p.WorkerExited(state="stopped", reason=msg.reason), w)
            self._advance(s)
            return
        self.emit(s, p.SessionNote(message=f"{msg.reason}; {w.spec.name}'s run failed with it"), w)
        # fresh: the agent's own session (what a resume would continue) is kept on the lost host's disk
        self.emit(s, p.WorkerFailure(code=HOST_LOST, message=msg.reason, action="relaunch",
                                     remedy=p.Fix(fresh=True), source=f"agent host {msg.host}"), w)
        self.emit(s, p.WorkerExited(state="failed", reason=f"{HOST_LOST}: {msg.reason}"), w)
        self._advance(s)

    def _find(self, agent: str) -> str | None:
        return find_binary(agent, self.cfg.agent(agent).binary)

    def _worker_ended(self, s: SessionView, msg: p.WorkerEnded) -> None:
        w = s.workers.get(msg.worker)
        if w is None or w.gen != msg.gen:
            return
        self.ports.out.drop(mailbox_endpoint(msg.session, msg.worker, msg.gen))
        if msg.crashed and w.state not in p.WORKER_TERMINAL:
            self.emit(s, p.WorkerExited(state="failed", reason="worker actor crashed (see the daemon log)"), w)
        self._advance(s)

    def _committed(self, s: SessionView, commits: list[p.CommitMade]) -> None:
        """One ``worker.committed`` per commit a workspace job made (or that left files out, once)."""
        for c in commits:
            w = s.workers.get(c.worker)
            if w is not None and (c.made or (c.left_out and c.commit != w.committed)):
                self.emit(s, p.WorkerCommitted(branch=c.branch, commit=c.commit, made=c.made, left_out=c.left_out,
                                               left_out_more=c.left_out_more), w)

    def _merged(self, s: SessionView, msg: p.MergeFinished) -> None:
        s.merging = False
        self._committed(s, msg.commits)
        if msg.error is not None:
            state, reason = "escalated", msg.error
        elif not msg.ok:
            self.emit(s, p.SessionNote(message="merge conflict; branches kept", data={"conflicts": msg.conflicts}))
            state, reason = "escalated", "merge conflict in: " + ", ".join(msg.conflicts)
        else:
            self.emit(s, p.SessionMerged(branch=msg.branch, commit=msg.commit))
            self.emit(s, p.SessionNote(message=f"merged into {msg.branch}"))
            self._advance(s)
            return
        self.emit(s, p.SessionStateChanged(state=state, reason=reason))
        self._end_rehearsal(s)

    def _end_rehearsal(self, s: SessionView) -> None:
        self._update_gauges()
        if s.rehearse and self.rehearsals is not None:
            # its scripted model server has nobody left to serve (stopping joins threads: off the loop)
            asyncio.get_running_loop().run_in_executor(None, self.rehearsals.stop, s.id)

    def _update_gauges(self) -> None:
        counts: dict[str, int] = {}
        for v in self.proj.sessions.values():
            counts[v.state] = counts.get(v.state, 0) + 1
        for state in ("queued", "running", "paused", "done", "failed", "stopped", "escalated"):
            metrics.sessions.labels(state).set(counts.get(state, 0))


def launch_label(w: WorkerView) -> str:
    """The worktree/branch label: the planning run's name is not a branch name, so it gets a reserved one."""
    from actors.plans import PLAN_TREE
    return PLAN_TREE if w.run_kind == "planner" else w.spec.name


