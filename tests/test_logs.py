"""Logs: one JSON object per line when the stream is not a terminal, a coloured readable line in a terminal,
levels, and one request line per control request with its duration."""

from __future__ import annotations

import json
import logging
import os
import pty

from orchd import log


def _through_a_terminal(level: str, fmt: str, emit, env_no_color: bool = False) -> str:
    master, slave = pty.openpty()
    old = os.environ.pop("NO_COLOR", None)
    if env_no_color:
        os.environ["NO_COLOR"] = "1"
    stream = os.fdopen(slave, "w", buffering=1)
    try:
        log.setup(level, fmt, stream=stream)
        emit(log.get("orchd.test"))
        stream.flush()
        return os.read(master, 65536).decode()
    finally:
        logging.getLogger().handlers[:] = []
        stream.close()
        os.close(master)
        os.environ.pop("NO_COLOR", None)
        if old is not None:
            os.environ["NO_COLOR"] = old


def test_a_terminal_gets_coloured_readable_lines_with_escaped_values():
    out = _through_a_terminal("info", "auto", lambda lg: (
        lg.debug("hidden_below_the_level"),
        lg.warning("agent_said", text="evil\x1b[2J\nline", n=3, plain="ok")))
    assert "hidden_below_the_level" not in out
    line, = [ln for ln in out.splitlines() if "agent_said" in ln]
    assert "\x1b[33mwarning" in line and "\x1b[0m" in line  # the level in colour
    assert "n=3 plain=ok" in line
    assert "text='evil\\x1b[2J\\nline'" in line  # the agent's escape sequence and newline are shown, not obeyed
    plain = _through_a_terminal("info", "auto", lambda lg: lg.info("no_colour"), env_no_color=True)
    assert "no_colour" in plain and "\x1b[" not in plain


def test_json_when_not_a_terminal_and_when_asked(tmp_path):
    for fmt in ("auto", "json"):
        path = tmp_path / f"{fmt}.log"
        with open(path, "w") as fh:
            log.setup("debug", fmt, stream=fh)
            log.get("orchd.test").error("boom", exc_info=False, detail="two\nlines")
            log.get("orchd.test").debug("quiet", k=1)
        logging.getLogger().handlers[:] = []
        records = [json.loads(line) for line in path.read_text().splitlines()]
        assert [(r["level"], r["event"]) for r in records] == [("error", "boom"), ("debug", "quiet")]
        assert records[0]["detail"] == "two\nlines" and records[0]["logger"] == "orchd.test"
    forced = _through_a_terminal("info", "json", lambda lg: lg.info("in_a_terminal_but_json"))
    assert json.loads(forced.strip())["event"] == "in_a_terminal_but_json"


def test_one_request_line_per_control_request_with_its_duration(daemon):
    daemon.ctl("status", "--json")
    daemon.ctl("pause", "s-00000000", check=False)  # a full id goes to the daemon as it is (a prefix is resolved first)
    records = [json.loads(line) for line in daemon.log().splitlines() if line.startswith("{")]
    requests = [r for r in records if r["event"] == "request"]
    ok = [r for r in requests if r["kind"] == "status" and r["outcome"] == "ok"]
    assert ok and all(isinstance(r["ms"], float) and r["ms"] >= 0 and r["level"] == "info" for r in ok)
    bad, = [r for r in requests if r["kind"] == "pause"]
    assert bad["outcome"] == "error" and bad["code"] == "not_found"
