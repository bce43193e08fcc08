"""What a misbehaving agent program does to a worker: events that say so, never a crash or a hang."""

from __future__ import annotations

import json
import signal

from tests.conftest import fake, wait_for, write_plan


def _run(daemon, git_repo, tmp_path, argv, limits=()):
    plan = write_plan(tmp_path / "plan.json", [{"name": "w", "agent": "command", "argv": argv}])
    args = ["submit", "--plan", str(plan), "--target", str(git_repo)]
    for lim in limits:
        args += ["--limit", lim]
    sid = daemon.ctl_json(*args)["session"]
    res = daemon.ctl("watch", sid, "--until-done", "--json", timeout=120, check=False)
    events = [json.loads(line) for line in res.stdout.splitlines()]
    # watch --until-done exits 0 only for a session that ended done
    assert res.returncode == (0 if events[-1]["state"] == "done" else 1), res.stderr
    return sid, events


def _kinds(events, kind):
    return [e for e in events if e["kind"] == kind]


def test_ten_megabyte_line_is_reported_and_skipped(daemon, git_repo, tmp_path):
    sid, events = _run(daemon, git_repo, tmp_path, fake("line:before", "long:10485760", "line:after", "exit:0"))
    bad = _kinds(events, "worker.bad_line")
    assert [b["problem"] for b in bad] == ["too_long"]
    assert bad[0]["size"] == 10485760 and bad[0]["preview"].startswith("xxx")
    assert [e["text"] for e in _kinds(events, "agent.text")] == ["before", "after"]
    assert daemon.status(sid)["workers"][0]["state"] == "done"


def test_binary_junk_nul_and_partial_last_line(daemon, git_repo, tmp_path):
    sid, events = _run(daemon, git_repo, tmp_path, fake("junk:3000", "line:ok", "partial:no newline", "exit:0"))
    problems = {b["problem"] for b in _kinds(events, "worker.bad_line")}
    assert {"invalid_utf8", "nul", "partial"} <= problems
    texts = [e["text"] for e in _kinds(events, "agent.text")]
    assert "ok" in texts and "no newline" in texts
    assert all("\x00" not in t for t in texts)
    assert daemon.status(sid)["state"] == "done"


def test_crash_mid_line_records_signal_and_partial_line(daemon, git_repo, tmp_path):
    sid, events = _run(daemon, git_repo, tmp_path, fake("line:one", 'partial:{"half": ', f"kill:{signal.SIGKILL}"))
    assert "partial" in {b["problem"] for b in _kinds(events, "worker.bad_line")}
    exited = _kinds(events, "worker.exited")[-1]
    assert exited["state"] == "failed" and exited["signal"] == signal.SIGKILL and exited["exit_code"] is None
    assert daemon.status(sid)["state"] == "failed"


def test_nonzero_exit_and_json_lines(daemon, git_repo, tmp_path):
    sid, events = _run(daemon, git_repo, tmp_path, fake(
        'event:{"kind":"agent.usage","input_tokens":5,"output_tokens":7}', "event:[1,2]", "exit:3"))
    assert _kinds(events, "agent.usage")[0]["input_tokens"] == 5
    assert _kinds(events, "agent.output")[0]["data"] == [1, 2]
    assert _kinds(events, "agent.result")[-1]["ok"] is False
    w = daemon.status(sid)["workers"][0]
    assert (w["state"], w["exit_code"], w["input_tokens"], w["output_tokens"]) == ("failed", 3, 5, 7)


def test_flood_every_line_arrives_in_order(daemon, git_repo, tmp_path):
    sid, events = _run(daemon, git_repo, tmp_path, fake("json:20000", "exit:0"))
    data = [e["data"]["i"] for e in _kinds(events, "agent.output")]
    assert data == list(range(20000))


def test_stall_limit_stops_a_silent_agent(daemon, git_repo, tmp_path):
    sid, events = _run(daemon, git_repo, tmp_path, fake("line:started", "hang"), limits=["stall_s=1"])
    lim = _kinds(events, "worker.limit")
    assert [x["limit"] for x in lim] == ["stall"]
    exited = _kinds(events, "worker.exited")[-1]
    assert exited["state"] == "failed" and "stall" in exited["reason"]
    assert exited["signal"] == signal.SIGTERM


def test_wall_time_limit_stops_a_busy_agent(daemon, git_repo, tmp_path):
    # keeps printing (never stalls) but runs past its wall time
    argv = ["sh", "-c", "while true; do echo tick; done | head -c 100000000000 | while read l; do echo $l; done"]
    sid, events = _run(daemon, git_repo, tmp_path, argv, limits=["wall_time_s=1.5", "stall_s=60"])
    assert [x["limit"] for x in _kinds(events, "worker.limit")] == ["wall_time"]
    assert _kinds(events, "worker.exited")[-1]["state"] == "failed"
    assert daemon.status(sid)["state"] == "failed"


def test_token_budget_stops_the_session(daemon, git_repo, tmp_path):
    argv = fake('event:{"kind":"agent.usage","input_tokens":600,"output_tokens":600}', "line:still going", "hang")
    sid, events = _run(daemon, git_repo, tmp_path, argv, limits=["max_tokens=1000"])
    assert [x["limit"] for x in _kinds(events, "worker.limit")] == ["tokens"]
    final = _kinds(events, "session.state")[-1]
    assert final["state"] == "failed" and "budget" in final["reason"]
    w = daemon.wait_session(sid)["workers"][0]
    assert w["state"] == "failed"


def test_background_process_holding_stdout_does_not_hold_the_worker(daemon, git_repo, tmp_path):
    # the agent prints DONE and exits 0, but a `sleep 1000` it started still holds its stdout
    pidfile = tmp_path / "bg.pid"
    sid, events = _run(daemon, git_repo, tmp_path, fake("line:DONE: finished", f"bg:{pidfile}", "exit:0"))
    w = daemon.status(sid)["workers"][0]
    assert (w["state"], w["exit_code"]) == ("done", 0)
    assert [e["text"] for e in _kinds(events, "worker.done")] == ["finished"]
    assert _kinds(events, "worker.limit") == []
    exited = _kinds(events, "worker.exited")[-1]
    assert (exited["state"], exited["exit_code"], exited["signal"]) == ("done", 0, None)
    # ended by the exit and the 2 s exit grace, not by the background process's end
    assert exited["ts"] - _kinds(events, "worker.started")[-1]["ts"] < 6
    pid = int(pidfile.read_text())
    wait_for(lambda: _dead(pid), 5, "the background process to be killed")


def _dead(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"  # killed, not yet reaped by init
    except FileNotFoundError:
        return True
