"""Shared fixtures: real daemons in temp dirs, a temp git repo, orchctl as a subprocess."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FAKEAGENT = str(ROOT / "tests" / "fakeagent.py")
GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}


def wait_for(cond, timeout_s: float = 30.0, what: str = "condition"):
    """Poll ``cond`` until it returns a truthy value, or fail after the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.02)


def fake(*ops: str) -> list[str]:
    return [sys.executable, FAKEAGENT, *ops]


class Daemon:
    def __init__(self, state_dir: Path, runtime_dir: Path, config: Path | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.state_dir = state_dir
        self.runtime_dir = runtime_dir
        self.config = config
        self.env = {**os.environ, "ORCHD_LOG_FORMAT": "json", "ORCHD_HTTP_LISTEN": "off", **(env or {})}
        self.env.pop("ORCHD_RUNTIME_DIR", None)
        self.proc: subprocess.Popen | None = None
        self.log_path = state_dir.parent / f"daemon-{id(self)}.log"

    def start(self) -> "Daemon":
        argv = [sys.executable, "-m", "orchd.app", "run", "--state-dir", str(self.state_dir),
                "--runtime-dir", str(self.runtime_dir)]
        if self.config:
            argv += ["--config", str(self.config)]
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(argv, env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        wait_for(lambda: self.ctl("status", "--json", check=False).returncode == 0 or self._died(),
                 30, "the daemon to answer")
        if self.proc.poll() is not None:
            raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.log()}")
        return self

    def _died(self) -> bool:
        return self.proc.poll() is not None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def ctl(self, *args: str, check: bool = True, timeout: float = 60, input: bytes | None = None):
        res = subprocess.run([sys.executable, "-m", "orchctl.cli", *args, "--runtime-dir", str(self.runtime_dir)],
                             capture_output=True, timeout=timeout, input=input,
                             env={k: v for k, v in os.environ.items() if k != "ORCHD_RUNTIME_DIR"})
        if check and res.returncode != 0:
            raise AssertionError(f"orchctl {' '.join(args)} exited {res.returncode}: {res.stderr.decode()}"
                                 f"\n--- daemon log ---\n{self.log()[-5000:]}")
        return res

    def ctl_json(self, *args: str):
        return json.loads(self.ctl(*args, "--json").stdout)

    def status(self, session: str) -> dict:
        return self.ctl_json("status", session)

    def wait_session(self, session: str, states=("done", "failed", "stopped", "escalated"), timeout_s=60) -> dict:
        return wait_for(lambda: (s := self.status(session))["state"] in states and s, timeout_s,
                        f"session {session} to reach {states}")

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout_s)
        finally:
            self._log.close()

    def kill9(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        self._log.close()


@pytest.fixture
def no_user_git_config(tmp_path, monkeypatch):
    """Run git as on a machine where it was never configured: no identity anywhere, an empty
    global config at ``tmp_path / "empty-gitconfig"`` (a test may write one there), no system one."""
    empty = tmp_path / "empty-gitconfig"
    empty.write_text("")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(empty))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for var in ("GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME",
                "GIT_COMMITTER_EMAIL", "EMAIL", "GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def short_tmp():
    """A short temp dir (ipc socket paths must stay under ~100 bytes)."""
    d = tempfile.mkdtemp(prefix="o", dir="/tmp")
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def daemon_factory(short_tmp, tmp_path):
    made: list[Daemon] = []

    def make(config: str | None = None, env: dict[str, str] | None = None, start: bool = True) -> Daemon:
        cfg_path = None
        if config is not None:
            cfg_path = tmp_path / f"orchd-{len(made)}.toml"
            cfg_path.write_text(config)
        d = Daemon(tmp_path / "state", short_tmp / "rt", cfg_path, env)
        made.append(d)
        return d.start() if start else d

    yield make
    for d in made:
        if d.proc is not None and d.proc.poll() is None:
            d.stop(signal.SIGKILL)


@pytest.fixture
def daemon(daemon_factory):
    d = daemon_factory()
    yield d
    code = d.stop()
    assert code == 0, f"daemon exited {code} on SIGTERM:\n{d.log()[-3000:]}"


@pytest.fixture
def git_repo(tmp_path) -> Path:
    repo = tmp_path / "target"
    repo.mkdir()
    env = {**os.environ, **GIT_ENV}
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True, env=env)
    (repo / "README.md").write_text("target repo\n")
    subprocess.run(["git", "-C", str(repo), "add", "-A"], check=True, env=env)
    subprocess.run(["git", "-C", str(repo), "commit", "-qm", "init"], check=True, env=env)
    return repo


def write_plan(path: Path, assignments: list[dict]) -> Path:
    path.write_text(json.dumps({"assignments": assignments}))
    return path
