"""docs/running.md says what is true: its recommended config passes `orchd check-config`, its config
reference names every key, and its example prompt is the one orchd builds."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from actors import prompts
from orchd import protocol as p
from orchd.config import AgentConfig, Config, Limits

DOC = Path(__file__).resolve().parents[1] / "docs" / "running.md"


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", DOC.read_text(), re.S)


def _check_config(text: str, tmp_path: Path) -> subprocess.CompletedProcess:
    path = tmp_path / f"c{len(list(tmp_path.iterdir()))}.toml"
    path.write_text(text)
    return subprocess.run([sys.executable, "-m", "orchd.app", "check-config", str(path)], capture_output=True,
                          text=True, timeout=60)


def test_every_toml_example_passes_check_config(tmp_path):
    text = DOC.read_text()
    marker = text.index("<!-- recommended-config")
    recommended = re.search(r"```toml\n(.*?)```", text[marker:], re.S).group(1)
    assert "max_tokens" in recommended and "max_cost_usd" in recommended
    blocks = _blocks("toml")
    assert recommended in blocks and len(blocks) >= 2
    for block in blocks:
        res = _check_config(block, tmp_path)
        assert (res.returncode, res.stdout.strip()) == (0, "ok"), (block, res.stderr)
    # and the check can fail: a misspelled key in the same file is refused
    res = _check_config(recommended.replace("stall_s", "stal_s"), tmp_path)
    assert res.returncode == 2 and "stal_s" in res.stderr


def test_the_config_reference_names_every_key():
    text = DOC.read_text()
    reference = text[text.index("## Config reference"):text.index("## Troubleshooting")]
    budgets = text[text.index("## Budgets"):text.index("### A recommended config")]
    for key in Config.model_fields:
        if key in ("limits", "agents", "roles", "notify", "review", "recovery"):
            key = {"limits": "[limits]", "agents": "[agents.<name>]", "roles": "[[roles]]", "notify": "[notify]",
                   "review": "[review]", "recovery": "[recovery]"}[key]
        assert f"`{key}`" in reference, key
    for key in Limits.model_fields:
        assert f"`{key}`" in budgets and f"`{key}`" in reference, key
    for key in AgentConfig.model_fields:
        assert f"`{key}`" in reference, key


def test_the_example_prompt_is_the_one_orchd_builds():
    text = DOC.read_text()
    shown = next(b for b in _blocks("text") if "orchd-assignment: implement" in b)
    implement = p.AssignmentSpec(name="implement", agent="claude", role="implementation and tests", weight=40,
                                 after=["design"])
    design = p.AssignmentSpec(name="design", agent="gemini", role="design and architecture", weight=40)
    built = prompts.prompt_for("Add a /health endpoint with a test", implement,
                               [(design, "Wrote DESIGN.md: a Flask blueprint health.py ...",
                                 "orchd/s-1a2b3c4d.design")])
    assert shown.rstrip("\n") == built
    assert "orchd restarted while you were working. Continue your assignment where you left off." \
        in prompts.resume_prompt("implement", None) and "Continue your assignment where you left off." in text
