"""``GET <prefix>/session``: who is signed in, for the page's script and the host's JS (no-store, never a token)."""

from __future__ import annotations

import asyncio
import json

import pytest

from harness import json_body, start_stack

pytestmark = pytest.mark.gen_test(timeout=30)


@pytest.fixture
def stack(io_loop):
    opened = io_loop.run_sync(start_stack)
    yield opened
    io_loop.run_sync(opened.close)


def assert_no_store(response) -> None:
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Content-Type"].startswith("application/json")


async def test_anonymous_is_signed_out_and_gets_no_cookie(stack):
    client = stack.client()
    response = await client.fetch("/session")
    assert response.code == 200
    assert json_body(response) == {"signed_in": False}
    assert_no_store(response)
    assert "Set-Cookie" not in response.headers
    # An anonymous session (the page was opened, nobody signed in) is signed out too.
    await client.fetch("/")
    assert json_body(await client.fetch("/session")) == {"signed_in": False}


async def test_signed_in_user_then_signed_out(stack):
    client = stack.client()
    await client.fetch("/")
    signed_in = await client.post_code(stack.mint("alice@example.com"))
    assert signed_in.code == 200, signed_in.body
    user = json_body(signed_in)["user"]
    response = await client.fetch("/session")
    assert_no_store(response)
    assert json_body(response) == {"signed_in": True, "user": user}
    assert set(user) == {"sub", "email", "name"} and user["email"] == "alice@example.com"
    record = stack.store.get(user["sub"])
    assert record.refresh_token not in response.body.decode() and record.access_token not in response.body.decode()
    kept = dict(client.cookies)
    assert (await client.post_gated("/signout")).code == 200
    assert json_body(await client.fetch("/session")) == {"signed_in": False}
    # A copy of the signed-in cookie kept from before the sign-out counts as signed out too.
    client.cookies = kept
    assert json_body(await client.fetch("/session")) == {"signed_in": False}


async def test_a_revoked_session_is_signed_out(stack):
    client = stack.client()
    await client.fetch("/")
    user = json_body(await client.post_code(stack.mint("bob@gmail.com")))["user"]
    assert json_body(await client.fetch("/session"))["signed_in"] is True
    # Ended elsewhere (sign-out everywhere, a security event): the cookie is still authentic, no longer valid.
    await stack.ctx.sessions.end_all(user["sub"], reason="risc_sessions_revoked")
    assert json_body(await client.fetch("/session")) == {"signed_in": False}


async def test_forged_or_junk_cookie_is_signed_out(stack):
    client = stack.client()
    for value in ("x", "2|1:0|10:1700000000|14:signin_session|4:e30=|" + "0" * 64, "\u00e9" * 10):
        response = await client.fetch("/session", headers={"Cookie": f"signin_session={value}"}, cookies=False)
        assert response.code == 200 and json_body(response) == {"signed_in": False}


async def test_other_methods_are_refused(stack):
    response = await stack.client().fetch("/session", method="POST")
    assert response.code == 405
    assert "error" in json_body(response)


async def test_an_unverified_email_is_nobodys_email(stack):
    """A Google account may claim any address with ``email_verified: false``: the page, ``/session``, the
    host mixin and the hooks (one user record for all of them) show no email for it, only its sub."""
    stack.emulator.faults.add("token", kind="id_token_claims", set={"email": "Boss@Example.com",
                                                                     "email_verified": False})
    client = stack.client()
    await client.fetch("/")
    socket = await client.socket()
    response = await client.post_code(stack.mint("alice@example.com"))
    assert response.code == 200, response.body
    user = json_body(response)["user"]
    assert user["email"] is None and user["sub"]
    frames = []
    while not frames or frames[-1].get("type") != "signed_in":
        frames.append(json.loads(await asyncio.wait_for(socket.read_message(), 5)))
    assert frames[-1]["user"] == user
    assert json_body(await client.fetch("/session")) == {"signed_in": True, "user": user}
    assert "Boss@Example.com" not in (await client.fetch("/")).body.decode()
    socket.close()
