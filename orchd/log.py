"""Structured logging: one event name plus key=value context, one line per event.

``get(name).warning("bad_request", code=..., peer=...)`` is the whole API.
Lines go to stderr (systemd's journal takes it like stdout):

* ``json`` (the default when stderr is not a terminal: journald, CI, a
  file): one JSON object per line, ``{"ts", "level", "logger", "event",
  ...context}``; a traceback is the ``exc`` field, so it stays one line;
* ``console`` (the default in a terminal): ``HH:MM:SS level logger: event
  key=value ...``, the level coloured unless ``NO_COLOR`` is set or the
  stream is not a terminal.  Values are escaped (``repr``) when they hold
  spaces, quotes or control characters, so text that came from an agent
  cannot forge a line or move the cursor.

``setup(level, fmt)`` may be called again (a config reload) and replaces
the handler.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

from orchd import redact

_COLOURS = {"debug": "\x1b[2m", "info": "\x1b[32m", "warning": "\x1b[33m", "error": "\x1b[31m",
            "critical": "\x1b[1;31m"}
_RESET = "\x1b[0m"
_BOLD = "\x1b[1m"
_DIM = "\x1b[2m"


def _plain(value: str) -> bool:
    return value.isprintable() and " " not in value and '"' not in value and "'" not in value


class _Formatter(logging.Formatter):
    def __init__(self, as_json: bool, colour: bool = False) -> None:
        super().__init__()
        self.as_json = as_json
        self.colour = colour and not as_json

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "kv", {})
        level = record.levelname.lower()
        if self.as_json:
            out = {"ts": round(record.created, 6), "level": level,
                   "logger": record.name, "event": record.getMessage(), **fields}
            if record.exc_info:
                out["exc"] = self.formatException(record.exc_info)
            return redact.redact(json.dumps(out, default=str))
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        kv = " ".join(f"{k}={_value(v)}" for k, v in fields.items())
        event = _value(record.getMessage())
        if self.colour:
            line = (f"{_DIM}{stamp}{_RESET} {_COLOURS.get(level, '')}{level:7}{_RESET} {_DIM}{record.name}:{_RESET} "
                    f"{_BOLD}{event}{_RESET} {kv}").rstrip()
        else:
            line = f"{stamp} {level:7} {record.name}: {event} {kv}".rstrip()
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return redact.redact(line)  # every line, whatever it holds (agent errors, exceptions)


def _value(v: object) -> str:
    text = v if isinstance(v, str) else str(v)
    return text if _plain(text) and text else repr(text)


class Logger:
    __slots__ = ("_log",)

    def __init__(self, name: str) -> None:
        self._log = logging.getLogger(name)

    def _emit(self, level: int, event: str, exc_info: bool, kv: dict) -> None:
        if self._log.isEnabledFor(level):
            self._log.log(level, event, extra={"kv": kv}, exc_info=exc_info)

    def debug(self, event: str, **kv) -> None:
        self._emit(logging.DEBUG, event, False, kv)

    def info(self, event: str, **kv) -> None:
        self._emit(logging.INFO, event, False, kv)

    def warning(self, event: str, **kv) -> None:
        self._emit(logging.WARNING, event, False, kv)

    def error(self, event: str, exc_info: bool = False, **kv) -> None:
        self._emit(logging.ERROR, event, exc_info, kv)


def get(name: str) -> Logger:
    return Logger(name)


def setup(level: str = "info", fmt: str = "auto", stream=None) -> None:
    """Log at ``level`` and above to ``stream`` (stderr) as ``fmt`` (auto | json | console)."""
    stream = sys.stderr if stream is None else stream
    tty = _isatty(stream)
    as_json = fmt == "json" or (fmt == "auto" and not tty)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(_Formatter(as_json, colour=tty and not os.environ.get("NO_COLOR")))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed, or not a file
        return False
