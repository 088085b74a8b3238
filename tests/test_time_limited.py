"""Time-limited access: refresh_token_expires_in stored, shown, honoured without calling Google, announced ahead."""

from __future__ import annotations

import asyncio
import json

import pytest

from harness import CLIENT_ID, json_body
from security_oracle import drain, stack_fixture
from tornado_signin.errors import ConsentRequiredError
from tornado_signin.expiry import AccessExpiring

pytestmark = pytest.mark.gen_test(timeout=30)

stack = stack_fixture()


async def test_exchange_stores_the_expiry_and_consent_is_required_after_it_without_google(stack):
    client = stack.client()
    response = await client.post_code(stack.mint(prompt="consent", refresh_token_ttl=2))
    body = json_body(response)
    assert response.code == 200 and body["access_expires_at"]
    sub = body["user"]["sub"]
    record = stack.store.get(sub)
    assert record.refresh_token_expires_at and abs(record.refresh_token_expires_at - body["access_expires_at"]) < 1
    assert record.has_usable_refresh_token and record.state == "active"
    from tornado_signin.cli import _public_record

    assert _public_record(record)["refresh_token_expires_at"].endswith("Z")
    # Before the end a refresh works.
    await stack.ctx.offline.fresh_record(sub, force=True)
    await asyncio.sleep(2.2)
    refreshes = stack.emulator.stats["token.refresh_token"]
    with pytest.raises(ConsentRequiredError):
        await stack.ctx.offline.fresh_record(sub, force=True)
    assert stack.emulator.stats["token.refresh_token"] == refreshes  # Google was not asked
    assert stack.store.get(sub).state == "expired"
    # The emulator too refuses the refresh token after its time.
    from tornado_signin.errors import InvalidGrantError

    with pytest.raises(InvalidGrantError):
        await stack.ctx.google.refresh(record.refresh_token)
    # A new consent gives a new, unlimited grant.
    again = json_body(await stack.client().post_code(stack.mint(prompt="consent")))
    assert again["status"] == "signed_in" and "access_expires_at" not in again
    assert stack.store.get(sub).refresh_token_expires_at is None


async def test_page_and_host_app_are_told_ahead_of_time(stack):
    stack.ctx.expiry.notice = 3600  # the grant below is shorter than the notice: told at once
    told: list[AccessExpiring] = []
    remove = stack.ctx.expiry.add_listener(told.append)
    client = stack.client()
    await client.fetch("/")
    socket = await client.socket()
    body = json_body(await client.post_code(stack.mint(prompt="consent", refresh_token_ttl=600)))
    frames = await drain(socket, 1.5)
    assert frames[0]["type"] == "signed_in" and frames[0]["access_expires_at"] == body["access_expires_at"]
    expiring = [f for f in frames if f and f["type"] == "access_expiring"]
    assert expiring and expiring[0]["expires_at"] == body["access_expires_at"]
    assert 590 <= expiring[0]["expires_in"] <= 600
    assert [(e.sub, int(e.expires_at)) for e in told] == [(body["user"]["sub"], body["access_expires_at"])]
    remove()
    # An unlimited grant: no notice, no listener call.
    other = stack.client()
    await other.post_code(stack.mint("bob@gmail.com", prompt="consent"))
    await asyncio.sleep(0.1)
    assert len(told) == 1


async def test_no_notice_for_a_session_that_ended(stack):
    told = []
    stack.ctx.expiry.add_listener(told.append)
    stack.ctx.expiry.notice = 599.5  # fires as soon as it may (MIN_DELAY)
    client = stack.client()
    await client.post_code(stack.mint(prompt="consent", refresh_token_ttl=600))
    assert (await client.post_gated("/signout")).code == 200
    await asyncio.sleep(1.3)
    assert told == []


async def test_emulator_code_endpoint_takes_refresh_token_ttl_and_refuses_junk(stack):
    from tornado.httpclient import AsyncHTTPClient

    http = AsyncHTTPClient()
    for value, status in (("60", 200), ("abc", 400), ("-5", 400), ("0", 400), ("9" * 30, 400)):
        response = await http.fetch(stack.emulator.base_url + "/emulator/code", method="POST", raise_error=False,
                                    body=f"client_id={CLIENT_ID}&email=alice@example.com&refresh_token_ttl={value}")
        assert response.code == status, (value, response.body)
        if status == 200:
            assert json.loads(response.body)["code"]
