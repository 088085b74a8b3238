"""The emulator's fault plan and refresh-token switches: each one has the documented effect."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import pytest
import requests
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

from tornado_signin.emulator import EmulatorClient, EmulatorThread, FaultError

CLIENT = EmulatorClient("faults.apps.googleusercontent.com", "faults-secret", ("http://localhost:8080",))
DRIVE = "https://www.googleapis.com/auth/drive.readonly"


@pytest.fixture(scope="module")
def runner():
    thread = EmulatorThread(clients=[CLIENT])
    thread.start()
    yield thread
    thread.stop()


@pytest.fixture
def emu(runner):
    runner.emulator.reset()
    yield runner.emulator
    runner.emulator.reset()


def b64decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def jwt_parts(token: str) -> tuple[dict, dict, bytes]:
    header, claims, signature = token.split(".")
    return json.loads(b64decode(header)), json.loads(b64decode(claims)), b64decode(signature)


def exchange(emu, email="alice@example.com", timeout=10, **mint):
    code = emu.mint_code(CLIENT.client_id, email, **mint)
    data = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": "postmessage",
        "client_id": CLIENT.client_id,
        "client_secret": CLIENT.client_secret,
    }
    return requests.post(emu.base_url + "/token", data=data, timeout=timeout)


def refresh(emu, token):
    data = {
        "grant_type": "refresh_token",
        "refresh_token": token,
        "client_id": CLIENT.client_id,
        "client_secret": CLIENT.client_secret,
    }
    return requests.post(emu.base_url + "/token", data=data, timeout=10)


def plan(emu, spec):
    response = requests.post(emu.base_url + "/emulator/faults", json=spec, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def id_token_with(emu, spec):
    plan(emu, spec)
    return exchange(emu, prompt="consent").json()["id_token"]


# -- the plan itself -------------------------------------------------------------


def test_fault_applies_count_times_then_stops(emu):
    plan(emu, {"endpoint": "token", "kind": "status", "status": 503, "count": 2})
    assert [exchange(emu).status_code for _ in range(3)] == [503, 503, 200]


def test_fault_with_count_minus_one_lasts_until_cleared(emu):
    plan(emu, {"kind": "status", "status": 500, "count": -1})
    assert [exchange(emu).status_code for _ in range(3)] == [500, 500, 500]
    assert requests.get(emu.base_url + "/emulator/faults", timeout=10).json()["faults"][0]["count"] == -1
    assert requests.delete(emu.base_url + "/emulator/faults", timeout=10).status_code == 200
    assert exchange(emu).status_code == 200


def test_faults_are_per_endpoint(emu):
    plan(emu, [{"endpoint": "userinfo", "kind": "status", "status": 500}, {"endpoint": "token.refresh_token", "kind": "status", "status": 502}])
    first = exchange(emu, "bob@gmail.com")
    assert first.status_code == 200, "the refresh_token fault must not hit the code exchange"
    assert refresh(emu, first.json()["refresh_token"]).status_code == 502
    assert requests.get(emu.base_url + "/oauth2/v1/certs", timeout=10).status_code == 200
    assert requests.get(emu.base_url + "/v1/userinfo", timeout=10).status_code == 500


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"kind": "explode"}, "kind"),
        ({"endpoint": "nowhere", "kind": "status", "status": 500}, "endpoint"),
        ({"kind": "status"}, "status"),
        ({"kind": "status", "status": 500, "colour": "red"}, "colour"),
        ({"kind": "delay", "seconds": "soon"}, "seconds"),
        ({"kind": "status", "status": 500, "count": 0}, "count"),
        ({"endpoint": "certs", "kind": "omit_id_token"}, "token endpoint"),
        ({"kind": "id_token_signing", "method": "rot13"}, "method"),
        ({"kind": "id_token_signing", "method": "raw"}, "value"),
        ({"kind": "body"}, "body"),
        ([{"kind": "omit_id_token"}, {"kind": "nope"}], "kind"),
    ],
)
def test_invalid_faults_are_refused_and_nothing_is_planned(emu, spec, message):
    response = requests.post(emu.base_url + "/emulator/faults", json=spec, timeout=10)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"
    assert message in response.json()["error_description"]
    assert len(emu.faults) == 0


def test_python_access_to_the_plan(emu):
    fault = emu.faults.add("token", "status", status=429, headers={"Retry-After": "7"})
    assert emu.faults.pending() == [fault]
    response = exchange(emu)
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "7"
    assert response.json()["error"] == "rate_limit_exceeded"
    with pytest.raises(FaultError):
        emu.faults.add("token", "hang", seconds=-1, bogus=True)


# -- transport kinds ----------------------------------------------------------------


def test_status_with_custom_body_and_content_type(emu):
    plan(emu, {"kind": "status", "status": 502, "body": "<html>Bad Gateway</html>", "content_type": "text/html"})
    response = exchange(emu)
    assert response.status_code == 502
    assert response.headers["Content-Type"] == "text/html"
    assert response.text == "<html>Bad Gateway</html>"


def test_status_with_json_body(emu):
    plan(emu, {"kind": "status", "status": 400, "body": {"error": "invalid_grant", "error_description": "Bad Request"}})
    assert exchange(emu).json() == {"error": "invalid_grant", "error_description": "Bad Request"}


def test_status_before_processing_leaves_the_code_usable(emu):
    code = emu.mint_code(CLIENT.client_id, "alice@example.com")
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": "postmessage", "client_id": CLIENT.client_id, "client_secret": CLIENT.client_secret}
    emu.faults.add("token", "status", status=503)
    assert requests.post(emu.base_url + "/token", data=data, timeout=10).status_code == 503
    assert requests.post(emu.base_url + "/token", data=data, timeout=10).status_code == 200


def test_status_after_processing_spends_the_code(emu):
    code = emu.mint_code(CLIENT.client_id, "alice@example.com")
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": "postmessage", "client_id": CLIENT.client_id, "client_secret": CLIENT.client_secret}
    emu.faults.add("token", "status", status=503, after=True)
    assert requests.post(emu.base_url + "/token", data=data, timeout=10).status_code == 503
    retry = requests.post(emu.base_url + "/token", data=data, timeout=10)
    assert retry.json()["error"] == "invalid_grant"


def test_hang_never_answers_within_its_seconds(emu):
    plan(emu, {"kind": "hang", "seconds": 5})
    started = time.monotonic()
    with pytest.raises(requests.exceptions.ReadTimeout):
        exchange(emu, timeout=0.5)
    assert time.monotonic() - started < 3
    assert exchange(emu).status_code == 200


def test_hang_drops_the_connection_when_its_time_is_up(emu):
    plan(emu, {"endpoint": "certs", "kind": "hang", "seconds": 0.3})
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(emu.base_url + "/oauth2/v3/certs", timeout=5)


def test_delay_then_normal_answer(emu):
    plan(emu, {"endpoint": "userinfo", "kind": "delay", "seconds": 0.4})
    token = exchange(emu).json()["access_token"]
    started = time.monotonic()
    response = requests.get(emu.base_url + "/v1/userinfo", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert time.monotonic() - started >= 0.4
    assert response.status_code == 200
    assert response.json()["email"] == "alice@example.com"


def test_drip_sends_a_complete_body_slowly(emu):
    plan(emu, {"kind": "drip", "chunks": 4, "interval": 0.15})
    started = time.monotonic()
    response = exchange(emu)
    assert time.monotonic() - started >= 0.45
    assert response.status_code == 200
    assert response.json()["access_token"].startswith("ya29.")


def test_drip_trips_a_short_read_timeout(emu):
    plan(emu, {"endpoint": "certs", "kind": "drip", "chunks": 3, "interval": 1.0})
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(emu.base_url + "/oauth2/v1/certs", timeout=0.5)  # reads the body: not stream=True


@pytest.mark.parametrize("raw", ["null", "[]", "42", "not json", ""])
def test_body_replaces_the_answer_verbatim(emu, raw):
    plan(emu, {"kind": "body", "body": raw})
    response = exchange(emu)
    assert response.status_code == 200
    assert response.text == raw


def test_body_of_a_given_size(emu):
    plan(emu, {"endpoint": "certs.jwks", "kind": "body", "size": 3_000_000})
    response = requests.get(emu.base_url + "/oauth2/v3/certs", timeout=30)
    assert len(response.content) == 3_000_000
    assert isinstance(response.json(), dict)
    assert "keys" in requests.get(emu.base_url + "/oauth2/v3/certs", timeout=10).json()


def test_revoke_fault(emu):
    token = exchange(emu).json()["access_token"]
    plan(emu, {"endpoint": "revoke", "kind": "status", "status": 503})
    assert requests.post(emu.base_url + "/revoke", data={"token": token}, timeout=10).status_code == 503
    assert not emu.grant_revoked(CLIENT.client_id, "alice@example.com")


# -- token-response kinds ---------------------------------------------------------


def test_omit_id_token(emu):
    plan(emu, {"kind": "omit_id_token"})
    body = exchange(emu).json()
    assert "id_token" not in body and body["access_token"]


def test_scope_and_token_type(emu):
    plan(emu, [{"kind": "scope", "value": "openid"}, {"kind": "token_type", "value": "bearer"}])
    body = exchange(emu).json()
    assert body["scope"] == "openid"
    assert body["token_type"] == "bearer"


def test_issuer_without_scheme_fault(emu):
    _, claims, _ = jwt_parts(id_token_with(emu, {"kind": "issuer_without_scheme"}))
    assert claims["iss"] == "accounts.google.com"
    _, claims, _ = jwt_parts(exchange(emu).json()["id_token"])
    assert claims["iss"] == "https://accounts.google.com"


def test_id_token_claims_set_unset_shift(emu):
    spec = {
        "kind": "id_token_claims",
        "set": {"aud": [CLIENT.client_id, "other"], "email_verified": "true", "iat": "yesterday"},
        "unset": ["sub", "azp"],
        "shift": {"exp": -7200},
    }
    _, claims, _ = jwt_parts(id_token_with(emu, spec))
    assert claims["aud"] == [CLIENT.client_id, "other"]
    assert claims["email_verified"] == "true"
    assert claims["iat"] == "yesterday"
    assert "sub" not in claims and "azp" not in claims
    assert claims["exp"] < time.time() - 3000


def test_id_token_header(emu):
    spec = {"kind": "id_token_header", "set": {"kid": "unknown-kid", "jku": "http://evil.test/jwks"}, "unset": ["typ"]}
    header, _, _ = jwt_parts(id_token_with(emu, spec))
    assert header == {"alg": "RS256", "kid": "unknown-kid", "jku": "http://evil.test/jwks"}


def _rs256_valid(emu, token: str, hash_algorithm=None) -> bool:
    header, claims, signature = token.split(".")
    key = emu.keys.current.private_key.public_key()
    try:
        key.verify(b64decode(signature), f"{header}.{claims}".encode(), padding.PKCS1v15(), hash_algorithm or hashes.SHA256())
    except Exception:
        return False
    return True


def test_honest_tokens_verify_so_the_signing_checks_below_mean_something(emu):
    assert _rs256_valid(emu, exchange(emu).json()["id_token"])


def test_signing_bad_signature(emu):
    token = id_token_with(emu, {"kind": "id_token_signing", "method": "bad_signature"})
    header, _, _ = jwt_parts(token)
    assert header["alg"] == "RS256" and header["kid"] == emu.keys.current.kid
    assert not _rs256_valid(emu, token)


def test_signing_other_key_same_kid(emu):
    token = id_token_with(emu, {"kind": "id_token_signing", "method": "other_key_same_kid"})
    assert jwt_parts(token)[0]["kid"] == emu.keys.current.kid
    assert not _rs256_valid(emu, token)
    header, claims, signature = token.split(".")
    emu.keys.impostor().private_key.public_key().verify(
        b64decode(signature), f"{header}.{claims}".encode(), padding.PKCS1v15(), hashes.SHA256()
    )


def test_signing_none(emu):
    token = id_token_with(emu, {"kind": "id_token_signing", "method": "none"})
    assert jwt_parts(token)[0]["alg"] == "none"
    assert token.endswith(".")


@pytest.mark.parametrize("method", ["hs256_public_key", "hs256_client_secret"])
def test_signing_hs256(emu, method):
    token = id_token_with(emu, {"kind": "id_token_signing", "method": method})
    header, claims, signature = token.split(".")
    assert jwt_parts(token)[0]["alg"] == "HS256"
    secret = (
        emu.keys.current.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        if method == "hs256_public_key"
        else CLIENT.client_secret.encode()
    )
    expected = hmac.new(secret, f"{header}.{claims}".encode(), hashlib.sha256).digest()
    assert b64decode(signature) == expected


def test_signing_es256_and_rs512(emu):
    es = id_token_with(emu, {"kind": "id_token_signing", "method": "es256"})
    assert jwt_parts(es)[0]["alg"] == "ES256"
    assert len(jwt_parts(es)[2]) == 64
    rs = id_token_with(emu, {"kind": "id_token_signing", "method": "rs512"})
    assert jwt_parts(rs)[0]["alg"] == "RS512"
    assert _rs256_valid(emu, rs, hashes.SHA512()) and not _rs256_valid(emu, rs)


def test_signing_raw(emu):
    token = id_token_with(emu, {"kind": "id_token_signing", "method": "raw", "value": "a.b"})
    assert token == "a.b"


def test_google_auth_refuses_tampered_tokens(emu):
    from google.auth.transport.requests import Request
    from google.oauth2 import id_token

    certs_url = emu.base_url + "/oauth2/v1/certs"
    for spec in (
        {"kind": "id_token_signing", "method": "bad_signature"},
        {"kind": "id_token_signing", "method": "other_key_same_kid"},
        {"kind": "id_token_claims", "set": {"aud": "someone-else"}},
        {"kind": "id_token_claims", "shift": {"exp": -7200, "iat": -7200}},
    ):
        token = id_token_with(emu, spec)
        with pytest.raises(ValueError):
            id_token.verify_token(token, Request(), audience=CLIENT.client_id, certs_url=certs_url)


# -- refresh-token switches -----------------------------------------------------------


def test_expire_refresh_token_over_http(emu):
    first = exchange(emu, "carol@example.org", prompt="consent").json()
    response = requests.post(
        emu.base_url + "/emulator/expire-refresh-token",
        data={"client_id": CLIENT.client_id, "email": "carol@example.org"},
        timeout=10,
    )
    assert response.json() == {"expired": 1}
    assert refresh(emu, first["refresh_token"]).json()["error"] == "invalid_grant"
    # The access token is untouched, and a forced consent gives a working refresh token.
    assert requests.get(
        emu.base_url + "/v1/userinfo", headers={"Authorization": f"Bearer {first['access_token']}"}, timeout=10
    ).status_code == 200
    again = exchange(emu, "carol@example.org", prompt="consent").json()
    assert refresh(emu, again["refresh_token"]).status_code == 200


def test_rotate_refresh_tokens_setting(emu):
    first = exchange(emu, "bob@gmail.com", prompt="consent").json()
    response = requests.post(emu.base_url + "/emulator/settings", json={"rotate_refresh_tokens": True}, timeout=10)
    assert response.json()["rotate_refresh_tokens"] is True
    rotated = refresh(emu, first["refresh_token"]).json()
    assert rotated["refresh_token"] != first["refresh_token"]
    assert refresh(emu, first["refresh_token"]).json()["error"] == "invalid_grant"
    latest = refresh(emu, rotated["refresh_token"]).json()["refresh_token"]
    emu.reset()
    plain = refresh(emu, latest)
    assert plain.status_code == 200
    assert "refresh_token" not in plain.json()


def test_access_token_ttl_setting(emu):
    requests.post(emu.base_url + "/emulator/settings", json={"access_token_ttl": 1}, timeout=10)
    body = exchange(emu).json()
    assert body["expires_in"] == 1  # one less than the lifetime, yet never below 1 (Google's are positive)
    time.sleep(1.1)
    response = requests.get(emu.base_url + "/v1/userinfo", headers={"Authorization": f"Bearer {body['access_token']}"}, timeout=10)
    assert response.status_code == 401
    assert requests.get(emu.base_url + "/emulator/settings", timeout=10).json()["access_token_ttl"] == 1


def test_issuer_without_scheme_switch(emu):
    emu.configure(issuer_without_scheme=True)
    assert jwt_parts(exchange(emu).json()["id_token"])[1]["iss"] == "accounts.google.com"
    emu.reset()
    assert jwt_parts(exchange(emu).json()["id_token"])[1]["iss"] == "https://accounts.google.com"


@pytest.mark.parametrize("body", [{"rotate_refresh_tokens": "yes"}, {"access_token_ttl": -5}, {"colour": "red"}, [1]])
def test_bad_settings_are_refused(emu, body):
    response = requests.post(emu.base_url + "/emulator/settings", json=body, timeout=10)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"
    assert emu.settings()["rotate_refresh_tokens"] is False
