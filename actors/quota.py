"""When does a usage limit reset?  Read from the CLI's own message (pure, explicit ``now``).

Usage-limit and quota stops are the most common failure of long unattended
runs; the CLIs say in their message when the limit resets, in several forms:

* a Unix timestamp — claude's ``Claude AI usage limit reached|1750176000``,
  its ``rate_limit_event`` ``resetsAt``, ``"resets_at": 1750176000``;
* a duration — codex's ``try again in 2 days 3 hours 15 minutes``, gemini's
  ``Please retry in 41.2s`` / ``"retryDelay": "41s"``, ``retry after 90 seconds``;
* a clock time, maybe with a date and a zone — claude's
  ``5-hour limit reached ∙ resets 3pm``, ``resets 3:45 PM (Europe/Berlin)``,
  codex's ``resets_at: Dec 29th, 2025 10:15 PM`` or ``try again at 8:05 AM``.

``reset_at(text, now)`` returns the earliest moment the limit is over
(timezone-aware), or None when the message names none.  A clock time without
a date that is not after ``now`` means the next day.  A clock time without a
zone is in ``now``'s zone (the daemon's local time, which is what the CLI
printed in).  Nothing here decides what to do about it: the recovery policy
adds a margin, the ceiling (``max_quota_wait_s``) and parks the assignment.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = ["reset_at", "is_usage_limit"]

# Unix seconds between 2001 and 2286: ten digits, after a pipe or a resets key
_EPOCH = re.compile(r"(?:\||\bresets?_?at\"?\s*[:=]\s*\"?|\bresetsAt\"?\s*:\s*)(\d{10})(?:\.\d+)?\b", re.I)

_UNIT_S = {"d": 86400, "day": 86400, "days": 86400,
           "h": 3600, "hr": 3600, "hrs": 3600, "hour": 3600, "hours": 3600,
           "m": 60, "min": 60, "mins": 60, "minute": 60, "minutes": 60,
           "s": 1, "sec": 1, "secs": 1, "second": 1, "seconds": 1}
_PART = r"(\d+(?:\.\d+)?)\s*(days?|d|hours?|hrs?|h|minutes?|mins?|m|seconds?|secs?|s)\b"
_DURATION = re.compile(
    r"(?:try again in|retry in|retry after|retrying in|wait|resets in|reset in|retryDelay\"?\s*:\s*\"?)\s*"
    r"((?:" + _PART + r"[\s,]*(?:and\s+)?)+)", re.I)
_PARTS = re.compile(_PART, re.I)

_MONTHS = {m: i for i, m in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), start=1)}
_CLOCK = re.compile(
    r"(?:resets?(?:_at)?|try again at|available again at|until)\s*:?\s*(?:at\s+)?"
    r"(?:(?P<mon>jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*\.?\s+(?P<day>\d{1,2})(?:st|nd|rd|th)?,?\s*"
    r"(?:(?P<year>\d{4}),?\s*)?(?:at\s+)?)?"
    r"(?P<hour>\d{1,2})(?::(?P<minute>\d{2}))?(?:\s*(?P<ampm>am|pm|a\.m\.|p\.m\.))?"
    r"(?:\s*\((?P<tz>[A-Za-z_]+(?:/[A-Za-z_+\-0-9]+)*)\)|\s+(?P<utc>UTC|GMT)\b)?", re.I)

_USAGE_LIMIT = re.compile(
    r"usage limit|usage_limit|hit your (?:usage )?limit|limit reached|quota (?:exceeded|exhausted)|"
    r"exhausted your (?:daily |monthly )?quota|resource_exhausted|TerminalQuotaError|out of credits", re.I)


def is_usage_limit(text: str) -> bool:
    """Does the message say a usage limit or quota ran out (as opposed to a short rate limit)?"""
    return bool(_USAGE_LIMIT.search(text))


def reset_at(text: str, now: datetime) -> datetime | None:
    """The moment the limit named in ``text`` resets, or None.  ``now`` must be timezone-aware."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    found = [t for t in (_from_epoch(text), _from_duration(text, now), _from_clock(text, now)) if t is not None]
    future = [t for t in found if t > now]
    return min(future) if future else (max(found) if found else None)


def _from_epoch(text: str) -> datetime | None:
    m = _EPOCH.search(text)
    return datetime.fromtimestamp(int(m.group(1)), tz=timezone.utc) if m else None


def _from_duration(text: str, now: datetime) -> datetime | None:
    m = _DURATION.search(text)
    if not m:
        return None
    seconds = sum(float(n) * _UNIT_S[unit.lower()] for n, unit in _PARTS.findall(m.group(1)))
    return now + timedelta(seconds=seconds) if seconds > 0 else None


def _from_clock(text: str, now: datetime) -> datetime | None:
    for m in _CLOCK.finditer(text):
        hour, minute = int(m["hour"]), int(m["minute"] or 0)
        ampm = (m["ampm"] or "").replace(".", "").lower()
        if not ampm and m["minute"] is None:
            continue  # a bare number ("resets 5") is not a time
        if ampm:
            if not 1 <= hour <= 12:
                continue
            hour = hour % 12 + (12 if ampm == "pm" else 0)
        if hour > 23 or minute > 59:
            continue
        tz = now.tzinfo
        if m["utc"]:
            tz = timezone.utc
        elif m["tz"]:
            try:
                tz = ZoneInfo(m["tz"])
            except (ZoneInfoNotFoundError, ValueError):
                pass  # an unknown zone name: the local zone is the best guess
        local_now = now.astimezone(tz)
        if m["mon"]:
            year = int(m["year"]) if m["year"] else local_now.year
            try:
                when = datetime(year, _MONTHS[m["mon"].lower()[:3]], int(m["day"]), hour, minute, tzinfo=tz)
            except ValueError:
                continue
            if not m["year"] and when < local_now - timedelta(days=1):
                when = when.replace(year=year + 1)  # "Jan 2" read on Dec 30
            return when
        when = local_now.replace(hour=hour, minute=minute, second=0, microsecond=0)
        if when <= local_now:
            when += timedelta(days=1)
        return when
    return None
