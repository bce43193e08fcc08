"""The worker actor in-process, on real inproc ZeroMQ sockets and real agent processes.

The test plays the journal (a PULL mailbox the worker's events arrive on)
and the supervisor (a PUSH to the worker's mailbox); the agent is
``tests/fakeagent.py``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import msgspec
import zmq
import zmq.asyncio

from actors.agents.base import RunSpec
from actors.worker import Worker, WorkerSpec, mailbox_endpoint
from orchd import protocol as p
from orchd import wire
from orchd.actor import Mailbox
from tests.conftest import fake, wait_for
from tests.helpers import gone

JOURNAL = "inproc://test-journal"



def killed(pid: int) -> bool:
    """The process dies soon (a SIGKILL is delivered asynchronously)."""
    return bool(wait_for(lambda: gone(pid), 5, f"process {pid} to die"))


def read_pid(path: Path) -> int:
    return int(path.read_text())


class Rig:
    """One worker, its journal and its supervisor's end of the mailbox."""

    def __init__(self, tmp: Path, ops: list[str], **spec) -> None:
        self.ctx = zmq.asyncio.Context()
        self.journal = Mailbox(self.ctx, JOURNAL)
        self.spec = WorkerSpec(session="s1", name="w", agent="command", gen=1,
                               run=RunSpec(prompt="", cwd=str(tmp), argv=fake(*ops)), state_dir=str(tmp), **spec)
        self.worker = Worker(self.ctx, self.spec, JOURNAL)
        self.push = self.ctx.socket(zmq.PUSH)
        self.push.linger = 0
        self.push.connect(mailbox_endpoint("s1", "w", 1))
        self.events: list[p.Ev] = []
        self.task: asyncio.Task | None = None
        self.started_at = 0.0

    async def __aenter__(self) -> "Rig":
        self.started_at = time.monotonic()
        self.task = asyncio.create_task(self.worker.run())
        return self

    async def __aexit__(self, *exc) -> None:
        if not self.task.done():
            self.task.cancel()
        try:
            await self.task
        except asyncio.CancelledError:
            pass
        self.push.close(0)
        self.journal.close()
        self.ctx.term()

    async def tell(self, msg: p.Msg) -> None:
        await self.push.send(wire.pack(msg))

    async def _pump(self, timeout_s: float) -> None:
        for raw in await self.journal.recv_batch(timeout_s=timeout_s):
            msg = wire.journal_inbox.decode(raw)
            assert isinstance(msg, p.Append)
            for frame in msg.frames:
                _, _, _, js = wire.sequence_frame(frame, len(self.events) + 1)
                self.events.append(wire.decode_event(js)[1])

    async def wait_for(self, cond, timeout_s: float = 20.0, what: str = "event"):
        """The first event (from the start) that satisfies ``cond``; fail after the deadline."""
        deadline = time.monotonic() + timeout_s
        seen = 0
        while True:
            for ev in self.events[seen:]:
                if cond(ev):
                    return ev
            seen = len(self.events)
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out after {timeout_s}s waiting for {what}; got {self.events[-20:]}")
            await self._pump(min(left, 0.5))

    async def exited(self, timeout_s: float = 20.0) -> p.WorkerExited:
        ev = await self.wait_for(lambda e: isinstance(e, p.WorkerExited), timeout_s, "worker.exited")
        await asyncio.wait_for(self.task, 10)  # and the actor has ended
        return ev

    async def quiet_for(self, window_s: float) -> None:
        """Collect whatever arrives in the window (for asserting that something did NOT happen)."""
        deadline = time.monotonic() + window_s
        while (left := deadline - time.monotonic()) > 0:
            await self._pump(left)

    def kinds(self, cls) -> list:
        return [e for e in self.events if isinstance(e, cls)]


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 120))


# ---------------------------------------------------------------- the end is the agent's exit


def test_agent_that_leaves_a_background_process_ends_done_and_the_leftover_is_killed(tmp_path):
    pidfile = tmp_path / "bg.pid"

    async def main():
        async with Rig(tmp_path, ["line:DONE: all finished", f"bg:{pidfile}", "exit:0"]) as rig:
            exited = await rig.exited(timeout_s=15)
            elapsed = time.monotonic() - rig.started_at
            return rig, exited, elapsed

    rig, exited, elapsed = run(main())
    assert (exited.state, exited.exit_code, exited.signal, exited.reason) == ("done", 0, None, None)
    assert [d.text for d in rig.kinds(p.WorkerDone)] == ["all finished"]
    assert rig.kinds(p.WorkerLimit) == []
    # the default exit grace is 2 s; the background sleep would hold stdout for 1000 s
    assert elapsed < rig.spec.exit_grace_s + 4, elapsed
    assert killed(read_pid(pidfile)), "the background process outlived its agent"


def test_without_leftovers_the_worker_does_not_wait_for_the_grace(tmp_path):
    async def main():
        async with Rig(tmp_path, ["line:hello", "exit:0"], exit_grace_s=30) as rig:
            exited = await rig.exited(timeout_s=15)
            return rig, exited, time.monotonic() - rig.started_at

    rig, exited, elapsed = run(main())
    assert exited.state == "done"
    assert elapsed < 10, elapsed  # far below the 30 s grace: EOF on both pipes ended it


def test_a_failing_agent_with_a_leftover_still_fails_with_its_exit_code(tmp_path):
    pidfile = tmp_path / "bg.pid"

    async def main():
        async with Rig(tmp_path, [f"bg:{pidfile}", "err:boom", "exit:3"], exit_grace_s=0.5) as rig:
            return rig, await rig.exited(timeout_s=15)

    rig, exited = run(main())
    assert (exited.state, exited.exit_code) == ("failed", 3)
    assert "boom" in [e.line for e in rig.kinds(p.WorkerLog)]
    assert killed(read_pid(pidfile))


def test_output_buffered_at_the_exit_is_not_lost_to_a_short_grace(tmp_path):
    # the agent floods and exits at once; the worker is still parsing when the grace ends
    async def main():
        async with Rig(tmp_path, ["json:20000", "exit:0"], exit_grace_s=0.01) as rig:
            return rig, await rig.exited(timeout_s=60)

    rig, exited = run(main())
    assert exited.state == "done"
    assert [e.data["i"] for e in rig.kinds(p.AgentOutput)] == list(range(20000))


def test_a_process_that_escaped_the_group_cannot_hold_the_worker(tmp_path):
    # a new session is out of reach of the group kill; the worker stops reading its pipes instead
    pidfile = tmp_path / "escaped.pid"

    async def main():
        async with Rig(tmp_path, ["line:DONE: ok", f"bgsid:{pidfile}", "exit:0"], exit_grace_s=0.3) as rig:
            return rig, await rig.exited(timeout_s=15)

    try:
        rig, exited = run(main())
        assert (exited.state, exited.exit_code) == ("done", 0)
        assert not gone(read_pid(pidfile))  # still alive: only the pipes were given up
    finally:
        if pidfile.exists():
            os.kill(read_pid(pidfile), signal.SIGKILL)


def test_a_stop_after_the_agent_exited_cuts_the_grace_but_keeps_its_outcome(tmp_path):
    pidfile = tmp_path / "bg.pid"

    async def main():
        async with Rig(tmp_path, ["line:DONE: ok", f"bg:{pidfile}", "exit:0"], exit_grace_s=60) as rig:
            started = await rig.wait_for(lambda e: isinstance(e, p.WorkerStarted), what="worker.started")
            # the worker has seen the exit (the leftover holds the pipes for the 60 s grace)
            deadline = time.monotonic() + 15
            while rig.worker._child.returncode is None:
                assert time.monotonic() < deadline, "the agent did not exit"
                await asyncio.sleep(0.01)
            await rig.tell(p.StopWorker(reason="stopped by user"))
            exited = await rig.exited(timeout_s=15)
            return rig, started, exited, time.monotonic() - rig.started_at

    rig, started, exited, elapsed = run(main())
    assert (exited.state, exited.exit_code, exited.reason) == ("done", 0, None)
    assert elapsed < 30, elapsed
    assert killed(read_pid(pidfile)) and killed(started.pid)


def test_a_stop_while_running_still_ends_stopped(tmp_path):
    async def main():
        async with Rig(tmp_path, ["line:working", "hang"]) as rig:
            await rig.wait_for(lambda e: isinstance(e, p.AgentText), what="agent.text")
            await rig.tell(p.StopWorker(reason="stopped by user"))
            return await rig.exited()

    exited = run(main())
    assert (exited.state, exited.reason, exited.signal) == ("stopped", "stopped by user", signal.SIGTERM)


# ---------------------------------------------------------------- start paused


def test_start_paused_waits_for_resume_before_starting_the_agent(tmp_path):
    marker = tmp_path / "started"

    async def main():
        async with Rig(tmp_path, [f"touch:{marker}", "line:hello", "exit:0"], start_paused=True) as rig:
            first = await rig.wait_for(lambda e: True, what="the first event")
            await rig.quiet_for(0.5)
            before = (list(rig.events), marker.exists())
            await rig.tell(p.ResumeWorker())
            exited = await rig.exited()
            return rig, first, before, exited

    rig, first, (before, started_early), exited = run(main())
    assert first == p.WorkerStateChanged(state="paused", reason="session paused")
    assert before == [first] and not started_early, "the agent started while paused"
    kinds = [type(e) for e in rig.events]
    assert kinds.index(p.WorkerStateChanged, 1) < kinds.index(p.WorkerStarted)
    assert rig.events[1] == p.WorkerStateChanged(state="running")
    assert exited.state == "done" and marker.exists()


def test_stop_while_start_paused_ends_stopped_without_starting(tmp_path):
    marker = tmp_path / "started"

    async def main():
        async with Rig(tmp_path, [f"touch:{marker}", "exit:0"], start_paused=True) as rig:
            await rig.wait_for(lambda e: isinstance(e, p.WorkerStateChanged), what="worker.state")
            await rig.tell(p.PauseWorker())  # already paused: nothing to say
            await rig.tell(p.StopWorker(reason="stopped by user"))
            return rig, await rig.exited()

    rig, exited = run(main())
    assert (exited.state, exited.reason, exited.exit_code) == ("stopped", "stopped by user", None)
    assert rig.kinds(p.WorkerStarted) == [] and not marker.exists()
    assert rig.kinds(p.WorkerStateChanged) == [p.WorkerStateChanged(state="paused", reason="session paused")]


def test_a_pause_during_the_start_delay_holds_the_start(tmp_path):
    marker = tmp_path / "started"

    async def main():
        async with Rig(tmp_path, [f"touch:{marker}", "exit:0"], start_delay_s=0.3) as rig:
            await rig.tell(p.PauseWorker())
            await rig.wait_for(lambda e: isinstance(e, p.WorkerStateChanged), what="worker.state")
            await rig.quiet_for(0.8)  # well past the delay
            held = (rig.kinds(p.WorkerStarted), marker.exists())
            await rig.tell(p.ResumeWorker())
            return rig, held, await rig.exited()

    rig, (started_early, touched), exited = run(main())
    assert started_early == [] and not touched
    assert rig.kinds(p.WorkerStateChanged) == [p.WorkerStateChanged(state="paused"),
                                               p.WorkerStateChanged(state="running")]
    assert exited.state == "done" and marker.exists()


def test_a_bad_mailbox_message_is_skipped(tmp_path):
    async def main():
        async with Rig(tmp_path, ["exit:0"], start_paused=True) as rig:
            await rig.wait_for(lambda e: isinstance(e, p.WorkerStateChanged), what="worker.state")
            await rig.push.send(b"\x93garbage")
            await rig.push.send(msgspec.msgpack.encode({"kind": "no_such_message"}))
            await rig.tell(p.ResumeWorker())
            return await rig.exited()

    assert run(main()).state == "done"
