"""The ``command`` agent: any program, so orchd can drive any CLI agent and
be tested without a model.

Stream mapping
--------------
* a line that is a JSON object whose ``kind`` names a normalized agent
  event (``agent.text``, ``agent.result``...) and that decodes into that
  event type -> that event, as is;
* any other JSON value (objects with another or a malformed ``kind``,
  arrays, numbers...) -> agent.output(data);
* a line that is not JSON -> agent.text(text=line) (blank lines are
  skipped: they carry nothing and would flood the log);
* ``finish`` -> agent.result(ok = exit_code == 0, text = the last text)
  unless the program printed its own agent.result.

The program itself decides its confinement, so ``Launch.confined`` is None
and the catalogue is empty: a non-zero exit is ``crashed``.
"""

from __future__ import annotations

from typing import Any

import msgspec

from orchd.protocol import AGENT_EVENT_TYPES, AgentEvent, AgentOutput, AgentText, Ev

from .base import Failure, Launch, RunSpec, StreamParser, base_env, match_catalogue

AGENT_KINDS = frozenset(t.__struct_config__.tag for t in AGENT_EVENT_TYPES)


class CommandParser(StreamParser):
    def _on_non_json(self, line: str) -> list[Ev]:
        self.last_text = line
        return [AgentText(text=line)]

    def _on_non_object(self, obj: Any, line: str) -> list[Ev]:
        return [AgentOutput(data=obj)]

    def _on_object(self, obj: dict[str, Any]) -> list[Ev] | None:
        kind = obj.get("kind")
        if isinstance(kind, str) and kind in AGENT_KINDS:
            try:
                ev = msgspec.convert(obj, AgentEvent)
            except msgspec.ValidationError:
                return [AgentOutput(data=obj)]
            if isinstance(ev, AgentText):
                self.last_text = ev.text
            return [ev]
        return [AgentOutput(data=obj)]


class CommandAdapter:
    """``build_launch`` returns the assignment's argv, env and cwd; HOME,
    TMPDIR are added when the spec sets them (the same isolation as the
    agent CLIs).  Profiles do not apply: the program is what it is."""

    name = "command"
    tested_version: str | None = None

    def build_launch(self, spec: RunSpec) -> Launch:
        if not spec.argv:
            raise ValueError("a command agent needs a non-empty argv")
        return Launch(argv=list(spec.argv), env=base_env(spec, None), cwd=spec.cwd,
                      confined=None)

    def version_argv(self, binary: str | None = None) -> list[str]:
        # there is no version to ask a generic program for; the caller
        # runs it only when it names a binary
        return [binary, "--version"] if binary else []

    def new_parser(self) -> CommandParser:
        return CommandParser()

    def classify(self, exit_code: int | None, stderr_lines: list[str],
                 events: list) -> Failure | None:
        return match_catalogue((), exit_code, stderr_lines, events)

    def check_stderr(self, line: str) -> str | None:
        return None
