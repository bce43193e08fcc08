"""Where orchctl connects: the local ipc sockets, or a remote daemon over CURVE.

A remote daemon is named by flags (``--endpoint tcp://HOST:PORT --server-key
KEY``, optionally ``--events-endpoint`` and ``--client-key FILE``) or by a
profile in ``$XDG_CONFIG_HOME/orchctl/config.toml`` (``--profile NAME``)::

    [profiles.build]
    endpoint = "tcp://build.example.org:7870"
    events_endpoint = "tcp://build.example.org:7871"   # default: the next port
    server_key = "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7"   # or a file: "~/.config/orchctl/build.key"
    client_key = "~/.config/orchctl/client.key_secret"     # the default

Flags given with ``--profile`` override the profile's values.  Without
``--endpoint`` or ``--profile`` nothing here is used: orchctl talks to the
ipc sockets in the runtime dir as before.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import msgspec

from orchd import keys


class ProfileError(ValueError):
    """The remote settings cannot be used; the message says which and why (a usage error, exit 2)."""


class Remote(msgspec.Struct, frozen=True):
    control: str
    events: str
    curve: keys.ClientCurve


class _Profile(msgspec.Struct, forbid_unknown_fields=True):
    endpoint: str | None = None
    events_endpoint: str | None = None
    server_key: str | None = None
    client_key: str | None = None


def config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "orchctl" / "config.toml"


def _load_profile(name: str) -> _Profile:
    path = config_path()
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ProfileError(f"--profile {name}: {path} does not exist") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ProfileError(f"{path} cannot be read: {exc}") from None
    profiles = data.get("profiles") if isinstance(data, dict) else None
    if not isinstance(profiles, dict) or name not in profiles:
        known = ", ".join(sorted(profiles)) if isinstance(profiles, dict) else ""
        raise ProfileError(f"no profile {name!r} in {path}" + (f" (known: {known})" if known else ""))
    try:
        return msgspec.convert(profiles[name], _Profile)
    except msgspec.ValidationError as exc:
        raise ProfileError(f"{path}: [profiles.{name}]: {exc} (keys: endpoint, events_endpoint, server_key, "
                           "client_key)") from None


def next_port(endpoint: str) -> str:
    """``tcp://H:P`` → ``tcp://H:P+1``: the events endpoint when none is given."""
    host, _, port = endpoint.rpartition(":")
    if not port.isdigit() or not host.startswith("tcp://"):
        raise ProfileError(f"{endpoint!r} is not tcp://HOST:PORT")
    return f"{host}:{int(port) + 1}"


def resolve(endpoint: str | None, events_endpoint: str | None, server_key: str | None, client_key: str | None,
            profile: str | None) -> Remote | None:
    """The remote daemon the flags (and profile) name, or None for the local ipc sockets."""
    if profile is not None:
        prof = _load_profile(profile)
        endpoint = endpoint or prof.endpoint
        events_endpoint = events_endpoint or prof.events_endpoint
        server_key = server_key or prof.server_key
        client_key = client_key or prof.client_key
        if endpoint is None:
            raise ProfileError(f"profile {profile!r} has no endpoint")
    if endpoint is None:
        if server_key or events_endpoint or client_key:
            raise ProfileError("--server-key, --events-endpoint and --client-key need --endpoint tcp://HOST:PORT")
        return None
    if not endpoint.startswith("tcp://"):
        raise ProfileError(f"--endpoint {endpoint!r}: a remote daemon is tcp://HOST:PORT (the local one needs no "
                           "--endpoint)")
    if server_key is None:
        raise ProfileError(f"{endpoint}: give the daemon's public key with --server-key (its operator runs "
                           "'orchd keys show'); plaintext tcp is never used")
    try:
        server_public = keys.read_server_public(server_key)
        client = keys.load_client_keys(Path(client_key).expanduser() if client_key else None)
    except keys.KeyFileError as exc:
        hint = "" if client_key else " (create a client key pair with 'orchctl keys new')"
        raise ProfileError(f"{exc}{hint}") from None
    events = events_endpoint or next_port(endpoint)
    return Remote(control=endpoint, events=events, curve=keys.ClientCurve(client=client, server_public=server_public))
