"""Reset times read from the CLIs' usage-limit messages (pure, explicit now)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, strategies as st

from actors.quota import is_usage_limit, reset_at

BERLIN = ZoneInfo("Europe/Berlin")
NOW = datetime(2026, 11, 25, 13, 20, 0, tzinfo=BERLIN)  # a Wednesday afternoon in Berlin


@pytest.mark.parametrize("text, expected", [
    # Unix timestamps
    ("Claude AI usage limit reached|1795000000", datetime.fromtimestamp(1795000000, timezone.utc)),
    ('{"type":"rate_limit_event","rate_limit_info":{"status":"rejected","resetsAt":1795000000}}',
     datetime.fromtimestamp(1795000000, timezone.utc)),
    ('error: usage_limit_reached "resets_at": 1795000000', datetime.fromtimestamp(1795000000, timezone.utc)),
    # durations
    ("You've hit your usage limit. Upgrade to Pro or try again in 2 days 3 hours 15 minutes.",
     NOW + timedelta(days=2, hours=3, minutes=15)),
    ("Quota exceeded for quota metric 'Requests'. Please retry in 41.2s.", NOW + timedelta(seconds=41.2)),
    ('{"error":{"details":[{"retryDelay": "41s"}]}}', NOW + timedelta(seconds=41)),
    ("rate limited, retry after 90 seconds", NOW + timedelta(seconds=90)),
    ("try again in 1h 5m", NOW + timedelta(hours=1, minutes=5)),
    # clock times
    ("5-hour limit reached ∙ resets 3pm", NOW.replace(hour=15, minute=0)),
    ("You've hit your limit · resets 3:45 PM (Europe/Berlin)", NOW.replace(hour=15, minute=45)),
    ("limit reached · resets 1pm", (NOW + timedelta(days=1)).replace(hour=13, minute=0)),  # 1pm passed: tomorrow
    ("resets 9am (America/New_York)", datetime(2026, 11, 25, 9, 0, tzinfo=ZoneInfo("America/New_York"))),  # 07:20 there
    ("resets 7am (America/New_York)", datetime(2026, 11, 26, 7, 0, tzinfo=ZoneInfo("America/New_York"))),
    ("limit reached, resets 14:30 UTC", datetime(2026, 11, 25, 14, 30, tzinfo=timezone.utc)),
    ("usage_limit_reached plan_type: plus resets_at: Dec 29th, 2025 10:15 PM",
     datetime(2025, 12, 29, 22, 15, tzinfo=BERLIN)),
    ("usage limit reached, try again at Dec 2 8:05 AM", datetime(2026, 12, 2, 8, 5, tzinfo=BERLIN)),
    ("try again at 8:05 AM", datetime(2026, 11, 26, 8, 5, tzinfo=BERLIN)),
    # none
    ("You've hit your usage limit. Limits reset every 5h and every week.", None),
    ("Invalid API key · Please run /login", None),
    ("resets 5", None),
    ("", None),
])
def test_reset_time_read_from_each_message_form(text, expected):
    assert reset_at(text, NOW) == expected


def test_the_earliest_future_reset_wins_when_a_message_names_several():
    text = "usage limit reached|1795000000 — try again in 30 seconds"
    assert reset_at(text, NOW) == NOW + timedelta(seconds=30)


def test_now_must_carry_a_zone():
    with pytest.raises(ValueError):
        reset_at("try again in 5s", datetime(2026, 1, 1))


@pytest.mark.parametrize("text, expected", [
    ("Claude AI usage limit reached|1795000000", True),
    ("You've hit your usage limit. Upgrade to Pro", True),
    ("TerminalQuotaError: You have exhausted your daily quota on this model.", True),
    ("429 Too Many Requests: rate limit exceeded, retry in 2s", False),
    ("API Error: 529 Overloaded", False),
])
def test_usage_limits_are_told_from_short_rate_limits(text, expected):
    assert is_usage_limit(text) is expected


@given(st.text(max_size=300))
def test_any_text_gives_a_time_or_none_never_an_error(text):
    got = reset_at(text, NOW)
    assert got is None or got.tzinfo is not None
