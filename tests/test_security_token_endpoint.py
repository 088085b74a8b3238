"""Issue #5 §3: a misbehaving token endpoint never hangs the server, leaks a body, or gets a retried code.

References: RFC 6749 §5.1–5.2 (token response, case-insensitive token_type,
error codes), RFC 9700 §4.x, RFC 6819 §5.1.5.3 (no code replay), OWASP ASVS
5.0 V16 (error handling without leaks). Every refused case meets
:func:`security_oracle.assert_rejected` with exactly one code exchange.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from harness import json_body, without_state
from security_oracle import assert_logs_clean, assert_rejected, stack_fixture

pytestmark = pytest.mark.gen_test(timeout=30)

DEADLINE = 0.8
LEAKY_ACCESS = "ya29.a0LEAKED-looking-access-token-0123456789"
LEAKY_ID = "eyJhbGciOiJSUzI1NiJ9.eyJsZWFrIjoidHJ1ZSJ9.bGVha2VkLXNpZ25hdHVyZQ"


stack = stack_fixture(google={"request_timeout": DEADLINE})


async def attempt(stack, *faults, statuses, reason=None, secrets=()):
    for fault in faults:
        stack.emulator.faults.add("token", **fault)
    client = stack.client()
    await client.fetch("/")
    socket = await client.socket()
    code = stack.mint()
    response = await client.post_code(code)
    got = await assert_rejected(stack, response, client=client, socket=socket, statuses=statuses,
                                token_requests=1, secrets=[code, *secrets])
    if reason:
        assert got == reason
    socket.close()
    return response


async def test_hang_fires_the_deadline_and_other_requests_keep_being_served(stack):
    stack.emulator.faults.add("token", "hang", seconds=5)
    client = stack.client()
    await client.fetch("/")
    socket = await client.socket()
    started = time.monotonic()
    login = asyncio.ensure_future(client.post_code(stack.mint()))
    await asyncio.sleep(0.1)
    latencies = []
    probe = stack.client()
    while not login.done():
        t = time.monotonic()
        assert (await probe.fetch("/healthz")).code == 200
        latencies.append(time.monotonic() - t)
        await asyncio.sleep(0.05)
    response = await login
    elapsed = time.monotonic() - started
    assert DEADLINE <= elapsed < DEADLINE + 1.5, elapsed
    assert len(latencies) >= 5 and max(latencies) < 0.25, latencies
    await assert_rejected(stack, response, client=client, socket=socket, statuses={504}, token_requests=1)
    assert without_state(json_body(response)) == {"error": "google unavailable"}


async def test_hang_after_the_code_was_spent_is_not_retried(stack):
    await attempt(stack, {"kind": "hang", "seconds": 5, "after": True}, statuses={504})


async def test_slow_drip_is_cut_by_the_deadline(stack):
    started = time.monotonic()
    await attempt(stack, {"kind": "drip", "chunks": 10, "interval": 0.4}, statuses={504})
    assert time.monotonic() - started < DEADLINE + 1.5


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_5xx_with_html_is_google_unavailable_and_not_echoed(stack, status):
    html = "<html><body><h1>Server Error</h1><p>code=4/0Aechoed-code-0123456789</p></body></html>"
    response = await attempt(stack, {"kind": "status", "status": status, "body": html, "content_type": "text/html"},
                             statuses={504}, reason="google unavailable")
    assert b"html" not in response.body
    assert "<h1>" not in stack.logs.text() and "echoed-code" not in stack.logs.text()


async def test_503_with_a_token_looking_body_stores_nothing(stack):
    body = {"access_token": LEAKY_ACCESS, "id_token": LEAKY_ID, "refresh_token": "1//0LEAKEDrefresh0123456789",
            "token_type": "Bearer", "expires_in": 3600}
    await attempt(stack, {"kind": "status", "status": 503, "body": body}, statuses={504},
                  secrets=[LEAKY_ACCESS, LEAKY_ID, "1//0LEAKEDrefresh0123456789"])


@pytest.mark.parametrize("body", ["null", "[]", "42", '"a string"', "", "{", "true", '{"access_token": 42}'])
async def test_200_with_a_body_that_is_not_a_token_response(stack, body):
    await attempt(stack, {"kind": "body", "body": body}, statuses={502}, reason="bad reply from google")


async def test_200_with_a_huge_body(stack):
    await attempt(stack, {"kind": "body", "size": 2 * 1024 * 1024}, statuses={502})


async def test_200_with_html(stack):
    await attempt(stack, {"kind": "body", "body": "<html>ok</html>", "content_type": "text/html"}, statuses={502})


async def test_no_id_token(stack):
    await attempt(stack, {"kind": "omit_id_token"}, statuses={502}, reason="bad reply from google")


@pytest.mark.parametrize("token_type", ["mac", "DPoP", "", "Bearer extra"])
async def test_token_type_other_than_bearer_is_refused(stack, token_type):
    await attempt(stack, {"kind": "token_type", "value": token_type}, statuses={502})


@pytest.mark.parametrize("token_type", ["bearer", "BEARER", "Bearer"])
async def test_token_type_is_case_insensitive(stack, token_type):
    stack.emulator.faults.add("token", "token_type", value=token_type)
    response = await stack.client().post_code(stack.mint())
    assert response.code == 200, response.body
    assert_logs_clean(stack)


@pytest.mark.parametrize("scope, expected_missing, expected_extra", [
    ("openid https://www.googleapis.com/auth/userinfo.email https://www.googleapis.com/auth/userinfo.profile "
     "https://www.googleapis.com/auth/drive.readonly", set(), {"https://www.googleapis.com/auth/drive.readonly"}),
    ("openid https://www.googleapis.com/auth/userinfo.email", {"https://www.googleapis.com/auth/userinfo.profile"},
     set()),
])
async def test_expanded_or_reduced_scopes_are_stored_as_granted_not_as_asked(stack, scope, expected_missing,
                                                                               expected_extra):
    stack.emulator.faults.add("token", "scope", value=scope)
    response = await stack.client().post_code(stack.mint())
    assert response.code == 200, response.body
    record = stack.store.get(json_body(response)["user"]["sub"])
    asked = {"openid", "https://www.googleapis.com/auth/userinfo.email",
             "https://www.googleapis.com/auth/userinfo.profile"}
    assert set(record.scopes) == (asked - expected_missing) | expected_extra
    assert_logs_clean(stack)


async def test_invalid_grant_blames_the_code_not_the_operator(stack):
    await attempt(stack, {"kind": "status", "status": 400,
                          "body": {"error": "invalid_grant", "error_description": "Bad Request"}},
                  statuses={400}, reason="code rejected by google")
    assert "OPERATOR ALERT" not in stack.logs.text()


async def test_a_spent_code_is_invalid_grant(stack):
    client = stack.client()
    code = stack.mint()
    assert (await client.post_code(code)).code == 200
    known = {r.sub for r in stack.store.records()}
    again = stack.client()
    response = await again.post_code(code)
    await assert_rejected(stack, response, client=again, statuses={400}, token_requests=2, known_subs=known,
                          secrets=[code])


@pytest.mark.parametrize("error", ["invalid_client", "redirect_uri_mismatch", "unauthorized_client"])
async def test_client_configuration_errors_are_an_operator_alert(stack, error):
    description = "The OAuth client was not found. client_secret=GOCSPX-echoed"
    await attempt(stack, {"kind": "status", "status": 401 if error == "invalid_client" else 400,
                          "body": {"error": error, "error_description": description}},
                  statuses={502}, reason="sign-in is misconfigured")
    text = stack.logs.text()
    assert "OPERATOR ALERT" in text and error in text
    assert "GOCSPX-echoed" not in text and "was not found" not in text  # no remote body in the log


@pytest.mark.parametrize("body", [{"error": "<script>alert(1)</script>"}, {"error": "x" * 500}, {"nothing": 1}])
async def test_odd_error_bodies_are_not_echoed(stack, body):
    response = await attempt(stack, {"kind": "status", "status": 400, "body": body}, statuses={502})
    assert b"script" not in response.body and b"xxxx" not in response.body
    assert "<script>" not in stack.logs.text()
