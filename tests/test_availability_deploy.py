"""Issue 12.2 across two `tornado-signin serve` processes sharing PostgreSQL and Redis.

Per-client budgets hold for the deployment, not per process, and a flood of
cheap requests (``GET /state`` + ``POST /signout`` pairs) leaves the Redis key
count and the servers' memory bounded: a state is kept only while it is
outstanding, at most ``limits.states_per_session`` per session.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import redis

from harness import json_body
from procs import mint
from test_deploy import Deployment

pytestmark = [pytest.mark.gen_test(timeout=240), pytest.mark.slow]

PAIRS = 8000
CLIENTS = 8


@pytest.fixture
def deployment(tmp_path, postgres_url, redis_url, unique_name):
    """Start two app instances (and the emulator) with ``limits``; stop them after the test."""
    made: list[Deployment] = []

    def make(limits: dict) -> Deployment:
        made.append(Deployment(tmp_path, postgres_url, redis_url, unique_name + str(len(made)), limits=limits))
        return made[-1]

    yield make
    for each in made:
        each.close()


def redis_keys(redis_url: str, prefix: str) -> list[str]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        return sorted(client.scan_iter(match=prefix + "*", count=1000))
    finally:
        client.close()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def test_budgets_hold_for_the_deployment_not_per_process(deployment):
    dep = deployment(limits={"state_requests_per_minute": 20, "signout_posts_per_minute": 6,
                                     "socket_handshakes_per_minute": 10})
    pages = [dep.client(0), dep.client(1)]
    for page in pages:
        page.cookies = {}
    codes = [(await pages[i % 2].fetch("/state")).code for i in range(40)]
    assert codes.count(200) == 20 and codes.count(429) == 20, codes
    refused = await pages[0].fetch("/state")
    assert refused.code == 429 and json_body(refused) == {"error": "too many requests"}
    # A state from before the budget ran out is still good on either process; sign-out has its own budget.
    answers = []
    for page in [dep.client(index % 2) for index in range(8)]:
        answers.append((await page.fetch("/signout", method="POST", body=b"",
                                         headers=page.gate_headers("x.1.y"))).code)
    assert answers.count(429) == 2 and set(answers) == {403, 429}, answers  # 6 reach the gate, across both
    # The socket handshake's budget, across both processes.
    handshakes = []
    for index in range(14):
        try:
            socket = await dep.client(index % 2).socket()
            socket.close()
            handshakes.append(101)
        except Exception as exc:  # tornado raises HTTPClientError for a refused handshake
            handshakes.append(getattr(exc, "code", 0))
    assert handshakes.count(429) == 4 and handshakes.count(403) == 10, handshakes  # no cookie: 403 past the budget


async def test_a_flood_of_state_and_signout_pairs_leaves_redis_and_memory_bounded(deployment, redis_url):
    dep = deployment(limits={"state_requests_per_minute": 0, "signout_posts_per_minute": 0})
    prefix = f"{dep.table}:"
    # Warm both processes up (first requests allocate caches), then measure.
    for index in (0, 1):
        page = dep.client(index)
        assert (await page.post_gated("/signout")).code == 200
    rss_before = [rss_kib(proc.pid) for proc in dep.servers]
    keys_before = len(redis_keys(redis_url, prefix))

    async def pairs(worker: int) -> list[int]:
        page = dep.client(worker % 2)
        codes = []
        for index in range(PAIRS // CLIENTS):
            page.base_url = dep.urls[index % 2]  # the load balancer alternates
            state = await page.state()
            response = await page.fetch("/signout", method="POST", body=b"", headers=page.gate_headers(state))
            codes.append(response.code)
        return codes

    results = await asyncio.gather(*(pairs(worker) for worker in range(CLIENTS)))
    codes = [code for result in results for code in result]
    assert len(codes) == PAIRS and set(codes) == {200}, set(codes)
    keys = redis_keys(redis_url, prefix)
    # Before: one "once:state:<nonce>" key per pair for ~11 minutes (8,000 keys). Now the spent states are
    # gone: what is left is the sessions' own keys from the warm-up, whatever the request count.
    assert len(keys) - keys_before <= 4, keys[:20]
    assert not [k for k in keys if ":states:" in k or ":once:" in k], keys[:20]
    grown = [rss_kib(proc.pid) - before for proc, before in zip(dep.servers, rss_before, strict=True)]
    assert max(grown) < 16 * 1024, f"RSS grew {grown} KiB"

    # Outstanding states are capped per session: 50 issued to one session keep only the newest 8.
    page = dep.client(0)
    states = [await page.state() for _ in range(50)]
    assert len([k for k in redis_keys(redis_url, prefix) if ":states:" in k]) == 1
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        (states_key,) = [k for k in redis_keys(redis_url, prefix) if ":states:" in k]
        assert client.zcard(states_key) == 8
    finally:
        client.close()
    old = await page.fetch("/signout", method="POST", body=b"", headers=page.gate_headers(states[0]))
    assert old.code == 403 and json_body(old) == {"error": "invalid state"}
    newest = await page.post_code(mint(dep.emulator_url), state=states[-1])
    assert newest.code == 200, newest.body
