"""Issue 12 §3: a lookup by email trusts only a verified email, and only when exactly one record holds it.

An attacker's Google account may claim any address with
``email_verified: false``. It signs in (keyed by its own ``sub``), but the
address is not stored, so ``get_credentials(config, "boss@example.com")``, the
CLI's ``token boss@example.com`` and ``OfflineAccess.find`` never reach the
attacker's grant; once the real owner signs in (verified), the email names the
owner. Two verified records with one address (re-assigned, re-created) name
nobody: the sub is required.
"""

from __future__ import annotations

import json

import pytest

from security_oracle import stack_fixture
from tornado_signin.errors import UnknownUserError
from tornado_signin.store import TokenRecord

stack = stack_fixture()
pytestmark = pytest.mark.gen_test(timeout=30)


async def sign_in(stack, account: str, **claims):
    stack.emulator.faults.add("token", kind="id_token_claims", set=claims)
    client = stack.client()
    await client.fetch("/")
    response = await client.post_code(stack.mint(account))
    assert response.code == 200, response.body
    return json.loads(response.body)["user"]["sub"]


@pytest.mark.parametrize("unverified", [False, "true", 1, None, "yes"])
async def test_an_unverified_email_is_not_stored_and_names_nobody(stack, unverified):
    attacker = await sign_in(stack, "alice@example.com", email="Boss@Example.com", email_verified=unverified)
    record = stack.store.get(attacker)
    assert record is not None and record.has_usable_refresh_token
    assert record.email is None, "an unverified email was stored"
    offline = stack.ctx.offline
    for spelling in ("boss@example.com", "Boss@Example.com", "BOSS@EXAMPLE.COM"):
        with pytest.raises(UnknownUserError, match="verified email"):
            await offline.find(spelling)

    owner = await sign_in(stack, "bob@gmail.com", email="boss@example.com", email_verified=True)
    for spelling in ("boss@example.com", "Boss@Example.com", "BOSS@EXAMPLE.COM"):
        assert (await offline.find(spelling)).sub == owner


async def test_a_later_unverified_email_keeps_the_verified_one(stack):
    sub = await sign_in(stack, "alice@example.com")
    assert stack.store.get(sub).email == "alice@example.com"
    await sign_in(stack, "alice@example.com", email="boss@example.com", email_verified=False)
    assert stack.store.get(sub).email == "alice@example.com"
    assert (await stack.ctx.offline.find("ALICE@example.com")).sub == sub
    with pytest.raises(UnknownUserError):
        await stack.ctx.offline.find("boss@example.com")


async def test_an_email_two_records_share_names_nobody(stack):
    first = await sign_in(stack, "alice@example.com", email="shared@example.com", email_verified=True)
    stack.store.save(TokenRecord(sub="another-account", email="Shared@Example.com"))
    with pytest.raises(UnknownUserError, match="2 users share that email: give the user's sub"):
        await stack.ctx.offline.find("shared@example.com")
    assert (await stack.ctx.offline.find(first)).sub == first
