"""Issue 12.11, the app's side: which scheme the cookie, HSTS and the page's own origin follow.

With ``server.public_origin`` it decides, whatever the headers say; with
``server.xheaders`` and no public origin only ``X-Forwarded-Proto`` counts
(Tornado's xheaders would let a client's ``X-Scheme`` win); without either,
the connection's own scheme. In-process, over plain http (the proxy's side).
"""

from __future__ import annotations

import pytest

from harness import start_stack

pytestmark = pytest.mark.gen_test(timeout=30)

HOST_COOKIE = "__Host-signin_session="
PLAIN_COOKIE = "signin_session="


async def page(stack, headers: dict[str, str]):
    client = stack.client()
    response = await client.fetch("/", headers=headers)
    assert response.code == 200, response.body
    return client, response


def looks_secure(response) -> bool:
    """Return whether the answer is the https one: ``__Host-`` Secure cookie, HSTS, wss: in the CSP."""
    cookies = response.headers.get_list("Set-Cookie")
    assert len(cookies) == 1, cookies
    (cookie,) = cookies
    secure = cookie.startswith(HOST_COOKIE)
    assert secure == ("; Secure" in cookie) and secure != cookie.startswith(PLAIN_COOKIE), cookie
    assert secure == ("Strict-Transport-Security" in response.headers)
    assert secure == ("wss://" in response.headers["Content-Security-Policy"])
    return secure


@pytest.mark.parametrize("headers", [{}, {"X-Scheme": "http"}, {"X-Forwarded-Proto": "http"},
                                     {"X-Scheme": "http", "X-Forwarded-Proto": "http"}])
@pytest.mark.parametrize("xheaders", [False, True])
async def test_public_origin_decides_the_scheme_whatever_the_headers(io_loop, headers, xheaders):
    stack = await start_stack(server={"public_origin": "https://app.example", "xheaders": xheaders})
    try:
        client, response = await page(stack, headers)
        assert looks_secure(response)
        assert "wss://app.example" in response.headers["Content-Security-Policy"]
        # The __Host- cookie is read back on plain http from the proxy: the session is kept.
        cookie = response.headers["Set-Cookie"].split(";", 1)[0]
        again = await client.fetch("/state", headers={**headers, "Cookie": cookie}, cookies=False)
        assert again.code == 200 and not again.headers.get_list("Set-Cookie")
        assert again.headers["Strict-Transport-Security"] == "max-age=31536000"
        # The socket handshake reads the same cookie, and checks Origin against the public origin.
        socket = await client.socket(origin="https://app.example")
        socket.close()
    finally:
        await stack.close()


@pytest.mark.parametrize("headers,secure", [
    ({}, False),
    ({"X-Scheme": "https"}, False),  # a client's own X-Scheme, passed through by a proxy
    ({"X-Scheme": "HTTPS"}, False),
    ({"X-Forwarded-Proto": "https"}, True),
    ({"X-Forwarded-Proto": "https", "X-Scheme": "http"}, True),  # no downgrade by X-Scheme either
    ({"X-Forwarded-Proto": "http", "X-Scheme": "https"}, False),
    ({"X-Forwarded-Proto": "http, https"}, True),  # the last hop's
    ({"X-Forwarded-Proto": "gopher"}, False),
])
async def test_with_xheaders_only_x_forwarded_proto_counts(io_loop, headers, secure):
    stack = await start_stack(server={"xheaders": True})
    try:
        _client, response = await page(stack, headers)
        assert looks_secure(response) is secure
    finally:
        await stack.close()


async def test_without_xheaders_forwarded_headers_change_nothing(io_loop):
    stack = await start_stack()
    try:
        for headers in ({"X-Forwarded-Proto": "https"}, {"X-Scheme": "https"}):
            _client, response = await page(stack, headers)
            assert not looks_secure(response)
    finally:
        await stack.close()
