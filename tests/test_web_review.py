"""The dashboard with the review actor, in headless Chromium: a session that waits for an answer is
answered from the page, and reviews with their verdicts and findings are shown (as text)."""

from __future__ import annotations

from tests.conftest import wait_for
from tests.test_review import _author, _config, _submit
from tests.test_web_browser import HTTP, browser, page  # noqa: F401  (fixtures)
from tests.webclient import web_of


def test_a_question_is_answered_from_the_page(daemon_factory, tmp_path, git_repo, page):  # noqa: F811
    d = daemon_factory(env=HTTP)
    web = web_of(d)
    seen = tmp_path / "prompts.txt"
    sid = _submit(d, tmp_path, git_repo, [_author("a", f"prompt:{seen}", "line:QUESTION: <b>Postgres</b> or SQLite?",
                                                  "hang")])
    page.goto(f"{web.url}#token={web.token}")
    need = page.locator(f'#needs [data-session="{sid}"]')
    need.wait_for(timeout=20_000)
    assert need.locator(".question").text_content() == "<b>Postgres</b> or SQLite?"
    assert page.evaluate("document.querySelectorAll('#needs b').length") == 0
    wait_for(lambda: d.status(sid)["workers"][0]["state"] == "stopped", 20, "the asking run to stop")
    need.locator("textarea.answer-text").fill("SQLite, please")
    need.locator("button.answer-btn").click()
    wait_for(lambda: seen.exists() and "SQLite, please" in seen.read_text(), 20, "the answer in the resumed prompt")
    # (the resumed run prints the same QUESTION again: the plan's argv does not change)
    d.ctl("stop", sid)
    d.wait_session(sid)


def test_reviews_and_verdicts_show_and_the_answer_resumes(daemon_factory, tmp_path, git_repo, page):  # noqa: F811
    script = {"a/1": {"verdict": "concern", "summary": "which <i>storage</i> backend was meant?"},
              "*": {"verdict": "approve", "summary": "ok now"}}
    d = daemon_factory(_config(tmp_path, script), env=HTTP)
    web = web_of(d)
    sid = _submit(d, tmp_path, git_repo, [_author("a", "write:a.txt:one", "exit:0")])
    page.goto(f"{web.url}#token={web.token}")
    need = page.locator(f'#needs [data-session="{sid}"]')
    need.wait_for(timeout=30_000)
    card = page.locator(f'#sessions [data-session="{sid}"]')
    page.wait_for_function(f"() => document.querySelector('#sessions [data-session=\"{sid}\"] .review')", timeout=10_000)
    text = card.locator(".reviews").text_content()
    assert "round 1" in text and "pause_and_clarify" in text and "which <i>storage</i> backend" in text
    assert page.evaluate("document.querySelectorAll('#sessions i').length") == 0
    need.locator("textarea.answer-text").fill("Use SQLite")
    need.locator("button.answer-btn").click()
    assert d.wait_session(sid)["state"] == "done"
    page.wait_for_function(f"() => document.querySelector('#sessions [data-session=\"{sid}\"]').dataset.state === 'done'",
                           timeout=10_000)
    page.wait_for_function(
        f"() => document.querySelectorAll('#sessions [data-session=\"{sid}\"] .review').length === 2", timeout=10_000)
    assert "continue" in card.locator(".reviews").text_content()
