"""Issue 12 §4: late answers from Google never undo newer state.

Each race is reproduced with the emulator's delay faults, in both orders.
``delay`` with ``after: true`` makes Google process the call at once and
answer late ("it happened, the reply is slow"); plain ``delay`` makes it
process the call late. The rule checked throughout: an outcome applies only
to the token it was computed for, and a ``200 signed_in`` means the stored
refresh token works (a refresh with it succeeds at the emulator).
"""

from __future__ import annotations

import asyncio
import time

import pytest
import yaml

from harness import CLIENT_ID, json_body
from security_oracle import assert_logs_clean, stack_fixture
from tornado_signin.errors import ConsentRequiredError

stack = stack_fixture()
pytestmark = pytest.mark.gen_test(timeout=60)

ALICE = "alice@example.com"
LATE = 1.0  # seconds an answer is late
HEAD_START = 0.3  # when the competing request goes, after the late one


def sub_of(stack, email=ALICE):
    return stack.emulator.state.account(email).sub


async def stored_refresh_token_works(stack, sub) -> bool:
    """Return True when the stored record is active and its refresh token refreshes at the emulator."""
    record = stack.store.get(sub)
    if record is None or not record.has_usable_refresh_token:
        return False
    try:
        await stack.ctx.offline.fresh_record(sub, force=True)
    except ConsentRequiredError:
        return False
    return True


def late(stack, endpoint, *, after):
    stack.emulator.faults.add(endpoint, kind="delay", seconds=LATE, after=after)


# -- (a) two tabs of a new user ----------------------------------------------------------------------------


async def test_new_user_two_tabs_the_tab_with_the_refresh_token_answers_late(stack):
    """Tab 1's exchange (first consent: the refresh token) is processed, its answer late; tab 2's exchange gets
    no refresh token and revokes the grant meanwhile. Tab 1 must not answer 200 over a dead refresh token."""
    tab1, tab2 = stack.client(), stack.client()
    code1, code2 = stack.mint(ALICE), stack.mint(ALICE)  # the second consent of one grant: no refresh token
    late(stack, "token.authorization_code", after=True)
    first = asyncio.ensure_future(tab1.post_code(code1))
    await asyncio.sleep(HEAD_START)
    second = await tab2.post_code(code2)
    answer = await first
    assert answer.code in (200, 409), answer.body
    if answer.code == 200:
        assert await stored_refresh_token_works(stack, sub_of(stack)), "200 signed_in over a dead refresh token"
    else:
        assert json_body(answer)["status"] == "consent_required"
        assert not stack.store.get(sub_of(stack)).has_usable_refresh_token
    assert second.code in (200, 409), second.body
    # The user's next consent works.
    assert (await tab1.post_code(stack.mint(ALICE, prompt="consent"))).code == 200
    assert await stored_refresh_token_works(stack, sub_of(stack))
    assert_logs_clean(stack)


async def _two_browsers_first_consent_answered_late(stack, browser1, browser2):
    """Browser 1's exchange brings the refresh token, answered late; browser 2's (no refresh token) begins after
    it and is answered at once. Browser 2 waits for the exchange in flight instead of revoking under it."""
    code1, code2 = stack.mint(ALICE), stack.mint(ALICE)  # the second consent of one grant: no refresh token
    late(stack, "token.authorization_code", after=True)
    first = asyncio.ensure_future(browser1.post_code(code1))
    await asyncio.sleep(HEAD_START)
    second = await browser2.post_code(code2)
    answer = await first
    assert not stack.emulator.grant_revoked(CLIENT_ID, ALICE), "the grant was revoked while a sign-in was in flight"
    assert (answer.code, second.code) == (200, 200), (answer.body, second.body)
    assert json_body(second)["status"] == "signed_in"
    assert await stored_refresh_token_works(stack, sub_of(stack))


async def _two_browsers_no_refresh_token_answered_late(stack, browser1, browser2):
    """The other order: browser 2's exchange (no refresh token) begins first, answered late; browser 1's
    (the refresh token) begins after it and is stored first."""
    code1, code2 = stack.mint(ALICE), stack.mint(ALICE)
    late(stack, "token.authorization_code", after=True)
    second = asyncio.ensure_future(browser2.post_code(code2))
    await asyncio.sleep(HEAD_START)
    first = await browser1.post_code(code1)
    answer = await second
    assert (first.code, answer.code) == (200, 200), (first.body, answer.body)
    assert not stack.emulator.grant_revoked(CLIENT_ID, ALICE), "a grant with a stored refresh token was revoked"
    assert await stored_refresh_token_works(stack, sub_of(stack))


async def test_new_user_two_browsers_the_first_consent_answers_late(stack):
    """Two browsers (separate cookie jars, no session in common): both sign in, the grant stays."""
    await _two_browsers_first_consent_answered_late(stack, stack.client(), stack.client())
    assert_logs_clean(stack)


async def test_new_user_two_browsers_the_second_consent_answers_late(stack):
    await _two_browsers_no_refresh_token_answered_late(stack, stack.client(), stack.client())


async def test_a_new_user_alone_without_refresh_token_still_gets_the_consent_workaround(stack):
    """No other exchange in flight: the sign-in without a refresh token revokes the grant and answers 409 at once."""
    stack.mint(ALICE)  # the first consent, its code never posted
    answer = await stack.client().post_code(stack.mint(ALICE))
    assert answer.code == 409 and json_body(answer)["status"] == "consent_required"
    assert stack.emulator.grant_revoked(CLIENT_ID, ALICE)


async def test_a_sign_in_without_refresh_token_waits_only_for_exchanges_that_began_before_it(stack):
    """An exchange of somebody else (Carol) that began earlier and is still in flight is waited for (bounded by its
    deadline), then the consent workaround goes on: her late answer does not sign Alice in."""
    code_carol = stack.mint("carol@example.org")
    stack.mint(ALICE)
    code_alice = stack.mint(ALICE)
    late(stack, "token.authorization_code", after=True)
    carol = asyncio.ensure_future(stack.client().post_code(code_carol))
    await asyncio.sleep(HEAD_START)
    began = time.monotonic()
    alice = await stack.client().post_code(code_alice)
    assert alice.code == 409 and json_body(alice)["status"] == "consent_required"
    assert stack.emulator.grant_revoked(CLIENT_ID, ALICE)
    assert time.monotonic() - began > LATE - HEAD_START - 0.2, "Alice did not wait for the exchange in flight"
    assert (await carol).code == 200


async def test_new_user_two_tabs_of_one_browser_both_sign_in(stack):
    """Two tabs of one browser share its session: their code POSTs are completed one after the other, so the
    tab without a refresh token finds the other's stored and nobody revokes the grant."""
    from harness import PageClient

    tab1 = stack.client()
    await tab1.fetch("/")
    tab2 = PageClient(stack.app_url, stack.app_url)
    tab2.cookies = dict(tab1.cookies)  # the same browser: one cookie jar
    code1, code2 = stack.mint(ALICE), stack.mint(ALICE)
    late(stack, "token.authorization_code", after=True)
    first = asyncio.ensure_future(tab1.post_code(code1))
    await asyncio.sleep(HEAD_START)
    second = await tab2.post_code(code2)
    answer = await first
    assert (answer.code, second.code) == (200, 200), (answer.body, second.body)
    assert not stack.emulator.grant_revoked(CLIENT_ID, ALICE), "the grant was revoked while a sign-in was in flight"
    assert await stored_refresh_token_works(stack, sub_of(stack))


async def test_new_user_two_tabs_the_tab_without_refresh_token_answers_late(stack):
    tab1, tab2 = stack.client(), stack.client()
    code1, code2 = stack.mint(ALICE), stack.mint(ALICE)
    late(stack, "token.authorization_code", after=True)
    second = asyncio.ensure_future(tab2.post_code(code2))  # no refresh token, answered late
    await asyncio.sleep(HEAD_START)
    first = await tab1.post_code(code1)
    assert first.code == 200, first.body
    assert (await second).code == 200, "the stored refresh token serves the second tab too"
    assert await stored_refresh_token_works(stack, sub_of(stack))
    assert not stack.emulator.grant_revoked(CLIENT_ID, ALICE), "a grant with a stored refresh token was revoked"


# -- (b) a slow refresh ending in invalid_grant ---------------------------------------------------------------


async def _signed_in(stack, client):
    assert (await client.post_code(stack.mint(ALICE))).code == 200
    sub = sub_of(stack)
    return sub, stack.store.get(sub).refresh_token


async def test_a_late_invalid_grant_does_not_revoke_a_newer_refresh_token(stack):
    client = stack.client()
    sub, old_token = await _signed_in(stack, client)
    stack.emulator.state.revoke(old_token)  # the user removed the app's access at Google
    late(stack, "token.refresh_token", after=False)
    refresh = asyncio.ensure_future(stack.ctx.offline.fresh_record(sub, force=True))
    await asyncio.sleep(HEAD_START)
    # Meanwhile the user signs in again with consent: a new grant, a new refresh token.
    assert (await client.post_code(stack.mint(ALICE, prompt="consent"))).code == 200
    assert stack.store.get(sub).refresh_token != old_token
    with pytest.raises(ConsentRequiredError):
        await refresh
    record = stack.store.get(sub)
    assert record.state == "active", "the late invalid_grant of the old token revoked the new one"
    assert await stored_refresh_token_works(stack, sub)


async def test_an_invalid_grant_before_the_new_sign_in_is_undone_by_it(stack):
    client = stack.client()
    sub, old_token = await _signed_in(stack, client)
    stack.emulator.state.revoke(old_token)
    with pytest.raises(ConsentRequiredError):
        await stack.ctx.offline.fresh_record(sub, force=True)
    assert stack.store.get(sub).state == "revoked"
    assert (await client.post_code(stack.mint(ALICE, prompt="consent"))).code == 200
    assert stack.store.get(sub).state == "active"
    assert await stored_refresh_token_works(stack, sub)


# -- (c) disconnect on device A, sign-in on device B ----------------------------------------------------------


async def test_a_late_revoke_answer_does_not_delete_a_newer_sign_in(stack):
    """A's revoke is processed at once (the grant ends), its answer late; B signs in meanwhile (a new grant).
    A's delete must not remove B's fresh record."""
    device_a, device_b = stack.client(), stack.client()
    sub, _ = await _signed_in(stack, device_a)
    late(stack, "revoke", after=True)
    disconnect = asyncio.ensure_future(device_a.post_gated("/disconnect"))
    await asyncio.sleep(HEAD_START)
    assert stack.emulator.grant_revoked(CLIENT_ID, ALICE)
    signed_in = await device_b.post_code(stack.mint(ALICE))
    assert signed_in.code == 200, signed_in.body
    answer = await disconnect
    assert answer.code == 200 and json_body(answer)["status"] == "disconnected"
    assert stack.store.get(sub) is not None, "the late disconnect deleted B's newer record"
    assert await stored_refresh_token_works(stack, sub)


async def test_a_sign_in_in_flight_across_a_revoke_never_answers_200_over_a_dead_token(stack):
    """B's exchange (consent: a refresh token of the same grant) is processed, its answer late; A disconnects
    meanwhile, which ends that grant. B must not answer 200 over the dead refresh token."""
    device_a, device_b = stack.client(), stack.client()
    sub, _ = await _signed_in(stack, device_a)
    code_b = stack.mint(ALICE, prompt="consent")
    late(stack, "token.authorization_code", after=True)
    signing_in = asyncio.ensure_future(device_b.post_code(code_b))
    await asyncio.sleep(HEAD_START)
    answer = await device_a.post_gated("/disconnect")
    assert answer.code == 200, answer.body
    assert stack.emulator.grant_revoked(CLIENT_ID, ALICE)
    signed_in = await signing_in
    assert signed_in.code in (200, 409), signed_in.body
    if signed_in.code == 200:
        assert await stored_refresh_token_works(stack, sub), "200 signed_in over a dead refresh token"
    else:
        record = stack.store.get(sub)
        assert record is None or not record.has_usable_refresh_token
    assert_logs_clean(stack)


async def test_a_disconnect_after_a_completed_sign_in_forgets_the_user(stack):
    device_a, device_b = stack.client(), stack.client()
    sub, _ = await _signed_in(stack, device_a)
    assert (await device_b.post_code(stack.mint(ALICE, prompt="consent"))).code == 200
    answer = await device_a.post_gated("/disconnect")
    assert answer.code == 200
    assert stack.store.get(sub) is None
    assert stack.emulator.grant_revoked(CLIENT_ID, ALICE)


# -- across servers: two applications sharing a SQLite file and a Redis hub ---------------------------------


@pytest.fixture
def two_servers(io_loop, tmp_path, redis_url, unique_name):
    """Stack A, and a second application B on the same store file and Redis (its own hub client and engine)."""
    from security_oracle import close_stack, open_stack
    from tornado.testing import bind_unused_port

    from tornado_signin.app import make_app, make_server

    shared = {"store": {"backend": "sql", "url": f"sqlite:///{tmp_path / 'tokens.sqlite3'}"},
              "hub": {"backend": "redis", "url": redis_url, "key_prefix": unique_name + ":"}}
    stack = io_loop.run_sync(lambda: open_stack(**shared))
    sock, port = bind_unused_port()
    app_b = make_app(stack.config)
    server_b = make_server(app_b, stack.config)
    server_b.add_sockets([sock])
    yield stack, f"http://127.0.0.1:{port}", app_b

    async def close():
        server_b.stop()
        await server_b.close_all_connections()
        await app_b.settings["signin"].close()
        await close_stack(stack)

    io_loop.run_sync(close)


async def test_two_browsers_on_two_servers_through_the_redis_hub(two_servers):
    from harness import PageClient

    stack, url_b, _ = two_servers
    await _two_browsers_first_consent_answered_late(stack, stack.client(), PageClient(url_b, url_b))


async def test_two_browsers_on_two_servers_the_other_order(two_servers):
    from harness import PageClient

    stack, url_b, _ = two_servers
    await _two_browsers_no_refresh_token_answered_late(stack, stack.client(), PageClient(url_b, url_b))


@pytest.fixture
def server_process(two_servers, tmp_path):
    """Stack A, and `tornado-signin serve` in a process of its own on the same SQLite file and Redis prefix."""
    import procs

    stack = two_servers[0]
    endpoints = stack.config.google.endpoints
    emulator_url = endpoints.token_uri.rsplit("/", 1)[0]
    port = procs.free_port()
    url = f"http://127.0.0.1:{port}"
    config = procs.write_config(
        tmp_path, name="process-b", emulator_url=emulator_url, origins=[url],
        store={"backend": "sql", "url": stack.config.store.options["url"]},
        hub={"backend": "redis", "url": stack.config.hub.url, "key_prefix": stack.config.hub.key_prefix})
    document = yaml.safe_load(config.read_text())
    document["google"]["endpoints"] = {"auth_uri": endpoints.auth_uri, "token_uri": endpoints.token_uri,
                                       "certs_uri": endpoints.certs_uri}
    config.write_text(yaml.safe_dump(document))
    proc = procs.start_server(tmp_path, config, port)
    yield stack, url, proc
    proc.stop()


async def test_two_browsers_on_two_server_processes(server_process):
    from harness import PageClient

    stack, url_b, proc = server_process
    await _two_browsers_first_consent_answered_late(stack, stack.client(), PageClient(url_b, url_b))
    assert "Traceback" not in proc.log()


async def test_two_browsers_on_two_server_processes_the_other_order(server_process):
    from harness import PageClient

    stack, url_b, _ = server_process
    await _two_browsers_no_refresh_token_answered_late(stack, stack.client(), PageClient(url_b, url_b))


async def test_a_late_revoke_on_one_server_keeps_a_sign_in_on_the_other(two_servers):
    from harness import PageClient

    stack, url_b, _ = two_servers
    device_a = stack.client()
    device_b = PageClient(url_b, url_b)
    sub, _ = await _signed_in(stack, device_a)
    late(stack, "revoke", after=True)
    disconnect = asyncio.ensure_future(device_a.post_gated("/disconnect"))
    await asyncio.sleep(HEAD_START)
    assert (await device_b.post_code(stack.mint(ALICE))).code == 200
    assert (await disconnect).code == 200
    assert stack.store.get(sub) is not None, "the late disconnect deleted the other server's newer record"
    assert await stored_refresh_token_works(stack, sub)


# -- a refresh answered late, across a disconnect --------------------------------------------------------------


async def test_a_late_refresh_answer_does_not_bring_back_a_disconnected_user(stack):
    """The refresh is processed at Google, its answer late; the user disconnects meanwhile. The refreshed
    tokens must not re-create the forgotten record."""
    client = stack.client()
    sub, _ = await _signed_in(stack, client)
    late(stack, "token.refresh_token", after=True)
    refresh = asyncio.ensure_future(stack.ctx.offline.fresh_record(sub, force=True))
    await asyncio.sleep(HEAD_START)
    assert (await client.post_gated("/disconnect")).code == 200
    try:
        await refresh
    except ConsentRequiredError:
        pass
    assert stack.store.get(sub) is None, "a late refresh brought the disconnected user back"
    assert stack.emulator.grant_revoked(CLIENT_ID, ALICE)


async def test_a_refresh_after_a_disconnect_finds_nobody(stack):
    from tornado_signin.errors import UnknownUserError

    client = stack.client()
    sub, _ = await _signed_in(stack, client)
    assert (await client.post_gated("/disconnect")).code == 200
    with pytest.raises(UnknownUserError):
        await stack.ctx.offline.fresh_record(sub, force=True)
    assert stack.store.get(sub) is None


async def test_the_cli_revoke_waits_for_a_lease_another_process_holds(two_servers, tmp_path):
    """``tornado-signin revoke`` (a process of its own, on the same store and Redis) takes the user's grant
    lease too: while a server holds it (a sign-in being stored), the revoke waits, then goes on."""
    import os
    import sys

    import yaml

    from harness import CLIENT_SECRET, COOKIE_SECRET, ENCRYPTION_KEY

    stack, _, _ = two_servers
    sub, _ = await _signed_in(stack, stack.client())
    endpoints = stack.config.google.endpoints
    document = {
        "development": True,
        "server": {"cookie_secret": {"$env": "TS_COOKIE"}},
        "google": {"client_id": CLIENT_ID, "client_secret": {"$env": "TS_SECRET"},
                   "endpoints": {"auth_uri": endpoints.auth_uri, "token_uri": endpoints.token_uri,
                                 "certs_uri": endpoints.certs_uri}},
        "store": {"backend": "sql", "url": stack.config.store.options["url"],
                  "encryption": {"keys": [{"$env": "TS_KEY"}]}},
        "hub": {"backend": "redis", "url": stack.config.hub.url, "key_prefix": stack.config.hub.key_prefix},
    }
    path = tmp_path / "cli.yaml"
    path.write_text(yaml.safe_dump(document))
    env = {**os.environ, "TS_COOKIE": COOKIE_SECRET, "TS_SECRET": CLIENT_SECRET, "TS_KEY": ENCRYPTION_KEY}

    token = await stack.ctx.hub.acquire_lease(f"grant:{sub}", 30)
    assert token
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tornado_signin.cli", "revoke", "--config", str(path), sub,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
    try:
        await asyncio.sleep(3.0)
        assert process.returncode is None, "the revoke did not wait for the lease"
        assert stack.store.get(sub) is not None and not stack.emulator.grant_revoked(CLIENT_ID, ALICE)
    finally:
        assert await stack.ctx.hub.release_lease(f"grant:{sub}", token)
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, err.decode()
    assert b"forgotten" in out
    assert stack.store.get(sub) is None and stack.emulator.grant_revoked(CLIENT_ID, ALICE)
