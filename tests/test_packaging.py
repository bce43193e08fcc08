"""``pip install .`` into a fresh venv gives working ``orchd`` and ``orchctl``: the wheel is built from the
checkout, installed into a new venv, and the daemon it installed runs a ``command`` session to the end.

Offline: the wheel is built with ``--no-build-isolation --no-index`` (setuptools comes from the venv
that runs the tests: the test extra) and installed with ``--no-deps --no-index``; the new venv finds the
dependencies (pyzmq, msgspec, pydantic, prometheus-client) through a ``.pth`` file naming the test
venv's site-packages, which pip installed from the same index as scripts/setup.sh.  The checkout's own
``orchd`` is never on that path (the editable install's hook is a ``.pth`` of the test venv's site dir,
which a ``.pth``-added path does not run), and a test below checks that the wheel's copy is the one
that runs.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import site
import subprocess
import sys
import urllib.request
from pathlib import Path

from tests.conftest import wait_for, write_plan

ROOT = Path(__file__).resolve().parent.parent


def _run(argv, **kw) -> subprocess.CompletedProcess:
    res = subprocess.run(argv, capture_output=True, text=True, timeout=kw.pop("timeout", 300), **kw)
    assert res.returncode == 0, f"{argv} exited {res.returncode}:\n{res.stdout}\n{res.stderr}"
    return res


def _source_copy(dest: Path) -> Path:
    """The checkout's tracked files as they are now (a build must not write into the checkout)."""
    files = _run(["git", "-C", str(ROOT), "ls-files", "-z"]).stdout.split("\0")
    for rel in filter(None, files):
        src = ROOT / rel
        if src.is_file() and not src.is_symlink():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def test_the_wheel_installs_into_a_fresh_venv_and_runs_a_command_session(tmp_path, short_tmp, git_repo):
    src = _source_copy(tmp_path / "src")
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
          "--disable-pip-version-check", "-q", "-w", str(dist), str(src)], cwd=tmp_path)
    wheel = next(dist.glob("orchd-*.whl"))

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    py = venv / "bin" / "python"
    venv_site = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]).stdout.strip())
    deps = [p for p in site.getsitepackages() if Path(p).is_dir()]
    (venv_site / "outer-deps.pth").write_text("\n".join(deps) + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index",
          "--disable-pip-version-check", "-q", str(wheel)], cwd=tmp_path)

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "ORCHD_RUNTIME_DIR", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}:{env['PATH']}"
    orchd, orchctl = venv / "bin" / "orchd", venv / "bin" / "orchctl"
    assert _run([str(orchd), "--version"], cwd=tmp_path, env=env).stdout.strip().startswith("orchd ")
    assert _run([str(orchctl), "--version"], cwd=tmp_path, env=env).stdout.startswith("orchctl ")
    where = _run([str(py), "-c", "import orchd, actors, orchctl, actors.rehearsal.scenario as s; "
                  "print(orchd.__file__, actors.__file__, orchctl.__file__); s.default_scenario()"],
                 cwd=tmp_path, env=env).stdout.split()
    assert all(w.startswith(str(venv_site)) for w in where), where  # the wheel's copy, not the checkout

    rt, state = short_tmp / "rt", tmp_path / "state"
    log = open(tmp_path / "daemon.log", "wb")
    daemon = subprocess.Popen([str(orchd), "run", "--runtime-dir", str(rt), "--state-dir", str(state),
                               "--http", "127.0.0.1:0"], cwd=tmp_path,
                              env={**env, "ORCHD_LOG_FORMAT": "json"}, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        ctl = [str(orchctl), "--runtime-dir", str(rt)]
        wait_for(lambda: subprocess.run([*ctl, "status"], capture_output=True, env=env).returncode == 0
                 or daemon.poll() is not None, 30, "the wheel's daemon to answer")
        assert daemon.poll() is None, (tmp_path / "daemon.log").read_text()
        # the dashboard page comes from the wheel's data files (<venv>/share/orchd/web), not the checkout
        wait_for(lambda: (rt / "web.json").exists(), 30, "the wheel's dashboard to listen")
        url = json.loads(_run([*ctl, "web", "--json"], env=env).stdout)["url"]
        with urllib.request.urlopen(url, timeout=10) as resp:
            assert b"<html" in resp.read().lower()
        assert (venv / "share" / "orchd" / "web" / "index.html").is_file()
        plan = write_plan(tmp_path / "plan.json", [
            {"name": "hello", "agent": "command", "argv": [str(py), "-c", "print('hello from the wheel')"]}])
        sid = json.loads(_run([*ctl, "submit", "--plan", str(plan), "--target", str(git_repo), "--json"],
                              env=env).stdout)["session"]
        watched = _run([*ctl, "watch", sid, "--until-done", "--json"], env=env, timeout=60).stdout
        texts = [e.get("text") for e in map(json.loads, watched.splitlines()) if e["kind"] == "agent.text"]
        assert texts == ["hello from the wheel"]
        assert json.loads(_run([*ctl, "status", sid, "--json"], env=env).stdout)["state"] == "done"
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            code = daemon.wait(30)
        finally:
            if daemon.poll() is None:
                daemon.kill()
            log.close()
    assert code == 0, (tmp_path / "daemon.log").read_text()[-3000:]
