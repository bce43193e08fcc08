"""The daemon's shape holds under faults: poison input, injected crashes, a second daemon, big work.

Each test runs a real daemon (tests/conftest.py) and talks to it over its
real control socket; the only fakes are the scripted agent programs.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import zmq

from orchctl.client import Client
from orchd import protocol as p
from orchd import wire
from tests.conftest import GIT_ENV, fake, wait_for, write_plan


def _client(d, timeout_s: float = 10.0) -> Client:
    return Client(f"ipc://{d.runtime_dir}/control", timeout_s=timeout_s)


def _raw_call(d, frame: bytes, timeout_s: float = 5.0) -> p.ControlReply:
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(f"ipc://{d.runtime_dir}/control")
    try:
        sock.send(frame)
        assert sock.poll(int(timeout_s * 1000)), "no reply"
        return wire.decode_reply(sock.recv()).body
    finally:
        sock.close(0)


def _all_events(d) -> list[dict]:
    c = _client(d)
    out, since = [], 0
    try:
        while True:
            r = c.call(p.Replay(since=since, limit=10_000))
            out += [json.loads(bytes(e)) for e in r.events]
            since = r.last_seq
            if not r.more:
                return out
    finally:
        c.close()


def test_second_daemon_on_the_same_state_dir_refuses(daemon, tmp_path, short_tmp):
    res = subprocess.run([sys.executable, "-m", "orchd.app", "run", "--state-dir", str(daemon.state_dir),
                          "--runtime-dir", str(short_tmp / "other")], capture_output=True, timeout=30)
    assert res.returncode == 1
    err = res.stderr.decode().strip()
    assert len(err.splitlines()) == 1 and "state dir" in err and "already running" in err, err
    assert daemon.ctl_json("status")["sessions"] == []  # the first one is unharmed


def test_poison_requests_get_typed_errors_and_the_daemon_serves_on(daemon):
    nested = b'{"v":1,"id":"n","body":{"kind":"submit","target":"/","plan":' + b"[" * 1000 + b"]" * 1000 + b"}}"
    reply = _raw_call(daemon, nested)
    assert isinstance(reply, p.Error) and reply.code in (p.ErrorCode.BAD_JSON, p.ErrorCode.INVALID), reply
    huge = b'{"v":1,"id":"h","body":{"kind":"replay","since":%d}}' % 2**63
    reply = _raw_call(daemon, huge)
    assert isinstance(reply, p.Error) and reply.code == p.ErrorCode.INVALID, reply
    assert isinstance(_raw_call(daemon, wire.encode_request(p.Ping(), "x")), p.Pong)
    assert "Traceback" not in daemon.log()


def test_a_session_whose_launch_raises_fails_alone(daemon_factory, git_repo, tmp_path):
    # a home that cannot be created makes every launch of a command agent raise inside the supervisor
    d = daemon_factory(config='[agents.command]\nhome = "/dev/null/home"\n')
    bad = write_plan(tmp_path / "bad.json", [{"name": "a", "agent": "command", "argv": fake("exit:0")}])
    sid = d.ctl_json("submit", "--plan", str(bad), "--target", str(git_repo))["session"]
    s = d.wait_session(sid, timeout_s=30)
    assert s["state"] == "failed" and "NotADirectoryError" in s["reason"], s
    assert d.ctl_json("status")["sessions"][0]["id"] == sid  # still serving
    assert d.stop() == 0
    d2 = type(d)(d.state_dir, d.runtime_dir).start()  # no crash loop on the stored session
    try:
        assert d2.status(sid)["state"] == "failed"
        assert "actor_restarting" not in d2.log()
    finally:
        assert d2.stop() == 0


def test_a_stored_session_that_raises_does_not_crash_loop(daemon_factory, git_repo, tmp_path):
    """A session in the log that makes the supervisor raise (here: it waits for an assignment
    that does not exist, which submit refuses today but a log may hold) ends failed; the
    daemon serves other sessions, and restarts cleanly."""
    d = daemon_factory(start=False)
    d.state_dir.mkdir(parents=True)
    conn = sqlite3.connect(d.state_dir / "events.sqlite3")
    conn.execute("CREATE TABLE events (seq INTEGER PRIMARY KEY, session TEXT NOT NULL, kind TEXT NOT NULL, "
                 "body BLOB NOT NULL)")
    a = {"name": "a", "agent": "command", "argv": fake("exit:0"), "after": ["ghost"]}
    rows = [{"kind": "session.submitted", "task": "", "target": str(git_repo), "assignments": [a]},
            {"kind": "session.state", "state": "running"}]
    for seq, ev in enumerate(rows, 1):
        body = {"seq": seq, "ts": 1.0, "session": "s-old", "worker": None, "agent": None, "gen": 0, **ev}
        conn.execute("INSERT INTO events VALUES (?,?,?,?)", (seq, "s-old", ev["kind"], json.dumps(body).encode()))
    conn.commit()
    conn.close()
    d.start()
    s = d.wait_session("s-old", timeout_s=10)
    assert s["state"] == "failed" and "KeyError" in s["reason"], s
    good = write_plan(tmp_path / "good.json", [{"name": "b", "agent": "command", "argv": fake("exit:0")}])
    sid = d.ctl_json("submit", "--plan", str(good), "--target", str(git_repo))["session"]
    assert d.wait_session(sid)["state"] == "done"
    assert d.stop() == 0
    d2 = type(d)(d.state_dir, d.runtime_dir).start()
    try:
        assert d2.status("s-old")["state"] == "failed"
    finally:
        assert d2.stop() == 0


def test_injected_supervisor_crash_restarts_it_with_agents_unharmed(daemon_factory, git_repo, tmp_path):
    d = daemon_factory(config="fault_injection = true\n")
    release = tmp_path / "release"
    plan = write_plan(tmp_path / "plan.json", [
        {"name": "w", "agent": "command", "argv": fake("line:before", f"waitfile:{release}", "line:after", "exit:0")}])
    sid = d.ctl_json("submit", "--plan", str(plan), "--target", str(git_repo))["session"]
    pid = wait_for(lambda: d.status(sid)["workers"][0]["pid"], 20, "the agent to start")
    c = _client(d, timeout_s=2.0)
    try:
        assert isinstance(c.call(p.InjectFault(actor="supervisor")), p.Ok)
        crashed_at = time.monotonic()
        wait_for(lambda: "actor_restarting" in d.log(), 5, "the supervisor to restart")
        c.close()
        c = _client(d, timeout_s=1.0)
        assert isinstance(c.call(p.Ping()), p.Pong)
        assert time.monotonic() - crashed_at < 1.0  # serving again within a second
    finally:
        c.close()
    w = d.status(sid)["workers"][0]
    assert w["pid"] == pid and w["state"] == "running" and os.path.exists(f"/proc/{pid}")
    release.touch()
    s = d.wait_session(sid, timeout_s=30)
    assert s["state"] == "done" and s["workers"][0]["gen"] == 0, s  # not relaunched
    events = _all_events(d)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    texts = [e["text"] for e in events if e["kind"] == "agent.text" and e["session"] == sid]
    assert texts == ["before", "after"]
    assert d.stop() == 0


def test_fault_injection_is_refused_unless_enabled(daemon):
    c = _client(daemon)
    try:
        r = c.call(p.InjectFault(actor="supervisor"))
        assert isinstance(r, p.Error) and r.code == p.ErrorCode.BAD_STATE
    finally:
        c.close()


def test_submit_of_500_assignments_is_answered_within_1s(daemon, git_repo, tmp_path):
    names = [f"a{i}" for i in range(500)]
    plan = {"assignments": [{"name": n, "agent": "command", "argv": fake("exit:0"),
                             "after": [names[i - 1]] if i else []} for i, n in enumerate(names)]}
    c = _client(daemon)
    try:
        c.call(p.Ping())
        t0 = time.monotonic()
        r = c.call(p.Submit(target=str(git_repo), plan=plan))
        took = time.monotonic() - t0
        assert isinstance(r, p.SubmitReply) and len(r.assignments) == 500, r
        assert took < 1.0, f"submit took {took:.2f} s"
        assert isinstance(c.call(p.Stop(session=r.session)), p.Ok)
    finally:
        c.close()
    assert daemon.wait_session(r.session, timeout_s=60)["state"] == "stopped"


def _pings(d, stop: threading.Event, min_count: int) -> list[float]:
    c = _client(d, timeout_s=5.0)
    lat = []
    try:
        while not stop.is_set() or len(lat) < min_count:
            t0 = time.perf_counter()
            assert isinstance(c.call(p.Ping()), p.Pong)
            lat.append(time.perf_counter() - t0)
            time.sleep(0.005)
    finally:
        c.close()
    return lat


def _p99(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * 0.99))]


def test_control_answers_while_a_big_worktree_is_made(daemon, tmp_path):
    repo = tmp_path / "big"
    repo.mkdir()
    env = {**os.environ, **GIT_ENV}
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True, env=env)
    for i in range(500):
        sub = repo / f"d{i:03d}"
        sub.mkdir()
        for j in range(100):
            (sub / f"f{j:03d}.txt").write_text(f"{i} {j}\n")
    subprocess.run(["git", "-C", str(repo), "add", "-A"], check=True, env=env)
    subprocess.run(["git", "-C", str(repo), "commit", "-qm", "50k files"], check=True, env=env)
    plan = write_plan(tmp_path / "plan.json", [{"name": "w", "agent": "command", "argv": fake("exit:0")}])
    sid = daemon.ctl_json("submit", "--plan", str(plan), "--target", str(repo))["session"]
    stop = threading.Event()
    lat = []
    t = threading.Thread(target=lambda: lat.extend(_pings(daemon, stop, 50)))
    t.start()
    try:
        # status works while the worktree is being made (the worker has not started yet)
        st = daemon.status(sid)
        assert st["workers"][0]["state"] == "pending", st
        daemon.wait_session(sid, timeout_s=180)
    finally:
        stop.set()
        t.join(60)
    assert _p99(lat) < 0.05, f"ping p99 {_p99(lat) * 1000:.1f} ms over {len(lat)} pings"


def test_control_answers_while_a_million_events_are_replayed(daemon_factory):
    d = daemon_factory(start=False)
    d.state_dir.mkdir(parents=True)
    conn = sqlite3.connect(d.state_dir / "events.sqlite3")
    conn.execute("CREATE TABLE events (seq INTEGER PRIMARY KEY, session TEXT NOT NULL, kind TEXT NOT NULL, "
                 "body BLOB NOT NULL)")
    pad = "x" * 100
    conn.executemany("INSERT INTO events VALUES (?,?,?,?)", (
        (i, "s-big", "agent.text", b'{"seq":%d,"ts":1.0,"session":"s-big","worker":"w","agent":"claude",'
         b'"gen":0,"kind":"agent.text","text":"%s"}' % (i, pad.encode())) for i in range(1, 1_000_001)))
    conn.commit()
    conn.close()
    d.start()
    replayed = []

    def replay_all():
        c = _client(d, timeout_s=30)
        since = 0
        try:
            while True:
                r = c.call(p.Replay(since=since, limit=10_000))
                replayed.append(len(r.events))
                since = r.last_seq
                if not r.more:
                    return
        finally:
            c.close()

    stop = threading.Event()
    lat = []
    pinger = threading.Thread(target=lambda: lat.extend(_pings(d, stop, 50)))
    pinger.start()
    try:
        replay_all()
    finally:
        stop.set()
        pinger.join(60)
    assert sum(replayed) >= 1_000_000
    assert d.ctl_json("status")["sessions"] == []
    assert _p99(lat) < 0.05, f"ping p99 {_p99(lat) * 1000:.1f} ms over {len(lat)} pings"
    assert d.stop() == 0


def test_submit_validates_scenario_and_limits_at_the_daemon(daemon, git_repo):
    """A client other than orchctl gets the same checks: nothing bad is ever stored."""
    c = _client(daemon)
    plan = {"assignments": [{"name": "a", "agent": "command", "argv": ["true"]}]}
    try:
        r = c.call(p.Submit(target=str(git_repo), plan=plan, rehearse=True,
                            scenario={"agents": {"claude": [{"tol": "write_file"}]}}))
        assert isinstance(r, p.Error) and r.code == p.ErrorCode.BAD_REQUEST and "tol" in r.detail, r
        r = c.call(p.Submit(target=str(git_repo), plan=plan, limits={"stall_s": "abc"}))
        assert isinstance(r, p.Error) and r.code == p.ErrorCode.BAD_REQUEST and "stall_s" in r.detail, r
        r = c.call(p.Submit(target=str(git_repo), plan=plan, limits={"nope": 1}))
        assert isinstance(r, p.Error) and "nope" in r.detail, r
        r = c.call(p.Submit(target=str(git_repo), plan=plan, limits={"stall_s": "30"}))
        assert isinstance(r, p.SubmitReply), r
        sid = r.session
    finally:
        c.close()
    daemon.wait_session(sid)
    submitted = [e for e in _all_events(daemon) if e["kind"] == "session.submitted"]
    assert len(submitted) == 1 and submitted[0]["limits"] == {"stall_s": 30.0}  # stored validated


@pytest.mark.parametrize("key", ["rerun", "retry"])  # retry (idempotent) implies rerun
def test_a_paused_session_stays_paused_across_a_daemon_restart(daemon_factory, git_repo, tmp_path, key):
    d = daemon_factory()
    plan = write_plan(tmp_path / "plan.json", [
        {"name": "w", "agent": "command", key: True, "argv": fake("line:started", "hang")}])
    sid = d.ctl_json("submit", "--plan", str(plan), "--target", str(git_repo))["session"]
    wait_for(lambda: d.status(sid)["workers"][0]["pid"], 20, "the agent to start")
    d.ctl("pause", sid)
    d.kill9()
    d2 = type(d)(d.state_dir, d.runtime_dir).start()
    try:
        w = wait_for(lambda: (w := d2.status(sid)["workers"][0])["gen"] == 1 and w["state"] == "paused" and w,
                     20, "the relaunched worker to wait, paused")
        assert d2.status(sid)["state"] == "paused" and w["pid"] is None  # nothing started
        d2.ctl("resume", sid)
        wait_for(lambda: d2.status(sid)["workers"][0]["pid"], 20, "the agent to start after resume")
        d2.ctl("stop", sid)
        assert d2.wait_session(sid)["state"] == "stopped"
    finally:
        assert d2.stop() == 0


def test_a_command_is_not_run_again_after_a_daemon_crash_unless_allowed(daemon_factory, git_repo, tmp_path):
    d = daemon_factory()
    plan = write_plan(tmp_path / "plan.json", [
        {"name": "w", "agent": "command", "argv": fake("line:started", "hang")}])
    sid = d.ctl_json("submit", "--plan", str(plan), "--target", str(git_repo))["session"]
    wait_for(lambda: d.status(sid)["workers"][0]["pid"], 20, "the agent to start")
    d.kill9()
    d2 = type(d)(d.state_dir, d.runtime_dir).start()
    try:
        s = d2.wait_session(sid, timeout_s=30)
        assert s["state"] == "failed" and s["workers"][0]["gen"] == 0, s
        assert "rerun" in s["workers"][0]["reason"]
    finally:
        assert d2.stop() == 0


def test_injected_journal_crash_loses_nothing_and_logging_goes_on(daemon_factory, git_repo, tmp_path):
    d = daemon_factory(config="fault_injection = true\n")
    release = tmp_path / "release"
    plan = write_plan(tmp_path / "plan.json", [
        {"name": "w", "agent": "command", "argv": fake("json:2000", f"waitfile:{release}", "json:2000", "exit:0")}])
    sid = d.ctl_json("submit", "--plan", str(plan), "--target", str(git_repo))["session"]
    pid = wait_for(lambda: d.status(sid)["workers"][0]["pid"], 20, "the agent to start")
    c = _client(d, timeout_s=2.0)
    try:
        assert isinstance(c.call(p.InjectFault(actor="journal")), p.Ok)
        wait_for(lambda: "actor_restarting" in d.log(), 5, "the journal to restart")
        assert isinstance(c.call(p.Ping()), p.Pong)
    finally:
        c.close()
    assert d.status(sid)["workers"][0]["pid"] == pid
    release.touch()
    s = d.wait_session(sid, timeout_s=60)
    assert s["state"] == "done", s
    events = _all_events(d)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    outputs = [e["data"]["i"] for e in events if e["kind"] == "agent.output" and e["session"] == sid]
    assert outputs == list(range(2000)) * 2  # every line of both floods, once, in order
    assert d.stop() == 0
