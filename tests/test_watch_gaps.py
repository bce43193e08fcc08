"""``orchctl watch SESSION`` that falls behind the PUB: every event of the session printed once.

A watch process is SIGSTOPped while an agent floods far more events than
the PUB's queue holds (``pub_hwm``, 100,000 by default, plus a socket
buffer), so the PUB drops most of them for it; it is continued and must
fill the gap from the log.

With the journal writing ``prev`` (the session's previous seq) into every
event, the gap is found by ``prev``; where the journal does not (``prev``
absent = 0), the cursor checks each non-consecutive frame with one replay.
This test passes either way: it asserts the outcome, not the path.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

from orchctl.client import Client
from orchd import paths
from orchd import protocol as p
from tests.conftest import fake, wait_for, write_plan

FLOOD = 200_000


def _log_seqs(control: str, session: str) -> list[int]:
    client = Client(control)
    seqs, since = [], 0
    try:
        while True:
            reply = client.call(p.Replay(since=since, session=session, limit=10_000))
            seqs += [json.loads(bytes(raw))["seq"] for raw in reply.events]
            since = seqs[-1] if seqs else since
            if not reply.more:
                return seqs
    finally:
        client.close()


def _last_seq(control: str) -> int:
    client = Client(control)
    try:
        return client.call(p.Ping()).last_seq
    finally:
        client.close()


def test_watch_session_after_a_stall_longer_than_the_pub_queue_prints_every_event_once(daemon, git_repo, tmp_path):
    go, flooded, go2 = tmp_path / "go", tmp_path / "flooded", tmp_path / "go2"
    plan = write_plan(tmp_path / "plan.json", [{"name": "flood", "agent": "command", "argv": fake(
        f"waitfile:{go}", f"json:{FLOOD}", f"touch:{flooded}", f"waitfile:{go2}", "line:after the flood", "exit:0")}])
    sid = daemon.ctl_json("submit", "--plan", str(plan), "--target", str(git_repo))["session"]
    control = paths.control_endpoint(daemon.runtime_dir)
    out_path, err_path = tmp_path / "watch.out", tmp_path / "watch.err"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        watch = subprocess.Popen([sys.executable, "-m", "orchctl.cli", "watch", sid, "--until-done", "--json",
                                  "--runtime-dir", str(daemon.runtime_dir)], stdout=out, stderr=err,
                                 env={k: v for k, v in os.environ.items() if k != "ORCHD_RUNTIME_DIR"})
    try:
        # the history is printed once the subscription is live
        wait_for(lambda: out_path.stat().st_size > 0 or watch.poll() is not None, 30, "the watch to go live")
        assert watch.poll() is None, err_path.read_text()
        before = _last_seq(control)
        os.kill(watch.pid, signal.SIGSTOP)
        go.touch()
        wait_for(flooded.exists, 60, "the agent to write its flood")
        # every flood line is logged (and so was published, or dropped, while the watch slept)
        wait_for(lambda: _last_seq(control) >= before + FLOOD, 60, "the daemon to log the flood")
        os.kill(watch.pid, signal.SIGCONT)
        go2.touch()
        assert watch.wait(120) == 0, err_path.read_text()
    finally:
        if watch.poll() is None:
            os.kill(watch.pid, signal.SIGCONT)
            watch.kill()
            watch.wait(10)
    printed = [json.loads(line)["seq"] for line in out_path.read_bytes().splitlines()]
    logged = _log_seqs(control, sid)
    assert len(printed) == len(set(printed)), f"{len(printed) - len(set(printed))} events printed twice"
    assert len(logged) > FLOOD
    missing = len(set(logged) - set(printed))
    assert missing == 0, f"the watch lost {missing} of {len(logged)} events"
    assert printed == logged
