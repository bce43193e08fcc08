"""Agent hosts on one machine (ipc link): placement, bundles both ways, events as if local, orchctl hosts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

from tests.conftest import fake, wait_for, write_plan
from tests.helpers import git, watch_until_done


def start_host(name: str, endpoint: str, state_dir, slots: int = 1, log=None, extra=()) -> subprocess.Popen:
    argv = [sys.executable, "-m", "orchd.app", "host", "--connect", endpoint, "--slots", str(slots), "--name", name,
            "--state-dir", str(state_dir), "--heartbeat-s", "0.2", *extra]
    env = {**os.environ, "ORCHD_LOG_FORMAT": "json"}
    return subprocess.Popen(argv, env=env, stdout=log or subprocess.DEVNULL, stderr=subprocess.STDOUT,
                            start_new_session=True)


def stop_host(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def hosts(d) -> list[dict]:
    return json.loads(d.ctl("hosts", "--json").stdout)["hosts"]


def test_session_runs_on_two_hosts_over_ipc(daemon_factory, git_repo, tmp_path, short_tmp):
    link = f"ipc://{short_tmp}/link"
    d = daemon_factory(f'host_link_endpoint = "{link}"\n[placement]\nheartbeat_s = 0.2\nhost_timeout_s = 5\n'
                       '[placement.agents]\ncommand = "hosts"\n')
    procs = [start_host(n, link, tmp_path / n, log=open(tmp_path / f"{n}.log", "ab")) for n in ("h1", "h2")]
    try:
        wait_for(lambda: len(hosts(d)) == 2, 30, "two hosts")
        plan = write_plan(tmp_path / "plan.json", [
            {"name": "a", "agent": "command", "argv": fake("line:on a", "write:a.txt:from a", "exit:0")},
            {"name": "b", "agent": "command", "argv": fake("line:on b", "write:b.txt:from b", "exit:0")},
        ])
        sid = d.ctl_json("submit", "--plan", str(plan), "--target", str(git_repo))["session"]
        events = watch_until_done(d, sid, timeout_s=60)
        assert events[-1]["kind"] == "session.state" and events[-1]["state"] == "done", events[-5:]
        placed = {e["worker"]: e.get("host") for e in events if e["kind"] == "worker.launching"}
        assert sorted(placed.values()) == ["h1", "h2"], placed
        seqs = [e["seq"] for e in events]
        assert seqs == sorted(set(seqs))
        for name in ("a", "b"):
            kinds = [e["kind"] for e in events if e.get("worker") == name]
            assert kinds.count("worker.started") == 1 and kinds.count("worker.exited") == 1, kinds
            assert any(e["kind"] == "agent.output" and e.get("text") == f"on {name}" for e in events
                       if e.get("worker") == name) or f"on {name}" in json.dumps(events)
        assert git(git_repo, "show", f"orchd/{sid}:a.txt").strip() == "from a"
        assert git(git_repo, "show", f"orchd/{sid}:b.txt").strip() == "from b"
    finally:
        for p_ in procs:
            stop_host(p_)


def test_stop_pause_resume_reach_a_run_on_a_host(daemon_factory, git_repo, tmp_path, short_tmp):
    link = f"ipc://{short_tmp}/link"
    d = daemon_factory(f'host_link_endpoint = "{link}"\n[placement]\nheartbeat_s = 0.2\n'
                       '[placement.agents]\ncommand = "hosts"\n')
    host = start_host("h1", link, tmp_path / "h1", log=open(tmp_path / "h1.log", "ab"))
    try:
        wait_for(lambda: len(hosts(d)) == 1, 30, "the host")
        pidfile = tmp_path / "pid"
        plan = write_plan(tmp_path / "plan.json", [
            {"name": "long", "agent": "command", "argv": fake("line:working", f"bg:{pidfile}", "hang")}])
        sid = d.ctl_json("submit", "--plan", str(plan), "--target", str(git_repo))["session"]
        wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), 30, "the agent to start on the host")
        assert hosts(d)[0]["busy"] == 1 and hosts(d)[0]["running"] == [f"{sid}/long/0"]
        assert d.status(sid)["workers"][0]["host"] == "h1"
        assert b"command@h1" in d.ctl("status", sid).stdout
        d.ctl("pause", sid)
        wait_for(lambda: d.status(sid)["workers"][0]["state"] == "paused", 30, "the run to pause")
        d.ctl("resume", sid)
        wait_for(lambda: d.status(sid)["workers"][0]["state"] == "running", 30, "the run to resume")
        d.ctl("stop", sid)
        status = d.wait_session(sid, timeout_s=60)
        assert status["state"] == "stopped" and status["workers"][0]["state"] == "stopped"
        bg = int(pidfile.read_text())
        wait_for(lambda: not os.path.exists(f"/proc/{bg}") or open(f"/proc/{bg}/stat").read().split()[2] == "Z",
                 30, "the agent's process group to be gone on the host")
        wait_for(lambda: hosts(d)[0]["busy"] == 0, 30, "the host's slot to be free")
    finally:
        stop_host(host)


def test_a_bad_host_link_endpoint_stops_the_start_with_one_line(daemon_factory, tmp_path):
    for endpoint, words in (("udp://1.2.3.4:5", "tcp:// (with CURVE) or ipc://"),
                            ("tcp://127.0.0.1:5999", "orchd keys init")):
        d = daemon_factory(f'host_link_endpoint = "{endpoint}"\n', start=False)
        res = subprocess.run([sys.executable, "-m", "orchd.app", "run", "--state-dir", str(d.state_dir),
                              "--runtime-dir", str(d.runtime_dir), "--config", str(d.config)],
                             capture_output=True, text=True, timeout=60, env=d.env)
        assert res.returncode == 1 and words in res.stderr, res.stderr
        assert len(res.stderr.strip().splitlines()) == 1, res.stderr
