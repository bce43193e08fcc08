"""Operations files checked by the real tools: both systemd units verify and say what the issue asks."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _orchd() -> str:
    """The orchd console script of the Python running the tests (a venv's bin, or on PATH)."""
    here = Path(sys.executable).parent / "orchd"
    found = str(here) if here.exists() else shutil.which("orchd")
    assert found, "the orchd console script is not installed (pip install -e .)"
    return found


def _directives(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if re.match(r"^[A-Za-z]+=", line):
            key, value = line.split("=", 1)
            out.setdefault(key, []).append(value)
    return out


def _verify(unit: Path, tmp_path: Path, user: bool) -> subprocess.CompletedProcess:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is needed (Debian package systemd)"
    env = dict(os.environ)
    if user:  # a user manager needs a runtime dir to resolve RuntimeDirectory=
        rt = tmp_path / "xdg-runtime"
        rt.mkdir(mode=0o700)
        env["XDG_RUNTIME_DIR"] = str(rt)
    return subprocess.run([analyze, *(["--user"] if user else []), "verify", str(unit)], capture_output=True,
                          text=True, timeout=60, env=env)


@pytest.mark.parametrize("which", ["system", "user"])
def test_systemd_unit_verifies_and_is_a_notify_service_with_a_watchdog(which, tmp_path):
    src = ROOT / "systemd" / ("orchd.service" if which == "system" else "user/orchd.service")
    text = src.read_text()
    unit = tmp_path / "orchd.service"
    unit.write_text(text.replace("/usr/local/bin/orchd", _orchd()).replace("%h/.local/bin/orchd", _orchd()))
    res = _verify(unit, tmp_path, user=which == "user")
    assert res.returncode == 0, res.stdout + res.stderr
    d = _directives(text)
    assert d["Type"] == ["notify"] and d["NotifyAccess"] == ["main"] and d["Restart"] == ["on-failure"]
    assert d["WatchdogSec"] and d["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert d["RuntimeDirectory"] == ["orchd"] and d["StateDirectory"] == ["orchd"]
    assert d["RuntimeDirectoryMode"] == ["0700"]
    if which == "system":
        assert d["User"] == ["orchd"]
        # hardening that would break the agent CLIs is left out, each with a comment saying why
        for key in ("MemoryDenyWriteExecute", "RestrictNamespaces", "PrivateUsers", "SystemCallFilter",
                    "CapabilityBoundingSet", "NoNewPrivileges", "ProtectHome"):
            assert key not in d and re.search(rf"^#.*\b{key}=", text, re.M), key
        assert d["ProtectSystem"] == ["full"] and d["PrivateTmp"] == ["yes"]


def test_a_broken_unit_fails_verification(tmp_path):
    """The check above can fail: a typo in Type= is refused."""
    text = (ROOT / "systemd" / "orchd.service").read_text().replace("/usr/local/bin/orchd", _orchd())
    unit = tmp_path / "orchd.service"
    unit.write_text(text.replace("Type=notify", "Type=notfy"))
    res = _verify(unit, tmp_path, user=False)
    assert res.returncode != 0 or "notfy" in res.stderr, res.stderr
