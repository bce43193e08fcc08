"""The review and recovery actors hold the live sessions only: an ended session is forgotten, live
and when the log is replayed at start, so a long-running daemon does not keep two more copies of
every session it ever ran (``actors/following.py``).  The supervisor still answers ``status`` for
every one.  Observed through ``orchd_follower_sessions{actor}`` on a real daemon's /metrics."""

from __future__ import annotations

import socket
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import fake, wait_for, write_plan


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _held(port: int) -> dict[str, float] | None:
    """``{actor: sessions held}`` from ``orchd_follower_sessions``; None while not both are there."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {s.labels["actor"]: s.value for fam in text_string_to_metric_families(text)
           for s in fam.samples if s.name == "orchd_follower_sessions"}
    return out if {"review", "recovery"} <= out.keys() else None


def test_followers_forget_ended_sessions_live_and_after_a_restart(daemon_factory, git_repo, tmp_path):
    port = _free_port()
    config = f"metrics_port = {port}\n"
    d = daemon_factory(config=config)
    release = tmp_path / "release"
    held = tmp_path / "held.json"
    write_plan(held, [{"name": "w", "agent": "command", "argv": fake("line:working", f"waitfile:{release}", "exit:0")}])
    ok, broken = tmp_path / "ok.json", tmp_path / "broken.json"
    write_plan(ok, [{"name": "a", "agent": "command", "argv": fake("line:one", "exit:0")}])
    write_plan(broken, [{"name": "a", "agent": "command", "argv": fake("line:one", "exit:0")},
                        {"name": "b", "agent": "command", "argv": fake("err:no", "exit:3")}])

    waiting = d.ctl_json("submit", "--plan", str(held), "--target", str(git_repo))["session"]
    ended = [d.ctl_json("submit", "--plan", str(plan), "--target", str(git_repo))["session"] for plan in (ok, broken)]
    for sid in ended:
        d.wait_session(sid)
    # the two ended sessions are gone from both followers; the one still running is held by each
    wait_for(lambda: _held(port) == {"review": 1.0, "recovery": 1.0}, 20,
             "the followers holding only the running session")
    assert {d.status(sid)["state"] for sid in ended} == {"done", "failed"}  # status still knows them

    release.touch()
    assert d.wait_session(waiting)["state"] == "done"
    wait_for(lambda: _held(port) == {"review": 0.0, "recovery": 0.0}, 20, "the followers holding nothing")

    assert d.stop() == 0
    again = daemon_factory(config=config)  # the same state dir: the log replayed at start
    wait_for(lambda: _held(port) == {"review": 0.0, "recovery": 0.0}, 20,
             "the followers holding nothing after the replay")
    assert {again.status(sid)["state"] for sid in [waiting, *ended]} == {"done", "failed"}
