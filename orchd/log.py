"""Structured logging: one event name plus key=value context per line.

JSON lines when stderr is not a terminal (systemd's journal, CI), a compact
``key=value`` console form otherwise.  ``get(name).warning("bad_request",
code=..., peer=...)`` is the whole API.
"""

from __future__ import annotations

import json
import logging
import sys
import time

from orchd import redact


class _Formatter(logging.Formatter):
    def __init__(self, as_json: bool) -> None:
        super().__init__()
        self.as_json = as_json

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "kv", {})
        if self.as_json:
            out = {"ts": round(record.created, 6), "level": record.levelname.lower(),
                   "logger": record.name, "event": record.getMessage(), **fields}
            if record.exc_info:
                out["exc"] = self.formatException(record.exc_info)
            return redact.redact(json.dumps(out, default=str))
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        kv = " ".join(f"{k}={v!r}" if isinstance(v, str) and " " in v else f"{k}={v}" for k, v in fields.items())
        line = f"{stamp} {record.levelname.lower():7} {record.name}: {record.getMessage()} {kv}".rstrip()
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return redact.redact(line)  # every line, whatever it holds (agent errors, exceptions)


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


def setup(level: str = "info", fmt: str = "auto") -> None:
    as_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(as_json))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
