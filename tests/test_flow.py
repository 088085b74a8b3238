"""The seven-step flow over HTTP and the websocket, against the emulator (no browser)."""

from __future__ import annotations

import asyncio
import json
import logging
import re

import pytest

from harness import CLIENT_ID, json_body, start_stack, without_state
from tornado_signin.errors import GoogleProtocolError
from tornado_signin.google import parse_token_response
from tornado_signin.signin import CONSENT_REQUIRED, SIGNED_IN

pytestmark = pytest.mark.gen_test(timeout=30)


@pytest.fixture
def stack(io_loop):
    stack = io_loop.run_sync(start_stack)
    yield stack
    io_loop.run_sync(stack.close)


async def test_page_has_button_status_and_security_headers(stack):
    client = stack.client()
    response = await client.fetch("/")
    assert response.code == 200
    html = response.body.decode()
    assert 'id="signinButton"' in html and 'id="status"' in html
    assert stack.emulator.base_url + "/gsi/client" in html
    csp = response.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in csp and "'nonce-" in csp and "unsafe-eval" not in csp
    assert response.headers["Cross-Origin-Opener-Policy"] == "same-origin-allow-popups"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie


#: What Google's tokens look like (the emulator mints the same shapes): refresh, access, one-time code.
TOKEN_SHAPES = re.compile(r"1//[0-9A-Za-z_-]{20,}|ya29\.[0-9A-Za-z_-]{20,}|4/0A[0-9A-Za-z_-]{20,}")


async def test_page_of_a_signed_in_user_holds_no_token(stack):
    """The page never sees a refresh token (nor an access token): not even once its user is signed in."""
    client = stack.client()
    await client.fetch("/")
    response = await client.post_code(stack.mint("alice@example.com"))
    assert response.code == 200, response.body
    record = stack.store.get(json_body(response)["user"]["sub"])
    assert record.refresh_token and record.access_token
    page = await client.fetch("/")
    assert page.code == 200
    html = page.body.decode()
    assert record.refresh_token not in html and record.access_token not in html
    assert TOKEN_SHAPES.findall(html) == []
    assert TOKEN_SHAPES.findall(record.refresh_token + " " + record.access_token)  # the shapes match real ones


async def test_full_login_confirms_over_websocket_and_stores_refresh_token(stack):
    client = stack.client()
    await client.fetch("/")
    socket = await client.socket()
    response = await client.post_code(stack.mint("alice@example.com"))
    assert response.code == 200, response.body
    body = json_body(response)
    assert body["status"] == SIGNED_IN and body["user"]["email"] == "alice@example.com"
    frame = json.loads(await asyncio.wait_for(socket.read_message(), 5))
    assert without_state(frame) == {"type": "signed_in", "user": body["user"]}
    record = stack.store.get(body["user"]["sub"])
    assert record.refresh_token and record.access_token and record.email == "alice@example.com"
    assert "https://www.googleapis.com/auth/userinfo.email" in record.scopes
    # No token ever reaches the page.
    for text in (response.body.decode(), json.dumps(frame)):
        assert record.refresh_token not in text and record.access_token not in text
    socket.close()


async def test_socket_connecting_after_login_still_learns_outcome_and_tabs_all_get_it(stack):
    client = stack.client()
    await client.fetch("/")
    tab1 = await client.socket()
    tab2 = await client.socket()
    response = await client.post_code(stack.mint("bob@gmail.com"))
    assert response.code == 200
    for tab in (tab1, tab2):
        assert json.loads(await asyncio.wait_for(tab.read_message(), 5))["type"] == "signed_in"
    late = await client.socket()  # carries the rotated session cookie
    frame = json.loads(await asyncio.wait_for(late.read_message(), 5))
    assert frame["type"] == "signed_in" and frame["user"]["email"] == "bob@gmail.com"
    for s in (tab1, tab2, late):
        s.close()


async def test_session_rotates_at_login(stack):
    client = stack.client()
    await client.fetch("/")
    before = dict(client.cookies)
    assert (await client.post_code(stack.mint())).code == 200
    assert client.cookies != before


async def test_second_login_without_refresh_token_keeps_stored_one(stack):
    client = stack.client()
    first = json_body(await client.post_code(stack.mint("alice@example.com")))
    stored = stack.store.get(first["user"]["sub"])
    second = await client.post_code(stack.mint("alice@example.com"))
    assert json_body(second)["status"] == SIGNED_IN
    after = stack.store.get(first["user"]["sub"])
    assert after.refresh_token == stored.refresh_token
    assert after.access_token != stored.access_token
    assert stack.emulator.stats["token.authorization_code"] == 2


async def test_user_without_stored_refresh_token_gets_consent_required_then_consent_stores_one(stack):
    client = stack.client()
    # The grant exists at Google (consented before), but this server has no refresh token.
    first = json_body(await client.post_code(stack.mint("carol@example.org")))
    stack.store.delete(first["user"]["sub"])
    socket = await client.socket()
    # The socket first hears the session's recorded outcome (the earlier sign-in).
    assert json.loads(await asyncio.wait_for(socket.read_message(), 5))["type"] == SIGNED_IN
    response = await client.post_code(stack.mint("carol@example.org"))
    assert response.code == 409 and without_state(json_body(response)) == {"status": CONSENT_REQUIRED}
    frame = json.loads(await asyncio.wait_for(socket.read_message(), 5))
    assert without_state(frame) == {"type": CONSENT_REQUIRED}
    # /state now tells the page to ask with consent.
    state_doc = json_body(await client.fetch("/state"))
    assert state_doc.get("prompt") == "consent"
    # The consent path (gapi: prompt=consent; GIS: after the server ended the stale grant).
    response = await client.post_code(stack.mint("carol@example.org", prompt="consent"))
    assert response.code == 200
    assert stack.store.get(first["user"]["sub"]).has_usable_refresh_token
    socket.close()


async def test_gis_consent_path_works_without_prompt_after_stale_grant_revoked(stack):
    client = stack.client()
    first = json_body(await client.post_code(stack.mint("carol@example.org")))
    stack.store.delete(first["user"]["sub"])
    assert (await client.post_code(stack.mint("carol@example.org"))).code == 409
    # GIS has no documented prompt=consent: the next plain consent must yield a refresh token.
    response = await client.post_code(stack.mint("carol@example.org"))
    assert response.code == 200, response.body
    assert stack.store.get(first["user"]["sub"]).has_usable_refresh_token


async def test_tokens_are_encrypted_below_the_core(stack):
    client = stack.client()
    body = json_body(await client.post_code(stack.mint()))
    raw = stack.store.inner.get(body["user"]["sub"])
    plain = stack.store.get(body["user"]["sub"])
    assert raw.refresh_token != plain.refresh_token and plain.refresh_token not in raw.refresh_token


async def test_signout_clears_cookie_and_closes_sockets(stack):
    client = stack.client()
    await client.fetch("/")
    socket = await client.socket()
    assert (await client.post_code(stack.mint())).code == 200
    assert json.loads(await asyncio.wait_for(socket.read_message(), 5))["type"] == "signed_in"
    await asyncio.sleep(0.05)  # the socket follows the rotated session id
    response = await client.post_gated("/signout")
    assert response.code == 200
    assert json.loads(await asyncio.wait_for(socket.read_message(), 5)) == {"type": "signed_out"}
    assert await asyncio.wait_for(socket.read_message(), 5) is None  # closed by the server
    assert not any("signin_session" in name and value for name, value in client.cookies.items())


async def test_disconnect_revokes_at_google_and_forgets(stack):
    client = stack.client()
    body = json_body(await client.post_code(stack.mint("bob@gmail.com")))
    sub = body["user"]["sub"]
    response = await client.post_gated("/disconnect")
    assert response.code == 200, response.body
    assert stack.store.get(sub) is None
    assert stack.emulator.grant_revoked(CLIENT_ID, sub)


async def test_health_and_metrics(stack):
    client = stack.client()
    assert json_body(await client.fetch("/healthz")) == {"status": "ok"}
    assert json_body(await client.fetch("/healthz?ready=1")) == {"status": "ready"}
    await client.post_code(stack.mint())
    text = (await client.fetch("/metrics")).body.decode()
    assert 'signin_logins_total{outcome="signed_in"} 1' in text
    assert "signin_exchange_seconds_count 1" in text


async def test_unknown_path_is_json_404(stack):
    response = await stack.client().fetch("/nope")
    assert response.code == 404 and json_body(response) == {"error": "not found"}


async def test_a_one_second_access_token_lifetime_signs_in_without_an_error_line(stack, caplog):
    """POST /emulator/settings {"access_token_ttl": 1}: the reply's expires_in stays positive, the sign-in stands."""
    stack.emulator.configure(access_token_ttl=1)
    client = stack.client()
    await client.fetch("/")
    with caplog.at_level(logging.DEBUG):
        response = await client.post_code(stack.mint("alice@example.com"))
    assert response.code == 200, response.body
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


@pytest.mark.parametrize("expires_in", [0, -3, "0", "-3"])
def test_a_zero_or_negative_expires_in_is_a_token_already_expired(expires_in, caplog):
    """Google's expires_in are positive; an upstream's odd value is no 502 and no ERROR line (a WARNING at most)."""
    document = {"access_token": "ya29.a0" + "x" * 40, "token_type": "Bearer", "expires_in": expires_in}
    with caplog.at_level(logging.DEBUG):
        reply = parse_token_response(document, received_at=1000.0)
    assert reply.expires_in == 0 and reply.expiry == 1000.0
    assert [r.levelno for r in caplog.records] == [logging.WARNING]


@pytest.mark.parametrize("expires_in", ["soon", 1.5, True, None, "１２", 86400 * 367, "9" * 13])
def test_a_malformed_expires_in_is_still_refused(expires_in):
    with pytest.raises(GoogleProtocolError, match="expires_in"):
        parse_token_response({"access_token": "ya29.a0" + "x" * 40, "token_type": "Bearer", "expires_in": expires_in},
                             received_at=1000.0)
