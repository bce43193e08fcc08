"""``orchd doctor``: is each agent CLI installed, the tested version, logged
in, and able to run headless under orchd's default profile?

Theory of operation
-------------------
``check_agent`` is cheap and never talks to a model: it finds the binary
(``find_binary``, shared with the supervisor), runs ``<cli> --version``,
looks for credentials without reading their values into the report (only
*where* they were found), and, for claude, whether the ``workspace``
profile's bubblewrap sandbox can start (``bwrap`` and ``socat`` on PATH).

``preflight_agent`` runs the launch preflight (actors.preflight) for a
real run in the current directory under the agent's configured profile:
what a launch would fix by itself, and what would stop it.

``rehearse_agent`` runs the REAL CLI once, exactly as a worker would
(the adapter's ``build_launch`` with profile ``workspace``), against the
built-in scripted model server on 127.0.0.1 with a fake key, in a throwaway
git repo with a private HOME, TMPDIR and CODEX_HOME.  The child gets a
minimal environment (PATH and LANG, then the rehearsal variables), so no
real credential, proxy or Vertex/GCA switch of the user's can send it
anywhere but loopback.  The default scenario makes the agent write
``doctor.txt`` and finish; the stdout stream goes through the adapter's
parser, so a CLI release that changed its event schema shows up as
``unknown_lines``.  No tokens are spent.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec

from actors import preflight
from actors.agents import RunSpec, get_adapter
from actors.agents.rehearsal import prepare_rehearsal
from orchd import config as orchd_config
from orchd.protocol import AgentResult, AgentUnknown

AGENTS = ("claude", "codex", "gemini")
REPO = Path(__file__).resolve().parents[1]
LOCAL_BIN = REPO / ".tools" / "agents" / "node_modules" / ".bin"
"""Where scripts/install-agents.sh puts the pinned CLIs: a fresh clone
works after setup without touching PATH."""

VERSION_TIMEOUT_S = 30.0
REHEARSAL_TIMEOUT_S = 120.0
ASSIGNMENT = "doctor"
_VERSION = re.compile(r"\d+\.\d+\.\d+[0-9A-Za-z.+-]*")
_ERROR_LINES = 8


class AgentCheck(msgspec.Struct, kw_only=True):
    """What ``orchd doctor`` found out about one agent CLI (no secrets)."""

    name: str
    found: bool
    path: str | None = None
    version: str | None = None
    tested_version: str | None = None
    tested: bool = False
    credentials: bool = False
    credentials_source: str | None = None   # "env NAME" or a file path, never a value
    problems: list[str] = []


class RehearsalResult(msgspec.Struct, kw_only=True):
    """One run of the real CLI against the scripted model server."""

    ok: bool
    exit_code: int | None            # None: killed at the deadline
    duration_s: float
    events: dict[str, int] = {}      # normalized event kind -> count
    unknown_lines: int = 0           # stdout lines the adapter's parser did not understand
    file_written: bool = False       # the scenario's doctor.txt, with the expected content
    failure: str | None = None       # the adapter's catalogue code (not_logged_in, sandbox_unavailable...)
    error: str | None = None         # first stderr lines / the reason, on failure


# ---------------------------------------------------------------- lookup

def find_binary(name: str, configured: str | None = None) -> str | None:
    """Absolute path of agent ``name``'s CLI, or None.

    ``configured`` (``[agents.<name>] binary``) wins and has no fallback: a
    configured path that does not exist is reported missing rather than
    silently replaced.  Otherwise ``name`` on PATH, then the copy
    installed by scripts/install-agents.sh under ``.tools/agents``.
    """
    if configured:
        found = shutil.which(os.path.expanduser(configured))
        return os.path.abspath(found) if found else None
    found = shutil.which(name)
    if found:
        return os.path.abspath(found)
    local = LOCAL_BIN / name
    return str(local) if shutil.which(str(local)) else None


def _path_with(binary: str) -> str:
    """PATH with the CLI's own directory first: codex and gemini are node
    scripts whose helpers live beside them."""
    return os.pathsep.join([os.path.dirname(binary), os.environ.get("PATH", os.defpath)])


def cli_version(name: str, binary: str) -> tuple[str | None, str | None]:
    """(version, problem) from ``<cli> --version``."""
    argv = get_adapter(name).version_argv(binary)
    env = dict(os.environ, PATH=_path_with(binary))
    try:
        res = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, env=env,
                             timeout=VERSION_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return None, f"`{name} --version` did not answer within {VERSION_TIMEOUT_S:.0f} s"
    except OSError as exc:
        return None, f"cannot run {binary}: {exc}"
    out = res.stdout.decode(errors="replace")
    m = _VERSION.search(out)
    if res.returncode != 0 or m is None:
        err = res.stderr.decode(errors="replace").strip().splitlines()
        return None, f"`{name} --version` exited {res.returncode}: {(err or [out.strip()])[0][:200]}"
    return m.group(0), None


# ---------------------------------------------------------------- credentials

_CRED_ENV = {
    # Bedrock and Vertex take their credentials from the cloud SDK's own chain
    "claude": ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "CLAUDE_CODE_OAUTH_TOKEN", "CLAUDE_CODE_USE_BEDROCK",
               "CLAUDE_CODE_USE_VERTEX"),
    "codex": ("OPENAI_API_KEY", "CODEX_API_KEY"),
    "gemini": ("GEMINI_API_KEY", "GOOGLE_API_KEY", "GOOGLE_GENAI_USE_VERTEXAI", "GOOGLE_GENAI_USE_GCA"),
}
_LOGIN_HINT = {
    "claude": "set ANTHROPIC_API_KEY or run `claude` once and /login",
    "codex": "set OPENAI_API_KEY or run `codex login`",
    "gemini": "set GEMINI_API_KEY or run `gemini` once and log in with Google",
}
_FALSE = frozenset({"", "0", "false", "no", "off"})


def _json_object(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _credential_files(name: str, env: dict[str, str], home: Path) -> list[tuple[Path, str | None]]:
    """(file, key it must hold or None) where each CLI keeps a login."""
    if name == "claude":
        cfg = Path(env["CLAUDE_CONFIG_DIR"]) if env.get("CLAUDE_CONFIG_DIR") else home / ".claude"
        # ~/.claude.json exists after any first run; only an oauthAccount means a login
        return [(cfg / ".credentials.json", None), (home / ".claude.json", "oauthAccount"),
                (cfg / ".claude.json", "oauthAccount")]
    if name == "codex":
        codex_home = Path(env["CODEX_HOME"]) if env.get("CODEX_HOME") else home / ".codex"
        return [(codex_home / "auth.json", None)]
    if name == "gemini":
        return [(home / ".gemini" / "oauth_creds.json", None)]
    return []


def find_credentials(name: str, environ: dict[str, str] | None = None,
                     home: Path | None = None) -> str | None:
    """Where ``name``'s credentials are ("env NAME" or a file path), or None.
    Values are never returned."""
    env = dict(os.environ if environ is None else environ)
    for var in _CRED_ENV.get(name, ()):
        if env.get(var, "").strip().lower() not in _FALSE:
            return f"env {var}"
    home = home or Path(env.get("HOME") or Path.home())
    for path, key in _credential_files(name, env, home):
        data = _json_object(path)
        if data and (key is None or data.get(key)):
            return str(path)
    return None


# ---------------------------------------------------------------- check

def check_agent(name: str, binary: str | None = None) -> AgentCheck:
    """Find, version and credential check of one CLI; never talks to a model."""
    adapter = get_adapter(name)
    tested = adapter.tested_version
    problems: list[str] = []
    path = find_binary(name, binary)
    source = find_credentials(name)
    if source is None:
        problems.append(f"no credentials found: {_LOGIN_HINT.get(name, 'log in first')}")
    if name == "claude":
        missing = [tool for tool in ("bwrap", "socat") if shutil.which(tool) is None]
        if missing:
            problems.append(f"{' and '.join(missing)} not on PATH: the workspace profile's sandbox "
                            "cannot start (install bubblewrap and socat, e.g. scripts/setup.sh)")
    if path is None:
        where = f"configured binary {binary!r} not found" if binary else \
            f"{name} not on PATH nor in {LOCAL_BIN}"
        problems.insert(0, f"{where}: run scripts/install-agents.sh or set [agents.{name}] binary")
        return AgentCheck(name=name, found=False, tested_version=tested, credentials=source is not None,
                          credentials_source=source, problems=problems)
    version, problem = cli_version(name, path)
    if problem:
        problems.insert(0, problem)
    elif tested and version != tested:
        problems.insert(0, f"version {version} is not the tested {tested}: flags and events may differ")
    return AgentCheck(name=name, found=True, path=path, version=version, tested_version=tested,
                      tested=version is not None and version == tested,
                      credentials=source is not None, credentials_source=source, problems=problems)


# ---------------------------------------------------------------- preflight

def preflight_agent(name: str, path: str | None, profile: str, allow_unconfined: bool,
                    state_dir: str) -> list[dict[str, Any]]:
    """What the launch preflight would find for a real run of ``name`` in the
    current directory under ``profile`` (see actors.preflight)."""
    adapter = get_adapter(name)
    cwd = os.getcwd()
    launch = adapter.build_launch(RunSpec(prompt="doctor", cwd=cwd, profile=profile, binary=path,
                                          allow_unconfined=allow_unconfined))
    env = dict(os.environ) | launch.env
    facts = preflight.gather(agent=name, binary=path, tested_version=adapter.tested_version, rehearsal=False,
                             profile=profile, allow_unconfined=allow_unconfined, cwd=cwd, state_dir=state_dir,
                             argv=launch.argv, env=env, launch_env=launch.env)
    return [msgspec.to_builtins(f) for f in preflight.check(facts)]


def _finding_line(f: dict[str, Any]) -> str:
    tag = "fixed by the launch" if f["fixed"] else ("BLOCKS the launch" if f["blocking"] else "warning")
    return f"  preflight: {f['code']} ({tag}): {f['message']}" + (f"; fix: {f['fix']}" if f.get("fix") else "")


# ---------------------------------------------------------------- rehearse

def _kind(ev: Any) -> str:
    return type(ev).__struct_config__.tag


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """The CLI's own helpers (claude's socat bridges) are in its group."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def rehearse_agent(name: str, binary: str, timeout_s: float = REHEARSAL_TIMEOUT_S) -> RehearsalResult:
    """Run the real CLI once, profile ``workspace``, against the scripted server."""
    # here, not at the top: the supervisor imports this module for find_binary, and the
    # server's http.server (with ssl) is nothing a daemon at rest should hold
    from actors.rehearsal.modelserver import ModelServer
    adapter = get_adapter(name)
    with tempfile.TemporaryDirectory(prefix=f"orchd-doctor-{name}-") as tmp:
        root = Path(tmp)
        repo, home, tmpdir, codex_home = (root / d for d in ("repo", "home", "tmp", "codex"))
        for d in (repo, home, tmpdir):
            d.mkdir()
        git = subprocess.run(["git", "init", "-q", str(repo)], capture_output=True)
        if git.returncode != 0:
            return RehearsalResult(ok=False, exit_code=None, duration_s=0.0,
                                   error=f"git init failed: {git.stderr.decode(errors='replace').strip()}")
        with ModelServer(None) as srv:
            extra = prepare_rehearsal(name, srv.url, home, codex_home)
            spec = RunSpec(prompt=("orchd doctor rehearsal: do what you are asked.\n"
                                   f"orchd-assignment: {ASSIGNMENT}"),
                           cwd=str(repo), profile="workspace", binary=binary, home=str(home),
                           tmpdir=str(tmpdir),
                           config_dir=str(codex_home) if name == "codex" else None)
            launch = adapter.build_launch(spec)
            env = {"PATH": _path_with(binary), "LANG": "C.UTF-8"} | extra | launch.env
            started = time.monotonic()
            try:
                proc = subprocess.Popen(launch.argv, cwd=launch.cwd, env=env, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        start_new_session=True)
            except OSError as exc:
                return RehearsalResult(ok=False, exit_code=None, duration_s=0.0,
                                       error=f"cannot start {binary}: {exc}")
            try:
                out, err = proc.communicate(timeout=timeout_s)
                code: int | None = proc.returncode
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                out, err = proc.communicate()
                code = None
            finally:
                _kill_group(proc)
            duration = round(time.monotonic() - started, 2)
        written = repo / f"{ASSIGNMENT}.txt"
        file_ok = written.is_file() and ASSIGNMENT in written.read_text(errors="replace")
    parser = adapter.new_parser()
    events: list[Any] = []
    for line in out.decode(errors="replace").splitlines():
        events.extend(parser.feed_line(line))
    events.extend(parser.finish(code))
    counts: dict[str, int] = {}
    for ev in events:
        counts[_kind(ev)] = counts.get(_kind(ev), 0) + 1
    unknown = sum(isinstance(ev, AgentUnknown) for ev in events)
    results = [ev for ev in events if isinstance(ev, AgentResult)]
    stderr_lines = err.decode(errors="replace").splitlines()
    unconfined = [r for r in map(adapter.check_stderr, stderr_lines) if r]
    failure = adapter.classify(code, stderr_lines, events)
    ok = (code == 0 and bool(results) and results[-1].ok and file_ok and unknown == 0
          and not unconfined and failure is None)
    error = None
    if not ok:
        reasons = []
        if code is None:
            reasons.append(f"no exit within {timeout_s:.0f} s; killed")
        if unconfined:
            reasons.append(f"ran UNCONFINED: {unconfined[0]}")
        if failure is not None:
            reasons.append(f"{failure.code}: {failure.message}")
        if code == 0 and not file_ok:
            reasons.append(f"{ASSIGNMENT}.txt was not written")
        if unknown:
            reasons.append(f"{unknown} stdout line(s) not understood by the {name} adapter")
        tail = [s for s in (line.strip() for line in stderr_lines) if s][:_ERROR_LINES]
        error = "\n".join(reasons + tail) or f"exit code {code}"
    return RehearsalResult(ok=ok, exit_code=code, duration_s=duration, events=counts,
                           unknown_lines=unknown, file_written=file_ok,
                           failure=failure.code if failure else None, error=error)


# ---------------------------------------------------------------- CLI

def _table(report: dict[str, Any]) -> str:
    rows = [("agent", "found", "version", "tested", "credentials", "rehearsal")]
    for name, a in report["agents"].items():
        r = a["rehearsal"]
        rows.append((name, "yes" if a["found"] else "NO", a["version"] or "-",
                     "yes" if a["tested"] else f"no ({a['tested_version']})",
                     a["credentials_source"] or "none",
                     "-" if r is None else (f"ok {r['duration_s']:.1f}s" if r["ok"] else "FAILED")))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    for name, a in report["agents"].items():
        lines += [f"{name}: {a['path'] or 'not found'}"]
        lines += [f"  problem: {p}" for p in a["problems"]]
        lines += [_finding_line(f) for f in a.get("preflight") or []]
        r = a["rehearsal"]
        if r is not None and not r["ok"]:
            lines += [f"  rehearsal: {line}" for line in (r["error"] or "").splitlines()]
    lines.append("ok" if report["ok"] else "NOT ok")
    return "\n".join(lines)


def main(args: Any) -> int:
    """``orchd doctor [--config FILE] [--rehearse] [--json]``.

    Exit 0 when every agent CLI is found (and, with ``--rehearse``, every
    rehearsal succeeded), 1 otherwise, 2 for a bad config.
    """
    try:
        cfg = orchd_config.load(getattr(args, "config", None))
    except (OSError, ValueError) as exc:
        print(f"orchd doctor: bad configuration: {exc}", file=sys.stderr)
        return 2
    report: dict[str, Any] = {"agents": {}, "ok": True}
    for name in AGENTS:
        check = check_agent(name, cfg.agent(name).binary)
        rehearsal = None
        if getattr(args, "rehearse", False) and check.found:
            rehearsal = rehearse_agent(name, check.path)
        entry = msgspec.to_builtins(check)
        entry["rehearsal"] = None if rehearsal is None else msgspec.to_builtins(rehearsal)
        acfg = cfg.agent(name)
        entry["preflight"] = preflight_agent(name, check.path, acfg.profile, cfg.allow_unconfined,
                                             str(cfg.state_dir))
        report["agents"][name] = entry
        if not check.found or (getattr(args, "rehearse", False) and not (rehearsal and rehearsal.ok)):
            report["ok"] = False
    if getattr(args, "json", False):
        print(json.dumps(report))
    else:
        print(_table(report))
    return 0 if report["ok"] else 1
