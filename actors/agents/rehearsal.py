"""Point a real agent CLI at the scripted model server (actors.rehearsal.modelserver).

Rehearsal runs the real CLIs end to end but spends no tokens: each CLI gets a
fake key and a base URL on loopback.  The adapters build argv per permission
profile; this module only writes the per-run config files and returns the
environment that redirects the CLI.  Facts behind each choice are in
/work/shared/agent-clis.md section 4.
"""

from __future__ import annotations

import json
from pathlib import Path

FAKE_KEY = "sk-rehearsal"

# codex: a custom provider with the Responses wire API.  "gpt-5.5" is a known
# slug, so codex offers apply_patch and prints no "model metadata not found"
# warning item.  WebSockets and retries are off: the fake speaks plain SSE and
# a scripted failure should fail at once.
_CODEX_CONFIG = """\
model = "gpt-5.5"
model_provider = "rehearsal"

[model_providers.rehearsal]
name = "rehearsal"
base_url = "{base_url}/v1"
env_key = "FAKE_OPENAI_API_KEY"
wire_api = "responses"
supports_websockets = false
request_max_retries = 0
stream_max_retries = 0
"""

# gemini: without selectedType, GOOGLE_GEMINI_BASE_URL makes gemini pick the
# "gateway" auth type, which headless mode rejects (exit 41).  Usage
# statistics would otherwise be sent to Google.
_GEMINI_SETTINGS = {
    "security": {"auth": {"selectedType": "gemini-api-key"}},
    "privacy": {"usageStatisticsEnabled": False},
}


def prepare_rehearsal(agent: str, base_url: str, home: Path, codex_home: Path,
                      key: str = FAKE_KEY) -> dict[str, str]:
    """Write ``agent``'s config under the per-run dirs; return the env to add.

    ``home`` becomes the CLI's HOME and ``codex_home`` its CODEX_HOME; both
    are returned in the env so the files written here are the ones read.
    """
    base_url = base_url.rstrip("/")
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    env = {"HOME": str(home)}
    if agent == "claude":
        env |= {
            "ANTHROPIC_BASE_URL": base_url,
            "ANTHROPIC_API_KEY": key,
            # a scripted error must fail the run now, not after minutes of retries
            "CLAUDE_CODE_MAX_RETRIES": "0",
        }
    elif agent == "codex":
        codex_home = Path(codex_home)
        codex_home.mkdir(parents=True, exist_ok=True)
        (codex_home / "config.toml").write_text(_CODEX_CONFIG.format(base_url=base_url), encoding="utf-8")
        env |= {"CODEX_HOME": str(codex_home), "FAKE_OPENAI_API_KEY": key}
    elif agent == "gemini":
        settings = home / ".gemini" / "settings.json"
        settings.parent.mkdir(parents=True, exist_ok=True)
        settings.write_text(json.dumps(_GEMINI_SETTINGS, indent=2) + "\n", encoding="utf-8")
        env |= {"GOOGLE_GEMINI_BASE_URL": base_url, "GEMINI_API_KEY": key}
    else:
        raise ValueError(f"no rehearsal setup for agent {agent!r}")
    return env
