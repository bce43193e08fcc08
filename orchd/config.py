"""Daemon configuration: embedded defaults < TOML file < ``ORCHD_*`` env < flags.

Env names: ``ORCHD_<FIELD>`` for top-level fields (``ORCHD_STATE_DIR``,
``ORCHD_MAX_LINE_BYTES``...) and ``ORCHD_<SECTION>__<FIELD>`` for nested ones
(``ORCHD_LIMITS__STALL_S=30``).  Values from env are parsed by pydantic.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
import tomllib
import types
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin


def _without_pydantic_plugins() -> None:
    """Build the models below without pydantic's plugin discovery.

    pydantic asks ``pydantic.plugin._loader.get_plugins()`` for plugins each
    time it builds a validator, and that module imports ``importlib.metadata``
    (with ``email``, ``csv``, ``zipfile``...) to scan every installed
    distribution's entry points: ~1.2 MB of RSS in the daemon, for plugins
    orchd does not use.  The loader is given here as a module whose
    ``get_plugins`` says "none", what pydantic itself answers under
    ``PYDANTIC_DISABLE_PLUGINS=__all__``.  A process that loaded the real
    loader already keeps it.
    """
    name = "pydantic.plugin._loader"
    if name not in sys.modules:
        loader = types.ModuleType(name, "No pydantic plugins (see orchd.config._without_pydantic_plugins).")
        loader.get_plugins = lambda: ()  # type: ignore[attr-defined]
        sys.modules[name] = loader


_without_pydantic_plugins()

from pydantic import (  # noqa: E402 (after _without_pydantic_plugins)
    AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator,
)

from orchd import paths  # noqa: E402

# Closed sets, checked at load so a typo is refused before anything runs.  AgentName must
# match the agent adapters (actors/agents); a test keeps them equal.
AgentName = Literal["claude", "codex", "gemini", "command"]
Profile = Literal["workspace", "readonly", "yolo"]
LogLevel = Annotated[Literal["debug", "info", "warning", "error", "critical"],
                     BeforeValidator(lambda v: v.lower() if isinstance(v, str) else v)]
LogFormat = Literal["auto", "json", "console"]
EnvName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*\*?$")]
"""An environment variable's name passed through to agents; ``NAME_*`` (a trailing ``*``) is a prefix."""


def _http_listen(value: str) -> str:
    from orchd.web_auth import parse_listen
    parse_listen(value)  # raises ValueError: "... is not HOST:PORT (or 'off')"
    return value


HttpListen = Annotated[str, AfterValidator(_http_listen)]


# What orchd never commits for an assignment (gitignore-like patterns; see
# actors.worktrees.exclude_pathspecs), even when the target has no .gitignore for them:
# secrets, caches, dependencies and the agent CLIs' own state directories.
DEFAULT_COMMIT_EXCLUDE = [
    ".env", ".env.*", "*.pem", "id_rsa*", "__pycache__/", "*.pyc", "node_modules/",
    ".claude/", ".codex/", ".gemini/",
]


class ConfigError(ValueError):
    """The configuration cannot be used; the message is one line naming the key."""


class Limits(BaseModel):
    """Per-assignment and per-session limits (nothing loops forever)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    wall_time_s: float = Field(3600.0, gt=0)          # per assignment run
    stall_s: float = Field(600.0, gt=0)               # no output for this long → stop
    max_turns: int | None = Field(60, ge=1)           # passed to CLIs that support it
    max_tokens: int | None = Field(None, ge=0)        # per session, from agent.usage
    max_cost_usd: float | None = Field(None, ge=0)    # per session, from agent.usage
    max_review_rounds: int = Field(2, ge=0)           # reviews per assignment (actors/reviewing.py)
    max_relaunches: int = Field(2, ge=0)              # recovery relaunches per assignment (actors/recovery.py)
    backoff_cap_s: float = Field(60.0, ge=0)          # longest wait before a recovery relaunch


class AgentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    binary: str | None = None          # default: the agent's name on PATH
    profile: Profile = "workspace"
    model: str | None = None
    home: str | None = None            # HOME for this agent's runs; None: real runs inherit the daemon's
                                       # HOME (so logged-in CLIs find their credentials), rehearsals get
                                       # a private one per assignment under the state dir
    env_pass: list[EnvName] = []       # more of the daemon's env vars this agent's runs get (see actors/launch.py)


class ReviewConfig(BaseModel):
    """``[review]``: who reviews, when, and how long a review may take (actors/reviewing.py)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    reviewers: int | list[AgentName] | None = None  # a count, or agent names; None: every other agent CLI
    fallback_s: float = Field(900.0, gt=0)          # a review after this long with no other trigger
    deadline_s: float = Field(600.0, gt=0)          # a reviewer run's wall time
    max_tokens: int | None = Field(200_000, ge=0)   # a reviewer run's token cap
    check: list[str] | None = None                  # a command run on the snapshot; its output goes to the prompt
    check_deadline_s: float = Field(300.0, gt=0)
    diff_max_bytes: int = Field(60_000, ge=1000)    # beyond it, the prompt has the stat and the file list
    command: list[str] | None = None                # the ``command`` reviewer's argv (prompt in $ORCHD_PROMPT)


class RecoveryConfig(BaseModel):
    """``[recovery]``: how failed agent runs are relaunched, parked or escalated (actors/recovering.py)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    max_relaunches: int = Field(3, ge=0)        # relaunches per assignment within window_s ([limits] one wins when set)
    window_s: float = Field(600.0, gt=0)        # the window the relaunches are counted in
    backoff_base_s: float = Field(2.0, ge=0)    # first backoff of a transient failure; doubles per relaunch
    jitter: float = Field(0.5, ge=0, le=1)      # a backoff is drawn from [(1 - jitter) * b, b]
    quota_margin_s: float = Field(30.0, ge=0)   # a parked assignment resumes this long after the reset
    max_quota_wait_s: float = Field(21600.0, ge=0)  # a longer wait for a usage limit escalates instead


class Role(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    agent: AgentName
    role: str
    weight: float
    prompt: str = ""


def _default_roles() -> list[Role]:
    return [
        Role(name="design", agent="gemini", role="design and architecture", weight=40),
        Role(name="implement", agent="claude", role="implementation and tests", weight=40),
        Role(name="review", agent="codex", role="review and validation", weight=20),
    ]


NotifyOn = Literal["question", "escalated", "failed", "budget", "done", "quota"]
NOTIFY_ON_ALL: tuple[str, ...] = get_args(NotifyOn)


class NotifyConfig(BaseModel):
    """``[notify]``: tell a human when a session needs one or has ended (see orchd/notify.py)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    command: list[str] | None = None      # run with the notification as JSON on stdin
    webhook: str | None = None            # http(s) URL: the notification is POSTed as JSON
    on: list[NotifyOn] = Field(default_factory=lambda: list(NOTIFY_ON_ALL))
    command_on: list[NotifyOn] | None = None   # this channel's situations, instead of ``on``
    webhook_on: list[NotifyOn] | None = None
    command_timeout_s: float = Field(10.0, gt=0)       # killed (its process group) after this
    webhook_timeout_s: float = Field(5.0, gt=0)        # per attempt
    webhook_attempts: int = Field(5, ge=1, le=20)      # 5xx, 408, 429 and network errors are retried
    webhook_backoff_s: float = Field(0.5, ge=0)        # first retry after about this; doubles, with jitter
    webhook_backoff_cap_s: float = Field(30.0, ge=0)

    @field_validator("command")
    @classmethod
    def _command(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and (not v or not v[0]):
            raise ValueError("needs a program, e.g. [\"notify-send-json\"]")
        return v

    @field_validator("webhook")
    @classmethod
    def _webhook(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"https?://[^/\s]+", v):
            raise ValueError("must be an http:// or https:// URL")
        return v

    def channels(self) -> dict[str, list[str]]:
        """The configured channels and the situations each notifies about."""
        out: dict[str, list[str]] = {}
        if self.command:
            out["command"] = list(self.command_on if self.command_on is not None else self.on)
        if self.webhook:
            out["webhook"] = list(self.webhook_on if self.webhook_on is not None else self.on)
        return out


class PlacementConfig(BaseModel):
    """Where assignments run: this machine or agent hosts (``actors/placement.py``)."""

    model_config = ConfigDict(extra="forbid")
    local_slots: int | None = Field(None, ge=0)   # agents run here at once before hosts are used; None: no limit
    agents: dict[str, Literal["local", "hosts", "any"]] = {}  # per agent (or "command"); default "any"
    heartbeat_s: float = Field(1.0, gt=0, le=60)      # the host link's heartbeat interval, both ways
    host_timeout_s: float = Field(10.0, gt=0)         # a host silent this long is lost: its runs go elsewhere


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")
    state_dir: Path = Field(default_factory=paths.default_state_dir)
    runtime_dir: Path = Field(default_factory=paths.default_runtime_dir)
    control_endpoint: str | None = None   # default ipc://<runtime_dir>/control
    events_endpoint: str | None = None    # default ipc://<runtime_dir>/events
    remote_control_endpoint: str | None = None  # tcp://HOST:PORT, CURVE only (see check_remote_endpoint)
    remote_events_endpoint: str | None = None   # tcp://HOST:PORT, CURVE only; set with remote_control_endpoint
    worktree_dir: Path | None = None      # default <state_dir>/worktrees
    max_frame_bytes: int = 4 * 1024 * 1024
    max_line_bytes: int = 8 * 1024 * 1024
    stop_grace_s: float = 5.0
    pub_hwm: int = 100_000
    agent_nice: int = Field(10, ge=0, le=19)  # agents run this many nice levels below the daemon (orchd/proc.py)
    wake_coalesce_us: int = Field(1000, ge=0, le=20_000)  # shared wake-ups under load (orchd/wakeups.py); 0: off
    log_level: LogLevel = "info"
    log_format: LogFormat = "auto"
    metrics_port: int | None = None       # e.g. 9464; None: no metrics endpoint
    http_listen: HttpListen = "127.0.0.1:7878"   # the web dashboard's HTTP bridge, HOST:PORT or "off"
    allow_unconfined: bool = False        # run a "workspace" agent whose sandbox is unavailable
    fault_injection: bool = False         # testing only: accept the InjectFault control request
    agent_preference: list[AgentName] = ["claude", "codex", "gemini"]
    agent_env_pass: list[EnvName] = []    # more of the daemon's env vars every agent gets (see actors/launch.py)
    commit_exclude: list[str] = Field(default_factory=lambda: list(DEFAULT_COMMIT_EXCLUDE))  # [] keeps all
    limits: Limits = Field(default_factory=Limits)
    review: ReviewConfig = Field(default_factory=ReviewConfig)
    agents: dict[AgentName, AgentConfig] = Field(default_factory=dict)
    roles: list[Role] = Field(default_factory=_default_roles)
    notify: NotifyConfig = Field(default_factory=NotifyConfig)
    recovery: RecoveryConfig = Field(default_factory=RecoveryConfig)
    # Memory of the events PUB (see orchd/journal.py): each subscriber's queue holds at most
    # pub_queue_bytes // pub_inline_max_bytes frames (and at most pub_hwm); an event whose frame is
    # over pub_inline_max_bytes is logged but not published, so subscribers see a seq gap and Replay it.
    pub_queue_bytes: int = Field(default=64 * 1024 * 1024, ge=1024 * 1024)
    pub_inline_max_bytes: int = Field(default=8 * 1024, ge=1024)
    host_link_endpoint: str | None = None   # agent hosts connect here (tcp only with CURVE; see docs/running.md)
    placement: PlacementConfig = Field(default_factory=PlacementConfig)

    def control(self) -> str:
        return self.control_endpoint or paths.control_endpoint(self.runtime_dir)

    def events(self) -> str:
        return self.events_endpoint or paths.events_endpoint(self.runtime_dir)

    def worktrees(self) -> Path:
        return self.worktree_dir or self.state_dir / "worktrees"

    def agent(self, name: str) -> AgentConfig:
        return self.agents.get(name) or AgentConfig()


def check_endpoint(endpoint: str, runtime_dir: Path) -> None:
    """Accept only an ``ipc://`` socket file directly in the runtime dir.

    Plaintext tcp is refused everywhere, loopback included: any local user
    could connect to it.  tcp is served only with CURVE, on the separate
    ``remote_*_endpoint`` keys (``check_remote_endpoint``).
    An abstract ``ipc://@name`` socket has no file permissions, so it is
    refused too; the runtime dir's 0700 mode is what keeps other users out.
    """
    fix = f"use the default (ipc:// sockets in the 0700 runtime dir {runtime_dir})"
    if endpoint.startswith("tcp://"):
        raise ValueError(f"{endpoint}: plaintext tcp is refused (any local user could connect): {fix}; "
                         "for clients on other machines set remote_control_endpoint and remote_events_endpoint "
                         "(CURVE only, see 'orchd keys')")
    if not endpoint.startswith("ipc://"):
        raise ValueError(f"{endpoint}: unsupported endpoint: {fix}")
    path = endpoint[len("ipc://"):]
    if path.startswith("@"):
        raise ValueError(f"{endpoint}: an abstract ipc socket has no file permissions: {fix}")
    if os.path.dirname(os.path.normpath(os.path.abspath(path))) != os.path.normpath(os.path.abspath(runtime_dir)):
        raise ValueError(f"{endpoint}: an ipc socket outside the runtime dir is not protected by its 0700 mode: "
                         f"{fix}")


def check_remote_endpoint(field: str, endpoint: str) -> None:
    """A remote endpoint is ``tcp://HOST:PORT``, bound only with CURVE (``orchd keys init``; orchd/bus.py).

    Loopback is allowed (tests, an ssh tunnel): CURVE authenticates every
    client by its key, so a local user without an authorized key is refused
    like a remote one.
    """
    if not re.fullmatch(r"tcp://(\*|[A-Za-z0-9.\-]+|\[[0-9A-Fa-f:.]+\]):[0-9]{1,5}", endpoint):
        raise ValueError(f"{field} = {endpoint!r}: must be tcp://HOST:PORT (served with CURVE only)")
    if not 0 < int(endpoint.rsplit(":", 1)[1]) < 65536:
        raise ValueError(f"{field} = {endpoint!r}: the port must be 1-65535")


def _env_overrides(environ: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in environ.items():
        if not key.startswith("ORCHD_") or key == "ORCHD_AGENT_OF":
            continue
        parts = key[len("ORCHD_"):].lower().split("__")
        if parts[0] not in Config.model_fields:
            continue
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load(config_file: Path | None = None, flags: dict[str, Any] | None = None,
         environ: dict[str, str] | None = None) -> Config:
    """Build the config; raises ``ValueError`` / ``OSError`` with a clear message."""
    data: dict[str, Any] = {}
    if config_file is not None:
        with open(config_file, "rb") as fh:
            data = tomllib.load(fh)
    data = _merge(data, _env_overrides(dict(os.environ if environ is None else environ)))
    data = _merge(data, {k: v for k, v in (flags or {}).items() if v is not None})
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(one_line(exc, Config)) from None
    check_endpoint(cfg.control(), cfg.runtime_dir)
    check_endpoint(cfg.events(), cfg.runtime_dir)
    remote = {"remote_control_endpoint": cfg.remote_control_endpoint,
              "remote_events_endpoint": cfg.remote_events_endpoint}
    for field, ep in remote.items():
        if ep is not None:
            check_remote_endpoint(field, ep)
    if (cfg.remote_control_endpoint is None) != (cfg.remote_events_endpoint is None):
        raise ValueError("remote_control_endpoint and remote_events_endpoint go together (a remote orchctl "
                         "needs both, 'watch' reads the events endpoint)")
    return cfg


# ---------------------------------------------------------------- one-line errors

def one_line(exc: ValidationError, root: type[BaseModel]) -> str:
    """The first error of ``exc`` in one line naming the key, with a "did you mean" where one helps."""
    errors = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")  # a typo'd key first:
    err = errors[0]                                 # its "missing" twin is the same mistake
    loc = tuple(x for x in err["loc"] if x != "[key]")  # a dict key's error ends with "[key]"
    where = "".join(f"[{x}]" if isinstance(x, int) else f".{x}" for x in loc).lstrip(".") or root.__name__
    if err["type"] == "extra_forbidden":
        parent = _model_at(root, loc[:-1])
        valid = tuple(parent.model_fields) if parent else ()
        text = f"unknown key {where!r} ({_did_you_mean(loc[-1], valid)}valid: {', '.join(valid)})"
    elif err["type"] == "literal_error":
        valid = tuple(re.findall(r"'([^']*)'", err.get("ctx", {}).get("expected", "")))
        what = "unknown agent" if err["loc"][-1] == "[key]" or valid == get_args(AgentName) else "invalid value"
        text = f"{where}: {what} {_short(err['input'])!r} ({_did_you_mean(err['input'], valid)}valid: {', '.join(valid)})"
    elif err["type"] == "missing":
        text = f"{where}: required, but missing"
    else:
        text = f"{where}: {err['msg']}, got {_short(err['input'])!r}"
    return text + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else "")


def _did_you_mean(value: Any, valid: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(value, valid, n=1) if isinstance(value, str) else []
    return f"did you mean {close[0]!r}?; " if close else ""


def _short(value: Any) -> Any:
    return value[:100] if isinstance(value, str) else value


def _model_at(root: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model whose keys sit at ``loc`` (``("agents", "claude")`` → ``AgentConfig``), if any."""
    tp: Any = root
    for part in loc:
        if get_origin(tp) is None and isinstance(tp, type) and issubclass(tp, BaseModel):
            field = tp.model_fields.get(str(part))
            if field is None:
                return None
            tp = field.annotation
        else:  # list[X] → X, dict[K, X] → X, X | None → X
            args = [a for a in get_args(tp) if a is not type(None)]
            tp = args[-1] if args else None
    while get_origin(tp) is not None and not (isinstance(tp, type) and issubclass(tp, BaseModel)):
        args = [a for a in get_args(tp) if a is not type(None)]  # an optional model: X | None → X
        tp = args[0] if len(args) == 1 else None
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None
