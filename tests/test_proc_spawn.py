"""orchd.proc.spawn: pdeathsig without a full fork of the daemon, and subprocess's own errors."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from orchd import proc
from tests.conftest import wait_for
from tests.helpers import gone

ROOT = Path(__file__).resolve().parent.parent

SPAWNER = """
import asyncio, os, sys
from orchd import proc
async def main():
    child = await proc.spawn(["sleep", "60"], os.getcwd(), dict(os.environ), limit=4096)
    print(child.pid, flush=True)
    sys.stdin.readline()   # the test says when to die
    os._exit(0)            # no cleanup: only the parent-death signal can end the agent
asyncio.run(main())
"""



async def read_all(child: proc.Child) -> bytes:
    chunks: list[bytes] = []
    await child.read_stdout(chunks.append)
    return b"".join(chunks)


def test_stdout_goes_to_the_sink_in_order_with_what_came_before_it_was_set(tmp_path: Path) -> None:
    async def go() -> tuple[bytes, int]:
        child = await proc.spawn(["sh", "-c", "echo early; sleep 0.3; echo late; seq 1 20000"], str(tmp_path),
                                 dict(os.environ), limit=4096)
        deadline = time.monotonic() + 10
        while not child._protocol.stdout_early:  # "early" arrived (and is held, reading paused) before the sink
            assert time.monotonic() < deadline, "no output before the sink was set"
            await asyncio.sleep(0.01)
        chunks: list[bytes] = []
        await child.read_stdout(chunks.append)
        await child.wait()
        return b"".join(chunks), max(len(c) for c in chunks)
    out, biggest = asyncio.run(go())
    assert out == b"early\nlate\n" + b"".join(b"%d\n" % i for i in range(1, 20001))
    assert biggest <= 4096  # one read hands the sink at most ``limit`` bytes


def test_an_exception_in_the_sink_ends_reading_and_comes_out_of_read_stdout(tmp_path: Path) -> None:
    async def go() -> None:
        child = await proc.spawn(["sh", "-c", "echo one; sleep 5"], str(tmp_path), dict(os.environ), limit=4096)

        def sink(data: bytes) -> None:
            raise ValueError("parser bug")
        try:
            with pytest.raises(ValueError, match="parser bug"):
                await asyncio.wait_for(child.read_stdout(sink), 10)
        finally:
            child.kill_group()
            await child.wait_exit()
            child.close_pipes()
    asyncio.run(go())


def test_an_agent_dies_with_the_daemon_that_spawned_it(tmp_path: Path) -> None:
    spawner = subprocess.Popen([sys.executable, "-c", SPAWNER], cwd=ROOT, stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        pid = int(spawner.stdout.readline())
        # setpriv execs the agent in its own process: same pid, the agent's argv intact
        wait_for(lambda: Path(f"/proc/{pid}/cmdline").read_bytes() == b"sleep\x0060\x00", 5, "sleep to run as the pid")
        assert not gone(pid)
        spawner.stdin.write("die\n")
        spawner.stdin.flush()
        spawner.wait(10)
        wait_for(lambda: gone(pid), 5, f"agent {pid} to die with its daemon")
    finally:
        spawner.kill()
        spawner.wait()


def test_the_agent_pid_runs_the_program_itself(tmp_path: Path) -> None:
    """``setpriv`` execs the agent in place: the pid orchd signals is the agent's."""
    async def go() -> tuple[int, bytes]:
        child = await proc.spawn([sys.executable, "-c", "import os, sys; print(os.getpid()); sys.stdout.flush()"],
                                 str(tmp_path), dict(os.environ), limit=4096)
        out = await read_all(child)
        await child.wait()
        return child.pid, out
    pid, out = asyncio.run(go())
    assert int(out) == pid


PRIORITY = ("import os; from orchd import proc; "
            "print(os.getpriority(os.PRIO_PROCESS, 0), proc.autogroup_nice('self'), flush=True)")


def test_an_agent_runs_below_the_daemon_and_so_does_its_session_group(tmp_path: Path) -> None:
    """``nice=N``: the agent N levels below this process, its session's CPU group N below ours."""
    async def go(nice: int) -> list[str]:
        child = await proc.spawn([sys.executable, "-c", PRIORITY], str(ROOT), dict(os.environ), limit=4096,
                                 nice=nice)
        out = await read_all(child)
        await child.wait()
        return out.decode().split()
    own, own_group = os.getpriority(os.PRIO_PROCESS, 0), proc.autogroup_nice("self")
    lowered, same = asyncio.run(go(7)), asyncio.run(go(0))
    assert int(lowered[0]) == min(19, own + 7) and int(same[0]) == own
    if own_group is None:  # a kernel without autogroups: nothing more to lower
        assert lowered[1] == "None"
    else:
        assert int(lowered[1]) == min(19, own_group + 7) and int(same[1]) == own_group


def test_the_root_autogroup_reads_as_nice_0() -> None:
    """A process that never started a session (init's group, some CI runners) has an empty
    ``/proc/PID/autogroup``; its group weighs as nice 0, so agents are still lowered from 0."""
    assert proc.autogroup_level("") == 0
    assert proc.autogroup_level("/autogroup-11106 nice 3\n") == 3
    assert proc.autogroup_level("/autogroup-7 nice x\n") is None


def test_spawns_take_turns_with_the_event_loop(tmp_path: Path) -> None:
    """Agents started together (a new session's) are spawned one per loop turn, so the loop
    polls for I/O between them; without the gate all of them finish in the same turn."""
    async def go() -> list[int]:
        turns = 0

        async def count() -> None:
            nonlocal turns
            while True:
                turns += 1
                await asyncio.sleep(0)

        async def one() -> tuple[int, proc.Child]:
            child = await proc.spawn(["sleep", "30"], str(tmp_path), dict(os.environ), limit=4096)
            return turns, child

        counter = asyncio.ensure_future(count())
        done = await asyncio.gather(*(one() for _ in range(5)))
        counter.cancel()
        for _, child in done:
            child.kill_group()
            await child.wait()
        return [t for t, _ in done]
    finished = asyncio.run(go())
    assert all(a < b for a, b in zip(finished, finished[1:])), finished


def test_spawning_needs_no_full_fork_when_setpriv_is_there() -> None:
    argv, kwargs = proc.with_pdeathsig(["sleep", "1"], "/", dict(os.environ))
    if proc._SETPRIV is None:
        assert kwargs == {"preexec_fn": proc._child_setup}
    else:
        assert kwargs == {}  # no preexec_fn: Python may vfork
        assert argv[:4] == [proc._SETPRIV, "--pdeathsig", "KILL", "--"]
        assert argv[4:] == ["sleep", "1"]


def test_missing_and_unrunnable_programs_fail_the_spawn_as_subprocess_does(tmp_path: Path) -> None:
    script = tmp_path / "not-executable.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    (tmp_path / "run.sh").write_text("#!/bin/sh\necho relative\n")
    (tmp_path / "run.sh").chmod(0o755)
    env = dict(os.environ)

    async def spawn(argv: list[str]) -> bytes:
        child = await proc.spawn(argv, str(tmp_path), env, limit=4096)
        out = await read_all(child)
        await child.wait()
        return out

    for argv, error in ((["no-such-program-xyz"], FileNotFoundError), (["./missing.sh"], FileNotFoundError),
                        ([str(script)], PermissionError), ([str(tmp_path)], PermissionError)):
        with pytest.raises(error) as ours:
            asyncio.run(spawn(argv))
        with pytest.raises(error) as theirs:
            subprocess.run(argv, cwd=tmp_path, env=env)
        assert str(ours.value) == str(theirs.value)
    assert asyncio.run(spawn(["./run.sh"])) == b"relative\n"
    assert asyncio.run(spawn(["sh", "-c", "echo $0"])) == b"sh\n"


def test_no_thread_waits_for_a_running_agent(tmp_path: Path) -> None:
    """The exit of every agent is seen by the event loop (a pidfd), not by a thread per agent."""

    async def go() -> tuple[int, list[int]]:
        children = [await proc.spawn(["sleep", "30"], str(tmp_path), dict(os.environ), limit=4096) for _ in range(5)]
        threads = threading.active_count()
        for c in children:
            c.kill_group()
        codes = [await asyncio.wait_for(c.wait_exit(), 10) for c in children]
        for c in children:
            c.close_pipes()
        return threads, codes

    proc._spawn_thread()  # the one thread agents are spawned from (made at the first spawn)
    before = threading.active_count()
    during, codes = asyncio.run(go())
    if sys.version_info < (3, 12):
        assert during == before, "a thread was started per agent"
    assert codes == [-9] * 5


def _spawn_thread_busy() -> threading.Event:
    """Hold ``proc``'s spawn thread until the returned event is set."""
    release = threading.Event()
    started = threading.Event()

    def hold() -> None:
        started.set()
        release.wait(30)
    proc._spawn_thread().submit(hold)
    assert started.wait(10)
    return release


async def _spawn_thread_idle() -> None:
    """Everything submitted to the spawn thread before this call has run (it runs one job at a time)."""
    await asyncio.wrap_future(proc._spawn_thread().submit(lambda: None))


def test_the_event_loop_runs_while_an_agent_is_spawned(tmp_path: Path) -> None:
    """The process is made in the spawn thread: while that thread is busy (as while ``vfork`` waits for a
    slow ``exec``), the event loop goes on turning and the spawn is not finished; then it is."""
    async def go() -> tuple[int, bool, bytes]:
        release = _spawn_thread_busy()
        try:
            spawning = asyncio.ensure_future(proc.spawn(["echo", "made"], str(tmp_path), dict(os.environ),
                                                        limit=4096))
            for _ in range(50):
                await asyncio.sleep(0)  # 50 loop turns: the loop is not held by the spawn
            pending = not spawning.done()
        finally:
            release.set()
        child = await asyncio.wait_for(spawning, 10)
        out = await read_all(child)
        await child.wait()
        return pending, out

    pending, out = asyncio.run(go())
    if proc._MadeTransport is None:  # other Pythons: asyncio makes the process in the loop's thread
        assert not pending
    else:
        assert pending, "the spawn finished while the spawn thread was held: it ran in the loop's thread"
    assert out == b"made\n"


def _with_marker(mark: str) -> list[int]:
    """Live processes whose environment holds ``mark``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if mark.encode() in (entry / "environ").read_bytes() and not gone(int(entry.name)):
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


@pytest.mark.skipif(proc._MadeTransport is None, reason="this Python makes the process in the loop's thread")
def test_a_spawn_cancelled_while_its_process_is_made_leaves_no_agent(tmp_path: Path) -> None:
    """Cancelled while the spawn thread makes the process: once made, it is killed and reaped."""
    mark = f"ORCHD_TEST_SPAWN_MARK={os.getpid()}-{time.monotonic_ns()}"
    env = {**os.environ, mark.split("=")[0]: mark.split("=")[1]}

    async def go() -> None:
        release = _spawn_thread_busy()
        spawning = asyncio.ensure_future(proc.spawn(["sleep", "60"], str(tmp_path), env, limit=4096))
        await asyncio.sleep(0)
        spawning.cancel()
        with pytest.raises(asyncio.CancelledError):
            await spawning
        release.set()
        await _spawn_thread_idle()  # the process has been made (after the hold, in order)
        deadline = time.monotonic() + 10
        while _with_marker(mark):
            assert time.monotonic() < deadline, f"left running: {_with_marker(mark)}"
            await asyncio.sleep(0.02)
        await _spawn_thread_idle()  # and reaped

    asyncio.run(go())
    assert not _with_marker(mark)
