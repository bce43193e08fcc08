"""Remote endpoints: CURVE over tcp, ZAP by the authorized-clients store, plaintext tcp refused everywhere.

Real daemons, real orchctl processes, real sockets: tcp on 127.0.0.1, and a
network namespace lab (tests/netns.py) with addresses that exist only inside it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import zmq
import zmq.asyncio

from orchd import bus, keys
from tests.conftest import ROOT, fake, wait_for, write_plan
from tests.netns import netlab  # noqa: F401  (a fixture)
from tests.webclient import Web


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_pair() -> int:
    """A port P with P+1 free too (control and events)."""
    for _ in range(50):
        port = free_port()
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue
    raise AssertionError("no two free ports in a row")


def orchd(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchd.app", *args], capture_output=True, text=True, timeout=60,
                          cwd=ROOT, env=env)


class Remote:
    """A client machine's view: its own config dir (key pair), the daemon's public key and tcp port."""

    def __init__(self, home: Path, server_key: str, port: int) -> None:
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHD_")}
        self.env["XDG_CONFIG_HOME"] = str(home)
        self.server_key, self.port = server_key, port
        res = subprocess.run([sys.executable, "-m", "orchctl.cli", "keys", "new"], capture_output=True, text=True,
                             timeout=30, env=self.env, cwd=ROOT)
        assert res.returncode == 0, res.stderr
        self.public = res.stdout.strip()

    def argv(self, *args: str, host: str = "127.0.0.1") -> list[str]:
        return [sys.executable, "-m", "orchctl.cli", *args, "--endpoint", f"tcp://{host}:{self.port}",
                "--server-key", self.server_key]

    def ctl(self, *args: str, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(*args, **kw), capture_output=True, text=True, timeout=timeout,
                              env=self.env, cwd=ROOT)


def remote_daemon(daemon_factory, tmp_path, host: str = "127.0.0.1", extra: str = ""):
    port = free_pair()
    d = daemon_factory(config=f'remote_control_endpoint = "tcp://{host}:{port}"\n'
                              f'remote_events_endpoint = "tcp://{host}:{port + 1}"\n{extra}', start=False)
    assert orchd("keys", "init", "--state-dir", str(d.state_dir)).returncode == 0
    d.start()
    server_key = orchd("keys", "show", "--state-dir", str(d.state_dir)).stdout.strip()
    return d, server_key, port


def authorize(d, name: str, public: str) -> None:
    res = orchd("keys", "add", name, public, "--state-dir", str(d.state_dir))
    assert res.returncode == 0, res.stderr


def auth_lines(d) -> list[dict]:
    out = []
    for line in d.log().splitlines():
        if '"auth_' in line:
            out.append(json.loads(line))
    return out


def refused_count(port: int, reason: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    m = re.search(rf'^orchd_auth_refused_total\{{reason="{reason}"\}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


# ---------------------------------------------------------------- keys on disk

def test_key_files_are_private_and_the_store_keeps_revocations(tmp_path):
    state = tmp_path / "state"
    res = orchd("keys", "init", "--state-dir", str(state), "--json")
    assert res.returncode == 0, res.stderr
    made = json.loads(res.stdout)
    secret = Path(made["secret_file"])
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE(secret.parent.stat().st_mode) == 0o700
    pair = keys.load_server_keys(state)
    assert pair.public.decode() == made["public_key"] and len(pair.secret) == 40
    # a second init would orphan every client: refused, one line, the pair unchanged
    again = orchd("keys", "init", "--state-dir", str(state))
    assert again.returncode == 1 and len(again.stderr.strip().splitlines()) == 1 and "already exists" in again.stderr
    assert keys.load_server_keys(state) == pair
    # a secret key others can read is refused
    os.chmod(secret, 0o644)
    with pytest.raises(keys.KeyFileError, match="0600"):
        keys.load_server_keys(state)
    os.chmod(secret, 0o600)

    # the client side: orchctl keys new, in $XDG_CONFIG_HOME/orchctl
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "cfg")}
    res = subprocess.run([sys.executable, "-m", "orchctl.cli", "keys", "new", "--json"], capture_output=True,
                         text=True, env=env, timeout=30, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    client = json.loads(res.stdout)
    client_secret = tmp_path / "cfg" / "orchctl" / "client.key_secret"
    assert client["secret_file"] == str(client_secret)
    assert stat.S_IMODE(client_secret.stat().st_mode) == 0o600
    assert stat.S_IMODE(client_secret.parent.stat().st_mode) == 0o700
    again = subprocess.run([sys.executable, "-m", "orchctl.cli", "keys", "new"], capture_output=True, text=True,
                           env=env, timeout=30, cwd=ROOT)
    assert again.returncode == 1 and "already exists" in again.stderr

    # authorized clients: add, list, revoke (kept, marked), bad input is one line and exit 1
    assert orchd("keys", "add", "laptop", client["public_key"], "--state-dir", str(state)).returncode == 0
    bad = orchd("keys", "add", "x", "not-a-key", "--state-dir", str(state))
    assert bad.returncode == 1 and len(bad.stderr.strip().splitlines()) == 1 and "not a CURVE public key" in bad.stderr
    dup = orchd("keys", "add", "laptop", client["public_key"], "--state-dir", str(state))
    assert dup.returncode == 1 and "already authorized" in dup.stderr
    listed = json.loads(orchd("keys", "list", "--json", "--state-dir", str(state)).stdout)["clients"]
    assert [(c["name"], c["fingerprint"], c["revoked_ts"]) for c in listed] == \
        [("laptop", client["fingerprint"], None)]
    assert orchd("keys", "revoke", "laptop", "--state-dir", str(state)).returncode == 0
    listed = json.loads(orchd("keys", "list", "--json", "--state-dir", str(state)).stdout)["clients"]
    assert listed[0]["revoked_ts"] is not None
    assert orchd("keys", "revoke", "laptop", "--state-dir", str(state)).returncode == 1
    store_file = keys.curve_dir(state) / keys.CLIENTS_FILE
    assert stat.S_IMODE(store_file.stat().st_mode) == 0o600
    assert keys.fingerprint(client["public_key"]) == client["fingerprint"] and len(client["fingerprint"]) == 16


def test_a_key_that_starts_with_a_dash_is_added_as_it_is(tmp_path):
    state = tmp_path / "state"
    assert orchd("keys", "init", "--state-dir", str(state)).returncode == 0
    key = "-" + "b" * 39  # Z85 has "-" in its alphabet: argparse alone would read this as an option
    res = orchd("keys", "add", "--state-dir", str(state), "dash", key)
    assert res.returncode == 0, res.stderr
    other = "-" + "d" * 39  # and with options after it
    res = orchd("keys", "add", "dash2", other, "--state-dir", str(state), "--json")
    assert res.returncode == 0, res.stderr
    listed = json.loads(orchd("keys", "list", "--state-dir", str(state), "--json").stdout)
    assert [(c["name"], c["public_key"]) for c in listed["clients"]] == [("dash", key), ("dash2", other)], listed


def test_a_server_key_that_starts_with_a_dash_is_read_as_the_options_value():
    key = "-" + "c" * 39
    assert keys.argv_with_keys(["status", "--server-key", key, "--endpoint", "tcp://h:1"]) == \
        ["status", f"--server-key={key}", "--endpoint", "tcp://h:1"]
    assert keys.argv_with_keys(["keys", "add", "n", key]) == ["keys", "add", "n", "--", key]
    # options after the key (a CI run drew a key starting with "-" and failed here)
    assert keys.argv_with_keys(["keys", "add", "n", key, "--state-dir", "s"]) == \
        ["keys", "add", "n", "--state-dir", "s", "--", key]
    # a state dir that looks like a key is the option's value, and a key before the name is left to argparse
    assert keys.argv_with_keys(["keys", "add", "--state-dir", key, "n", "k" * 40]) == \
        ["keys", "add", "--state-dir", key, "n", "k" * 40]
    assert keys.argv_with_keys(["keys", "add", key, "n"]) == ["keys", "add", key, "n"]
    assert keys.argv_with_keys(["status", "--server-key", "/path/to/key"]) == ["status", "--server-key", "/path/to/key"]
    from orchctl.cli import build_parser
    args = build_parser().parse_args(keys.argv_with_keys(["status", "--server-key", key, "--endpoint", "tcp://h:1"]))
    assert args.server_key == key


def test_bus_never_binds_or_connects_plaintext_tcp():
    ctx = zmq.asyncio.Context()
    try:
        for ep in ("tcp://127.0.0.1:0", "tcp://0.0.0.0:0", "tcp://*:0", "tcp://[::1]:0"):
            with pytest.raises(bus.PlaintextTcpRefused):
                bus.control_router(ctx, ep, 1 << 20)
            with pytest.raises(bus.PlaintextTcpRefused):
                bus.events_pub(ctx, [ep], 1000)
            with pytest.raises(bus.PlaintextTcpRefused):
                bus.control_dealer(ctx, ep)
            with pytest.raises(bus.PlaintextTcpRefused):
                bus.events_sub(ctx, ep, 1000)
        with pytest.raises(bus.PlaintextTcpRefused):  # remote endpoints without keys
            bus.control_router(ctx, "inproc://c", 1 << 20, curve_endpoints=["tcp://127.0.0.1:0"])
    finally:
        ctx.destroy(linger=0)


# ---------------------------------------------------------------- orchctl over CURVE

def test_orchctl_over_curve_tcp_submits_watches_and_the_ipc_side_is_unchanged(daemon_factory, git_repo, tmp_path):
    d, server_key, port = remote_daemon(daemon_factory, tmp_path)
    laptop = Remote(tmp_path / "laptop", server_key, port)
    authorize(d, "laptop", laptop.public)
    plan = write_plan(tmp_path / "plan.json", [
        {"name": "a", "agent": "command", "argv": fake("line:remote hello", "exit:0")}])
    res = laptop.ctl("submit", "--plan", str(plan), "--target", str(git_repo), "--json")
    assert res.returncode == 0, res.stderr + d.log()[-3000:]
    sid = json.loads(res.stdout)["session"]
    watched = laptop.ctl("watch", sid, "--until-done", "--json")
    assert watched.returncode == 0, watched.stderr
    events = [json.loads(line) for line in watched.stdout.splitlines()]
    assert "worker.exited" in [e["kind"] for e in events]
    assert events[-1]["kind"] == "session.state" and events[-1]["state"] == "done", events[-1]
    assert "remote hello" in watched.stdout
    status = laptop.ctl("status", sid, "--json")
    assert status.returncode == 0 and json.loads(status.stdout)["state"] == "done"
    # the same session over ipc, and a live watch over tcp: the live part comes through the CURVE PUB
    assert d.status(sid)["state"] == "done"
    live = subprocess.Popen(laptop.argv("watch", "--json"), stdout=subprocess.PIPE, text=True, env=laptop.env,
                            cwd=ROOT)
    try:
        wait_for(lambda: "session.merged" in live.stdout.readline(), 30, "the history over tcp")
        sid2 = d.ctl_json("submit", "--plan", str(plan), "--target", str(git_repo))["session"]
        wait_for(lambda: sid2 in live.stdout.readline(), 30, "a live event of a session submitted over ipc")
    finally:
        live.send_signal(signal.SIGINT)
        live.wait(10)
    # a profile in orchctl's config file works like the flags
    (tmp_path / "laptop" / "orchctl" / "config.toml").write_text(
        f'[profiles.box]\nendpoint = "tcp://127.0.0.1:{port}"\nserver_key = "{server_key}"\n')
    res = subprocess.run([sys.executable, "-m", "orchctl.cli", "status", "--profile", "box", "--json"],
                         capture_output=True, text=True, env=laptop.env, timeout=60, cwd=ROOT)
    assert res.returncode == 0 and sid in res.stdout, res.stderr
    res = subprocess.run([sys.executable, "-m", "orchctl.cli", "status", "--profile", "nope"],
                         capture_output=True, text=True, env=laptop.env, timeout=60, cwd=ROOT)
    assert res.returncode == 2 and "no profile 'nope'" in res.stderr and "box" in res.stderr
    # no server key: a usage error, never a plaintext attempt
    res = subprocess.run([sys.executable, "-m", "orchctl.cli", "status", "--endpoint", f"tcp://127.0.0.1:{port}"],
                         capture_output=True, text=True, env=laptop.env, timeout=60, cwd=ROOT)
    assert res.returncode == 2 and "--server-key" in res.stderr


def test_unknown_and_revoked_keys_are_refused_logged_and_counted(daemon_factory, git_repo, tmp_path):
    metrics_port = free_port()
    d, server_key, port = remote_daemon(daemon_factory, tmp_path, extra=f"metrics_port = {metrics_port}\n")
    stranger = Remote(tmp_path / "stranger", server_key, port)
    res = stranger.ctl("status")
    assert res.returncode == 3, res
    fp = keys.fingerprint(stranger.public)
    assert "refused this client's key" in res.stderr and fp in res.stderr
    wait_for(lambda: any(e["event"] == "auth_refused" and e["fingerprint"] == fp and e["reason"] == "unknown"
                         for e in auth_lines(d)), 10, "the refusal in the log")
    assert refused_count(metrics_port, "unknown") >= 1

    # a revoked key loses the connection it has (a running watch) and cannot come back; another
    # authorized client's watch goes on through the same endpoints
    alice, bob = Remote(tmp_path / "alice", server_key, port), Remote(tmp_path / "bob", server_key, port)
    authorize(d, "alice", alice.public)
    authorize(d, "bob", bob.public)
    watches = {name: subprocess.Popen(who.argv("watch", "--json", "--timeout", "2"), stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, env=who.env, cwd=ROOT)
               for name, who in (("alice", alice), ("bob", bob))}
    try:
        for w in watches.values():
            wait_for(lambda: "daemon.started" in w.stdout.readline(), 30, "the history over tcp")
        assert refused_count(metrics_port, "revoked") == 0
        assert orchd("keys", "revoke", "bob", "--state-dir", str(d.state_dir)).returncode == 0
        try:
            code = watches["bob"].wait(30)
            assert code == 3, watches["bob"].stderr.read()
        except subprocess.TimeoutExpired:
            raise AssertionError("the revoked watch goes on:\n" + "\n".join(
                x for x in d.log().splitlines() if "auth" in x or "curve" in x or "zap" in x)) from None
        assert "refused this client's key" in watches["bob"].stderr.read()
        assert refused_count(metrics_port, "revoked") >= 1
        bob_fp = keys.fingerprint(bob.public)
        assert any(e["event"] == "auth_refused" and e["fingerprint"] == bob_fp and e["reason"] == "revoked"
                   and e["client"] == "bob" for e in auth_lines(d))
        res = bob.ctl("status")
        assert res.returncode == 3 and "refused" in res.stderr
        # alice still watches (her connection was dropped with bob's and came back): a new session reaches her
        plan = write_plan(tmp_path / "p.json", [{"name": "a", "agent": "command", "argv": fake("exit:0")}])
        sid = d.ctl_json("submit", "--plan", str(plan), "--target", str(git_repo))["session"]
        wait_for(lambda: sid in watches["alice"].stdout.readline(), 30, "alice to see the new session")
        assert alice.ctl("status").returncode == 0
    finally:
        for w in watches.values():
            if w.poll() is None:
                w.send_signal(signal.SIGINT)
                w.wait(10)
    assert "Traceback" not in d.log()
    assert any('"curve_clients_dropped"' in line for line in d.log().splitlines())


# ---------------------------------------------------------------- the HTTP bridge on another machine

def test_orchd_web_on_another_machine_serves_a_snapshot_over_curve(daemon_factory, git_repo, tmp_path):
    d, server_key, port = remote_daemon(daemon_factory, tmp_path)
    plan = write_plan(tmp_path / "plan.json", [{"name": "a", "agent": "command", "argv": fake("exit:0")}])
    sid = d.ctl_json("submit", "--plan", str(plan), "--target", str(git_repo))["session"]
    web_host = Remote(tmp_path / "webhost", server_key, port)
    authorize(d, "webhost", web_host.public)
    log_path = tmp_path / "bridge.log"
    with open(log_path, "wb") as log:
        bridge = subprocess.Popen(
            [sys.executable, "-m", "orchd.app", "web", "--state-dir", str(tmp_path / "webstate"),
             "--http", "127.0.0.1:0", "--endpoint", f"tcp://127.0.0.1:{port}", "--server-key", server_key],
            stdout=log, stderr=subprocess.STDOUT, env={**web_host.env, "ORCHD_LOG_FORMAT": "json"}, cwd=ROOT)
    try:
        line = wait_for(lambda: next((json.loads(x) for x in log_path.read_text().splitlines()
                                      if '"http_listening"' in x), None), 30, "the bridge to listen")
        web = Web(line["url"], Path(line["token_file"]).read_text().strip())
        status, body = web.json("GET", "/api/snapshot")
        assert status == 200 and sid in [s["id"] for s in body["sessions"]], body
        assert not (d.runtime_dir / "web.json").exists()  # it wrote nothing into the daemon's runtime dir
    finally:
        bridge.send_signal(signal.SIGTERM)
        assert bridge.wait(20) == 0


# ---------------------------------------------------------------- plaintext tcp, on any address

PLAIN_PING = """
import sys, zmq
from orchd import protocol as p, wire
s = zmq.Context.instance().socket(zmq.DEALER); s.linger = 0
s.connect(sys.argv[1]); s.send(wire.encode_request(p.Ping(), "x"))
print("answered" if s.poll(1500) else "silent")
"""


def test_plaintext_tcp_is_refused_on_any_address_inside_a_network_namespace(netlab, short_tmp, tmp_path):
    server, client = netlab.add("srv"), netlab.add("cli")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHD_")}
    env.update(ORCHD_HTTP_LISTEN="off", ORCHD_LOG_FORMAT="json", PYTHONPATH=str(ROOT))
    # a plaintext endpoint is refused at start on the namespace's own address, on every address, on loopback
    for host in (server.addr, "0.0.0.0", "127.0.0.1"):
        cfg = tmp_path / "plain.toml"
        cfg.write_text(f'control_endpoint = "tcp://{host}:7000"\n')
        res = server.run([sys.executable, "-m", "orchd.app", "run", "--state-dir", str(tmp_path / "s0"),
                          "--runtime-dir", str(short_tmp / "rt0"), "--config", str(cfg)],
                         capture_output=True, text=True, env=env, cwd=ROOT)
        assert res.returncode == 2 and "plaintext tcp is refused" in res.stderr, res
    # a CURVE daemon on the namespace's address: a plaintext client gets nothing, an authorized one works
    state, rt = tmp_path / "state", short_tmp / "rt"
    assert orchd("keys", "init", "--state-dir", str(state)).returncode == 0
    server_key = keys.load_server_keys(state).public.decode()
    cfg = tmp_path / "curve.toml"
    cfg.write_text(f'remote_control_endpoint = "tcp://{server.addr}:7870"\n'
                   f'remote_events_endpoint = "tcp://{server.addr}:7871"\n')
    log_path = tmp_path / "daemon.log"
    with open(log_path, "wb") as log:
        daemon = server.popen([sys.executable, "-m", "orchd.app", "run", "--state-dir", str(state),
                               "--runtime-dir", str(rt), "--config", str(cfg)], stdout=log,
                              stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    try:
        wait_for(lambda: '"orchd_started"' in log_path.read_text() or daemon.poll() is not None, 30,
                 "the daemon to start")
        assert daemon.poll() is None, log_path.read_text()
        laptop = Remote(tmp_path / "laptop", server_key, 7870)
        for ep in (f"tcp://{server.addr}:7870", f"tcp://{server.addr}:7871"):
            res = client.run([sys.executable, "-c", PLAIN_PING, ep], capture_output=True, text=True, env=env,
                             cwd=ROOT)
            assert res.stdout.strip() == "silent", res
        res = client.run(laptop.argv("status", host=server.addr), capture_output=True, text=True,
                         env=laptop.env, cwd=ROOT)
        assert res.returncode == 3 and "refused this client's key" in res.stderr, res
        assert orchd("keys", "add", "laptop", laptop.public, "--state-dir", str(state)).returncode == 0
        res = client.run(laptop.argv("status", "--json", host=server.addr), capture_output=True, text=True,
                         env=laptop.env, cwd=ROOT)
        assert res.returncode == 0 and json.loads(res.stdout) == {"sessions": []}, res
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(30) == 0, log_path.read_text()[-3000:]


def test_a_restarted_supervisor_binds_its_curve_endpoint_again(daemon_factory, tmp_path):
    from orchctl.client import Client
    from orchd import protocol as p
    d, server_key, port = remote_daemon(daemon_factory, tmp_path, extra="fault_injection = true\n")
    laptop = Remote(tmp_path / "laptop", server_key, port)
    authorize(d, "laptop", laptop.public)
    assert laptop.ctl("status").returncode == 0
    c = Client(f"ipc://{d.runtime_dir}/control")
    try:
        assert isinstance(c.call(p.InjectFault(actor="supervisor")), p.Ok)
    finally:
        c.close()
    wait_for(lambda: '"actor_restarting"' in d.log(), 30, "the supervisor's restart")
    wait_for(lambda: laptop.ctl("status", "--timeout", "2").returncode == 0, 30,
             "the remote endpoint to serve again after the restart")
    assert d.proc.poll() is None and '"orchd_escalation"' not in d.log()


# ---------------------------------------------------------------- pure parts

def test_zap_decisions_and_the_refusal_log_limit(tmp_path):
    from orchd import zap
    entry = keys.AuthorizedClient(name="a", public_key="k" * 40, added_ts=1.0)
    assert zap.decide(None) == (False, "unknown")
    assert zap.decide(entry) == (True, "ok")
    assert zap.decide(keys.AuthorizedClient(name="a", public_key="k" * 40, added_ts=1.0, revoked_ts=2.0)) == \
        (False, "revoked")
    assert zap.newly_revoked(frozenset({"x", "y"}), frozenset({"y", "z"})) == {"x"}
    assert zap.newly_revoked(frozenset({"x"}), frozenset({"x", "z"})) == frozenset()
    provider = zap._Provider(keys.ClientStore(tmp_path))
    assert provider._should_log("f1") == 1
    assert [provider._should_log("f1") for _ in range(3)] == [0, 0, 0]  # within a minute: counted, not logged
    assert provider._should_log("f2") == 1
    # the store is read again when it changes; a malformed file refuses (never raises into the handler)
    store = keys.ClientStore(tmp_path)
    pub = zmq.curve_keypair()[0]
    store.add("a", pub.decode(), now=1.0)
    assert provider.callback("orchd", pub) is True
    store.revoke("a", now=2.0)
    assert provider.callback("orchd", pub) is False
    (keys.curve_dir(tmp_path) / keys.CLIENTS_FILE).write_text("{not json")
    assert provider.callback("orchd", pub) is False


def test_profiles_resolve_flags_and_files(tmp_path, monkeypatch):
    from orchctl import profiles
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert profiles.resolve(None, None, None, None, None) is None
    with pytest.raises(profiles.ProfileError, match="need --endpoint"):
        profiles.resolve(None, None, "k" * 40, None, None)
    with pytest.raises(profiles.ProfileError, match="--server-key"):
        profiles.resolve("tcp://h:1", None, None, None, None)
    with pytest.raises(profiles.ProfileError, match="orchctl keys new"):
        profiles.resolve("tcp://h:1", None, zmq.curve_keypair()[0].decode(), None, None)
    with pytest.raises(profiles.ProfileError, match="tcp://HOST:PORT"):
        profiles.resolve("ipc:///x", None, "k" * 40, None, None)
    client = keys.new_client_keys()
    server_public = zmq.curve_keypair()[0]
    remote = profiles.resolve("tcp://h:7870", None, server_public.decode(), None, None)
    assert (remote.control, remote.events) == ("tcp://h:7870", "tcp://h:7871")
    assert remote.curve == keys.ClientCurve(client=client, server_public=server_public)
    # a key file works as --server-key; a profile's unknown key is named
    server_file = tmp_path / "server.key"
    server_file.write_text(f'curve\n    public-key = "{server_public.decode()}"\n')
    (tmp_path / "orchctl" / "config.toml").write_text(
        f'[profiles.a]\nendpoint = "tcp://h:1"\nserver_key = "{server_file}"\n'
        '[profiles.b]\nendpoint = "tcp://h:1"\nserverkey = "x"\n')
    assert profiles.resolve(None, None, None, None, "a").curve.server_public == server_public
    assert profiles.resolve("tcp://other:5", None, None, None, "a").control == "tcp://other:5"  # flags win
    with pytest.raises(profiles.ProfileError, match="serverkey"):
        profiles.resolve(None, None, None, None, "b")


def test_plaintext_knocks_and_non_zeromq_bytes_on_a_curve_port_are_counted_and_logged(daemon_factory, tmp_path):
    metrics_port = free_port()
    d, server_key, port = remote_daemon(daemon_factory, tmp_path, extra=f"metrics_port = {metrics_port}\n")
    start = refused_count(metrics_port, "handshake")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as http:  # no ZeroMQ greeting at all
        http.sendall(b"GET / HTTP/1.1\r\nHost: orchd\r\n\r\n")
    wait_for(lambda: refused_count(metrics_port, "handshake") > start, 10, "the HTTP request to be counted")
    start = refused_count(metrics_port, "handshake")
    ctx = zmq.Context()
    try:
        knock = ctx.socket(zmq.DEALER)  # plaintext ZeroMQ (orchd.bus would refuse to make it)
        knock.linger = 0
        knock.connect(f"tcp://127.0.0.1:{port}")
        knock.send(b"hello?", zmq.NOBLOCK) if knock.poll(0, zmq.POLLOUT) else None
        wait_for(lambda: refused_count(metrics_port, "handshake") > start, 10, "the plaintext knock to be counted")
        knock.close(linger=0)
    finally:
        ctx.destroy(linger=0)
    wait_for(lambda: '"handshake_refused"' in d.log(), 10, "a log line for the knocks")
    assert d.ctl("status", "--json").returncode == 0  # the daemon goes on
