"""orchctl's command line: global options anywhere, busy vs not running, watch's exit codes,
client-side checks of plans and limits, --version.

Real daemons, real sockets; the only fake is a unix socket that accepts and never answers
(a process boundary: what a hung daemon looks like from outside).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchd import __version__
from tests.conftest import GIT_ENV, Daemon, fake, wait_for, write_plan

CTL = [sys.executable, "-m", "orchctl.cli"]


def _env(**extra: str) -> dict[str, str]:
    """orchctl's environment: no ORCHD_RUNTIME_DIR, and a default runtime dir where no daemon is,
    so an ignored --runtime-dir shows as exit 3 naming the wrong place."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHD_")}
    env["XDG_RUNTIME_DIR"] = "/nonexistent-orchctl-test"
    env.update(extra)
    return env


def run(*args: str, input: bytes | None = None, timeout: float = 60, env: dict | None = None):
    return subprocess.run([*CTL, *args], capture_output=True, timeout=timeout, input=input, env=env or _env())


def both(rt: Path, *args: str, json_: bool = True):
    """The same command with the global options before, then after the subcommand."""
    g = ["--runtime-dir", str(rt)] + (["--json"] if json_ else [])
    return run(*g, *args), run(*args, *g)


# ---------------------------------------------------------------- a daemon shared by this module

@pytest.fixture(scope="module")
def shared():
    top = Path(tempfile.mkdtemp(prefix="o", dir="/tmp"))
    repo = top / "target"
    repo.mkdir()
    genv = {**os.environ, **GIT_ENV}
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True, env=genv)
    (repo / "README.md").write_text("target repo\n")
    subprocess.run(["git", "-C", str(repo), "add", "-A"], check=True, env=genv)
    subprocess.run(["git", "-C", str(repo), "commit", "-qm", "init"], check=True, env=genv)
    (top / "state").mkdir()
    d = Daemon(top / "state", top / "rt").start()
    d.repo = repo
    d.top = top
    try:
        yield d
    finally:
        code = d.stop()
        shutil.rmtree(top, ignore_errors=True)
        assert code == 0, f"daemon exited {code} on SIGTERM:\n{d.log()[-3000:]}"


def _submit(d: Daemon, tmp_path: Path, *ops: str) -> str:
    plan = write_plan(tmp_path / f"plan-{time.monotonic_ns()}.json", [{"name": "w", "agent": "command", "argv": fake(*ops)}])
    return d.ctl_json("submit", "--plan", str(plan), "--target", str(d.repo))["session"]


# ---------------------------------------------------------------- 1. global options anywhere

FAMILIES = [
    ["status"], ["status", "s-1"],
    ["submit", "a task", "--target", "/tmp"],
    ["pause", "s-1"], ["resume", "s-1"], ["stop", "s-1"], ["review", "s-1"], ["clean", "s-1"],
    ["answer", "s-1", "yes"],
    ["watch"], ["watch", "s-1", "--until-done"], ["logs", "s-1"],
]


@pytest.mark.parametrize("args", FAMILIES, ids=lambda a: " ".join(a))
def test_runtime_dir_and_json_before_or_after_the_subcommand_name_the_same_daemon(args, short_tmp):
    rt = short_tmp / "none"
    for res in both(rt, *args):
        assert res.returncode == 3, res.stderr
        assert res.stderr.decode().strip() == f"orchd is not running at ipc://{rt}/control: start it with 'orchd run'"
        assert json.loads(res.stdout)["error"]["code"] == "unreachable"


def test_status_with_options_before_or_after(shared, tmp_path):
    sid = _submit(shared, tmp_path, "exit:0")
    shared.wait_session(sid)
    for args in (["status"], ["status", sid]):
        before, after = both(shared.runtime_dir, *args)
        assert before.returncode == after.returncode == 0, (before.stderr, after.stderr)
        assert json.loads(before.stdout) == json.loads(after.stdout)
    before, after = both(shared.runtime_dir, "status", sid, json_=False)
    assert before.stdout == after.stdout and sid in before.stdout.decode() and not before.stdout.startswith(b"{")


def test_submit_with_options_before_or_after(shared, tmp_path):
    plan = write_plan(tmp_path / "plan.json", [{"name": "w", "agent": "command", "argv": fake("exit:0")}])
    before, after = both(shared.runtime_dir, "submit", "--plan", str(plan), "--target", str(shared.repo))
    assert before.returncode == after.returncode == 0, (before.stderr, after.stderr)
    sessions = [json.loads(r.stdout)["session"] for r in (before, after)]
    assert sessions[0] != sessions[1]
    for sid in sessions:
        assert shared.wait_session(sid)["state"] == "done"


def test_session_commands_with_options_before_or_after(shared, tmp_path):
    marker = tmp_path / "started"
    sid = _submit(shared, tmp_path, f"touch:{marker}", "hang")
    wait_for(marker.exists, 30, "the agent to start")
    pause = run("--runtime-dir", str(shared.runtime_dir), "--json", "pause", sid)
    assert pause.returncode == 0 and json.loads(pause.stdout)["ok"] is True, pause.stderr
    wait_for(lambda: shared.status(sid)["state"] == "paused", 10, "the session to pause")
    resume = run("resume", sid, "--runtime-dir", str(shared.runtime_dir), "--json")
    assert resume.returncode == 0 and json.loads(resume.stdout)["ok"] is True, resume.stderr
    wait_for(lambda: shared.status(sid)["state"] == "running", 10, "the session to resume")
    for before_after in both(shared.runtime_dir, "answer", sid, "yes"), both(shared.runtime_dir, "review", sid):
        assert [r.returncode for r in before_after] == [1, 1]
        assert json.loads(before_after[0].stdout) == json.loads(before_after[1].stdout)
    stop = run("--json", "stop", sid, "--runtime-dir", str(shared.runtime_dir))
    assert stop.returncode == 0, stop.stderr
    assert shared.wait_session(sid)["state"] == "stopped"


def test_watch_and_logs_with_options_before_or_after(shared, tmp_path):
    sid = _submit(shared, tmp_path, "line:hello", "err:a complaint", "exit:0")
    shared.wait_session(sid)
    before, after = both(shared.runtime_dir, "watch", sid, "--until-done")
    assert before.returncode == after.returncode == 0, (before.stderr, after.stderr)
    assert before.stdout == after.stdout
    assert json.loads(before.stdout.splitlines()[-1])["state"] == "done"
    before, after = both(shared.runtime_dir, "logs", sid)
    assert before.returncode == after.returncode == 0
    assert before.stdout == after.stdout and b"a complaint" in before.stdout


def test_parse_takes_json_before_or_after(tmp_path):
    src = tmp_path / "out.txt"
    src.write_text('plain text\n{"kind": "agent.usage", "input_tokens": 3}\n')
    before, after = run("--json", "parse", "--agent", "command", str(src)), \
        run("parse", "--agent", "command", str(src), "--json")
    assert before.returncode == after.returncode == 0 and before.stdout == after.stdout
    assert [json.loads(x)["kind"] for x in before.stdout.splitlines()][:2] == ["agent.text", "agent.usage"]


def test_version_anywhere():
    for args in (["--version"], ["status", "--version"]):
        res = run(*args)
        assert res.returncode == 0 and res.stdout.decode() == f"orchctl {__version__}\n", res.stderr
    res = run("--json", "--version")
    assert json.loads(res.stdout) == {"version": __version__, "protocol": 1}


# ---------------------------------------------------------------- 2. busy is not "not running"

class Mute:
    """A unix socket at the control path that accepts connections and never answers."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(16)
        self.conns: list[socket.socket] = []
        self.accepted = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            self.accepted.set()

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(5)
        for c in self.conns:
            c.close()


def test_a_daemon_that_accepts_but_does_not_answer_is_busy_not_gone(short_tmp):
    rt = short_tmp / "rt"
    rt.mkdir()
    mute = Mute(rt / "control")
    try:
        for args in (["--timeout", "1", "status"], ["watch", "s-1", "--timeout", "1"],
                     ["stop", "s-1", "--timeout", "1"]):
            t0 = time.monotonic()
            res = run(*args, "--runtime-dir", str(rt), timeout=30)
            elapsed = time.monotonic() - t0
            assert res.returncode == 1, (args, res.stderr)
            assert res.stderr.decode().splitlines() == [
                f"orchd at ipc://{rt}/control did not answer within 1 s (it is running but busy)"]
            assert 1.0 <= elapsed < 5.0, elapsed
        assert mute.accepted.is_set()
        res = run("status", "--json", "--timeout", "0.5", "--runtime-dir", str(rt))
        assert res.returncode == 1 and json.loads(res.stdout)["error"]["code"] == "timeout"
    finally:
        mute.close()


def test_a_stopped_daemon_is_busy_and_answers_again_once_continued(daemon):
    os.kill(daemon.proc.pid, signal.SIGSTOP)
    try:
        res = run("status", "--timeout", "1", "--runtime-dir", str(daemon.runtime_dir), timeout=30)
        assert res.returncode == 1
        assert "did not answer within 1 s (it is running but busy)" in res.stderr.decode()
        assert "not running" not in res.stderr.decode()
    finally:
        os.kill(daemon.proc.pid, signal.SIGCONT)
    assert daemon.ctl("status", "--json").returncode == 0


def test_a_killed_daemon_is_not_running_within_2s(daemon_factory):
    d = daemon_factory()
    d.kill9()
    assert (d.runtime_dir / "control").exists()  # the socket file stays behind
    t0 = time.monotonic()
    res = run("status", "--runtime-dir", str(d.runtime_dir))
    assert res.returncode == 3 and time.monotonic() - t0 < 2.0
    assert res.stderr.decode().startswith("orchd is not running at ipc://")


def test_a_tcp_endpoint_without_keys_is_exit_3_at_once_and_says_it_needs_keys():
    # no daemon serves plaintext tcp: orchctl says so before it sends anything (orchd.bus refuses it)
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    t0 = time.monotonic()
    res = run("status", env=_env(ORCHD_CONTROL_ENDPOINT=f"tcp://127.0.0.1:{port}"))
    assert res.returncode == 3 and time.monotonic() - t0 < 2.0, res.stderr
    assert res.stderr.decode().strip() == (
        f"tcp://127.0.0.1:{port}: a tcp endpoint needs the server's public key (CURVE): "
        "name the daemon with --profile, or with --endpoint, --server-key and --client-key")


# ---------------------------------------------------------------- 3, 4. watch: unknown session, exit codes

def test_watch_of_an_unknown_session_is_not_found(shared):
    for extra in ([], ["--until-done"]):
        t0 = time.monotonic()
        res = shared.ctl("watch", "s-nope", *extra, check=False, timeout=30)
        assert res.returncode == 1 and time.monotonic() - t0 < 10
        assert res.stderr.decode().strip().endswith("[not_found]")
    res = shared.ctl("watch", "s-nope", "--json", check=False, timeout=30)
    assert res.returncode == 1 and json.loads(res.stdout)["error"]["code"] == "not_found"


def test_watch_until_done_without_a_session_is_a_usage_error(shared):
    res = shared.ctl("watch", "--until-done", check=False, timeout=30)
    assert res.returncode == 2
    assert res.stderr.decode().splitlines() == ["orchctl: watch --until-done needs a SESSION (which session's end to wait for)"]
    res = shared.ctl("watch", "--since", "-1", check=False, timeout=30)
    assert res.returncode == 2 and "--since" in res.stderr.decode()


def test_watch_until_done_exit_code_says_how_the_session_ended(shared, tmp_path):
    done = _submit(shared, tmp_path, "line:fine", "exit:0")
    failed = _submit(shared, tmp_path, "line:trying", "exit:7")
    marker = tmp_path / "up"
    stopped = _submit(shared, tmp_path, f"touch:{marker}", "hang")
    wait_for(marker.exists, 30, "the agent to start")
    live = subprocess.Popen([*CTL, "watch", stopped, "--until-done", "--json", "--runtime-dir", str(shared.runtime_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
    try:
        shared.ctl("stop", stopped)
        out, err = live.communicate(timeout=60)
    finally:
        live.kill()
    assert live.returncode == 1, err
    assert json.loads(out.splitlines()[-1])["state"] == "stopped"
    lines = err.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"orchctl: session {stopped} ended stopped"), lines
    for sid, code, state in ((done, 0, "done"), (failed, 1, "failed")):
        res = shared.ctl("watch", sid, "--until-done", "--json", check=False)
        events = [json.loads(x) for x in res.stdout.splitlines()]
        assert res.returncode == code, res.stderr
        assert events[-1]["kind"] == "session.state" and events[-1]["state"] == state
        assert any(e["kind"] == "worker.exited" for e in events)  # printed everything before exiting
        if code:
            assert res.stderr.decode().startswith(f"orchctl: session {sid} ended {state}")
        # --since past the end: nothing to print, the status says how it ended
        res = shared.ctl("watch", sid, "--until-done", "--since", str(events[-1]["seq"]), check=False)
        assert res.returncode == code and res.stdout == b""


def test_watch_until_done_of_an_escalated_session_is_exit_1(shared, tmp_path):
    plan = write_plan(tmp_path / "plan.json", [
        {"name": "left", "agent": "command", "argv": fake("write:shared.txt:left version", "exit:0")},
        {"name": "right", "agent": "command", "argv": fake("write:shared.txt:right version", "exit:0")}])
    sid = shared.ctl_json("submit", "--plan", str(plan), "--target", str(shared.repo))["session"]
    res = shared.ctl("watch", sid, "--until-done", "--json", check=False)
    assert res.returncode == 1
    assert json.loads(res.stdout.splitlines()[-1])["state"] == "escalated"


# ---------------------------------------------------------------- 6. plans and limits checked before sending

def _submit_offline(tmp_path: Path, *args: str):
    """submit against a runtime dir with no daemon: a check that passes would end in exit 3."""
    return run("submit", "task", "--target", str(tmp_path), "--runtime-dir", str(tmp_path / "none"), *args)


def _one_line_usage_error(res, start: str) -> None:
    assert res.returncode == 2, res.stderr
    lines = res.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith(start), lines
    assert b"Traceback" not in res.stderr


@pytest.mark.parametrize("limit,start", [
    ("stall_s=abc", "orchctl: invalid limit stall_s=abc: "),
    ("max_turns=1.5", "orchctl: invalid limit max_turns=1.5: "),
    ("stall_s=none", "orchctl: invalid limit stall_s=none: "),
    ("stall_s=nan", "orchctl: invalid limit stall_s=nan: "),
    ("wall_time_s=-5", "orchctl: invalid limit wall_time_s=-5: "),
    ("max_tokens=1e400", "orchctl: invalid limit max_tokens=1e400: "),
    ("bogus=1", "orchctl: unknown limit 'bogus' (known: wall_time_s, stall_s"),
    ("stall_s", "orchctl: --limit wants KEY=VALUE"),
])
def test_bad_limits_are_usage_errors_before_anything_is_sent(tmp_path, limit, start):
    _one_line_usage_error(_submit_offline(tmp_path, "--limit", limit), start)


def test_good_limits_pass_the_check(tmp_path):
    res = _submit_offline(tmp_path, "--limit", "stall_s=30", "--limit", "max_turns=none")
    assert res.returncode == 3, res.stderr  # checked, then the (absent) daemon was asked


def test_limits_reach_the_daemon_as_typed_json(shared, tmp_path):
    plan = write_plan(tmp_path / "plan.json", [{"name": "w", "agent": "command", "argv": fake("exit:0")}])
    sid = shared.ctl_json("submit", "--plan", str(plan), "--target", str(shared.repo), "--limit", "stall_s=30",
                          "--limit", "max_turns=5", "--limit", "max_cost_usd=none", "--limit", "max_tokens=2000")["session"]
    events = [json.loads(x) for x in shared.ctl("watch", sid, "--until-done", "--json").stdout.splitlines()]
    limits = next(e for e in events if e["kind"] == "session.submitted")["limits"]
    assert limits == {"stall_s": 30.0, "max_turns": 5, "max_cost_usd": None, "max_tokens": 2000}
    assert type(limits["stall_s"]) is float and type(limits["max_turns"]) is int


@pytest.mark.parametrize("content,name,start", [
    ("{not json", "plan.json", "orchctl: "),
    ("[]", "plan.json", "orchctl: "),
    ('{"assignments": [{"name": "a", "agent": "command", "argv": ["x"]}], "colour": "red"}', "plan.json",
     "orchctl: invalid plan "),
    ('{"assignments": [{"name": "a", "agent": "command", "weight": "heavy"}]}', "plan.json", "orchctl: invalid plan "),
    ('{"assignments": [{"agent": "command"}]}', "plan.json", "orchctl: invalid plan "),
    ('{"tasks": []}', "plan.json", "orchctl: invalid plan "),
    ("[[assignments]]\nname = 'a'\nagent = 3\n", "plan.toml", "orchctl: invalid plan "),
    ("[[assignments]\n", "plan.toml", "orchctl: "),
])
def test_malformed_plan_files_are_usage_errors_before_anything_is_sent(tmp_path, content, name, start):
    plan = tmp_path / name
    plan.write_text(content)
    _one_line_usage_error(_submit_offline(tmp_path, "--plan", str(plan)), start)


def test_a_well_formed_toml_plan_runs(shared, tmp_path):
    plan = tmp_path / "plan.toml"
    argv = ", ".join(json.dumps(a) for a in fake("line:from toml", "exit:0"))
    plan.write_text(f"[[assignments]]\nname = 'w'\nagent = 'command'\nargv = [{argv}]\n")
    sid = shared.ctl_json("submit", "--plan", str(plan), "--target", str(shared.repo))["session"]
    assert shared.ctl("watch", sid, "--until-done").returncode == 0


# ---------------------------------------------------------------- a malformed event is the daemon's fault

@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200) | st.builds(lambda t, js: t + b" k " + js, st.binary(max_size=10),
                                           st.binary(max_size=100)))
def test_any_event_frame_decodes_to_an_item_or_a_wire_error(frame):
    from orchctl.cursor import Item
    from orchctl.watch import _frame_item
    from orchd.wire import WireError
    try:
        item = _frame_item(frame)
    except WireError as exc:
        assert exc.code in ("bad_frames", "bad_json")
    else:
        assert isinstance(item, Item) and isinstance(item.seq, int)


def test_event_frames_decode():
    from orchctl.watch import _frame_item
    from orchd.wire import WireError
    item = _frame_item(b's-1 agent.text {"seq":7,"prev":5,"session":"s-1","kind":"agent.text","text":"hi there"}')
    assert (item.seq, item.prev, item.data[1].kind) == (7, 5, "agent.text")
    assert _frame_item(b'- daemon.started {"seq":1,"kind":"daemon.started"}').prev == 0
    for frame, code in ((b"garbage", "bad_frames"), (b"s-1 k {not json", "bad_json"), (b's-1 k {"kind":"x"}', "bad_json")):
        with pytest.raises(WireError) as err:
            _frame_item(frame)
        assert err.value.code == code
