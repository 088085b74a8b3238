"""Sessions that can be ended: the hub's session records, sign-out everywhere, copied cookies refused."""

from __future__ import annotations

import asyncio

import pytest
from tornado.httpclient import HTTPClientError

from harness import PageClient, json_body
from security_oracle import drain, stack_fixture
from tornado_signin.errors import HubUnavailableError
from tornado_signin.hub import SessionRecord

pytestmark = pytest.mark.gen_test(timeout=30)

stack = stack_fixture()


# The session-record contract itself is in the hub contract kit (tornado_signin/testing/hub.py);
# here: what the Redis hub does while Redis is away.


class TestRedisHubSessionsWhileRedisIsAway:
    async def test_unreachable_redis_knows_only_its_own_sessions(self):
        from tornado_signin_backends.redis_hub import RedisHub

        hub = RedisHub(url="redis://127.0.0.1:1/0", timeout=0.3)
        try:
            with pytest.raises(HubUnavailableError):  # another process's session: cannot be checked
                await hub.session_active("x" * 22)
            with pytest.raises(HubUnavailableError):
                await hub.sessions_of("s")
            await hub.start_session(SessionRecord(sid="y" * 22, sub="s", started_at=0.0), 60)
            assert await hub.session_active("y" * 22)  # started here: valid here
            assert await hub.end_sessions("s") == ["y" * 22]
            assert not await hub.session_active("y" * 22)
            await hub.end_session("x" * 22)
            assert not await hub.session_active("x" * 22)  # ended here: refused here
        finally:
            await hub.close()

    @pytest.mark.slow
    async def test_a_session_ended_while_redis_stalls_is_ended_everywhere_when_it_answers(self, tmp_path):
        import subprocess

        from procs import free_port, start_redis
        from tornado_signin_backends.redis_hub import RedisHub

        port = free_port()
        redis = start_redis(port, tmp_path)
        url = f"redis://127.0.0.1:{port}/0"
        here, there = RedisHub(url=url, timeout=0.3), RedisHub(url=url, timeout=0.3)
        try:
            record = SessionRecord(sid="s" * 22, sub="someone", started_at=0.0)
            await here.start_session(record, 60)
            assert await there.session_active(record.sid)
            # Redis stops answering (its data stays): the end is kept here, and written when it answers.
            subprocess.run(["redis-cli", "-p", str(port), "CLIENT", "PAUSE", "1500", "ALL"], check=True,
                           capture_output=True)
            await here.end_session(record.sid)
            assert not await here.session_active(record.sid)
            for _ in range(100):
                await asyncio.sleep(0.1)
                try:
                    if not await there.session_active(record.sid):
                        break
                except HubUnavailableError:
                    continue
            assert not await there.session_active(record.sid)
            assert await there.sessions_of("someone") == []
        finally:
            await here.close()
            await there.close()
            redis.stop()


# ----------------------------------------------------------------------------- over HTTP


async def signed_in(stack, email="alice@example.com") -> tuple[PageClient, str]:
    client = stack.client()
    body = json_body(await client.post_code(stack.mint(email)))
    assert body["status"] == "signed_in", body
    return client, body["user"]["sub"]


def copy_of(client: PageClient, stack) -> PageClient:
    thief = stack.client()
    thief.cookies = dict(client.cookies)
    return thief


async def test_copied_cookie_is_refused_after_signout(stack):
    client, sub = await signed_in(stack)
    thief = copy_of(client, stack)
    stolen = dict(client.cookies)
    assert json_body(await thief.fetch("/api/scopes"))["scopes"]  # the copy works while the session lives
    assert (await client.post_gated("/signout")).code == 200
    assert (await thief.fetch("/api/scopes")).code == 401
    page = (await thief.fetch("/")).body.decode()
    assert "alice@example.com" not in page
    thief.cookies = dict(stolen)
    with pytest.raises(HTTPClientError) as refused:  # the websocket handshake refuses the ended session
        await asyncio.wait_for(thief.socket(), 5)
    assert refused.value.code == 403
    assert await stack.ctx.sessions.list(sub) == []
    assert stack.ctx.metrics.value("signin_sessions_ended_total", reason="signout") == 1


async def test_signout_everywhere_ends_every_session_of_the_user_live(stack):
    first, sub = await signed_in(stack)
    second, _ = await signed_in(stack)
    other, _ = await signed_in(stack, "bob@gmail.com")
    assert len(await stack.ctx.sessions.list(sub)) == 2
    socket = await second.socket()
    await drain(socket)  # the recorded sign-in frame
    state = await first.state()
    response = await first.fetch("/signout?everywhere=1", method="POST", body=b"",
                                 headers=first.gate_headers(state))
    assert response.code == 200
    assert await drain(socket, 2) == [{"type": "signed_out"}, None]
    assert (await second.fetch("/api/scopes")).code == 401
    assert (await other.fetch("/api/scopes")).code == 200
    assert await stack.ctx.sessions.list(sub) == []


async def test_plain_signout_keeps_the_users_other_sessions(stack):
    first, sub = await signed_in(stack)
    second, _ = await signed_in(stack)
    assert (await first.post_gated("/signout")).code == 200
    assert (await second.fetch("/api/scopes")).code == 200
    assert len(await stack.ctx.sessions.list(sub)) == 1


async def test_ended_cookie_cannot_sign_out_the_users_other_sessions(stack):
    first, sub = await signed_in(stack)
    thief = copy_of(first, stack)
    assert (await first.post_gated("/signout")).code == 200
    second, _ = await signed_in(stack)
    state = await thief.state()  # a new anonymous session for the thief
    thief_old = copy_of(first, stack)
    response = await thief_old.fetch("/signout?everywhere=1", method="POST", body=b"",
                                      headers=thief_old.gate_headers(state))
    assert response.code in (200, 403)
    assert (await second.fetch("/api/scopes")).code == 200


async def test_hub_down_serves_signed_in_cookie_as_signed_out(stack):
    client, sub = await signed_in(stack)

    async def down(sid):
        raise HubUnavailableError("test: hub down")

    stack.ctx.hub.session_active = down
    assert (await client.fetch("/api/scopes")).code == 401
    assert stack.ctx.metrics.value("signin_session_checks_total", outcome="hub_unavailable") == 1
