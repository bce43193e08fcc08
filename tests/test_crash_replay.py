"""kill -9 of the daemon mid-flood: every published event is in the log, seq continues."""

from __future__ import annotations

import json

import zmq

from orchctl.client import Client
from orchd import protocol as p
from tests.conftest import fake, wait_for, write_plan
from tests.helpers import proc_state, replay_all


def test_kill9_mid_flood_loses_and_duplicates_nothing(daemon_factory, git_repo, tmp_path):
    d = daemon_factory()
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.linger = 0
    sub.rcvhwm = 0
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(f"ipc://{d.runtime_dir}/events")
    received: dict[int, bytes] = {}

    def drain(timeout_ms: int) -> int:
        n = 0
        if sub.poll(timeout_ms):
            while True:
                try:
                    frame = sub.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                if frame.startswith(b"~sync"):
                    continue
                js = frame.split(b" ", 2)[2]
                seq = json.loads(js)["seq"]
                assert seq not in received, f"seq {seq} published twice"
                received[seq] = js
                n += 1
        return n

    try:
        # the subscription is live once a sync marker comes through
        sub.setsockopt(zmq.SUBSCRIBE, b"~sync")
        client = Client(f"ipc://{d.runtime_dir}/control")
        wait_for(lambda: client.call(p.Sync(token="t")) and sub.poll(100), 10, "sync marker")
        client.close()
        # the agent waits for `release` after its flood, so it is still running when the daemon is
        # killed however fast the flood went; the relaunched generation finds it and finishes
        release = tmp_path / "release"
        plan = write_plan(tmp_path / "plan.json", [
            {"name": "flood", "agent": "command", "rerun": True,  # may run again from scratch after a crash
             "argv": fake("json:60000", f"waitfile:{release}", "exit:0")}])
        sid = d.ctl_json("submit", "--plan", str(plan), "--target", str(git_repo))["session"]
        wait_for(lambda: drain(50) >= 0 and len(received) > 5000, 60, "5000 events")
        agent_pid = d.status(sid)["workers"][0]["pid"]
        d.kill9()
        while drain(500):
            pass
        assert len(received) > 5000
        last_published = max(received)
        # the agent died with the daemon (parent-death signal)
        wait_for(lambda: proc_state(agent_pid) in ("gone", "Z"), 10, "agent to die")

        release.touch()
        d2 = type(d)(d.state_dir, d.runtime_dir).start()
        try:
            log = replay_all(f"ipc://{d2.runtime_dir}/control")
            seqs = [s for s, _ in log]
            assert seqs == list(range(1, len(seqs) + 1)), "seq is not continuous in the log"
            logged = dict(log)
            missing = [s for s in received if s not in logged]
            assert not missing, f"{len(missing)} published events are not in the log, e.g. {missing[:5]}"
            assert all(logged[s] == received[s] for s in received), "the log differs from what was published"
            restarted = [json.loads(b) for s, b in log if s > last_published and b"daemon.started" in b]
            assert restarted and restarted[0]["last_seq"] >= last_published
            # the session goes on: the assignment is relaunched under a new generation and finishes
            s = d2.wait_session(sid, timeout_s=120)
            assert s["state"] == "done", s
            assert s["workers"][0]["gen"] == 1 and s["workers"][0]["exit_code"] == 0
        finally:
            assert d2.stop() == 0
    finally:
        sub.close(0)
        ctx.term()

