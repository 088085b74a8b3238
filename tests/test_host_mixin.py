"""The host mixin: ``current_user`` from the session cookie (through its live record), ``tornado.web.authenticated``
with ``login_url``, and ``await self.google_credentials(scopes=[…])`` in a host app built on a context."""

from __future__ import annotations

import time
import urllib.parse
from dataclasses import dataclass
from typing import Any

import pytest
import tornado.web
from google.oauth2.credentials import Credentials
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port

from harness import CLIENT_ID, CLIENT_SECRET, PageClient, json_body, make_config
from tornado_signin.app import NotFoundHandler, signin_routes, template_path
from tornado_signin.emulator import Emulator, EmulatorClient
from tornado_signin.errors import ConsentRequiredError, MissingScopeError
from tornado_signin.hooks import ConsentRequired, SigninHooks
from tornado_signin.store import TokenRecord
from tornado_signin.users import SignedInUser
from tornado_signin.web.host import SigninMixin
from tornado_signin.wiring import build_context

pytestmark = pytest.mark.gen_test(timeout=30)

DRIVE_READ = "https://www.googleapis.com/auth/drive.readonly"


class MeHandler(SigninMixin, tornado.web.RequestHandler):
    @tornado.web.authenticated
    def get(self) -> None:
        user = self.current_user
        assert isinstance(user, SignedInUser)
        self.write({"email": user.email, "sub": user.sub, "name": user.name})

    @tornado.web.authenticated
    def post(self) -> None:
        self.write("posted")


class WhoHandler(SigninMixin, tornado.web.RequestHandler):
    """Not protected: says who is signed in (or nobody)."""

    def get(self) -> None:
        user = self.get_current_user()
        self.write({"user": user.as_dict() if user else None})


class CredsHandler(SigninMixin, tornado.web.RequestHandler):
    @tornado.web.authenticated
    async def get(self) -> None:
        scopes = self.get_query_arguments("scope")
        try:
            creds = await self.google_credentials(scopes=scopes)
        except ValueError as exc:  # a malformed scope: the caller's bug, said before anything is read
            self.set_status(400)
            self.write({"bad_scope": str(exc)})
            return
        except MissingScopeError as exc:
            self.set_status(403)
            self.write({"missing": sorted(exc.missing), "consent": self.consent_url(scopes)})
            return
        except ConsentRequiredError:
            self.redirect(self.consent_url(scopes))
            return
        assert isinstance(creds, Credentials)
        self.write({"valid": creds.valid, "token": creds.token, "scopes": sorted(creds.scopes or ())})


class ForgetfulHandler(SigninMixin, tornado.web.RequestHandler):
    """Overrides prepare without calling super: get_current_user must refuse to guess."""

    def prepare(self) -> None:
        pass

    def get(self) -> None:
        try:
            self.get_current_user()
        except RuntimeError as exc:
            self.write({"error": str(exc)})


class PrepareHandler(SigninMixin, tornado.web.RequestHandler):
    """Overrides prepare and calls super first: current_user is known inside it."""

    async def prepare(self) -> None:
        await super().prepare()
        self.seen = self.current_user

    def get(self) -> None:
        self.write({"seen": self.seen.email if self.seen else None})


@dataclass
class Host:
    url: str
    emulator: Emulator
    ctx: Any
    servers: list

    def browser(self) -> PageClient:
        """A cookie jar on the host's origin (its own pages at the root)."""
        return PageClient(self.url, self.url)

    async def sign_in(self, email: str = "alice@example.com", scope: str = "openid email profile") -> PageClient:
        client = self.browser()
        signin = PageClient(self.url + "/auth", self.url)
        response = await signin.post_code(self.emulator.mint_code(CLIENT_ID, email, scope))
        assert response.code == 200, response.body
        client.cookies = signin.cookies
        return client


async def start_host(hooks: SigninHooks | None = None, **settings: Any) -> Host:
    app_sock, app_port = bind_unused_port()
    emu_sock, emu_port = bind_unused_port()
    url, emulator_url = f"http://127.0.0.1:{app_port}", f"http://127.0.0.1:{emu_port}"
    emulator = Emulator(clients=[EmulatorClient(CLIENT_ID, CLIENT_SECRET, (url,))], base_url=emulator_url)
    emu_server = HTTPServer(emulator.make_app())
    emu_server.add_sockets([emu_sock])
    config = make_config(url, emulator_url)
    ctx = build_context(config, hooks=hooks)
    routes = [(r"/me", MeHandler), (r"/who", WhoHandler), (r"/creds", CredsHandler),
              (r"/forgetful", ForgetfulHandler), (r"/prepare", PrepareHandler)]
    app = tornado.web.Application([*routes, *signin_routes(ctx, prefix="/auth")], signin=ctx,
                                  cookie_secret=config.server.cookie_secret,
                                  default_handler_class=NotFoundHandler, default_handler_args={"ctx": ctx},
                                  **{"template_path": template_path(), **settings})
    server = HTTPServer(app)
    server.add_sockets([app_sock])
    return Host(url=url, emulator=emulator, ctx=ctx, servers=[server, emu_server])


@pytest.fixture
def host(io_loop):
    opened = io_loop.run_sync(lambda: start_host(login_url="/login"))
    yield opened
    for server in opened.servers:
        server.stop()
    io_loop.run_sync(opened.ctx.close)


async def test_authenticated_redirects_to_login_url_without_a_session(host):
    browser = host.browser()
    response = await browser.fetch("/me")
    assert response.code == 302
    location = urllib.parse.urlsplit(response.headers["Location"])
    assert location.path == "/login" and urllib.parse.parse_qs(location.query) == {"next": ["/me"]}
    # Other methods: 403, as tornado.web.authenticated does.
    assert (await browser.fetch("/me", method="POST", body=b"")).code == 403
    assert json_body(await browser.fetch("/who")) == {"user": None}


async def test_signed_in_user_reaches_the_protected_page(host):
    browser = await host.sign_in("alice@example.com")
    response = await browser.fetch("/me")
    assert response.code == 200, response.body
    me = json_body(response)
    assert me["email"] == "alice@example.com" and me["sub"]
    assert json_body(await browser.fetch("/who"))["user"]["email"] == "alice@example.com"
    assert json_body(await browser.fetch("/prepare")) == {"seen": "alice@example.com"}


async def test_an_ended_session_is_signed_out_for_the_host_too(host):
    browser = await host.sign_in("bob@gmail.com")
    sub = json_body(await browser.fetch("/me"))["sub"]
    await host.ctx.sessions.end_all(sub, reason="risc_sessions_revoked")
    assert (await browser.fetch("/me")).code == 302
    assert json_body(await browser.fetch("/who")) == {"user": None}


async def test_a_forged_cookie_is_nobody(host):
    browser = host.browser()
    browser.cookies = {"signin_session": '{"sid":"' + "a" * 22 + '","sub":"123","email":"eve@example.com"}'}
    assert (await browser.fetch("/me")).code == 302


async def test_prepare_without_super_is_refused_not_guessed(host):
    browser = await host.sign_in()
    assert "super().prepare()" in json_body(await browser.fetch("/forgetful"))["error"]


async def test_login_url_defaults_to_the_sign_in_page_under_the_prefix(io_loop):
    opened = await start_host()
    try:
        response = await opened.browser().fetch("/me")
        assert response.code == 302
        assert response.headers["Location"].startswith("/auth/?next=")
    finally:
        for server in opened.servers:
            server.stop()
        await opened.ctx.close()


async def test_google_credentials_are_valid_and_refreshed_when_expired(host):
    browser = await host.sign_in("carol@example.org")
    first = json_body(await browser.fetch("/creds"))
    sub = json_body(await browser.fetch("/me"))["sub"]
    record = host.ctx.store.get(sub)
    assert first["valid"] is True and first["token"] == record.access_token
    # The stored access token ran out: the mixin's credentials are refreshed (and persisted).
    host.ctx.store.save(TokenRecord(sub=sub, access_token=record.access_token, access_token_expiry=time.time() - 10,
                                    access_token_issued_at=time.time()))
    second = json_body(await browser.fetch("/creds"))
    assert second["valid"] is True and second["token"] != record.access_token
    assert host.ctx.store.get(sub).access_token == second["token"]


async def test_google_credentials_refuse_a_malformed_scope_with_value_error(host):
    browser = await host.sign_in("alice@example.com")
    for scope in ("bad%20scope!", "drive%0Areadonly", "drive%09x", "%1B[31m"):
        response = await browser.fetch(f"/creds?scope={scope}")
        assert response.code == 400, (scope, response.body)
        assert json_body(response)["bad_scope"].startswith("malformed scope ")


async def test_missing_scope_and_consent_required(host):
    browser = await host.sign_in("alice@example.com")
    response = await browser.fetch("/creds?scope=drive.readonly")
    assert response.code == 403
    body = json_body(response)
    assert body["missing"] == [DRIVE_READ]
    consent = urllib.parse.urlsplit(body["consent"])
    assert consent.path == "/login"
    assert urllib.parse.parse_qs(consent.query) == {"scope": ["drive.readonly"], "next": ["/creds?scope=drive.readonly"]}
    # Granted incrementally: now the scope is there.
    granted = await host.sign_in("alice@example.com", scope="openid email profile " + DRIVE_READ)
    answer = json_body(await granted.fetch("/creds?scope=drive.readonly"))
    assert DRIVE_READ in answer["scopes"]
    # Revoked grant: consent required (a redirect to consent).
    sub = json_body(await granted.fetch("/me"))["sub"]
    host.ctx.store.save(TokenRecord(sub=sub, revoked_at=time.time() + 1))
    redirected = await granted.fetch("/creds")
    assert redirected.code == 302 and redirected.headers["Location"].startswith("/login?next=")
    # Forgotten user (disconnected elsewhere, the session kept): consent required, not a 500.
    host.ctx.store.delete(sub)
    assert (await granted.fetch("/creds")).code == 302


async def test_an_application_without_the_context_is_told_how_to_build_it(io_loop):
    app = tornado.web.Application([(r"/me", MeHandler)], cookie_secret="x" * 40, login_url="/login")
    server = HTTPServer(app)
    sock, port = bind_unused_port()
    server.add_sockets([sock])
    try:
        client = PageClient(f"http://127.0.0.1:{port}", "")
        response = await client.fetch("/me")
        assert response.code == 500
    finally:
        server.stop()
    with pytest.raises(RuntimeError, match=r'settings\["signin"\]'):
        SigninMixin.signin.fget(type("H", (), {"application": app})())  # type: ignore[union-attr]


async def test_google_credentials_tells_the_consent_required_hook(io_loop):
    seen: list[ConsentRequired] = []
    opened = await start_host(hooks=SigninHooks(on_consent_required=seen.append), login_url="/login")
    try:
        browser = await opened.sign_in("alice@example.com")
        sub = json_body(await browser.fetch("/me"))["sub"]
        assert (await browser.fetch("/creds?scope=drive.readonly")).code == 403
        assert seen == [ConsentRequired(sub=sub, reason="missing_scope", missing_scopes=(DRIVE_READ,))]
        opened.ctx.store.save(TokenRecord(sub=sub, revoked_at=time.time() + 1))
        assert (await browser.fetch("/creds")).code == 302
        assert seen[-1] == ConsentRequired(sub=sub, reason="not_active")
        opened.ctx.store.delete(sub)
        assert (await browser.fetch("/creds")).code == 302
        assert seen[-1] == ConsentRequired(sub=sub, reason="unknown_user")
    finally:
        for server in opened.servers:
            server.stop()
        await opened.ctx.close()


class HostForm(SigninMixin, tornado.web.RequestHandler):
    """The host's own form post: Tornado's XSRF check applies to it."""

    def post(self) -> None:
        self.write("posted")


async def test_a_host_app_with_xsrf_cookies_keeps_its_check_and_the_sign_in_works(io_loop):
    """tornado-signin's endpoints have their own, stricter gate (X-Requested-With, Origin, single-use state):
    an application with ``xsrf_cookies=True`` must not refuse them for want of an ``_xsrf`` field."""
    sock, port = bind_unused_port()
    emu_sock, emu_port = bind_unused_port()
    url, emulator_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{emu_port}"
    emulator = Emulator(clients=[EmulatorClient(CLIENT_ID, CLIENT_SECRET, (url,))], base_url=emulator_url)
    emu_server = HTTPServer(emulator.make_app())
    emu_server.add_sockets([emu_sock])
    config = make_config(url, emulator_url)
    ctx = build_context(config)
    app = tornado.web.Application([(r"/form", HostForm), (r"/me", MeHandler), *signin_routes(ctx, prefix="/auth")],
                                  signin=ctx, xsrf_cookies=True, login_url="/", template_path=template_path(),
                                  cookie_secret=config.server.cookie_secret)
    server = HTTPServer(app)
    server.add_sockets([sock])
    try:
        signin = PageClient(url + "/auth", url)
        response = await signin.post_code(emulator.mint_code(CLIENT_ID, "alice@example.com", "openid email profile"))
        assert response.code == 200, response.body
        assert (await signin.post_gated("/signout")).code == 200
        # The host's own POST still needs its XSRF token.
        assert (await PageClient(url, url).fetch("/form", method="POST", body=b"")).code == 403
    finally:
        server.stop()
        emu_server.stop()
        await ctx.close()


async def test_a_host_app_without_websocket_settings_still_caps_socket_frames(host):
    """The host app sets no ``websocket_max_message_size`` (as README's shows): /confirm still closes a socket
    sending more than ``limits.websocket_max_message_bytes`` (Tornado's default would take 10 MiB)."""
    import asyncio

    client = await host.sign_in()
    signin = PageClient(host.url + "/auth", host.url)
    signin.cookies = client.cookies
    sock = await signin.socket()
    await asyncio.wait_for(sock.read_message(), 3)  # the session's recorded outcome
    sock.write_message("x" * (host.ctx.config.limits.websocket_max_message_bytes + 1))
    assert await asyncio.wait_for(sock.read_message(), 3) is None


async def test_the_sign_in_page_renders_in_a_host_app_with_its_own_templates(io_loop, tmp_path):
    """README's host app sets ``template_path`` to its own folder: ``/auth/`` (where ``authenticated`` sends a
    visitor when the app has no ``login_url``) still renders tornado-signin's page (a 500 before)."""
    (tmp_path / "home.html").write_text("host page")
    opened = await start_host(template_path=str(tmp_path))
    try:
        redirected = await opened.browser().fetch("/me")
        assert redirected.code == 302 and redirected.headers["Location"].startswith("/auth/?next=")
        page = await opened.browser().fetch(redirected.headers["Location"])
        assert page.code == 200 and b'id="signinButton"' in page.body, page.body[:200]
        assert b'"next": "/me"' in page.body  # the page goes back there once signed in
        for elsewhere in ("//evil.example/x", "https://evil.example/", "/\\evil.example", "me", "/a\nb"):
            page = await opened.browser().fetch("/auth/?" + urllib.parse.urlencode({"next": elsewhere}))
            assert page.code == 200 and b'"next": null' in page.body, elsewhere
    finally:
        for server in opened.servers:
            server.stop()
        await opened.ctx.close()
