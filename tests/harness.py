"""A running app + emulator pair for endpoint and flow tests, and a cookie-keeping client.

Both servers listen on 127.0.0.1 on free ports inside the test's IOLoop
(pytest-tornado's ``io_loop``). :class:`PageClient` behaves like the page's
script: it keeps cookies, fetches ``/state``, posts codes with the headers
the page sends, and opens the ``/confirm`` websocket.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import yaml

from tornado.httpclient import AsyncHTTPClient, HTTPRequest, HTTPResponse
from tornado.testing import bind_unused_port
from tornado.websocket import websocket_connect

from tornado_signin.app import make_app, make_server
from tornado_signin.config import Config, config_from_dict
from tornado_signin.crypto import generate_key
from tornado_signin.emulator import Emulator, EmulatorClient

CLIENT_ID = "test-client.apps.googleusercontent.com"
CLIENT_SECRET = "GOCSPX-test-secret-0123456789"
COOKIE_SECRET = "test-cookie-secret-" + "x" * 32
ENCRYPTION_KEY = generate_key()


def self_signed_files(folder: Path) -> tuple[Path, Path]:
    """Write a self-signed certificate for 127.0.0.1 (valid from 5 minutes ago for a day) and its key into
    ``folder``; return their paths (certificate, key)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "tls-cert.pem", folder / "tls-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class FakeClock:
    """A clock that starts at real time and moves only when told (``clock.now += s`` or ``advance(s)``)."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def write_offline_config(folder: Path, key: str | None = None) -> tuple[Path, dict[str, str]]:
    """Write ``folder/config.yaml``: development, a SQLite store in ``folder``, Google unreachable (port 1),
    every secret by reference; return its path and the environment that holds the secrets (``TS_KEY``: ``key``,
    a new one by default). For the CLI and script tests that need no Google."""
    env = {"TS_COOKIE": COOKIE_SECRET, "TS_CLIENT_SECRET": "s" * 24, "TS_KEY": key or generate_key()}
    document = {
        "development": True,
        "server": {"cookie_secret": {"$env": "TS_COOKIE"}},
        "google": {"client_id": CLIENT_ID, "client_secret": {"$env": "TS_CLIENT_SECRET"},
                   "endpoints": {"auth_uri": "http://127.0.0.1:1/auth", "token_uri": "http://127.0.0.1:1/token",
                                 "certs_uri": "http://127.0.0.1:1/certs"}},
        "store": {"backend": "sql", "url": f"sqlite:///{folder / 'tokens.sqlite3'}",
                  "encryption": {"keys": [{"$env": "TS_KEY"}]}},
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(document))
    return path, env


def make_config(app_origin: str, emulator_url: str, **overrides: Any) -> Config:
    """Return a development Config pointing at the emulator; ``overrides`` merge into sections."""
    data: dict[str, Any] = {
        "development": True,
        "server": {"cookie_secret": COOKIE_SECRET},
        "google": {
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "client_script_url": emulator_url + "/gsi/client",
            "endpoints": {
                "auth_uri": emulator_url + "/o/oauth2/v2/auth",
                "token_uri": emulator_url + "/token",
                "certs_uri": emulator_url + "/oauth2/v1/certs",
            },
        },
        "store": {"backend": "memory", "encryption": {"keys": [ENCRYPTION_KEY]}},
    }
    for section, values in overrides.items():
        if isinstance(values, dict) and isinstance(data.get(section), dict):
            for key, value in values.items():
                if isinstance(value, dict) and isinstance(data[section].get(key), dict):
                    data[section][key] = {**data[section][key], **value}
                else:
                    data[section][key] = value
        else:
            data[section] = values
    return config_from_dict(data, environ={})


@dataclass
class Stack:
    """The running pair."""

    app_url: str
    emulator: Emulator
    app: Any
    config: Config
    servers: list = field(default_factory=list)

    @property
    def ctx(self) -> Any:
        return self.app.settings["signin"]

    @property
    def store(self) -> Any:
        return self.ctx.store

    def client(self, origin: str | None = None) -> "PageClient":
        return PageClient(self.app_url, origin or self.app_url)

    def mint(self, email: str = "alice@example.com", scope: str = "openid email profile", **kw: Any) -> str:
        return self.emulator.mint_code(CLIENT_ID, email, scope, **kw)

    async def close(self) -> None:
        for server in self.servers:
            server.stop()
            await server.close_all_connections()
        await self.ctx.close()


async def start_stack(**config_overrides: Any) -> Stack:
    """Start the emulator and the app on free ports; return the Stack."""
    app_sock, app_port = bind_unused_port()
    emu_sock, emu_port = bind_unused_port()
    app_url = f"http://127.0.0.1:{app_port}"
    emulator_url = f"http://127.0.0.1:{emu_port}"
    emulator = Emulator(clients=[EmulatorClient(CLIENT_ID, CLIENT_SECRET, (app_url,))], base_url=emulator_url)
    from tornado.httpserver import HTTPServer

    emu_server = HTTPServer(emulator.make_app())
    emu_server.add_sockets([emu_sock])
    store = config_overrides.pop("store_instance", None)
    hooks = config_overrides.pop("hooks", None)
    config = make_config(app_url, emulator_url, **config_overrides)
    app = make_app(config, store=store, hooks=hooks)
    server = make_server(app, config)
    server.add_sockets([app_sock])
    return Stack(app_url=app_url, emulator=emulator, app=app, config=config, servers=[server, emu_server])


class PageClient:
    """What the page's script does, over HTTP, with a cookie jar."""

    def __init__(self, base_url: str, origin: str) -> None:
        self.base_url = base_url
        self.origin = origin
        self.cookies: dict[str, str] = {}
        self.http = AsyncHTTPClient()

    def cookie_header(self) -> str:
        return "; ".join(f"{k}={v}" for k, v in self.cookies.items())

    def _remember(self, response: HTTPResponse) -> None:
        for header in response.headers.get_list("Set-Cookie"):
            jar = SimpleCookie()
            jar.load(header)
            for name, morsel in jar.items():
                if morsel.value == "" or morsel["max-age"] == "0" or "1970" in (morsel["expires"] or ""):
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = morsel.value

    async def fetch(self, path: str, *, method: str = "GET", body: bytes | str | None = None,
                    headers: dict[str, str] | None = None, cookies: bool = True) -> HTTPResponse:
        all_headers = {}
        if cookies and self.cookies:
            all_headers["Cookie"] = self.cookie_header()
        all_headers.update(headers or {})
        if method == "POST" and body is None:
            body = b""
        request = HTTPRequest(self.base_url + path, method=method, body=body, headers=all_headers,
                              follow_redirects=False, allow_nonstandard_methods=True)
        response = await self.http.fetch(request, raise_error=False)
        self._remember(response)
        return response

    async def state(self) -> str:
        response = await self.fetch("/state")
        assert response.code == 200, response.code
        return json.loads(response.body)["state"]

    def gate_headers(self, state: str | None) -> dict[str, str]:
        headers = {"X-Requested-With": "XMLHttpRequest", "Origin": self.origin,
                   "Content-Type": "application/octet-stream; charset=utf-8"}
        if state is not None:
            headers["X-Signin-State"] = state
        return headers

    async def post_code(self, code: bytes | str, *, state: str | None = "fresh",
                        headers: dict[str, str | None] | None = None) -> HTTPResponse:
        """POST a code like the page does; ``headers`` values of None remove a header."""
        if state == "fresh":
            state = await self.state()
        all_headers = self.gate_headers(state)
        for key, value in (headers or {}).items():
            if value is None:
                all_headers.pop(key, None)
            else:
                all_headers[key] = value
        return await self.fetch("/storeauthcode", method="POST", body=code, headers=all_headers)

    async def post_gated(self, path: str) -> HTTPResponse:
        state = await self.state()
        return await self.fetch(path, method="POST", body=b"", headers=self.gate_headers(state))

    async def socket(self, *, origin: str | None = "same", cookies: bool = True) -> Any:
        headers = {}
        if origin == "same":
            headers["Origin"] = self.origin
        elif origin is not None:
            headers["Origin"] = origin
        if cookies and self.cookies:
            headers["Cookie"] = self.cookie_header()
        url = self.base_url.replace("http", "ws", 1) + "/confirm"
        return await websocket_connect(HTTPRequest(url, headers=headers))


def json_body(response: HTTPResponse) -> Any:
    return json.loads(response.body)


def without_state(document: dict[str, Any]) -> dict[str, Any]:
    """Return ``document`` (an answer of ``/storeauthcode`` or a frame ending an attempt) without its ``state``:
    the next single-use state, which it must carry."""
    state = document.get("state")
    assert isinstance(state, str) and state.count(".") == 2, document
    return {key: value for key, value in document.items() if key != "state"}


class LogCapture(logging.Handler):
    """Collects every formatted record (root at DEBUG) to search for secrets."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))

    def text(self) -> str:
        return "\n".join(self.lines)
