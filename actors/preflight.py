"""Preflight: can this launch work, and what did the launch already fix?

Theory of operation
-------------------
Before every launch (and in ``orchd doctor``) the supervisor gathers
``Facts`` about the run it is about to start and ``check`` turns them into
``PreflightFinding``s (pure: facts in, findings out, no clock, no files):

* the CLI is present (``cli_missing``, blocking) and its version known; a
  version other than the adapter's ``tested_version`` is a warning
  (``untested_version``), an unknown one too (``version_unknown``);
* for a real (non-rehearsal) run, credentials look present
  (``no_credentials``, blocking: "log in to <agent>");
* the run's working directory (unless the profile is ``readonly``) and the
  state dir are writable (``cwd_not_writable``, ``state_not_writable``,
  blocking);
* the profile can be honoured: claude's ``workspace`` sandbox needs
  bubblewrap and socat (``sandbox_tools_missing``: blocking, or a warning
  when ``allow_unconfined`` lets the run go on unconfined); claude as root
  with ``yolo`` needs IS_SANDBOX=1 (``root_yolo``, fixed: the adapter sets
  it); gemini's folder trust (``folder_trust``, fixed: ``--skip-trust`` or
  GEMINI_CLI_TRUST_WORKSPACE=true in the launch).

A finding with ``fixed`` is already taken care of by the launch and only
recorded; a ``blocking`` one stops the launch: the assignment fails before
anything starts, with the fix a human must make (``worker.failure``,
action ``escalate``).  Everything else is a warning.

``gather`` is the thin I/O part.  It must stay cheap, since it runs on the
daemon's loop before every launch: ``which`` and ``access`` calls, and the
CLI's version, read from the npm package the binary belongs to or, failing
that, from ``<cli> --version`` once per binary path and modification time
(``version_of`` caches it).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from orchd.protocol import PreflightFinding

if TYPE_CHECKING:
    from actors.worker import WorkerSpec

CLI_AGENTS = ("claude", "codex", "gemini")
SANDBOX_TOOLS = ("bwrap", "socat")
TRUST_ENV = "GEMINI_CLI_TRUST_WORKSPACE"
VERSION_TIMEOUT_S = 10.0

PACKAGES = {"claude": "@anthropic-ai/claude-code", "codex": "@openai/codex", "gemini": "@google/gemini-cli"}
"""The npm package each pinned CLI comes from: its package.json names the version."""

LOGIN_FIX = {
    "claude": "log in to claude: set ANTHROPIC_API_KEY, or run `claude` once and /login",
    "codex": "log in to codex: set OPENAI_API_KEY, or run `codex login`",
    "gemini": "log in to gemini: set GEMINI_API_KEY, or run `gemini` once and log in with Google",
}


class Facts(msgspec.Struct, frozen=True, kw_only=True):
    """What preflight knows about one launch (gathered by ``gather``)."""

    agent: str
    binary: str | None               # the CLI's path; None when it was not found
    version: str | None = None
    version_problem: str | None = None
    tested_version: str | None = None
    rehearsal: bool = False
    credentials: str | None = None   # where credentials were found ("env NAME" or a file), never a value
    profile: str = "workspace"
    is_root: bool = False
    missing_tools: tuple[str, ...] = ()  # of SANDBOX_TOOLS, not on the run's PATH
    allow_unconfined: bool = False
    cwd: str = ""
    cwd_writable: bool = True
    state_dir: str = ""
    state_writable: bool = True
    argv: tuple[str, ...] = ()
    env: dict[str, str] = {}         # the launch's own variables (IS_SANDBOX, GEMINI_CLI_TRUST_WORKSPACE...)


def check(f: Facts) -> list[PreflightFinding]:
    """The findings for one launch (pure)."""
    out: list[PreflightFinding] = []
    cli = f.agent in CLI_AGENTS
    if cli and f.binary is None:
        out.append(PreflightFinding(
            code="cli_missing", message=f"the {f.agent} CLI was not found", blocking=True,
            fix=f"install it (scripts/install-agents.sh) or set [agents.{f.agent}] binary"))
    elif cli and f.version is None:
        out.append(PreflightFinding(code="version_unknown",
                                    message=f"the {f.agent} CLI's version is unknown: {f.version_problem or '?'}",
                                    fix="run `orchd doctor`"))
    elif cli and f.tested_version and f.version != f.tested_version:
        out.append(PreflightFinding(
            code="untested_version", message=f"{f.agent} {f.version} is not the tested {f.tested_version}: "
                                             "flags and events may differ",
            fix=f"install {f.agent} {f.tested_version} (scripts/install-agents.sh), or run `orchd doctor --rehearse`"))
    if cli and not f.rehearsal and f.credentials is None:
        out.append(PreflightFinding(code="no_credentials", message=f"no credentials found for {f.agent}",
                                    blocking=True, fix=LOGIN_FIX[f.agent]))
    if f.profile != "readonly" and not f.cwd_writable:
        out.append(PreflightFinding(code="cwd_not_writable", message=f"{f.cwd} is not writable", blocking=True,
                                    fix=f"make {f.cwd} writable for the daemon's user"))
    if not f.state_writable:
        out.append(PreflightFinding(code="state_not_writable", message=f"the state dir {f.state_dir} is not writable",
                                    blocking=True, fix=f"make {f.state_dir} writable for the daemon's user"))
    if f.agent == "claude" and f.profile == "workspace" and f.missing_tools:
        missing = " and ".join(f.missing_tools)
        if f.allow_unconfined:
            out.append(PreflightFinding(
                code="sandbox_tools_missing", message=f"{missing} not on PATH: claude runs UNCONFINED "
                                                      "(allow_unconfined = true)",
                fix="install bubblewrap and socat (e.g. apt install bubblewrap socat)"))
        else:
            out.append(PreflightFinding(
                code="sandbox_tools_missing", message=f"{missing} not on PATH: the workspace profile's sandbox "
                                                      "cannot start", blocking=True,
                fix="install bubblewrap and socat (e.g. apt install bubblewrap socat), "
                    "or set allow_unconfined = true to run without the sandbox"))
    if f.agent == "claude" and f.profile == "yolo" and f.is_root:
        if f.env.get("IS_SANDBOX") == "1":
            out.append(PreflightFinding(code="root_yolo", message="as root claude refuses skip-permissions "
                                                                  "unless IS_SANDBOX=1", fixed=True,
                                        fix="IS_SANDBOX=1 set in the launch"))
        else:
            out.append(PreflightFinding(code="root_yolo", message="as root claude refuses skip-permissions",
                                        blocking=True, fix="set IS_SANDBOX=1, or run the daemon as another user"))
    if f.agent == "gemini":
        if "--skip-trust" in f.argv:
            out.append(PreflightFinding(code="folder_trust", message="gemini runs headless only in a trusted folder",
                                        fixed=True, fix="--skip-trust in the launch"))
        elif f.env.get(TRUST_ENV) == "true":
            out.append(PreflightFinding(code="folder_trust", message="gemini runs headless only in a trusted folder",
                                        fixed=True, fix=f"{TRUST_ENV}=true in the launch"))
        else:
            out.append(PreflightFinding(code="folder_trust", message="gemini may refuse an untrusted folder",
                                        fix=f"pass --skip-trust or set {TRUST_ENV}=true"))
    return out


def blocking(findings: list[PreflightFinding]) -> PreflightFinding | None:
    """The first finding that stops the launch, or None."""
    return next((x for x in findings if x.blocking), None)


# ---------------------------------------------------------------- gathering facts (I/O)

_versions: dict[tuple[str, int], tuple[str | None, str | None]] = {}
_VERSION = re.compile(r"\d+\.\d+\.\d+[0-9A-Za-z.+-]*")


def _package_version(agent: str, binary: str) -> str | None:
    """The version in the package.json of the npm package ``binary`` belongs to."""
    want = PACKAGES.get(agent)
    if want is None:
        return None
    here = Path(os.path.realpath(binary)).parent
    for d in (here, *list(here.parents)[:3]):
        try:
            data = json.loads((d / "package.json").read_bytes())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("name") == want and isinstance(data.get("version"), str):
            return data["version"]
    return None


def _run_version(binary: str) -> tuple[str | None, str | None]:
    env = dict(os.environ, PATH=os.pathsep.join([os.path.dirname(binary), os.environ.get("PATH", os.defpath)]))
    try:
        res = subprocess.run([binary, "--version"], stdin=subprocess.DEVNULL, capture_output=True, env=env,
                             timeout=VERSION_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return None, f"`{binary} --version` did not answer within {VERSION_TIMEOUT_S:.0f} s"
    except OSError as exc:
        return None, f"cannot run {binary}: {exc}"
    m = _VERSION.search(res.stdout.decode(errors="replace"))
    if res.returncode != 0 or m is None:
        return None, f"`{binary} --version` exited {res.returncode}"
    return m.group(0), None


def version_of(agent: str, binary: str) -> tuple[str | None, str | None]:
    """(version, problem) of ``binary``, cached per path and modification time:
    an upgrade in place is noticed, an unchanged binary is never run again."""
    try:
        mtime = os.stat(os.path.realpath(binary)).st_mtime_ns
    except OSError as exc:
        return None, f"cannot stat {binary}: {exc}"
    key = (binary, mtime)
    if key not in _versions:
        found = _package_version(agent, binary)
        _versions[key] = (found, None) if found else _run_version(binary)
    return _versions[key]


def _writable(path: str) -> bool:
    """A directory that is missing is the worker's to report ("cwd does not exist"), not ours."""
    return not os.path.isdir(path) or os.access(path, os.W_OK | os.X_OK)


def gather(*, agent: str, binary: str | None, tested_version: str | None, rehearsal: bool, profile: str,
           allow_unconfined: bool, cwd: str, state_dir: str, argv: list[str], env: dict[str, str],
           launch_env: dict[str, str]) -> Facts:
    """The facts of one launch.  ``env`` is the environment the CLI will get
    (its PATH and HOME say where tools and logins are); ``launch_env`` the
    variables the launch itself sets."""
    from actors.doctor import find_credentials  # doctor imports this module

    cli = agent in CLI_AGENTS
    path = shutil.which(binary) if cli and binary else None
    version, problem = version_of(agent, path) if path else (None, None)
    credentials = None
    if cli and not rehearsal:
        home = env.get("HOME")
        credentials = find_credentials(agent, env, Path(home) if home else None)
    missing: tuple[str, ...] = ()
    if agent == "claude" and profile == "workspace":
        run_path = env.get("PATH", os.environ.get("PATH", os.defpath))
        missing = tuple(t for t in SANDBOX_TOOLS if shutil.which(t, path=run_path) is None)
    return Facts(agent=agent, binary=path, version=version, version_problem=problem, tested_version=tested_version,
                 rehearsal=rehearsal, credentials=credentials, profile=profile, is_root=os.geteuid() == 0,
                 missing_tools=missing, allow_unconfined=allow_unconfined, cwd=cwd, cwd_writable=_writable(cwd),
                 state_dir=state_dir, state_writable=_writable(state_dir), argv=tuple(argv), env=dict(launch_env))


def before_launch(spec: "WorkerSpec", rehearsal: bool) -> list[PreflightFinding]:
    """Preflight of a worker about to start: the launch its adapter will build
    (the same argv and env), the environment the worker will give it."""
    from actors.agents import get_adapter

    adapter = get_adapter(spec.agent)
    try:
        launch = adapter.build_launch(spec.run)
    except ValueError:
        return []  # a launch that cannot be built is the worker's to report, with its reason
    env = dict(os.environ if spec.base_env is None else spec.base_env)
    env.update(launch.env)
    env.update(spec.extra_env)
    return check(gather(agent=spec.agent, binary=spec.run.binary, tested_version=adapter.tested_version,
                        rehearsal=rehearsal, profile=spec.run.profile, allow_unconfined=spec.allow_unconfined,
                        cwd=launch.cwd, state_dir=spec.state_dir, argv=launch.argv, env=env,
                        launch_env={**launch.env, **spec.extra_env}))


def failure_message(f: PreflightFinding) -> str:
    """The one line a blocked launch fails with: what is wrong and what to do."""
    return f"preflight: {f.message}" + (f"; fix: {f.fix}" if f.fix else "")
