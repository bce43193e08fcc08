"""The web dashboard's HTTP bridge against a real daemon: snapshot, SSE, auth, diff, control."""

from __future__ import annotations

import json
import signal
import socket
import stat
import subprocess
import sys

from tests.conftest import fake, wait_for, write_plan
from tests.helpers import replay_all
from tests.webclient import Browserlike, Sse, web_of

HTTP = {"ORCHD_HTTP_LISTEN": "127.0.0.1:0"}


def _submit(d, tmp_path, git_repo, assignments) -> str:
    plan = write_plan(tmp_path / f"plan-{len(list(tmp_path.iterdir()))}.json", assignments)
    return d.ctl_json("submit", "--plan", str(plan), "--target", str(git_repo))["session"]


def _control(d) -> str:
    return f"ipc://{d.runtime_dir}/control"


def test_snapshot_and_session_events(daemon_factory, git_repo, tmp_path):
    d = daemon_factory(env=HTTP)
    web = web_of(d)
    gate = tmp_path / "go"
    usage = json.dumps({"kind": "agent.usage", "input_tokens": 120, "output_tokens": 30, "cost_usd": 0.25})
    sid = _submit(d, tmp_path, git_repo, [
        {"name": "a", "agent": "command", "role": "builder",
         "argv": fake("line:hello from a", f"event:{usage}", "line:MILESTONE: half", f"waitfile:{gate}", "exit:0")}])
    stream = Sse(web, f"/api/events?session={sid}")
    seen = stream.until(lambda e: e["kind"] == "worker.milestone")
    assert "hello from a" in [e.get("text") for _, e in seen if e["kind"] == "agent.text"]
    status, snap = web.json("GET", "/api/snapshot", token=None)  # loopback: reads need no token
    assert status == 200
    s = next(s for s in snap["sessions"] if s["id"] == sid)
    assert s["state"] == "running" and s["workers"][0]["role"] == "builder"
    assert s["workers"][0]["input_tokens"] == 120 and s["workers"][0]["cost_usd"] == 0.25
    budget = next(b for b in snap["budgets"] if b["session"] == sid)
    assert budget["input_tokens"] == 120 and budget["output_tokens"] == 30
    assert snap["seq"] >= seen[-1][0] - 5 and snap["seq"] > 0
    gate.touch()
    seen += stream.until(lambda e: e["kind"] == "session.state" and e["state"] == "done")
    stream.close()
    # every SSE message's id is its seq; the stream is exactly the session's events in the log
    assert all(i == e["seq"] for i, e in seen)
    logged = [seq for seq, js in replay_all(_control(d)) if json.loads(js)["session"] == sid]
    assert [i for i, _ in seen] == logged
    # an unknown session is a 404 before any stream starts
    status, body = web.json("GET", "/api/events?session=nope", token=None)
    assert status == 404 and body["error"]["code"] == "not_found"


def test_last_event_id_resumes_without_gap_or_duplicate(daemon_factory, git_repo, tmp_path):
    d = daemon_factory(env=HTTP)
    web = web_of(d)
    gate = tmp_path / "go"
    sid = _submit(d, tmp_path, git_repo, [
        {"name": "a", "agent": "command", "argv": fake("json:200", f"waitfile:{gate}", "json:300", "exit:0")}])
    first = Sse(web, "/api/events")
    got = first.until(lambda e: e["kind"] == "agent.output" and e["data"]["i"] == 150)
    first.close()  # the browser goes away in the middle of the history
    gate.touch()
    second = Sse(web, "/api/events", last_event_id=got[-1][0])
    got += second.until(lambda e: e["kind"] == "session.state" and e.get("session") == sid and e["state"] == "done")
    second.close()
    ids = [i for i, _ in got]
    logged = [seq for seq, _ in replay_all(_control(d))]
    assert ids == logged[:len(ids)], "a gap or a duplicate across the reconnect"
    assert sum(1 for _, e in got if e["kind"] == "agent.output") == 500


def test_refused_requests_are_counted_and_headers_are_strict(daemon_factory, git_repo, tmp_path):
    d = daemon_factory(env=HTTP)
    web = web_of(d)
    token_file = d.state_dir / "http-token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert token_file.read_text().strip() == web.token
    gate = tmp_path / "go"
    sid = _submit(d, tmp_path, git_repo, [{"name": "a", "agent": "command", "argv": fake(f"waitfile:{gate}")}])
    wait_for(lambda: d.status(sid)["workers"][0]["state"] == "running", 30, "the worker to run")
    before = {r: web.counter("orchd_http_refused_total", reason=r) for r in
              ("no_token", "bad_token", "cross_origin", "bad_host")}
    own = f"http://127.0.0.1:{web.port}"
    cases = [
        ({}, None, 401, "no_token"),
        ({}, "wrong-" + web.token, 401, "bad_token"),
        ({"Origin": "http://evil.example"}, "default", 403, "cross_origin"),
        ({"Origin": "null"}, "default", 403, "cross_origin"),
        ({"Host": f"evil.example:{web.port}", "Origin": f"http://evil.example:{web.port}"}, "default", 403,
         "bad_host"),
    ]
    for headers, token, code, reason in cases:
        status, body = web.json("POST", f"/api/sessions/{sid}/pause", headers=headers, token=token)
        assert (status, body["error"]["code"]) == (code, reason)
    assert d.status(sid)["state"] == "running", "a refused request paused the session"
    after = {r: web.counter("orchd_http_refused_total", reason=r) for r in before}
    assert {r: after[r] - before[r] for r in before} == {"no_token": 1, "bad_token": 1, "cross_origin": 2,
                                                        "bad_host": 1}
    # a cross-origin read is refused too (a DNS-rebinding page cannot read the snapshot)
    status, _, _ = web.request("GET", "/api/snapshot", headers={"Origin": "http://evil.example"}, token=None)
    assert status == 403
    # the right token from the page's own origin works
    status, body = web.json("POST", f"/api/sessions/{sid}/pause", headers={"Origin": own})
    assert status == 200, body
    assert wait_for(lambda: d.status(sid)["state"] == "paused", 10, "the session to pause")
    status, body = web.json("POST", f"/api/sessions/{sid}/resume")
    assert status == 200 and d.status(sid)["state"] == "running"
    status, body = web.json("POST", "/api/sessions/nope/pause")
    assert status == 404 and body["error"]["code"] == "not_found"
    status, body = web.json("POST", f"/api/sessions/{sid}/dance")
    assert status == 404
    # every response carries the security headers; the page has no inline script
    for path in ("/", "/app.js", "/api/snapshot", "/healthz"):
        status, headers, page = web.request("GET", path, token=None)
        assert status == 200, path
        csp = headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "default-src 'none'" in csp and "unsafe-inline" not in csp
        assert headers["X-Content-Type-Options"] == "nosniff" and headers["Referrer-Policy"] == "no-referrer"
    index = web.request("GET", "/", token=None)[2].decode()
    assert "<script>" not in index and 'src="/app.js"' in index and "style=" not in index
    code = web.request("GET", "/app.js", token=None)[2].decode()
    assert not any(sink in code for sink in (".innerHTML", ".outerHTML", "insertAdjacentHTML", "document.write",
                                             "eval(", "new Function"))
    gate.touch()
    d.wait_session(sid)


def test_submit_and_diff_over_http(daemon_factory, git_repo, tmp_path):
    d = daemon_factory(env=HTTP)
    web = web_of(d)
    gate = tmp_path / "go"
    plan = {"assignments": [{"name": "w", "agent": "command",
                             "argv": fake("write:notes.txt:<b>agent text</b>", f"touch:{tmp_path / 'wrote'}",
                                          f"waitfile:{gate}", "exit:0")}]}
    status, body = web.json("POST", "/api/sessions", {"target": str(git_repo), "plan": plan}, token=None)
    assert status == 401
    status, body = web.json("POST", "/api/sessions", {"target": str(git_repo), "plan": plan, "bogus": 1})
    assert status == 400 and body["error"]["code"] == "invalid"
    status, body = web.json("POST", "/api/sessions", {"target": str(git_repo), "plan": plan})
    assert status == 200, body
    sid = body["session"]
    wait_for(lambda: (tmp_path / "wrote").exists(), 30, "the agent to write its file")
    status, diff = web.json("GET", f"/api/sessions/{sid}/diff", token=None)
    assert status == 200 and diff["base"]
    (part,) = diff["parts"]
    assert part["worker"] == "w" and "notes.txt" in part["stat"] and "+<b>agent text</b>" in part["patch"]
    gate.touch()
    assert d.wait_session(sid)["state"] == "done"


def test_frozen_sse_client_is_dropped_and_others_keep_up(daemon_factory, git_repo, tmp_path):
    d = daemon_factory(env=HTTP)
    web = web_of(d)
    frozen = socket.socket()
    frozen.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a browser that stopped reading
    frozen.connect((web.host, web.port))
    frozen.sendall(f"GET /api/events HTTP/1.0\r\nHost: 127.0.0.1:{web.port}\r\n\r\n".encode())
    wait_for(lambda: "orchd_http_sse_clients 1.0" in web.metrics(), 10, "the frozen client to be streaming")
    live = Browserlike(web, "/api/events")
    sid = _submit(d, tmp_path, git_repo, [{"name": "a", "agent": "command", "argv": fake("json:20000", "exit:0")}])
    got = live.until(lambda e: e["kind"] == "session.state" and e.get("session") == sid and e["state"] == "done",
                     timeout_s=120)
    live.close()
    # the reading client got every event once, in order (had it been too slow, it resumed by Last-Event-ID)
    ids = [i for i, _ in got]
    assert ids == list(range(ids[0], ids[0] + len(ids)))
    assert sum(1 for _, e in got if e["kind"] == "agent.output") == 20000
    assert web.counter("orchd_http_sse_dropped_total") >= 1
    # the frozen client's connection was cut: reading it now ends (reset or EOF), it does not hang
    frozen.settimeout(10)
    try:
        while frozen.recv(65536):
            pass
    except ConnectionResetError:
        pass
    frozen.close()


def test_http_listen_off_bad_and_port_in_use(daemon_factory, tmp_path):
    res = subprocess.run([sys.executable, "-m", "orchd.app", "run", "--http", "nonsense", "--state-dir",
                          str(tmp_path / "s"), "--runtime-dir", str(tmp_path / "r")], capture_output=True, text=True)
    assert res.returncode == 2 and "HOST:PORT" in res.stderr
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    port = blocker.getsockname()[1]
    try:
        d = daemon_factory(env={"ORCHD_HTTP_LISTEN": f"127.0.0.1:{port}"})
        wait_for(lambda: "http_bind_failed" in d.log(), 20, "the bind failure to be logged")
        assert d.ctl("status", "--json").returncode == 0  # the daemon runs on without its dashboard
        assert d.ctl("web", "--json", check=False).returncode == 3
    finally:
        blocker.close()


def test_a_non_loopback_bind_needs_the_token_on_every_api_route(daemon_factory):
    d = daemon_factory(env={"ORCHD_HTTP_LISTEN": "0.0.0.0:0"})
    web = web_of(d)
    assert web.url.startswith("http://0.0.0.0:")
    for path in ("/api/snapshot", "/api/events", "/metrics"):
        status, _, _ = web.request("GET", path, token=None)
        assert status == 401, path
    assert web.request("GET", "/api/snapshot")[0] == 200
    assert web.request("GET", "/", token=None)[0] == 200  # the page itself asks for the token
    stream = Sse(web, f"/api/events?token={web.token}")
    assert stream.next()[1]["kind"] == "daemon.started"
    # SIGTERM with a browser still connected: the daemon stops cleanly and at once
    assert d.stop(timeout_s=20) == 0
    stream.close()
    assert not (d.runtime_dir / "web.json").exists()


def test_orchd_web_waits_for_the_daemon_then_serves(daemon_factory, tmp_path):
    d = daemon_factory(start=False)
    d.runtime_dir.mkdir(mode=0o700, parents=True)
    log = open(tmp_path / "bridge.log", "wb")
    bridge = subprocess.Popen([sys.executable, "-m", "orchd.app", "web", "--state-dir", str(d.state_dir),
                               "--runtime-dir", str(d.runtime_dir), "--http", "127.0.0.1:0"],
                              stdout=log, stderr=subprocess.STDOUT, env={**d.env, "ORCHD_LOG_FORMAT": "json"})
    try:
        wait_for(lambda: "daemon_not_answering" in (tmp_path / "bridge.log").read_text(), 20,
                 "the bridge to say the daemon does not answer")
        d.start()
        web = web_of(d)
        status, body = web.json("GET", "/healthz", token=None)
        assert status == 200 and body["ok"] is True
        d.stop()
        status, body = web.json("GET", "/healthz", token=None)
        assert status == 503 and body["ok"] is False  # the bridge outlives the daemon and says so
    finally:
        bridge.send_signal(signal.SIGTERM)
        assert bridge.wait(20) == 0
        log.close()
