"""Operations files checked by the real tools."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_systemd_unit_verifies(tmp_path):
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is needed (Debian package systemd)"
    orchd = shutil.which("orchd")
    assert orchd, "the orchd console script is not installed"
    unit = (ROOT / "systemd" / "orchd.service").read_text().replace("/usr/local/bin/orchd", orchd)
    path = tmp_path / "orchd.service"
    path.write_text(unit)
    res = subprocess.run([analyze, "verify", str(path)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "RuntimeDirectory=orchd" in unit and "StateDirectory=orchd" in unit
