"""What users read and type: session id prefixes and ``last``, ``logs --tail/--follow``, durations in
``status``, the next step after submit and after a ``done`` session, a rehearsal's cost, and the
minimal environment agents get.

Real daemons, real sockets, real subprocesses (orchctl and the agents); the agents are
``tests/fakeagent.py`` or a python one-liner (the process boundary).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from actors.launch import agent_env
from orchctl import ids, render
from orchd import protocol as p
from tests.conftest import fake, wait_for, write_plan

CTL = [sys.executable, "-m", "orchctl.cli"]


def _plan(tmp_path: Path, *assignments: dict) -> Path:
    return write_plan(tmp_path / f"plan-{time.monotonic_ns()}.json", list(assignments))


def _submit(d, tmp_path: Path, *ops: str, extra: tuple[str, ...] = ()) -> str:
    plan = _plan(tmp_path, {"name": "w", "agent": "command", "argv": fake(*ops)})
    return d.ctl_json("submit", "--plan", str(plan), "--target", str(d.repo), *extra)["session"]


@pytest.fixture
def d(daemon, git_repo):
    daemon.repo = git_repo
    return daemon


# ---------------------------------------------------------------- session ids


def test_pick_prefix_last_ambiguous_and_unknown():
    sessions = [("s-aa11bb22", 10.0), ("s-aa33cc44", 12.0), ("s-ff000000", 11.0)]
    assert ids.pick("last", sessions) == "s-aa33cc44"
    assert ids.pick("s-ff", sessions) == "s-ff000000" == ids.pick("ff", sessions)
    assert ids.pick("s-aa11bb22", sessions) == "s-aa11bb22"
    with pytest.raises(ids.Ambiguous) as info:
        ids.pick("aa", sessions)
    assert info.value.candidates == ["s-aa11bb22", "s-aa33cc44"]
    for text in ("zz", "", "s-aa11bb22x"):
        with pytest.raises(ids.NoMatch):
            ids.pick(text, sessions)
    with pytest.raises(ids.NoMatch):
        ids.pick("last", [])
    # equal stamps: the later submit is the last one
    assert ids.pick("last", [("s-2", 5.0), ("s-1", 5.0)]) == "s-1"


def test_prefix_and_last_work_wherever_a_session_id_does(d, tmp_path):
    first = _submit(d, tmp_path, "line:alpha", "exit:0")
    d.wait_session(first)
    second = _submit(d, tmp_path, "line:bravo", "exit:0")
    d.wait_session(second)
    assert d.status("last")["id"] == second
    for sid in (first, second):
        short = sid[2:6]  # without the "s-" and cut short
        if sum(s.startswith("s-" + short) for s in (first, second)) == 1:
            assert d.status(short)["id"] == sid
            assert d.status("s-" + short)["id"] == sid
    logs = d.ctl("logs", "last").stdout.decode()
    assert "[w] bravo" in logs and "alpha" not in logs
    watched = [json.loads(x) for x in d.ctl("watch", "last", "--until-done", "--json").stdout.splitlines()]
    assert watched and {e["session"] for e in watched} == {second}
    assert d.ctl_json("clean", "last")["session"] == second
    # "s-" is a prefix of both: ambiguous, naming them, exit 1
    res = d.ctl("status", "s-", check=False)
    err = res.stderr.decode()
    assert res.returncode == 1 and "[ambiguous]" in err and first in err and second in err
    res = d.ctl("status", "s-", "--json", check=False)
    assert res.returncode == 1 and json.loads(res.stdout)["error"]["code"] == "ambiguous"
    res = d.ctl("logs", "zzzz", "--json", check=False)
    assert res.returncode == 1 and json.loads(res.stdout)["error"]["code"] == "not_found"


# ---------------------------------------------------------------- logs --tail / --follow


def test_logs_tail_prints_the_last_lines(d, tmp_path):
    sid = _submit(d, tmp_path, *(f"line:line {i}" for i in range(6)), "exit:0")
    d.wait_session(sid)
    full = d.ctl("logs", sid).stdout.decode().splitlines()
    assert len(full) > 3 and "[w] line 5" in full
    assert d.ctl("logs", sid[:6], "--tail", "3").stdout.decode().splitlines() == full[-3:]
    assert d.ctl("logs", sid, "--tail", "0").stdout.decode() == ""
    as_json = d.ctl("logs", sid, "--tail", "2", "--json").stdout.decode().splitlines()
    assert [json.loads(x)["kind"] for x in as_json] and len(as_json) == 2
    assert d.ctl("logs", sid, "--tail", "-1", check=False).returncode == 2


def test_logs_follow_prints_history_then_live_until_the_session_ends(d, tmp_path):
    gate = tmp_path / "gate"
    sid = _submit(d, tmp_path, "line:before the gate", "err:a warning", "waitfile:" + str(gate),
                  "line:after the gate", "event:" + json.dumps({"kind": "agent.tool_result", "call_id": "c1",
                                                                 "ok": False, "output": "3 tests failed"}),
                  "exit:0")
    proc = subprocess.Popen([*CTL, "logs", sid, "--follow", "--runtime-dir", str(d.runtime_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        wait_for(lambda: any("before the gate" in x for x in lines), 30, "the history line")
        # while it runs, status shows how long it has been running, and no end yet
        st = d.status(sid)
        assert st["started_at"] and st["ended_at"] is None and st["workers"][0]["ended_at"] is None
        human = d.ctl("status", sid).stdout.decode()
        assert "elapsed" in human and "ended" not in human
        assert proc.poll() is None  # following, not finished
        gate.touch()
        assert proc.wait(60) == 0  # ends by itself once the session has ended
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(10)
    text = "".join(lines)
    assert text.count("[w] before the gate\n") == 1 and text.count("[w] after the gate\n") == 1
    assert "[w] a warning" in text
    assert "[w] tool failed 3 tests failed" in text
    assert text.index("before the gate") < text.index("after the gate")


# ---------------------------------------------------------------- durations, next steps, rehearsal cost


def test_status_durations_next_steps_and_the_result(d, tmp_path):
    res = d.ctl("submit", "--plan", str(_plan(tmp_path, {"name": "w", "agent": "command",
                                                           "argv": fake("write:f.txt:x", "exit:0")})),
                "--target", str(d.repo))
    out = res.stdout.decode()
    sid = out.split()[1]
    assert f"orchctl watch {sid} --until-done" in out
    watched = d.ctl("watch", sid, "--until-done")
    take = f"take the result: git -C {d.repo} merge orchd/{sid}"
    assert take in watched.stderr.decode()
    st = d.status(sid)
    assert st["state"] == "done" and st["created_ts"] <= st["started_at"] <= st["ended_at"]
    w = st["workers"][0]
    assert st["started_at"] <= w["started_at"] <= w["ended_at"] <= st["ended_at"]
    human = d.ctl("status", sid).stdout.decode()
    assert "started " in human and " after " in human and take in human
    assert "ELAPSED" in human and "STARTED" in human
    # the take-the-result line is a command that works
    subprocess.run(["git", "-C", str(d.repo), "-c", "user.name=t", "-c", "user.email=t@t", "merge", "-q",
                    f"orchd/{sid}"], check=True)
    assert (d.repo / "f.txt").read_text() == "x"


def test_a_rehearsals_cost_is_shown_as_a_rehearsal(d, tmp_path):
    usage = json.dumps({"kind": "agent.usage", "input_tokens": 100, "output_tokens": 20, "cost_usd": 0.0123})
    sid = _submit(d, tmp_path, "event:" + usage, "exit:0", extra=("--rehearse",))
    real = _submit(d, tmp_path, "event:" + usage, "exit:0")
    for s in (sid, real):
        d.wait_session(s)
    st = d.status(sid)
    assert st["rehearse"] is True and st["cost_usd"] == pytest.approx(0.0123)
    assert d.status(real)["rehearse"] is False
    line = [x for x in d.ctl("watch", sid, "--until-done").stdout.decode().splitlines() if "agent.usage" in x]
    assert line and line[0].endswith("cost=$0.0123 (rehearsal, not billed)")
    assert "cost $0.0123 (rehearsal, not billed)" in d.ctl("status", sid).stdout.decode()
    real_line = [x for x in d.ctl("watch", real, "--until-done").stdout.decode().splitlines() if "agent.usage" in x]
    assert real_line[0].endswith("cost=$0.0123")
    assert "not billed" not in d.ctl("status", real).stdout.decode()


def test_watching_everything_tells_rehearsals_submitted_meanwhile(d, tmp_path):
    usage = json.dumps({"kind": "agent.usage", "input_tokens": 1, "output_tokens": 2, "cost_usd": 0.25})
    proc = subprocess.Popen([*CTL, "watch", "--kind", "agent.usage", "--kind", "daemon.",
                             "--runtime-dir", str(d.runtime_dir)], stdout=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        wait_for(lambda: any("daemon.started" in x for x in lines), 30, "the watch to print its history")
        rehearsal = _submit(d, tmp_path, "event:" + usage, "exit:0", extra=("--rehearse",))
        real = _submit(d, tmp_path, "event:" + usage, "exit:0")
        got = wait_for(lambda: {s: x for x in lines for s in (rehearsal, real) if s in x and "agent.usage" in x}
                       if sum("agent.usage" in x for x in lines) >= 2 else None, 60, "both usage lines")
    finally:
        proc.kill()
        proc.wait(10)
    assert got[rehearsal].rstrip().endswith("cost=$0.2500 (rehearsal, not billed)")
    assert got[real].rstrip().endswith("cost=$0.2500")


def test_render_durations_and_costs_are_pure():
    assert [render.duration(x) for x in (0, 59, 61, 3600, 3 * 86400 + 7200)] == ["0s", "59s", "1m01s", "1h00m",
                                                                                 "3d02h"]
    assert render.cost(None, True) == "" and render.cost(0.5, False) == "$0.5000"
    assert render.cost(0.5, True) == "$0.5000 (rehearsal, not billed)"
    s = p.SessionInfo(id="s-1", state="running", created_ts=100.0, started_at=100.0,
                      workers=[p.WorkerInfo(name="w", agent="claude", state="running", started_at=130.0)])
    text = render.session(s, now=190.0)
    assert "elapsed 1m30s" in text and "1m00s" in text
    done = p.SessionInfo(id="s-1", state="done", target="/t", branch="orchd/s-1", started_at=100.0,
                         ended_at=160.0, cost_usd=1.5, rehearse=True)
    assert render.ended_line(done) == ("session s-1 ended done after 1m00s, cost $1.5000 (rehearsal, not billed); "
                                       "take the result: git -C /t merge orchd/s-1")


# ---------------------------------------------------------------- the agents' environment


def test_agent_env_keeps_only_what_agents_need():
    environ = {"PATH": "/bin", "HOME": "/h", "LC_ALL": "C", "SECRET_X": "1", "ANTHROPIC_API_KEY": "a",
               "OPENAI_API_KEY": "o", "GOOGLE_CLOUD_PROJECT": "g", "MY_TOOL_TOKEN": "t", "TMPDIR": "/tmp",
               "ORCHD_CONTROL_ENDPOINT": "ipc://x"}
    assert agent_env(environ, "claude", []) == {"PATH": "/bin", "HOME": "/h", "LC_ALL": "C", "ANTHROPIC_API_KEY": "a"}
    assert agent_env(environ, "codex", []).keys() == {"PATH", "HOME", "LC_ALL", "OPENAI_API_KEY"}
    assert agent_env(environ, "gemini", []).keys() == {"PATH", "HOME", "LC_ALL", "GOOGLE_CLOUD_PROJECT"}
    assert agent_env(environ, "command", ["MY_*"]).keys() == {"PATH", "HOME", "LC_ALL", "MY_TOOL_TOKEN"}


PRINT_ENV = [sys.executable, "-c", "import json, os; print(json.dumps({'env': dict(os.environ)}))"]


def test_an_agent_gets_a_minimal_environment(daemon_factory, git_repo, tmp_path):
    d = daemon_factory(config='agent_env_pass = ["PASS_ME"]\n[agents.command]\nenv_pass = ["ALSO_*"]\n',
                       env={"SECRET_X": "1", "PASS_ME": "2", "ALSO_THIS": "3", "LANG": "C.UTF-8"})
    plan = _plan(tmp_path, {"name": "env", "agent": "command", "argv": PRINT_ENV, "env": {"FROM_PLAN": "4"}})
    sid = d.ctl_json("submit", "--plan", str(plan), "--target", str(git_repo))["session"]
    assert d.wait_session(sid)["state"] == "done"
    events = [json.loads(x) for x in d.ctl("watch", sid, "--until-done", "--json").stdout.splitlines()]
    env = next(e["data"]["env"] for e in events if e["kind"] == "agent.output")
    assert "SECRET_X" not in env
    assert env["PATH"] and env["HOME"] == os.environ["HOME"] and env["LANG"] == "C.UTF-8"
    assert env["FROM_PLAN"] == "4" and env["PASS_ME"] == "2" and env["ALSO_THIS"] == "3"
    assert env["TMPDIR"].startswith(str(d.state_dir)) and env["ORCHD_SESSION"] == sid
    # the daemon's own variables are not the agent's business
    assert not [k for k in env if k.startswith("ORCHD_") and k not in ("ORCHD_SESSION", "ORCHD_WORKER",
                                                                        "ORCHD_GEN", "ORCHD_AGENT_OF")]


def test_env_pass_names_are_checked(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('agent_env_pass = ["NOT A NAME"]\n')
    res = subprocess.run([sys.executable, "-m", "orchd.app", "check-config", str(cfg)], capture_output=True,
                         text=True, timeout=30)
    assert res.returncode == 2 and "agent_env_pass[0]" in res.stderr + res.stdout
