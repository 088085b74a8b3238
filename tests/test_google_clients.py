"""Google's own client libraries, unmodified, against the emulator (issue 15).

Each library is pointed at the emulator by configuration only (a certs URL,
a token URI, a client secrets document, ``client_options``, Tornado's
documented ``_OAUTH_*_URL`` attributes, Node's ``endpoints`` option), and
each check's docstring says which Google behaviour it relies on and where
the library or Google documents it. What passes here must pass at Google:
the emulator refuses what Google refuses.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.parse
from pathlib import Path

import pytest
import requests
from tornado.httpclient import AsyncHTTPClient
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port
from tornado.web import Application, RequestHandler

from tornado_signin.emulator import DEFAULT_ACCOUNTS, EmulatorClient, EmulatorThread

IN_CI = os.environ.get("CI", "").lower() == "true"
NODE_DIR = Path(__file__).parent / "node"
REDIRECT = "http://127.0.0.1:8765/oauth2callback"
CLIENT = EmulatorClient.generate("libraries.apps.googleusercontent.com", ("http://127.0.0.1:8765",), (REDIRECT,))
ALICE = DEFAULT_ACCOUNTS[0]
EMAIL = "https://www.googleapis.com/auth/userinfo.email"
PROFILE = "https://www.googleapis.com/auth/userinfo.profile"


@pytest.fixture(scope="module")
def emu():
    with EmulatorThread(clients=[CLIENT]) as emulator:
        yield emulator


class LoopbackSession(requests.Session):
    """A session that refuses to send anything beyond 127.0.0.1 (these tests never reach Google)."""

    def request(self, method, url, *args, **kwargs):
        assert url.startswith("http://127.0.0.1:"), f"refusing non-loopback URL {url}"
        return super().request(method, url, *args, **kwargs)


def google_request():
    from google.auth.transport.requests import Request

    return Request(session=LoopbackSession())


def consent(auth_url: str, email: str = ALICE.email) -> str:
    """Be the user: open the authorization URL a library built, pick ``email``, Allow; return the redirect."""
    page = requests.get(auth_url, timeout=10)
    assert page.status_code == 200, page.text
    token = page.text.split('name="consent" value="', 1)[1].split('"', 1)[0]
    action = urllib.parse.urljoin(auth_url, urllib.parse.urlsplit(auth_url).path)
    answer = requests.post(action, data={"consent": token, "action": "approve", "email": email},
                           allow_redirects=False, timeout=10)
    assert answer.status_code == 302, answer.text
    return answer.headers["Location"]


def code_of(location: str) -> str:
    return urllib.parse.parse_qs(urllib.parse.urlsplit(location).query)["code"][0]


# -- google-auth ------------------------------------------------------------------------


def test_google_auth_verify_token_and_refresh(emu):
    """google-auth's ``id_token.verify_token(certs_url=…)`` checks the RS256 signature against the PEM certs,
    ``aud`` and expiry (google/oauth2/id_token.py ``verify_token``), and ``Credentials.refresh`` POSTs the
    refresh grant to ``token_uri`` and raises RefreshError on invalid_grant (google/oauth2/_client.py
    ``refresh_grant``); Google's refresh answer carries a new access token and, with openid, an ID token
    (https://developers.google.com/identity/protocols/oauth2/web-server#offline)."""
    from google.auth.exceptions import RefreshError
    from google.oauth2 import id_token
    from google.oauth2.credentials import Credentials

    tokens = requests.post(emu.base_url + "/token", timeout=10, data={
        "grant_type": "authorization_code", "code": emu.mint_code(CLIENT.client_id, ALICE.email),
        "redirect_uri": "postmessage", "client_id": CLIENT.client_id, "client_secret": CLIENT.client_secret}).json()
    claims = id_token.verify_token(tokens["id_token"], google_request(), audience=CLIENT.client_id,
                                   certs_url=emu.base_url + "/oauth2/v1/certs")
    assert claims["sub"] == ALICE.sub and claims["iss"] == "https://accounts.google.com"
    assert claims["picture"].startswith(emu.base_url)
    credentials = Credentials(None, refresh_token=tokens["refresh_token"], token_uri=emu.base_url + "/token",
                              client_id=CLIENT.client_id, client_secret=CLIENT.client_secret)
    credentials.refresh(google_request())
    assert credentials.valid and credentials.id_token
    requests.post(emu.base_url + "/revoke", data={"token": tokens["refresh_token"]}, timeout=10)
    with pytest.raises(RefreshError, match="invalid_grant"):
        credentials.refresh(google_request())


# -- google-auth-oauthlib -----------------------------------------------------------------------


def test_google_auth_oauthlib_flow_with_its_default_pkce(emu, monkeypatch):
    """google-auth-oauthlib's ``Flow`` generates a PKCE verifier by default (flow.py ``Flow.__init__``,
    ``autogenerate_code_verifier=True``) and sends it with ``fetch_token``; Google accepts it. A callback that
    builds a fresh Flow and so loses the verifier is refused "(invalid_grant) Missing code verifier." at
    Google (https://github.com/onaio/onadata/issues/3068) — and so here."""
    from google_auth_oauthlib.flow import Flow
    from oauthlib.oauth2.rfc6749.errors import InvalidGrantError

    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")  # the emulator is plain http on loopback
    document = emu.client_secrets(CLIENT.client_id)
    scopes = ["openid", EMAIL, PROFILE]
    flow = Flow.from_client_config(document, scopes=scopes, redirect_uri=REDIRECT)
    auth_url, _ = flow.authorization_url(access_type="offline", prompt="consent")
    assert "code_challenge=" in auth_url and "code_challenge_method=S256" in auth_url
    flow.fetch_token(authorization_response=consent(auth_url))
    credentials = flow.credentials
    assert credentials.refresh_token and credentials.id_token and set(credentials.granted_scopes) == set(scopes)
    lost = Flow.from_client_config(document, scopes=scopes, redirect_uri=REDIRECT)
    flow2 = Flow.from_client_config(document, scopes=scopes, redirect_uri=REDIRECT)
    second, _ = flow2.authorization_url()
    with pytest.raises(InvalidGrantError, match="Missing code verifier."):
        lost.fetch_token(code=code_of(consent(second)))


# -- requests-oauthlib ---------------------------------------------------------------------------


def test_requests_oauthlib_session(emu, monkeypatch):
    """requests-oauthlib's ``OAuth2Session`` (its Google example:
    https://requests-oauthlib.readthedocs.io/en/latest/examples/google.html): ``fetch_token`` with the client
    secret. Google reports short scopes expanded, and oauthlib raises "Scope has changed" when the requested
    names differ from the granted ones (oauthlib/oauth2/rfc6749/parameters.py ``validate_token_parameters``;
    seen at Google in https://github.com/requests/requests-oauthlib/issues/387). ``pkce="S256"`` works too."""
    from requests_oauthlib import OAuth2Session

    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")
    monkeypatch.delenv("OAUTHLIB_RELAX_TOKEN_SCOPE", raising=False)
    auth_uri, token_uri = emu.base_url + "/o/oauth2/v2/auth", emu.base_url + "/token"
    session = OAuth2Session(CLIENT.client_id, scope=["openid", "email", "profile"], redirect_uri=REDIRECT)
    url, _ = session.authorization_url(auth_uri, access_type="offline", prompt="consent")
    with pytest.raises(Warning, match="Scope has changed"):
        session.fetch_token(token_uri, client_secret=CLIENT.client_secret, authorization_response=consent(url))
    session = OAuth2Session(CLIENT.client_id, scope=["openid", EMAIL, PROFILE], redirect_uri=REDIRECT, pkce="S256")
    url, _ = session.authorization_url(auth_uri)
    token = session.fetch_token(token_uri, client_secret=CLIENT.client_secret, authorization_response=consent(url))
    assert token["token_type"] == "Bearer" and set(token["scope"]) == {"openid", EMAIL, PROFILE}
    assert session.get(emu.base_url + "/oauth2/v3/userinfo", timeout=10).json()["sub"] == ALICE.sub


# -- Tornado's GoogleOAuth2Mixin --------------------------------------------------------------------


@pytest.mark.gen_test(timeout=30)
async def test_tornado_google_oauth2_mixin(emu):
    """Tornado's ``GoogleOAuth2Mixin``, its documented example (tornado/auth.py ``GoogleOAuth2Mixin``):
    ``authorize_redirect`` to ``/o/oauth2/v2/auth``, ``get_authenticated_user`` POSTs to its default
    ``/oauth2/v4/token``, then ``oauth2_request`` reads ``/oauth2/v1/userinfo`` and uses ``user["id"]``."""
    import tornado.auth

    base = emu.base_url
    sock, port = bind_unused_port()
    redirect = f"http://127.0.0.1:{port}/auth"

    class Login(RequestHandler, tornado.auth.GoogleOAuth2Mixin):
        _OAUTH_AUTHORIZE_URL = base + "/o/oauth2/v2/auth"
        _OAUTH_ACCESS_TOKEN_URL = base + "/oauth2/v4/token"
        _OAUTH_USERINFO_URL = base + "/oauth2/v1/userinfo"

        async def get(self):
            if self.get_argument("code", None):
                access = await self.get_authenticated_user(redirect_uri=redirect, code=self.get_argument("code"))
                user = await self.oauth2_request(self._OAUTH_USERINFO_URL, access_token=access["access_token"])
                self.write({"id": user["id"], "email": user["email"], "name": user["name"],
                            "has_id_token": "id_token" in access})
            else:
                self.authorize_redirect(redirect_uri=redirect, client_id=CLIENT.client_id,
                                        scope=["profile", "email"], response_type="code")

    client = EmulatorClient(CLIENT.client_id, CLIENT.client_secret, CLIENT.javascript_origins, (redirect,))
    emu.state.clients[client.client_id] = client
    server = HTTPServer(Application([("/auth", Login)], google_oauth={"key": CLIENT.client_id,
                                                                       "secret": CLIENT.client_secret}))
    server.add_sockets([sock])
    try:
        http = AsyncHTTPClient()
        first = await http.fetch(redirect, follow_redirects=False, raise_error=False)
        assert first.code == 302
        location = consent(first.headers["Location"])
        done = await http.fetch(location)
        user = json.loads(done.body)
        assert user == {"id": ALICE.sub, "email": ALICE.email, "name": ALICE.name, "has_id_token": True}
    finally:
        emu.state.clients[CLIENT.client_id] = CLIENT
        server.stop()


# -- google-api-python-client -------------------------------------------------------------------------


def test_google_api_python_client_oauth2_v2(emu):
    """google-api-python-client's oauth2 v2 API from its static discovery document (shipped in the package),
    sent to the emulator by ``client_options={"api_endpoint": …}``: ``userinfo().get()`` answers the
    ``Userinfo`` schema (``id``, ``verified_email``) and ``tokeninfo()`` (a POST) the ``Tokeninfo`` schema; a dead
    request without a token raises HttpError 401 from the API front end's error body (googleapiclient/errors.py reads
    ``error.message``)."""
    import httplib2
    from google.oauth2.credentials import Credentials
    from googleapiclient.discovery import build
    from googleapiclient.errors import HttpError

    tokens = requests.post(emu.base_url + "/token", timeout=10, data={
        "grant_type": "authorization_code", "code": emu.mint_code(CLIENT.client_id, ALICE.email),
        "redirect_uri": "postmessage", "client_id": CLIENT.client_id, "client_secret": CLIENT.client_secret}).json()
    service = build("oauth2", "v2", credentials=Credentials(tokens["access_token"]), static_discovery=True,
                    client_options={"api_endpoint": emu.base_url + "/"})
    user = service.userinfo().get().execute()
    assert user["id"] == ALICE.sub and user["verified_email"] is True and user["picture"].startswith(emu.base_url)
    assert service.userinfo().v2().me().get().execute()["id"] == ALICE.sub
    info = service.tokeninfo(access_token=tokens["access_token"]).execute()
    assert info["audience"] == CLIENT.client_id and info["user_id"] == ALICE.sub and info["expires_in"] > 0
    info = service.tokeninfo(id_token=tokens["id_token"]).execute()
    assert info["email"] == ALICE.email
    # Without credentials (a dead token would make the library refresh first): the front end's 401.
    anonymous = build("oauth2", "v2", http=httplib2.Http(), static_discovery=True,
                      client_options={"api_endpoint": emu.base_url + "/"})
    with pytest.raises(HttpError) as caught:
        anonymous.userinfo().get().execute()
    assert caught.value.resp.status == 401 and "missing required authentication credential" in caught.value.reason
    with pytest.raises(HttpError) as caught:
        service.tokeninfo(access_token="ya29.dead").execute()
    assert caught.value.resp.status == 400 and json.loads(caught.value.content) == {"error_description": "Invalid Value"}


# -- Node's google-auth-library --------------------------------------------------------------------------


def _require(ok: bool, reason: str) -> None:
    if ok:
        return
    if IN_CI:
        pytest.fail(f"{reason}; .ci/run (./dev) must install it")
    pytest.skip(reason)


def test_node_google_auth_library(emu):
    """Node's google-auth-library ``OAuth2Client`` (src/auth/oauth2client.ts), with its ``endpoints`` option:
    ``generateAuthUrl`` + ``getToken``; ``verifyIdToken`` (PEM certs cached for max-age, issuer
    accounts.google.com or https://accounts.google.com, audience checked: "Wrong recipient"); ``getTokenInfo``
    (POST to tokeninfo with a Bearer header, ``data.scope.split(' ')``, ``expires_in``); refresh through
    ``getAccessToken``; PKCE with ``generateCodeVerifierAsync`` (a wrong verifier: "Invalid code verifier.", none:
    "Missing code verifier."); ``revokeToken`` (POST /revoke?token=), after which tokeninfo says invalid_token."""
    node = shutil.which("node")
    _require(node is not None, "node is not installed")
    _require((NODE_DIR / "node_modules" / "google-auth-library" / "package.json").exists(),
             "google-auth-library is not installed (npm ci --prefix tests/node)")
    env = {**os.environ, "EMULATOR_URL": emu.base_url, "CLIENT_ID": CLIENT.client_id,
           "CLIENT_SECRET": CLIENT.client_secret, "REDIRECT_URI": REDIRECT, "EMAIL": ALICE.email}
    result = subprocess.run([node, str(NODE_DIR / "check.js")], capture_output=True, text=True, env=env,
                            cwd=NODE_DIR, timeout=120)
    assert result.returncode == 0, (result.stdout, result.stderr)
    checks = json.loads(result.stdout)
    assert checks["getToken"]["ok"], checks["getToken"]
    assert checks["getToken"]["fields"] == ["access_token", "expiry_date", "id_token", "refresh_token", "scope",
                                            "token_type"]
    assert checks["verifyIdToken"] == {"ok": True, "sub": ALICE.sub, "email": ALICE.email, "email_verified": True,
                                       "picture": f"{emu.base_url}/a/{ALICE.sub}=s96-c"}
    assert not checks["verifyIdToken_wrong_audience"]["ok"]
    assert "Wrong recipient" in checks["verifyIdToken_wrong_audience"]["error"]
    info = checks["getTokenInfo"]
    assert info["ok"] and info["sub"] == ALICE.sub and info["aud"] == CLIENT.client_id and info["expiry_ok"]
    assert info["scopes"] == checks["getToken"]["scope"].split(" ")
    assert checks["refresh"] == {"ok": True, "new_token": True}
    pkce = checks["pkce"]
    assert pkce["ok"] and pkce["right"], pkce
    assert pkce["wrong"] == {"error": {"error": "invalid_grant", "error_description": "Invalid code verifier."},
                             "status": 400}
    assert pkce["missing"]["error"]["error_description"] == "Missing code verifier."
    revoked = checks["revokeToken"]
    assert revoked["ok"] and revoked["status"] == 200
    assert revoked["after"] == {"error": {"error": "invalid_token", "error_description": "Invalid Value"}, "status": 400}
