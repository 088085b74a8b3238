"""Issue #5 §7: with every logger at DEBUG, no code, secret, Basic header or token reaches a log line.

References: OWASP ASVS 5.0 V16.2/V16.3 (log content: no credentials or
tokens), RFC 6819 §5.1.6. The root logger is at DEBUG with a capture handler
(:func:`security_oracle.open_stack`), so the token client (its calls),
Tornado, urllib3, requests-oauthlib and oauthlib all log freely.
"""

from __future__ import annotations

import asyncio
import logging

import pytest
from requests.auth import HTTPBasicAuth
from requests_oauthlib import OAuth2Session

from harness import CLIENT_ID, CLIENT_SECRET, json_body
from security_oracle import BASIC_HEADER, assert_logs_clean, stack_fixture
from tornado_signin.redact import REDACTED, redact

pytestmark = pytest.mark.gen_test(timeout=30)


stack = stack_fixture()


async def test_whole_login_offline_use_and_disconnect_at_debug_log_no_secret(stack):
    client = stack.client()
    await client.fetch("/")
    socket = await client.socket()
    code = stack.mint("alice@example.com")
    response = await client.post_code(code)
    assert response.code == 200
    sub = json_body(response)["user"]["sub"]
    await socket.read_message()
    await stack.ctx.offline.fresh_record(sub, force=True)  # a refresh grant
    await stack.ctx.offline.call_userinfo(sub)  # a Bearer call
    assert (await client.post_gated("/disconnect")).code == 200  # a revoke
    text = stack.logs.text()
    # DEBUG really was on: the token client logged each call it made (its method, URL and status, no body).
    base = stack.emulator.base_url
    for call in (f"POST {base}/token -> 200", f"GET {base}/v1/userinfo -> 200", f"POST {base}/revoke -> 200"):
        assert call in text, call
    assert_logs_clean(stack, [code])
    socket.close()


async def test_requests_oauthlib_and_oauthlib_at_debug_log_no_secret(stack, monkeypatch):
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")  # the emulator is plain http on loopback
    response = await stack.client().post_code(stack.mint("bob@gmail.com"))
    sub = json_body(response)["user"]["sub"]
    refresh_token = stack.store.get(sub).refresh_token
    for name in ("requests_oauthlib", "oauthlib", "urllib3"):
        logging.getLogger(name).setLevel(logging.DEBUG)

    def refresh():
        session = OAuth2Session(CLIENT_ID, token={"access_token": "x", "refresh_token": refresh_token,
                                                  "token_type": "Bearer"})
        # client_secret_basic: requests builds an "Authorization: Basic" header.
        return session.refresh_token(stack.emulator.base_url + "/token", refresh_token=refresh_token,
                                     auth=HTTPBasicAuth(CLIENT_ID, CLIENT_SECRET), timeout=10)

    token = await asyncio.get_running_loop().run_in_executor(None, refresh)
    assert token["access_token"].startswith("ya29.")
    text = stack.logs.text()
    assert "requests_oauthlib" in text or "oauthlib" in text  # they did log
    assert_logs_clean(stack, [refresh_token, token["access_token"], token.get("id_token", "")])
    assert BASIC_HEADER not in text


async def test_a_code_in_a_query_string_is_redacted_from_the_access_log(stack):
    code = "4/0AcodeInTheQueryString0123456789"
    await stack.client().fetch(f"/?code={code}&state=abcdefgh12345678&scope=openid")
    await stack.client().fetch("/nope?access_token=ya29.inquery0123456789&id_token=eyJa.eyJb.c2ln")
    text = stack.logs.text()
    assert code not in text and "abcdefgh12345678" not in text and "ya29.inquery" not in text
    assert "GET /?code=" + REDACTED in text or "GET /?code=%5Bredacted%5D" in text or REDACTED in text


async def test_error_replies_of_google_are_never_echoed_into_logs(stack):
    echoed = "4/0AechoedByGoogle0123456789"
    stack.emulator.faults.add("token", "status", status=400,
                              body={"error": "invalid_grant", "error_description": f"Bad code {echoed}"})
    response = await stack.client().post_code(stack.mint())
    assert response.code == 400 and echoed.encode() not in response.body
    assert echoed not in stack.logs.text() and "Bad code" not in stack.logs.text()


@pytest.mark.parametrize("line, secret", [
    ("body b'grant_type=authorization_code&code=4/0Aabc123456789&client_secret=zzz'", "4/0Aabc123456789"),
    ("Authorization: Basic dGVzdDpzZWNyZXQtdmFsdWU=", "dGVzdDpzZWNyZXQtdmFsdWU="),
    ("Authorization: Bearer ya29.a0secretaccess", "ya29.a0secretaccess"),
    ('{"refresh_token": "1//0secretrefresh", "x": 1}', "1//0secretrefresh"),
    ("{'access_token': 'opaque-token-value-123'}", "opaque-token-value-123"),
    ("id token eyJhbGciOi.eyJzdWIiOiIxIn0.c2lnbmF0dXJl", "eyJzdWIiOiIxIn0"),
    ("client secret GOCSPX-abcdefghijkl", "GOCSPX-abcdefghijkl"),
    ("refresh_token=1%2F%2F0urlencoded&x=1", "1%2F%2F0urlencoded"),
    ("token: ya29.b0another", "ya29.b0another"),
    ("oauthlib: Prepared refresh token request body refresh_token=opaque-refresh-value", "opaque-refresh-value"),
])
def test_redaction_patterns(line, secret):
    assert secret not in redact(line)


def test_registered_literal_secrets_are_redacted_anywhere(io_loop):
    from tornado_signin.redact import install_redaction

    install_redaction(["literal-secret-value-xyz"])
    assert "literal-secret-value-xyz" not in redact("prefix literal-secret-value-xyz suffix")
