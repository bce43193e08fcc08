"""Local security: other users on the host cannot reach the daemon or read its state.

A real daemon runs as this (root) user; a second local user, made for the
test and deleted after it, tries to use it.  The interpreter and its
packages may live where the second user cannot read (``/root``), so the
second user's process imports what it needs as root, then drops to the
other uid/gid with no supplementary groups before touching anything: every
permission check below is the kernel's, made for the other user.
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from tests.conftest import Daemon, wait_for

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("useradd") is None,
                                reason="needs root and useradd to make a second local user")


@pytest.fixture(scope="module")
def other_user():
    name = f"orchdt{os.getpid() % 100000}{uuid.uuid4().hex[:4]}"
    subprocess.run(["useradd", "-M", "-d", "/nonexistent", "-s", "/usr/sbin/nologin", name], check=True,
                   capture_output=True)
    try:
        import pwd
        pw = pwd.getpwnam(name)
        yield pw.pw_uid, pw.pw_gid
    finally:
        subprocess.run(["userdel", name], capture_output=True)


def as_user(user: tuple[int, int], code: str, timeout_s: float = 30) -> subprocess.CompletedProcess:
    """Run ``code`` in a python that imported orchctl as root, then became ``user``."""
    uid, gid = user
    prelude = textwrap.dedent(f"""
        import os, sys
        import argparse, errno, gettext, json, locale, secrets, socket, textwrap, shutil
        import orchctl.cli, orchctl.client, orchctl.watch, orchd.paths
        os.setgroups([])
        os.setresgid({gid}, {gid}, {gid})
        os.setresuid({uid}, {uid}, {uid})
        assert os.geteuid() == {uid}
    """)
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout_s, env={k: v for k, v in os.environ.items()
                                                             if k != "ORCHD_RUNTIME_DIR"})


def can_read(user, path: Path) -> subprocess.CompletedProcess:
    return as_user(user, f"""
        try:
            with open({str(path)!r}, "rb") as fh:
                fh.read(1)
        except PermissionError:
            print("denied")
        else:
            print("read")
    """)


@pytest.fixture
def open_top(short_tmp):
    """A temp dir every user may traverse, so only orchd's own modes keep the other user out."""
    os.chmod(short_tmp, 0o755)
    return short_tmp


def test_another_user_cannot_use_the_socket_or_read_the_state(open_top, other_user):
    state = open_top / "state"
    state.mkdir(mode=0o755)  # made by the user, open: orchd warns and leaves it alone
    os.chmod(state, 0o755)
    d = Daemon(state, open_top / "rt").start()
    try:
        wal = state / "events.sqlite3-wal"
        wait_for(lambda: wal.exists(), 10, "the WAL file")
        # what orchd created is owner-only; the user's own dir keeps its mode
        assert stat.S_IMODE((open_top / "rt").stat().st_mode) == 0o700
        for f in ("events.sqlite3", "events.sqlite3-wal", "events.sqlite3-shm", "orchd.lock"):
            assert stat.S_IMODE((state / f).stat().st_mode) == 0o600, f
        assert stat.S_IMODE(state.stat().st_mode) == 0o755
        assert "state_dir_open" in d.log()

        res = as_user(other_user, f"""
            sys.exit(orchctl.cli.main(["status", "--runtime-dir", {str(d.runtime_dir)!r}]))
        """)
        assert res.returncode == 3, res
        assert res.stderr.strip().splitlines() == [
            f"permission denied: ipc://{d.runtime_dir}/control belongs to another user "
            "(run orchctl as the user that runs orchd)"], res.stderr
        for f in ("events.sqlite3", "events.sqlite3-wal"):
            assert can_read(other_user, state / f).stdout.strip() == "denied", f
        assert d.ctl_json("status")["sessions"] is not None  # the owner still gets in
    finally:
        assert d.stop() == 0


def test_a_state_dir_orchd_makes_is_0700_with_its_parents(open_top, other_user):
    state = open_top / "home" / ".local" / "state" / "orchd"
    d = Daemon(state, open_top / "rt")
    d.log_path = open_top / "daemon.log"
    d.start()
    try:
        for p in (state, state.parent, state.parent.parent):
            assert stat.S_IMODE(p.stat().st_mode) == 0o700, p
        assert can_read(other_user, state / "events.sqlite3").stdout.strip() == "denied"
        res = as_user(other_user, f"""
            try:
                os.listdir({str(state)!r})
            except PermissionError:
                print("denied")
        """)
        assert res.stdout.strip() == "denied"
    finally:
        assert d.stop() == 0


def test_another_user_gets_permission_denied_on_the_socket_itself(open_top, other_user):
    """The runtime dir is traversable here (a systemd RuntimeDirectoryMode=0711 setup, say): the socket's own
    mode (0600 from the umask) still refuses the other user, and orchctl says so rather than "not running"."""
    rt = open_top / "rt"
    rt.mkdir(mode=0o700)
    srv = socket.socket(socket.AF_UNIX)
    old = os.umask(0o077)
    try:
        srv.bind(str(rt / "control"))
    finally:
        os.umask(old)
    srv.listen(1)
    os.chmod(rt, 0o711)
    try:
        res = as_user(other_user, f"""
            sys.exit(orchctl.cli.main(["status", "--runtime-dir", {str(rt)!r}]))
        """)
        assert res.returncode == 3 and res.stderr.startswith("permission denied: "), res
        assert len(res.stderr.strip().splitlines()) == 1
    finally:
        srv.close()


def run_orchd(state: Path, rt: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchd.app", "run", "--state-dir", str(state),
                           "--runtime-dir", str(rt), *extra], cwd=ROOT, capture_output=True, text=True,
                          timeout=30, env={k: v for k, v in os.environ.items() if not k.startswith("ORCHD_")})


@pytest.mark.parametrize("field", ["control_endpoint", "events_endpoint"])
@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "0.0.0.0"])
def test_a_tcp_endpoint_is_refused_at_start(short_tmp, field, host):
    cfg = short_tmp / "orchd.toml"
    cfg.write_text(f'{field} = "tcp://{host}:5555"\n')
    res = run_orchd(short_tmp / "state", short_tmp / "rt", "--config", str(cfg))
    assert res.returncode == 2, res
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "plaintext tcp is refused" in lines[0], res.stderr
    assert "tcp://" not in lines[0].replace(f"tcp://{host}:5555", "")  # it does not recommend tcp
    assert not (short_tmp / "state").exists() and not (short_tmp / "rt").exists()  # nothing was created


def test_a_symlinked_runtime_dir_is_refused_and_left_alone(short_tmp):
    target = short_tmp / "target"
    target.mkdir()
    os.chmod(target, 0o1777)
    link = short_tmp / "rt"
    link.symlink_to(target)
    res = run_orchd(short_tmp / "state", link)
    assert res.returncode == 1, res
    assert res.stderr.strip().splitlines() == [res.stderr.strip()] and "is a symlink" in res.stderr
    assert stat.S_IMODE(target.stat().st_mode) == 0o1777 and link.is_symlink()
    assert not (target / "orchd.lock").exists()


def test_a_runtime_dir_of_another_user_is_refused_and_left_alone(short_tmp, other_user):
    rt = short_tmp / "rt"
    rt.mkdir()
    os.chmod(rt, 0o755)
    os.chown(rt, *other_user)
    res = run_orchd(short_tmp / "state", rt)
    assert res.returncode == 1, res
    assert len(res.stderr.strip().splitlines()) == 1 and f"belongs to uid {other_user[0]}" in res.stderr
    st = rt.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (other_user[0], 0o755)
    assert list(rt.iterdir()) == []


@pytest.mark.parametrize("mode", [0o755, 0o1777, 0o711])
def test_an_open_runtime_dir_is_refused_and_left_alone(short_tmp, mode):
    rt = short_tmp / "rt"
    rt.mkdir()
    os.chmod(rt, mode)
    res = run_orchd(short_tmp / "state", rt)
    assert res.returncode == 1, res
    assert len(res.stderr.strip().splitlines()) == 1 and f"has mode {mode:04o}, not 0700" in res.stderr
    assert stat.S_IMODE(rt.stat().st_mode) == mode
    assert list(rt.iterdir()) == []


def test_a_missing_runtime_dir_is_made_0700_with_its_parents(short_tmp):
    os.chmod(short_tmp, 0o755)
    rt = short_tmp / "a" / "b"
    d = Daemon(short_tmp / "state", rt).start()
    try:
        assert stat.S_IMODE(rt.stat().st_mode) == 0o700
        assert stat.S_IMODE(rt.parent.stat().st_mode) == 0o700
        assert stat.S_IMODE(short_tmp.stat().st_mode) == 0o755  # not ours to change
        assert stat.S_IMODE((rt / "control").stat().st_mode) & 0o077 == 0
    finally:
        assert d.stop() == 0


def test_agents_write_files_with_the_users_umask_not_the_daemons(daemon_factory, git_repo, tmp_path):
    """The daemon's own files are 0600 (umask 0o077), but an agent's files in its worktree are not."""
    import json as _json

    from tests.conftest import fake, write_plan
    d = daemon_factory()
    plan = write_plan(tmp_path / "plan.json", [{"name": "w", "agent": "command", "argv": fake("write:made.txt:x", "exit:0")}])
    sid = _json.loads(d.ctl("submit", "--plan", str(plan), "--target", str(git_repo), "--json").stdout)["session"]
    s = d.wait_session(sid)
    tree = Path(s["workers"][0]["worktree"])
    mask = os.umask(0)
    os.umask(mask)  # this test's umask, which the daemon it started inherited
    assert (tree / "made.txt").stat().st_mode & 0o777 == 0o666 & ~mask
