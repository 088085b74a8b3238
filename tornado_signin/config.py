"""Configuration: one YAML file, read once into frozen, typed objects and validated.

Secrets are never written in clear in the file: any value may be
``{"$env": "NAME"}`` and is then read from the environment. Google's client
settings come from the ``client_secret.json`` the API Console downloads (its
``web`` section): it is the source of truth for its ``client_id``,
``client_secret``, ``auth_uri``, ``token_uri`` and
``auth_provider_x509_cert_url``, and the same key given in the YAML with
another value is an error naming both. Google's real values are the defaults.
Every problem raises :class:`~tornado_signin.errors.ConfigError` naming the
key, in this order: all unknown keys at once, then unknown backends (with the closest valid name),
then the client secrets file, then everything else.

Outside ``development: true`` the configuration refuses plain ``http://``
Google endpoints, loopback endpoints (the emulator's), and the
``OAUTHLIB_INSECURE_TRANSPORT`` environment variable.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, get_type_hints
from urllib.parse import urlsplit

import yaml

from . import plugins
from .errors import ConfigError

__all__ = [
    "normalize_path_prefix",
    "Config",
    "ServerConfig",
    "GoogleConfig",
    "GoogleEndpoints",
    "StoreConfig",
    "HubConfig",
    "LimitsConfig",
    "RiscConfig",
    "load_config",
    "config_from_dict",
    "check_keys",
    "GOOGLE_ISSUERS",
]

GOOGLE_ISSUERS = ("https://accounts.google.com", "accounts.google.com")
DEFAULT_SCOPES = ("openid", "email", "profile")
GIS_SCRIPT_URL = "https://accounts.google.com/gsi/client"
GAPI_SCRIPT_URL = "https://apis.google.com/js/platform.js"


@dataclass(frozen=True)
class GoogleEndpoints:
    """Where Google (or the emulator standing in for it) answers. Defaults are Google's."""

    auth_uri: str = "https://accounts.google.com/o/oauth2/v2/auth"
    token_uri: str = "https://oauth2.googleapis.com/token"
    revoke_uri: str = "https://oauth2.googleapis.com/revoke"
    userinfo_uri: str = "https://openidconnect.googleapis.com/v1/userinfo"
    certs_uri: str = "https://www.googleapis.com/oauth2/v1/certs"
    jwks_uri: str = "https://www.googleapis.com/oauth2/v3/certs"
    #: Which certs document verification uses: ``pem`` (v1 map) or ``jwks`` (v3).
    certs_format: str = "jwks"

    @classmethod
    def for_base_url(cls, base_url: str, certs_format: str = "jwks") -> "GoogleEndpoints":
        """Return endpoints at Google's paths under ``base_url`` (the emulator's layout)."""
        base = base_url.rstrip("/")
        return cls(
            auth_uri=f"{base}/o/oauth2/v2/auth",
            token_uri=f"{base}/token",
            revoke_uri=f"{base}/revoke",
            userinfo_uri=f"{base}/v1/userinfo",
            certs_uri=f"{base}/oauth2/v1/certs",
            jwks_uri=f"{base}/oauth2/v3/certs",
            certs_format=certs_format,
        )

    @property
    def verification_certs_uri(self) -> str:
        """Return the certs URL verification fetches, per ``certs_format``."""
        return self.jwks_uri if self.certs_format == "jwks" else self.certs_uri


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    cookie_secret: str = ""
    #: Origins allowed to POST codes and open the websocket. Empty: the server's own origin.
    allowed_origins: tuple[str, ...] = ()
    #: The public origin of the app (``https://app.example.com``) when behind a proxy.
    public_origin: str | None = None
    #: Trust ``X-Forwarded-*`` from a proxy (only behind one that sets them).
    xheaders: bool = False
    processes: int = 1
    #: Where every route of tornado-signin is mounted ("/auth"); "" for the root (see :func:`path_prefix`).
    path_prefix: str = ""


@dataclass(frozen=True)
class GoogleConfig:
    client_id: str
    client_secret: str
    scopes: tuple[str, ...] = DEFAULT_SCOPES
    redirect_uri: str = "postmessage"
    client_library: str = "gis"
    client_script_url: str = GIS_SCRIPT_URL
    hosted_domains: tuple[str, ...] = ()
    clock_skew_seconds: int = 60
    endpoints: GoogleEndpoints = field(default_factory=GoogleEndpoints)
    #: Deadline of every outbound call to Google, in seconds.
    request_timeout: float = 10.0
    #: The client's Authorized JavaScript origins as client_secret.json lists them (not a key of the YAML).
    javascript_origins: tuple[str, ...] = ()


@dataclass(frozen=True)
class StoreConfig:
    backend: str = "sql"
    #: The backend's own options, passed as keyword arguments.
    options: Mapping[str, Any] = field(default_factory=dict)
    encryption_keys: tuple[str, ...] = ()


@dataclass(frozen=True)
class HubConfig:
    backend: str = "memory"
    url: str | None = None
    #: Prefix of every key and channel the hub uses (redis); None: the hub's default.
    key_prefix: str | None = None


@dataclass(frozen=True)
class LimitsConfig:
    """Transport and abuse limits (see the README's security section)."""

    max_body_bytes: int = 4096
    max_code_length: int = 512
    state_ttl_seconds: int = 600
    worker_threads: int = 8
    worker_queue: int = 64
    header_timeout: float = 10.0
    body_timeout: float = 10.0
    websocket_ping_interval: float = 20.0
    #: At most the ping interval (Tornado warns otherwise): a peer silent this long after a ping is dropped.
    websocket_ping_timeout: float = 15.0
    websocket_max_message_bytes: int = 1024
    #: Code POSTs per client address per minute (0 disables); like every *_per_minute, deployment-wide.
    code_posts_per_minute: int = 30
    #: Page loads and GET /state per client address per minute (each issues a state).
    state_requests_per_minute: int = 60
    #: POST /signout per client address per minute.
    signout_posts_per_minute: int = 30
    #: POST /disconnect per client address per minute.
    disconnect_posts_per_minute: int = 10
    #: /confirm handshakes per client address per minute.
    socket_handshakes_per_minute: int = 120
    #: Outstanding (issued, unspent) states per session; issuing one more forgets the oldest.
    states_per_session: int = 8
    session_max_age_days: int = 14
    #: Time-limited access: the page and the host app are told this many seconds before it ends.
    access_expiry_notice_seconds: float = 3600.0
    #: Seconds between background checks of the token store (readiness and the login gate).
    store_check_interval: float = 5.0
    #: While the store is marked down, a login re-probes it at most this often (seconds).
    store_recheck_interval: float = 1.0
    #: Seconds a graceful shutdown waits for in-flight requests (SIGTERM).
    shutdown_grace: float = 10.0
    #: Client connections (HTTP and websockets) one process holds; 0: RLIMIT_NOFILE less descriptor_reserve.
    max_connections: int = 0
    #: Descriptors kept free of client connections, for the store, the hub, Google and logs.
    descriptor_reserve: int = 64
    #: HTTP connections one peer address holds open, per process (0 disables; not applied with server.xheaders).
    connections_per_address: int = 128
    #: Open /confirm websockets per browser session, per process (0 disables).
    sockets_per_session: int = 16
    #: Open /confirm websockets per client address, per process (0 disables).
    sockets_per_address: int = 128


RISC_CONFIGURATION_URL = "https://accounts.google.com/.well-known/risc-configuration"
RISC_MANAGEMENT_URL = "https://risc.googleapis.com/v1beta"


@dataclass(frozen=True)
class RiscConfig:
    """Cross-Account Protection (RISC): the security-event receiver and its registration."""

    #: Serve ``POST <prefix>/risc`` (security event tokens from Google).
    enabled: bool = False
    #: Google's RISC configuration document (issuer and jwks_uri of the SETs).
    configuration_url: str = RISC_CONFIGURATION_URL
    #: The service-account key (JSON) the management API is called with (``risc register|status|verify``).
    service_account_file: str | None = None
    #: Base URL of the RISC management API (``stream:update``, ``stream:verify``, ``stream/status``).
    management_url: str = RISC_MANAGEMENT_URL
    #: Audiences accepted besides ``google.client_id`` (the project's other OAuth clients).
    client_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class Config:
    google: GoogleConfig
    server: ServerConfig = field(default_factory=ServerConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    hub: HubConfig = field(default_factory=HubConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    risc: RiscConfig = field(default_factory=RiscConfig)
    development: bool = False
    log_level: str = "INFO"
    #: ``text`` (one line, with the request id) or ``json`` (one object per line).
    log_format: str = "text"

    def with_changes(self, **changes: Any) -> "Config":
        """Return a copy with top-level sections replaced (sections are frozen)."""
        return replace(self, **changes)


# --------------------------------------------------------------------------- valid keys

#: Keys of the file that are not fields of their section's dataclass.
_EXTRA_KEYS: dict[type, tuple[str, ...]] = {GoogleConfig: ("client_secrets_file",)}
#: Fields of a section's dataclass that are not keys of the file (they come from elsewhere).
_NOT_KEYS: dict[type, tuple[str, ...]] = {GoogleConfig: ("javascript_origins",)}


def _key_tree(cls: type) -> dict[str, Any]:
    """Return the valid keys of the section ``cls`` reads: a name maps to None or to its sub-section's tree.

    Derived from the dataclasses, so a new field is a valid key without a
    second list to keep in step. ``store`` is not here: its keys depend on
    the backend (see :func:`_check_store_keys`).
    """
    hints = get_type_hints(cls)
    tree: dict[str, Any] = {}
    for f in fields(cls):
        if f.name in _NOT_KEYS.get(cls, ()):
            continue
        kind = hints.get(f.name)
        tree[f.name] = _key_tree(kind) if isinstance(kind, type) and is_dataclass(kind) else None
    for name in _EXTRA_KEYS.get(cls, ()):
        tree[name] = None
    return tree


def _is_env_ref(value: Any) -> bool:
    return isinstance(value, Mapping) and set(value) == {"$env"}


def _all_keys(tree: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for name, sub in tree.items():
        key = f"{prefix}.{name}" if prefix else name
        out.append(key)
        if isinstance(sub, dict):
            out.extend(_all_keys(sub, key))
    return out


@dataclass(frozen=True)
class _UnknownKey:
    """One unknown key: its dotted name, what it is (``unknown``, ``unknown option of backend 'sql'``), the hint."""

    key: str
    what: str
    hint: str  # "did you mean 'server'?" or "valid here: a, b"


def _unknown_key(prefix: str, name: Any, valid: list[str], everywhere: list[str], what: str = "unknown") -> _UnknownKey:
    """Return the unknown key ``name`` at ``prefix`` with the closest valid key (or the valid ones there)."""
    name = str(name)
    key = f"{prefix}.{name}" if prefix else name
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
    suggestion: str | None
    if close:
        suggestion = f"{prefix}.{close[0]}" if prefix else close[0]
    else:
        # The right name in the wrong section (token_uri directly under google:).
        elsewhere = [k for k in everywhere if k.rsplit(".", 1)[-1] == name]
        suggestion = elsewhere[0] if elsewhere else None
    hint = f"did you mean {suggestion!r}?" if suggestion else f"valid here: {', '.join(sorted(valid)) or 'none'}"
    return _UnknownKey(key, what, hint)


def _unknown_keys_error(unknown: list[_UnknownKey]) -> ConfigError:
    """Return ONE error naming every unknown key, each with its hint; it is keyed by the first."""
    first, rest = unknown[0], unknown[1:]
    message = f"{first.what}; {first.hint}" if first.hint.startswith("did") else f"{first.what} ({first.hint})"
    if rest:
        message += " Also unknown: " + ", ".join(
            f"{u.key!r} ({'' if u.what == 'unknown' else u.what + '; '}{u.hint})" for u in rest)
    return ConfigError(first.key, message)


def _check_keys(data: Any, tree: dict[str, Any], prefix: str, everywhere: list[str],
                found: list[_UnknownKey]) -> None:
    """Add to ``found`` every key of ``data`` (and of its known sections) that ``tree`` does not have."""
    if not isinstance(data, Mapping) or _is_env_ref(data):
        return  # not a section: the typed read reports it
    for name in data:  # in the document's order
        if name not in tree:
            found.append(_unknown_key(prefix, name, list(tree), everywhere))
        elif isinstance(tree[name], dict):
            _check_keys(data[name], tree[name], f"{prefix}.{name}" if prefix else name, everywhere, found)


def _check_backend_name(value: Any, group: plugins.PluginGroup) -> str | None:
    """Return the backend name when it is installed in ``group``; raise ConfigError listing the installed ones."""
    if not isinstance(value, str):
        return None  # the typed read reports it
    installed = sorted(plugins.entry_points(group))
    if value in installed:
        return value
    close = difflib.get_close_matches(value, installed, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ConfigError(f"{group.config_key}.backend", f"no {group.kind} {value!r} is installed{hint} (installed in "
                                                     f"entry-point group {group.name!r}: {', '.join(installed) or 'none'})")


def _check_store_keys(data: Any, everywhere: list[str], found: list[_UnknownKey]) -> None:
    """Add the store section's unknown options to ``found``; raise ConfigError for an unknown backend
    only when no unknown key was found (the typos come first, all of them)."""
    if not isinstance(data, Mapping) or _is_env_ref(data):
        return
    unknown_backend: ConfigError | None = None
    try:
        backend = _check_backend_name(data.get("backend", "sql"), plugins.STORES)
    except ConfigError as error:
        backend, unknown_backend = None, error
    options = plugins.option_names(plugins.STORES, backend) if backend else None
    if options is not None:
        tree: dict[str, Any] = {"backend": None, "encryption": {"keys": None}, **{o: None for o in options}}
        found.extend(_unknown_key("store", k, list(tree), everywhere, what=f"unknown option of backend {backend!r}")
                     for k in data if k not in tree)
    _check_keys(data.get("encryption"), {"keys": None}, "store.encryption", everywhere, found)
    if unknown_backend is not None and not found:
        raise unknown_backend


def check_keys(data: Any) -> None:
    """Raise ONE ConfigError naming every unknown key of the document (each with the closest valid key),
    or else the first unknown store or hub backend.

    Run before anything else reads the document, so that a typo is reported
    as itself (with the closest valid key) rather than as the key it hides
    being missing.
    """
    if not isinstance(data, Mapping):
        return
    tree = _key_tree(Config)
    everywhere = _all_keys({**tree, "store": {"backend": None, "encryption": {"keys": None}}})
    found: list[_UnknownKey] = []
    _check_keys(data, {**tree, "store": None}, "", everywhere, found)  # store: its keys depend on the backend
    _check_store_keys(data.get("store"), everywhere, found)
    if found:
        # In the document's order: the store section's options were read after the rest.
        order = {str(name): index for index, name in enumerate(data)}
        found.sort(key=lambda u: order.get(u.key.split(".", 1)[0], len(order)))
        raise _unknown_keys_error(found)
    hub = data.get("hub")
    if isinstance(hub, Mapping) and not _is_env_ref(hub):
        _check_backend_name(hub.get("backend", "memory"), plugins.HUBS)


# --------------------------------------------------------------------------- reading


def _resolve_env(value: Any, key: str, environ: Mapping[str, str]) -> Any:
    if isinstance(value, Mapping):
        if set(value) == {"$env"}:
            name = value["$env"]
            if not isinstance(name, str) or name not in environ:
                raise ConfigError(key, f"environment variable {name!r} is not set")
            return environ[name]
        return {k: _resolve_env(v, f"{key}.{k}" if key else str(k), environ) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve_env(v, f"{key}[{i}]", environ) for i, v in enumerate(value)]
    return value


class _Section:
    """Typed reads of one mapping of the YAML file, each naming its full key on error."""

    def __init__(self, data: Any, prefix: str) -> None:
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise ConfigError(prefix, "must be a mapping" if prefix else "the top level must be a mapping of keys "
                                                                          "(development:, server:, google:, store: …)")
        self.data = dict(data)
        self.prefix = prefix
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def raw(self, name: str, default: Any = None) -> Any:
        self.used.add(name)
        return self.data.get(name, default)

    def string(self, name: str, default: str | None = None, *, required: bool = False) -> str | None:
        value = self.raw(name, default)
        if value is None:
            if required:
                raise ConfigError(self.key(name), "is required")
            return None
        if not isinstance(value, str):
            raise ConfigError(self.key(name), f"must be a string, not {type(value).__name__}")
        return value

    def integer(self, name: str, default: int, *, minimum: int = 0, maximum: int | None = None) -> int:
        value = self.raw(name, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(self.key(name), "must be an integer")
        if value < minimum or (maximum is not None and value > maximum):
            raise ConfigError(self.key(name), f"must be between {minimum} and {maximum if maximum is not None else 'any'}")
        return value

    def number(self, name: str, default: float, *, minimum: float = 0.0) -> float:
        value = self.raw(name, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(self.key(name), "must be a number")
        if value < minimum:
            raise ConfigError(self.key(name), f"must be at least {minimum}")
        return float(value)

    def boolean(self, name: str, default: bool) -> bool:
        value = self.raw(name, default)
        if not isinstance(value, bool):
            raise ConfigError(self.key(name), "must be true or false")
        return value

    def strings(self, name: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
        value = self.raw(name, list(default))
        if isinstance(value, str):
            value = value.split()
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(self.key(name), "must be a list of strings")
        return tuple(value)

    def section(self, name: str) -> "_Section":
        return _Section(self.raw(name), self.key(name))

    def reject_unknown(self, allowed_extra: frozenset[str] = frozenset()) -> None:
        unknown = set(self.data) - self.used - allowed_extra
        if unknown:
            name, *rest = sorted(unknown, key=str)
            also = f" (also unknown: {', '.join(repr(self.key(r)) for r in rest)})" if rest else ""
            raise ConfigError(self.key(name), f"unknown key (see config.example.yaml for the valid keys){also}")


#: The fields of a client_secret.json ``web`` section that the config reads, and the keys they stand for.
_FILE_FIELDS = {
    "client_id": "google.client_id",
    "client_secret": "google.client_secret",
    "auth_uri": "google.endpoints.auth_uri",
    "token_uri": "google.endpoints.token_uri",
    "auth_provider_x509_cert_url": "google.endpoints.certs_uri",
}
_PLACEHOLDER = re.compile(r"your|client[_-]?id|placeholder|change[_-]?me|example|xxx|\.\.\.|\u2026|[<>{}]", re.I)


def _read_client_secrets(path: Path, key: str) -> dict[str, Any]:
    """Return the ``web`` section of the client_secret.json at ``path``, its fields checked.

    Raise ConfigError naming ``key`` and the file, saying what is wrong with it.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(key, f"file not found: {path}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(key, f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from exc
    try:
        document = json.loads(text)
    except ValueError as exc:
        where = f" (line {exc.lineno} column {exc.colno})" if isinstance(exc, json.JSONDecodeError) else ""
        raise ConfigError(key, f"{path} is not JSON{where}: download the client's JSON again "
                               "from the Google API Console") from exc
    if not isinstance(document, dict):
        raise ConfigError(key, f"{path} is not Google's client secrets JSON (an object with a 'web' section)")
    web = document.get("web")
    if not isinstance(web, dict):
        if "installed" in document:
            raise ConfigError(key, f"{path} is an 'installed' (desktop) client; the one-time-code flow needs "
                                   "a 'web' client ('Web application' in the Google API Console)")
        raise ConfigError(key, f"{path} has no 'web' section (download the JSON of a 'Web application' client)")
    for name in _FILE_FIELDS:
        value = web.get(name)
        if value is not None and (not isinstance(value, str) or not value):
            raise ConfigError(key, f"{path}: web.{name} must be a non-empty string")
    if not web.get("client_id"):
        raise ConfigError(key, f"{path}: web.client_id is missing")
    return web


def _one_source(yaml_value: str | None, web: dict[str, Any], name: str, path: Path | None,
                *, secret: bool = False) -> str | None:
    """Return the value of a key the client secrets file may also hold; the file is the source of truth.

    Raise ConfigError naming both places when the config gives another value
    than the file (a secret's values are never shown).
    """
    file_value = web.get(name)
    if yaml_value is None or file_value is None or yaml_value == file_value:
        return file_value if file_value is not None else yaml_value
    shown = "" if secret else f" ({yaml_value!r} here, {file_value!r} in the file)"
    raise ConfigError(_FILE_FIELDS[name], f"differs from web.{name} in {path}{shown}: the file is the "
                                          f"source of truth, remove {_FILE_FIELDS[name]} from the config")


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _is_google_host(host: str) -> bool:
    host = host.lower().rstrip(".")
    return host in ("google.com", "googleapis.com") or host.endswith((".google.com", ".googleapis.com"))


def _check_endpoint(url: str, key: str, development: bool, *, google_only: bool = True) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(key, "must be an absolute http(s) URL")
    if development:
        if parts.scheme == "http" and not _is_loopback(parts.hostname):
            raise ConfigError(key, "plain http:// is allowed only on loopback, even in development")
        return url
    if parts.scheme != "https":
        raise ConfigError(key, "must use https:// outside development (set development: true to use the emulator)")
    if _is_loopback(parts.hostname):
        raise ConfigError(key, "points at a loopback address (the emulator?) outside development")
    # The certs URL decides which keys sign trusted ID tokens: outside
    # development only Google's own hosts may stand behind these endpoints.
    if google_only and not _is_google_host(parts.hostname):
        raise ConfigError(key, "must be a Google host (*.google.com, *.googleapis.com) outside development")
    return url


def _origin(url: str, key: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/") or parts.query:
        raise ConfigError(key, f"{url!r} is not an origin (scheme://host[:port])")
    return f"{parts.scheme}://{parts.netloc}".lower()


#: One path segment of a prefix: RFC 3986 unreserved characters only (no escapes, no "." or ".." segments).
_PREFIX_SEGMENT = re.compile(r"[A-Za-z0-9._~-]+")
MAX_PATH_PREFIX = 200


def normalize_path_prefix(value: Any) -> str:
    """Return ``value`` as a mount prefix: ``""`` (the root) or ``/seg[/seg…]`` without a trailing slash.

    ``None``, ``""`` and ``"/"`` mean the root. Raise ValueError for anything
    else that is not an absolute path of unreserved characters: a prefix is
    spliced into URL routes, cookie-free URLs of the page and its CSP, so
    escapes, dot segments, ``//`` (a scheme-relative URL in the page) and
    query or fragment characters are refused rather than interpreted.
    """
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"must be a string, not {type(value).__name__}")
    if value in ("", "/"):
        return ""
    if len(value) > MAX_PATH_PREFIX:
        raise ValueError(f"must be at most {MAX_PATH_PREFIX} characters")
    if not value.startswith("/"):
        raise ValueError(f"{value!r} must start with '/' (e.g. /auth)")
    trimmed = value[:-1] if value.endswith("/") else value
    segments = trimmed[1:].split("/")
    if not all(_PREFIX_SEGMENT.fullmatch(segment) and segment not in (".", "..") for segment in segments):
        raise ValueError(f"{value!r} must be /segment[/segment...] of letters, digits and -._~ (no '.' or '..')")
    return trimmed


def _path_prefix(value: Any, key: str) -> str:
    try:
        return normalize_path_prefix(value)
    except ValueError as exc:
        raise ConfigError(key, str(exc)) from None


def _file_origins(web: dict[str, Any]) -> tuple[str, ...]:
    """Return the file's ``javascript_origins`` normalised as origins; () when absent or not a list of strings."""
    origins = web.get("javascript_origins")
    if not isinstance(origins, list) or not all(isinstance(o, str) for o in origins):
        return ()
    return tuple(o.rstrip("/").lower() for o in origins)


_RELATIVE_SQLITE = re.compile(r"^(sqlite(?:\+\w+)?:///)(?!/)(?!file:)(?!:memory:)([^?]+)(\?.*)?$")


def _sqlite_url_from(url: str, base_dir: Path) -> str:
    """Return ``url`` with a relative SQLite path made absolute under ``base_dir`` (the config file's folder).

    As the file store's path and google.client_secrets_file: the CLI run from
    another folder opens the same database instead of creating an empty one
    there. Other URLs (absolute paths, ``:memory:``, ``file:`` URIs, servers)
    are returned unchanged.
    """
    match = _RELATIVE_SQLITE.match(url)
    if match is None:
        return url
    scheme, path, query = match.groups()
    return f"{scheme}{base_dir / path}{query or ''}"


def _client_secrets(data: Any, base_dir: Path, environ: Mapping[str, str]) -> tuple[Path | None, dict[str, Any]]:
    """Return the path and ``web`` section of ``google.client_secrets_file`` (None and {} when unset)."""
    google = data.get("google") if isinstance(data, Mapping) else None
    if not isinstance(google, Mapping) or google.get("client_secrets_file") is None:
        return None, {}
    key = "google.client_secrets_file"
    name = _resolve_env(google["client_secrets_file"], key, environ)
    if not isinstance(name, str) or not name:
        raise ConfigError(key, "must be the path of a client_secret.json")
    path = Path(name).expanduser()
    path = path if path.is_absolute() else base_dir / path
    return path, _read_client_secrets(path, key)


def config_from_dict(data: Any, *, base_dir: Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Build and validate a Config from the parsed YAML document.

    ``base_dir`` resolves relative paths (the config file's folder).
    Raise ConfigError naming the key of the first problem found.
    """
    environ = os.environ if environ is None else environ
    base_dir = base_dir or Path.cwd()
    # Typos first: a misspelt key would otherwise surface as the key it hides
    # being missing. Then the client secrets file, which holds most of google:.
    check_keys(data)
    secrets_path, web = _client_secrets(data, base_dir, environ)
    data = _resolve_env(data if data is not None else {}, "", environ)
    root = _Section(data, "")
    development = root.boolean("development", False)
    log_level = (root.string("log_level", "INFO") or "INFO").upper()
    if log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError("log_level", "must be DEBUG, INFO, WARNING or ERROR")
    log_format = root.string("log_format", "text") or "text"
    if log_format not in ("text", "json"):
        raise ConfigError("log_format", "must be text or json")
    if not development and environ.get("OAUTHLIB_INSECURE_TRANSPORT"):
        raise ConfigError("development", "OAUTHLIB_INSECURE_TRANSPORT is set outside development; unset it")

    # server
    srv = root.section("server")
    cookie_secret = srv.string("cookie_secret", "") or ""
    if len(cookie_secret) < 32:
        raise ConfigError("server.cookie_secret", "is required and must be at least 32 characters (use {\"$env\": NAME})")
    allowed = tuple(_origin(o, f"server.allowed_origins[{i}]") for i, o in enumerate(srv.strings("allowed_origins")))
    public_origin = srv.string("public_origin")
    server = ServerConfig(
        host=srv.string("host", "127.0.0.1") or "127.0.0.1",
        # 0 would bind a random port the origins and the emulator's client cannot name (as --port refuses it).
        port=srv.integer("port", 8080, minimum=1, maximum=65535),
        cookie_secret=cookie_secret,
        allowed_origins=allowed,
        public_origin=_origin(public_origin, "server.public_origin") if public_origin else None,
        xheaders=srv.boolean("xheaders", False),
        processes=srv.integer("processes", 1, minimum=0, maximum=256),
        path_prefix=_path_prefix(srv.raw("path_prefix"), "server.path_prefix"),
    )
    srv.reject_unknown()

    # google
    g = root.section("google")
    g.string("client_secrets_file")  # read above, before the environment
    client_id = _one_source(g.string("client_id"), web, "client_id", secrets_path)
    if not client_id:
        raise ConfigError("google.client_id", "is required (or set google.client_secrets_file)")
    if not development and _PLACEHOLDER.search(client_id):
        raise ConfigError("google.client_id", f"{client_id!r} is a placeholder: set google.client_secrets_file "
                                              "to the client_secret.json of your Web application client")
    client_secret = _one_source(g.string("client_secret"), web, "client_secret", secrets_path, secret=True)
    if not client_secret and secrets_path is not None:
        raise ConfigError("google.client_secrets_file", f"{secrets_path} has no web.client_secret: download the "
                                                        "client's JSON again from the Google API Console")
    if not client_secret:
        raise ConfigError("google.client_secret", "is required (or set google.client_secrets_file)")
    defaults = GoogleEndpoints()
    ep = g.section("endpoints")
    certs_format = ep.string("certs_format", "jwks")
    if certs_format not in ("jwks", "pem"):
        raise ConfigError("google.endpoints.certs_format", "must be 'jwks' or 'pem'")
    auth_uri = _one_source(ep.string("auth_uri"), web, "auth_uri", secrets_path) or defaults.auth_uri
    token_uri = _one_source(ep.string("token_uri"), web, "token_uri", secrets_path) or defaults.token_uri
    pem_uri = _one_source(ep.string("certs_uri"), web, "auth_provider_x509_cert_url", secrets_path) or defaults.certs_uri
    # Google's v1 (PEM) and v3 (JWKS) documents sit side by side; derive one from the other.
    jwks_default = pem_uri.replace("/oauth2/v1/certs", "/oauth2/v3/certs") if pem_uri != defaults.certs_uri else defaults.jwks_uri
    # Revoke and userinfo have no field in client_secret.json: Google's own
    # hosts use Google's defaults, a stand-in (the emulator) serves them
    # beside its token endpoint.
    token_host = urlsplit(token_uri).hostname or ""
    on_google = token_host.endswith(("google.com", "googleapis.com"))
    token_base = None if on_google else token_uri.rsplit("/", 1)[0]
    endpoints = GoogleEndpoints(
        auth_uri=_check_endpoint(auth_uri, "google.endpoints.auth_uri", development),
        token_uri=_check_endpoint(token_uri, "google.endpoints.token_uri", development),
        revoke_uri=_check_endpoint(
            ep.string("revoke_uri") or (f"{token_base}/revoke" if token_base else defaults.revoke_uri),
            "google.endpoints.revoke_uri", development),
        userinfo_uri=_check_endpoint(
            ep.string("userinfo_uri") or (f"{token_base}/v1/userinfo" if token_base else defaults.userinfo_uri),
            "google.endpoints.userinfo_uri", development),
        certs_uri=_check_endpoint(pem_uri, "google.endpoints.certs_uri", development),
        jwks_uri=_check_endpoint(ep.string("jwks_uri") or jwks_default, "google.endpoints.jwks_uri", development),
        certs_format=certs_format,
    )
    ep.reject_unknown()
    library = g.string("client_library", "gis")
    if library not in ("gis", "gapi"):
        raise ConfigError("google.client_library", "must be 'gis' (Google Identity Services) or 'gapi' (legacy gapi.auth2)")
    script_url = g.string("client_script_url") or (GIS_SCRIPT_URL if library == "gis" else GAPI_SCRIPT_URL)
    _check_endpoint(script_url, "google.client_script_url", development)
    scopes = g.strings("scopes", DEFAULT_SCOPES)
    if "openid" not in scopes and "profile" not in scopes and "email" not in scopes:
        raise ConfigError("google.scopes", "must include openid (or email/profile): the server needs an ID token")
    redirect_uri = g.string("redirect_uri", "postmessage") or "postmessage"
    if redirect_uri != "postmessage":
        _check_endpoint(redirect_uri, "google.redirect_uri", development, google_only=False)
    google = GoogleConfig(
        client_id=client_id,
        client_secret=client_secret,
        scopes=scopes,
        redirect_uri=redirect_uri,
        client_library=library,
        client_script_url=script_url,
        hosted_domains=tuple(d.lower() for d in g.strings("hosted_domains")),
        clock_skew_seconds=g.integer("clock_skew_seconds", 60, maximum=600),
        endpoints=endpoints,
        request_timeout=g.number("request_timeout", 10.0, minimum=0.1),
        javascript_origins=_file_origins(web),
    )
    g.reject_unknown()

    # store
    st = root.section("store")
    backend = st.string("backend", "sql") or "sql"
    enc = st.section("encryption")
    keys = enc.strings("keys")
    enc.reject_unknown()
    if not keys:
        raise ConfigError("store.encryption.keys", "at least one Fernet key is required (tornado-signin genkey)")
    options = {k: v for k, v in st.data.items() if k not in ("backend", "encryption")}
    if backend == "file" and "path" in options and not Path(options["path"]).is_absolute():
        options["path"] = str(base_dir / options["path"])
    if backend == "sql" and isinstance(options.get("url"), str):
        options["url"] = _sqlite_url_from(options["url"], base_dir)
    store = StoreConfig(backend=backend, options=options, encryption_keys=keys)

    # hub
    hb = root.section("hub")
    hub = HubConfig(backend=hb.string("backend", "memory") or "memory", url=hb.string("url"),
                    key_prefix=hb.string("key_prefix"))
    if hub.backend != "memory" and not hub.url:
        raise ConfigError("hub.url", f"is required for hub backend {hub.backend!r}")
    hb.reject_unknown()

    # limits
    lm = root.section("limits")
    defaults_l = LimitsConfig()
    limit_values: dict[str, Any] = {}
    for f in fields(LimitsConfig):
        default = getattr(defaults_l, f.name)
        if isinstance(default, float):
            limit_values[f.name] = lm.number(f.name, default)
        else:
            limit_values[f.name] = lm.integer(f.name, default)
    if limit_values["websocket_ping_timeout"] > limit_values["websocket_ping_interval"] > 0:
        raise ConfigError("limits.websocket_ping_timeout", "must not exceed limits.websocket_ping_interval")
    if limit_values["max_body_bytes"] > 64 * 1024:
        raise ConfigError("limits.max_body_bytes", "must be at most 65536: a one-time code is a few hundred bytes")
    lm.reject_unknown()

    # risc
    rc = root.section("risc")
    account_file = rc.string("service_account_file")
    if account_file and not Path(account_file).is_absolute():
        account_file = str(base_dir / account_file)
    risc = RiscConfig(
        enabled=rc.boolean("enabled", False),
        configuration_url=_check_endpoint(rc.string("configuration_url") or RISC_CONFIGURATION_URL,
                                          "risc.configuration_url", development),
        service_account_file=account_file or None,
        management_url=_check_endpoint(rc.string("management_url") or RISC_MANAGEMENT_URL,
                                       "risc.management_url", development).rstrip("/"),
        client_ids=rc.strings("client_ids"),
    )
    rc.reject_unknown()

    root.reject_unknown()
    return Config(
        google=google, server=server, store=store, hub=hub, limits=LimitsConfig(**limit_values),
        risc=risc, development=development, log_level=log_level, log_format=log_format,
    )


def load_config(path: str | os.PathLike[str], *, environ: Mapping[str, str] | None = None) -> Config:
    """Read, resolve and validate the YAML config at ``path``; ``environ`` (default ``os.environ``) resolves
    ``{"$env": NAME}`` secrets.

    Raise ConfigError (naming the key, or ``config`` for an unreadable file).

    Example::

        from tornado_signin.config import load_config

        config = load_config("config.yaml")
        print(config.google.client_id, config.store.backend)
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("config", f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError("config", f"{path} is not valid YAML{where}") from exc
    return config_from_dict(data, base_dir=path.resolve().parent, environ=environ)
