"""What several test modules do the same way, in one place.

* stream parsers: feed lines (or raw bytes, framed as the worker frames
  them) to an adapter's parser, then finish it with an exit code;
* daemons: watch a session until it ends, replay the whole event log;
* real agent CLIs: the work dirs of one headless run, and starting and
  collecting the process (its whole process group is killed afterwards);
* ``/proc``: a process's state, whether it runs, the members of a group;
* git: run it in a repository, with an identity of its own;
* notifications: a webhook receiver on 127.0.0.1 and a notify command that
  records what it is told (the process boundary).

Fixtures and the daemon harness stay in ``tests/conftest.py``; where the
agent CLIs live is ``tests/agentbin.py``.
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import pytest

from actors.agents import get_adapter
from orchctl.client import Client
from orchd import protocol as p

# ---------------------------------------------------------------- stream parsers


def feed_parser(parser, lines: Iterable[str], exit_code: int | None) -> list:
    """Every event ``parser`` emits for ``lines``, then for ``finish(exit_code)``."""
    events = [ev for line in lines for ev in parser.feed_line(line)]
    return events + parser.finish(exit_code)


def feed_lines(adapter, lines: Iterable[str], exit_code: int | None = 0) -> list:
    """``feed_parser`` with a new parser of ``adapter`` (an adapter or its name)."""
    adapter = get_adapter(adapter) if isinstance(adapter, str) else adapter
    return feed_parser(adapter.new_parser(), lines, exit_code)


def feed_stream(adapter, data: bytes, exit_code: int | None) -> list:
    """Frame ``data`` exactly as the worker does (split on ``b"\\n"``, the final
    newline ends a line and does not start one, decode with replacement), feed
    the lines to a new parser of ``adapter`` and finish with ``exit_code``."""
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    return feed_lines(adapter, (raw.decode("utf-8", errors="replace") for raw in lines), exit_code)


# ---------------------------------------------------------------- daemons


def watch_until_done(d, sid: str, timeout_s: float = 60) -> list[dict]:
    """The session's whole history, until it ends (``orchctl watch SID --until-done --json``)."""
    res = d.ctl("watch", sid, "--until-done", "--json", timeout=timeout_s, check=False)
    events = [json.loads(line) for line in res.stdout.splitlines() if line.strip()]
    # --until-done exits 0 only for a session that ended done, 1 for any other end
    assert events and res.returncode == (0 if events[-1]["state"] == "done" else 1), res.stderr
    return events


def replay_all(control: str) -> list[tuple[int, bytes]]:
    """Every event in the daemon's log as ``(seq, json)``, by ``Replay`` pages."""
    client = Client(control)
    out: list[tuple[int, bytes]] = []
    cursor = 0
    try:
        while True:
            reply = client.call(p.Replay(since=cursor, limit=10_000), timeout_s=20)
            assert isinstance(reply, p.ReplayReply), reply
            for raw in reply.events:
                body = bytes(raw)
                cursor = json.loads(body)["seq"]
                out.append((cursor, body))
            if not reply.more:
                return out
    finally:
        client.close()


# ---------------------------------------------------------------- real agent CLIs


@dataclass(frozen=True)
class CliDirs:
    """The dirs of one headless CLI run under ``root``: a git repo to work in, a
    HOME, a TMPDIR, and codex's config dir."""

    root: Path
    repo: Path
    home: Path
    tmp: Path
    codex: Path


def cli_dirs(root: Path) -> CliDirs:
    """Make (or reuse) the run dirs under ``root``; the repo is ``git init``-ed once."""
    dirs = CliDirs(root, root / "repo", root / "home", root / "tmp", root / "codex")
    fresh = not dirs.repo.exists()
    for d in (dirs.repo, dirs.home, dirs.tmp, dirs.codex):
        d.mkdir(parents=True, exist_ok=True)
    if fresh:
        subprocess.run(["git", "init", "-q", str(dirs.repo)], check=True)
    return dirs


def cli_start(argv: list[str], cwd: Path | str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start a CLI headless (no stdin) in its own process group."""
    return subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)


def cli_finish(proc: subprocess.Popen[bytes], timeout_s: float, what: str | None = None) -> subprocess.CompletedProcess:
    """Wait for a ``cli_start``-ed CLI; fail the test if it does not end in ``timeout_s``.

    Whatever the CLI left running in its process group (claude's socat
    bridges, say) is killed either way."""
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid)
        out, err = proc.communicate()
        pytest.fail(f"{what or proc.args[0]} did not finish in {timeout_s}s; "
                    f"stderr: {err.decode(errors='replace')[-2000:]}")
    finally:
        _kill_group(proc.pid)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def cli_run(argv: list[str], cwd: Path | str, env: dict[str, str], timeout_s: float,
            what: str | None = None) -> subprocess.CompletedProcess:
    """``cli_start`` then ``cli_finish``."""
    return cli_finish(cli_start(argv, cwd, env), timeout_s, what)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# ---------------------------------------------------------------- /proc


def proc_state(pid: int) -> str:
    """The state letter of ``/proc/PID/stat`` (``R``, ``S``, ``T``, ``Z``...), or ``"gone"``."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "gone"


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie is dead: only its exit status is left)."""
    return proc_state(pid) not in ("gone", "Z")


def group_members(pgid: int) -> list[int]:
    """Live processes of process group ``pgid``."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            out.append(int(entry.name))
    return out


# ---------------------------------------------------------------- git

_GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]


def git_run(repo: Path | str, *args: str) -> subprocess.CompletedProcess[str]:
    """``git -C REPO ARGS`` with a test identity, whatever its exit code."""
    return subprocess.run([*_GIT, "-C", str(repo), *args], capture_output=True, text=True, check=False, timeout=60)


def git(repo: Path | str, *args: str) -> str:
    """The stdout of ``git -C REPO ARGS`` (as printed); fails the test when git does."""
    res = git_run(repo, *args)
    assert res.returncode == 0, f"git {' '.join(args)} in {repo} exited {res.returncode}: {res.stderr}"
    return res.stdout


# ---------------------------------------------------------------- notifications

class Hook:
    """A webhook receiver on 127.0.0.1: answers with the statuses in ``script`` (then 200).

    ``posts`` holds each POST as ``(body, headers)``; ``bodies()`` just the bodies."""

    def __init__(self, script: list[int] | None = None) -> None:
        self.script = list(script or [])
        self.posts: list[tuple[dict, dict]] = []
        hook = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hook.posts.append((json.loads(body), dict(self.headers)))
                status = hook.script.pop(0) if hook.script else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def bodies(self) -> list[dict]:
        return [body for body, _ in list(self.posts)]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def notify_recorder(path: Path) -> list[str]:
    """A notify command that appends its stdin (one JSON document) as one line to ``path``."""
    code = f"import sys; open({str(path)!r}, 'ab').write(sys.stdin.buffer.read() + b'\\n')"
    return [sys.executable, "-c", code]


def recorded(path: Path) -> list[dict]:
    """What a ``notify_recorder`` command was told so far."""
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def gone(pid: int) -> bool:
    """The process is dead: no /proc entry, or a zombie nobody has reaped yet."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True
