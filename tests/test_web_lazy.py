"""The dashboard bridge inside ``orchd run`` costs nothing until it is used (orchd/web_listen.py,
orchd/web_link.py ``Hub``): the port is bound at start, aiohttp is loaded on the first connection,
and the bridge subscribes to the events socket only while an SSE client streams.

Both are observed from outside the daemon: which shared objects its process has mapped
(``/proc/PID/maps``), and how many connections its events socket has (``/proc/net/unix`` lists the
listening ipc socket and each connection it accepted under the socket's path).
"""

from __future__ import annotations

from pathlib import Path

from tests.conftest import fake, wait_for, write_plan
from tests.helpers import replay_all
from tests.webclient import Sse, web_of

HTTP = {"ORCHD_HTTP_LISTEN": "127.0.0.1:0"}  # the default (the bridge on), on a free port


def events_subscribers(d) -> int:
    """Connections to the daemon's events socket now (the listening socket itself not counted)."""
    path = f"{d.runtime_dir}/events"
    lines = Path("/proc/net/unix").read_text().splitlines()
    return sum(1 for line in lines if line.endswith(" " + path)) - 1


def mapped(d) -> str:
    return Path(f"/proc/{d.proc.pid}/maps").read_text()


def _session(d, tmp_path, git_repo, name: str, *ops: str) -> str:
    plan = write_plan(tmp_path / f"{name}.json", [{"name": name, "agent": "command", "argv": fake(*ops)}])
    return d.ctl_json("submit", "--plan", str(plan), "--target", str(git_repo))["session"]


def _done(sid: str):
    return lambda e: e["kind"] == "session.state" and e.get("session") == sid and e["state"] == "done"


def test_the_bridge_subscribes_only_while_a_browser_streams_and_misses_nothing(daemon_factory, git_repo, tmp_path):
    d = daemon_factory(env=HTTP)
    web = web_of(d)  # web.json is there from the start, written without loading the bridge
    assert "/aiohttp/" not in mapped(d), "aiohttp was loaded before anybody connected"
    assert events_subscribers(d) == 0
    before = _session(d, tmp_path, git_repo, "before", "line:logged before any browser", "exit:0")
    assert d.wait_session(before)["state"] == "done"

    # the page, the snapshot and the metrics load the bridge, but none of them needs the events SUB
    assert web.request("GET", "/", token=None)[0] == 200
    assert "/aiohttp/" in mapped(d)
    status, snap = web.json("GET", "/api/snapshot", token=None)
    logged = [seq for seq, _ in replay_all(f"ipc://{d.runtime_dir}/control")]
    assert status == 200 and snap["seq"] == logged[-1]
    metrics = web.metrics()
    assert "orchd_http_events_subscribed 0.0" in metrics and "orchd_http_sse_clients 0.0" in metrics
    assert events_subscribers(d) == 0

    # the first SSE client: the bridge subscribes, and the client gets the whole history, then live events
    stream = Sse(web, "/api/events")
    got = stream.until(_done(before))
    assert events_subscribers(d) == 1
    assert "orchd_http_events_subscribed 1.0" in web.metrics()
    live = _session(d, tmp_path, git_repo, "live", "line:while a browser watches", "json:50", "exit:0")
    got += stream.until(_done(live))
    logged = [seq for seq, _ in replay_all(f"ipc://{d.runtime_dir}/control")]
    assert [i for i, _ in got] == logged[:len(got)], "a gap or a duplicate in history + live"
    assert "logged before any browser" in [e.get("text") for _, e in got]
    assert sum(1 for _, e in got if e["kind"] == "agent.output" and e["session"] == live) == 50

    # the last client leaves: the SUB is closed a little later; events go on being logged
    stream.close()
    wait_for(lambda: events_subscribers(d) == 0, 30, "the bridge to close its events SUB")
    assert "orchd_http_events_subscribed 0.0" in web.metrics()
    after = _session(d, tmp_path, git_repo, "after", "line:nobody watching", "exit:0")
    assert d.wait_session(after)["state"] == "done"

    # a browser coming back resumes from its Last-Event-ID: the bridge subscribes again, nothing is lost
    again = Sse(web, "/api/events", last_event_id=got[-1][0])
    resumed = again.until(_done(after))
    assert events_subscribers(d) == 1
    more = _session(d, tmp_path, git_repo, "more", "json:20", "exit:0")
    resumed += again.until(_done(more))
    again.close()
    logged = [seq for seq, _ in replay_all(f"ipc://{d.runtime_dir}/control")]
    assert [i for i, _ in got + resumed] == logged[:len(got) + len(resumed)]
    assert sum(1 for _, e in resumed if e["kind"] == "agent.output" and e["session"] == more) == 20
