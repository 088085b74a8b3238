"""Issue #5 §8: emulator versus production.

A production config (``development`` off) refuses emulator endpoints on any
host, plain ``http://`` Google endpoints and ``OAUTHLIB_INSECURE_TRANSPORT``;
the emulator refuses its test-only paths unless it runs in development; and
a token the emulator signed fails verification under Google's real settings.
"""

from __future__ import annotations

import json

import pytest
from tornado.httpclient import AsyncHTTPClient
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port

from harness import CLIENT_ID, CLIENT_SECRET, COOKIE_SECRET, ENCRYPTION_KEY
from security_oracle import close_stack, open_stack
from tornado_signin.certs import CertCache
from tornado_signin.config import GoogleEndpoints, config_from_dict
from tornado_signin.emulator import Emulator, EmulatorClient
from tornado_signin.emulator.keys import SigningKey
from tornado_signin.errors import ConfigError, TokenVerificationError
from tornado_signin.verify import IdTokenVerifier

pytestmark = pytest.mark.gen_test(timeout=30)


def production(**google):
    return {
        "server": {"cookie_secret": COOKIE_SECRET},
        "google": {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, **google},
        "store": {"backend": "memory", "encryption": {"keys": [ENCRYPTION_KEY]}},
    }


EMULATOR_LIKE = ["http://127.0.0.1:8081", "https://127.0.0.1:8081", "http://localhost:8081", "https://[::1]:8081",
                 "https://emulator.example.net", "https://accounts.google.com.evil.example",
                 "http://accounts.google.com", "http://oauth2.googleapis.com", "https://googleapis.com.evil.example"]


@pytest.mark.parametrize("base", EMULATOR_LIKE)
@pytest.mark.parametrize("key", ["auth_uri", "token_uri", "revoke_uri", "userinfo_uri", "certs_uri", "jwks_uri"])
def test_production_config_refuses_emulator_and_http_endpoints(base, key):
    url = getattr(GoogleEndpoints.for_base_url(base), key)
    with pytest.raises(ConfigError) as caught:
        config_from_dict(production(endpoints={key: url}), environ={})
    assert caught.value.key == f"google.endpoints.{key}"


@pytest.mark.parametrize("base", EMULATOR_LIKE[:5])
def test_production_config_refuses_an_emulator_client_secrets_file(tmp_path, base):
    emulator = Emulator(clients=[EmulatorClient(CLIENT_ID, CLIENT_SECRET, ("https://app.example.com",))],
                        base_url=base)
    path = tmp_path / "client_secret.json"
    path.write_text(json.dumps(emulator.client_secrets(CLIENT_ID)))
    data = production()
    data["google"] = {"client_secrets_file": str(path)}
    with pytest.raises(ConfigError):
        config_from_dict(data, environ={})


@pytest.mark.parametrize("value", ["1", "true", "yes"])
def test_production_config_refuses_oauthlib_insecure_transport(value):
    with pytest.raises(ConfigError) as caught:
        config_from_dict(production(), environ={"OAUTHLIB_INSECURE_TRANSPORT": value})
    assert caught.value.key == "development"


def test_production_config_refuses_an_emulator_client_script():
    with pytest.raises(ConfigError):
        config_from_dict(production(client_script_url="http://127.0.0.1:8081/gsi/client"), environ={})


def test_production_defaults_are_googles():
    config = config_from_dict(production(), environ={})
    endpoints = config.google.endpoints
    assert endpoints.token_uri == "https://oauth2.googleapis.com/token"
    assert endpoints.verification_certs_uri == "https://www.googleapis.com/oauth2/v3/certs"
    assert config.development is False


@pytest.mark.parametrize("method, path", [
    ("POST", "/emulator/code"), ("GET", "/emulator/faults"), ("POST", "/emulator/faults"),
    ("DELETE", "/emulator/faults"), ("POST", "/emulator/rotate-keys"), ("GET", "/emulator/stats"),
    ("POST", "/emulator/reset"), ("POST", "/emulator/expire-refresh-token"), ("GET", "/emulator/settings"),
    ("POST", "/emulator/settings"),
])
async def test_emulator_test_only_paths_are_refused_outside_development(method, path):
    emulator = Emulator(clients=[EmulatorClient(CLIENT_ID, CLIENT_SECRET, ("http://127.0.0.1:1",))],
                        development=False)
    sock, port = bind_unused_port()
    server = HTTPServer(emulator.make_app())
    server.add_sockets([sock])
    try:
        body = {"POST": json.dumps({"kind": "hang"}) if "faults" in path else
                f"client_id={CLIENT_ID}&email=alice@example.com"}.get(method)
        response = await AsyncHTTPClient().fetch(f"http://127.0.0.1:{port}{path}", method=method, body=body,
                                                 raise_error=False, allow_nonstandard_methods=True)
        assert response.code == 403, (path, response.code)
        assert len(emulator.faults) == 0 and not emulator.stats.get("token")
    finally:
        server.stop()


class GoogleKeysStandIn:
    """Answers the certs fetch with a JWKS of keys that are not the emulator's (no network is used)."""

    def __init__(self, keys):
        self.keys = keys
        self.urls: list[str] = []

    async def fetch_json(self, url):
        self.urls.append(url)

        class Response:
            headers = {"Cache-Control": "public, max-age=3600"}

        return {"keys": [key.jwk() for key in self.keys]}, Response()


async def test_emulator_signed_tokens_fail_under_googles_real_settings(io_loop):
    stack = await open_stack()
    try:
        assert (await stack.client().post_code(stack.mint())).code == 200
        id_token = stack.issued[-1]["id_token"]
        config = config_from_dict(production(), environ={})
        google_keys = GoogleKeysStandIn([SigningKey.generate()])
        certs = CertCache(google_keys, config.google.endpoints.verification_certs_uri)
        verifier = IdTokenVerifier(config.google, certs)
        with pytest.raises(TokenVerificationError) as caught:
            await verifier.verify(id_token)
        assert "kid" in str(caught.value)
        assert google_keys.urls and all(u == "https://www.googleapis.com/oauth2/v3/certs" for u in google_keys.urls)
        # Even a stand-in publishing a key under the emulator's kid does not make its signature valid.
        kid = json.loads(__import__("base64").urlsafe_b64decode(id_token.split(".")[0] + "==="))["kid"]
        impostor = SigningKey.generate()
        renamed = type(impostor)(kid=kid, private_key=impostor.private_key, certificate_pem=impostor.certificate_pem)
        certs = CertCache(GoogleKeysStandIn([renamed]), config.google.endpoints.verification_certs_uri)
        with pytest.raises(TokenVerificationError):
            await IdTokenVerifier(config.google, certs).verify(id_token)
    finally:
        await close_stack(stack)
