"""End to end with the REAL agent CLIs: daemon + orchctl + claude/codex/gemini.

Every session here is a rehearsal (``--rehearse``): the real, pinned CLIs run
headless in their own git worktrees and talk to the daemon's built-in
scripted model server on 127.0.0.1 (docs/scenarios.md), so no tokens are
spent and no network is needed.  A missing CLI fails the tests
(``tests.agentbin.require_agent``): run scripts/install-agents.sh.

Ordering is never waited for with sleeps: ``orchctl watch --until-done``
returns once the session has ended, and everything else polls with
``wait_for`` and a deadline.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchctl.client import Client
from orchd import protocol as p
from tests.agentbin import AGENTS, agent_env_path, agent_path, require_agent
from tests.conftest import wait_for, write_plan
from tests.helpers import alive, git, group_members, replay_all, watch_until_done

PINNED = {"claude": "2.1.197", "codex": "0.169.0", "gemini": "0.61.0"}
WATCH_TIMEOUT_S = 240  # one CLI start is 1-10 s; the default plan runs three in a row
# the tool each CLI's native "write a file" call is normalized to
WRITE_TOOL = {"claude": "Write", "codex": "file_change", "gemini": "write_file"}
# the clean single-worker sequence, in order (worker.log lines from CLI stderr may come in between)
CLEAN_RUN = ["worker.launching", "worker.started", "agent.session", "agent.tool_call", "agent.tool_result",
             "agent.text", "worker.milestone", "worker.done", "agent.usage", "agent.result", "worker.exited"]


# ------------------------------------------------------------------ helpers

@pytest.fixture
def cli_daemon(daemon_factory):
    """A daemon that finds the real CLIs on its PATH; must exit 0 on SIGTERM."""
    d = daemon_factory(env={"PATH": agent_env_path()})
    yield d
    if d.proc.poll() is None:
        code = d.stop()
        assert code == 0, f"daemon exited {code} on SIGTERM:\n{d.log()[-3000:]}"


def _submit(d, *args: str) -> dict:
    return d.ctl_json("submit", *args)


def _watch(d, sid: str) -> list[dict]:
    """The session's whole history, until it ends (orchctl watch --until-done --json)."""
    events = watch_until_done(d, sid, WATCH_TIMEOUT_S)
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(set(seqs)), "watch printed an event twice or out of order"
    assert all(e["session"] == sid for e in events)
    return events


def _logs(d, sid: str) -> str:
    """``orchctl logs SESSION --json``: agent text and stderr lines, for failure messages."""
    res = d.ctl("logs", sid, "--json", check=False)
    return res.stdout.decode(errors="replace")[-6000:]


def _kinds(events: list[dict]) -> list[str]:
    return [e["kind"] for e in events]


def _of(events: list[dict], worker: str, gen: int | None = None) -> list[dict]:
    return [e for e in events if e["worker"] == worker and (gen is None or e["gen"] == gen)]


def _one(events: list[dict], kind: str) -> dict:
    found = [e for e in events if e["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}: {_kinds(events)}"
    return found[0]


def _replay_all(d) -> list[dict]:
    """Every event in the daemon's log (all sessions and daemon events)."""
    return [json.loads(body) for _, body in replay_all(f"ipc://{d.runtime_dir}/control")]


def _session_events(d, sid: str) -> list[dict]:
    """The session's events so far (a snapshot; does not wait for the end)."""
    client = Client(f"ipc://{d.runtime_dir}/control")
    try:
        reply = client.call(p.Replay(since=0, session=sid, limit=10_000), timeout_s=20)
        assert isinstance(reply, p.ReplayReply), reply
        return [json.loads(bytes(raw)) for raw in reply.events]
    finally:
        client.close()


def _check_preflight(worker_events: list[dict], agent: str) -> None:
    """A launch's preflight findings come right after ``worker.launching``; gemini's folder trust is
    fixed by the launch (and recorded), nothing else is expected of a rehearsal on this machine."""
    kinds = _kinds([e for e in worker_events if e["kind"] != "worker.log"])
    for i, kind in enumerate(kinds):
        if kind == "worker.preflight":
            assert kinds[i - 1] == "worker.launching", kinds
    found = [(f["code"], f["fixed"]) for e in worker_events if e["kind"] == "worker.preflight" for f in e["findings"]]
    if agent == "gemini":
        assert ("folder_trust", True) in found, found


def _check_clean_run(worker_events: list[dict], agent: str, name: str, gen: int = 0,
                     resumed_from: str | None = None) -> dict:
    """The normalized event sequence of one clean generation of one worker; returns its agent.session."""
    # worker.committed comes when orchd commits the clone (at the merge, after the exit)
    seq = [e for e in worker_events if e["kind"] not in ("worker.log", "worker.committed", "worker.preflight")]
    _check_preflight(worker_events, agent)
    assert _kinds(seq) == CLEAN_RUN, f"{agent} {name} gen {gen}: unexpected events {_kinds(seq)}"
    (launching, started, session, call, result, text, milestone, done, usage, final, exited) = seq
    assert all(e["agent"] == agent and e["gen"] == gen for e in seq)
    assert launching["resume"] is (resumed_from is not None)
    assert PINNED[agent] in (started["agent_version"] or ""), started["agent_version"]
    assert started["confined"] is True  # the default profile is "workspace"
    assert started["resumed_from"] == resumed_from
    assert started["pid"] > 0
    assert session["agent_session_id"]
    assert call["tool"] == WRITE_TOOL[agent] and call["call_id"]
    assert result["call_id"] == call["call_id"] and result["ok"] is True
    assert f"MILESTONE: wrote {name}.txt" in text["text"] and f"DONE: {name}" in text["text"]
    assert milestone["text"] == f"wrote {name}.txt"
    assert done["text"] == name
    assert usage["input_tokens"] > 0 and usage["output_tokens"] > 0
    assert final["ok"] is True and f"DONE: {name}" in final["text"]
    assert (exited["state"], exited["exit_code"], exited["signal"]) == ("done", 0, None)
    return session


# ------------------------------------------------------------------ 1. one assignment per real CLI

@pytest.mark.parametrize("agent", AGENTS)
def test_one_assignment_rehearsal_per_cli(agent, cli_daemon, git_repo, tmp_path):
    require_agent(agent)
    name = f"solo-{agent}"
    plan = write_plan(tmp_path / "plan.json", [{"name": name, "agent": agent, "prompt": "Write the file."}])
    sub = _submit(cli_daemon, "--plan", str(plan), "--target", str(git_repo), "--rehearse")
    sid = sub["session"]
    assert sub["assignments"] == [name]

    events = _watch(cli_daemon, sid)
    assert events[-1]["kind"] == "session.state" and events[-1]["state"] == "done", \
        f"{_kinds(events)}\n--- logs ---\n{_logs(cli_daemon, sid)}"
    assert {e["worker"] for e in events if e["worker"]} == {name}
    _check_clean_run(_of(events, name), agent, name)
    started = _one(events, "worker.started")
    assert started["cwd"] != str(git_repo)

    status = cli_daemon.status(sid)
    assert status["state"] == "done" and status["branch"] == f"orchd/{sid}"
    (w,) = status["workers"]
    assert (w["name"], w["agent"], w["state"], w["exit_code"], w["gen"]) == (name, agent, "done", 0, 0)
    assert w["input_tokens"] > 0 and w["output_tokens"] > 0
    assert w["milestones"] == 1 and w["progress"] == 1.0

    assert git(git_repo, "show", f"orchd/{sid}:{name}.txt") == f"rehearsal output for assignment {name}\n"


# ------------------------------------------------------------------ 2. the headline: default plan, three CLIs

def _snapshot(repo: Path) -> dict:
    """Everything of the target orchd must not touch: HEAD, branch, branches, index, working tree."""
    files = {}
    for path in sorted(repo.rglob("*")):
        if ".git" in path.relative_to(repo).parts or not path.is_file():
            continue
        files[str(path.relative_to(repo))] = path.read_bytes()
    return {
        "head": git(repo, "rev-parse", "HEAD"),
        "branch": git(repo, "symbolic-ref", "HEAD"),
        "branches": {line for line in git(repo, "for-each-ref", "--format=%(refname) %(objectname)",
                                          "refs/heads").splitlines()},
        "status": git(repo, "status", "--porcelain=v1", "-uall"),
        "index": git(repo, "ls-files", "-s"),
        "staged": git(repo, "diff", "--cached", "--binary"),
        "unstaged": git(repo, "diff", "--binary"),
        "files": files,
    }


def test_default_plan_runs_three_clis_in_order_and_leaves_target_alone(cli_daemon, git_repo):
    for agent in AGENTS:
        require_agent(agent)
    # uncommitted work in the target: an unstaged edit, a staged new file, an untracked file
    (git_repo / "README.md").write_text("target repo\nlocal edit, not committed\n")
    (git_repo / "staged.txt").write_text("staged, not committed\n")
    git(git_repo, "add", "staged.txt")
    (git_repo / "untracked.txt").write_bytes(b"untracked \x00\xff bytes\n")
    before = _snapshot(git_repo)
    assert " M README.md" in before["status"] and "A  staged.txt" in before["status"]

    sub = _submit(cli_daemon, "Add a /health endpoint", "--target", str(git_repo), "--rehearse")
    sid = sub["session"]
    assert sub["assignments"] == ["design", "implement", "review"]
    events = _watch(cli_daemon, sid)
    assert events[-1]["kind"] == "session.state" and events[-1]["state"] == "done", \
        f"{_kinds(events)}\n--- logs ---\n{_logs(cli_daemon, sid)}"

    order = [("design", "gemini"), ("implement", "claude"), ("review", "codex")]
    cwds = []
    for name, agent in order:
        _check_clean_run(_of(events, name), agent, name)
        cwds.append(_one(_of(events, name), "worker.started")["cwd"])
    # strictly one after the other: each starts after the one before it has exited
    for (prev, _), (nxt, _) in zip(order, order[1:]):
        exited = _one(_of(events, prev), "worker.exited")["seq"]
        started = _one(_of(events, nxt), "worker.started")["seq"]
        launching = _one(_of(events, nxt), "worker.launching")["seq"]
        assert exited < launching < started, f"{nxt} started before {prev} exited"
    # each in its own worktree, none of them the target
    assert len(set(cwds)) == 3, cwds
    for cwd in cwds:
        assert Path(cwd).resolve() != git_repo.resolve()
        assert not Path(cwd).resolve().is_relative_to(git_repo.resolve()), cwd
    # a later assignment's worktree holds the results of the ones before it
    assert (Path(cwds[1]) / "design.txt").is_file()
    assert {"design.txt", "implement.txt"} <= {p.name for p in Path(cwds[2]).iterdir()}

    status = cli_daemon.status(sid)
    assert status["state"] == "done"
    assert [(w["name"], w["agent"], w["state"], w["exit_code"]) for w in status["workers"]] == \
        [(n, a, "done", 0) for n, a in order]
    assert all(w["input_tokens"] > 0 and w["output_tokens"] > 0 for w in status["workers"])

    # the merged branch has the three results on top of the committed HEAD, nothing uncommitted
    branch = f"orchd/{sid}"
    assert status["branch"] == branch
    assert set(git(git_repo, "ls-tree", "-r", "--name-only", branch).split()) == {
        "README.md", "design.txt", "implement.txt", "review.txt"}
    for name, _ in order:
        assert git(git_repo, "show", f"{branch}:{name}.txt") == f"rehearsal output for assignment {name}\n"
    assert git(git_repo, "show", f"{branch}:README.md") == "target repo\n"
    assert git(git_repo, "merge-base", "--is-ancestor", before["head"].strip(), branch) == ""

    # the target itself: same HEAD, branch, index, working tree, and its own branches untouched
    after = _snapshot(git_repo)
    new_branches = {b.split()[0] for b in after["branches"] - before["branches"]}
    assert all(b.startswith(f"refs/heads/orchd/{sid}") for b in new_branches), new_branches
    assert before["branches"] <= after["branches"]
    after["branches"] = before["branches"]
    assert after == before


# ------------------------------------------------------------------ 3. a scripted HTTP error

@pytest.mark.parametrize("agent", AGENTS)
def test_http_401_fails_worker_with_catalogue_code(agent, cli_daemon, git_repo, tmp_path):
    require_agent(agent)
    name = f"denied-{agent}"
    plan = write_plan(tmp_path / "plan.json", [{"name": name, "agent": agent, "prompt": "Write the file."}])
    scenario = tmp_path / "scenario.json"
    scenario.write_text(json.dumps({"agents": {agent: [{"http_error": 401}]}}))
    sid = _submit(cli_daemon, "--plan", str(plan), "--target", str(git_repo), "--rehearse", str(scenario))["session"]

    events = _watch(cli_daemon, sid)
    mine = _of(events, name)
    failure = _one(mine, "worker.failure")
    assert failure["code"] == "auth_invalid", f"{failure}\n--- logs ---\n{_logs(cli_daemon, sid)}"
    assert failure["message"]
    exited = _one(mine, "worker.exited")
    assert exited["state"] == "failed" and exited["exit_code"] not in (None, 0), exited
    assert exited["reason"].startswith("auth_invalid")
    assert failure["seq"] < exited["seq"]
    assert not [e for e in mine if e["kind"] in ("worker.done", "worker.milestone")]
    # a rejected key is never retried: the recovery actor escalates at once, telling the human what to do
    action = _one(mine, "recovery.action")
    assert action["action"] == "escalate" and f"log in to {agent}" in action["reason"], action
    assert [e["gen"] for e in mine if e["kind"] == "worker.launching"] == [0]
    assert events[-1]["kind"] == "session.state" and events[-1]["state"] == "escalated"

    status = cli_daemon.status(sid)
    assert status["state"] == "escalated"
    (w,) = status["workers"]
    assert w["state"] == "failed" and w["exit_code"] == exited["exit_code"] and w["reason"].startswith("auth_invalid")
    # the daemon stays up and serves
    assert cli_daemon.proc.poll() is None
    assert cli_daemon.ctl("status", "--json").returncode == 0


# ------------------------------------------------------------------ 4. kill -9 with a real CLI mid-run

# The CLI's first model call stalls (the CLI waits on the server).  After the
# restart orchd resumes the CLI's session with a prompt holding "orchd
# restarted while you were working"; a resumed request carries the whole
# conversation, so the "orchd restarted" replies come FIRST in the list: a
# reply is the first unused one whose match is in the prompt, so the first
# call (no "orchd restarted") skips both and takes the stall, and every call
# of the resumed run (a fresh server: nothing used yet) matches them in order.
RESUME_SCENARIO = {"agents": {"*": [
    {"match": "orchd restarted", "tool": "write_file", "path": "{assignment}.txt",
     "content": "written after the restart by {assignment}\n"},
    {"match": "orchd restarted",
     "text": "Continued after the restart.\nMILESTONE: wrote {assignment}.txt\nDONE: {assignment}"},
    {"stall": True},
]}}


def _resume_args(agent: str, agent_session_id: str) -> list[str]:
    """The resume flag orchd must pass (gemini 0.61 resumes by "latest" or index, not by id)."""
    return {"claude": ["--resume", agent_session_id], "codex": ["resume", agent_session_id],
            "gemini": ["--resume", "latest"]}[agent]


def _has_slice(argv: list[str], part: list[str]) -> bool:
    return any(argv[i:i + len(part)] == part for i in range(len(argv) - len(part) + 1))


def _model_calls(server_log: Path) -> list[dict]:
    """The agent-loop requests the session's model server received (side calls left out)."""
    if not server_log.exists():
        return []
    recs = [json.loads(line) for line in server_log.read_text().splitlines() if line.strip()]
    return [r for r in recs if r.get("reply") is not None and not r.get("side_call")]


@pytest.mark.parametrize("agent", AGENTS)
def test_kill9_mid_run_resumes_real_cli(agent, daemon_factory, git_repo, tmp_path):
    require_agent(agent)
    env = {"PATH": agent_env_path()}
    d = daemon_factory(env=env)
    name = "resumable"
    plan = write_plan(tmp_path / "plan.json", [{"name": name, "agent": agent, "prompt": "Write the file."}])
    scenario = tmp_path / "scenario.json"
    scenario.write_text(json.dumps(RESUME_SCENARIO))
    sid = _submit(d, "--plan", str(plan), "--target", str(git_repo), "--rehearse", str(scenario))["session"]

    # each CLI reports its session id (claude system/init, codex thread.started, gemini init)
    # before calling the model, then stalls on the server
    session_ev = wait_for(lambda: next((e for e in _session_events(d, sid)
                                        if e["kind"] == "agent.session" and e["worker"] == name), None),
                          60, f"{agent}'s agent.session")
    asid = session_ev["agent_session_id"]
    server_log = d.state_dir / "runs" / sid / "modelserver.jsonl"
    wait_for(lambda: [r["reply"] for r in _model_calls(server_log)] == [{"stall": True}], 60,
             f"{agent}'s model call to reach the stalled reply")
    before_kill = _session_events(d, sid)
    assert not [e for e in before_kill if e["kind"] in ("worker.exited", "agent.tool_call", "worker.done")]
    pid = d.status(sid)["workers"][0]["pid"]
    assert pid and alive(pid)
    assert pid in group_members(pid)
    last_seq_before = max(e["seq"] for e in _replay_all(d))

    d.kill9()
    # the CLI itself dies with the daemon (parent-death signal)
    wait_for(lambda: not alive(pid), 10, f"{agent} (pid {pid}) to die with the daemon")

    d2 = type(d)(d.state_dir, d.runtime_dir, d.config, env=env).start()
    try:
        # whatever the CLI had started in its process group is gone once the new daemon is up
        wait_for(lambda: not group_members(pid), 10, f"{agent}'s process group {pid} to be gone")
        events = _watch(d2, sid)
        assert events[-1]["kind"] == "session.state" and events[-1]["state"] == "done", \
            f"{_kinds(events)}\n--- orchctl logs {sid} --json ---\n{_logs(d2, sid)}"

        gen0 = _of(events, name, gen=0)
        assert _kinds([e for e in gen0 if e["kind"] not in ("worker.log", "worker.preflight")]) == \
            ["worker.launching", "worker.started", "agent.session"], _kinds(gen0)
        assert gen0[0]["resume"] is False
        # generation 1: relaunched with the CLI's resume flag, then a clean run
        gen1 = _of(events, name, gen=1)
        resume = _resume_args(agent, asid)
        resumed = _check_clean_run(gen1, agent, name, gen=1, resumed_from=resume[-1])
        started = _one(gen1, "worker.started")
        assert _has_slice(started["argv"], resume), started["argv"]
        assert "orchd restarted while you were working" in " ".join(started["argv"])
        assert started["pid"] != pid
        assert resumed["agent_session_id"] == asid  # the same agent session goes on
        assert {e["gen"] for e in events if e["worker"]} == {0, 1}
        # it is the same conversation, not a fresh one: the first model call after the
        # restart carries the original assignment prompt as well as the restart prompt
        calls = _model_calls(server_log)
        assert [c["reply"].get("match") for c in calls] == [None, "orchd restarted", "orchd restarted"]
        first_after = json.dumps(calls[1]["body"])
        assert "YOUR ASSIGNMENT: Write the file." in first_after and "orchd restarted" in first_after

        status = d2.status(sid)
        assert status["state"] == "done"
        (w,) = status["workers"]
        assert (w["state"], w["exit_code"], w["gen"]) == ("done", 0, 1)
        assert w["input_tokens"] > 0 and w["output_tokens"] > 0
        assert git(git_repo, "show", f"orchd/{sid}:{name}.txt") == f"written after the restart by {name}\n"

        # the log: seq continuous from 1, no duplicate, the restart recorded right after the last event
        log = _replay_all(d2)
        seqs = [e["seq"] for e in log]
        assert seqs == list(range(1, len(seqs) + 1)), "seq is not continuous in the log"
        restarted = [e for e in log if e["kind"] == "daemon.started" and e["seq"] > last_seq_before]
        assert len(restarted) == 1 and restarted[0]["last_seq"] == restarted[0]["seq"] - 1 >= last_seq_before
        assert [e for e in log if e["session"] == sid] == events
    finally:
        assert d2.stop() == 0, d2.log()[-3000:]


# ------------------------------------------------------------------ 5. clean shutdown, stop

def test_sigterm_after_a_real_run_restarts_no_actor(cli_daemon, git_repo, tmp_path):
    """Regression (fixed in 51493cc): the journal returning after its flush was restarted on SIGTERM."""
    agent = next((a for a in ("codex", "claude", "gemini") if agent_path(a)), None)
    if agent is None:
        pytest.fail("no agent CLI installed: run scripts/install-agents.sh")
    plan = write_plan(tmp_path / "plan.json", [{"name": "quick", "agent": agent, "prompt": "Write the file."}])
    sid = _submit(cli_daemon, "--plan", str(plan), "--target", str(git_repo), "--rehearse")["session"]
    assert _watch(cli_daemon, sid)[-1]["state"] == "done"
    assert cli_daemon.stop() == 0
    records = [json.loads(line) for line in cli_daemon.log().splitlines() if line.startswith("{")]
    assert "orchd_stopped" in [r["event"] for r in records]
    restarts = [r for r in records if r["event"] in ("actor_restarting", "actor_crashed")]
    assert not restarts, f"a clean SIGTERM shutdown restarted actors: {restarts}"


def test_stop_ends_the_session_after_its_real_cli_has_exited(cli_daemon, git_repo, tmp_path):
    require_agent("claude")
    name = "hang"
    plan = write_plan(tmp_path / "plan.json", [{"name": name, "agent": "claude", "prompt": "Write the file."}])
    scenario = tmp_path / "scenario.json"
    scenario.write_text(json.dumps({"agents": {"claude": [{"stall": True}]}}))
    sid = _submit(cli_daemon, "--plan", str(plan), "--target", str(git_repo), "--rehearse", str(scenario))["session"]
    server_log = cli_daemon.state_dir / "runs" / sid / "modelserver.jsonl"
    wait_for(lambda: _model_calls(server_log), 60, "claude's model call to reach the stalled reply")
    pid = cli_daemon.status(sid)["workers"][0]["pid"]
    assert pid and alive(pid)

    cli_daemon.ctl("stop", sid)
    events = _watch(cli_daemon, sid)
    # the session ends (and --until-done returns) only once its worker has: the exit is in the output
    assert events[-1]["kind"] == "session.state" and events[-1]["state"] == "stopped"
    exited = [e for e in _of(events, name) if e["kind"] == "worker.exited"]
    assert exited and exited[0]["state"] == "stopped", \
        f"session.state stopped came before the worker's exit: {_kinds(events)[-4:]}"
    assert not alive(pid)
    # and everything in the log agrees: no event of the worker after the session's end
    wait_for(lambda: cli_daemon.status(sid)["workers"][0]["state"] == "stopped", 30, "the worker to stop")
    log = _session_events(cli_daemon, sid)
    end = max(e["seq"] for e in log if e["kind"] == "session.state")
    assert all(e["seq"] < end for e in log if e["worker"] == name)
