"""The scripted model server over real HTTP on loopback."""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from actors.rehearsal.modelserver import ModelServer
from actors.rehearsal.scenario import ScenarioError, default_scenario, validate_scenario

CWD = "/work/somewhere/repo"
CLAUDE_SYSTEM = [{"type": "text", "text": f"Environment\n - Primary working directory: {CWD}\n - Is a git repository: true"}]


def post(url: str, path: str, body: Any, headers: dict[str, str] | None = None,
         raw: bytes | None = None) -> tuple[int, str, str]:
    """(status, content-type, body text) of one POST."""
    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    try:
        data = raw if raw is not None else json.dumps(body).encode()
        conn.request("POST", path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type", ""), resp.read().decode()
    finally:
        conn.close()


def sse_events(text: str) -> list[tuple[str | None, dict[str, Any]]]:
    """(event name, data) pairs of an SSE body."""
    events = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        name, data = None, []
        for line in block.splitlines():
            if line.startswith("event: "):
                name = line[len("event: "):]
            elif line.startswith("data: "):
                data.append(line[len("data: "):])
        events.append((name, json.loads("\n".join(data))))
    return events


def claude_body(prompt: str, tools: tuple[str, ...] = ("Write", "Bash")) -> dict[str, Any]:
    return {"model": "claude-opus-4-8", "stream": True, "system": CLAUDE_SYSTEM, "max_tokens": 100,
            "tools": [{"name": t, "input_schema": {"type": "object"}} for t in tools],
            "messages": [{"role": "user", "content": [{"type": "text", "text": prompt}]}]}


def codex_body(prompt: str, apply_patch: bool = False) -> dict[str, Any]:
    tools = [{"type": "function", "name": "exec_command", "parameters": {}}]
    if apply_patch:
        tools.append({"type": "custom", "name": "apply_patch"})
    return {"model": "gpt-5.5", "stream": True, "tools": tools, "input": [
        {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "orchd-assignment: WRONG"}]},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": f"<cwd>{CWD}</cwd>"}]},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": prompt}]}]}


def gemini_body(prompt: str) -> dict[str, Any]:
    context = f"<session_context>\n- **Workspace Directories:**\n  - {CWD}\n</session_context>"
    return {"contents": [{"role": "user", "parts": [{"text": context}, {"text": prompt}]}],
            "tools": [{"functionDeclarations": [{"name": "write_file"}, {"name": "run_shell_command"}]}]}


GEMINI_STREAM = "/v1beta/models/gemini-3.8-flash:streamGenerateContent?alt=sse"
GEMINI_ROUTER = "/v1beta/models/gemini-3.5-flash-lite:generateContent"


# ---------------------------------------------------------------- dialects

def test_anthropic_default_scenario_writes_then_finishes() -> None:
    with ModelServer(None) as srv:
        status, ctype, text = post(srv.url, "/v1/messages?beta=true", claude_body("go. orchd-assignment: impl-1"))
        assert (status, ctype) == (200, "text/event-stream")
        events = sse_events(text)
        assert [name for name, _ in events] == [
            "message_start", "content_block_start", "content_block_delta", "content_block_stop",
            "message_delta", "message_stop"]
        assert all(data["type"] == name for name, data in events)
        block = events[1][1]["content_block"]
        assert (block["type"], block["name"], block["input"]) == ("tool_use", "Write", {})
        args = json.loads(events[2][1]["delta"]["partial_json"])
        assert args["file_path"] == f"{CWD}/impl-1.txt"  # relative path resolved against the cwd
        assert "impl-1" in args["content"]
        assert events[4][1]["delta"]["stop_reason"] == "tool_use"

        # the follow-up (carrying the tool result) gets the next reply
        _, _, text = post(srv.url, "/v1/messages?beta=true", claude_body("go. orchd-assignment: impl-1"))
        events = sse_events(text)
        final = "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta")
        assert "MILESTONE: wrote impl-1.txt" in final.splitlines()
        assert "DONE: impl-1" in final.splitlines()
        assert events[-2][1]["delta"]["stop_reason"] == "end_turn"


def test_anthropic_head_preflight_and_title_side_call() -> None:
    with ModelServer({"agents": {"claude": [{"text": "scripted"}]}}) as srv:
        u = urlsplit(srv.url)
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
        conn.request("HEAD", "/")
        assert conn.getresponse().status == 200
        conn.close()
        # claude's session-title call asks for JSON and offers no tools: answered from the schema
        title = claude_body("<session>x</session>", tools=())
        title["output_config"] = {"format": {"type": "json_schema", "schema": {
            "type": "object", "properties": {"title": {"type": "string"}}, "required": ["title"]}}}
        _, _, text = post(srv.url, "/v1/messages", title)
        delta = [d for n, d in sse_events(text) if n == "content_block_delta"][0]["delta"]["text"]
        assert set(json.loads(delta)) == {"title"}
        # ... and did not consume the scripted reply
        _, _, text = post(srv.url, "/v1/messages", claude_body("hi"))
        assert [d for n, d in sse_events(text) if n == "content_block_delta"][0]["delta"]["text"] == "scripted"


def test_openai_responses_function_call_and_apply_patch() -> None:
    scenario = {"agents": {"codex": [{"tool": "run", "command": "ls -la"},
                                     {"tool": "write_file", "path": "a.txt", "content": "one\ntwo\n"}]}}
    with ModelServer(scenario) as srv:
        _, ctype, text = post(srv.url, "/v1/responses", codex_body("orchd-assignment: c1"))
        assert ctype == "text/event-stream"
        events = sse_events(text)
        assert events[0][0] == "response.created" and events[-1][0] == "response.completed"
        assert [d["sequence_number"] for _, d in events] == list(range(len(events)))
        done = [d["item"] for n, d in events if n == "response.output_item.done"]
        assert done[0]["type"] == "function_call" and done[0]["name"] == "exec_command"
        assert json.loads(done[0]["arguments"]) == {"cmd": "ls -la"}
        assert events[-1][1]["response"]["output"] == done

        _, _, text = post(srv.url, "/v1/responses", codex_body("orchd-assignment: c1", apply_patch=True))
        item = [d["item"] for n, d in sse_events(text) if n == "response.output_item.done"][0]
        assert item["type"] == "custom_tool_call" and item["name"] == "apply_patch"
        assert item["input"] == "*** Begin Patch\n*** Add File: a.txt\n+one\n+two\n*** End Patch\n"

        _, _, text = post(srv.url, "/v1/responses", codex_body("orchd-assignment: c1"))
        deltas = [d["delta"] for n, d in sse_events(text) if n == "response.output_text.delta"]
        assert deltas == ["DONE: c1"]  # the list is exhausted; the developer message's name is ignored


def test_codex_write_without_apply_patch_is_a_shell_command() -> None:
    scenario = {"agents": {"codex": [{"tool": "write_file", "path": "it's.txt", "content": "a 'quoted' line\n"}]}}
    with ModelServer(scenario) as srv:
        _, _, text = post(srv.url, "/v1/responses", codex_body("x"))
        item = [d["item"] for n, d in sse_events(text) if n == "response.output_item.done"][0]
        cmd = json.loads(item["arguments"])["cmd"]
        assert cmd.startswith("mkdir -p")
        assert "'a '\"'\"'quoted'\"'\"' line\n'" in cmd  # content survives shell quoting


def test_gemini_stream_and_router_side_call() -> None:
    scenario = {"agents": {"gemini": [{"tool": "write_file", "path": "g.txt", "content": "hi"},
                                      {"tool": "run", "command": "echo hi"}]}}
    with ModelServer(scenario) as srv:
        router = gemini_body("orchd-assignment: g1")
        router["generationConfig"] = {"responseMimeType": "application/json", "responseJsonSchema": {
            "type": "OBJECT", "properties": {"complexity_reasoning": {"type": "STRING"},
                                             "complexity_score": {"type": "INTEGER"}}}}
        status, ctype, text = post(srv.url, GEMINI_ROUTER, router)
        assert (status, ctype) == (200, "application/json")
        answer = json.loads(json.loads(text)["candidates"][0]["content"]["parts"][0]["text"])
        assert isinstance(answer["complexity_reasoning"], str) and isinstance(answer["complexity_score"], int)

        _, ctype, text = post(srv.url, GEMINI_STREAM, gemini_body("orchd-assignment: g1"))
        assert ctype == "text/event-stream"
        [(name, chunk)] = sse_events(text)
        assert name is None  # gemini's SSE has data lines only
        cand = chunk["candidates"][0]
        assert cand["finishReason"] == "STOP"
        assert cand["content"]["parts"] == [{"functionCall": {"name": "write_file", "args": {
            "file_path": f"{CWD}/g.txt", "content": "hi"}}}]
        _, _, text = post(srv.url, GEMINI_STREAM, gemini_body("orchd-assignment: g1"))
        call = sse_events(text)[0][1]["candidates"][0]["content"]["parts"][0]["functionCall"]
        assert call["name"] == "run_shell_command" and call["args"]["command"] == "echo hi"


# ---------------------------------------------------------------- the script

def _claude_text(url: str, prompt: str) -> str:
    _, _, text = post(url, "/v1/messages", claude_body(prompt))
    return "".join(d["delta"].get("text", "") for n, d in sse_events(text) if n == "content_block_delta")


def test_match_picks_the_first_unconsumed_matching_reply() -> None:
    scenario = {"agents": {"*": [{"match": "review", "text": "reviewed {assignment}"},
                                 {"text": "generic {assignment}"}]}}
    with ModelServer(scenario) as srv:
        assert _claude_text(srv.url, "implement it. orchd-assignment: a1") == "generic a1"
        # the generic reply is used up for a1; "review" is not in the prompt, so a1 is done
        assert _claude_text(srv.url, "implement it. orchd-assignment: a1") == "DONE: a1"
        assert _claude_text(srv.url, "please review. orchd-assignment: a2") == "reviewed a2"
        assert _claude_text(srv.url, "please review. orchd-assignment: a2") == "generic a2"


def test_conversations_are_per_dialect_and_assignment() -> None:
    scenario = {"agents": {"*": [{"text": "one {assignment}"}, {"text": "two {assignment}"}],
                           "gemini": [{"text": "gemini only"}]}}
    with ModelServer(scenario) as srv:
        assert _claude_text(srv.url, "orchd-assignment: x") == "one x"
        assert _claude_text(srv.url, "orchd-assignment: y") == "one y"
        assert _claude_text(srv.url, "orchd-assignment: x") == "two x"
        # no assignment: the agent name fills {assignment}
        assert _claude_text(srv.url, "no name here") == "one claude"
        _, _, text = post(srv.url, "/v1/responses", codex_body("orchd-assignment: x"))
        assert [d["delta"] for n, d in sse_events(text) if n == "response.output_text.delta"] == ["one x"]
        _, _, text = post(srv.url, GEMINI_STREAM, gemini_body("orchd-assignment: x"))
        assert sse_events(text)[0][1]["candidates"][0]["content"]["parts"] == [{"text": "gemini only"}]


def test_templating_leaves_other_braces_alone() -> None:
    with ModelServer({"agents": {"*": [{"text": "def f(): return {'k': 1}  # {assignment}"}]}}) as srv:
        assert _claude_text(srv.url, "orchd-assignment: t9") == "def f(): return {'k': 1}  # t9"


# ---------------------------------------------------------------- errors, stall, robustness

def test_http_error_with_and_without_body() -> None:
    body = {"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}}
    scenario = {"agents": {"claude": [{"http_error": 401, "body": body}], "codex": [{"http_error": 429}]}}
    with ModelServer(scenario) as srv:
        status, ctype, text = post(srv.url, "/v1/messages", claude_body("x"))
        assert (status, ctype, json.loads(text)) == (401, "application/json", body)
        status, _, text = post(srv.url, "/v1/responses", codex_body("x"))
        assert status == 429 and "error" in json.loads(text)


def test_bad_json_is_400_and_the_server_keeps_serving() -> None:
    with ModelServer(None) as srv:
        status, _, text = post(srv.url, "/v1/messages", None, raw=b"{not json")
        assert status == 400 and "invalid JSON" in json.loads(text)["error"]["message"]
        status, _, _ = post(srv.url, "/v1/messages", None, raw=b"[1, 2]")
        assert status == 400
        status, _, _ = post(srv.url, "/v2/unknown", {})
        assert status == 404
        status, _, _ = post(srv.url, "/v1/messages", claude_body("x"))
        assert status == 200


def test_stall_holds_until_the_server_stops() -> None:
    srv = ModelServer({"agents": {"*": [{"stall": True}]}}).start()
    outcome: dict[str, Any] = {}

    def client() -> None:
        try:
            outcome["response"] = post(srv.url, "/v1/messages", claude_body("x"))
        except (http.client.HTTPException, ConnectionError) as e:
            outcome["error"] = e

    t = threading.Thread(target=client)
    t.start()
    try:
        srv.wait_for(lambda st: st.stalled == 1, timeout_s=10)
        assert t.is_alive() and not outcome, "a stalled request must not be answered"
    finally:
        srv.stop()
    assert srv.statistics().stalled == 0  # stop() released it
    t.join(timeout=10)
    assert not t.is_alive()
    assert "response" not in outcome  # the connection closed without an answer
    assert isinstance(outcome["error"], (http.client.RemoteDisconnected, ConnectionError))


def test_stall_ends_when_the_client_goes_away() -> None:
    with ModelServer({"agents": {"*": [{"stall": True}]}}) as srv:
        u = urlsplit(srv.url)
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
        conn.request("POST", "/v1/messages", body=json.dumps(claude_body("x")))
        assert srv.wait_for(lambda st: st.stalled == 1, timeout_s=10).requests == 1
        conn.close()
        # the stalled handler notices the hang-up and lets go
        srv.wait_for(lambda st: st.stalled == 0, timeout_s=10)
        assert post(srv.url, "/v1/messages", claude_body("x"))[0] == 200


def test_stop_hangs_up_on_idle_keep_alive_clients() -> None:
    srv = ModelServer(None).start()
    u = urlsplit(srv.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    conn.request("POST", "/v1/messages", body=json.dumps(claude_body("x")))
    resp = conn.getresponse()
    resp.read()
    assert resp.status == 200 and not resp.will_close  # the connection stays open, idle
    done = threading.Event()
    threading.Thread(target=lambda: (srv.stop(), done.set()), daemon=True).start()
    try:
        assert done.wait(timeout=10), "stop() must not wait for idle keep-alive clients"
    finally:
        conn.close()


def test_request_log_redacts_secrets(tmp_path: Path) -> None:
    log = tmp_path / "requests.jsonl"
    with ModelServer(None, log_path=log) as srv:
        post(srv.url, "/v1/messages", claude_body("orchd-assignment: z"), headers={"x-api-key": "sk-secret"})
        post(srv.url, "/v1/responses", codex_body("x"), headers={"Authorization": "Bearer sk-secret"})
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(e["method"], e["path"]) for e in lines] == [("POST", "/v1/messages"), ("POST", "/v1/responses")]
    assert "sk-secret" not in log.read_text()
    assert lines[0]["headers"]["x-api-key"] == "<redacted>"
    assert lines[0]["body"]["messages"][0]["content"][0]["text"] == "orchd-assignment: z"
    assert lines[0]["assignment"] == "z"


def test_validate_scenario() -> None:
    validate_scenario(default_scenario())
    for bad in ({}, {"agents": []}, {"agents": {"*": [{}]}}, {"agents": {"*": [{"tool": "fly"}]}},
                {"agents": {"*": [{"tool": "write_file", "path": "x"}]}}):
        with pytest.raises(ScenarioError):
            validate_scenario(bad)
    with pytest.raises(ScenarioError):
        ModelServer({"agents": {"claude": "not a list"}})


def test_cli_prints_url_and_stops_on_sigterm(tmp_path: Path) -> None:
    scenario = tmp_path / "s.toml"
    scenario.write_text('[[agents."*"]]\ntext = "from toml {assignment}"\n')
    proc = subprocess.Popen([sys.executable, "-m", "actors.rehearsal.modelserver", "--scenario", str(scenario),
                             "--log", str(tmp_path / "log.jsonl")], stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    try:
        assert proc.stdout is not None
        url = json.loads(proc.stdout.readline())["url"]
        assert url.startswith("http://127.0.0.1:")
        assert _claude_text(url, "orchd-assignment: q") == "from toml q"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert len((tmp_path / "log.jsonl").read_text().splitlines()) == 1


# ---------------------------------------------------------------- decoding arbitrary bodies (sans-I/O)

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from actors.rehearsal import dialects as modeldialects  # noqa: E402

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["messages", "role", "content", "text", "tools", "name", "input", "contents", "parts",
                         "system", "generationConfig", "responseJsonSchema", "output_config", "stream", "type",
                         "format", "schema", "properties", "enum", "minimum", "functionDeclarations"]),
        inner, max_size=4),
    max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(body=st.dictionaries(st.sampled_from(["messages", "system", "tools", "input", "contents", "stream",
                                             "generationConfig", "output_config", "model"]), _json, max_size=5),
       dialect=st.sampled_from([modeldialects.ANTHROPIC, modeldialects.OPENAI, modeldialects.GEMINI]))
def test_read_turn_accepts_or_raises_bad_request(body: dict[str, Any], dialect: str) -> None:
    path = GEMINI_STREAM if dialect == modeldialects.GEMINI else "/v1/x"
    try:
        turn = modeldialects.read_turn(dialect, path, body)
    except modeldialects.BadRequest:
        return
    # whatever was accepted can be rendered
    reply = modeldialects.side_reply(turn) if turn.side_call else {"tool": "run", "command": "true", "text": "t"}
    "".join(modeldialects.render_sse(dialect, turn, reply))
    json.dumps(modeldialects.render_json(dialect, turn, reply))


def test_malformed_shape_is_400_over_http() -> None:
    with ModelServer(None) as srv:
        status, _, text = post(srv.url, "/v1/messages", {"messages": "not a list", "tools": 3})
        assert status == 400 and "malformed" in json.loads(text)["error"]["message"]
        assert post(srv.url, "/v1/messages", claude_body("x"))[0] == 200


def test_a_keyed_server_refuses_other_keys():
    import json as _json
    import urllib.error
    import urllib.request

    from actors.rehearsal.modelserver import ModelServer

    with ModelServer(None, key="sk-mine") as srv:
        body = _json.dumps({"model": "m", "stream": True, "max_tokens": 5,
                            "messages": [{"role": "user", "content": "hi"}]}).encode()
        for key, want in (("sk-other", 401), ("sk-mine", 200)):
            req = urllib.request.Request(srv.url + "/v1/messages", data=body, method="POST",
                                         headers={"x-api-key": key, "content-type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=10) as resp:
                    status = resp.status
                    resp.read()
            except urllib.error.HTTPError as exc:
                status = exc.code
            assert status == want, (key, status)
