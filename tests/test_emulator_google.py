"""The emulator answers as Google does where Google's own clients look (issue 15, server side).

Each test's docstring names the Google behaviour it checks and where it is
documented or quoted: Google's documentation, or a public report quoting
Google's exact answer. The emulator runs in a thread (blocking ``requests``).
"""

from __future__ import annotations

import base64
import html
import hashlib
import json
import re
import secrets
import struct
import zlib

import pytest
import requests

from tornado_signin.emulator import DEFAULT_ACCOUNTS, EmulatorClient, EmulatorThread

ORIGIN = "http://localhost:8080"
REDIRECT = "http://localhost:8080/oauth2callback"
CLIENT = EmulatorClient("google-client.apps.googleusercontent.com", "GOCSPX-test", (ORIGIN,), (REDIRECT,))
ALICE = DEFAULT_ACCOUNTS[0]
EMAIL = "https://www.googleapis.com/auth/userinfo.email"
PROFILE = "https://www.googleapis.com/auth/userinfo.profile"
DRIVE = "https://www.googleapis.com/auth/drive.readonly"
CALENDAR = "https://www.googleapis.com/auth/calendar.readonly"


@pytest.fixture
def emu(clock):
    with EmulatorThread(clients=[CLIENT], clock=clock, key_schedule={"period": None}) as emulator:
        yield emulator


def token_post(emu, path="/token", **data):
    return requests.post(emu.base_url + path, data={k: v for k, v in data.items() if v is not None}, timeout=10)


def exchange(emu, code, path="/token", **extra):
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": "postmessage",
            "client_id": CLIENT.client_id, "client_secret": CLIENT.client_secret, **extra}
    return token_post(emu, path, **data)


def s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


def error_of(response) -> tuple[int, str, str]:
    body = response.json()
    return response.status_code, body.get("error"), body.get("error_description")


# -- 1. PKCE ---------------------------------------------------------------------


def test_pkce_s256_and_plain_verify():
    """PKCE with S256 and plain (plain is the default without a method), as Google's native-app guide says:
    https://developers.google.com/identity/protocols/oauth2/native-app#step1-code-verifier
    ("The value of the code_challenge_method defaults to plain ... The only supported values ... S256 or plain")."""
    with EmulatorThread(clients=[CLIENT]) as emu:
        verifier = secrets.token_urlsafe(48)
        code = emu.mint_code(CLIENT.client_id, ALICE.email, code_challenge=s256(verifier), code_challenge_method="S256")
        assert exchange(emu, code, code_verifier=verifier).status_code == 200
        code = emu.mint_code(CLIENT.client_id, ALICE.email, code_challenge=verifier)  # no method: plain
        assert exchange(emu, code, code_verifier=verifier).status_code == 200


def test_pkce_refusals_are_googles(emu):
    """Google refuses a wrong, a missing and an unneeded verifier with invalid_grant and these words:
    "Invalid code verifier." (https://github.com/googleapis/google-api-java-client/issues/1479),
    "Missing code verifier." (https://github.com/onaio/onadata/issues/3068, quoting Google's body),
    "code_verifier or verifier is not needed" (https://github.com/panva/oauth4webapi/issues/119).
    The code survives each refusal: clients retry without the verifier
    (https://github.com/taylorwilsdon/google_workspace_mcp/pull/710)."""
    verifier = secrets.token_urlsafe(48)
    code = emu.mint_code(CLIENT.client_id, ALICE.email, code_challenge=s256(verifier), code_challenge_method="S256")
    assert error_of(exchange(emu, code, code_verifier="x" * 43)) == (400, "invalid_grant", "Invalid code verifier.")
    assert error_of(exchange(emu, code)) == (400, "invalid_grant", "Missing code verifier.")
    assert exchange(emu, code, code_verifier=verifier).status_code == 200
    plain = emu.mint_code(CLIENT.client_id, ALICE.email)
    assert error_of(exchange(emu, plain, code_verifier=verifier)) == (
        400, "invalid_grant", "code_verifier or verifier is not needed")
    assert exchange(emu, plain).status_code == 200


def test_pkce_through_the_popup_and_a_bad_method(emu):
    """The auth endpoint carries code_challenge into the code; an unknown (or wrongly cased) method is
    Google's 400 invalid_request "Invalid parameter value for code_challenge_method: 's256' is not a valid
    CodeChallengeMethod" (quoted in https://github.com/supabase/auth-js/issues/669)."""
    verifier = secrets.token_urlsafe(48)
    params = {"client_id": CLIENT.client_id, "redirect_uri": REDIRECT, "response_type": "code",
              "scope": "openid email", "code_challenge": s256(verifier), "code_challenge_method": "s256"}
    page = requests.get(emu.base_url + "/o/oauth2/v2/auth", params=params, timeout=10)
    assert page.status_code == 400
    assert ("Invalid parameter value for code_challenge_method: 's256' is not a valid CodeChallengeMethod"
            in html.unescape(page.text))
    params["code_challenge_method"] = "S256"
    page = requests.get(emu.base_url + "/o/oauth2/v2/auth", params=params, timeout=10)
    consent = re.search(r'name="consent" value="([^"]+)"', page.text).group(1)
    answer = requests.post(emu.base_url + "/o/oauth2/v2/auth", data={"consent": consent, "action": "approve",
                           "email": ALICE.email}, allow_redirects=False, timeout=10)
    query = dict(p.split("=", 1) for p in answer.headers["Location"].split("?", 1)[1].split("&"))
    assert query["iss"] == "https%3A%2F%2Faccounts.google.com"  # RFC 9207, advertised in discovery
    code = requests.utils.unquote(query["code"])
    assert error_of(exchange(emu, code, redirect_uri=REDIRECT)) == (400, "invalid_grant", "Missing code verifier.")
    assert exchange(emu, code, redirect_uri=REDIRECT, code_verifier=verifier).status_code == 200


# -- 6. missing and malformed parameters -----------------------------------------------


@pytest.mark.parametrize("path", ["/token", "/oauth2/v4/token", "/o/oauth2/token"])
def test_token_endpoint_parameter_errors_are_googles(emu, path):
    """Google's status and words for each missing or bad token-request parameter:
    no client_secret: 400 invalid_request "client_secret is missing."
    (https://github.com/googleapis/google-api-nodejs-client/issues/1582);
    no client_id: "Could not determine client ID from request." (https://github.com/openid/AppAuth-iOS/issues/226);
    no grant_type: "Required parameter is missing: grant_type"
    (https://github.com/googlearchive/gplus-quickstart-ruby/issues/11); empty grant_type: unsupported_grant_type
    "Invalid grant_type: " (https://github.com/natelindev/tsdav/issues/130); no code: "Missing required
    parameter: code" (https://github.com/googleapis/google-api-nodejs-client/issues/3089); a wrong secret:
    401 invalid_client "Unauthorized" (https://github.com/astrada/google-drive-ocamlfuse/issues/664); a revoked
    refresh token: "Token has been expired or revoked." (https://github.com/GeneralTask/task-manager/pull/2169)."""
    code = emu.mint_code(CLIENT.client_id, ALICE.email)
    base = {"grant_type": "authorization_code", "code": code, "redirect_uri": "postmessage",
            "client_id": CLIENT.client_id, "client_secret": CLIENT.client_secret}
    cases = [
        ({"client_secret": None}, (400, "invalid_request", "client_secret is missing.")),
        ({"client_id": None}, (400, "invalid_request", "Could not determine client ID from request.")),
        ({"grant_type": None}, (400, "invalid_request", "Required parameter is missing: grant_type")),
        ({"grant_type": ""}, (400, "unsupported_grant_type", "Invalid grant_type: ")),
        ({"code": None}, (400, "invalid_request", "Missing required parameter: code")),
        ({"code": "garbage"}, (400, "invalid_grant", "Malformed auth code.")),
        ({"client_secret": "wrong"}, (401, "invalid_client", "Unauthorized")),
        ({"client_id": "nobody.apps.googleusercontent.com"}, (401, "invalid_client", "The OAuth client was not found.")),
    ]
    for change, expected in cases:
        assert error_of(token_post(emu, path, **{**base, **change})) == expected, change
    # None of those spent the code.
    assert token_post(emu, path, **base).status_code == 200
    refresh = {"grant_type": "refresh_token", "client_id": CLIENT.client_id, "client_secret": CLIENT.client_secret}
    assert error_of(token_post(emu, path, **refresh)) == (
        400, "invalid_request", "Missing required parameter: refresh_token")
    assert error_of(token_post(emu, path, **refresh, refresh_token="1//0nope")) == (
        400, "invalid_grant", "Token has been expired or revoked.")


@pytest.mark.parametrize("path", ["/revoke", "/o/oauth2/revoke"])
def test_revoke_paths(emu, path):
    """https://oauth2.googleapis.com/revoke (POST) and the legacy https://accounts.google.com/o/oauth2/revoke (GET
    or POST, token as a parameter) end the grant; a dead token is 400 invalid_token "Token expired or revoked"
    (https://developers.google.com/identity/protocols/oauth2/web-server#tokenrevoke)."""
    tokens = exchange(emu, emu.mint_code(CLIENT.client_id, ALICE.email)).json()
    get = requests.get(emu.base_url + path, params={"token": tokens["access_token"]}, timeout=10)
    if path == "/revoke":  # oauth2.googleapis.com/revoke is POST only (https://github.com/googleapis/oauth2client/issues/750)
        assert get.status_code == 404 and not emu.grant_revoked(CLIENT.client_id, ALICE.email)
        get = requests.post(emu.base_url + path, data={"token": tokens["access_token"]}, timeout=10)
    assert get.status_code == 200
    assert emu.grant_revoked(CLIENT.client_id, ALICE.email)
    again = requests.post(emu.base_url + path, data={"token": tokens["refresh_token"]}, timeout=10)
    assert error_of(again) == (400, "invalid_token", "Token expired or revoked")


def test_auth_endpoint_parameter_errors_are_googles(emu):
    """Google's "Error 400: invalid_request" page words: "Missing required parameter: client_id"
    (https://github.com/awesomemotive/Google-Analytics-Dashboard-for-WP/issues/65), "…: redirect_uri"
    (https://github.com/googleworkspace/node-samples/issues/79), "Required parameter is missing:
    response_type" (https://github.com/Kong/insomnia/issues/5062); an unknown client is 401 invalid_client; bad
    scope, access_type and prompt values are refused in Google's words."""
    base = {"client_id": CLIENT.client_id, "redirect_uri": "postmessage", "origin": ORIGIN,
            "response_type": "code", "scope": "openid"}
    cases = [
        ({"client_id": None}, 400, "Missing required parameter: client_id"),
        ({"redirect_uri": None}, 400, "Missing required parameter: redirect_uri"),
        ({"response_type": None}, 400, "Required parameter is missing: response_type"),
        ({"response_type": "token"}, 400, "unsupported_response_type"),
        ({"scope": None}, 400, "Missing required parameter: scope"),
        ({"client_id": "nobody.apps.googleusercontent.com"}, 401, "The OAuth client was not found."),
        # https://github.com/markbates/goth/issues/445 and https://github.com/Grive/grive/issues/7 quote these:
        ({"scope": "email profile user.birthday.read"}, 400, "Some requested scopes were invalid. {valid=["
         "https://www.googleapis.com/auth/userinfo.email, https://www.googleapis.com/auth/userinfo.profile], "
         "invalid=[user.birthday.read]}"),
        ({"scope": "https://www.googleapis.com/a"}, 400,
         "Some requested scopes were invalid. {invalid=[https://www.googleapis.com/a]}"),
        ({"scope": "https://www.googleapis.com/auth/drive.file/"}, 400, "invalid_scope"),
        # https://github.com/googleworkspace/php-samples/issues/44, https://github.com/googleapis/google-api-php-client/issues/2444
        ({"access_type": "offline "}, 400, "Invalid parameter value for access_type: 'offline ' is not valid"),
        ({"prompt": "consent;"}, 400, "Invalid parameter value for prompt: Invalid prompt: consent;"),
        ({"prompt": "select_account consent", "access_type": "online"}, 200, "Choose an account"),
    ]
    for change, status, words in cases:
        params = {k: v for k, v in {**base, **change}.items() if v is not None}
        page = requests.get(emu.base_url + "/o/oauth2/v2/auth", params=params, timeout=10)
        assert page.status_code == status and words in html.unescape(page.text), change


# -- 2. tokeninfo -----------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/tokeninfo", "/oauth2/v3/tokeninfo"])
def test_tokeninfo_v3_id_token_has_googles_fields_as_strings(emu, path):
    """Google's tokeninfo answers an ID token's claims plus alg/kid/typ, every value a string
    ("iat": "1433978353", "email_verified": "true"):
    https://developers.google.com/identity/sign-in/web/backend-auth#calling-the-tokeninfo-endpoint."""
    tokens = exchange(emu, emu.mint_code(CLIENT.client_id, ALICE.email)).json()
    info = requests.get(emu.base_url + path, params={"id_token": tokens["id_token"]}, timeout=10).json()
    assert all(isinstance(value, str) for value in info.values()), info
    assert info["iss"] == "https://accounts.google.com" and info["aud"] == info["azp"] == CLIENT.client_id
    assert info["sub"] == ALICE.sub and info["email"] == ALICE.email and info["email_verified"] == "true"
    assert info["alg"] == "RS256" and info["typ"] == "JWT" and info["kid"] == emu.keys.current.kid
    assert re.fullmatch(r"\d+", info["iat"]) and int(info["exp"]) - int(info["iat"]) == 3600
    assert info["picture"].startswith(emu.base_url + "/a/") and info["name"] == ALICE.name


def test_tokeninfo_v3_access_token_and_errors(emu, clock):
    """Access-token tokeninfo (Node's getTokenInfo POSTs it as a Bearer header): azp, aud, sub, scope, exp,
    expires_in, email, email_verified, access_type, as strings
    (https://developers.google.com/identity/protocols/oauth2/javascript-implicit-flow#tokeninfo-validation).
    A bad token is 400 invalid_token "Invalid Value" (https://github.com/googlearchive/gplus-verifytoken-java/pull/4)."""
    tokens = exchange(emu, emu.mint_code(CLIENT.client_id, ALICE.email, "openid email")).json()
    info = requests.get(emu.base_url + "/tokeninfo", params={"access_token": tokens["access_token"]}, timeout=10).json()
    assert set(info) == {"azp", "aud", "sub", "scope", "exp", "expires_in", "email", "email_verified", "access_type"}
    assert info["scope"] == tokens["scope"] and info["access_type"] == "offline" and info["email_verified"] == "true"
    assert 3500 < int(info["expires_in"]) <= 3600
    by_header = requests.post(emu.base_url + "/tokeninfo", headers={"Authorization": f"Bearer {tokens['access_token']}"},
                              timeout=10)
    assert by_header.json()["sub"] == ALICE.sub
    for params in ({"access_token": "ya29.nope"}, {"id_token": "not.a.jwt"}, {"id_token": tokens["access_token"]}):
        assert error_of(requests.get(emu.base_url + "/tokeninfo", params=params, timeout=10)) == (
            400, "invalid_token", "Invalid Value"), params
    # No token at all: Google's words (quoted in tests of public Google clients, e.g. a Go and an Elixir one).
    assert error_of(requests.get(emu.base_url + "/tokeninfo", timeout=10)) == (
        400, "invalid_token", "Either access_token, id_token, or token_handle required")
    bare = requests.post(emu.base_url + "/oauth2/v2/tokeninfo", timeout=10)
    assert (bare.status_code, bare.json()) == (
        400, {"error_description": "either access_token, id_token, or token_handle required"})
    clock.now += 3601  # both the access token and the ID token have expired
    for params in ({"access_token": tokens["access_token"]}, {"id_token": tokens["id_token"]}):
        assert requests.get(emu.base_url + "/tokeninfo", params=params, timeout=10).status_code == 400


def test_tokeninfo_v2_follows_the_oauth2_v2_discovery_schema(emu):
    """www.googleapis.com/oauth2/v2/tokeninfo (POST, as google-api-python-client's oauth2 v2 discovery
    document declares): issued_to, audience, user_id, scope, expires_in (integer), email, verified_email
    (boolean); a bad token is 400 {"error_description": "Invalid Value"} only
    (https://github.com/googleapis/google-api-go-client/issues/403)."""
    tokens = exchange(emu, emu.mint_code(CLIENT.client_id, ALICE.email)).json()
    info = requests.post(emu.base_url + "/oauth2/v2/tokeninfo", params={"access_token": tokens["access_token"]},
                         timeout=10).json()
    assert info["issued_to"] == info["audience"] == CLIENT.client_id and info["user_id"] == ALICE.sub
    assert isinstance(info["expires_in"], int) and info["verified_email"] is True and info["scope"] == tokens["scope"]
    info = requests.post(emu.base_url + "/oauth2/v2/tokeninfo", params={"id_token": tokens["id_token"]},
                         timeout=10).json()
    assert info["audience"] == CLIENT.client_id and info["email"] == ALICE.email and info["verified_email"] is True
    bad = requests.post(emu.base_url + "/oauth2/v2/tokeninfo", params={"access_token": "nope"}, timeout=10)
    assert (bad.status_code, bad.json()) == (400, {"error_description": "Invalid Value"})


# -- 3. userinfo paths, 5. picture ------------------------------------------------------


@pytest.mark.parametrize("path", ["/oauth2/v2/userinfo", "/oauth2/v1/userinfo", "/userinfo/v2/me"])
def test_userinfo_v2_schema_and_401(emu, path):
    """oauth2 v2 Userinfo: id (not sub), verified_email (not email_verified), picture — the schema of
    google-api-python-client's oauth2.v2.json; Tornado's GoogleOAuth2Mixin example reads user["id"] from
    /oauth2/v1/userinfo (https://www.tornadoweb.org/en/stable/auth.html#tornado.auth.GoogleOAuth2Mixin).
    A bad token gets the API front end's 401 UNAUTHENTICATED (reason authError, "Invalid Credentials";
    https://github.com/GeneralTask/task-manager/pull/997)."""
    tokens = exchange(emu, emu.mint_code(CLIENT.client_id, ALICE.email)).json()
    info = requests.get(emu.base_url + path, headers={"Authorization": f"Bearer {tokens['access_token']}"},
                        timeout=10).json()
    assert info == {"id": ALICE.sub, "email": ALICE.email, "verified_email": True, "name": ALICE.name,
                    "given_name": "Alice", "family_name": "Example", "picture": f"{emu.base_url}/a/{ALICE.sub}=s96-c",
                    "hd": "example.com"}
    bad = requests.get(emu.base_url + path, params={"access_token": "nope"}, timeout=10)
    assert bad.status_code == 401
    assert bad.json()["error"]["status"] == "UNAUTHENTICATED" and bad.json()["error"]["errors"][0]["reason"] == "authError"


def test_picture_needs_the_profile_scope_and_is_served_locally(emu):
    """Google's ID token and userinfo carry picture with the profile scope only
    (https://developers.google.com/identity/openid-connect/openid-connect#an-id-tokens-payload);
    the emulator serves the image itself, a PNG."""
    tokens = exchange(emu, emu.mint_code(CLIENT.client_id, ALICE.email, "openid email")).json()
    claims = json.loads(base64.urlsafe_b64decode(tokens["id_token"].split(".")[1] + "=="))
    assert "picture" not in claims
    tokens = exchange(emu, emu.mint_code(CLIENT.client_id, ALICE.email, "openid profile")).json()
    claims = json.loads(base64.urlsafe_b64decode(tokens["id_token"].split(".")[1] + "=="))
    image = requests.get(claims["picture"], timeout=10)
    assert image.status_code == 200 and image.headers["Content-Type"] == "image/png"
    assert image.content.startswith(b"\x89PNG\r\n\x1a\n")
    width, height = struct.unpack(">II", image.content[16:24])
    assert (width, height) == (96, 96)
    assert zlib.decompress(image.content[41:-12])  # the IDAT chunk inflates
    assert requests.get(emu.base_url + "/a/999=s96-c", timeout=10).status_code == 404


# -- 7. discovery ------------------------------------------------------------------------


def test_discovery_serves_every_endpoint_it_advertises(emu):
    """Google's discovery document (https://accounts.google.com/.well-known/openid-configuration, fields
    listed at https://developers.google.com/identity/openid-connect/reference#discovery-document) advertises the
    device-code grant with a device_authorization_endpoint; a web client asking it gets Google's 401 invalid_client
    "Only clients of type 'TVs and Limited Input devices' can use …" (apostrophes HTML-escaped, as Google sends
    them; https://developers.google.com/identity/protocols/oauth2/limited-input-device#creatingcred ;
    https://github.com/astrada/google-drive-ocamlfuse/issues/574 saw the 401 with a web client)."""
    document = requests.get(emu.base_url + "/.well-known/openid-configuration", timeout=10).json()
    assert document["device_authorization_endpoint"] == emu.base_url + "/device/code"
    assert "urn:ietf:params:oauth:grant-type:device_code" in document["grant_types_supported"]
    assert document["authorization_response_iss_parameter_supported"] is True
    for name in ("authorization_endpoint", "token_endpoint", "userinfo_endpoint", "revocation_endpoint", "jwks_uri",
                 "device_authorization_endpoint"):
        assert requests.options(document[name], timeout=10).status_code != 404, name
    refused = (401, "invalid_client", "Only clients of type &#39;TVs and Limited Input devices&#39; can use the "
               "OAuth 2.0 flow for TV and Limited-Input Device Applications. Please create and use an appropriate client.")
    answer = requests.post(document["device_authorization_endpoint"], data={"client_id": CLIENT.client_id,
                           "scope": "email"}, timeout=10)
    assert error_of(answer) == refused
    assert answer.json()["error_uri"].startswith("https://developers.google.com/identity/protocols/oauth2/limited-input")
    device = token_post(emu, grant_type="urn:ietf:params:oauth:grant-type:device_code", device_code="x",
                        client_id=CLIENT.client_id, client_secret=CLIENT.client_secret)
    assert error_of(device) == refused


# -- 9. scope order, 8. granular consent -------------------------------------------------------


def test_scope_string_keeps_googles_order(emu):
    """Google's scope string is not sorted: asked for "email profile", it answers
    "https://www.googleapis.com/auth/userinfo.email openid https://www.googleapis.com/auth/userinfo.profile"
    (quoted in https://github.com/googleapis/google-api-python-client/pull/1088)."""
    tokens = exchange(emu, emu.mint_code(CLIENT.client_id, ALICE.email, "email profile")).json()
    assert tokens["scope"] == f"{EMAIL} openid {PROFILE}"
    tokens = exchange(emu, emu.mint_code(CLIENT.client_id, ALICE.email, f"openid {DRIVE} email")).json()
    assert tokens["scope"] == f"openid {DRIVE} {EMAIL}"
    refreshed = token_post(emu, grant_type="refresh_token", refresh_token=tokens.get("refresh_token") or "",
                           client_id=CLIENT.client_id, client_secret=CLIENT.client_secret)
    if tokens.get("refresh_token"):
        assert refreshed.json()["scope"] == tokens["scope"]


def test_granular_consent_leaves_out_unticked_scopes(emu):
    """Google's granular consent: the user may untick individual non-sign-in scopes, and the token
    response's scope then lacks them (https://developers.google.com/identity/protocols/oauth2/resources/granular-permissions).
    The sign-in scopes cannot be unticked."""
    params = {"client_id": CLIENT.client_id, "redirect_uri": "postmessage", "origin": ORIGIN, "response_type": "code",
              "scope": f"openid email {DRIVE} {CALENDAR}", "access_type": "offline"}
    page = requests.get(emu.base_url + "/o/oauth2/v2/auth", params=params, timeout=10)
    boxes = re.findall(r'<input type="checkbox" name="scope" id="[^"]+" value="([^"]+)" checked>', page.text)
    assert boxes == [DRIVE, CALENDAR]  # only the non-sign-in scopes, in the request's order
    consent = re.search(r'name="consent" value="([^"]+)"', page.text).group(1)
    answer = requests.post(emu.base_url + "/o/oauth2/v2/auth", timeout=10, data={
        "consent": consent, "action": "approve", "email": ALICE.email, "granular": "1", "scope": [CALENDAR, EMAIL]})
    message = json.loads(re.search(r'<script type="application/json"[^>]*>(.*?)</script>', page.text + answer.text,
                                   re.S).group(1))["message"]
    assert message["scope"] == f"openid {EMAIL} {CALENDAR}"
    tokens = exchange(emu, message["code"]).json()
    assert tokens["scope"] == f"openid {EMAIL} {CALENDAR}" and DRIVE not in tokens["scope"]
    # Asking again for the missing scope, with include_granted_scopes, adds it to the grant.
    again = exchange(emu, emu.mint_code(CLIENT.client_id, ALICE.email, DRIVE, include_granted_scopes=True)).json()
    assert set(again["scope"].split()) == {"openid", EMAIL, CALENDAR, DRIVE}


# -- no 5xx for any request value --------------------------------------------------------------


_DEEP = base64.urlsafe_b64encode(b"[" * 50000 + b"]" * 50000).rstrip(b"=").decode()
ODD = [f"{_DEEP}.{_DEEP}.AAAA", "", " ", "\x00", "é", "\u0661\u0662", "a" * 5000, "..", "a.b.c", "eyJ.eyJ.x", "%ZZ", "[]", "{}", "-1",
       "ya29." + "\ufeff", "4/0A" + "é" * 30]


def test_new_endpoints_answer_odd_values_with_a_4xx(emu, caplog):
    """Every value the new endpoints parse (tokeninfo's id_token/access_token, userinfo's token, the PKCE
    verifier and challenge, the picture size, the device client id, rotate-keys' body): a short 4xx, never a
    5xx, never an ERROR log line."""
    paths = ["/tokeninfo", "/oauth2/v3/tokeninfo", "/oauth2/v2/tokeninfo"]
    code = emu.mint_code(CLIENT.client_id, ALICE.email, code_challenge="c" * 43, code_challenge_method="S256")
    for value in ODD:
        for path in paths:
            for name in ("id_token", "access_token"):
                assert requests.post(emu.base_url + path, data={name: value}, timeout=10).status_code == 400
        assert exchange(emu, code, code_verifier=value).status_code == 400
        if len(value) > 10000:
            continue  # POST bodies only: a query that long is refused by the HTTP layer (as Google's 414)
        for path in ("/oauth2/v2/userinfo", "/oauth2/v1/userinfo", "/userinfo/v2/me", "/v1/userinfo"):
            assert requests.get(emu.base_url + path, params={"access_token": value}, timeout=10).status_code == 401
        assert requests.post(emu.base_url + "/device/code", data={"client_id": value}, timeout=10).status_code in (
            400, 401)
        params = {"client_id": CLIENT.client_id, "redirect_uri": REDIRECT, "response_type": "code",
                  "scope": "openid", "code_challenge": value or "x", "code_challenge_method": value}
        assert requests.get(emu.base_url + "/o/oauth2/v2/auth", params=params, timeout=10).status_code < 500
    for body in (b"[]", b"nope", b'{"abrupt": "yes"}', b'{"abrupt": null}', b"[" * 50000 + b"]" * 50000):
        assert requests.post(emu.base_url + "/emulator/rotate-keys", data=body, timeout=10).status_code == 400
    for size in ("0", "999", "1"):
        assert requests.get(f"{emu.base_url}/a/{ALICE.sub}=s{size}-c", timeout=10).status_code == 200
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
