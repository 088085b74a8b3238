"""Offline access and the refresh-token lifecycle (issue 4), against the emulator."""

from __future__ import annotations

import asyncio
import time

import pytest

from harness import CLIENT_ID, json_body, start_stack
from tornado_signin.errors import ConsentRequiredError, GoogleUnavailableError, MissingScopeError, UnknownUserError
from tornado_signin.store import TokenRecord

pytestmark = pytest.mark.gen_test(timeout=60)

DRIVE = "https://www.googleapis.com/auth/drive.appdata"


@pytest.fixture
def stack(io_loop):
    stack = io_loop.run_sync(start_stack)
    stack.ctx.offline.retry_delays = (0.01, 0.01, 0.01)
    yield stack
    io_loop.run_sync(stack.close)


async def sign_in(stack, email="alice@example.com", **kw):
    response = await stack.client().post_code(stack.mint(email, **kw))
    assert response.code == 200, response.body
    return json_body(response)["user"]["sub"]


async def test_valid_stored_access_token_is_used_without_refresh(stack):
    sub = await sign_in(stack)
    creds = await stack.ctx.offline.credentials(sub)
    assert creds.valid and creds.token == stack.store.get(sub).access_token
    assert stack.emulator.stats["token.refresh_token"] == 0


async def test_expired_access_token_is_refreshed_and_persisted(stack):
    stack.emulator.configure(access_token_ttl=5)  # under the refresh margin
    sub = await sign_in(stack)
    before = stack.store.get(sub)
    creds = await stack.ctx.offline.credentials("alice@example.com")  # by email too
    after = stack.store.get(sub)
    assert stack.emulator.stats["token.refresh_token"] == 1
    assert creds.token == after.access_token != before.access_token
    assert after.refresh_token == before.refresh_token
    assert after.access_token_issued_at > before.access_token_issued_at
    # google-auth's own view: the credentials carry the configured token endpoint.
    assert creds.token_uri == stack.emulator.base_url + "/token" and creds.client_id == CLIENT_ID


async def test_fifty_concurrent_requests_cause_one_refresh(stack):
    stack.emulator.configure(access_token_ttl=5)
    sub = await sign_in(stack)
    stack.emulator.faults.add("token.refresh_token", "delay", seconds=0.2)
    results = await asyncio.gather(*(stack.ctx.offline.credentials(sub) for _ in range(50)))
    assert stack.emulator.stats["token.refresh_token"] == 1
    assert len({c.token for c in results}) == 1


async def test_revoked_refresh_token_marks_record_revoked_and_next_signin_asks_consent(stack):
    stack.emulator.configure(access_token_ttl=5)
    sub = await sign_in(stack, "bob@gmail.com")
    stack.emulator.expire_refresh_tokens(CLIENT_ID, sub)
    with pytest.raises(ConsentRequiredError):
        await stack.ctx.offline.credentials(sub)
    record = stack.store.get(sub)
    assert record.state == "revoked" and record.email == "bob@gmail.com" and record.created_at
    # Retries stop: no second call to Google for a revoked grant.
    with pytest.raises(ConsentRequiredError):
        await stack.ctx.offline.credentials(sub)
    assert stack.emulator.stats["token.refresh_token"] == 1
    # Next sign-in: no refresh token comes back, so consent is required ...
    client = stack.client()
    assert (await client.post_code(stack.mint("bob@gmail.com"))).code == 409
    # ... and consent stores a new one.
    stack.emulator.configure(access_token_ttl=3600)
    assert (await client.post_code(stack.mint("bob@gmail.com", prompt="consent"))).code == 200
    assert stack.store.get(sub).state == "active"
    creds = await stack.ctx.offline.credentials(sub)
    assert creds.valid


async def test_retryable_failure_is_retried_then_succeeds(stack):
    stack.emulator.configure(access_token_ttl=5)
    sub = await sign_in(stack)
    stack.emulator.configure(access_token_ttl=3600)
    stack.emulator.faults.add("token.refresh_token", "status", count=2, status=503)
    creds = await stack.ctx.offline.credentials(sub)
    assert creds.valid and stack.emulator.stats["token.refresh_token"] == 3


async def test_persistent_outage_is_reported_as_retryable(stack):
    stack.emulator.configure(access_token_ttl=5)
    sub = await sign_in(stack)
    stack.emulator.faults.add("token.refresh_token", "status", count=-1, status=500)
    with pytest.raises(GoogleUnavailableError):
        await stack.ctx.offline.credentials(sub)
    assert stack.store.get(sub).state == "active"  # not marked revoked


async def test_granted_scopes_recorded_and_missing_scope_is_clear(stack):
    sub = await sign_in(stack)
    scopes = set(stack.store.get(sub).scopes)
    assert {"openid", "https://www.googleapis.com/auth/userinfo.email"} <= scopes
    await stack.ctx.offline.credentials(sub, required_scopes=["email", "profile"])
    with pytest.raises(MissingScopeError) as caught:
        await stack.ctx.offline.credentials(sub, required_scopes=[DRIVE])
    assert caught.value.missing == {DRIVE}
    # Incremental authorization adds the scope.
    client = stack.client()
    code = stack.emulator.mint_code(CLIENT_ID, "alice@example.com", f"openid email profile {DRIVE}")
    assert (await client.post_code(code)).code == 200
    assert DRIVE in stack.store.get(sub).scopes
    creds = await stack.ctx.offline.credentials(sub, required_scopes=[DRIVE])
    assert DRIVE in creds.scopes


@pytest.mark.parametrize("scope", ["bad scope!", "drive\nreadonly", "drive\x00", "", "https://x/ y", "drive!", 7])
async def test_a_malformed_required_scope_is_a_value_error(stack, scope):
    sub = await sign_in(stack)
    with pytest.raises(ValueError, match="malformed scope"):
        await stack.ctx.offline.credentials(sub, required_scopes=[scope])
    with pytest.raises(ValueError, match="malformed scope"):
        async for _ in stack.ctx.offline.credentials_for_all(required_scopes=["email", scope]):
            pass
    with pytest.raises(ValueError, match="not the string"):
        await stack.ctx.offline.credentials(sub, required_scopes="drive")
    # The well-formed ones still pass: URLs, bare names, openid.
    await stack.ctx.offline.credentials(sub, required_scopes=["openid", "email",
                                                              "https://www.googleapis.com/auth/userinfo.profile"])


async def test_refresh_token_rotation_is_persisted(stack):
    stack.emulator.configure(access_token_ttl=5, rotate_refresh_tokens=True)
    sub = await sign_in(stack)
    old = stack.store.get(sub).refresh_token
    await stack.ctx.offline.credentials(sub)
    new = stack.store.get(sub).refresh_token
    assert new and new != old
    # The rotated one works for the next refresh.
    await stack.ctx.offline.fresh_record(sub, force=True)
    assert stack.emulator.stats["token.refresh_token"] == 2


async def test_an_older_refresh_never_overwrites_a_newer_token(stack):
    sub = await sign_in(stack)
    newest = stack.store.get(sub)
    stale = TokenRecord(sub=sub, access_token="ya29.stale", access_token_expiry=time.time() + 3600,
                        access_token_issued_at=newest.access_token_issued_at - 10,
                        refresh_token="1//stale", refresh_token_issued_at=newest.refresh_token_issued_at - 10)
    stack.store.save(stale)
    kept = stack.store.get(sub)
    assert kept.access_token == newest.access_token and kept.refresh_token == newest.refresh_token


async def test_userinfo_called_by_the_server_for_the_session_user(stack):
    client = stack.client()
    assert (await client.post_code(stack.mint("carol@example.org"))).code == 200
    response = await client.fetch("/api/userinfo", method="POST",
                                  headers={"X-Requested-With": "XMLHttpRequest", "Origin": stack.app_url})
    assert response.code == 200, response.body
    assert json_body(response)["userinfo"]["email"] == "carol@example.org"
    assert stack.emulator.stats["userinfo"] == 1
    scopes = json_body(await client.fetch("/api/scopes"))["scopes"]
    assert "https://www.googleapis.com/auth/userinfo.profile" in scopes


async def test_userinfo_requires_signed_in_session(stack):
    response = await stack.client().fetch("/api/userinfo", method="POST",
                                          headers={"X-Requested-With": "XMLHttpRequest", "Origin": stack.app_url})
    assert response.code == 401
    assert stack.emulator.stats["userinfo"] == 0


async def test_unknown_user(stack):
    with pytest.raises(UnknownUserError):
        await stack.ctx.offline.credentials("nobody@example.com")


async def test_revoke_and_forget_counts_already_invalid_as_revoked(stack):
    sub = await sign_in(stack)
    stack.emulator.expire_refresh_tokens(CLIENT_ID, sub)
    stack.emulator.faults.add("revoke", "status", status=400, body={"error": "invalid_token"})
    assert await stack.ctx.offline.revoke_and_forget(sub) is False
    assert stack.store.get(sub) is None


async def test_revoke_retried_when_google_unavailable_and_record_kept_on_failure(stack):
    sub = await sign_in(stack)
    stack.emulator.faults.add("revoke", "status", count=-1, status=503)
    with pytest.raises(GoogleUnavailableError):
        await stack.ctx.offline.revoke_and_forget(sub)
    assert stack.store.get(sub) is not None
    assert stack.emulator.stats["revoke"] == 4
    stack.emulator.faults.clear()
    assert await stack.ctx.offline.revoke_and_forget(sub) is True
    assert stack.emulator.grant_revoked(CLIENT_ID, sub)
