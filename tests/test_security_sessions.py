"""Issue #5 §4: sessions and cookies, over plain http (development) and real TLS.

References: OWASP ASVS 5.0 V7 (session management: rotation at login,
termination at logout), V3.3 (cookie attributes, ``__Host-`` prefix), V3.4
(security headers); RFC 6265bis (cookie prefixes). The https cases run the
app over TLS with a self-signed certificate made here by ``cryptography`` -
no proxy headers involved.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from http.cookies import SimpleCookie

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port
from tornado.websocket import websocket_connect

from harness import CLIENT_ID, CLIENT_SECRET, PageClient, Stack, json_body, make_config, self_signed_files
from security_oracle import assert_logs_clean, drain, session_of, stack_fixture
from tornado_signin.app import make_app
from tornado_signin.emulator import Emulator, EmulatorClient

pytestmark = pytest.mark.gen_test(timeout=30)


def self_signed(tmp_path):
    cert_path, key_path = self_signed_files(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_path, key_path)
    return context, str(cert_path)


class TlsPage(PageClient):
    """The page over https, trusting the test's certificate."""

    def __init__(self, base_url, origin, ca_path):
        super().__init__(base_url, origin)
        self.ca_path = ca_path
        self.http = AsyncHTTPClient(force_instance=True, defaults={"ca_certs": ca_path})

    async def socket(self, **_):
        url = self.base_url.replace("https", "wss", 1) + "/confirm"
        return await websocket_connect(HTTPRequest(url, ca_certs=self.ca_path, headers={
            "Origin": self.origin, "Cookie": self.cookie_header()}))


async def start_tls_stack(tmp_path):
    ssl_context, ca_path = self_signed(tmp_path)
    app_sock, app_port = bind_unused_port()
    emu_sock, emu_port = bind_unused_port()
    app_url, emulator_url = f"https://127.0.0.1:{app_port}", f"http://127.0.0.1:{emu_port}"
    emulator = Emulator(clients=[EmulatorClient(CLIENT_ID, CLIENT_SECRET, (app_url,))], base_url=emulator_url)
    emu_server = HTTPServer(emulator.make_app())
    emu_server.add_sockets([emu_sock])
    config = make_config(app_url, emulator_url)
    app = make_app(config)
    server = HTTPServer(app, ssl_options=ssl_context, idle_connection_timeout=5)
    server.add_sockets([app_sock])
    stack = Stack(app_url=app_url, emulator=emulator, app=app, config=config, servers=[server, emu_server])
    return stack, TlsPage(app_url, app_url, ca_path)


def cookies_of(response):
    jar = {}
    for header in response.headers.get_list("Set-Cookie"):
        parsed = SimpleCookie()
        parsed.load(header)
        for name, morsel in parsed.items():
            jar[name] = (morsel, header)
    return jar


stack = stack_fixture()


async def test_https_cookie_is_host_prefixed_secure_httponly_samesite(io_loop, tmp_path):
    stack, page = await start_tls_stack(tmp_path)
    try:
        response = await page.fetch("/")
        assert response.code == 200
        jar = cookies_of(response)
        assert set(jar) == {"__Host-signin_session"}, jar
        morsel, raw = jar["__Host-signin_session"]
        assert morsel["secure"] and morsel["httponly"] and morsel["samesite"] == "Lax"
        assert morsel["path"] == "/" and not morsel["domain"], raw
        assert response.headers["Strict-Transport-Security"].startswith("max-age=")
        # A whole login over TLS, then sign-out clears the __Host- cookie with matching attributes.
        socket = await page.socket()
        login = await page.post_code(stack.mint())
        assert login.code == 200, login.body
        morsel, _ = cookies_of(login)["__Host-signin_session"]
        assert morsel["secure"] and morsel["httponly"]
        assert session_of(page).sub
        assert (await drain(socket))[0]["type"] == "signed_in"
        await asyncio.sleep(0.05)
        out = await page.post_gated("/signout")
        assert out.code == 200
        morsel, raw = cookies_of(out)["__Host-signin_session"]
        assert morsel.value == "" and morsel["secure"] and morsel["path"] == "/" and not morsel["domain"], raw
        assert session_of(page) is None
        assert await drain(socket, 1) == [{"type": "signed_out"}, None]
    finally:
        page.http.close()
        await stack.close()


async def test_plain_http_cookie_is_not_secure_and_not_host_prefixed(stack):
    response = await stack.client().fetch("/")
    jar = cookies_of(response)
    assert set(jar) == {"signin_session"}
    morsel, _ = jar["signin_session"]
    assert morsel["httponly"] and morsel["samesite"] == "Lax" and not morsel["secure"]
    assert "Strict-Transport-Security" not in response.headers


async def test_session_id_rotates_at_login_and_the_old_cookie_is_not_signed_in(stack):
    client = stack.client()
    await client.fetch("/")
    before = session_of(client)
    old_cookies = dict(client.cookies)
    response = await client.post_code(stack.mint())
    assert response.code == 200
    after = session_of(client)
    assert after.sid != before.sid and after.sub and before.sub is None
    # The pre-login cookie (what a fixation attacker would hold) is still anonymous.
    attacker = stack.client()
    attacker.cookies = old_cookies
    refused = await attacker.post_gated("/disconnect")
    assert refused.code == 403 and json_body(refused) == {"error": "not signed in"}
    assert stack.store.get(after.sub) is not None


async def test_a_forged_or_tampered_session_cookie_is_no_session(stack):
    client = stack.client()
    assert (await client.post_code(stack.mint())).code == 200
    name, value = next(iter(client.cookies.items()))
    forged = stack.client()
    forged.cookies = {name: value[:-2] + ("AA" if not value.endswith("AA") else "BB")}
    response = await forged.post_gated("/disconnect")
    # /state re-issued an anonymous session: no sub, so not signed in.
    assert response.code == 403
    assert session_of(forged) is None or session_of(forged).sub is None
    unsigned = stack.client()
    unsigned.cookies = {name: json.dumps({"sid": "x" * 22, "sub": "108123456789012345671"})}
    assert (await unsigned.post_gated("/disconnect")).code == 403
    assert stack.store.records()


async def test_signout_closes_every_socket_of_the_session_and_only_those(stack):
    client = stack.client()
    await client.fetch("/")
    tabs = [await client.socket(), await client.socket()]
    bystander = stack.client()
    assert (await bystander.post_code(stack.mint("bob@gmail.com"))).code == 200
    bystander_socket = await bystander.socket()
    assert (await drain(bystander_socket))[0]["type"] == "signed_in"
    assert (await client.post_code(stack.mint("alice@example.com"))).code == 200
    for tab in tabs:
        assert (await drain(tab))[0]["type"] == "signed_in"
    await asyncio.sleep(0.05)
    assert (await client.post_gated("/signout")).code == 200
    for tab in tabs:
        assert await drain(tab, 1) == [{"type": "signed_out"}, None]
    assert await drain(bystander_socket, 0.2) == []  # still open, told nothing
    bystander_socket.close()
    assert_logs_clean(stack)


async def test_signout_and_disconnect_are_gated_like_the_code_endpoint(stack):
    client = stack.client()
    assert (await client.post_code(stack.mint())).code == 200
    state = await client.state()
    for path in ("/signout", "/disconnect"):
        for headers in ({"Origin": "https://evil.example"}, {"X-Requested-With": None}, {"X-Signin-State": None},
                        {"Sec-Fetch-Site": "cross-site"}):
            all_headers = {k: v for k, v in {**client.gate_headers(state), **headers}.items() if v is not None}
            response = await client.fetch(path, method="POST", body=b"", headers=all_headers)
            assert response.code == 403, (path, headers, response.code)
    assert session_of(client).sub and len(list(stack.store.records())) == 1


async def test_page_security_headers(stack):
    response = await stack.client().fetch("/")
    headers = response.headers
    csp = headers["Content-Security-Policy"]
    directives = {d.split()[0]: d.split()[1:] for d in csp.split(";") if d.strip()}
    assert directives["frame-ancestors"] == ["'none'"]
    assert directives["base-uri"] == ["'none'"] and directives["form-action"] == ["'self'"]
    assert not any("unsafe-eval" in v or "unsafe-inline" in v for v in directives["script-src"])
    assert any(v.startswith("'nonce-") for v in directives["script-src"])
    assert headers["Referrer-Policy"] == "no-referrer"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Cross-Origin-Opener-Policy"] == "same-origin-allow-popups"
    assert headers["X-Frame-Options"] == "DENY"
    assert "no-store" in headers["Cache-Control"]
    assert "Server" not in headers


@pytest.mark.parametrize("path", ["/state", "/healthz", "/nope", "/storeauthcode"])
async def test_json_endpoints_carry_the_security_headers(stack, path):
    response = await stack.client().fetch(path)
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
    assert "no-store" in response.headers["Cache-Control"]
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert len(response.headers["X-Request-Id"]) >= 8
    # Per-session, no-store answers: no server banner, nothing to revalidate.
    assert "Server" not in response.headers and "Etag" not in response.headers


async def test_session_cookie_is_read_among_other_cookies_and_forgeries_start_afresh(stack):
    page = stack.client()
    await page.state()
    ((name, value),) = page.cookies.items()
    for header in (f"a=1; {name}={value}; b=2", f'theme=dark; {name}="{value}"'):
        response = await page.fetch("/state", headers={"Cookie": header}, cookies=False)
        # The session was recognised: nothing new to set.
        assert response.code == 200 and not response.headers.get_list("Set-Cookie"), header
    for forged in (value[:-2] + ("00" if not value.endswith("00") else "11"), "", "x" * 40):
        response = await page.fetch("/state", headers={"Cookie": f"{name}={forged}"}, cookies=False)
        assert response.code == 200 and name in cookies_of(response), forged


def test_session_ids_never_start_with_a_dash_so_the_cli_can_take_them(monkeypatch):
    import secrets

    from tornado_signin.sessions import new_session_id

    drawn = iter(["-" + "a" * 21, "-" + "b" * 21, "c" * 22])
    monkeypatch.setattr(secrets, "token_urlsafe", lambda n: next(drawn))
    assert new_session_id() == "c" * 22
    monkeypatch.undo()
    ids = {new_session_id() for _ in range(2000)}
    assert len(ids) == 2000 and not any(sid.startswith("-") for sid in ids)
    assert all(len(sid) == 22 for sid in ids)
