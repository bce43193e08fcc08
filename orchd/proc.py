"""The only place that spawns and signals agent process groups.

Every agent runs as the leader of its own process group (a new session),
so one signal reaches the agent and everything it started.  Each child also
asks the kernel for SIGKILL when the daemon's thread that forked it dies
(``PR_SET_PDEATHSIG``), and carries the env marker ``ORCHD_AGENT_OF=<state dir>`` so a
restarted daemon can find and end any process that outlived a crash
(``kill_orphans``): pdeathsig covers the agent itself, not its children.

**Spawning without copying the daemon.**  Asking for pdeathsig in a ``preexec_fn``
makes Python ``fork()`` the whole daemon (page tables of ~60 MB, then a copy-on-write
fault for every page the event loop touches afterwards): ~15 ms of blocked event loop
per agent on a 2-vCPU VM.  Without a ``preexec_fn`` Python uses ``vfork()`` (~0.6 ms),
so the pdeathsig is asked for by util-linux's ``setpriv --pdeathsig KILL`` exec'd in
front of the agent (it execs the agent in the same process: same pid, same group).
The executable is looked up here first, in the agent's own ``PATH``, so a missing or
non-executable program still fails the spawn with the ``OSError`` Python would raise
(a wrapper would only fail after the fact).  Without ``setpriv`` on the machine the
``preexec_fn`` is used, as before.

**Agents yield the CPU to the daemon.**  ``spawn(..., nice=N)`` starts the agent N nice
levels below the daemon (``agent_nice`` in the config, default 10: what the daemon's big git
commands run at; 0: the same priority).  The daemon is the control plane: while 200
agents start (an interpreter each) on a 2-core machine, an agent at the daemon's
priority gets the same CPU share as the daemon, whose event loop then waits behind them
(``benchmarks/scale.py``, 200 agents, line -> subscriber p99 over the whole run, runs
alternated: 50-59 ms at 0, 25-31 ms at 10; with the spawn gate below 39-111 ms at 0,
9-18 ms at 10).  An agent that only competes with other agents, or with an idle daemon,
loses nothing.  The agent starts in a session of its own, so where the kernel groups CPU
time by session (``/proc/sys/kernel/sched_autogroup_enabled``, the default outside a
service's cgroup) the new session's group is lowered as well; its children inherit both.

**Spawns take turns.**  ``spawn`` holds the event loop for a millisecond on a quiet machine
and 5-10 ms while many agents start (``vfork`` waits for the child's exec).  The agents of a
new session are started in one loop turn, so ten spawns in a row held every agent line for
50-100 ms.  One spawn at a time per loop, with a loop turn (which polls for I/O) between one
and the next; a spawn alone is not delayed (``_spawn_gates``).

**Spawning off the event loop.**  ``vfork`` holds the thread that calls it until the child has
exec'd: 1 ms on a quiet machine, 5-10 ms while many agents start.  So the process is made
(``Popen``) in one thread kept for that (``_spawn_thread``), not in the event loop's, and Python
>= 3.11.4 lets the loop run meanwhile (``benchmarks/scale.py``, 200 agents, 30 s runs alternated:
the whole run's p99 line -> subscriber 11.6-24.0 ms, median 19.8, against 17.9-34.1 ms, median
30.5).  The transport around the process is asyncio's own (``_MadeTransport``), which relies on
Python 3.11's transport internals: other versions, and the ``preexec_fn`` fallback, make the
process in the loop's thread as asyncio does.  An agent's parent-death signal follows the thread
that spawned it, which lives as long as the daemon.  A spawn cancelled while its process is
being made kills and reaps that process once it exists.

**No thread per agent.**  Python 3.11's default child watcher starts one thread per
child to ``waitpid`` it (a stack and a thread state per running agent, and a thread
switch per exit).  ``spawn`` installs, once, a watcher that waits on a pidfd in the
event loop that spawned the child instead (what Python 3.12 does by itself).

A ``Child`` tells apart two things asyncio's ``Process.wait`` mixes up
(up to Python 3.11 it returns only once the process has exited AND every
pipe is closed): the agent's main process exiting (``wait_exit``), and its
pipes reaching EOF, which a background process it left behind can delay
forever.  The worker ends on the first, with a grace for the second.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import functools
import os
import shutil
import signal
import subprocess
import sys
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

MARKER = "ORCHD_AGENT_OF"  # value: the state dir of the daemon that started it
_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


def _child_setup() -> None:  # runs in the child between fork and exec
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


_SETPRIV = shutil.which("setpriv")  # util-linux (Essential on Debian); None: fall back to preexec_fn


class _PidfdWatcher(asyncio.AbstractChildWatcher):
    """asyncio's child watcher without a thread per child, for Python < 3.12: each child's
    pidfd is watched by the event loop that spawned it (any number of loops, any threads)."""

    def __init__(self) -> None:
        self._fds: dict[int, tuple[asyncio.AbstractEventLoop, int]] = {}

    def __enter__(self) -> "_PidfdWatcher":
        return self

    def __exit__(self, *exc) -> None:
        pass

    def is_active(self) -> bool:
        return True

    def attach_loop(self, loop) -> None:
        pass

    def add_child_handler(self, pid: int, callback, *args) -> None:
        loop = asyncio.get_running_loop()
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:  # reaped elsewhere already: asyncio's own answer
            callback(pid, 255, *args)
            return
        self._fds[pid] = (loop, fd)
        loop.add_reader(fd, self._reap, pid, callback, args)

    def _reap(self, pid: int, callback, args) -> None:
        self._forget(pid)
        try:
            _, status = os.waitpid(pid, 0)
            code = os.waitstatus_to_exitcode(status)
        except ChildProcessError:
            code = 255
        callback(pid, code, *args)

    def _forget(self, pid: int) -> bool:
        entry = self._fds.pop(pid, None)
        if entry is None:
            return False
        loop, fd = entry
        if not loop.is_closed():
            loop.remove_reader(fd)
        os.close(fd)
        return True

    def remove_child_handler(self, pid: int) -> bool:
        return self._forget(pid)

    def close(self) -> None:
        for pid in list(self._fds):
            self._forget(pid)


_watcher_checked = False


def _watch_children_with_pidfds() -> None:
    """Install ``_PidfdWatcher`` once (Python < 3.12, a kernel with pidfds)."""
    global _watcher_checked
    if _watcher_checked:
        return
    _watcher_checked = True
    if sys.version_info >= (3, 12):
        return  # 3.12+ uses pidfds by itself
    try:
        os.close(os.pidfd_open(os.getpid()))
    except (AttributeError, OSError):
        return  # kernel < 5.3: keep asyncio's thread per child
    asyncio.set_child_watcher(_PidfdWatcher())


def resolve_program(argv0: str, cwd: str, env: dict[str, str]) -> str:
    """The file ``argv0`` would execute in ``cwd`` with ``env``'s PATH, as ``subprocess`` finds it;
    raises the ``OSError`` subprocess would (``FileNotFoundError``, ``PermissionError``)."""
    if os.sep in argv0:
        path = os.path.join(cwd, argv0)
        if not os.path.exists(path):
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), argv0)
        if os.path.isdir(path) or not os.access(path, os.X_OK):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), argv0)
        return argv0
    found = shutil.which(argv0, path=os.pathsep.join(os.get_exec_path(env)))
    if found is None:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), argv0)
    return found


def with_pdeathsig(argv: list[str], cwd: str, env: dict[str, str]) -> tuple[list[str], dict]:
    """``(argv, extra Popen kwargs)`` that start ``argv`` with SIGKILL as its parent-death
    signal: through ``setpriv`` (vfork-able), else with a ``preexec_fn`` (a full fork)."""
    resolve_program(argv[0], cwd, env)  # fail now, as subprocess would; setpriv finds the same file
    if _SETPRIV is None:
        return argv, {"preexec_fn": _child_setup}
    return [_SETPRIV, "--pdeathsig", "KILL", "--", *argv], {}  # the agent keeps its own argv[0]


class _Protocol(asyncio.subprocess.SubprocessStreamProtocol):
    """asyncio's stream protocol, plus an event set when the process itself exits, and stdout
    handed to a callback (``Child.read_stdout``) instead of a ``StreamReader``."""

    def __init__(self, limit: int, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(limit=limit, loop=loop)
        self.exited = asyncio.Event()
        self.stdout_sink: Callable[[bytes], None] | None = None
        self.stdout_early: list[bytes] = []  # what came before the sink was set (reading paused meanwhile)
        self.stdout_eof = loop.create_future()

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        pipe = transport.get_pipe_transport(1)
        if pipe is not None and hasattr(pipe, "max_size"):
            pipe.max_size = self._limit  # the most one read hands the sink (asyncio's default: 256 KiB)
        if pipe is not None:  # (what was read before this moment is already queued, in order, behind this call)
            pipe.set_protocol(_StdoutAtOnce(pipe.get_protocol(), self))

    def process_exited(self) -> None:
        super().process_exited()
        self.exited.set()

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        if fd != 1:
            super().pipe_data_received(fd, data)
        elif self.stdout_sink is not None:
            if self.stdout_eof.done():
                return  # the sink failed: nothing more is handed to it
            try:
                self.stdout_sink(data)
            except Exception as exc:  # asyncio would only log it: it goes to whoever awaits stdout_eof
                self.pause_stdout()
                self.stdout_eof.set_exception(exc)
        else:
            self.stdout_early.append(data)
            self.pause_stdout()

    def pipe_connection_lost(self, fd: int, exc: BaseException | None) -> None:
        if fd == 1 and not self.stdout_eof.done():
            if exc is None:
                self.stdout_eof.set_result(None)
            else:
                self.stdout_eof.set_exception(exc)
        super().pipe_connection_lost(fd, exc)

    def _stdout_pipe(self):
        """The stdout pipe's transport while it is open, else None."""
        pipe = self._transport.get_pipe_transport(1) if self._transport is not None else None
        return None if pipe is None or pipe.is_closing() else pipe

    def pause_stdout(self) -> None:
        if (pipe := self._stdout_pipe()) is not None:
            pipe.pause_reading()

    def resume_stdout(self) -> None:
        if (pipe := self._stdout_pipe()) is not None:
            pipe.resume_reading()


class _StdoutAtOnce(asyncio.Protocol):
    """The stdout pipe's protocol: each read goes to ``_Protocol.pipe_data_received`` in the read
    callback itself.  asyncio's subprocess transport hands every chunk on with ``call_soon``,
    one more event-loop turn per chunk (~25 % of the loop turns a paced line costs the daemon);
    the end of the pipe still goes through asyncio's own protocol (and so after the data)."""

    def __init__(self, inner: asyncio.BaseProtocol, proto: _Protocol) -> None:
        self._inner = inner
        self._proto = proto

    def data_received(self, data: bytes) -> None:
        self._proto.pipe_data_received(1, data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._inner.connection_lost(exc)


class Child(asyncio.subprocess.Process):
    """An agent process (the leader of its own process group)."""

    def __init__(self, transport, protocol: _Protocol, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(transport, protocol, loop)
        self._exited = protocol.exited
        self._pipes = transport
        self.stdout = None  # stdout goes to ``read_stdout``'s sink, never to a StreamReader

    async def wait_exit(self) -> int:
        """The exit status, as soon as the main process has exited (its pipes may still be open)."""
        await self._exited.wait()
        return self.returncode

    def read_stdout(self, sink: Callable[[bytes], None]) -> asyncio.Future:
        """From now on hand every stdout chunk to ``sink``, in the event loop's read callback
        (no task switch per chunk: at a paced line a millisecond that is ~40 % of the cost of
        reading it); what came before is handed over first.  Returns a future that is done
        at EOF, or fails with what closed the pipe: an exception ``sink`` raised ends reading
        and comes out there.  ``pause_stdout``/``resume_stdout`` are the sink's backpressure."""
        proto = self._protocol
        proto.stdout_sink = sink
        early, proto.stdout_early = proto.stdout_early, []
        for data in early:
            sink(data)
        if early:
            proto.resume_stdout()
        return proto.stdout_eof

    def pause_stdout(self) -> None:
        self._protocol.pause_stdout()

    def resume_stdout(self) -> None:
        self._protocol.resume_stdout()

    def kill_group(self) -> bool:
        """SIGKILL whatever is left in the process group; False if nothing was."""
        return signal_group(self.pid, signal.SIGKILL)

    def close_pipes(self) -> None:
        """Stop reading: each reader gets what is already buffered, then EOF.

        Also kills the main process if it still runs (asyncio's transport
        ``close``); call it once the worker is done with the process.
        """
        self._pipes.close()


AGENT_UMASK = 0o022
"""The umask agents run with: the user's, not the daemon's 0o077 (``orchd run`` sets it at start),
so files an agent writes in its working copy get the modes the user expects."""


async def spawn(argv: list[str], cwd: str, env: dict[str, str], limit: int, nice: int = 0) -> Child:
    """Start ``argv`` in its own process group, stdin from /dev/null, ``nice`` levels below
    the daemon (``lower_priority``).

    Raises ``OSError`` (e.g. ``FileNotFoundError``) when it cannot start.
    """
    loop = asyncio.get_running_loop()
    _watch_children_with_pidfds()
    gate = _spawn_gates.get(loop) or _spawn_gates.setdefault(loop, asyncio.Lock())
    await gate.acquire()
    try:
        argv, kwargs = with_pdeathsig(argv, cwd, env)
        exec_ = _exec_off_loop if _MadeTransport is not None and not kwargs else _exec_in_loop
        transport, protocol = await exec_(loop, lambda: _Protocol(limit, loop), argv, cwd=cwd, env=env,
                                          start_new_session=True, umask=AGENT_UMASK, **kwargs)
    finally:
        loop.call_soon(gate.release)  # the next spawn waits for a turn that polls for I/O first
    if nice > 0:
        lower_priority(transport.get_pid(), nice)
    return Child(transport, protocol, loop)


async def _exec_in_loop(loop: asyncio.AbstractEventLoop, protocol_factory, argv: list[str], **popen):
    """asyncio's own way: ``Popen`` in the event loop's thread (the loop waits for the child's exec)."""
    return await loop.subprocess_exec(protocol_factory, *argv, stdin=asyncio.subprocess.DEVNULL,
                                      stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, **popen)


async def _exec_off_loop(loop: asyncio.AbstractEventLoop, protocol_factory, argv: list[str], **popen):
    """``_exec_in_loop`` with the ``Popen`` made in ``_spawn_thread`` ("Spawning off the event loop").

    The transport is asyncio's own, given the process instead of making it (what
    ``_make_subprocess_transport`` does on Python 3.11, step for step).  Cancelled while the
    ``Popen`` runs, the child is killed and reaped once it exists: no agent nobody owns."""
    made = loop.run_in_executor(_spawn_thread(), functools.partial(
        subprocess.Popen, argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        bufsize=0, **popen))
    try:
        proc = await asyncio.shield(made)
    except asyncio.CancelledError:
        made.add_done_callback(_discard_made)
        raise
    protocol = protocol_factory()
    with asyncio.get_child_watcher() as watcher:
        waiter = loop.create_future()
        transport = _MadeTransport(loop, protocol, argv, False, subprocess.DEVNULL, subprocess.PIPE,
                                   subprocess.PIPE, 0, waiter=waiter, made=proc)
        watcher.add_child_handler(transport.get_pid(), loop._child_watcher_callback, transport)
        try:
            await waiter
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException:
            transport.close()
            await transport._wait()
            raise
    return transport, protocol


def _discard_made(made: asyncio.Future) -> None:
    if made.cancelled() or made.exception() is not None:
        return
    proc = made.result()
    signal_group(proc.pid, signal.SIGKILL)
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()
    _spawn_thread().submit(proc.wait)


if sys.version_info[:2] == (3, 11):
    from asyncio import unix_events as _unix_events

    class _MadeTransport(_unix_events._UnixSubprocessTransport):
        """asyncio's subprocess transport around a process made already (``_exec_off_loop``)."""

        def _start(self, args, shell, stdin, stdout, stderr, bufsize, made, **kwargs) -> None:
            self._proc = made
else:  # the transport's internals differ: asyncio's own way
    _MadeTransport = None

_spawner: ThreadPoolExecutor | None = None
_spawner_guard = threading.Lock()


def _spawn_thread() -> ThreadPoolExecutor:
    """The one thread agents are spawned from, for the daemon's lifetime (an agent's parent-death
    signal follows the thread that spawned it, so this thread must outlive every agent)."""
    global _spawner
    with _spawner_guard:
        if _spawner is None:
            _spawner = ThreadPoolExecutor(1, thread_name_prefix="orchd-spawn")
        return _spawner


_spawn_gates: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = weakref.WeakKeyDictionary()
"""One spawn at a time per event loop (the module's "Spawns take turns"); the lock is given
back on the next loop turn, so the next spawn comes after the loop has polled for I/O."""


def lower_priority(pgid: int, nice: int) -> None:
    """Run process group ``pgid`` (a session leader's) ``nice`` levels below this process, and
    its session's CPU group (autogroup) ``nice`` levels below this process's group.

    Relative, so that a daemon run at a nice level of its own never raises an agent above
    itself (as root it could).  Done right after the spawn returns, in the same loop turn;
    the whole group is set, in case the agent has forked already.  Best effort: a group
    already gone, or a kernel without autogroups, leaves it as it is."""
    try:
        os.setpriority(os.PRIO_PGRP, pgid, min(19, os.getpriority(os.PRIO_PROCESS, 0) + nice))
    except OSError:
        pass
    own = autogroup_nice("self")
    if own is None:
        return
    try:
        with open(f"/proc/{pgid}/autogroup", "w") as f:
            f.write(str(min(19, own + nice)))
    except OSError:
        pass


def autogroup_nice(pid: int | str) -> int | None:
    """The nice level of ``pid``'s autogroup; None where the kernel has no autogroups."""
    try:
        with open(f"/proc/{pid}/autogroup") as f:
            return autogroup_level(f.read())
    except OSError:
        return None


def autogroup_level(text: str) -> int | None:
    """The nice level in a ``/proc/PID/autogroup`` text: ``/autogroup-N nice K`` gives K.

    An empty text is the root group's (init's, and every process that never started a
    session of its own, as under some CI runners): the kernel prints nothing for it, and its
    tasks weigh as nice 0 against the autogroups beside it, so it is 0.  Anything else
    unreadable is None."""
    words = text.split()
    if not words:
        return 0
    try:
        return int(words[-1])
    except ValueError:
        return None


def signal_group(pgid: int, sig: int) -> bool:
    """Send ``sig`` to a process group; False if the group is gone."""
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False


async def terminate(child: Child, grace_s: float) -> int | None:
    """SIGTERM the group (and SIGCONT in case it is stopped), wait ``grace_s`` for the main
    process to exit, then SIGKILL; either way nothing is left in the group afterwards."""
    if child.returncode is None:
        signal_group(child.pid, signal.SIGTERM)
        signal_group(child.pid, signal.SIGCONT)
        try:
            await asyncio.wait_for(child.wait_exit(), grace_s)
        except TimeoutError:
            signal_group(child.pid, signal.SIGKILL)
            await child.wait_exit()
    # the leader is gone; make sure nothing it started lingers in its group
    child.kill_group()
    return child.returncode


def find_orphans(state_dir: str) -> list[int]:
    """PIDs of processes carrying our marker for ``state_dir`` (not ourselves)."""
    want = f"{MARKER}={state_dir}".encode()
    me = os.getpid()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            env = (entry / "environ").read_bytes()
        except OSError:
            continue
        if want in env.split(b"\0"):
            found.append(int(entry.name))
    return found


def kill_orphans(state_dir: str) -> list[int]:
    """SIGKILL every process (and its group) left over from a dead daemon."""
    pids = find_orphans(state_dir)
    own = os.getpgid(0)
    for pid in pids:
        try:
            pgid = os.getpgid(pid)
            if pgid != own:
                os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return pids


_versions: dict[tuple[str, ...], str | None] = {}


async def cli_version(argv: list[str], env: dict[str, str]) -> str | None:
    """``<cli> --version``, first line, memoised per argv (a read-only cache)."""
    key = tuple(argv)
    if key in _versions:
        return _versions[key]
    _watch_children_with_pidfds()
    try:
        child = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL, env=env)
        out, _ = await asyncio.wait_for(child.communicate(), 20)
        text = out.decode(errors="replace").strip().splitlines()
        version = text[0] if text else None
    except (OSError, TimeoutError):
        version = None
    _versions[key] = version
    return version


async def run_with_input(argv: list[str], data: bytes, timeout_s: float, env: dict[str, str]) -> tuple[int | None, str]:
    """Run a short helper (a notify command) in its own process group with ``data`` on stdin.

    Returns ``(exit code, last stderr line)``; the code is None when it did not
    exit within ``timeout_s``: its whole group is killed then.  Raises ``OSError``
    when it cannot start.  Cancelled, it kills the group too.
    """
    _watch_children_with_pidfds()
    argv, kwargs = with_pdeathsig(argv, os.getcwd(), env)
    child = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        env=env, start_new_session=True, **kwargs)
    try:
        _, err = await asyncio.wait_for(child.communicate(data), timeout_s)
    except TimeoutError:
        signal_group(child.pid, signal.SIGKILL)
        # reap it; a grandchild that left the group may hold a pipe open: do not wait for that forever
        await asyncio.wait({asyncio.ensure_future(child.wait())}, timeout=5.0)
        return None, ""
    except BaseException:
        signal_group(child.pid, signal.SIGKILL)
        raise
    signal_group(child.pid, signal.SIGKILL)  # whatever it left behind in its group
    lines = err.decode("utf-8", "replace").strip().splitlines()
    return child.returncode, lines[-1][:300] if lines else ""
