"""Secrets never reach disk or screens: every format, through every path, with a real daemon."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import fake, wait_for, write_plan

ANT = "sk-ant-api03-Zx9Qw8Er7Ty6Ui5Op4As3Df2Gh1JkLz-AbCdEf"
PROJ = "sk-proj-Qw8Er7Ty6Ui5Op4As3Df2Gh1JkLzXc"
OPENAI = "sk-Ab1Cd2Ef3Gh4Ij5Kl6Mn7Op8Qr9St0Uv"
GOOGLE = "AIzaSyQw8Er7Ty6Ui5Op4As3Df2Gh1JkLzXcVb"
BEARER = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl"
ASSIGNED = "hunter2-Qw8Er7Ty6"        # only recognisable by the name it is assigned to
DAEMON_ENV = "xq7-Mq7Rt5Vx3Zb1-daemon"  # a value of the daemon's own credential variable
PLAN_ENV = "pl4n-Env-Zx9Qw8Er7Ty6"      # a value in the plan's env for a command assignment

SECRETS = [ANT, PROJ, OPENAI, GOOGLE, BEARER, ASSIGNED, DAEMON_ENV, PLAN_ENV]


def _agent_ops() -> list[str]:
    tool_call = {"kind": "agent.tool_call", "call_id": "c1", "tool": "bash",
                 "input": {"command": f"curl -H 'Authorization: Bearer {BEARER}' https://x",
                           "env": {"GITHUB_TOKEN": ASSIGNED}, "key": ANT}}
    tool_result = {"kind": "agent.tool_result", "call_id": "c1", "ok": True,
                   "output": f"GEMINI_API_KEY={GOOGLE}\nOPENAI_API_KEY={OPENAI}"}
    error = {"kind": "agent.error", "message": f"auth failed for {PROJ} (DB_PASSWORD={ASSIGNED})"}
    other = {"kind": "custom", "data": {"api_key": ASSIGNED, "token": DAEMON_ENV}}
    return [
        f"line:plain text {ANT} and {PROJ} and {OPENAI}",
        f"line:google {GOOGLE}; Authorization: Bearer {BEARER}",
        f"line:export SERVICE_API_KEY={ASSIGNED}; the daemon's is {DAEMON_ENV}; the plan's is {PLAN_ENV}",
        f"line:MILESTONE: pushed with token={ASSIGNED}",
        "event:" + json.dumps(tool_call), "event:" + json.dumps(tool_result), "event:" + json.dumps(error),
        "event:" + json.dumps(other),
        f"err:stderr {ANT} {GOOGLE} Bearer {BEARER} AWS_SECRET={ASSIGNED} {DAEMON_ENV} {PLAN_ENV}",
        "exit:3",
    ]


def _no_secret(where: str, text: str | bytes) -> None:
    for secret in SECRETS:
        needle = secret.encode() if isinstance(text, bytes) else secret
        assert needle not in text, f"{secret!r} reached {where}"


def test_no_secret_reaches_the_log_watch_logs_or_the_daemon_log(daemon_factory, git_repo, tmp_path):
    d = daemon_factory(env={"DEPLOY_TOKEN": DAEMON_ENV})
    plan = write_plan(tmp_path / "plan.json", [
        {"name": "leaky", "agent": "command", "argv": fake(*_agent_ops()), "env": {"OPENAI_API_KEY": PLAN_ENV}},
        # an error message: a program that cannot be started, its path holding a key
        {"name": "ghost", "agent": "command", "argv": [f"/nonexistent/{ANT}/agent"]},
    ])
    sid = d.ctl_json("submit", "--plan", str(plan), "--target", str(git_repo))["session"]
    assert d.wait_session(sid)["state"] == "failed"

    watch = d.ctl("watch", sid, "--until-done", check=False).stdout.decode()
    watch_json = d.ctl("watch", sid, "--until-done", "--json", check=False).stdout.decode()
    logs = d.ctl("logs", sid).stdout.decode()
    logs_json = d.ctl("logs", sid, "--json").stdout.decode()
    events = [json.loads(x) for x in watch_json.splitlines() if x.strip()]
    # everything went through: the text, the tool events, stderr, the marker, the errors
    kinds = [e["kind"] for e in events]
    for kind in ("agent.text", "agent.tool_call", "agent.tool_result", "agent.error", "agent.output",
                 "worker.log", "worker.milestone", "worker.started", "session.submitted"):
        assert kind in kinds, kind
    assert any("cannot start" in (e.get("reason") or "") for e in events if e["kind"] == "worker.exited")
    assert "[redacted]" in watch_json and "[redacted:DEPLOY_TOKEN]" in watch_json
    assert "sk-ant-[redacted]" in logs and "Bearer [redacted]" in logs
    for where, text in (("watch", watch), ("watch --json", watch_json), ("logs", logs), ("logs --json", logs_json)):
        _no_secret(where, text)
    submitted = next(e for e in events if e["kind"] == "session.submitted")
    assert submitted["assignments"][0]["env"] == {"OPENAI_API_KEY": "[redacted]"}

    assert d.stop() == 0
    state = Path(d.state_dir)
    files = [f for f in state.rglob("*") if f.is_file()]
    assert any(f.name == "events.sqlite3" for f in files)
    for f in files:  # the event log with its -wal and -shm, and everything else orchd keeps
        _no_secret(str(f), f.read_bytes())
    daemon_log = d.log_path.read_bytes()
    assert b"agent_spawn_failed" in daemon_log  # the error was logged, redacted
    _no_secret("the daemon's log", daemon_log)


def test_the_daemons_log_lines_are_redacted(daemon_factory, tmp_path):
    # a refused request is logged with what the client sent: the log line carries no secret
    d = daemon_factory(env={"DEPLOY_TOKEN": DAEMON_ENV})
    plan = write_plan(tmp_path / "plan.json", [{"name": "a", "agent": "command", "argv": fake("exit:0")}])
    res = d.ctl("submit", "--plan", str(plan), "--target", str(tmp_path / f"no-such-{ANT}-{DAEMON_ENV}"),
                check=False)
    assert res.returncode != 0
    wait_for(lambda: b"submit_refused" in d.log_path.read_bytes(), 10, "the refusal in the daemon's log")
    assert d.stop() == 0
    log = d.log_path.read_bytes()
    assert b"sk-ant-[redacted]" in log and b"[redacted:DEPLOY_TOKEN]" in log
    _no_secret("the daemon's log", log)
