"""End to end through real daemons: submit a plan of command assignments, watch, status."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import fake, wait_for, write_plan
from tests.helpers import proc_state, watch_until_done


def test_plan_of_commands_runs_end_to_end(daemon, git_repo, tmp_path):
    plan = write_plan(tmp_path / "plan.json", [
        {"name": "first", "agent": "command",
         "argv": fake("line:hello", "line:MILESTONE: half way", "write:first.txt:one", "exit:0")},
        {"name": "second", "agent": "command", "after": ["first"],
         "argv": fake("json:3", "err:a warning", "exit:0")},
        {"name": "third", "agent": "command", "after": ["first"], "argv": fake("line:DONE: all good", "exit:0")},
    ])
    sub = daemon.ctl_json("submit", "--plan", str(plan), "--target", str(git_repo))
    sid = sub["session"]
    events = watch_until_done(daemon, sid, timeout_s=60)
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(set(seqs)), "watch printed an event twice or out of order"
    assert all(e["session"] == sid for e in events)
    kinds = [(e.get("worker"), e["kind"]) for e in events]
    assert ("first", "worker.milestone") in kinds
    assert ("third", "worker.done") in kinds
    assert ("second", "worker.log") in kinds
    assert sum(1 for e in events if e["kind"] == "agent.output" and e["worker"] == "second") == 3
    assert events[-1]["kind"] == "session.state" and events[-1]["state"] == "done"
    # second and third both waited for first
    first_exit = next(e["seq"] for e in events if e["kind"] == "worker.exited" and e["worker"] == "first")
    for name in ("second", "third"):
        start = next(e["seq"] for e in events if e["kind"] == "worker.started" and e["worker"] == name)
        assert start > first_exit
    status = daemon.status(sid)
    assert status["id"] == sid and status["state"] == "done"
    assert {w["name"]: (w["state"], w["exit_code"]) for w in status["workers"]} == {
        "first": ("done", 0), "second": ("done", 0), "third": ("done", 0)}
    assert all(w["host"] is None for w in status["workers"])  # run here, not on an agent host
    # both started from first's work (second's clone was checked out while first was committed)
    trees = {w["name"]: Path(w["worktree"]) for w in status["workers"]}
    assert (trees["first"] / "first.txt").read_text().strip() == "one"
    for name in ("second", "third"):
        assert (trees[name] / "first.txt").read_text() == (trees["first"] / "first.txt").read_text()
    # every event of the session is in the log, exactly what a late watcher sees
    again = watch_until_done(daemon, sid)
    assert again == events


def test_agents_run_agent_nice_levels_below_the_daemon(daemon_factory, git_repo, tmp_path):
    d = daemon_factory(config="agent_nice = 3\n")
    code = "import os; print('nice', os.getpriority(os.PRIO_PROCESS, 0))"
    plan = write_plan(tmp_path / "plan.json", [{"name": "n", "agent": "command", "argv": [sys.executable, "-c", code]}])
    sid = d.ctl_json("submit", "--plan", str(plan), "--target", str(git_repo))["session"]
    texts = [e["text"] for e in watch_until_done(d, sid, timeout_s=60) if e["kind"] == "agent.text"]
    assert texts == [f"nice {min(19, os.getpriority(os.PRIO_PROCESS, d.proc.pid) + 3)}"], texts


def test_failed_assignment_fails_session_with_exit_code(daemon, git_repo, tmp_path):
    plan = write_plan(tmp_path / "plan.json", [
        {"name": "bad", "agent": "command", "argv": fake("line:trying", "exit:7")},
        {"name": "never", "agent": "command", "after": ["bad"], "argv": fake("exit:0")},
    ])
    sid = daemon.ctl_json("submit", "--plan", str(plan), "--target", str(git_repo))["session"]
    s = daemon.wait_session(sid)
    assert s["state"] == "failed"
    workers = {w["name"]: w for w in s["workers"]}
    assert workers["bad"]["state"] == "failed" and workers["bad"]["exit_code"] == 7
    assert workers["never"]["state"] == "pending" and workers["never"]["exit_code"] is None


def test_missing_program_is_a_failed_worker_not_a_crash(daemon, git_repo, tmp_path):
    plan = write_plan(tmp_path / "plan.json", [
        {"name": "ghost", "agent": "command", "argv": ["/nonexistent/agent-binary"]}])
    sid = daemon.ctl_json("submit", "--plan", str(plan), "--target", str(git_repo))["session"]
    s = daemon.wait_session(sid)
    assert s["state"] == "failed"
    assert "cannot start" in s["workers"][0]["reason"]
    assert daemon.ctl("status", "--json").returncode == 0


def test_submit_errors_are_exit_1_with_a_code(daemon, tmp_path, git_repo):
    not_repo = tmp_path / "plain"
    not_repo.mkdir()
    plan = write_plan(tmp_path / "plan.json", [{"name": "a", "agent": "command", "argv": fake("exit:0")}])
    res = daemon.ctl("submit", "--plan", str(plan), "--target", str(not_repo), "--json", check=False)
    assert res.returncode == 1
    assert json.loads(res.stdout)["error"]["code"] == "bad_request"
    assert "not a git repository" in json.loads(res.stdout)["error"]["detail"]
    res = daemon.ctl("submit", "--plan", str(plan), "--target", str(tmp_path / "missing"), "--json", check=False)
    assert res.returncode == 1
    bad = write_plan(tmp_path / "bad.json", [{"name": "a", "agent": "command", "after": ["zzz"], "argv": ["x"]}])
    res = daemon.ctl("submit", "--plan", str(bad), "--target", str(git_repo), "--json", check=False)
    assert res.returncode == 1 and "zzz" in json.loads(res.stdout)["error"]["detail"]
    res = daemon.ctl("status", "s-nope", "--json", check=False)
    assert res.returncode == 1 and json.loads(res.stdout)["error"]["code"] == "not_found"
    res = daemon.ctl("submit", "--target", str(git_repo), "--json", check=False)
    assert res.returncode == 2  # usage: neither task nor plan
    res = daemon.ctl("frobnicate", check=False)
    assert res.returncode == 2


def test_stop_pause_resume(daemon, git_repo, tmp_path):
    marker = tmp_path / "started"
    plan = write_plan(tmp_path / "plan.json", [
        {"name": "long", "agent": "command", "argv": fake("line:working", f"touch:{marker}", "hang")}])
    sid = daemon.ctl_json("submit", "--plan", str(plan), "--target", str(git_repo))["session"]
    wait_for(marker.exists, 30, "the agent to start")
    pid = wait_for(lambda: daemon.status(sid)["workers"][0]["pid"], 10, "the worker pid")
    daemon.ctl("pause", sid)
    wait_for(lambda: daemon.status(sid)["workers"][0]["state"] == "paused", 10, "worker paused")
    assert proc_state(pid) == "T"
    assert daemon.status(sid)["state"] == "paused"
    daemon.ctl("resume", sid)
    wait_for(lambda: proc_state(pid) != "T", 10, "the process to continue")
    assert daemon.status(sid)["state"] == "running"
    res = daemon.ctl("resume", sid, "--json", check=False)
    assert res.returncode == 1 and json.loads(res.stdout)["error"]["code"] == "bad_state"
    daemon.ctl("stop", sid)
    s = daemon.wait_session(sid)
    assert s["state"] == "stopped"
    w = s["workers"][0]
    assert w["state"] == "stopped" and w["signal"] == signal.SIGTERM
    assert not os.path.exists(f"/proc/{pid}") or proc_state(pid) == "Z"


def test_sigterm_stops_agents_and_exits_0(daemon_factory, git_repo, tmp_path):
    d = daemon_factory()
    marker = tmp_path / "started"
    plan = write_plan(tmp_path / "plan.json", [
        {"name": "long", "agent": "command", "argv": fake(f"touch:{marker}", "hang")}])
    sid = d.ctl_json("submit", "--plan", str(plan), "--target", str(git_repo))["session"]
    wait_for(marker.exists, 30, "agent start")
    pid = wait_for(lambda: d.status(sid)["workers"][0]["pid"], 10, "pid")
    t0 = time.monotonic()
    assert d.stop() == 0
    assert time.monotonic() - t0 < 20
    assert proc_state(pid) in ("gone", "Z")
    assert "orchd_stopped" in d.log()
    assert "actor_restarting" not in d.log() and "actor_crashed" not in d.log()


def test_second_daemon_refuses_and_stale_socket_does_not_block(daemon_factory, tmp_path):
    d = daemon_factory()
    argv = [sys.executable, "-m", "orchd.app", "run", "--state-dir", str(tmp_path / "state2"),
            "--runtime-dir", str(d.runtime_dir)]
    res = subprocess.run(argv, capture_output=True, timeout=30)
    assert res.returncode == 1
    assert b"already running" in res.stderr
    assert d.ctl("status", "--json").returncode == 0  # the first one still serves
    d.kill9()
    assert (d.runtime_dir / "control").exists()  # the dead daemon's socket file is left behind
    d2 = type(d)(d.state_dir, d.runtime_dir).start()
    try:
        assert d2.ctl("status", "--json").returncode == 0
    finally:
        assert d2.stop() == 0


def test_runtime_dir_is_private(daemon):
    assert (daemon.runtime_dir.stat().st_mode & 0o777) == 0o700
    for name in ("control", "events"):
        assert (daemon.runtime_dir / name).stat().st_mode & 0o077 == 0


def test_no_daemon_exit_3_within_2s(short_tmp):
    for args in (["status"], ["watch", "--until-done"], ["pause", "s-1"], ["submit", "x", "--target", "/tmp"]):
        t0 = time.monotonic()
        res = subprocess.run([sys.executable, "-m", "orchctl.cli", *args, "--runtime-dir", str(short_tmp / "none")],
                             capture_output=True, timeout=10)
        elapsed = time.monotonic() - t0
        assert res.returncode == 3, (args, res.stderr)
        lines = res.stderr.decode().strip().splitlines()
        assert len(lines) == 1
        assert lines[0].startswith("orchd is not running at ipc://") and "orchd run" in lines[0]
        assert elapsed < 2.0, f"orchctl {args} took {elapsed:.2f}s"


def test_stale_socket_without_daemon_is_exit_3_within_2s(short_tmp):
    import socket
    rt = short_tmp / "rt"
    rt.mkdir()
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(rt / "control"))  # a socket file nobody listens on
    s.close()
    t0 = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "orchctl.cli", "status", "--runtime-dir", str(rt)],
                         capture_output=True, timeout=10)
    assert res.returncode == 3
    assert time.monotonic() - t0 < 2.0


def test_bad_flags_and_config_are_clear_errors(tmp_path, short_tmp):
    base = [sys.executable, "-m", "orchd.app", "run", "--state-dir", str(tmp_path / "s"),
            "--runtime-dir", str(short_tmp / "rt")]
    res = subprocess.run(base + ["--no-such-flag"], capture_output=True, text=True, timeout=30)
    assert res.returncode == 2 and "unrecognized arguments: --no-such-flag" in res.stderr
    cfg = tmp_path / "bad.toml"
    cfg.write_text("max_line_bytes = 'lots'\n")
    res = subprocess.run(base + ["--config", str(cfg)], capture_output=True, text=True, timeout=30)
    assert res.returncode == 2 and "bad configuration" in res.stderr and "max_line_bytes" in res.stderr
    res = subprocess.run(base + ["--config", str(tmp_path / "missing.toml")], capture_output=True, text=True,
                         timeout=30)
    assert res.returncode == 2 and "missing.toml" in res.stderr
    cfg.write_text("this is = = not toml\n")
    res = subprocess.run(base + ["--config", str(cfg)], capture_output=True, text=True, timeout=30)
    assert res.returncode == 2 and "bad configuration" in res.stderr
