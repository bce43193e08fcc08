"""The only place that spawns and signals agent process groups.

Every agent runs as the leader of its own process group (a new session),
so one signal reaches the agent and everything it started.  Each child also
asks the kernel for SIGKILL when the daemon's thread that forked it dies
(``PR_SET_PDEATHSIG``), and carries the env marker ``ORCHD_AGENT_OF=<state dir>`` so a
restarted daemon can find and end any process that outlived a crash
(``kill_orphans``): pdeathsig covers the agent itself, not its children.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
from pathlib import Path

MARKER = "ORCHD_AGENT_OF"  # value: the state dir of the daemon that started it
_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


def _child_setup() -> None:  # runs in the child between fork and exec
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


async def spawn(argv: list[str], cwd: str, env: dict[str, str], limit: int) -> asyncio.subprocess.Process:
    """Start ``argv`` in its own process group, stdin from /dev/null.

    Raises ``OSError`` (e.g. ``FileNotFoundError``) when it cannot start.
    """
    return await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
        preexec_fn=_child_setup,
        limit=limit,
    )


def signal_group(pgid: int, sig: int) -> bool:
    """Send ``sig`` to a process group; False if the group is gone."""
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False


async def terminate(proc: asyncio.subprocess.Process, grace_s: float) -> int | None:
    """SIGTERM the group (and SIGCONT in case it is stopped), wait ``grace_s``, then SIGKILL."""
    if proc.returncode is None:
        signal_group(proc.pid, signal.SIGTERM)
        signal_group(proc.pid, signal.SIGCONT)
        try:
            await asyncio.wait_for(proc.wait(), grace_s)
        except TimeoutError:
            signal_group(proc.pid, signal.SIGKILL)
            await proc.wait()
    # the leader is gone; make sure nothing it started lingers in its group
    signal_group(proc.pid, signal.SIGKILL)
    return proc.returncode


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
