"""The dashboard in a real headless Chromium (Debian's ``chromium``, driven by Playwright) against a
real daemon and bridge: hostile agent output stays text, events arrive live, buttons act, the page
survives a bridge restart, and a long session keeps the DOM small.

Screenshots of a live session (desktop and phone widths) are saved under docs/screenshots/.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys

import pytest

from tests.conftest import ROOT, fake, wait_for, write_plan
from tests.webclient import web_of

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = ROOT / "docs" / "screenshots"
HTTP = {"ORCHD_HTTP_LISTEN": "127.0.0.1:0"}


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def page(browser):
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = ctx.new_page()
    pg.dialogs = []
    pg.on("dialog", lambda dlg: (pg.dialogs.append(dlg.message), dlg.dismiss()))
    yield pg
    ctx.close()


def _submit(d, tmp_path, git_repo, assignments) -> str:
    plan = write_plan(tmp_path / f"plan-{len(list(tmp_path.iterdir()))}.json", assignments)
    return d.ctl_json("submit", "--plan", str(plan), "--target", str(git_repo))["session"]


def _debug(pg, name: str):
    return pg.evaluate(f"window.orchdDebug.{name}")


def test_hostile_output_is_text_events_are_live_and_buttons_act(daemon_factory, git_repo, tmp_path, page):
    d = daemon_factory(env=HTTP)
    web = web_of(d)
    gate = tmp_path / "go"
    sid = _submit(d, tmp_path, git_repo, [
        {"name": "builder", "agent": "command", "role": "implementation",
         "argv": fake("line:<img src=x onerror=window.__pwned=1>", "line:<script>window.__pwned=2</script>",
                      'event:{"kind": "agent.usage", "input_tokens": 1500, "output_tokens": 420, "cost_usd": 0.0123}',
                      "line:MILESTONE: parser done", f"waitfile:{gate}", "line:after the gate", "exit:0")},
        {"name": "checker", "agent": "command", "role": "review", "after": ["builder"], "argv": fake("exit:0")}])
    page.goto(f"{web.url}#token={web.token}")
    card = page.locator(f'#sessions [data-session="{sid}"]')
    card.wait_for(timeout=10_000)
    log = page.locator("#log")
    page.wait_for_function("() => document.querySelector('#log').textContent.includes('<script>window.__pwned=2')",
                           timeout=10_000)
    assert "<img src=x onerror=window.__pwned=1>" in log.text_content()
    assert page.evaluate("document.querySelectorAll('img, #log script, #sessions script').length") == 0
    assert page.evaluate("window.__pwned === undefined")
    assert page.dialogs == []
    assert page.evaluate("location.hash") == "", "the token stays out of the address bar"
    # a live event reaches the page within 1 s of the agent printing it
    gate.touch()
    page.wait_for_function("() => document.querySelector('#log').textContent.includes('after the gate')", timeout=10_000)
    assert _debug(page, "maxLagMs") < 1000
    # pause from the page pauses the session (as orchctl status sees it), resume resumes it
    gate2 = tmp_path / "go2"
    sid2 = _submit(d, tmp_path, git_repo, [
        {"name": "slow", "agent": "command", "role": "long task",
         "argv": fake("line:working", 'event:{"kind": "agent.usage", "input_tokens": 900, "output_tokens": 80}',
                      f"waitfile:{gate2}", "exit:0")}])
    wait_for(lambda: d.status(sid2)["workers"][0]["state"] == "running", 30, "the worker to run")
    card2 = page.locator(f'#sessions [data-session="{sid2}"]')
    card2.locator('button[data-action="pause"]').click(timeout=10_000)
    wait_for(lambda: d.status(sid2)["state"] == "paused", 10, "the session to pause")
    card2.locator('button[data-action="resume"]').click(timeout=10_000)
    wait_for(lambda: d.status(sid2)["state"] == "running", 10, "the session to resume")
    page.wait_for_function(f"() => document.querySelector('#sessions [data-session=\"{sid}\"]').dataset.state === 'done'",
                           timeout=10_000)
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "dashboard-desktop.png"), full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})
    page.screenshot(path=str(SHOTS / "dashboard-phone.png"), full_page=True)
    # the log filters by agent and by kind
    page.set_viewport_size({"width": 1280, "height": 900})
    page.select_option("#f-worker", "checker")
    rows = "() => [...document.querySelectorAll('#log .ev:not([hidden])')].map((r) => r.textContent)"
    page.wait_for_function(f"() => ({rows})().length > 0 && ({rows})().every((t) => t.includes(' checker '))")
    page.select_option("#f-worker", "")
    page.fill("#f-kind", "agent.usage")
    page.wait_for_function(f"() => ({rows})().length === 2 && ({rows})().every((t) => t.includes('agent.usage'))")
    gate2.touch()
    d.wait_session(sid2)


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _bridge(d, port: int) -> subprocess.Popen:
    log = open(d.state_dir.parent / "bridge.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "orchd.app", "web", "--state-dir", str(d.state_dir),
                             "--runtime-dir", str(d.runtime_dir), "--http", f"127.0.0.1:{port}"],
                            stdout=log, stderr=subprocess.STDOUT, env={**d.env, "PYTHONPATH": str(ROOT)})
    return proc


def test_page_continues_across_a_bridge_restart(daemon_factory, git_repo, tmp_path, page):
    d = daemon_factory()  # no bridge inside: it runs as its own process, killed and started again
    port = _free_port()
    bridge = _bridge(d, port)
    try:
        web = web_of(d)
        g1, g2 = tmp_path / "g1", tmp_path / "g2"
        sid = _submit(d, tmp_path, git_repo, [
            {"name": "a", "agent": "command",
             "argv": fake("json:300", f"waitfile:{g1}", "json:300", f"waitfile:{g2}", "json:300", "exit:0")}])
        page.goto(f"{web.url}#token={web.token}")
        page.wait_for_function("() => window.orchdDebug && window.orchdDebug.received >= 300", timeout=15_000)
        bridge.kill()
        bridge.wait(10)
        page.wait_for_function("() => document.querySelector('#conn').textContent.includes('reconnecting')", timeout=10_000)
        g1.touch()  # events happen while no bridge runs
        wait_for(lambda: sum(1 for w in d.status(sid)["workers"] if w["state"] == "running"), 10, "the worker")
        bridge = _bridge(d, port)
        page.wait_for_function("() => document.querySelector('#conn').textContent === 'live'", timeout=15_000)
        g2.touch()
        d.wait_session(sid, timeout_s=120)
        page.wait_for_function(
            f"() => document.querySelector('#sessions [data-session=\"{sid}\"]')?.dataset.state === 'done'", timeout=60_000)
        from tests.helpers import replay_all
        logged = replay_all(f"ipc://{d.runtime_dir}/control")
        page.wait_for_function(f"() => window.orchdDebug.lastSeq >= {logged[-1][0]}", timeout=60_000)
        assert _debug(page, "gaps") == 0 and _debug(page, "dupes") == 0
        assert _debug(page, "received") == len(logged), "the page missed events across the restart"
    finally:
        bridge.send_signal(signal.SIGTERM)
        bridge.wait(10)


def test_a_hundred_thousand_events_keep_the_page_small(daemon_factory, git_repo, tmp_path, page):
    """The slowest browser test (25-35 s on 2 cores): most of it is the daemon logging 100,000 events."""
    d = daemon_factory(env=HTTP)
    web = web_of(d)
    page.goto(f"{web.url}#token={web.token}")
    page.wait_for_function("() => document.querySelector('#conn').textContent === 'live'", timeout=15_000)
    sid = _submit(d, tmp_path, git_repo, [{"name": "a", "agent": "command", "argv": fake("json:100000", "exit:0")}])
    d.wait_session(sid, timeout_s=120)
    from tests.helpers import replay_all
    logged = replay_all(f"ipc://{d.runtime_dir}/control")
    page.wait_for_function(f"() => window.orchdDebug.lastSeq >= {logged[-1][0]}", timeout=60_000)
    assert _debug(page, "received") == len(logged) > 100_000
    assert _debug(page, "gaps") == 0 and _debug(page, "dupes") == 0
    # a bounded window in memory, and only the rows on screen in the DOM
    assert page.evaluate("document.querySelectorAll('#log .ev').length") < 2000
    assert _debug(page, "kept") <= 20_000
    assert page.evaluate("document.getElementsByTagName('*').length") < 5000
    # the user scrolls up: the view stays put while events arrive, and the log still shows rows
    page.evaluate("() => { const b = document.querySelector('#log'); b.scrollTop = 0; }")
    page.wait_for_function("() => !document.querySelector('#log-bottom').hidden", timeout=5_000)
