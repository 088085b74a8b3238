"""A login is one request: every answer of ``/storeauthcode`` and every frame ending an attempt carries the next state.

The page gets its first state rendered into it; after that the client never
needs ``GET /state``. Security stays: the state is single-use, bound to the
session it was issued to, and only handed to that session (its own JSON
answer, its own sockets); a refused cross-origin request gets none.
"""

from __future__ import annotations

import asyncio
import json
import re

import pytest

from harness import json_body, start_stack

pytestmark = pytest.mark.gen_test(timeout=30)


@pytest.fixture
def stack(io_loop):
    opened = io_loop.run_sync(start_stack)
    yield opened
    io_loop.run_sync(opened.close)


async def page_state(client) -> str:
    """Load the page like a browser; return the state rendered into it."""
    page = await client.fetch("/")
    assert page.code == 200 and page.headers["Cache-Control"] == "no-store"
    config = re.search(r'<script type="application/json" id="tornado-signin-config">(.*?)</script>',
                       page.body.decode(), re.S)[1]
    return json.loads(config)["state"]


async def test_logins_chain_on_the_states_the_answers_carry_without_get_state(stack):
    client = stack.client()
    state = await page_state(client)
    socket = await client.socket()
    fetches = []
    original = client.fetch

    async def counting(path, **kw):
        fetches.append((kw.get("method", "GET"), path))
        return await original(path, **kw)

    client.fetch = counting
    for email in ("alice@example.com", "bob@gmail.com", "alice@example.com"):
        response = await client.post_code(stack.mint(email), state=state)
        assert response.code == 200, response.body
        answer = json_body(response)
        frame = json.loads(await asyncio.wait_for(socket.read_message(), 5))
        assert frame["type"] == "signed_in" and frame["user"] == answer["user"]
        # The answer and the frame carry the same next state (single use either way).
        assert answer["state"] == frame["state"] and answer["state"] != state
        state = answer["state"]
    assert fetches == [("POST", "/storeauthcode")] * 3  # never GET /state
    # The state is still single use.
    replay = await client.post_code(stack.mint("alice@example.com"), state=frame["state"])
    assert replay.code == 200
    again = await client.post_code(stack.mint("alice@example.com"), state=frame["state"])
    assert again.code == 403 and json_body(again)["error"] == "invalid state"
    socket.close()


async def test_the_state_in_a_4xx_answer_works_for_the_next_attempt(stack):
    client = stack.client()
    state = await page_state(client)
    socket = await client.socket()
    # Google refuses the code: 400, the frame says failed, both carry the next state.
    rejected = await client.post_code("4/not-a-code-google-issued", state=state)
    assert rejected.code == 400, rejected.body
    answer = json_body(rejected)
    frame = json.loads(await asyncio.wait_for(socket.read_message(), 5))
    assert frame["type"] == "failed" and frame["state"] == answer["state"]
    assert set(answer) == {"error", "state"} and set(frame) == {"type", "reason", "state"}
    # A refusal of the gate (a spent state, a wrong content type) still hands out the next one.
    spent = await client.post_code("4/unspent", state=state)
    assert spent.code == 403 and json_body(spent)["error"] == "invalid state"
    wrong_type = await client.post_code("4/unspent", state=json_body(spent)["state"],
                                        headers={"Content-Type": "text/plain"})
    assert wrong_type.code == 415
    # Each of those states passes the state gate of a next attempt (Google's 400, not the gate's 403)...
    for refused in (rejected, spent):
        response = await client.post_code("4/not-a-code-google-issued", state=json_body(refused)["state"])
        assert response.code == 400, (refused.code, response.body)
    # ... and the last one signs in.
    response = await client.post_code(stack.mint("carol@example.org"), state=json_body(wrong_type)["state"])
    assert response.code == 200, response.body
    assert json_body(response)["user"]["email"] == "carol@example.org"
    socket.close()


async def test_consent_required_carries_the_next_state(stack):
    client = stack.client()
    first = await client.post_code(stack.mint("bob@gmail.com"))
    assert first.code == 200
    # Google sends no refresh token now, and none is stored: consent is required.
    stack.store.delete(json_body(first)["user"]["sub"])
    response = await client.post_code(stack.mint("bob@gmail.com"), state=json_body(first)["state"])
    assert response.code == 409, response.body
    answer = json_body(response)
    assert answer["status"] == "consent_required"
    again = await client.post_code(stack.mint("bob@gmail.com", prompt="consent"), state=answer["state"])
    assert again.code == 200, again.body


async def test_a_state_from_another_session_is_refused(stack):
    alice, mallory = stack.client(), stack.client()
    answer = json_body(await alice.post_code(stack.mint("alice@example.com")))
    await page_state(mallory)
    stolen = await mallory.post_code(stack.mint("bob@gmail.com"), state=answer["state"])
    assert stolen.code == 403 and json_body(stolen)["error"] == "invalid state"
    # Alice's own next state is untouched by the refusal.
    assert (await alice.post_code(stack.mint("alice@example.com"), state=answer["state"])).code == 200


async def test_no_state_for_a_request_the_origin_gate_refuses(stack):
    client = stack.client()
    state = await page_state(client)
    for headers in ({"Origin": "https://evil.example"}, {"X-Requested-With": None}):
        response = await client.post_code("4/unspent", state=state, headers=headers)
        assert response.code == 403 and set(json_body(response)) == {"error"}, response.body
    # The rendered state was not spent by the refusals.
    assert (await client.post_code(stack.mint(), state=state)).code == 200


async def test_answers_and_frames_carry_no_code_or_token(stack):
    client = stack.client()
    await page_state(client)
    socket = await client.socket()
    code = stack.mint("alice@example.com")
    response = await client.post_code(code)
    frame = await asyncio.wait_for(socket.read_message(), 5)
    record = stack.store.get(json_body(response)["user"]["sub"])
    for text in (response.body.decode(), frame):
        for secret in (code, record.refresh_token, record.access_token):
            assert secret and secret not in text
    socket.close()
