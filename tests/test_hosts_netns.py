"""A supervisor and two agent hosts in network namespaces the test makes, CURVE over tcp between them.

Each namespace has only its loopback and a veth to the supervisor's namespace (10.77.1.0/24 to h1,
10.77.2.0/24 to h2), so the link's traffic stays between them; cutting a host off is
``ip link set ... down`` on its veth.  Needs root (``ip netns``); everything is removed afterwards.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time

import pytest

from orchd import keys, paths
from tests.conftest import Daemon, fake, wait_for, write_plan
from tests.helpers import git, replay_all, watch_until_done
from tests.test_hosts import hosts, stop_host

PORT = 5733


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=20)


@pytest.fixture(scope="module")
def netns():
    if os.geteuid() != 0:
        pytest.fail("these tests make network namespaces: run them as root")
    tag = secrets.token_hex(3)
    ns = {"sup": f"os{tag}", "h1": f"o1{tag}", "h2": f"o2{tag}"}
    made: list[str] = []
    try:
        for name in ns.values():
            _ip("netns", "add", name)
            made.append(name)
            _ip("-n", name, "link", "set", "lo", "up")
        for i, host in ((1, "h1"), (2, "h2")):
            a, b = f"v{tag}s{i}", f"v{tag}h{i}"
            _ip("link", "add", a, "netns", ns["sup"], "type", "veth", "peer", "name", b, "netns", ns[host])
            _ip("-n", ns["sup"], "addr", "add", f"10.77.{i}.1/24", "dev", a)
            _ip("-n", ns[host], "addr", "add", f"10.77.{i}.2/24", "dev", b)
            _ip("-n", ns["sup"], "link", "set", a, "up")
            _ip("-n", ns[host], "link", "set", b, "up")
        ns["veth"] = {"h1": f"v{tag}s1", "h2": f"v{tag}s2"}
        ns["sup_addr"] = {"h1": "10.77.1.1", "h2": "10.77.2.1"}
        yield ns
    finally:
        for name in made:  # deleting a namespace deletes its veth ends
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=20)


def cut(ns, host: str, up: bool) -> None:
    _ip("-n", ns["sup"], "link", "set", ns["veth"][host], "up" if up else "down")


class NsDaemon(Daemon):
    """The test fixture's daemon, started inside a namespace."""

    def __init__(self, ns: str, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self.ns = ns

    def start(self) -> "NsDaemon":
        argv = ["ip", "netns", "exec", self.ns, sys.executable, "-m", "orchd.app", "run", "--state-dir",
                str(self.state_dir), "--runtime-dir", str(self.runtime_dir), "--config", str(self.config)]
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(argv, env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        wait_for(lambda: self.ctl("status", "--json", check=False).returncode == 0 or self._died(), 30,
                 "the daemon to answer")
        assert self.proc.poll() is None, self.log()
        return self


@pytest.fixture
def cluster(netns, tmp_path, short_tmp):
    """start(timeout_s, slots): a supervisor in its namespace, hosts h1 and h2 in theirs."""
    made: list = []

    def start(host_timeout_s: float = 3.0, slots=(1, 1), grace_s: float = 4.0):
        cfg = tmp_path / "orchd.toml"
        cfg.write_text(f'host_link_endpoint = "tcp://*:{PORT}"\n[placement]\nheartbeat_s = 0.2\n'
                       f'host_timeout_s = {host_timeout_s}\n[placement.agents]\ncommand = "hosts"\n')
        state = tmp_path / "state"
        server_public = keys_cmd("init", state)["public_key"]
        for name in ("h1", "h2"):  # each host has its own client key, authorized like any client
            pair = keys.new_client_keys(tmp_path / f"{name}.key_secret")
            keys_cmd("add", state, name, pair.public.decode())
        d = NsDaemon(netns["sup"], state, short_tmp / "rt", cfg)
        made.append(d)
        d.start()
        for name, n in zip(("h1", "h2"), slots):
            argv = ["ip", "netns", "exec", netns[name], *host_argv(netns, name, server_public, tmp_path), "--slots",
                    str(n), "--grace-s", str(grace_s)]
            made.append(subprocess.Popen(argv, env={**os.environ, "ORCHD_LOG_FORMAT": "json"},
                                         stdout=open(tmp_path / f"{name}.log", "ab"), stderr=subprocess.STDOUT,
                                         start_new_session=True))
        wait_for(lambda: len(hosts(d)) == 2, 60, "both hosts to say hello")
        return d, server_public

    yield start
    for thing in reversed(made):
        if isinstance(thing, Daemon):
            thing.stop(signal.SIGKILL) if thing.proc.poll() is None else None
        else:
            stop_host(thing)


def keys_cmd(*args) -> dict:
    cmd, state, *rest = args
    res = subprocess.run([sys.executable, "-m", "orchd.app", "keys", cmd, "--state-dir", str(state), "--json", *(["--", *rest] if rest else [])],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def host_argv(netns, name: str, server_public: str, tmp_path, key: str | None = None) -> list[str]:
    return [sys.executable, "-m", "orchd.app", "host", "--connect", f"tcp://{netns['sup_addr'][name]}:{PORT}",
            "--server-key", server_public, "--client-key", str(tmp_path / f"{key or name}.key_secret"),
            "--name", key or name, "--state-dir", str(tmp_path / (key or name)), "--heartbeat-s", "0.2"]


def _events(d) -> list[dict]:
    return [json.loads(body) for _, body in replay_all(paths.control_endpoint(d.runtime_dir))]


def _placed(events: list[dict]) -> dict[tuple[str, int], str | None]:
    return {(e["worker"], e["gen"]): e.get("host") for e in events if e["kind"] == "worker.launching"}


def _check_no_loss_or_dup(events: list[dict], sid: str, n_json: int) -> None:
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(set(seqs))
    runs: dict[tuple[str, int], list[dict]] = {}
    for e in events:
        if e["session"] == sid and e.get("worker") and e.get("gen") is not None:
            runs.setdefault((e["worker"], e["gen"]), []).append(e)
    for (w, gen), evs in runs.items():
        kinds = [e["kind"] for e in evs]
        assert kinds.count("worker.started") <= 1 and kinds.count("worker.exited") <= 1, (w, gen, kinds)
        if "worker.exited" in kinds and next(e for e in evs if e["kind"] == "worker.exited")["state"] == "done":
            outs = [e["data"]["i"] for e in evs if e["kind"] == "agent.output"]
            assert outs == list(range(n_json)), (w, gen, outs)


def test_session_runs_on_both_hosts(cluster, git_repo, tmp_path):
    d, _ = cluster()
    plan = write_plan(tmp_path / "plan.json", [
        {"name": n, "agent": "command", "argv": fake(f"line:on {n}", "json:20", f"write:{n}.txt:from {n}", "exit:0")}
        for n in ("a", "b")])
    sid = d.ctl_json("submit", "--plan", str(plan), "--target", str(git_repo))["session"]
    events = watch_until_done(d, sid, timeout_s=90)
    assert events[-1]["state"] == "done", events[-5:]
    assert sorted(_placed(events).values()) == ["h1", "h2"]
    _check_no_loss_or_dup(events, sid, 20)
    assert git(git_repo, "show", f"orchd/{sid}:a.txt").strip() == "from a"
    assert git(git_repo, "show", f"orchd/{sid}:b.txt").strip() == "from b"
    listed = {h["name"]: h for h in hosts(d)}
    assert set(listed) == {"h1", "h2"} and all(h["slots"] == 1 and h["last_heartbeat_s"] < 5 for h in listed.values())


def test_host_cut_off_has_its_run_relaunched_on_the_other(cluster, netns, git_repo, tmp_path):
    d, _ = cluster(host_timeout_s=2.0, slots=(1, 2), grace_s=3.0)
    go = tmp_path / "go"
    plan = write_plan(tmp_path / "plan.json", [
        {"name": n, "agent": "command",
         "argv": fake(f"touch:{tmp_path}/started-{n}", f"waitfile:{go}", "json:20", f"write:{n}.txt:from {n}",
                      "exit:0")}
        for n in ("a", "b")])
    sid = d.ctl_json("submit", "--plan", str(plan), "--target", str(git_repo))["session"]
    wait_for(lambda: all((tmp_path / f"started-{n}").exists() for n in ("a", "b")), 60, "both runs to start")
    on_h1 = next(w for (w, gen), h in _placed(_events(d)).items() if h == "h1")
    (tmp_path / f"started-{on_h1}").unlink()
    cut(netns, "h1", False)
    try:
        wait_for(lambda: _placed(_events(d)).get((on_h1, 1)) == "h2", 30, f"{on_h1} to be relaunched on h2")
        wait_for(lambda: (tmp_path / f"started-{on_h1}").exists(), 30, "the relaunch to start")
        go.touch()
        events = watch_until_done(d, sid, timeout_s=90)
    finally:
        cut(netns, "h1", True)
    assert events[-1]["state"] == "done", events[-5:]
    _check_no_loss_or_dup(events, sid, 20)
    assert any(e["kind"] == "session.note" and "agent host h1 lost" in e.get("message", "") for e in events)
    # the lost run failed with its host and the recovery actor relaunched it, like any failed run
    lost = [e for e in events if e.get("worker") == on_h1 and e.get("gen") == 0]
    assert any(e["kind"] == "recovery.detected" and e["code"] == "host_lost" for e in lost)
    assert any(e["kind"] == "recovery.action" and e["action"] == "relaunch" for e in lost)
    assert git(git_repo, "show", f"orchd/{sid}:a.txt").strip() == "from a"
    assert git(git_repo, "show", f"orchd/{sid}:b.txt").strip() == "from b"
    # h1 comes back: what it still had of the dropped run is refused, nothing reaches the log
    wait_for(lambda: "h1" in {h["name"] for h in hosts(d)}, 30, "h1 to say hello again")
    before = len(_events(d))
    wait_for(lambda: not hosts(d)[0]["running"] and not hosts(d)[1]["running"], 10, "no run left on a host")
    assert len(_events(d)) == before


def test_short_cut_loses_and_duplicates_nothing(cluster, netns, git_repo, tmp_path):
    d, _ = cluster(host_timeout_s=6.0)
    go = tmp_path / "go"
    plan = write_plan(tmp_path / "plan.json", [
        {"name": n, "agent": "command",
         "argv": fake(f"touch:{tmp_path}/started-{n}", f"waitfile:{go}", "json:200", f"write:{n}.txt:from {n}",
                      "exit:0")}
        for n in ("a", "b")])
    sid = d.ctl_json("submit", "--plan", str(plan), "--target", str(git_repo))["session"]
    wait_for(lambda: all((tmp_path / f"started-{n}").exists() for n in ("a", "b")), 60, "both runs to start")
    cut(netns, "h1", False)
    try:
        go.touch()  # h1's agent prints while its link is down
        time.sleep(1.5)  # the cut's length is what this test is about (below host_timeout_s)
    finally:
        cut(netns, "h1", True)
    events = watch_until_done(d, sid, timeout_s=90)
    assert events[-1]["state"] == "done", events[-5:]
    assert set(_placed(events)) == {("a", 0), ("b", 0)}, "nothing was relaunched"
    # the cut was long enough for h1 to give its connection up and resend on a new one
    assert '"action": "reconnecting"' in (tmp_path / "h1.log").read_text()
    _check_no_loss_or_dup(events, sid, 200)
    assert git(git_repo, "show", f"orchd/{sid}:a.txt").strip() == "from a"


def test_plaintext_tcp_is_refused(cluster, netns, tmp_path):
    d, server_public = cluster()
    # orchd host refuses to go without CURVE
    res = subprocess.run([sys.executable, "-m", "orchd.app", "host", "--connect", f"tcp://10.77.1.1:{PORT}"],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 2 and "server-key" in res.stderr
    # a plaintext peer that says hello anyway is never heard
    code = (f"import zmq, time\nfrom orchd import wire, protocol as p\nc = zmq.Context()\ns = c.socket(zmq.DEALER)\n"
            f"s.routing_id = b'intruder'\ns.connect('tcp://10.77.1.1:{PORT}')\n"
            f"s.send(wire.pack(p.HostHello(name='intruder', slots=9)))\ntime.sleep(1.0)\ns.close(0)\n")
    subprocess.run(["ip", "netns", "exec", netns["h1"], sys.executable, "-c", code], check=True, timeout=30)
    # a host whose key the supervisor does not know is refused by the ZAP handler
    keys.new_client_keys(tmp_path / "stranger.key_secret")
    stranger = subprocess.Popen(["ip", "netns", "exec", netns["h1"],
                                 *host_argv(netns, "h1", server_public, tmp_path, key="stranger")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: '"auth_refused"' in d.log() and "unknown" in d.log(), 30, "the stranger to be refused")
    finally:
        stop_host(stranger)
    assert {h["name"] for h in hosts(d)} == {"h1", "h2"}


def test_a_pause_sent_while_the_link_is_down_reaches_the_run_after_the_reconnect(cluster, netns, git_repo, tmp_path):
    d, _ = cluster(host_timeout_s=6.0)
    go = tmp_path / "go"
    plan = write_plan(tmp_path / "plan.json", [
        {"name": "a", "agent": "command",
         "argv": fake(f"touch:{tmp_path}/started-a", f"waitfile:{go}", "json:5", "exit:0")}])
    sid = d.ctl_json("submit", "--plan", str(plan), "--target", str(git_repo))["session"]
    wait_for(lambda: (tmp_path / "started-a").exists(), 60, "the run to start")
    host = _placed(_events(d))[("a", 0)]
    log = tmp_path / f"{host}.log"
    reconnects = log.read_text().count('"action": "reconnecting"')
    cut(netns, host, False)
    try:
        d.ctl("pause", sid)  # sent on a connection the host is about to give up
        wait_for(lambda: log.read_text().count('"action": "reconnecting"') > reconnects, 10,
                 "the host to give its connection up")
    finally:
        cut(netns, host, True)

    def paused() -> bool:
        return any(e["kind"] == "worker.state" and e.get("worker") == "a" and e["state"] == "paused"
                   for e in _events(d))
    wait_for(paused, 20, "the pause to reach the run on its host after the reconnect")
    d.ctl("resume", sid)
    go.touch()
    events = watch_until_done(d, sid, timeout_s=90)
    assert events[-1]["state"] == "done", events[-5:]
    assert set(_placed(events)) == {("a", 0)}, "nothing was relaunched"
    _check_no_loss_or_dup(events, sid, 5)
