"""The Google emulator: codes, tokens, grants, certs, popup, scripts, and realism checks.

The emulator runs in a background thread (:class:`EmulatorThread`) so that
blocking clients - ``requests`` here, google-auth's transport in the realism
tests - never block the IOLoop that serves it. Time moves through an
injected clock.
"""

from __future__ import annotations

import base64
import html.parser
import json
import re

import pytest
import requests
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tornado_signin.emulator import (
    DEFAULT_ACCOUNTS,
    Emulator,
    EmulatorClient,
    EmulatorThread,
    TestAccount,
)

ORIGIN = "http://localhost:8080"
CLIENT = EmulatorClient(
    client_id="test-client.apps.googleusercontent.com",
    client_secret="test-secret",
    javascript_origins=(ORIGIN,),
    redirect_uris=("http://localhost:8080/oauth2callback",),
)
OTHER = EmulatorClient("other.apps.googleusercontent.com", "other-secret", ("http://other.test",))
EMAIL_URL = "https://www.googleapis.com/auth/userinfo.email"
PROFILE_URL = "https://www.googleapis.com/auth/userinfo.profile"
DRIVE = "https://www.googleapis.com/auth/drive.readonly"


@pytest.fixture
def emu(clock):
    runner = EmulatorThread(clients=[CLIENT, OTHER], clock=clock)
    emulator = runner.start()
    yield emulator
    runner.stop()


def b64json(segment: str) -> dict:
    return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))


def jwt_parts(token: str) -> tuple[dict, dict]:
    header, claims, _ = token.split(".")
    return b64json(header), b64json(claims)


def exchange(emu, code, *, redirect_uri="postmessage", client=CLIENT, auth="body"):
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri}
    kwargs = {}
    if auth == "body":
        data.update(client_id=client.client_id, client_secret=client.client_secret)
    elif auth == "basic":
        kwargs["auth"] = (client.client_id, client.client_secret)
    return requests.post(emu.base_url + "/token", data=data, timeout=10, **kwargs)


def refresh(emu, refresh_token, client=CLIENT, **extra):
    data = {
        "grant_type": "refresh_token",
        "refresh_token": refresh_token,
        "client_id": client.client_id,
        "client_secret": client.client_secret,
        **extra,
    }
    return requests.post(emu.base_url + "/token", data=data, timeout=10)


def userinfo(emu, access_token, path="/v1/userinfo"):
    return requests.get(emu.base_url + path, headers={"Authorization": f"Bearer {access_token}"}, timeout=10)


def sign_in(emu, email="alice@example.com", **mint):
    response = exchange(emu, emu.mint_code(CLIENT.client_id, email, **mint))
    assert response.status_code == 200, response.text
    return response.json()


# -- accounts and the Python API ------------------------------------------------


def test_default_accounts_are_as_documented():
    by_email = {account.email: account for account in DEFAULT_ACCOUNTS}
    assert by_email["alice@example.com"].hosted_domain == "example.com"
    assert by_email["bob@gmail.com"].hosted_domain is None
    assert by_email["carol@example.org"].hosted_domain == "example.org"
    assert all(re.fullmatch(r"\d{21}", account.sub) for account in DEFAULT_ACCOUNTS)
    assert len({account.sub for account in DEFAULT_ACCOUNTS}) == len(DEFAULT_ACCOUNTS)


def test_client_secrets_follow_googles_format():
    emulator = Emulator(clients=[CLIENT], base_url="http://127.0.0.1:9999/")
    web = emulator.client_secrets(CLIENT.client_id)["web"]
    assert web["client_id"] == CLIENT.client_id
    assert web["client_secret"] == CLIENT.client_secret
    assert web["auth_uri"] == "http://127.0.0.1:9999/o/oauth2/v2/auth"
    assert web["token_uri"] == "http://127.0.0.1:9999/token"
    assert web["auth_provider_x509_cert_url"] == "http://127.0.0.1:9999/oauth2/v1/certs"
    assert web["javascript_origins"] == [ORIGIN]
    assert web["project_id"]
    assert emulator.client_secrets() == emulator.client_secrets(CLIENT.client_id)
    with pytest.raises(RuntimeError):
        Emulator(clients=[CLIENT]).client_secrets()


def test_client_secret_json_endpoint_serves_only_secrets_the_emulator_generated():
    """Issue 12 item 6: an operator's secret (a config's) is never served; a generated one is."""
    generated = EmulatorClient.generate("generated.apps.googleusercontent.com", ("http://localhost:8080",))
    assert generated.secret_generated and generated.client_secret.startswith("GOCSPX-")
    with EmulatorThread(clients=[generated, CLIENT]) as emu:
        response = requests.get(emu.base_url + "/client_secret.json", params={"client_id": generated.client_id},
                                timeout=10)
        assert response.status_code == 200
        assert response.headers["Content-Disposition"] == 'attachment; filename="client_secret.json"'
        assert response.json() == emu.client_secrets(generated.client_id)
        refused = requests.get(emu.base_url + "/client_secret.json", params={"client_id": CLIENT.client_id},
                               timeout=10)
        assert refused.status_code == 403 and CLIENT.client_secret not in refused.text
        # Two clients: which one is ambiguous.
        assert requests.get(emu.base_url + "/client_secret.json", timeout=10).status_code == 404


def test_openid_configuration_points_at_the_emulator(emu):
    doc = requests.get(emu.base_url + "/.well-known/openid-configuration", timeout=10).json()
    assert doc["issuer"] == "https://accounts.google.com"
    assert doc["token_endpoint"] == emu.base_url + "/token"
    assert doc["jwks_uri"] == emu.base_url + "/oauth2/v3/certs"
    assert doc["userinfo_endpoint"] == emu.base_url + "/v1/userinfo"
    assert doc["revocation_endpoint"] == emu.base_url + "/revoke"
    assert doc["authorization_endpoint"] == emu.base_url + "/o/oauth2/v2/auth"
    assert doc["id_token_signing_alg_values_supported"] == ["RS256"]


# -- the authorization_code grant ----------------------------------------------


def test_code_exchange_returns_googles_token_response(emu, clock):
    response = exchange(emu, emu.mint_code(CLIENT.client_id, "alice@example.com"))
    assert response.status_code == 200
    assert response.headers["Cache-Control"].startswith("no-cache, no-store")
    body = response.json()
    assert body["access_token"].startswith("ya29.")
    assert body["refresh_token"].startswith("1//")
    assert body["expires_in"] == 3599
    assert body["token_type"] == "Bearer"
    assert set(body["scope"].split()) == {"openid", EMAIL_URL, PROFILE_URL}
    header, claims = jwt_parts(body["id_token"])
    assert header["alg"] == "RS256"
    assert header["kid"] == emu.keys.current.kid
    assert claims["iss"] == "https://accounts.google.com"
    assert claims["aud"] == claims["azp"] == CLIENT.client_id
    assert claims["sub"] == DEFAULT_ACCOUNTS[0].sub
    assert claims["email"] == "alice@example.com"
    assert claims["email_verified"] is True
    assert claims["hd"] == "example.com"
    assert claims["name"] == "Alice Example"
    assert (claims["given_name"], claims["family_name"]) == ("Alice", "Example")
    assert claims["iat"] == int(clock.now)
    assert claims["exp"] == claims["iat"] + 3600
    digest = __import__("hashlib").sha256(body["access_token"].encode()).digest()[:16]
    assert claims["at_hash"] == base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def test_account_without_hosted_domain_has_no_hd_claim(emu):
    _, claims = jwt_parts(sign_in(emu, "bob@gmail.com")["id_token"])
    assert "hd" not in claims
    assert claims["email"] == "bob@gmail.com"


def test_codes_are_one_time(emu):
    code = emu.mint_code(CLIENT.client_id, "alice@example.com")
    assert exchange(emu, code).status_code == 200
    replay = exchange(emu, code)
    assert replay.status_code == 400
    assert replay.json() == {"error": "invalid_grant", "error_description": "Bad Request"}


def test_unknown_code_is_invalid_grant(emu):
    response = exchange(emu, "4/0Anot-a-code")
    assert (response.status_code, response.json()["error"]) == (400, "invalid_grant")


def test_codes_expire_after_code_ttl(emu, clock):
    fresh = emu.mint_code(CLIENT.client_id, "alice@example.com")
    stale = emu.mint_code(CLIENT.client_id, "bob@gmail.com")
    clock.advance(599)
    assert exchange(emu, fresh).status_code == 200
    clock.advance(2)
    response = exchange(emu, stale)
    assert (response.status_code, response.json()["error"]) == (400, "invalid_grant")


def test_redirect_uri_must_match_the_one_of_the_code(emu):
    code = emu.mint_code(CLIENT.client_id, "alice@example.com")
    response = exchange(emu, code, redirect_uri="http://localhost:8080/oauth2callback")
    assert response.status_code == 400
    assert response.json()["error"] == "redirect_uri_mismatch"
    assert exchange(emu, code).status_code == 200
    other = emu.mint_code(CLIENT.client_id, "bob@gmail.com", redirect_uri="http://localhost:8080/oauth2callback")
    assert exchange(emu, other).json()["error"] == "redirect_uri_mismatch"
    assert exchange(emu, other, redirect_uri="http://localhost:8080/oauth2callback").status_code == 200


def test_client_auth_by_http_basic(emu):
    response = exchange(emu, emu.mint_code(CLIENT.client_id, "alice@example.com"), auth="basic")
    assert response.status_code == 200
    assert response.json()["access_token"].startswith("ya29.")


@pytest.mark.parametrize("auth", ["body", "basic"])
def test_wrong_client_secret_is_invalid_client(emu, auth):
    impostor = EmulatorClient(CLIENT.client_id, "wrong", ())
    code = emu.mint_code(CLIENT.client_id, "alice@example.com")
    response = exchange(emu, code, client=impostor, auth=auth)
    assert response.status_code == 401
    assert response.json() == {"error": "invalid_client", "error_description": "Unauthorized"}
    assert exchange(emu, code).status_code == 200, "a refused client must not spend the code"


def test_code_of_another_client_is_refused(emu):
    code = emu.mint_code(CLIENT.client_id, "alice@example.com")
    response = exchange(emu, code, client=OTHER)
    assert (response.status_code, response.json()["error"]) == (400, "invalid_grant")


def test_missing_parameters_and_bad_grant_type(emu):
    url = emu.base_url + "/token"
    creds = {"client_id": CLIENT.client_id, "client_secret": CLIENT.client_secret}
    missing_code = requests.post(url, data={"grant_type": "authorization_code", "redirect_uri": "postmessage", **creds})
    assert (missing_code.status_code, missing_code.json()["error"]) == (400, "invalid_request")
    no_grant = requests.post(url, data=creds)
    assert (no_grant.status_code, no_grant.json()["error"]) == (400, "invalid_request")
    bad = requests.post(url, data={"grant_type": "password", **creds})
    assert (bad.status_code, bad.json()["error"]) == (400, "unsupported_grant_type")
    anonymous = requests.post(url, data={"grant_type": "authorization_code", "code": "x", "redirect_uri": "postmessage"})
    assert (anonymous.status_code, anonymous.json()["error"]) == (400, "invalid_request")


# -- refresh tokens, consent and scopes ----------------------------------------


def test_refresh_token_only_on_first_consent_or_prompt_consent(emu):
    first = sign_in(emu)
    assert "refresh_token" in first
    again = sign_in(emu)
    assert "refresh_token" not in again
    assert "id_token" in again
    forced = sign_in(emu, prompt="consent")
    assert forced["refresh_token"] != first["refresh_token"]
    # Each user's first consent is their own.
    assert "refresh_token" in sign_in(emu, "bob@gmail.com")


def test_online_access_never_gets_a_refresh_token(emu):
    assert "refresh_token" not in sign_in(emu, access_type="online")


def test_refresh_grant_returns_a_new_access_token(emu, clock):
    first = sign_in(emu)
    clock.advance(100)
    response = refresh(emu, first["refresh_token"])
    assert response.status_code == 200
    body = response.json()
    assert body["access_token"] != first["access_token"]
    assert "refresh_token" not in body
    assert body["expires_in"] == 3599
    assert set(body["scope"].split()) == {"openid", EMAIL_URL, PROFILE_URL}
    _, claims = jwt_parts(body["id_token"])
    assert claims["iat"] == int(clock.now)
    assert userinfo(emu, body["access_token"]).status_code == 200


def test_refresh_grant_may_narrow_but_not_widen_scope(emu):
    token = sign_in(emu)["refresh_token"]
    narrow = refresh(emu, token, scope="email")
    assert narrow.status_code == 200
    assert set(narrow.json()["scope"].split()) == {"openid", EMAIL_URL}
    wide = refresh(emu, token, scope=f"email {DRIVE}")
    assert (wide.status_code, wide.json()["error"]) == (400, "invalid_scope")


def test_refresh_token_of_another_client_or_unknown_is_refused(emu):
    token = sign_in(emu)["refresh_token"]
    assert refresh(emu, token, client=OTHER).json()["error"] == "unauthorized_client"
    unknown = refresh(emu, "1//0unknown")
    assert unknown.status_code == 400
    assert unknown.json() == {"error": "invalid_grant", "error_description": "Token has been expired or revoked."}


def test_scope_expansion(emu):
    body = sign_in(emu, scope="email")
    assert set(body["scope"].split()) == {"openid", EMAIL_URL}
    _, claims = jwt_parts(body["id_token"])
    assert "email" in claims and "name" not in claims
    no_openid = sign_in(emu, "bob@gmail.com", scope=DRIVE)
    assert no_openid["scope"] == DRIVE
    assert "id_token" not in no_openid


def test_include_granted_scopes_returns_the_union(emu):
    sign_in(emu, scope="openid email")
    narrow = sign_in(emu, scope=DRIVE)
    assert narrow["scope"] == DRIVE
    union = sign_in(emu, scope="profile", include_granted_scopes=True)
    assert set(union["scope"].split()) == {"openid", EMAIL_URL, PROFILE_URL, DRIVE}
    # Grants are per client.
    code = emu.mint_code(OTHER.client_id, "alice@example.com", "profile", include_granted_scopes=True)
    other = exchange(emu, code, client=OTHER).json()
    assert set(other["scope"].split()) == {"openid", PROFILE_URL}


# -- revoke and userinfo ---------------------------------------------------------


@pytest.mark.parametrize("which", ["refresh_token", "access_token"])
def test_revoke_ends_the_whole_grant(emu, which):
    first = sign_in(emu)
    second = refresh(emu, first["refresh_token"]).json()
    assert not emu.grant_revoked(CLIENT.client_id, "alice@example.com")
    response = requests.post(emu.base_url + "/revoke", data={"token": first[which]}, timeout=10)
    assert response.status_code == 200
    assert response.json() == {}
    assert emu.grant_revoked(CLIENT.client_id, "alice@example.com")
    for access_token in (first["access_token"], second["access_token"]):
        assert userinfo(emu, access_token).status_code == 401
    assert refresh(emu, first["refresh_token"]).json()["error"] == "invalid_grant"
    again = requests.post(emu.base_url + "/revoke", params={"token": first[which]}, timeout=10)
    assert again.status_code == 400
    assert again.json() == {"error": "invalid_token", "error_description": "Token expired or revoked"}
    # The next consent counts as the first one again.
    assert "refresh_token" in sign_in(emu)
    assert not emu.grant_revoked(CLIENT.client_id, DEFAULT_ACCOUNTS[0].sub)


def test_revoke_leaves_other_users_and_clients_alone(emu):
    alice = sign_in(emu)
    bob = sign_in(emu, "bob@gmail.com")
    code = emu.mint_code(OTHER.client_id, "alice@example.com")
    alice_other = exchange(emu, code, client=OTHER).json()
    requests.post(emu.base_url + "/revoke", data={"token": alice["refresh_token"]}, timeout=10)
    assert userinfo(emu, bob["access_token"]).status_code == 200
    assert userinfo(emu, alice_other["access_token"]).status_code == 200
    assert emu.grant_revoked(CLIENT.client_id, "alice@example.com")
    assert not emu.grant_revoked(OTHER.client_id, "alice@example.com")


def test_code_minted_before_revoke_dies_with_the_grant(emu):
    first = sign_in(emu)
    pending = emu.mint_code(CLIENT.client_id, "alice@example.com")
    requests.post(emu.base_url + "/revoke", data={"token": first["access_token"]}, timeout=10)
    assert exchange(emu, pending).json()["error"] == "invalid_grant"


def test_revoke_needs_a_token(emu):
    response = requests.post(emu.base_url + "/revoke", timeout=10)
    assert (response.status_code, response.json()["error"]) == (400, "invalid_request")


@pytest.mark.parametrize("path", ["/v1/userinfo", "/oauth2/v3/userinfo"])
def test_userinfo_answers_for_a_valid_token(emu, path):
    body = userinfo(emu, sign_in(emu)["access_token"], path)
    assert body.status_code == 200
    assert body.json() == {
        "sub": DEFAULT_ACCOUNTS[0].sub,
        "name": "Alice Example",
        "given_name": "Alice",
        "family_name": "Example",
        "email": "alice@example.com",
        "email_verified": True,
        "hd": "example.com",
        "picture": f"{emu.base_url}/a/{DEFAULT_ACCOUNTS[0].sub}=s96-c",
    }


def test_userinfo_refuses_missing_and_unknown_tokens(emu):
    for headers in ({}, {"Authorization": "Bearer ya29.nope"}, {"Authorization": "Basic eDp5"}):
        response = requests.get(emu.base_url + "/v1/userinfo", headers=headers, timeout=10)
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert response.json() == {"error": "invalid_request", "error_description": "Invalid Credentials"}


def test_userinfo_honours_access_token_expiry(emu, clock):
    token = sign_in(emu)["access_token"]
    clock.advance(3599)
    assert userinfo(emu, token).status_code == 200
    clock.advance(2)
    assert userinfo(emu, token).status_code == 401


# -- certs and keys ------------------------------------------------------------


def _verify_with_jwk(token: str, jwk: dict) -> None:
    def num(value: str) -> int:
        return int.from_bytes(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)), "big")

    key = rsa.RSAPublicNumbers(num(jwk["e"]), num(jwk["n"])).public_key()
    header, claims, signature = token.split(".")
    raw = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
    key.verify(raw, f"{header}.{claims}".encode(), padding.PKCS1v15(), hashes.SHA256())


def test_certs_in_both_formats_with_cache_headers(emu):
    pem = requests.get(emu.base_url + "/oauth2/v1/certs", timeout=10)
    jwks = requests.get(emu.base_url + "/oauth2/v3/certs", timeout=10)
    for response in (pem, jwks):
        assert response.status_code == 200
        assert re.fullmatch(r"public, max-age=3600, must-revalidate, no-transform", response.headers["Cache-Control"])
        assert "GMT" in response.headers["Expires"]
    kid = emu.keys.current.kid
    assert list(pem.json()) == [kid]
    assert pem.json()[kid].startswith("-----BEGIN CERTIFICATE-----")
    (key,) = jwks.json()["keys"]
    assert {k: key[k] for k in ("kty", "alg", "use", "kid", "e")} == {
        "kty": "RSA",
        "alg": "RS256",
        "use": "sig",
        "kid": kid,
        "e": "AQAB",
    }
    _verify_with_jwk(sign_in(emu)["id_token"], key)


def test_certs_max_age_is_configurable():
    with EmulatorThread(clients=[CLIENT], certs_max_age=60) as emulator:
        response = requests.get(emulator.base_url + "/oauth2/v3/certs", timeout=10)
    assert response.headers["Cache-Control"] == "public, max-age=60, must-revalidate, no-transform"


def test_rotate_keys_keeps_the_previous_key_published(emu):
    old_kid = emu.keys.current.kid
    old_token = sign_in(emu)["id_token"]
    response = requests.post(emu.base_url + "/emulator/rotate-keys", timeout=10)
    new_kid = response.json()["kid"]
    assert new_kid != old_kid
    pem = requests.get(emu.base_url + "/oauth2/v1/certs", timeout=10).json()
    assert set(pem) == {old_kid, new_kid}
    jwks = {key["kid"]: key for key in requests.get(emu.base_url + "/oauth2/v3/certs", timeout=10).json()["keys"]}
    assert set(jwks) == {old_kid, new_kid}
    new_token = sign_in(emu, "bob@gmail.com")["id_token"]
    assert jwt_parts(new_token)[0]["kid"] == new_kid
    _verify_with_jwk(new_token, jwks[new_kid])
    _verify_with_jwk(old_token, jwks[old_kid])
    # A second rotation retires the oldest key.
    third = emu.rotate_keys()
    assert set(requests.get(emu.base_url + "/oauth2/v1/certs", timeout=10).json()) == {new_kid, third}


# -- stats, reset, test-only paths ----------------------------------------------


def test_stats_count_requests_per_endpoint(emu):
    token = sign_in(emu)
    refresh(emu, token["refresh_token"])
    userinfo(emu, token["access_token"])
    requests.get(emu.base_url + "/oauth2/v1/certs", timeout=10)
    requests.post(emu.base_url + "/revoke", data={"token": token["access_token"]}, timeout=10)
    stats = requests.get(emu.base_url + "/emulator/stats", timeout=10).json()
    assert stats == {
        "token": 2,
        "token.authorization_code": 1,
        "token.refresh_token": 1,
        "userinfo": 1,
        "certs": 1,
        "certs.pem": 1,
        "revoke": 1,
    }
    assert emu.stats["token"] == 2
    requests.post(emu.base_url + "/emulator/reset", timeout=10)
    assert not emu.stats


def test_reset_keeps_grants(emu):
    token = sign_in(emu)
    emu.faults.add("token", "status", status=500)
    emu.reset()
    assert len(emu.faults) == 0
    assert userinfo(emu, token["access_token"]).status_code == 200
    assert refresh(emu, token["refresh_token"]).status_code == 200


def test_mint_code_over_http(emu):
    response = requests.post(
        emu.base_url + "/emulator/code",
        data={"client_id": CLIENT.client_id, "email": "carol@example.org", "scope": "openid email"},
        timeout=10,
    )
    assert response.status_code == 200
    body = exchange(emu, response.json()["code"]).json()
    assert jwt_parts(body["id_token"])[1]["hd"] == "example.org"
    assert "refresh_token" in body
    again = requests.post(
        emu.base_url + "/emulator/code",
        data={"client_id": CLIENT.client_id, "email": "carol@example.org", "scope": "email", "prompt": "consent"},
        timeout=10,
    )
    assert "refresh_token" in exchange(emu, again.json()["code"]).json()
    unknown = requests.post(
        emu.base_url + "/emulator/code", data={"client_id": CLIENT.client_id, "email": "eve@evil.test"}, timeout=10
    )
    assert (unknown.status_code, unknown.json()["error"]) == (400, "invalid_request")


@pytest.mark.parametrize(
    "method, path",
    [
        ("POST", "/emulator/code"),
        ("POST", "/emulator/faults"),
        ("DELETE", "/emulator/faults"),
        ("POST", "/emulator/rotate-keys"),
        ("GET", "/emulator/stats"),
        ("POST", "/emulator/reset"),
        ("POST", "/emulator/expire-refresh-token"),
        ("POST", "/emulator/settings"),
    ],
)
def test_test_only_paths_are_refused_outside_development(method, path):
    with EmulatorThread(clients=[CLIENT], development=False) as emulator:
        kid = emulator.keys.current.kid
        response = requests.request(
            method, emulator.base_url + path, data={"client_id": CLIENT.client_id, "email": "alice@example.com"}, timeout=10
        )
        assert response.status_code == 403
        assert response.json()["error"] == "access_denied"
        assert emulator.keys.current.kid == kid
        assert not emulator.state._codes
        # The Google endpoints still work.
        assert requests.get(emulator.base_url + "/oauth2/v3/certs", timeout=10).status_code == 200


# -- the consent popup ----------------------------------------------------------


class _Forms(html.parser.HTMLParser):
    """Collects inputs, buttons and scripts of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.inputs: list[dict] = []
        self.buttons: list[dict] = []
        self.scripts: list[dict] = []
        self.form: dict = {}
        self._script: dict | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "input":
            self.inputs.append(attrs)
        elif tag == "button":
            self.buttons.append(attrs)
        elif tag == "form":
            self.form = attrs
        elif tag == "script":
            self._script = {**attrs, "text": ""}
            self.scripts.append(self._script)

    def handle_endtag(self, tag):
        if tag == "script":
            self._script = None

    def handle_data(self, data):
        if self._script is not None:
            self._script["text"] += data


def parse(page: str) -> _Forms:
    forms = _Forms()
    forms.feed(page)
    return forms


def auth_params(**overrides):
    params = {
        "client_id": CLIENT.client_id,
        "redirect_uri": "postmessage",
        "response_type": "code",
        "scope": "openid email profile",
        "access_type": "offline",
        "state": "state-123",
        "origin": ORIGIN,
    }
    params.update(overrides)
    return {k: v for k, v in params.items() if v is not None}


def open_popup(emu, **overrides):
    return requests.get(emu.base_url + "/o/oauth2/v2/auth", params=auth_params(**overrides), timeout=10)


def answer_popup(emu, page: str, action="approve", email=None):
    forms = parse(page)
    token = next(i["value"] for i in forms.inputs if i.get("name") == "consent")
    checked = next(i["value"] for i in forms.inputs if i.get("type") == "radio" and "checked" in i)
    data = {"consent": token, "action": action, "email": email or checked}
    return requests.post(emu.base_url + forms.form["action"], data=data, allow_redirects=False, timeout=10)


def posted_message(page: str) -> dict:
    forms = parse(page)
    (data,) = [s for s in forms.scripts if s.get("type") == "application/json"]
    return json.loads(data["text"])


def test_popup_lists_accounts_with_approve_and_deny(emu):
    response = open_popup(emu)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/html")
    forms = parse(response.text)
    radios = [i for i in forms.inputs if i.get("type") == "radio"]
    assert [r["data-email"] for r in radios] == [a.email for a in DEFAULT_ACCOUNTS]
    assert [r["value"] for r in radios if "checked" in r] == ["alice@example.com"]
    assert {b.get("id") for b in forms.buttons} >= {"approve", "deny"}
    assert any(i.get("name") == "consent" and len(i["value"]) > 20 for i in forms.inputs)
    assert emu.stats["auth"] == 1


def test_popup_preselects_login_hint_and_filters_hd(emu):
    forms = parse(open_popup(emu, login_hint="CAROL@example.org").text)
    assert [i["value"] for i in forms.inputs if "checked" in i] == ["carol@example.org"]
    forms = parse(open_popup(emu, hd="example.com").text)
    assert [i["value"] for i in forms.inputs if i.get("type") == "radio"] == ["alice@example.com"]


def test_popup_pages_carry_security_headers(emu):
    response = open_popup(emu)
    csp = response.headers["Content-Security-Policy"]
    nonce = re.search(r"script-src 'nonce-([^']+)'", csp).group(1)
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert response.headers["X-Frame-Options"] == "DENY"
    assert "no-store" in response.headers["Cache-Control"]
    result = answer_popup(emu, response.text)
    csp = result.headers["Content-Security-Policy"]
    nonce = re.search(r"script-src 'nonce-([^']+)'", csp).group(1)
    executable = [s for s in parse(result.text).scripts if s.get("type") != "application/json"]
    assert executable and all(s.get("nonce") == nonce for s in executable)
    assert "Cross-Origin-Opener-Policy" not in result.headers


def test_popup_approve_posts_a_working_code_to_the_exact_origin(emu):
    result = answer_popup(emu, open_popup(emu).text, email="bob@gmail.com")
    assert result.status_code == 200
    payload = posted_message(result.text)
    assert payload["target_origin"] == ORIGIN
    message = payload["message"]
    assert message["state"] == "state-123"
    assert message["authuser"] == "0"
    assert message["prompt"] == "consent"
    assert set(message["scope"].split()) == {"openid", EMAIL_URL, PROFILE_URL}
    assert "postMessage(payload.message, payload.target_origin)" in result.text
    assert '"*"' not in result.text
    body = exchange(emu, message["code"]).json()
    assert jwt_parts(body["id_token"])[1]["email"] == "bob@gmail.com"
    assert "refresh_token" in body
    second = posted_message(answer_popup(emu, open_popup(emu).text, email="bob@gmail.com").text)["message"]
    assert second["prompt"] == "none"
    assert "refresh_token" not in exchange(emu, second["code"]).json()


def test_popup_deny_posts_access_denied(emu):
    result = answer_popup(emu, open_popup(emu).text, action="deny")
    payload = posted_message(result.text)
    assert payload == {"message": {"error": "access_denied", "state": "state-123"}, "target_origin": ORIGIN}
    assert not emu.state._codes


def test_popup_form_token_is_single_use(emu):
    page = open_popup(emu).text
    assert answer_popup(emu, page).status_code == 200
    replay = answer_popup(emu, page)
    assert replay.status_code == 400
    assert 'id="payload"' not in replay.text


@pytest.mark.parametrize(
    "overrides, error",
    [
        ({"origin": "http://evil.test"}, "origin_mismatch"),
        ({"origin": "http://localhost:8081"}, "origin_mismatch"),
        ({"origin": None}, "origin_mismatch"),
        ({"redirect_uri": "http://evil.test/cb"}, "redirect_uri_mismatch"),
        ({"client_id": "nobody"}, "invalid_client"),
        ({"response_type": "token"}, "unsupported_response_type"),
        ({"scope": ""}, "invalid_request"),
    ],
)
def test_popup_refuses_bad_requests_and_posts_nothing(emu, overrides, error):
    response = open_popup(emu, **overrides)
    assert response.status_code in (400, 401)
    assert error in response.text
    assert "postMessage" not in response.text
    assert not any(i.get("name") == "consent" for i in parse(response.text).inputs)


def test_popup_with_registered_redirect_uri_redirects(emu):
    callback = "http://localhost:8080/oauth2callback"
    page = open_popup(emu, redirect_uri=callback, origin=None)
    assert "form-action 'self' http://localhost:8080" in page.headers["Content-Security-Policy"]
    result = answer_popup(emu, page.text)
    assert result.status_code == 302
    location = result.headers["Location"]
    assert location.startswith(callback + "?")
    query = dict(__import__("urllib.parse").parse.parse_qsl(location.split("?", 1)[1]))
    assert query["state"] == "state-123"
    assert exchange(emu, query["code"], redirect_uri=callback).status_code == 200
    denied = answer_popup(emu, open_popup(emu, redirect_uri=callback, origin=None).text, action="deny")
    assert "error=access_denied" in denied.headers["Location"]


# -- client scripts --------------------------------------------------------------


def test_gsi_client_script_knows_the_emulator_origin(emu):
    response = requests.get(emu.base_url + "/gsi/client", timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/javascript")
    assert f'var EMULATOR_ORIGIN = "{emu.base_url}";' in response.text
    assert "initCodeClient" in response.text and "requestCode" in response.text
    assert 'params.set("redirect_uri", "postmessage")' in response.text
    assert "event.origin !== EMULATOR_ORIGIN || event.source !== opened" in response.text
    port = emu.base_url.rsplit(":", 1)[1]
    other = requests.get(f"http://localhost:{port}/gsi/client", timeout=10)
    assert f'var EMULATOR_ORIGIN = "http://localhost:{port}";' in other.text


def test_platform_script_honours_onload(emu):
    response = requests.get(emu.base_url + "/js/platform.js", params={"onload": "startApp"}, timeout=10)
    assert response.headers["Content-Type"].startswith("text/javascript")
    assert 'var ONLOAD = "startApp";' in response.text
    assert "grantOfflineAccess" in response.text
    hostile = requests.get(emu.base_url + "/js/platform.js", params={"onload": "x();alert(1)//"}, timeout=10)
    assert 'var ONLOAD = "";' in hostile.text


# -- realism: Google's own client library accepts the emulator -------------------


class LoopbackSession(requests.Session):
    """A session that refuses to send anything beyond 127.0.0.1 (these tests never reach Google)."""

    def request(self, method, url, *args, **kwargs):
        assert url.startswith("http://127.0.0.1:"), f"refusing non-loopback URL {url}"
        return super().request(method, url, *args, **kwargs)


def Request():
    from google.auth.transport.requests import Request as GoogleRequest

    return GoogleRequest(session=LoopbackSession())


def test_google_auth_verifies_emulator_id_tokens(emu):
    from google.oauth2 import id_token

    token = sign_in(emu)["id_token"]
    claims = id_token.verify_token(token, Request(), audience=CLIENT.client_id, certs_url=emu.base_url + "/oauth2/v1/certs")
    assert claims["email"] == "alice@example.com"
    assert claims["iss"] in ("accounts.google.com", "https://accounts.google.com")
    # verify_oauth2_token's extra rule, the issuer check, holds too.
    with pytest.raises(ValueError):
        id_token.verify_token(token, Request(), audience="someone-else", certs_url=emu.base_url + "/oauth2/v1/certs")
    emu.rotate_keys()
    claims = id_token.verify_token(token, Request(), audience=CLIENT.client_id, certs_url=emu.base_url + "/oauth2/v1/certs")
    assert claims["sub"] == DEFAULT_ACCOUNTS[0].sub


def test_google_auth_verify_oauth2_token_semantics(emu, monkeypatch):
    from google.oauth2 import id_token

    # verify_oauth2_token = verify_token at Google's certs URL + the issuer rule.
    monkeypatch.setattr(id_token, "_GOOGLE_OAUTH2_CERTS_URL", emu.base_url + "/oauth2/v1/certs")
    claims = id_token.verify_oauth2_token(sign_in(emu)["id_token"], Request(), audience=CLIENT.client_id)
    assert claims["sub"] == DEFAULT_ACCOUNTS[0].sub
    emu.configure(issuer_without_scheme=True)
    claims = id_token.verify_oauth2_token(sign_in(emu, "bob@gmail.com")["id_token"], Request(), audience=CLIENT.client_id)
    assert claims["iss"] == "accounts.google.com"


def test_google_auth_credentials_refresh_against_the_emulator(emu):
    from google.oauth2.credentials import Credentials

    first = sign_in(emu)
    credentials = Credentials(
        token=None,
        refresh_token=first["refresh_token"],
        token_uri=emu.base_url + "/token",
        client_id=CLIENT.client_id,
        client_secret=CLIENT.client_secret,
    )
    credentials.refresh(Request())
    assert credentials.token.startswith("ya29.")
    assert credentials.valid
    assert credentials.id_token
    assert userinfo(emu, credentials.token).json()["email"] == "alice@example.com"
    requests.post(emu.base_url + "/revoke", data={"token": credentials.token}, timeout=10)
    from google.auth.exceptions import RefreshError

    with pytest.raises(RefreshError, match="invalid_grant"):
        credentials.refresh(Request())


def test_custom_accounts():
    dora = TestAccount("dora@corp.test", "Dora", "123456789012345678901", hosted_domain="corp.test", email_verified=False)
    with EmulatorThread(clients=[CLIENT], accounts=[dora]) as emulator:
        body = exchange(emulator, emulator.mint_code(CLIENT.client_id, "dora@corp.test")).json()
    _, claims = jwt_parts(body["id_token"])
    assert claims["email_verified"] is False
    assert claims["hd"] == "corp.test"
    assert "family_name" not in claims


def test_favicon_is_a_16x16_icon_not_a_404(emu):
    """The browser asks the consent page's origin for /favicon.ico: a 404 there is a console error."""
    import struct

    before = dict(emu.stats)
    response = requests.get(emu.base_url + "/favicon.ico", timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "image/x-icon"
    body = response.content
    assert struct.unpack("<HHH", body[:6]) == (0, 1, 1)  # an icon file holding one image
    width, height, _, _, planes, bits, size, offset = struct.unpack("<BBBBHHII", body[6:22])
    assert (width, height, planes, bits, offset, size) == (16, 16, 1, 32, 22, len(body) - 22)
    png = body[offset:]
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", png[16:24]) == (16, 16)
    assert dict(emu.stats) == before  # not a Google endpoint: no stats, no faults


def test_risc_management_api_refuses_a_deeply_nested_bearer_token_with_401(emu):
    # Google's management API answers a bearer it cannot read with 401, never a server error.
    nested = base64.urlsafe_b64encode(b"[" * 20_000).rstrip(b"=").decode()
    for token in (f"{nested}.e30.AA", f"e30.{nested}.AA"):
        response = requests.get(emu.base_url + "/v1beta/stream", headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert response.status_code == 401, response.text
