"""The host page's pieces: the ``SigninButton`` UI module, ``SigninMixin.set_signin_csp`` and ``signin_csp``."""

from __future__ import annotations

import re

import pytest
import tornado.web
from tornado.httpserver import HTTPServer
from tornado.template import DictLoader
from tornado.testing import bind_unused_port

from harness import CLIENT_ID, PageClient, make_config
from tornado_signin.app import signin_routes
from tornado_signin.web.host import UI_MODULES, SigninMixin, csp_header, signin_csp
from tornado_signin.wiring import build_context

pytestmark = pytest.mark.gen_test(timeout=30)

EMULATOR = "http://127.0.0.1:9"  # never called: the page only names it

TEMPLATES = {
    "home.html": '<!DOCTYPE html><title>home</title>{% module SigninButton(scopes=["drive.readonly"]) %}'
                 '<script nonce="{{ handler.csp_nonce }}">/* the host\'s own */</script>',
    "label.html": '{% module SigninButton("<b>Go</b> & \\"sign\\"", button_id="login") %}',
    "plain.html": "{% module SigninButton() %}",
}


class Home(SigninMixin, tornado.web.RequestHandler):
    def get(self) -> None:
        self.set_signin_csp({"img-src": ["https://lh3.googleusercontent.com"]})
        self.render(self.get_query_argument("page", "home.html"))


class NotMixin(tornado.web.RequestHandler):
    def get(self) -> None:
        self.render("plain.html")


@pytest.fixture
def host(io_loop):
    sock, port = bind_unused_port()
    url = f"http://127.0.0.1:{port}"
    config = make_config(url, EMULATOR)
    ctx = build_context(config)
    app = tornado.web.Application([(r"/", Home), (r"/plain", NotMixin), *signin_routes(ctx, prefix="/auth")],
                                  signin=ctx, ui_modules=UI_MODULES, template_loader=DictLoader(TEMPLATES),
                                  cookie_secret=config.server.cookie_secret)
    server = HTTPServer(app)
    server.add_sockets([sock])
    yield PageClient(url, url), ctx
    server.stop()
    io_loop.run_sync(ctx.close)


def directives(response) -> dict[str, list[str]]:
    policy = response.headers["Content-Security-Policy"]
    return {name: values for name, *values in (part.split() for part in policy.split(";") if part.strip())}


async def test_button_and_script_tag_with_the_pages_nonce(host):
    client, ctx = host
    response = await client.fetch("/")
    assert response.code == 200
    html = response.body.decode()
    assert '<button id="signinButton" type="button" disabled>Sign in with Google</button>' in html
    tag = re.search(r"<script src=\"/auth/signin.js\"([^>]*)></script>", html)
    assert tag, html
    attrs = dict(re.findall(r'([\w-]+)="([^"]*)"', tag[1]))
    csp = directives(response)
    nonce = attrs["nonce"]
    assert f"'nonce-{nonce}'" in csp["script-src"]
    # The host's own script carries the same nonce (one per response).
    assert f'<script nonce="{nonce}">' in html
    assert attrs["data-client-id"] == CLIENT_ID and attrs["data-prefix"] == "/auth"
    assert attrs["data-library"] == "gis" and attrs["data-script-url"] == EMULATOR + "/gsi/client"
    scopes = attrs["data-scope"].split()
    assert scopes[:3] == list(ctx.config.google.scopes)
    assert "https://www.googleapis.com/auth/drive.readonly" in scopes
    # A new nonce for every response.
    again = await client.fetch("/")
    assert directives(again)["script-src"] != csp["script-src"]


async def test_the_hosts_csp_allows_what_signin_js_needs_and_stays_strict(host):
    client, _ = host
    response = await client.fetch("/")
    csp = directives(response)
    assert csp["default-src"] == ["'self'"] and csp["frame-ancestors"] == ["'none'"]
    assert csp["base-uri"] == ["'none'"] and csp["form-action"] == ["'self'"]
    assert EMULATOR in csp["script-src"] and EMULATOR in csp["frame-src"] and EMULATOR in csp["connect-src"]
    assert client.base_url.replace("http", "ws", 1) in csp["connect-src"]
    assert "https://lh3.googleusercontent.com" in csp["img-src"]  # the page's own sources merged in
    assert not any("unsafe" in source for source in csp["script-src"])
    for sources in csp.values():
        assert len(sources) == len(set(sources))
    assert response.headers["Cross-Origin-Opener-Policy"] == "same-origin-allow-popups"


async def test_label_and_id_are_escaped(host):
    client, _ = host
    html = (await client.fetch("/?page=label.html")).body.decode()
    assert '<button id="login" type="button" disabled>&lt;b&gt;Go&lt;/b&gt; &amp; &quot;sign&quot;</button>' in html


async def test_a_handler_without_a_nonce_is_an_error_not_an_unprotected_tag(host):
    client, _ = host
    response = await client.fetch("/plain")
    assert response.code == 500
    assert b"signin.js" not in response.body


def test_signin_csp_and_csp_header(io_loop):
    config = make_config("https://app.example", EMULATOR)
    ctx = build_context(config)
    try:
        csp = signin_csp(ctx, "abc", origin="https://app.example")
        assert csp["script-src"] == ["'nonce-abc'", EMULATOR]
        assert csp["connect-src"] == ["'self'", "wss://app.example", EMULATOR]
        assert "'self'" in signin_csp(ctx, "abc")["connect-src"]
        header = csp_header({"default-src": ["'self'"]}, csp, {"script-src": ["'nonce-abc'"]})
        assert header.startswith("default-src 'self'; script-src 'nonce-abc' " + EMULATOR + ";")
    finally:
        io_loop.run_sync(ctx.close)
