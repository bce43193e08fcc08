"""Every wire type of orchd, in one module.

Theory of operation
-------------------
Three closed unions travel on the daemon's sockets:

* control requests (``ControlRequest``), sent by a client's DEALER to the
  daemon's control ROUTER inside a ``Request`` envelope;
* control replies (``ControlReply``), sent back inside a ``Reply`` envelope;
  a request that cannot be served gets ``Error{code, detail}``;
* events (``Event``), published one frame each on the events PUB socket.

Events are split in two on purpose.  The *body* (this module's ``Event``
union: ``kind`` plus the kind's fields) is what an adapter or an actor
produces.  The *stamp* (``seq``, ``ts``, ``session``, ``worker``, ``agent``,
``gen``) is added on the way to the log: the producing actor writes the
``ts``/``session``/``worker``/``agent``/``gen`` part, the journal writes
``seq``.  On the wire both are one flat JSON object::

    {"seq":7,"ts":1764067200.123,"session":"s-1a2b","worker":"impl",
     "agent":"claude","gen":0,"kind":"agent.text","text":"hello"}

and the PUB frame is ``<session> <kind> <json>`` so subscribers can filter
by session (prefix ``b"s-1a2b "``) with any ZeroMQ binding.  Daemon-wide
events use ``-`` as the session topic.

Schema evolution follows msgspec's rules: new fields get defaults, no field
is ever retyped or renamed.  The protocol version lives in ``VERSION``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

import msgspec

VERSION = 1
"""Protocol version carried in every control envelope."""

SessionState = Literal["queued", "running", "paused", "done", "failed", "stopped", "escalated"]
WorkerState = Literal["pending", "running", "paused", "done", "failed", "stopped"]
RunKind = Literal["assignment", "planner", "reviewer"]
Seq = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
"""A log sequence number: SQLite's INTEGER range, so no request can overflow it."""


class Wire(msgspec.Struct, frozen=True, kw_only=True):
    """Base of every wire type: frozen, keyword-only."""


# ---------------------------------------------------------------- errors

class ErrorCode:
    """Small, stable error codes carried by ``Error.code``.

    Scripts may match on these strings; never rename one.
    """

    BAD_FRAMES = "bad_frames"      # wrong number of frames / empty multipart
    TOO_LARGE = "too_large"        # a frame over the configured size limit
    BAD_JSON = "bad_json"          # not JSON / truncated / not UTF-8
    BAD_VERSION = "bad_version"    # envelope ``v`` is not ``VERSION``
    UNKNOWN_KIND = "unknown_kind"  # body ``kind`` names no request
    INVALID = "invalid"            # missing or mistyped fields
    NOT_FOUND = "not_found"        # no such session / worker
    BAD_STATE = "bad_state"        # the request does not apply in this state
    BAD_REQUEST = "bad_request"    # well-formed but refused (bad plan, bad target)
    INTERNAL = "internal"          # our bug; logged with a traceback


# ---------------------------------------------------------------- control requests

class Req(Wire, tag_field="kind"):
    """Base of control requests (client DEALER → daemon ROUTER)."""


class Ping(Req, tag="ping"):
    """Liveness probe. Reply: ``Pong``."""


class Submit(Req, tag="submit"):
    """Create a session.  ``orchctl submit [TASK] --target DIR [--plan FILE]``.

    ``plan`` is the plan file's content (``{"assignments": [...]}``), already
    parsed by the client; when absent the daemon builds the default plan from
    ``task`` and ``agents``.  ``rehearse`` runs the real agent CLIs against the
    built-in scripted model server; ``scenario`` is the scenario file's
    content (``None`` means the default scenario).  Reply: ``SubmitReply``.
    """

    target: str
    task: str = ""
    agents: list[str] | None = None
    plan: dict[str, Any] | None = None
    rehearse: bool = False
    scenario: dict[str, Any] | None = None
    limits: dict[str, Any] | None = None
    planner: str | None = None  # ask this agent for the plan (JSON), default plan as fallback


class Status(Req, tag="status"):
    """``orchctl status [SESSION]``.  Reply: ``StatusReply``."""

    session: str | None = None


class Pause(Req, tag="pause"):
    """``orchctl pause SESSION``: SIGSTOP every running worker.  Reply: ``Ok``."""

    session: str


class Resume(Req, tag="resume"):
    """``orchctl resume SESSION``: SIGCONT every paused worker.  Reply: ``Ok``."""

    session: str


class Stop(Req, tag="stop"):
    """``orchctl stop SESSION``: stop every worker (TERM, grace, KILL).  Reply: ``Ok``."""

    session: str


class Review(Req, tag="review"):
    """``orchctl review SESSION [--worker NAME]``: ask for a review now (of every running
    assignment, or of ``worker``).  Reply: ``Ok``."""

    session: str
    worker: str | None = None


class Answer(Req, tag="answer"):
    """``orchctl answer SESSION TEXT``: answer a paused session's question.  Reply: ``Ok``."""

    session: str
    text: str


class Reviews(Req, tag="reviews"):
    """``orchctl reviews SESSION``: the session's reviews, verdicts and decisions.  Reply: ``ReviewsReply``."""

    session: str


class Clean(Req, tag="clean"):
    """``orchctl clean SESSION``: commit what a finished session's clones hold, then remove them.  Reply: ``Ok``."""

    session: str


class Replay(Req, tag="replay"):
    """Events with ``seq > since`` from the log (Clone pattern snapshot).

    At most ``limit`` events; ``more`` in the reply says whether to ask again.
    Reply: ``ReplayReply``.
    """

    since: Seq = 0
    session: str | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 5000


class Sync(Req, tag="sync"):
    """Ask the daemon to publish ``~sync <token>`` on the events socket.

    A subscriber that receives it knows its subscription is active, so a
    replay asked for afterwards leaves no gap before the live events.
    Reply: ``Ok``.
    """

    token: str


class InjectFault(Req, tag="inject_fault"):
    """Testing only: make ``actor`` (``journal`` | ``supervisor`` | ``recovery``) raise, as a bug would.

    Refused with ``bad_state`` unless the daemon runs with ``fault_injection = true``.
    Reply: ``Ok``.
    """

    actor: Literal["journal", "supervisor", "recovery"]
    fault: Literal["crash", "wedge"] = "crash"
    """``crash``: raise; ``wedge``: stop handling messages (the loop goes on), as a deadlock would."""


class Hosts(Req, tag="hosts"):
    """``orchctl hosts`` → supervisor: the agent hosts connected now (``HostsReply``)."""


class Recoveries(Req, tag="recoveries"):
    """Every failure the recovery actor detected in ``session`` and what it did. Reply: ``RecoveriesReply``."""

    session: str


ControlRequest = Union[
    Ping, Submit, Status, Pause, Resume, Stop, Review, Answer, Clean, Replay, Sync, InjectFault, Reviews,
    Recoveries, Hosts,
]


class Request(Wire):
    """Envelope of a control request: ``{"v": 1, "id": "...", "body": {...}}``."""

    v: int
    id: str
    body: ControlRequest


# ---------------------------------------------------------------- control replies

class Rep(Wire, tag_field="kind"):
    """Base of control replies (daemon ROUTER → client DEALER)."""


class Error(Rep, tag="error"):
    """A request that could not be served; ``code`` is one of ``ErrorCode``."""

    code: str
    detail: str


class Ok(Rep, tag="ok"):
    """A command was accepted."""

    detail: str = ""


class Pong(Rep, tag="pong"):
    version: int
    pid: int
    last_seq: int
    log_error: str | None = None  # set while the event log cannot be written (nothing new is launched)


class SubmitReply(Rep, tag="submitted"):
    session: str
    assignments: list[str] = []
    warnings: list[str] = []  # e.g. the target has uncommitted changes the agents will not see


class WorkerInfo(Wire):
    """One worker as ``orchctl status --json`` shows it."""

    name: str
    agent: str
    state: WorkerState
    exit_code: int | None = None
    signal: int | None = None
    role: str = ""
    weight: float = 0.0
    after: list[str] = []
    gen: int = 0
    pid: int | None = None
    reason: str | None = None
    milestones: int = 0
    progress: float = 0.0
    branch: str | None = None
    worktree: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float | None = None
    started_at: float | None = None  # unix seconds: its first launch (worker.launching ts)
    ended_at: float | None = None    # unix seconds: its last run exited, once it is done, failed or stopped
    review_round: int = 0               # reviews of this assignment so far
    last_decision: str | None = None    # the last review decision about it
    host: str | None = None             # the agent host its latest run was placed on (None: this machine)


class SessionInfo(Wire):
    """One session as ``orchctl status --json`` shows it."""

    id: str
    state: SessionState
    task: str = ""
    target: str = ""
    reason: str | None = None
    created_ts: float = 0.0
    progress: float = 0.0
    branch: str | None = None
    workers: list[WorkerInfo] = []
    rehearse: bool = False           # a rehearsal: the scripted model server, no tokens spent, cost not billed
    started_at: float | None = None  # unix seconds: it started running
    ended_at: float | None = None    # unix seconds: it ended (done, failed, stopped, escalated)
    input_tokens: int = 0            # over all its workers
    output_tokens: int = 0
    cost_usd: float | None = None    # None when no agent reported a cost
    waiting_for: str | None = None  # "answer": paused until ``orchctl answer``; "quota": parked until a reset
    question: str | None = None     # what the human is asked
    quota_reset_at: float | None = None  # unix seconds: the usage limit a parked assignment waits for resets
    quota_resume_at: float | None = None  # unix seconds: the parked assignment resumes (reset + margin)


class StatusReply(Rep, tag="status"):
    sessions: list[SessionInfo]
    log_error: str | None = None  # set while the event log cannot be written


class ReplayReply(Rep, tag="replay"):
    events: list[msgspec.Raw]
    last_seq: int
    more: bool = False


class Finding(Wire):
    """One finding of a reviewer (untrusted text: shown escaped, never executed)."""

    severity: Literal["blocker", "concern", "nit"]
    file: str | None = None
    line: int | None = None
    evidence: str = ""
    confidence: float = 1.0


class VerdictInfo(Wire):
    reviewer: str
    agent: str
    verdict: str
    summary: str = ""
    findings: list[Finding] = []
    mismatch: str | None = None
    reason: str | None = None  # why an answer was counted as concern (invalid, timeout, exit code)


class ReviewInfo(Wire):
    """One review as ``orchctl reviews --json`` shows it."""

    id: str
    assignment: str
    round: int
    triggers: list[str]
    commit: str | None = None
    reviewers: list[str] = []
    verdicts: list[VerdictInfo] = []
    decision: str | None = None
    reason: str | None = None


class ReviewsReply(Rep, tag="reviews"):
    reviews: list[ReviewInfo]


class HostInfo(Wire):
    """One connected agent host: its slots, the runs placed on it, its CLIs (name → version)."""

    name: str
    slots: int
    busy: int
    clis: dict[str, str] = {}
    last_heartbeat_s: float = 0.0   # seconds since the supervisor last heard from it
    running: list[str] = []         # ``<session>/<assignment>/<gen>``


class HostsReply(Rep, tag="hosts"):
    hosts: list[HostInfo] = []
    link: str | None = None         # the host-link endpoint (None: agent hosts are off)


class RecoveryInfo(Wire):
    """One failure of one run and what was done about it (``orchctl recoveries``)."""

    worker: str
    gen: int
    code: str
    message: str = ""
    ts: float = 0.0             # unix seconds: detected
    action: str | None = None   # relaunch | park | resume_after_quota | escalate | fail (None: not decided yet)
    delay_s: float = 0.0
    attempt: int = 0
    until: float | None = None
    reset_at: float | None = None
    reason: str = ""
    takeover: str | None = None


class RecoveriesReply(Rep, tag="recoveries"):
    recoveries: list[RecoveryInfo]


ControlReply = Union[Error, Ok, Pong, SubmitReply, StatusReply, ReplayReply, ReviewsReply, HostsReply,
                     RecoveriesReply]


class Reply(Wire):
    """Envelope of a control reply; ``id`` echoes the request's (or ``""``)."""

    v: int
    id: str
    body: ControlReply


# ---------------------------------------------------------------- events

class Ev(Wire, tag_field="kind"):
    """Base of event bodies.  The stamp (seq, ts, session...) is added on the way out."""


class Stamp(Wire):
    """The part of a published event that is not its body."""

    seq: int
    ts: float
    session: str | None = None
    worker: str | None = None
    agent: str | None = None
    gen: int = 0
    prev: int = 0
    """The ``seq`` of the previous event of the same session, 0 when the journal
    does not know it (the first since the daemon started).  A subscriber that
    filters by session finds a gap where ``prev`` is above the last seq it saw."""


# --- normalized agent events (field names are a contract, see DESIGN.md)

class AgentSession(Ev, tag="agent.session"):
    agent_session_id: str
    model: str | None = None


class AgentText(Ev, tag="agent.text"):
    """A whole assistant message (deltas joined)."""

    text: str


class AgentToolCall(Ev, tag="agent.tool_call"):
    call_id: str
    tool: str
    input: Any = None


class AgentToolResult(Ev, tag="agent.tool_result"):
    call_id: str
    ok: bool
    output: Any = None


class AgentUsage(Ev, tag="agent.usage"):
    """Totals so far for this run; ``cost_usd`` is null when the CLI reports none."""

    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float | None = None


class AgentError(Ev, tag="agent.error"):
    message: str
    fatal: bool = False


class AgentResult(Ev, tag="agent.result"):
    """The run's last event: did the agent succeed, and its final answer."""

    ok: bool
    text: str = ""


class AgentUnknown(Ev, tag="agent.unknown"):
    """A line the adapter does not know (or could not parse); never a crash."""

    raw: str


class AgentOutput(Ev, tag="agent.output"):
    """A ``command`` agent's JSON line that is not a normalized agent event."""

    data: Any = None


AGENT_EVENT_TYPES = (
    AgentSession, AgentText, AgentToolCall, AgentToolResult, AgentUsage,
    AgentError, AgentResult, AgentUnknown, AgentOutput,
)
AgentEvent = Union[
    AgentSession, AgentText, AgentToolCall, AgentToolResult, AgentUsage,
    AgentError, AgentResult, AgentUnknown, AgentOutput,
]


# --- worker events (emitted by a worker actor)

class WorkerStarted(Ev, tag="worker.started"):
    pid: int
    argv: list[str]
    cwd: str
    agent_version: str | None = None
    resumed_from: str | None = None  # agent session id when relaunched with resume
    confined: bool | None = None     # None: the profile does not claim confinement


class WorkerExited(Ev, tag="worker.exited"):
    """The agent process ended.  ``state`` is the worker's final state."""

    state: Literal["done", "failed", "stopped"]
    exit_code: int | None = None
    signal: int | None = None
    reason: str | None = None


class WorkerStateChanged(Ev, tag="worker.state"):
    """pending | running | paused (pause/resume and relaunch transitions)."""

    state: WorkerState
    reason: str | None = None


class WorkerLog(Ev, tag="worker.log"):
    """One line the agent wrote on stderr."""

    line: str
    stream: str = "stderr"


class WorkerBadLine(Ev, tag="worker.bad_line"):
    """A stdout/stderr line that could not be taken as it was.

    ``problem`` is ``too_long`` (over the line limit; the line was skipped),
    ``invalid_utf8`` (decoded with replacement), ``nul`` (NUL bytes removed)
    or ``partial`` (the stream ended without a newline).
    """

    problem: str
    stream: str = "stdout"
    size: int = 0
    preview: str = ""


class WorkerMilestone(Ev, tag="worker.milestone"):
    text: str


class WorkerBlocker(Ev, tag="worker.blocker"):
    text: str


class WorkerReviewRequest(Ev, tag="worker.review_request"):
    text: str


class WorkerDone(Ev, tag="worker.done"):
    text: str


class WorkerQuestion(Ev, tag="worker.question"):
    """The agent asked the human (a ``QUESTION:`` marker): the session pauses for an answer."""

    text: str


class WorkerLimit(Ev, tag="worker.limit"):
    """A limit was reached; the worker is being stopped because of it."""

    limit: str  # wall_time | stall | max_turns | tokens | cost | review_rounds
    detail: str = ""


class Fix(Wire):
    """What a relaunch changes to fix a recognised failure.

    ``env``: variables to set; ``flag``: a flag to add; ``backoff_s``: wait
    this long first; ``fresh``: start a new agent session instead of resuming;
    ``fallback``: when not empty, relaunch with the adapter's fallback launch
    (``RunSpec.fallback``), which leaves out these optional flags (a flag the
    CLI refused); ``note``: what a human should know (an untested CLI version).
    """

    env: dict[str, str] = {}
    flag: str | None = None
    backoff_s: float = 0.0
    fresh: bool = False
    fallback: list[str] = []
    note: str | None = None

    @classmethod
    def from_legacy(cls, d: dict[str, str]) -> "Fix":
        try:
            backoff = float(d.get("backoff_s", 0) or 0)
        except ValueError:
            backoff = 0.0
        if backoff != backoff or backoff < 0:  # NaN or negative
            backoff = 0.0
        return cls(env={k[4:]: v for k, v in d.items() if k.startswith("env.")}, flag=d.get("flag"),
                   backoff_s=backoff, fresh=d.get("resume_id") == "",
                   fallback=[f for f in d.get("fallback", "").split(",") if f], note=d.get("note"))


class WorkerFailure(Ev, tag="worker.failure"):
    """An agent failure recognised from the error catalogue (see actors.agents)."""

    code: str
    message: str
    action: str = "escalate"  # relaunch | escalate
    fix: dict[str, str] | None = None  # legacy (logs before ``remedy``): env.NAME / backoff_s / resume_id
    remedy: Fix | None = None
    source: str = ""  # the line the message was read from: "stderr: <raw line>", "agent error: ...", "exit code N"

    def the_fix(self) -> Fix | None:
        """The typed fix, also for events logged before ``remedy`` existed."""
        if self.remedy is not None:
            return self.remedy
        return Fix.from_legacy(self.fix) if self.fix else None


class PreflightFinding(Wire):
    """One thing preflight found about a launch (see actors.preflight).

    ``fixed``: the launch already carries the fix (``fix`` says what it did);
    otherwise ``fix`` is what a human must do.  ``blocking``: the run cannot
    work, so it is not started; a non-blocking finding is a warning."""

    code: str
    message: str
    fixed: bool = False
    fix: str | None = None
    blocking: bool = False


class WorkerPreflight(Ev, tag="worker.preflight"):
    """What preflight found before launching generation ``gen`` (emitted by the
    supervisor, only when it found something).  A blocking finding is followed
    by a ``worker.failure`` (action escalate) and the run is never started."""

    findings: list[PreflightFinding]


# --- session events (emitted by the supervisor)

class AssignmentSpec(Wire):
    """One assignment of a plan (the plan file's format, with defaults filled)."""

    name: str
    agent: str
    role: str = ""
    prompt: str = ""
    weight: float = 1.0
    after: list[str] = []
    argv: list[str] | None = None
    env: dict[str, str] | None = None
    profile: str | None = None
    run_kind: RunKind = "assignment"
    rerun: bool = False  # a ``command`` program may be started again from scratch after a daemon restart
    retry: bool = False  # a ``command`` program is idempotent: the recovery actor may relaunch it after a failure


class SessionSubmitted(Ev, tag="session.submitted"):
    task: str
    target: str
    assignments: list[AssignmentSpec]
    rehearse: bool = False
    scenario: dict[str, Any] | None = None
    limits: dict[str, Any] = {}
    base_commit: str | None = None
    planner: str | None = None  # when set, ``assignments`` holds only the planning run


class SessionPlanned(Ev, tag="session.planned"):
    """The session's assignments, decided by the planner agent or the default plan."""

    assignments: list[AssignmentSpec]
    source: str  # planner | default
    note: str | None = None


class SessionStateChanged(Ev, tag="session.state"):
    state: SessionState
    reason: str | None = None


class SessionStopRequested(Ev, tag="session.stop_requested"):
    """A stop was asked for (by the user, a budget...); logged before the workers are told,
    so a restarted daemon finishes the stop instead of relaunching.  The session ends
    ``end_state`` once no worker runs."""

    reason: str
    end_state: Literal["stopped", "failed", "escalated"] = "stopped"


class SessionMerged(Ev, tag="session.merged"):
    """The session's assignments were merged into ``branch`` at ``commit``."""

    branch: str
    commit: str


class SessionNote(Ev, tag="session.note"):
    """Something the user should know (an agent replaced, a merge result...)."""

    message: str
    data: dict[str, Any] | None = None


class SessionWarning(Ev, tag="session.warning"):
    """Something about the submitted work the user should check (e.g. a dirty target).

    ``files`` names at most a few paths (``git status --porcelain`` style,
    ``"M README"``, ``"?? scratch/"``); ``more`` counts the rest."""

    message: str
    files: list[str] = []
    more: int = 0


class WorkerCommitted(Ev, tag="worker.committed"):
    """orchd committed what the assignment left in its clone: ``commit`` on ``branch``.

    ``made`` is False when nothing was left to commit (``commit`` is then the
    branch's head as the agent left it).  ``left_out`` names the paths the
    commit excluded (config ``commit_exclude``; an untracked directory as
    ``dir/``), at most 50; ``left_out_more`` counts the rest."""

    branch: str
    commit: str
    made: bool = True
    left_out: list[str] = []
    left_out_more: int = 0


class WorkerLaunching(Ev, tag="worker.launching"):
    """The supervisor decided to (re)launch an assignment under generation ``gen``."""

    resume: bool = False
    worktree: str | None = None
    branch: str | None = None
    reason: str | None = None   # why a relaunch (a recovered failure, a daemon restart)
    delay_s: float = 0.0        # the worker waits this long before starting the agent (backoff)
    host: str | None = None     # the agent host it runs on (None: on the supervisor's machine)


# --- review events (emitted by the review actor, but ``review.run`` and the session's question/answer)

class ReviewRequested(Ev, tag="review.requested"):
    """A review of ``assignment`` (generation ``gen``) at snapshot ``commit`` starts."""

    review_id: str
    assignment: str
    round: int
    triggers: list[str]
    commit: str | None = None
    reviewers: list[str] = []  # agent names
    gen: int = 0


class ReviewRun(Ev, tag="review.run"):
    """Supervisor: a reviewer run of ``review_id`` (the run is a worker named ``spec.name``)."""

    review_id: str
    spec: AssignmentSpec
    cwd: str
    attempt: int = 1


class ReviewVerdict(Ev, tag="review.verdict"):
    """One reviewer's verdict; the reviewer's agent is the event's ``agent`` (its stamp)."""

    review_id: str
    reviewer: str
    verdict: Literal["approve", "concern", "blocker"]
    summary: str = ""
    findings: list[Finding] = []
    mismatch: str | None = None
    reason: str | None = None


class DecisionMade(Ev, tag="decision.made"):
    review_id: str
    decision: Literal["continue", "log_warning", "pause_and_clarify", "stop_and_escalate"]
    verdicts: list[str] = []
    reason: str = ""
    assignment: str = ""
    round: int = 0


class ReviewWarning(Ev, tag="review.warning"):
    """``log_warning``: the concern, handed to the author's next prompt and its dependents'."""

    review_id: str
    assignment: str
    concerns: list[str] = []


class ReviewSkipped(Ev, tag="review.skipped"):
    """No review for these triggers (already reviewed, rounds used up); ``escalate``: it did not converge."""

    assignment: str
    reason: str
    triggers: list[str] = []
    end: bool = False       # the assignment's end was among the triggers: its dependents may start
    escalate: bool = False
    gen: int = 0


class SessionQuestion(Ev, tag="session.question"):
    """The session waits for ``orchctl answer`` (a review's concerns, or an agent's question)."""

    question: str
    worker: str | None = None
    source: str = "review"  # review | agent
    review_id: str | None = None


class SessionAnswered(Ev, tag="session.answered"):
    text: str
    question: str = ""
    worker: str | None = None


# --- recovery events (emitted by the recovery actor, actors/recovery.py; stamped with the failed run's gen)

class RecoveryDetected(Ev, tag="recovery.detected"):
    """A failed assignment run, as the recovery actor read it."""

    code: str               # the catalogue's code (worker.failure), "stalled", or "failed" when unrecognised
    message: str = ""       # the matched message
    source: str = ""        # the line it came from (the agent's last error line, or the exit reason)
    catalogue_action: str = ""  # what the catalogue proposed (relaunch | escalate | park)


class RecoveryAction(Ev, tag="recovery.action"):
    """What the recovery actor does about a failed run (the supervisor carries relaunches out).

    ``action``: relaunch (after ``delay_s``) | park (until ``until``: a usage limit resets at
    ``reset_at``) | resume_after_quota | escalate (the session escalates) | fail (the assignment stays
    failed).  ``takeover``: how a human carries on by hand once the run is stopped for good.
    """

    action: str
    code: str = ""
    reason: str = ""
    delay_s: float = 0.0
    attempt: int = 0          # relaunches of this assignment in the window, this one included
    until: float | None = None    # unix seconds: the relaunch is due
    reset_at: float | None = None  # unix seconds: the usage limit resets
    resume: bool = False      # relaunch in the agent's own session
    env: dict[str, str] = {}  # the fix's environment
    fix: Fix | None = None
    summary: str | None = None    # a fresh start: what the earlier run did
    takeover: str | None = None


# --- daemon events

class DaemonStarted(Ev, tag="daemon.started"):
    pid: int
    version: str
    last_seq: int = 0


class DaemonStopping(Ev, tag="daemon.stopping"):
    reason: str = ""



# --- notification events (emitted by the notifier, actors/notifier.py)

class NotifySent(Ev, tag="notify.sent"):
    """A notification (``orchd.notify``) reached ``channel`` (command | webhook)."""

    channel: str
    key: str        # the dedupe key: the same for retries and repeats of one situation
    situation: str  # the notification's kind (``kind`` is the event's own tag): question | escalated |
                    # failed | budget | done | resolved
    attempts: int = 1


class NotifyFailed(Ev, tag="notify.failed"):
    """A notification could not be delivered on ``channel`` (after its last attempt)."""

    channel: str
    key: str
    situation: str
    error: str
    attempts: int = 1


class DaemonReloaded(Ev, tag="daemon.reloaded"):
    """SIGHUP re-read the config file: ``applied`` names the settings now in force,
    ``needs_restart`` the changed ones that take effect only after a restart."""

    applied: list[str] = []
    needs_restart: list[str] = []


class DaemonReloadFailed(Ev, tag="daemon.reload_failed"):
    """SIGHUP found a config file that cannot be used; the old config stays in force."""

    error: str


Event = Union[
    AgentSession, AgentText, AgentToolCall, AgentToolResult, AgentUsage,
    AgentError, AgentResult, AgentUnknown, AgentOutput,
    WorkerStarted, WorkerExited, WorkerStateChanged, WorkerLog, WorkerBadLine,
    WorkerMilestone, WorkerBlocker, WorkerReviewRequest, WorkerDone,
    WorkerLimit, WorkerFailure, WorkerLaunching, WorkerCommitted, WorkerPreflight,
    SessionSubmitted, SessionPlanned, SessionStateChanged, SessionNote,
    SessionStopRequested, SessionMerged, SessionWarning,
    DaemonStarted, DaemonStopping, DaemonReloaded, DaemonReloadFailed,
    WorkerQuestion, ReviewRequested, ReviewRun, ReviewVerdict, DecisionMade, ReviewWarning, ReviewSkipped,
    NotifySent, NotifyFailed, SessionQuestion, SessionAnswered,
    RecoveryDetected, RecoveryAction,
]

SESSION_TERMINAL = frozenset({"done", "failed", "stopped", "escalated"})
WORKER_TERMINAL = frozenset({"done", "failed", "stopped"})


# ---------------------------------------------------------------- actor inboxes
# Internal messages between actors, msgpack-encoded on inproc sockets (any
# endpoint would do: no actor assumes it shares memory with another).

class Msg(Wire, tag_field="kind"):
    """Base of actor inbox messages."""


class Append(Msg, tag="append"):
    """Any actor → journal: events to sequence, log and publish.

    Each frame is ``wire.pending_frame(...)``: ``<topic> <kind> <json minus "{seq">``.
    """

    frames: list[bytes]
    read_at: Annotated[float, msgspec.Meta(ge=0.0, le=1e15)] = 0.0
    """Monotonic time the worker read the agent output these events come from (0: not
    from agent output); the journal observes ``orchd_event_pipeline_seconds`` from it."""


class PublishSync(Msg, tag="publish_sync"):
    """Supervisor → journal: publish ``~sync <token>`` after every event before it."""

    token: str


class Barrier(Msg, tag="barrier"):
    """Supervisor → journal: answer ``BarrierReached`` once everything sent before is logged.

    A restarted supervisor sends it on the same PUSH socket as its events,
    so when the answer comes the log holds every event its predecessor sent.
    """

    token: str
    reply_to: str  # the mailbox endpoint to answer


class Crash(Msg, tag="crash"):
    """Testing only (``InjectFault``): the receiving actor raises, as a bug would."""


class Wedge(Msg, tag="wedge"):
    """Testing only (``InjectFault(fault="wedge")``): the journal stops taking messages, as a deadlock would."""


JournalInbox = Union[Append, PublishSync, Barrier, Crash, Wedge]


class Committed(Msg, tag="committed"):
    """Journal → supervisor: logged events it follows (full JSON, with seq)."""

    events: list[bytes]


class WorkerEnded(Msg, tag="worker_ended"):
    """A worker actor's task ended for good (``crashed``: by a bug, not the agent)."""

    session: str
    worker: str
    gen: int
    crashed: bool


class LogHealth(Msg, tag="log_health"):
    """Journal → supervisor: the event log cannot be written (``error``), or can again (None).

    While it cannot, the journal retries with backoff and keeps every event
    in order; the supervisor launches nothing new and ``status`` says why.
    """

    error: str | None = None


class BarrierReached(Msg, tag="barrier_reached"):
    """Journal → supervisor: everything sent before ``Barrier(token)`` is logged."""

    token: str
    last_seq: int = 0


class CommitMade(Wire):
    """A workspace job committed an assignment's clone (see ``WorkerCommitted``)."""

    worker: str
    branch: str
    commit: str
    made: bool
    left_out: list[str] = []
    left_out_more: int = 0


class WorktreeReady(Msg, tag="worktree_ready"):
    """Workspace → supervisor: the worktree for generation ``gen`` of ``worker`` (or why not)."""

    session: str
    worker: str
    gen: int
    cwd: str | None = None
    branch: str | None = None
    error: str | None = None
    commits: list[CommitMade] = []  # the assignments it waited for, committed first
    changed: list[str] = []  # asked for (a fresh start's summary): what earlier runs changed since the base


class MergeFinished(Msg, tag="merge_finished"):
    """Workspace → supervisor: the session's branches merged (``ok``), or the conflicts/error."""

    session: str
    ok: bool
    branch: str | None = None
    commit: str | None = None
    conflicts: list[str] = []
    error: str | None = None
    commits: list[CommitMade] = []


class CleanFinished(Msg, tag="clean_finished"):
    """Workspace → supervisor: a ``clean`` request's worktrees are removed; ``call`` is the request to answer."""

    session: str
    call: str
    removed: int = 0
    error: str | None = None
    commits: list[CommitMade] = []  # what stopped or failed assignments had left uncommitted
    kept: list[str] = []            # clones not removed: "<path>: <why their work could not be committed>"


class TargetChecked(Msg, tag="target_checked"):
    """Workspace → supervisor: a submitted target's HEAD (or why it cannot be used)."""

    call: str
    base_commit: str | None = None
    error: str | None = None
    dirty: list[str] = []  # uncommitted changes in the target (porcelain lines), at most DIRTY_MAX
    dirty_more: int = 0


class LaunchReviewer(Msg, tag="launch_reviewer"):
    """Review actor → supervisor: run ``agent`` read-only in ``cwd`` (a snapshot checkout) with ``prompt``."""

    session: str
    review_id: str
    name: str
    agent: str
    prompt: str
    cwd: str
    attempt: int = 1


class ReviewNow(Msg, tag="review_now"):
    """Supervisor → review actor: ``orchctl review`` (every running assignment, or ``worker``)."""

    session: str
    worker: str | None = None


class SnapshotReady(Msg, tag="snapshot_ready"):
    """Workspace → review actor: the author's files as ``commit``, checked out read-only at ``checkout``."""

    session: str
    review_id: str
    commit: str | None = None
    checkout: str | None = None
    diff: str = ""
    check_output: str | None = None
    error: str | None = None


class ReviewTick(Msg, tag="review_tick"):
    """The review actor to itself: a timer (fallback reviews) is due."""


ReviewInbox = Union[Committed, LogHealth, ReviewNow, SnapshotReady, ReviewTick, Crash]


class RecoveryTick(Msg, tag="recovery_tick"):
    """The recovery actor to itself: a timer (a quota wait) is due."""


RecoveryInbox = Union[Committed, LogHealth, RecoveryTick, Crash, BarrierReached]


class Probe(Msg, tag="probe"):
    """Daemon → supervisor: a liveness ping (the watchdog); answer ``ProbeAnswer`` to ``reply_to``."""

    token: str
    reply_to: str


class ProbeAnswer(Msg, tag="probe_answer"):
    """Supervisor → daemon: alive, and a summary of its sessions (for ``STATUS=`` and gauges).

    ``workers`` is keyed ``"<agent>/<state>"``; ``waiting`` counts sessions waiting for an answer.
    """

    token: str
    sessions: dict[str, int] = {}
    workers: dict[str, int] = {}
    waiting: int = 0


class HostLost(Msg, tag="host_lost"):
    """A remote worker's stand-in → supervisor: the agent host running generation ``gen`` went
    silent past the timeout (or refused it); the assignment is to be relaunched elsewhere."""

    session: str
    worker: str
    gen: int
    host: str
    reason: str


SupervisorInbox = Union[Committed, WorkerEnded, LogHealth, BarrierReached, WorktreeReady, MergeFinished,
                        CleanFinished, TargetChecked, Crash, LaunchReviewer, Probe, HostLost]

DaemonInbox = Union[BarrierReached, ProbeAnswer]
"""What the daemon's own mailbox gets: answers to its liveness pings."""


class StopWorker(Msg, tag="stop_worker"):
    """Supervisor → worker: stop the agent (TERM, grace, KILL) and end as ``state``."""

    reason: str
    state: str = "stopped"


class PauseWorker(Msg, tag="pause_worker"):
    """Supervisor → worker: SIGSTOP the agent's process group."""


class ResumeWorker(Msg, tag="resume_worker"):
    """Supervisor → worker: SIGCONT the agent's process group."""


WorkerInbox = Union[StopWorker, PauseWorker, ResumeWorker]


NotifierInbox = Union[Committed, LogHealth, Crash]
"""The notifier's mailbox: the journal forwards the committed events it follows."""


# ---------------------------------------------------------------- the agent-host link
# ``orchd host`` (a DEALER) <-> the supervisor's host-link ROUTER, msgpack.  A worker generation is
# named by its key ``<session>/<worker>/<gen>``; what a host sends about it (events, its result
# bundle, its end) is numbered ``seq`` = 1, 2, ... per key, acknowledged by the supervisor
# (``LinkAck``, cumulative), resent by the host after a reconnect and deduplicated by the
# supervisor, so a link that drops and comes back loses and duplicates nothing.

class HostHello(Msg, tag="host_hello"):
    """Host → supervisor, first on every (re)connection: its slots, its agent CLIs
    (name → version, "" when unknown) and the keys of the workers it still runs."""

    name: str
    slots: Annotated[int, msgspec.Meta(ge=0, le=100_000)]
    clis: dict[str, str] = {}
    running: list[str] = []


class HostBeat(Msg, tag="host_beat"):
    """Host → supervisor, every heartbeat interval (Paranoid Pirate)."""


class HostEvents(Msg, tag="host_events"):
    """Host → supervisor: a remote worker's pending event frames (as a local worker's ``Append``)."""

    key: str
    seq: int
    frames: list[bytes]


class HostResult(Msg, tag="host_result"):
    """Host → supervisor: one chunk of the run's result, a git bundle of ``base..branch`` (empty
    when nothing changed).  ``wrapped``: the bundle's last commit is the host's own commit of what
    the agent left uncommitted (the supervisor turns it back into uncommitted changes)."""

    key: str
    seq: int
    data: bytes
    last: bool
    head: str = ""
    wrapped: bool = False


class HostEnded(Msg, tag="host_ended"):
    """Host → supervisor: the worker generation is over (after its ``worker.exited`` and result)."""

    key: str
    seq: int


HostInbound = Union[HostHello, HostBeat, HostEvents, HostResult, HostEnded]


class LinkBeat(Msg, tag="link_beat"):
    """Supervisor → host, every heartbeat interval."""


class LinkAck(Msg, tag="link_ack"):
    """Supervisor → host: everything about ``key`` up to ``seq`` is taken."""

    key: str
    seq: int


class LinkAssign(Msg, tag="link_assign"):
    """Supervisor → host: run a worker generation.  ``spec`` is the msgpack ``WorkerSpec``;
    the base commit comes in ``LinkBundle`` chunks (a bundle of ``branch``)."""

    key: str
    spec: bytes
    branch: str
    base: str
    exclude: list[str] = []


class LinkBundle(Msg, tag="link_bundle"):
    """Supervisor → host: chunk ``index`` of the bundle of an assignment's base."""

    key: str
    index: int
    data: bytes
    last: bool


class LinkTell(Msg, tag="link_tell"):
    """Supervisor → host: a message for a remote worker's mailbox."""

    key: str
    msg: Union[StopWorker, PauseWorker, ResumeWorker]


class LinkDrop(Msg, tag="link_drop"):
    """Supervisor → host: forget ``key`` (stop it if it still runs): its generation is over here."""

    key: str
    reason: str


HostOutbound = Union[LinkBeat, LinkAck, LinkAssign, LinkBundle, LinkTell, LinkDrop]
