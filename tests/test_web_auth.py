"""Who may use the HTTP bridge (orchd/web_auth.py): pure decisions, no sockets."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from orchd.web_auth import Policy, is_loopback, parse_listen

TOKEN = "s3cret-token"
LOCAL = Policy("127.0.0.1", 7878, TOKEN)
OPEN = Policy("0.0.0.0", 7878, TOKEN)


def test_parse_listen():
    assert parse_listen("127.0.0.1:7878") == ("127.0.0.1", 7878)
    assert parse_listen("[::1]:80") == ("::1", 80)
    assert parse_listen("off") is None and parse_listen(" OFF ") is None
    for bad in ("7878", "localhost", ":80", "h:port", "h:70000", ""):
        with pytest.raises(ValueError, match="HOST:PORT"):
            parse_listen(bad)


def test_loopback():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("example.com")


def check(policy, method="GET", path="/api/snapshot", host="127.0.0.1:7878", origin=None, auth=None, query=None):
    return policy.check(method, path, host, origin, auth, query)


def test_loopback_reads_are_open_and_control_needs_the_token():
    assert check(LOCAL) is None
    assert check(LOCAL, host="localhost:7878", path="/") is None
    assert check(LOCAL, "POST", "/api/sessions/s/pause") == (401, "no_token")
    assert check(LOCAL, "POST", "/api/sessions/s/pause", auth="Bearer nope") == (401, "bad_token")
    assert check(LOCAL, "POST", "/api/sessions/s/pause", auth=f"Bearer {TOKEN}") is None
    assert check(LOCAL, "POST", "/api/sessions/s/pause", query=TOKEN) == (401, "no_token"), \
        "a POST must carry the token in its header"


def test_host_and_origin():
    assert check(LOCAL, host="evil.example:7878") == (403, "bad_host")
    assert check(LOCAL, host=None) == (403, "bad_host")
    assert check(LOCAL, host="127.0.0.1:9999") == (403, "bad_host")
    assert check(LOCAL, origin="http://evil.example") == (403, "cross_origin")
    assert check(LOCAL, origin="null") == (403, "cross_origin")
    assert check(LOCAL, origin="http://127.0.0.1:7878") is None
    assert check(LOCAL, "POST", "/api/sessions", origin="http://localhost:7878", host="127.0.0.1:7878",
                 auth=f"Bearer {TOKEN}") == (403, "cross_origin")


def test_a_non_loopback_bind_needs_the_token_everywhere_but_the_page():
    assert check(OPEN, host="box.lan:7878") == (401, "no_token")
    assert check(OPEN, path="/api/events", host="box.lan:7878", query=TOKEN) is None
    assert check(OPEN, path="/metrics", host="box.lan:7878") == (401, "no_token")
    assert check(OPEN, path="/", host="box.lan:7878") is None
    assert check(OPEN, path="/app.js", host="box.lan:7878") is None
    named = Policy("192.168.1.5", 7878, TOKEN)
    assert check(named, host="192.168.1.5:7878", auth=f"Bearer {TOKEN}") is None
    assert check(named, host="localhost:7878", auth=f"Bearer {TOKEN}") == (403, "bad_host")


@given(st.text(max_size=80), st.sampled_from(["GET", "POST"]))
def test_only_the_exact_token_passes(given_token, method):
    result = check(LOCAL, method, "/api/sessions/s/stop", auth=f"Bearer {given_token}")
    if given_token.strip() == TOKEN:
        assert result is None
    elif method == "POST":
        assert result in ((401, "no_token"), (401, "bad_token"))
