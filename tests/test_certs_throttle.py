"""Issue 12, "Also": the certs refetch throttle no longer fails a login whose key was published seconds ago.

An unknown ``kid`` makes at most one certs fetch per ``refetch_interval``
(5 s by default, shortened here). A login whose ``kid`` is unknown inside the
window waits for its end (bounded) and shares the one refetch then; a flood
of forged kids still costs at most one fetch per window.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from security_oracle import stack_fixture

stack = stack_fixture(limits={"code_posts_per_minute": 100000})
pytestmark = pytest.mark.gen_test(timeout=30)

INTERVAL = 1.0


async def test_a_key_published_just_after_an_unknown_kid_refetch_signs_in(stack):
    certs = stack.ctx.certs
    certs.refetch_interval = INTERVAL
    assert (await stack.client().post_code(stack.mint())).code == 200  # keys cached
    certs._last_fetch = float("-inf")  # as if the cache were older than the window
    fetched = stack.emulator.stats["certs"]
    stack.emulator.faults.add("token", "id_token_header", set={"kid": "forged-kid"})
    assert (await stack.client().post_code(stack.mint("bob@gmail.com"))).code == 401
    assert stack.emulator.stats["certs"] == fetched + 1, "the unknown kid refetched at once"

    stack.emulator.rotate_keys()  # Google publishes a new key, seconds after that refetch
    started = time.monotonic()
    response = await stack.client().post_code(stack.mint("carol@example.org"))
    waited = time.monotonic() - started
    assert response.code == 200, response.body
    assert stack.emulator.stats["certs"] == fetched + 2, "exactly one more refetch"
    assert waited <= INTERVAL + 1.0, f"the login waited {waited:.2f}s, more than the window"


async def test_forged_kid_floods_cost_one_fetch_per_window(stack):
    certs = stack.ctx.certs
    certs.refetch_interval = 0.5
    assert (await stack.client().post_code(stack.mint())).code == 200
    fetched = stack.emulator.stats["certs"]
    started = time.monotonic()
    waves = 4
    per_wave = 10
    stack.emulator.faults.add("token", "id_token_header", set={"kid": "forged"}, count=waves * per_wave)
    answers = []
    for _ in range(waves):
        pages = [stack.client() for _ in range(per_wave)]
        answers += await asyncio.gather(*(p.post_code(stack.mint("bob@gmail.com")) for p in pages))
    elapsed = time.monotonic() - started
    assert [a.code for a in answers] == [401] * (waves * per_wave)
    fetches = stack.emulator.stats["certs"] - fetched
    assert 1 <= fetches <= 1 + elapsed / certs.refetch_interval + 1, (fetches, elapsed)
    assert fetches <= waves + 1
    # Each login waited at most one window (plus the request itself).
    assert elapsed <= waves * (certs.refetch_interval + 0.8), elapsed
