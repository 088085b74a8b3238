"""Issue #5 §5: the /confirm websocket refuses cross-site and session-less sockets and survives bad clients.

References: OWASP ASVS 5.0 V4.4 (WebSocket: Origin check, session binding,
message size), RFC 6455 §10.2 (Origin), cross-site WebSocket hijacking.
None of the cases crashes the server or shows a socket another session's
outcome.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket as socketlib

import pytest
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import WebSocketError, websocket_connect

from harness import json_body
from security_oracle import assert_logs_clean, drain, session_of, stack_fixture

pytestmark = pytest.mark.gen_test(timeout=30)

LIMITS = {"websocket_ping_interval": 0.2, "websocket_ping_timeout": 0.2, "websocket_max_message_bytes": 1024}


stack = stack_fixture(limits=LIMITS)


async def healthy(stack):
    assert json_body(await stack.client().fetch("/healthz")) == {"status": "ok"}


async def refused(stack, headers, path="/confirm"):
    url = stack.app_url.replace("http", "ws", 1) + path
    with pytest.raises((HTTPClientError, WebSocketError)) as info:
        conn = await websocket_connect(HTTPRequest(url, headers=headers))
        conn.close()
    code = getattr(info.value, "code", None)
    assert code in (400, 403), info.value
    return code


@pytest.mark.parametrize("fetch_site", [None, "same-origin", "none"])
@pytest.mark.parametrize("origin", [None, "null", "", "https://evil.example", "https://{host}", "ws://{host}",
                                    "wss://{host}", "http://localhost:{port}", "{origin}/path", "http://evil@{host}"])
async def test_foreign_null_missing_or_other_scheme_origins_are_refused(stack, origin, fetch_site):
    client = stack.client()
    await client.fetch("/")
    host = stack.app_url.split("://")[1]
    headers = {"Cookie": client.cookie_header()}
    if fetch_site:
        headers["Sec-Fetch-Site"] = fetch_site  # a lying non-browser client
    if origin is not None:
        headers["Origin"] = origin.format(host=host, port=host.split(":")[1], origin=stack.app_url)
    await refused(stack, headers)
    assert not stack.ctx.sockets
    await healthy(stack)


async def test_no_session_is_refused(stack):
    await refused(stack, {"Origin": stack.app_url})
    await refused(stack, {"Origin": stack.app_url, "Cookie": "signin_session=forged"})


async def test_another_sessions_channel_cannot_be_reached(stack):
    victim = stack.client()
    await victim.fetch("/")
    victim_sid = session_of(victim).sid
    attacker = stack.client()
    await attacker.fetch("/")
    # Every way a client might name a channel is ignored: the cookie's session decides.
    url = stack.app_url.replace("http", "ws", 1)
    sockets = []
    for path in (f"/confirm?channel={victim_sid}", f"/confirm?sid={victim_sid}", f"/confirm?session={victim_sid}"):
        sockets.append(await websocket_connect(HTTPRequest(url + path, headers={
            "Origin": stack.app_url, "Cookie": attacker.cookie_header()})))
    # The victim's sid in a cookie the attacker cannot sign is no session at all.
    await refused(stack, {"Origin": stack.app_url, "Cookie": f'signin_session="{victim_sid}"'})
    victim_socket = await victim.socket()
    assert (await victim.post_code(stack.mint("carol@example.org"))).code == 200
    assert (await drain(victim_socket))[0]["type"] == "signed_in"
    for sock in sockets:
        assert await drain(sock) == [], "another session's outcome leaked"
        sock.write_message(json.dumps({"subscribe": victim_sid}))
    await asyncio.sleep(0.05)
    assert (await victim.post_gated("/signout")).code == 200
    for sock in sockets:
        assert await drain(sock) == []
        sock.close()
    assert_logs_clean(stack)


async def test_oversized_frames_close_the_socket_and_the_server_lives(stack):
    client = stack.client()
    await client.fetch("/")
    sock = await client.socket()
    sock.write_message("x" * 4096)
    assert await asyncio.wait_for(sock.read_message(), 3) is None
    assert sock.close_code in (1009, 1006, None)
    await healthy(stack)
    again = await client.socket()  # the session still works
    again.close()


@pytest.mark.parametrize("frame", ["not json", '{"type": "signed_in", "user": {"sub": "1"}}', b"\x00\xff\xfe",
                                   json.dumps({"rebind": "x" * 22}), "{" * 500])
async def test_junk_frames_are_ignored(stack, frame):
    client = stack.client()
    await client.fetch("/")
    sock = await client.socket()
    await sock.write_message(frame, binary=isinstance(frame, bytes))
    assert await drain(sock) == []  # nothing echoed, nothing acted on
    assert (await client.post_code(stack.mint())).code == 200
    assert (await drain(sock))[0]["type"] == "signed_in"  # still subscribed to its own channel only
    sock.close()


async def raw_handshake(stack, client):
    """Open /confirm by hand on a socket with a tiny receive buffer; return (reader, writer)."""
    host, port = stack.app_url.split("://")[1].split(":")
    raw = socketlib.socket(socketlib.AF_INET, socketlib.SOCK_STREAM)
    raw.setsockopt(socketlib.SOL_SOCKET, socketlib.SO_RCVBUF, 4096)
    raw.setblocking(False)
    await asyncio.get_running_loop().sock_connect(raw, (host, int(port)))
    reader, writer = await asyncio.open_connection(sock=raw, limit=4096)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write((f"GET /confirm HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nOrigin: {stack.app_url}\r\n"
                  f"Cookie: {client.cookie_header()}\r\n\r\n").encode())
    assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)).startswith(b"HTTP/1.1 101")
    writer.transport.pause_reading()  # from now on this client never reads (and so never answers a ping)
    return reader, writer


async def test_dead_and_never_reading_clients_are_dropped_and_do_not_hold_the_server(stack):
    """Two raw clients that never read (so never answer a ping); one is also flooded with frames.

    The server stops talking to them after one ping interval + timeout and
    releases them at most 5 s later (Tornado's fixed grace for a clean close).
    """
    idle, flooded = stack.client(), stack.client()
    for client in (idle, flooded):
        await client.fetch("/")
    _, idle_raw = await raw_handshake(stack, idle)
    _, flooded_raw = await raw_handshake(stack, flooded)
    await asyncio.sleep(0.05)
    assert len(stack.ctx.sockets) == 2
    sid = session_of(flooded).sid
    for i in range(300):  # far more than its receive window holds
        await stack.ctx.hub.publish(sid, {"frame": {"type": "failed", "reason": "x" * 900}}, record=False)
        if i % 100 == 0:
            await healthy(stack)
    await asyncio.sleep(0.6)  # interval 0.2 + timeout 0.2, with margin
    assert all(s.ws_connection is None or s.ws_connection.server_terminated for s in stack.ctx.sockets)
    await healthy(stack)
    for _ in range(70):
        if not stack.ctx.sockets:
            break
        await asyncio.sleep(0.1)
    assert not stack.ctx.sockets, "a dead peer kept its socket"
    for raw in (idle_raw, flooded_raw):
        raw.close()
    await healthy(stack)


async def test_a_live_socket_answering_pings_stays_open(stack):
    client = stack.client()
    await client.fetch("/")
    sock = await client.socket()
    await asyncio.sleep(0.8)  # several ping rounds
    assert len(stack.ctx.sockets) == 1
    assert (await client.post_code(stack.mint())).code == 200
    assert (await drain(sock))[0]["type"] == "signed_in"
    sock.close()


@pytest.mark.parametrize("failing", ["subscribe", "last"])
async def test_a_hub_that_cannot_follow_the_session_closes_the_socket_1013(stack, monkeypatch, failing):
    from tornado_signin.errors import HubUnavailableError

    async def unavailable(*args, **kwargs):
        raise HubUnavailableError("hub down (test)")

    client = stack.client()
    await client.fetch("/")
    monkeypatch.setattr(stack.ctx.hub, failing, unavailable)
    sock = await client.socket()
    assert await sock.read_message() is None  # closed by the server, no frame
    assert sock.close_code == 1013
    monkeypatch.undo()
    # One operator line, no traceback or ERROR; the server lives and the page's reconnect works.
    assert "hub could not follow its session" in stack.logs.text()
    assert " ERROR " not in stack.logs.text() and "Traceback" not in stack.logs.text()
    await healthy(stack)
    again = await client.socket()
    assert (await client.post_code(stack.mint("carol@example.org"))).code == 200
    assert (await drain(again))[0]["type"] == "signed_in"
    again.close()
