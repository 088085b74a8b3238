"""Issue #5 §1: the gate of POST /storeauthcode refuses before any outbound call.

References: RFC 9700 §4.7 (CSRF), RFC 6749 §10.12, RFC 6819 §4.4.1.8 and
§5.3.5, OWASP ASVS 5.0 V3 (web frontend: CSRF, CORS) and V2 (input
validation). Every case meets :func:`security_oracle.assert_rejected` with
``gate=True``: the emulator saw no token request.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from tornado.httpclient import HTTPRequest

from harness import json_body, without_state
from security_oracle import assert_rejected, close_stack, open_stack, session_of, stack_fixture

pytestmark = pytest.mark.gen_test(timeout=30)

MARK = "4/0AsecurityGate"  # a distinctive, code-looking prefix for the cases below


stack = stack_fixture()


async def page(stack):
    """A page that loaded / and opened its confirmation socket."""
    client = stack.client()
    assert (await client.fetch("/")).code == 200
    return client, await client.socket()


# -- headers: X-Requested-With, Origin, Sec-Fetch-Site ------------------------------------------------

HEADER_CASES = {
    "no X-Requested-With": {"X-Requested-With": None},
    "wrong X-Requested-With": {"X-Requested-With": "fetch"},
    "X-Requested-With lower case value": {"X-Requested-With": "xmlhttprequest"},
    "foreign Origin": {"Origin": "https://evil.example"},
    "null Origin": {"Origin": "null"},
    "no Origin": {"Origin": None},
    "empty Origin": {"Origin": ""},
    "Origin of another scheme": {"Origin": "https://{host}"},
    "Origin of another port": {"Origin": "http://127.0.0.1:1"},
    "Origin with a path": {"Origin": "{origin}/evil"},
    "Origin with userinfo": {"Origin": "http://evil@{host}"},
    "Origin of a sibling host": {"Origin": "http://localhost:{port}"},
    "Sec-Fetch-Site cross-site": {"Sec-Fetch-Site": "cross-site"},
    "Sec-Fetch-Site same-site": {"Sec-Fetch-Site": "same-site"},
    "Sec-Fetch-Mode navigate (a form)": {"Sec-Fetch-Mode": "navigate"},
}


@pytest.mark.parametrize("case", sorted(HEADER_CASES))
async def test_header_forgeries_are_refused(stack, case):
    client, socket = await page(stack)
    host = stack.app_url.split("://", 1)[1]
    headers = {k: (v.format(host=host, origin=stack.app_url, port=host.split(":")[1]) if v else v)
               for k, v in HEADER_CASES[case].items()}
    code = MARK + "headers"
    response = await client.post_code(code, headers=headers)
    await assert_rejected(stack, response, client=client, socket=socket, statuses={403}, gate=True, secrets=[code])


# -- content types: the forgeries a form or a simple request can send --------------------------------

@pytest.mark.parametrize("content_type, body", [
    ("application/x-www-form-urlencoded", "code=" + MARK + "form"),
    ("multipart/form-data; boundary=x", f'--x\r\nContent-Disposition: form-data; name="code"\r\n\r\n{MARK}mp\r\n--x--\r\n'),
    ("text/plain", MARK + "plain"),
    ("application/json", json.dumps({"code": MARK + "json"})),
    (None, MARK + "none"),
])
async def test_form_multipart_text_and_json_forgeries_are_refused(stack, content_type, body):
    client, socket = await page(stack)
    response = await client.post_code(body, headers={"Content-Type": content_type})
    await assert_rejected(stack, response, client=client, socket=socket, statuses={415}, gate=True,
                          secrets=[MARK])


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"])
async def test_other_methods_are_refused(stack, method):
    client, socket = await page(stack)
    state = await client.state()
    body = (MARK + "method").encode() if method in ("PUT", "PATCH") else None
    response = await client.fetch("/storeauthcode", method=method, body=body, headers=client.gate_headers(state))
    assert response.code in (403, 405), response.code
    assert "Access-Control-Allow-Origin" not in response.headers
    if method != "HEAD":
        await assert_rejected(stack, response, client=client, socket=socket, gate=True)


@pytest.mark.parametrize("origin", ["https://evil.example", "null"])
async def test_no_credentialed_cors_for_foreign_origins(stack, origin):
    client, socket = await page(stack)
    preflight = await client.fetch("/storeauthcode", method="OPTIONS", headers={
        "Origin": origin, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "x-requested-with, x-signin-state, content-type"})
    for response in (preflight, await client.post_code(MARK + "cors", headers={"Origin": origin})):
        assert "Access-Control-Allow-Origin" not in response.headers
        assert "Access-Control-Allow-Credentials" not in response.headers
        await assert_rejected(stack, response, client=client, socket=socket, gate=True)


async def test_no_session_cookie_is_refused(stack):
    client, socket = await page(stack)
    state = await client.state()
    bare = stack.client()
    response = await bare.post_code(MARK + "nosession", state=state)
    await assert_rejected(stack, response, client=bare, socket=socket, statuses={403}, gate=True)


# -- state: missing, foreign, forged, reused, expired ---------------------------------------------------

async def test_missing_state_is_refused(stack):
    client, socket = await page(stack)
    response = await client.post_code(MARK + "nostate", state=None)
    assert without_state(json_body(response)) == {"error": "invalid state"}
    await assert_rejected(stack, response, client=client, socket=socket, statuses={403}, gate=True)


@pytest.mark.parametrize("kind", ["foreign", "tampered", "garbage", "overlong", "future-dated"])
async def test_foreign_and_forged_states_are_refused(stack, kind):
    client, socket = await page(stack)
    other = stack.client()
    foreign = await other.state()
    own = await client.state()
    nonce, expires, mac = own.split(".")
    state = {
        "foreign": foreign,
        "tampered": f"{nonce}x.{expires}.{mac}",
        "garbage": "not-a-state",
        "overlong": own + "A" * 200,
        "future-dated": f"{nonce}.{int(expires) + 10**6}.{mac}",
    }[kind]
    response = await client.post_code(MARK + "state", state=state)
    await assert_rejected(stack, response, client=client, socket=socket, statuses={403}, gate=True)


async def test_expired_state_is_refused(stack):
    client, socket = await page(stack)
    sid = session_of(client).sid
    state = stack.ctx.states.issue(sid, now=time.time() - stack.ctx.states.ttl - 5)
    response = await client.post_code(MARK + "expired", state=state)
    await assert_rejected(stack, response, client=client, socket=socket, statuses={403}, gate=True)


async def test_reused_state_is_refused_even_from_the_same_session(stack):
    client, _ = await page(stack)
    old_cookies = dict(client.cookies)
    state = await client.state()
    old_cookies = dict(client.cookies)
    first = await client.post_code(stack.mint("alice@example.com"), state=state)
    assert first.code == 200
    sub = json_body(first)["user"]["sub"]
    # Replay with the session the state was issued to (an attacker holding both).
    replay = stack.client()
    replay.cookies = old_cookies
    code = stack.mint("bob@gmail.com")
    response = await replay.post_code(code, state=state)
    assert without_state(json_body(response)) == {"error": "invalid state"}
    await assert_rejected(stack, response, client=replay, statuses={403}, token_requests=1, known_subs=[sub],
                          secrets=[code])
    assert stack.store.get(sub) is not None and len(list(stack.store.records())) == 1


# -- the code itself -------------------------------------------------------------------------------

@pytest.mark.parametrize("case, body", [
    ("empty", b""),
    ("spaces only", b"    "),
    ("non-UTF-8", b"\xff\xfe4/0Abad\xc3\x28"),
    ("CR/LF", (MARK + "crlf\r\nX-Injected: 1").encode()),
    ("LF", (MARK + "lf\n").encode()),
    ("NUL", (MARK + "nul\x00").encode()),
    ("ampersand", (MARK + "amp&client_secret=x").encode()),
    ("equals", ("code=" + MARK + "eq").encode()),
    ("percent-encoded", (MARK + "%26grant_type%3Drefresh_token").encode()),
    ("over-long", (MARK + "L" * 600).encode()),
    ("JSON object", json.dumps({"code": MARK + "json"}).encode()),
    ("JSON string", json.dumps(MARK + "jstr").encode()),
    ("non-ASCII letters", (MARK + "é").encode()),
    ("tab", (MARK + "\ttab").encode()),
])
async def test_malformed_codes_are_refused(stack, case, body):
    client, socket = await page(stack)
    response = await client.post_code(body)
    await assert_rejected(stack, response, client=client, socket=socket, statuses={400}, gate=True,
                          secrets=[MARK + "L" * 40])


@pytest.mark.parametrize("size", [4097, 64 * 1024, 2 * 1024 * 1024])
async def test_oversized_bodies_are_refused_by_content_length(stack, size):
    client, socket = await page(stack)
    response = await client.post_code(b"A" * size)
    assert response.code == 413
    await assert_rejected(stack, response, client=client, socket=socket, statuses={413}, gate=True)


async def test_oversized_chunked_body_is_cut_before_buffering(stack):
    """No Content-Length: the cap is enforced while streaming; the server never holds a big body."""
    client, _ = await page(stack)
    state = await client.state()
    host, port = stack.app_url.split("://")[1].split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    head = "".join(f"{k}: {v}\r\n" for k, v in {**client.gate_headers(state), "Cookie": client.cookie_header(),
                                                    "Host": f"{host}:{port}",
                                                    "Transfer-Encoding": "chunked"}.items())
    writer.write(f"POST /storeauthcode HTTP/1.1\r\n{head}\r\n".encode())
    chunk = b"A" * 8192
    sent, answer = 0, b""
    try:
        for _ in range(256):  # up to 2 MiB; the server must answer and close long before
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            await writer.drain()
            sent += len(chunk)
            if reader.at_eof():
                break
            await asyncio.sleep(0)
        answer = await asyncio.wait_for(reader.read(4096), 5)
    except (ConnectionError, OSError):
        pass  # the server reset the connection: what matters is that it stopped reading
    writer.close()
    assert answer.startswith(b"HTTP/1.1 413") or answer == b"", answer[:80]
    assert sent < 2 * 1024 * 1024 or answer.startswith(b"HTTP/1.1 413")
    assert stack.emulator.stats["token"] == 0


# -- a flood of bogus codes --------------------------------------------------------------------------

async def test_flood_of_bogus_codes_is_rate_limited_per_client_despite_spoofed_forwarded_for(io_loop):
    stack = await open_stack(limits={"code_posts_per_minute": 5})
    try:
        client, socket = await page(stack)
        answers = []
        for i in range(12):
            response = await client.post_code(f"{MARK}flood{i:04d}",
                                              headers={"X-Forwarded-For": f"198.51.100.{i}", "X-Real-Ip": f"203.0.113.{i}"})
            answers.append(response.code)
        assert answers[:5] == [400] * 5, answers  # bogus codes: Google says invalid_grant
        assert answers[5:] == [429] * 7, answers
        assert stack.emulator.stats["token.authorization_code"] == 5
        await assert_rejected(stack, response, client=client, socket=socket, statuses={429}, token_requests=5)
        # Another client address still has its own budget.
        other = stack.client()
        other.http = other.http.__class__(force_instance=True)
        await other.fetch("/")
        state = await other.state()
        request = HTTPRequest(stack.app_url + "/storeauthcode", method="POST", body=MARK + "other",
                              headers={**other.gate_headers(state), "Cookie": other.cookie_header()},
                              network_interface="127.0.0.2")
        answer = await other.http.fetch(request, raise_error=False)
        assert answer.code == 400, answer.code  # reached the exchange: its own budget
        other.http.close()
    finally:
        await close_stack(stack)
