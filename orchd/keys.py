"""CURVE keys: the daemon's key pair, the clients it lets in, and a client's own key pair.

Theory of operation
-------------------
ZeroMQ's CURVE mechanism encrypts and authenticates a tcp connection with
Curve25519 key pairs; ZAP (``orchd.zap``) decides which client public keys
may connect.  This module only keeps the keys on disk:

* ``<state_dir>/curve/server.key`` (public) and ``server.key_secret``
  (public + secret, mode 0600): ``orchd keys init``.  The files are in the
  ZeroMQ certificate format (``zmq.auth.load_certificate`` reads them).
* ``<state_dir>/curve/clients.json`` (0600): the authorized clients, by
  name, with revoked ones kept (so a refusal can say "revoked").
  ``orchd keys add|list|revoke`` edit it; the running daemon's ZAP handler
  reads it again whenever its modification time changes, so a revocation
  applies to the next connection without a restart.
* a client's pair: ``$XDG_CONFIG_HOME/orchctl/client.key`` and
  ``client.key_secret`` (0600): ``orchctl keys new``.

Keys are exchanged as their 40-character Z85 text (what ``keys list`` and
``keys new`` print).  ``fingerprint`` is a short, stable name for a public
key in logs: the first 16 hex digits of the SHA-256 of its 32 raw bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path

import msgspec

CURVE_DIR = "curve"
SERVER_KEY = "server.key"
CLIENTS_FILE = "clients.json"
CLIENT_KEY = "client.key"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_Z85_RE = re.compile(r"^[0-9a-zA-Z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}$")


class KeyFileError(ValueError):
    """A key file or key text cannot be used; the message says which and why."""


class ServerKeys(msgspec.Struct, frozen=True):
    """The daemon's CURVE key pair (Z85, 40 bytes each)."""

    public: bytes
    secret: bytes


class ClientKeys(msgspec.Struct, frozen=True):
    """A client's CURVE key pair (Z85, 40 bytes each)."""

    public: bytes
    secret: bytes


class ClientCurve(msgspec.Struct, frozen=True):
    """What a client socket needs for CURVE: its own pair and the server's public key."""

    client: ClientKeys
    server_public: bytes


class AuthorizedClient(msgspec.Struct, frozen=True):
    name: str
    public_key: str           # Z85
    added_ts: float
    revoked_ts: float | None = None


class _ClientsFile(msgspec.Struct):
    clients: list[AuthorizedClient] = []


# ---------------------------------------------------------------- key text

def parse_public_key(text: str | bytes) -> bytes:
    """A Z85 public key (40 characters) as bytes; ``KeyFileError`` if it is not one."""
    raw = text.decode("ascii", "replace") if isinstance(text, bytes) else text
    raw = raw.strip()
    if not _Z85_RE.match(raw):
        raise KeyFileError(f"not a CURVE public key (40 Z85 characters): {raw[:60]!r}")
    return raw.encode("ascii")


def fingerprint(public_key: bytes | str) -> str:
    """A short, stable name for a public key (16 hex digits of SHA-256 of its raw 32 bytes)."""
    from zmq.utils import z85
    key = public_key.encode("ascii") if isinstance(public_key, str) else bytes(public_key)
    try:
        raw = z85.decode(key) if len(key) == 40 else key
    except (ValueError, KeyError, TypeError):
        raw = key
    return hashlib.sha256(raw).hexdigest()[:16]


# ---------------------------------------------------------------- files

def _write_private(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``path`` atomically (a temp file renamed over it), owner-only, never through a symlink."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


def _cert_text(public: bytes, secret: bytes | None, who: str) -> bytes:
    kind = "Secret" if secret else "Public"
    lines = [f"#   ZeroMQ CURVE **{kind}** Certificate ({who}, written by orchd)",
             "#   " + ("DO NOT SHARE THIS FILE" if secret else "Give this key to whoever must trust it"),
             "", "metadata", "curve", f'    public-key = "{public.decode()}"']
    if secret:
        lines.append(f'    secret-key = "{secret.decode()}"')
    return ("\n".join(lines) + "\n").encode()


def _read_cert(path: Path, need_secret: bool) -> tuple[bytes, bytes | None]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise KeyFileError(f"{path} does not exist") from None
    except OSError as exc:
        raise KeyFileError(f"{path} cannot be read: {exc.strerror}") from None
    public = re.search(r'public-key\s*=\s*"([^"]*)"', text)
    secret = re.search(r'secret-key\s*=\s*"([^"]*)"', text)
    if public is None or (need_secret and secret is None):
        raise KeyFileError(f"{path} is not a ZeroMQ CURVE {'secret ' if need_secret else ''}certificate")
    pub = parse_public_key(public.group(1))
    sec = parse_public_key(secret.group(1)) if secret else None  # same shape: 40 Z85 characters
    return pub, sec


def _check_private(path: Path) -> None:
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise KeyFileError(f"{path} has mode {mode:04o}: a secret key must be 0600 (run 'chmod 600 {path}')")


def curve_dir(state_dir: Path) -> Path:
    return Path(state_dir) / CURVE_DIR


def init_server_keys(state_dir: Path, *, force: bool = False) -> ServerKeys:
    """Create the daemon's key pair in ``<state_dir>/curve`` (secret file 0600).

    Refuses (``KeyFileError``) when a pair exists, unless ``force``: a new pair
    means every client must be given the new public key.
    """
    import zmq
    d = _private_dir(curve_dir(state_dir))
    secret_path = d / (SERVER_KEY + "_secret")
    if secret_path.exists() and not force:
        raise KeyFileError(f"{secret_path} already exists (its public key: 'orchd keys show'); "
                        "remove it first to make a new pair")
    public, secret = zmq.curve_keypair()
    _write_private(secret_path, _cert_text(public, secret, "orchd server"))
    _write_private(d / SERVER_KEY, _cert_text(public, None, "orchd server"), mode=0o644)
    return ServerKeys(public=public, secret=secret)


def load_server_keys(state_dir: Path) -> ServerKeys:
    """The daemon's key pair; ``KeyFileError`` if missing, malformed or readable by others."""
    path = curve_dir(state_dir) / (SERVER_KEY + "_secret")
    public, secret = _read_cert(path, need_secret=True)
    _check_private(path)
    return ServerKeys(public=public, secret=secret)


def default_client_key_path() -> Path:
    """``$XDG_CONFIG_HOME/orchctl/client.key_secret`` (default ``~/.config``)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "orchctl" / (CLIENT_KEY + "_secret")


def new_client_keys(path: Path | None = None, *, force: bool = False) -> ClientKeys:
    """Create a client key pair at ``path`` (the secret file, 0600) and ``path`` minus ``_secret``."""
    import zmq
    path = Path(path) if path is not None else default_client_key_path()
    if path.exists() and not force:
        raise KeyFileError(f"{path} already exists; remove it first to make a new pair")
    _private_dir(path.parent)
    public, secret = zmq.curve_keypair()
    _write_private(path, _cert_text(public, secret, "orchctl client"))
    public_path = path.with_name(path.name.removesuffix("_secret")) if path.name.endswith("_secret") \
        else path.with_name(path.name + ".pub")
    _write_private(public_path, _cert_text(public, None, "orchctl client"), mode=0o644)
    return ClientKeys(public=public, secret=secret)


def load_client_keys(path: Path | None = None) -> ClientKeys:
    """A client key pair from its secret certificate (default: ``default_client_key_path``)."""
    path = Path(path) if path is not None else default_client_key_path()
    public, secret = _read_cert(path, need_secret=True)
    _check_private(path)
    return ClientKeys(public=public, secret=secret)


def read_server_public(text: str) -> bytes:
    """``--server-key``: a 40-character Z85 key, or the path of a certificate file holding one."""
    text = text.strip()
    if _Z85_RE.match(text):
        return text.encode("ascii")
    path = Path(text).expanduser()
    if path.exists():
        return _read_cert(path, need_secret=False)[0]
    raise KeyFileError(f"--server-key: {text[:60]!r} is neither a 40-character key nor a key file")


# ---------------------------------------------------------------- authorized clients

class ClientStore:
    """The authorized-clients file in ``<state_dir>/curve`` (read again when it changes)."""

    def __init__(self, state_dir: Path) -> None:
        self.path = curve_dir(state_dir) / CLIENTS_FILE
        self._stamp: tuple[int, int, int] | None = None
        self._clients: list[AuthorizedClient] = []

    def clients(self) -> list[AuthorizedClient]:
        """Every entry, revoked ones included; re-read when the file's mtime, size or inode moved."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._stamp, self._clients = None, []
            return []
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp != self._stamp:
            try:
                data = msgspec.json.decode(self.path.read_bytes(), type=_ClientsFile)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                raise KeyFileError(f"{self.path} is not a valid clients file: {exc}") from None
            self._clients, self._stamp = list(data.clients), stamp
        return list(self._clients)

    def lookup(self, public_key: bytes) -> AuthorizedClient | None:
        """The entry for this Z85 public key (revoked or not), or None."""
        text = public_key.decode("ascii", "replace")
        for c in self.clients():
            if c.public_key == text:
                return c
        return None

    def _save(self, clients: list[AuthorizedClient]) -> None:
        _private_dir(self.path.parent)
        _write_private(self.path, json.dumps({"clients": [msgspec.to_builtins(c) for c in clients]},
                                             indent=1).encode() + b"\n")

    def add(self, name: str, public_key: str, now: float | None = None) -> AuthorizedClient:
        """Authorize a key under ``name``; a revoked name may be reused, an active one may not."""
        if not NAME_RE.match(name):
            raise KeyFileError(f"client name {name[:60]!r}: letters, digits, '.', '_', '-' (at most 64)")
        key = parse_public_key(public_key).decode()
        clients = self.clients()
        for c in clients:
            if c.revoked_ts is None and c.name == name:
                raise KeyFileError(f"a client named {name!r} is already authorized (revoke it first)")
            if c.revoked_ts is None and c.public_key == key:
                raise KeyFileError(f"this key is already authorized as {c.name!r}")
        entry = AuthorizedClient(name=name, public_key=key, added_ts=time.time() if now is None else now)
        self._save([c for c in clients if not (c.name == name or c.public_key == key)] + [entry])
        return entry

    def revoke(self, name: str, now: float | None = None) -> AuthorizedClient:
        """Mark the active client ``name`` revoked (kept, so a refusal can say so)."""
        clients = self.clients()
        for i, c in enumerate(clients):
            if c.name == name and c.revoked_ts is None:
                clients[i] = msgspec.structs.replace(c, revoked_ts=time.time() if now is None else now)
                self._save(clients)
                return clients[i]
        raise KeyFileError(f"no authorized client named {name!r} (see 'orchd keys list')")


KEY_OPTIONS = ("--server-key",)
_KEYS_ADD_VALUED = ("--config", "--state-dir")  # keys add's options that take a value


def argv_with_keys(argv: list[str]) -> list[str]:
    """Command lines with a Z85 key as argparse means them.

    Z85 has ``-`` in its alphabet, and argparse reads any word that starts with
    ``-`` as an option: ``--server-key -Xy...`` would be a missing value and
    ``orchd keys add NAME -Xy...`` an unknown option.  A key given to
    ``--server-key`` becomes ``--server-key=KEY``; ``keys add``'s key operand,
    wherever it stands after the name (options such as ``--state-dir`` may
    follow it), moves to the end behind an end of options (argparse hands the
    subcommand what follows it).
    """
    out: list[str] = []
    i = 0
    while i < len(argv):
        word = argv[i]
        if word in KEY_OPTIONS and i + 1 < len(argv) and argv[i + 1].startswith("-") and len(argv[i + 1]) == 40:
            out.append(f"{word}={argv[i + 1]}")
            i += 2
            continue
        out.append(word)
        i += 1
    if out[:2] == ["keys", "add"] and "--" not in out:
        operands = 0
        for j in range(2, len(out)):
            word, after_option = out[j], out[j - 1] in _KEYS_ADD_VALUED
            if word.startswith("-") and len(word) == 40 and _Z85_RE.match(word) and not after_option and operands:
                return out[:j] + out[j + 1:] + ["--", word]
            operands += not word.startswith("-") and not after_option
    return out
