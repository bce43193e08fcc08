"""An idle ``orchd run`` holds no OpenSSL and no aiohttp; both load when something needs them.

Observed from outside the daemon, in ``/proc/PID/maps``: ``ssl`` is a C extension
(``_ssl.*.so``, linked to libssl and libcrypto), ``hashlib``/``hmac``/``secrets`` load libcrypto
through ``_hashlib.*.so``, and aiohttp brings its own C extensions.  Each test also sees the
library appear once it is used, so the probe is known to work here.  The RSS figure itself is
measured by ``benchmarks/scale.py`` (``rss_idle_mb``), see benchmarks/README.md.
"""

from __future__ import annotations

import http.server
import json
import ssl
import subprocess
import threading
from pathlib import Path

from orchd import paths
from tests.conftest import fake, wait_for, write_plan
from tests.helpers import replay_all
from tests.webclient import web_of

OPENSSL = ("libssl.so", "libcrypto.so", "/_ssl.", "/_hashlib.")


def mapped(d) -> str:
    return Path(f"/proc/{d.proc.pid}/maps").read_text()


def test_an_idle_daemon_maps_neither_openssl_nor_aiohttp(daemon_factory):
    d = daemon_factory(env={"ORCHD_HTTP_LISTEN": "127.0.0.1:0"})  # the default config: the bridge on
    web = web_of(d)
    wait_for(lambda: "orchd_started" in d.log(), 20, "the daemon to finish starting")
    maps = mapped(d)
    assert [lib for lib in OPENSSL if lib in maps] == [], "OpenSSL is loaded in an idle daemon"
    assert "/aiohttp/" not in maps, "aiohttp is loaded in an idle daemon"
    assert d.ctl_json("status")["sessions"] == []
    assert web.json("GET", "/healthz", token=None)[0] == 200
    assert "/aiohttp/" in mapped(d)  # the first connection loaded the bridge


class TlsHook:
    """An https webhook receiver on 127.0.0.1 with a self-signed certificate for 127.0.0.1."""

    def __init__(self, tmp: Path) -> None:
        self.cert, key = tmp / "cert.pem", tmp / "key.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                        "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                        "-keyout", str(key), "-out", str(self.cert)], check=True, capture_output=True)
        self.posts: list[dict] = []
        hook = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                hook.posts.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert, key)
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_an_https_webhook_is_delivered_and_loads_ssl_only_then(daemon_factory, git_repo, tmp_path):
    hook = TlsHook(tmp_path)
    try:
        # the daemon trusts the receiver's certificate through OpenSSL's SSL_CERT_FILE
        d = daemon_factory(f'[notify]\nwebhook = "{hook.url}"\non = ["failed"]\n',
                           env={"SSL_CERT_FILE": str(hook.cert)})
        wait_for(lambda: "notifier_ready" in d.log(), 20, "the notifier to start")
        assert "/_ssl." not in mapped(d), "ssl is loaded before any webhook was sent"
        plan = write_plan(tmp_path / "bad.json", [{"name": "bad", "agent": "command", "argv": fake("exit:1")}])
        sid = d.ctl_json("submit", "--plan", str(plan), "--target", str(git_repo))["session"]
        assert d.wait_session(sid)["state"] == "failed"
        wait_for(lambda: hook.posts, 30, "the https webhook POST")
        assert hook.posts[0]["situation"] == "failed" and hook.posts[0]["session"] == sid
        sent = wait_for(lambda: [e for _, b in replay_all(paths.control_endpoint(d.runtime_dir))
                                 if (e := json.loads(b))["kind"] == "notify.sent"], 20, "notify.sent")
        assert sent[0]["channel"] == "webhook" and sent[0]["attempts"] == 1
        assert "/_ssl." in mapped(d)  # the delivery imported ssl, in the notifier's thread
    finally:
        hook.close()
