"""The sign-in mounted under a path prefix: ``signin_routes(ctx, prefix=…)`` and ``server.path_prefix``.

Every route of tornado-signin moves under the prefix (page, state, code
endpoint, socket, sign-out, disconnect, session, risc, health, metrics); the
old paths answer the JSON 404; the page's own URLs follow; the session cookie
stays at ``Path=/`` (the ``__Host-`` prefix requires it, and the host's own
handlers read it).
"""

from __future__ import annotations

import asyncio
import json
import re

import pytest
import requests
import yaml
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port
from tornado.web import Application, RequestHandler

from harness import CLIENT_ID, CLIENT_SECRET, ENCRYPTION_KEY, PageClient, json_body, make_config, start_stack
from procs import free_port, mint, start_emulator, start_server, write_config
from tornado_signin.app import NotFoundHandler, signin_routes, template_path
from tornado_signin.config import config_from_dict
from tornado_signin.emulator import Emulator, EmulatorClient
from tornado_signin.errors import ConfigError
from tornado_signin.wiring import build_context

pytestmark = pytest.mark.gen_test(timeout=30)

#: Every route of tornado-signin, by method, relative to the prefix.
ROUTES = [("GET", "/"), ("GET", "/state"), ("POST", "/storeauthcode"), ("GET", "/confirm"), ("POST", "/signout"),
          ("POST", "/disconnect"), ("GET", "/session"), ("GET", "/healthz"), ("GET", "/metrics"),
          ("POST", "/risc"), ("POST", "/api/userinfo"), ("GET", "/api/scopes")]


@pytest.fixture
def stack(io_loop):
    opened = io_loop.run_sync(lambda: start_stack(server={"path_prefix": "/auth"}, risc={"enabled": True}))
    yield opened
    io_loop.run_sync(opened.close)


def prefixed(stack) -> PageClient:
    return PageClient(stack.app_url + "/auth", stack.app_url)


async def test_full_signin_under_the_prefix(stack):
    client = prefixed(stack)
    page = await client.fetch("/")
    assert page.code == 200
    html = page.body.decode()
    assert 'id="signinButton"' in html
    # The page's script is told where its endpoints live.
    config = json.loads(re.search(r'<script type="application/json" id="tornado-signin-config">(.*?)</script>', html, re.S)[1])
    assert config["prefix"] == "/auth"
    cookie = page.headers["Set-Cookie"]
    assert "Path=/;" in cookie or cookie.endswith("Path=/")
    socket = await client.socket()
    response = await client.post_code(stack.mint("alice@example.com"))
    assert response.code == 200, response.body
    user = json_body(response)["user"]
    frame = json.loads(await asyncio.wait_for(socket.read_message(), 5))
    assert frame["type"] == "signed_in" and frame["user"] == user
    assert user["email"] == "alice@example.com"
    assert stack.store.get(user["sub"]).refresh_token
    for header in response.headers.get_list("Set-Cookie"):
        assert re.search(r"Path=/(;|$)", header), header
    # Sign-out under the prefix ends the session.
    signed_out = await client.post_gated("/signout")
    assert signed_out.code == 200, signed_out.body
    socket.close()


async def test_every_route_moves_under_the_prefix_and_old_paths_are_json_404(stack):
    old = stack.client()
    for method, path in ROUTES:
        response = await old.fetch(path, method=method)
        assert response.code == 404, (method, path, response.code)
        assert json_body(response) == {"error": "not found"}, path
        assert response.headers["Content-Type"].startswith("application/json")
    new = prefixed(stack)
    for method, path in ROUTES:
        response = await new.fetch(path, method=method)
        assert response.code != 404, (method, path)
    assert json_body(await new.fetch("/healthz")) == {"status": "ok"}
    assert "signin_logins_total" in (await new.fetch("/metrics")).body.decode()
    # The prefix itself leads to the page.
    bare = await old.fetch("/auth")
    assert bare.code in (301, 302) and bare.headers["Location"] == "/auth/"


async def test_signin_routes_with_a_prefix_beside_the_hosts_own_routes(io_loop):
    """A host application: its own ``/`` and ``/me`` beside the sign-in at ``/auth``."""
    app_sock, app_port = bind_unused_port()
    emu_sock, emu_port = bind_unused_port()
    app_url, emulator_url = f"http://127.0.0.1:{app_port}", f"http://127.0.0.1:{emu_port}"
    emulator = Emulator(clients=[EmulatorClient(CLIENT_ID, CLIENT_SECRET, (app_url,))], base_url=emulator_url)
    emu_server = HTTPServer(emulator.make_app())
    emu_server.add_sockets([emu_sock])
    config = make_config(app_url, emulator_url)
    ctx = build_context(config)

    class Home(RequestHandler):
        def get(self) -> None:
            self.write("host home")

    app = Application([(r"/", Home), *signin_routes(ctx, prefix="/auth")], signin=ctx,
                      cookie_secret=config.server.cookie_secret, template_path=template_path(),
                      default_handler_class=NotFoundHandler, default_handler_args={"ctx": ctx})
    server = HTTPServer(app)
    server.add_sockets([app_sock])
    try:
        assert ctx.path_prefix == "/auth"
        host = PageClient(app_url, app_url)
        assert (await host.fetch("/")).body == b"host home"
        assert (await host.fetch("/state")).code == 404
        client = PageClient(app_url + "/auth", app_url)
        response = await client.post_code(emulator.mint_code(CLIENT_ID, "bob@gmail.com", "openid email profile"))
        assert response.code == 200, response.body
    finally:
        server.stop()
        emu_server.stop()
        await ctx.close()


@pytest.mark.parametrize("value", ["auth", "/auth space", "/../x", "//evil.example", "/a/./b", "/a?b", "/a#b",
                                   "/a%2fb", "/" + "x" * 300, 5])
def test_bad_path_prefix_is_a_startup_error_naming_the_key(value):
    data = {"development": True, "server": {"cookie_secret": "c" * 40, "path_prefix": value},
            "google": {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET},
            "store": {"backend": "memory", "encryption": {"keys": [ENCRYPTION_KEY]}}}
    with pytest.raises(ConfigError) as info:
        config_from_dict(data, environ={})
    assert info.value.key == "server.path_prefix"


@pytest.mark.parametrize("value, expected", [("/auth", "/auth"), ("/auth/", "/auth"), ("/", ""), ("", ""),
                                             (None, ""), ("/a/b-c_d.e~f", "/a/b-c_d.e~f")])
def test_path_prefix_normalised(value, expected):
    data = {"development": True, "server": {"cookie_secret": "c" * 40, "path_prefix": value},
            "google": {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET},
            "store": {"backend": "memory", "encryption": {"keys": [ENCRYPTION_KEY]}}}
    assert config_from_dict(data, environ={}).server.path_prefix == expected


def test_signin_routes_refuses_a_bad_prefix(io_loop):
    config = make_config("http://127.0.0.1:1", "http://127.0.0.1:2")
    ctx = build_context(config)
    try:
        with pytest.raises(ValueError):
            signin_routes(ctx, prefix="auth")
    finally:
        io_loop.run_sync(ctx.close)


@pytest.fixture
def prefixed_server(tmp_path):
    """``tornado-signin emulator`` and ``tornado-signin serve --config`` with ``server.path_prefix: /auth``."""
    emulator_port, port = free_port(), free_port()
    emulator_url, app_url = f"http://127.0.0.1:{emulator_port}", f"http://127.0.0.1:{port}"
    config = write_config(tmp_path, name="prefix", emulator_url=emulator_url, origins=[app_url],
                          store={"backend": "sql", "url": f"sqlite:///{tmp_path / 'store.sqlite3'}"})
    document = yaml.safe_load(config.read_text())
    document["server"]["path_prefix"] = "/auth"
    config.write_text(yaml.safe_dump(document))
    emulator = start_emulator(tmp_path, config, emulator_port)
    server = start_server(tmp_path, config, port)
    yield app_url, emulator_url, server
    server.stop()
    emulator.stop()


def test_serve_with_path_prefix_as_a_subprocess(prefixed_server):
    """``tornado-signin serve --config`` with ``server.path_prefix``: a full sign-in under it, 404 at the root."""
    app_url, emulator_url, server = prefixed_server
    session = requests.Session()
    page = session.get(app_url + "/auth/", timeout=10)
    assert page.status_code == 200 and 'id="signinButton"' in page.text
    state = session.get(app_url + "/auth/state", timeout=10).json()["state"]
    answer = session.post(app_url + "/auth/storeauthcode", data=mint(emulator_url, "carol@example.org"),
                          headers={"X-Requested-With": "XMLHttpRequest", "Origin": app_url,
                                   "Content-Type": "application/octet-stream", "X-Signin-State": state},
                          timeout=10)
    assert answer.status_code == 200, answer.text
    assert answer.json()["user"]["email"] == "carol@example.org"
    assert session.get(app_url + "/auth/healthz", timeout=10).json() == {"status": "ok"}
    for path in ("/", "/state", "/healthz", "/metrics"):
        old = session.get(app_url + path, timeout=10)
        assert old.status_code == 404 and old.json() == {"error": "not found"}, path
    assert f"listening on {app_url}/auth/" in server.log()
