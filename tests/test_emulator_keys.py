"""Signing keys on Google's schedule, the certs' cache headers, and the server's certs cache honouring Age.

Google publishes the next signing key well before it signs with it and keeps
the previous one published for a while, and it serves the certs with
``Cache-Control: public, max-age=…, must-revalidate, no-transform`` and an
``Age`` from its edge cache. A client that caches the certs for their
freshness and never refetches on an unknown kid (Node's google-auth-library,
https://github.com/googleapis/google-auth-library-nodejs/blob/main/src/auth/oauth2client.ts
``getFederatedSignonCertsAsync``, which caches until the reply's max-age runs out) must always hold
the key that signs. Google's guidance: "Check the Cache-Control header in the response to determine when
you should retrieve them again" (https://developers.google.com/identity/sign-in/web/backend-auth#verify-the-integrity-of-the-id-token).
"""

from __future__ import annotations

import email.utils
import json

import pytest
import requests

from security_oracle import close_stack, open_stack
from tornado_signin.emulator import DEFAULT_ACCOUNTS, EmulatorClient, EmulatorThread

CLIENT = EmulatorClient("keys-client.apps.googleusercontent.com", "GOCSPX-keys", ("http://localhost:8080",))
SCHEDULE = {"period": 1000.0, "lead": 400.0, "linger": 200.0}


@pytest.fixture
def emu(clock):
    with EmulatorThread(clients=[CLIENT], clock=clock, certs_max_age=300, key_schedule=SCHEDULE) as emulator:
        yield emulator


def certs(emu) -> tuple[set[str], requests.Response]:
    response = requests.get(emu.base_url + "/oauth2/v1/certs", timeout=10)
    return set(response.json()), response


def signing_kid(emu) -> str:
    code = emu.mint_code(CLIENT.client_id, DEFAULT_ACCOUNTS[0].email)
    body = requests.post(emu.base_url + "/token", timeout=10, data={
        "grant_type": "authorization_code", "code": code, "redirect_uri": "postmessage",
        "client_id": CLIENT.client_id, "client_secret": CLIENT.client_secret}).json()
    header = body["id_token"].split(".")[0]
    return json.loads(__import__("base64").urlsafe_b64decode(header + "=="))["kid"]


def test_publish_next_then_sign_with_it_then_retire_the_old_one(emu, clock):
    """The schedule: published at the period, signing ``lead`` later, predecessor gone ``linger`` after that."""
    first = signing_kid(emu)
    assert certs(emu)[0] == {first}
    clock.now += 1000  # the next key is published, the old one still signs
    published, _ = certs(emu)
    assert len(published) == 2 and first in published and signing_kid(emu) == first
    (second,) = published - {first}
    clock.now += 400  # the next key signs; the old one stays published
    assert signing_kid(emu) == second and certs(emu)[0] == {first, second}
    clock.now += 200  # the old one is retired
    assert certs(emu)[0] == {second} and signing_kid(emu) == second


def test_certs_carry_googles_cache_headers_with_age(emu, clock):
    """Cache-Control: public, max-age=N, must-revalidate, no-transform; Age counts how long the (edge) copy is
    held, so Expires = Date - Age + max-age (RFC 9111 4.2.3) and freshness never outlives a key change."""
    clock.now += 130
    _, response = certs(emu)
    assert response.headers["Cache-Control"] == "public, max-age=300, must-revalidate, no-transform"
    assert response.headers["Age"] == "130"
    expires = email.utils.parsedate_to_datetime(response.headers["Expires"]).timestamp()
    assert abs(expires - (clock.now - 130 + 300)) < 1
    clock.now += 300  # the edge copy was refreshed 230 s in: Age restarts
    assert certs(emu)[1].headers["Age"] == str((130 + 300) % 300)


def _node_like_client_always_verifies(emu, clock, *, abrupt_at: float | None = None) -> list[float]:
    """Simulate a client that fetches certs only when its copy is stale (max-age - Age); return the moments
    at which the signing kid was missing from its copy."""
    start, cached, fresh_until, misses = clock.now, set(), -1.0, []
    step = 37.0
    while clock.now - start < 3 * SCHEDULE["period"]:
        if abrupt_at is not None and clock.now - start >= abrupt_at:
            emu.rotate_keys()
            abrupt_at = None
        if clock.now >= fresh_until:
            cached, response = certs(emu)
            max_age = int(response.headers["Cache-Control"].split("max-age=")[1].split(",")[0])
            fresh_until = clock.now + max_age - int(response.headers["Age"])
        if signing_kid(emu) not in cached:
            misses.append(clock.now - start)
        clock.now += step
    return misses


def test_a_client_that_never_refetches_on_an_unknown_kid_always_holds_the_signing_key(emu, clock):
    """Across three scheduled rotations, the cached certs always hold the kid that signs."""
    assert _node_like_client_always_verifies(emu, clock) == []


def test_the_abrupt_test_switch_still_rotates_at_once(emu, clock):
    """The test-only switch (POST /emulator/rotate-keys, default abrupt) keeps the old behaviour: the new key
    signs at once, so a client that does not refetch on an unknown kid misses it (the server's refetch tests
    rely on this); {"abrupt": false} rotates Google's way."""
    assert _node_like_client_always_verifies(emu, clock, abrupt_at=500.0)
    kid = requests.post(emu.base_url + "/emulator/rotate-keys", timeout=10).json()["kid"]
    assert signing_kid(emu) == kid
    scheduled = requests.post(emu.base_url + "/emulator/rotate-keys", json={"abrupt": False}, timeout=10).json()["kid"]
    assert signing_kid(emu) == kid and scheduled in certs(emu)[0]
    clock.now += SCHEDULE["lead"]
    assert signing_kid(emu) == scheduled


def test_a_lead_shorter_than_the_certs_max_age_is_refused():
    """A next key must be published at least one certs max-age before it signs, or a cache could miss it."""
    with pytest.raises(ValueError, match="lead"):
        EmulatorThread(clients=[CLIENT], certs_max_age=3600, key_schedule={"lead": 60}).start()


@pytest.mark.gen_test(timeout=30)
async def test_server_certs_cache_honours_age():
    """tornado_signin.certs.CertCache: a reply held 3500 s of its max-age 3600 by Google's cache is fresh for
    100 s only; past that the next login refetches (it would wait the full hour if Age were ignored)."""
    stack = await open_stack()
    try:
        emulator, cache = stack.emulator, stack.ctx.certs
        document = emulator.keys.jwks() if cache.url.endswith("/v3/certs") else emulator.keys.pem_map()
        emulator.faults.add("certs", "status", status=200, body=document, headers={
            "Cache-Control": "public, max-age=3600, must-revalidate, no-transform", "Age": "3500"})
        assert (await stack.client().post_code(stack.mint())).code == 200
        fetched = emulator.stats["certs"]
        real_clock = cache.clock
        cache.clock = lambda: real_clock() + 60
        assert (await stack.client().post_code(stack.mint("bob@gmail.com"))).code == 200
        assert emulator.stats["certs"] == fetched, "still fresh 60 s in"
        cache.clock = lambda: real_clock() + 150
        assert (await stack.client().post_code(stack.mint("carol@example.org"))).code == 200
        assert emulator.stats["certs"] == fetched + 1, "stale after max-age - Age"
    finally:
        await close_stack(stack)


def test_the_schedule_survives_a_restart_with_a_state_folder(tmp_path, clock):
    """A pending next key (published, not yet signing) is still pending after a restart, and still signs on time."""
    from tornado_signin.emulator import Emulator

    first = Emulator(clients=[CLIENT], clock=clock, certs_max_age=300, key_schedule=SCHEDULE, state_dir=tmp_path)
    old_kid = first.keys.current.kid
    new_kid = first.rotate_keys(abrupt=False)
    first.close()
    again = Emulator(clients=[CLIENT], clock=clock, certs_max_age=300, key_schedule=SCHEDULE, state_dir=tmp_path)
    try:
        assert again.keys.current.kid == old_kid
        assert {key.kid for key in again.keys.published} == {old_kid, new_kid}
        clock.now += SCHEDULE["lead"]
        assert again.keys.current.kid == new_kid
        clock.now += SCHEDULE["linger"]
        assert {key.kid for key in again.keys.published} == {new_kid}
    finally:
        again.close()


def test_keys_given_without_times_sign_with_the_newest():
    """Keys handed over newest first (an older state folder, or a caller) sign with the newest, the rest stay published."""
    from tornado_signin.emulator.keys import KeySet, SigningKey

    newest, older = SigningKey.generate(), SigningKey.generate()
    keys = KeySet([newest, older], period=None)
    assert keys.current.kid == newest.kid and [k.kid for k in keys.published] == [newest.kid, older.kid]
    legacy = KeySet.from_json([k.to_json() for k in (newest, older)], period=None)
    assert legacy.current.kid == newest.kid
    assert KeySet.from_json(keys.to_json(), period=None).current.kid == newest.kid
