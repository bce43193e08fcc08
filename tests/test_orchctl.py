"""orchctl: light imports, logs, readable output."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import fake, write_plan

HEAVY = ("pydantic", "asyncio", "sqlite3", "prometheus_client", "actors", "orchd.store", "orchd.actor")


def test_orchctl_imports_only_what_it_needs(short_tmp):
    for argv, want_rc in ((["status"], "3"), (["watch", "s-1"], "3"), (["--version"], "0")):
        code = (
            "import sys\n"
            "from orchctl.cli import main\n"
            f"rc = main({argv!r} + ['--runtime-dir', {str(short_tmp / 'none')!r}])\n"
            f"heavy = [m for m in sys.modules if m.split('.')[0] in {HEAVY!r} or m in {HEAVY!r}]\n"
            "print(rc, heavy)\n"
        )
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
        rc, _, heavy = res.stdout.strip().splitlines()[-1].partition(" ")
        assert rc == want_rc, (argv, res.stderr)
        assert heavy == "[]", f"orchctl {argv} imported {heavy}"


def test_logs_and_tables(daemon, git_repo, tmp_path):
    plan = write_plan(tmp_path / "plan.json", [
        {"name": "talker", "agent": "command", "argv": fake("line:hello there", "err:a complaint", "exit:0")},
        {"name": "quiet", "agent": "command", "argv": fake("exit:0")}])
    sid = daemon.ctl_json("submit", "--plan", str(plan), "--target", str(git_repo))["session"]
    daemon.wait_session(sid)
    text = daemon.ctl("logs", sid, "--worker", "talker").stdout.decode()
    assert "[talker] hello there" in text and "[talker] a complaint" in text
    assert "quiet" not in text.replace("talker", "")
    js = [json.loads(line) for line in daemon.ctl("logs", sid, "--json").stdout.splitlines()]
    assert {e["kind"] for e in js} >= {"agent.text", "worker.log", "worker.exited"}
    table = daemon.ctl("status", sid).stdout.decode()
    assert sid in table and "talker" in table and "done" in table
    listing = daemon.ctl("status").stdout.decode()
    assert sid in listing
    watched = daemon.ctl("watch", sid, "--until-done").stdout.decode()
    assert "worker.exited" in watched and "hello there" in watched
    later = [json.loads(x) for x in daemon.ctl("watch", sid, "--since", "5", "--until-done", "--json").stdout.splitlines()]
    assert later and all(e["seq"] > 5 for e in later)
