"""``orchctl submit --rehearse FILE`` checks the scenario before sending anything."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def orchctl(runtime: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # no daemon listens under `runtime`: a request that is sent ends in exit 3 (unreachable)
    return subprocess.run([sys.executable, "-m", "orchctl.cli", *args, "--runtime-dir", str(runtime / "none")],
                          capture_output=True, text=True, timeout=30, cwd=REPO)


def test_a_bad_scenario_is_a_usage_error_before_sending(short_tmp: Path, tmp_path: Path) -> None:
    bad = tmp_path / "typo.json"
    bad.write_text(json.dumps({"agents": {"claude": [{"tol": "run", "command": "true"}]}}))
    res = orchctl(short_tmp, "submit", "task", "--target", str(tmp_path), "--rehearse", str(bad))
    assert res.returncode == 2, res
    assert res.stderr == f"orchctl: bad scenario {bad}: agents.claude[0]: unknown key 'tol'\n"
    assert res.stdout == ""


def test_bad_scenario_files_are_one_line(short_tmp: Path, tmp_path: Path) -> None:
    cases = {
        "missing.json": (None, "cannot read: No such file or directory"),
        "syntax.json": ("{not json", "not valid JSON: "),
        "syntax.toml": ("agents = [", "not valid TOML: "),
        "stall.toml": ("[[agents.gemini]]\nstall = -1\n", "agents.gemini[0].stall: expected bool, got int"),
        "top.json": ('{"agents": {}, "agent": {}}', "unknown key 'agent'"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / name
        if content is not None:
            path.write_text(content)
        res = orchctl(short_tmp, "submit", "task", "--target", str(tmp_path), "--rehearse", str(path), "--json")
        assert res.returncode == 2, (name, res)
        assert res.stderr.startswith(f"orchctl: bad scenario {path}: {message}"), (name, res.stderr)
        assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr, (name, res.stderr)


def test_a_good_scenario_is_sent(short_tmp: Path, tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text('[[agents."*"]]\ntext = "DONE: {assignment}"\n')
    res = orchctl(short_tmp, "submit", "task", "--target", str(tmp_path), "--rehearse", str(good))
    assert res.returncode == 3, res  # it passed the check and went looking for the daemon


def test_the_validator_is_imported_only_for_a_scenario_file(short_tmp: Path, tmp_path: Path) -> None:
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"agents": {"*": [{"stall": True}]}}))
    code = (
        "import sys\n"
        "from orchctl.cli import main\n"
        "rc = main(sys.argv[1:])\n"
        "print(rc, sorted(m for m in sys.modules if m.split('.')[0] == 'actors' or m == 'http.server'))\n"
    )
    base = ["submit", "task", "--target", str(tmp_path), "--runtime-dir", str(short_tmp / "none"), "--rehearse"]
    plain = subprocess.run([sys.executable, "-c", code, *base], capture_output=True, text=True, timeout=30, cwd=REPO)
    assert plain.stdout.strip() == "3 []", plain
    with_file = subprocess.run([sys.executable, "-c", code, *base, str(good)],
                               capture_output=True, text=True, timeout=30, cwd=REPO)
    assert with_file.stdout.strip() == "3 ['actors', 'actors.rehearsal', 'actors.rehearsal.scenario']", with_file
