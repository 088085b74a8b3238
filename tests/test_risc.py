"""Cross-Account Protection: the receiver (POST /risc) against the emulator's RISC service, in-process."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging

import pytest
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port

from harness import CLIENT_ID, CLIENT_SECRET, LogCapture, Stack, json_body, make_config, without_state
from security_oracle import drain
from tornado_signin.app import make_app, make_server
from tornado_signin.emulator import Emulator, EmulatorClient
from tornado_signin.emulator.keys import SigningKey, encode_jwt
from tornado_signin.emulator.risc import EVENT_URIS, RISC_ISSUER
from tornado_signin.errors import ConsentRequiredError
from tornado_signin.risc import token_identifier, verification_channel

pytestmark = pytest.mark.gen_test(timeout=30)

SET_TYPE = {"Content-Type": "application/secevent+jwt"}


async def start_risc_stack(hooks=None, **overrides) -> Stack:
    app_sock, app_port = bind_unused_port()
    emu_sock, emu_port = bind_unused_port()
    app_url, emulator_url = f"http://127.0.0.1:{app_port}", f"http://127.0.0.1:{emu_port}"
    emulator = Emulator(clients=[EmulatorClient(CLIENT_ID, CLIENT_SECRET, (app_url,))], base_url=emulator_url)
    emu_server = HTTPServer(emulator.make_app())
    emu_server.add_sockets([emu_sock])
    config = make_config(app_url, emulator_url, risc={
        "enabled": True, "configuration_url": emulator_url + "/.well-known/risc-configuration"}, **overrides)
    app = make_app(config, hooks=hooks)
    server = make_server(app, config)
    server.add_sockets([app_sock])
    emulator.risc.update_stream({"delivery": {"delivery_method": "https://schemas.openid.net/secevent/risc/"
                                                                 "delivery-method/push", "url": app_url + "/risc"},
                                 "events_requested": list(EVENT_URIS.values())})
    emulator.risc.retry_delays = (0.05, 0.1)
    return Stack(app_url=app_url, emulator=emulator, app=app, config=config, servers=[server, emu_server])


@pytest.fixture
def stack(io_loop):
    opened = io_loop.run_sync(start_risc_stack)
    capture = LogCapture()
    capture.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    level = root.level
    root.addHandler(capture)
    root.setLevel(logging.INFO)
    opened.logs = capture
    yield opened
    root.removeHandler(capture)
    root.setLevel(level)
    io_loop.run_sync(opened.close)


async def signed_in(stack, email="alice@example.com"):
    client = stack.client()
    await client.fetch("/")
    body = json_body(await client.post_code(stack.mint(email, prompt="consent")))
    assert body["status"] == "signed_in", body
    return client, body["user"]["sub"]


async def trigger(stack, event, email="alice@example.com", **kw):
    summary = await stack.emulator.risc.trigger(event, email, **kw)
    assert summary["deliveries"], summary
    return summary


def statuses(summary):
    return [d["statuses"][-1] for d in summary["deliveries"]]


async def post_set(stack, token, headers=SET_TYPE):
    return await stack.client().fetch("/risc", method="POST", body=token, headers=headers)


def signed_set(stack, event, body, *, aud=CLIENT_ID, key=None, iss=RISC_ISSUER, jti="jti-1", **claims):
    key = key or stack.emulator.keys.current
    payload = {"iss": iss, "aud": aud, "iat": int(stack.emulator.state.clock()), "jti": jti,
               "events": {EVENT_URIS[event]: body}, **claims}
    payload = {k: v for k, v in payload.items() if v is not None}
    return encode_jwt({"alg": "RS256", "kid": key.kid, "typ": "secevent+jwt"}, payload, key=key, method=None)


# ----------------------------------------------------------------------------- the events


async def test_sessions_revoked_ends_every_session_live_and_is_recorded(stack):
    first, sub = await signed_in(stack)
    second, _ = await signed_in(stack)
    sockets = [await first.socket(), await second.socket()]
    for socket in sockets:
        await drain(socket)
    summary = await trigger(stack, "sessions-revoked")
    assert statuses(summary) == [202]
    for socket in sockets:
        assert await drain(socket, 2) == [{"type": "signed_out"}, None]
    assert [(await c.fetch("/api/scopes")).code for c in (first, second)] == [401, 401]
    record = stack.store.get(sub)
    assert record.security_event == "sessions-revoked" and record.security_event_at
    assert record.has_usable_refresh_token  # the grant stays
    assert stack.ctx.metrics.value("signin_risc_events_total", event="sessions-revoked", outcome="applied") == 1
    assert "signin_risc_events_total" in (await first.fetch("/metrics")).body.decode()


async def test_tokens_revoked_marks_the_grant_revoked_and_no_refresh_follows(stack):
    client, sub = await signed_in(stack)
    before = stack.store.get(sub)
    assert statuses(await trigger(stack, "tokens-revoked")) == [202]
    record = stack.store.get(sub)
    assert record.state == "revoked" and record.revoked_at
    # Audit fields kept.
    assert (record.email, record.scopes, record.created_at) == (before.email, before.scopes, before.created_at)
    assert stack.emulator.grant_revoked(CLIENT_ID, sub)  # applied to the emulator's own state too
    refreshes = stack.emulator.stats["token.refresh_token"]
    with pytest.raises(ConsentRequiredError):
        await stack.ctx.offline.fresh_record(sub, force=True)
    assert stack.emulator.stats["token.refresh_token"] == refreshes  # Google was not called
    assert (await client.fetch("/api/scopes")).code == 401  # and the sign-in session ended


@pytest.mark.parametrize("alg", ["hash_base64_sha512_sha512", "prefix"])
async def test_token_revoked_applies_only_when_the_identifier_matches(stack, alg):
    _, sub = await signed_in(stack)
    # Mismatch: some other refresh token (one this server never stored).
    summary = await trigger(stack, "token-revoked", token="1//0-someone-elses-refresh-token-0123456789", alg=alg)
    assert statuses(summary) == [202]
    assert stack.store.get(sub).has_usable_refresh_token and stack.store.get(sub).security_event is None
    assert stack.ctx.metrics.value("signin_risc_events_total", event="token-revoked", outcome="no_match") == 1
    # Match: the stored refresh token.
    stored = stack.store.get(sub).refresh_token
    assert statuses(await trigger(stack, "token-revoked", token=stored, alg=alg)) == [202]
    record = stack.store.get(sub)
    assert record.state == "revoked" and record.security_event == "token-revoked"
    assert stack.ctx.metrics.value("signin_risc_events_total", event="token-revoked", outcome="applied") == 1


def test_token_identifier_is_googles_double_sha512():
    import base64
    import hashlib

    token = "1//0abcdefghijklmnopqrstuvwxyz"
    expected = base64.b64encode(hashlib.sha512(hashlib.sha512(token.encode()).digest()).digest()).decode()
    assert token_identifier(token, "hash_base64_sha512_sha512") == expected
    assert token_identifier(token, "prefix") == "1//0abcdefghijkl"
    assert token_identifier(token, "plain") is None


async def test_account_disabled_for_hijacking_blocks_sign_in_until_account_enabled(stack):
    client, sub = await signed_in(stack)
    socket = await client.socket()
    await drain(socket)
    assert statuses(await trigger(stack, "account-disabled", reason="hijacking")) == [202]
    assert await drain(socket, 2) == [{"type": "signed_out"}, None]
    record = stack.store.get(sub)
    assert record.signin_blocked and record.state == "blocked" and record.security_event == "account-disabled:hijacking"
    # Sign-in is refused while blocked, and the tokens it got are not usable.
    attempt = stack.client()
    response = await attempt.post_code(stack.mint(prompt="consent"))
    assert response.code == 403 and without_state(json_body(response)) == {"error": "sign-in blocked"}
    assert not stack.store.get(sub).has_usable_refresh_token
    assert (await attempt.fetch("/api/scopes")).code == 401
    # account-enabled lifts the block.
    assert statuses(await trigger(stack, "account-enabled")) == [202]
    assert not stack.store.get(sub).signin_blocked
    response = await stack.client().post_code(stack.mint(prompt="consent"))
    assert response.code == 200, response.body
    assert stack.store.get(sub).has_usable_refresh_token


async def test_account_disabled_for_another_reason_ends_sessions_and_records(stack):
    client, sub = await signed_in(stack)
    assert statuses(await trigger(stack, "account-disabled", reason="bulk-account")) == [202]
    assert (await client.fetch("/api/scopes")).code == 401
    record = stack.store.get(sub)
    assert not record.signin_blocked and record.has_usable_refresh_token
    assert record.security_event == "account-disabled:bulk-account"
    assert (await stack.client().post_code(stack.mint(prompt="consent"))).code == 200


async def test_credential_change_required_is_recorded_and_logged(stack):
    client, sub = await signed_in(stack)
    assert statuses(await trigger(stack, "account-credential-change-required")) == [202]
    assert stack.store.get(sub).security_event == "account-credential-change-required"
    assert (await client.fetch("/api/scopes")).code == 200
    assert "account-credential-change-required" in stack.logs.text()


async def test_verification_is_logged_and_marked_in_the_hub(stack):
    deliveries = await stack.emulator.risc.verify("check-42")
    assert [d["statuses"] for d in deliveries] == [[202]]
    assert "check-42" in stack.logs.text()
    assert await stack.ctx.hub.last(verification_channel("check-42"))
    assert await stack.ctx.hub.last(verification_channel("other")) is None


async def test_users_json_shows_what_security_events_did(stack, tmp_path):
    from tornado_signin.cli import _public_record

    _, sub = await signed_in(stack)
    await trigger(stack, "account-disabled", reason="hijacking")
    shown = _public_record(stack.store.get(sub))
    assert shown["signin_blocked"] is True and shown["security_event"] == "account-disabled:hijacking"
    assert shown["disabled_at"] and shown["revoked"] and shown["state"] == "blocked"


# ----------------------------------------------------------------------------- what changes nothing


async def _unchanged_after(stack, sub, client, response):
    assert response.code == 400, response.code
    assert json_body(response) == {"error": "invalid request"}  # no detail
    record = stack.store.get(sub)
    assert record.security_event is None and record.revoked_at is None and not record.signin_blocked
    assert (await client.fetch("/api/scopes")).code == 200


async def test_forged_set_changes_nothing(stack):
    client, sub = await signed_in(stack)
    impostor = dataclasses.replace(SigningKey.generate(), kid=stack.emulator.keys.current.kid)  # published kid
    body = {"subject": {"subject_type": "iss-sub", "iss": RISC_ISSUER, "sub": sub}, "reason": "hijacking"}
    await _unchanged_after(stack, sub, client, await post_set(stack, signed_set(stack, "account-disabled", body,
                                                                                key=impostor)))
    assert stack.ctx.metrics.value("signin_risc_rejected_total", reason="signature") == 1


async def test_set_signed_with_a_retired_key_changes_nothing(stack):
    client, sub = await signed_in(stack)
    body = {"subject": {"subject_type": "iss-sub", "iss": RISC_ISSUER, "sub": sub}}
    old = signed_set(stack, "sessions-revoked", body)
    stack.emulator.rotate_keys()
    stack.emulator.rotate_keys()  # the key that signed `old` is no longer published
    await _unchanged_after(stack, sub, client, await post_set(stack, old))
    assert stack.ctx.metrics.value("signin_risc_rejected_total", reason="kid") == 1


async def test_wrong_audience_wrong_issuer_and_malformed_sets_change_nothing(stack):
    client, sub = await signed_in(stack)
    body = {"subject": {"subject_type": "iss-sub", "iss": RISC_ISSUER, "sub": sub}}
    bad = [
        signed_set(stack, "sessions-revoked", body, aud="another-client.apps.googleusercontent.com"),
        signed_set(stack, "sessions-revoked", body, aud=["another-client"]),
        signed_set(stack, "sessions-revoked", body, iss="https://accounts.google.com"),  # not the RISC issuer
        signed_set(stack, "sessions-revoked", body, iat=None),
        signed_set(stack, "sessions-revoked", body, iat="1700000000"),
        signed_set(stack, "sessions-revoked", body, iat=int(stack.emulator.state.clock()) + 3600),
        signed_set(stack, "sessions-revoked", body, jti=None),
        signed_set(stack, "sessions-revoked", body, events={}),
        encode_jwt({"alg": "none", "kid": stack.emulator.keys.current.kid},
                   {"iss": RISC_ISSUER, "aud": CLIENT_ID, "iat": 1, "jti": "x",
                    "events": {EVENT_URIS["sessions-revoked"]: body}}, key=stack.emulator.keys.current, method="none"),
        "not.a.jwt", "a.b", "", "x" * 16000, "\u00e9.\u00e9.\u00e9",
    ]
    for token in bad:
        await _unchanged_after(stack, sub, client, await post_set(stack, token))
    good = signed_set(stack, "sessions-revoked", body)
    for headers in ({"Content-Type": "application/json"}, {}, {"Content-Type": "text/plain"}):
        await _unchanged_after(stack, sub, client, await post_set(stack, good, headers))
    # No 5xx and no ERROR line for any of it.
    assert " ERROR " not in stack.logs.text()


async def test_replayed_set_changes_nothing(stack):
    _, sub = await signed_in(stack)
    body = {"subject": {"subject_type": "iss-sub", "iss": RISC_ISSUER, "sub": sub}}
    token = signed_set(stack, "sessions-revoked", body, jti="replayed-jti")
    assert (await post_set(stack, token)).code == 202
    # The user signs in again; a replay of the same SET must not end the new session.
    client, _ = await signed_in(stack)
    assert (await post_set(stack, token)).code == 202  # accepted (Google must stop redelivering)
    assert (await client.fetch("/api/scopes")).code == 200
    assert stack.ctx.metrics.value("signin_risc_events_total", event="sessions-revoked", outcome="duplicate") == 1


async def test_receiver_is_off_unless_enabled(io_loop):
    from harness import start_stack

    plain = await start_stack()
    try:
        assert (await plain.client().fetch("/risc", method="POST", body="x", headers=SET_TYPE)).code == 404
    finally:
        await plain.close()


async def test_emulator_retries_until_the_receiver_accepts(stack):
    _, sub = await signed_in(stack)
    await stack.ctx.store_health.stop()  # its probe started with the sign-in: stopped here, ctx.close() no longer knows it
    stack.ctx.store_health = None
    original = stack.ctx.risc.save
    calls = []

    async def flaky(record):
        calls.append(record)
        if len(calls) == 1:
            from tornado_signin.errors import StorageError
            raise StorageError("test: store down once")
        return await original(record)

    stack.ctx.risc.save = flaky
    summary = await trigger(stack, "sessions-revoked")
    assert statuses(summary) == [503]  # a verified event that could not be applied yet: Google retries
    for _ in range(50):
        if stack.emulator.risc.deliveries[-1]["delivered"]:
            break
        await asyncio.sleep(0.05)
    assert stack.emulator.risc.deliveries[-1]["statuses"] == [503, 202]
    assert stack.store.get(sub).security_event == "sessions-revoked"
    json.dumps(stack.emulator.risc.deliveries)  # the test-only listing is JSON


async def test_verified_sets_with_odd_events_are_accepted_without_a_5xx_or_an_error_line(stack):
    client, sub = await signed_in(stack)
    key = stack.emulator.keys.current
    odd_events = [
        {EVENT_URIS["sessions-revoked"]: {"subject": "not an object"}},
        {EVENT_URIS["sessions-revoked"]: {"subject": {"subject_type": "iss-sub", "sub": 12345}}},
        {EVENT_URIS["sessions-revoked"]: {"subject": {"sub": "x" * 300}}},
        {EVENT_URIS["account-disabled"]: {"subject": {"sub": sub + "-other"}, "reason": "\u202e" * 10}},
        {EVENT_URIS["token-revoked"]: {"subject": {"subject_type": "oauth_token", "token_type": "access_token",
                                                   "token_identifier_alg": "prefix", "token": "x"}}},
        {EVENT_URIS["token-revoked"]: {"subject": {"subject_type": "oauth_token", "token_identifier_alg": "plain",
                                                   "token": "x"}}},
        {EVENT_URIS["token-revoked"]: {"subject": {"token_identifier_alg": "prefix", "token": "y" * 600}}},
        {EVENT_URIS["verification"]: {"state": ["not", "a", "string"]}},
        {EVENT_URIS["verification"]: {"state": "line\nbreak\u0000"}},
        {"https://example.com/event-type/unknown": {"subject": {"sub": sub}}},
        {EVENT_URIS["account-enabled"]: {}, EVENT_URIS["account-credential-change-required"]: {"subject": {}}},
    ]
    for index, events in enumerate(odd_events):
        claims = {"iss": RISC_ISSUER, "aud": [CLIENT_ID, "other"], "iat": int(stack.emulator.state.clock()),
                  "jti": f"odd-{index}", "events": events}
        token = encode_jwt({"alg": "RS256", "kid": key.kid}, claims, key=key, method=None)
        response = await post_set(stack, token)
        assert response.code == 202, (index, response.code)
    record = stack.store.get(sub)
    assert record.has_usable_refresh_token and not record.signin_blocked
    assert (await client.fetch("/api/scopes")).code == 200
    assert " ERROR " not in stack.logs.text() and "Traceback" not in stack.logs.text()


def test_migrate_carries_the_security_and_expiry_fields(tmp_path):
    from tornado_signin.migrate import migrate
    from tornado_signin.store import load_store
    from tornado_signin.testing.store import full_record

    source = load_store("sql", {"url": f"sqlite:///{tmp_path / 'a.db'}"})
    target = load_store("file", {"path": str(tmp_path / "files")})
    try:
        record = full_record(sub="migrated")
        source.save(record)
        assert migrate(source, target).verified == 1
        copy = target.get("migrated")
        for name in ("refresh_token_expires_at", "disabled_at", "enabled_at", "security_event", "security_event_at"):
            assert getattr(copy, name) == getattr(record, name), name
    finally:
        source.close()
        target.close()


def test_service_account_file_may_come_from_the_environment(tmp_path):
    from harness import COOKIE_SECRET, ENCRYPTION_KEY
    from tornado_signin.config import config_from_dict

    document = {"development": True, "server": {"cookie_secret": COOKIE_SECRET},
                "google": {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET},
                "store": {"backend": "memory", "encryption": {"keys": [ENCRYPTION_KEY]}},
                "risc": {"enabled": True, "service_account_file": {"$env": "RISC_KEY_FILE"}}}
    config = config_from_dict(document, base_dir=tmp_path, environ={"RISC_KEY_FILE": "keys/sa.json"})
    assert config.risc.service_account_file == str(tmp_path / "keys/sa.json")
    assert config.risc.configuration_url == "https://accounts.google.com/.well-known/risc-configuration"
    from tornado_signin.errors import ConfigError

    with pytest.raises(ConfigError) as refused:
        config_from_dict(document, base_dir=tmp_path, environ={})
    assert "risc.service_account_file" in str(refused.value)
    with pytest.raises(ConfigError) as typo:
        config_from_dict({**document, "risc": {"enable": True}}, base_dir=tmp_path, environ={})
    assert "risc.enable" in str(typo.value)


def test_emulator_state_folder_keeps_the_stream_and_the_service_account(tmp_path):
    clients = [EmulatorClient(CLIENT_ID, CLIENT_SECRET, ("http://127.0.0.1:1",))]
    first = Emulator(clients=clients, base_url="http://127.0.0.1:2", state_dir=tmp_path / "state")
    first.risc.register_receiver("http://127.0.0.1:1/risc")
    first.risc.set_status({"status": "disabled"})
    key = first.risc.service_account("http://127.0.0.1:2")["private_key"]
    first.close()
    again = Emulator(clients=clients, base_url="http://127.0.0.1:2", state_dir=tmp_path / "state")
    try:
        assert again.risc.get_stream()["delivery"]["url"] == "http://127.0.0.1:1/risc"
        assert again.risc.status == "disabled"
        assert again.risc.service_account("http://127.0.0.1:2")["private_key"] == key
    finally:
        again.close()
