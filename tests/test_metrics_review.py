"""The review, decision and notification metrics move when a real daemon reviews, decides and
notifies (scripted reviewers and a notify command; scraped over HTTP on metrics_port)."""

from __future__ import annotations

import json
import sys

from tests.conftest import wait_for
from tests.test_metrics import _free_port, _scrape, _v
from tests.test_review import _author, _config, _submit


def test_reviews_decisions_and_notifications_are_counted(daemon_factory, tmp_path, git_repo):
    port = _free_port()
    got = tmp_path / "notified.jsonl"
    notify = json.dumps([sys.executable, "-c",
                         f"import sys; open({str(got)!r}, 'a').write(sys.stdin.read().strip() + '\\n')"])
    script = {"*": {"verdict": "concern", "summary": "no test for the empty case"}}
    d = daemon_factory(f"metrics_port = {port}\n"  # top-level keys first: TOML tables run to the end
                       + _config(tmp_path, script, reviewers=1, extra=f"\n[notify]\ncommand = {notify}\n"))
    before = _scrape(port)
    sid = _submit(d, tmp_path, git_repo, [_author("a", "write:a.txt:one", "exit:0")])
    assert d.wait_session(sid)["state"] == "done"
    wait_for(lambda: got.exists() and '"done"' in got.read_text(), 20, "the done notification")

    def moved(name: str, **labels) -> float:
        return _v(_scrape(port), name, **labels) - _v(before, name, **labels)

    # one reviewer, one concern: a log_warning decision, and the session goes on to done
    assert moved("orchd_reviews_total", verdict="concern") >= 1
    assert moved("orchd_decisions_total", decision="log_warning") >= 1
    wait_for(lambda: moved("orchd_notifications_total", channel="command", outcome="sent") >= 1, 10,
             "the notification counted")
