"""Configuration: one YAML file, read once into frozen, typed objects and validated.

Secrets are never written in clear in the file: any value may be
``{"$env": "NAME"}`` and is then read from the environment. Google's client
settings come from the ``client_secret.json`` the API Console downloads (its
``web`` section), whose ``auth_uri``, ``token_uri`` and
``auth_provider_x509_cert_url`` set the endpoints; Google's real values are the
defaults. Every problem raises :class:`~tornado_signin.errors.ConfigError`
naming the key.

Outside ``development: true`` the configuration refuses plain ``http://``
Google endpoints, loopback endpoints (the emulator's), and the
``OAUTHLIB_INSECURE_TRANSPORT`` environment variable.
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from .errors import ConfigError

__all__ = [
    "Config",
    "ServerConfig",
    "GoogleConfig",
    "GoogleEndpoints",
    "StoreConfig",
    "HubConfig",
    "LimitsConfig",
    "load_config",
    "config_from_dict",
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
    #: Code POSTs per client address per minute (0 disables).
    code_posts_per_minute: int = 30
    session_max_age_days: int = 14
    #: Seconds between background checks of the token store (readiness and the login gate).
    store_check_interval: float = 5.0
    #: While the store is marked down, a login re-probes it at most this often (seconds).
    store_recheck_interval: float = 1.0
    #: Seconds a graceful shutdown waits for in-flight requests (SIGTERM).
    shutdown_grace: float = 10.0


@dataclass(frozen=True)
class Config:
    google: GoogleConfig
    server: ServerConfig = field(default_factory=ServerConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    hub: HubConfig = field(default_factory=HubConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    development: bool = False
    log_level: str = "INFO"
    #: ``text`` (one line, with the request id) or ``json`` (one object per line).
    log_format: str = "text"

    def with_changes(self, **changes: Any) -> "Config":
        """Return a copy with top-level sections replaced (sections are frozen)."""
        return replace(self, **changes)


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
            raise ConfigError(prefix, "must be a mapping")
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
            name = sorted(unknown)[0]
            raise ConfigError(self.key(name), "unknown key (see config.example.yaml for the valid keys)")


def _read_client_secrets(path: Path, key: str) -> dict[str, Any]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(key, f"file not found: {path}") from exc
    except (OSError, ValueError) as exc:
        raise ConfigError(key, f"cannot read {path} as Google client secrets JSON: {type(exc).__name__}") from exc
    if not isinstance(document, dict):
        raise ConfigError(key, "must be Google's client secrets JSON (an object with a 'web' section)")
    web = document.get("web")
    if not isinstance(web, dict):
        if "installed" in document:
            raise ConfigError(key, "is an 'installed' (desktop) client; the one-time-code flow needs a 'web' client")
        raise ConfigError(key, "has no 'web' section (download the JSON of a Web application client)")
    return web


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


def config_from_dict(data: Any, *, base_dir: Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Build and validate a Config from the parsed YAML document.

    ``base_dir`` resolves relative paths (the config file's folder).
    Raise ConfigError naming the key of the first problem found.
    """
    environ = os.environ if environ is None else environ
    base_dir = base_dir or Path.cwd()
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
        port=srv.integer("port", 8080, maximum=65535),
        cookie_secret=cookie_secret,
        allowed_origins=allowed,
        public_origin=_origin(public_origin, "server.public_origin") if public_origin else None,
        xheaders=srv.boolean("xheaders", False),
        processes=srv.integer("processes", 1, minimum=0, maximum=256),
    )
    srv.reject_unknown()

    # google
    g = root.section("google")
    web: dict[str, Any] = {}
    secrets_file = g.string("client_secrets_file")
    if secrets_file:
        path = Path(secrets_file)
        web = _read_client_secrets(path if path.is_absolute() else base_dir / path, g.key("client_secrets_file"))
    client_id = g.string("client_id") or web.get("client_id")
    if not client_id:
        raise ConfigError("google.client_id", "is required (or set google.client_secrets_file)")
    client_secret = g.string("client_secret") or web.get("client_secret")
    if not client_secret:
        raise ConfigError("google.client_secret", "is required (or set google.client_secrets_file)")
    defaults = GoogleEndpoints()
    ep = g.section("endpoints")
    certs_format = ep.string("certs_format", "jwks")
    if certs_format not in ("jwks", "pem"):
        raise ConfigError("google.endpoints.certs_format", "must be 'jwks' or 'pem'")
    auth_uri = ep.string("auth_uri") or web.get("auth_uri") or defaults.auth_uri
    token_uri = ep.string("token_uri") or web.get("token_uri") or defaults.token_uri
    pem_uri = ep.string("certs_uri") or web.get("auth_provider_x509_cert_url") or defaults.certs_uri
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

    root.reject_unknown()
    return Config(
        google=google, server=server, store=store, hub=hub, limits=LimitsConfig(**limit_values),
        development=development, log_level=log_level, log_format=log_format,
    )


def load_config(path: str | os.PathLike[str], *, environ: Mapping[str, str] | None = None) -> Config:
    """Read, resolve and validate the YAML config at ``path``.

    Raise ConfigError (naming the key, or ``config`` for an unreadable file).
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
