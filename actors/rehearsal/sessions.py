"""Rehearsal sessions: one built-in scripted model server per session.

A rehearsal runs the real agent CLIs against the scripted model server
(``actors.rehearsal.modelserver``) on 127.0.0.1, so a whole session runs end
to end and spends no tokens.  The server runs in a thread of the daemon,
answers from the session's scenario (the default one when the user gave
none) and logs what it received to
``<state_dir>/runs/<session>/modelserver.jsonl``.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any

from actors.agents.rehearsal import prepare_rehearsal
from orchd import log

if TYPE_CHECKING:
    from actors.rehearsal.modelserver import ModelServer

_log = log.get("actors.rehearsal.sessions")


class Rehearsals:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self._servers: dict[str, ModelServer] = {}

    def env_for(self, session: str, scenario: dict[str, Any] | None, agent: str,
                home: Path, codex_home: Path) -> dict[str, str]:
        """Env (and config files under ``home``) pointing ``agent`` at the session's server."""
        server = self._servers.get(session)
        if server is None:
            # imported with the first rehearsal: its HTTP server (http.server, and with it ssl)
            # is nothing a daemon that rehearses nothing should hold
            from actors.rehearsal.modelserver import ModelServer
            log_path = self.state_dir / "runs" / session / "modelserver.jsonl"
            log_path.parent.mkdir(parents=True, exist_ok=True)
            # a key of its own, so a CLI of another run that reaches this port is refused
            server = ModelServer(scenario, log_path=log_path, key=f"sk-rehearsal-{secrets.token_hex(8)}").start()
            self._servers[session] = server
            _log.info("model_server_started", session=session, url=server.url)
        home.mkdir(parents=True, exist_ok=True)
        codex_home.mkdir(parents=True, exist_ok=True)
        env = prepare_rehearsal(agent, server.url, home, codex_home, key=server.key)
        env.setdefault("HOME", str(home))
        return env

    def stop(self, session: str) -> None:
        server = self._servers.pop(session, None)
        if server is not None:
            server.stop()

    def close(self) -> None:
        for session in list(self._servers):
            self.stop(session)
