"""The offline bulk job: OfflineAccess.credentials_for_all (issue 16), against the emulator."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from harness import CLIENT_ID, start_stack
from tornado_signin.emulator import TestAccount
from tornado_signin.errors import ConsentRequiredError, MissingScopeError, UnknownUserError
from tornado_signin.offline import OfflineAccess
from tornado_signin.store import TokenRecord
from tornado_signin.workers import WorkerPool

pytestmark = pytest.mark.gen_test(timeout=60)

SCOPE = "openid email profile"


@pytest.fixture
def stack(io_loop):
    stack = io_loop.run_sync(start_stack)
    stack.ctx.offline.retry_delays = (0.01, 0.01, 0.01)
    yield stack
    io_loop.run_sync(stack.close)


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def any_store_stack(request, io_loop, tmp_path, unique_name):
    """The stack on the memory store, and on the sql store (SQLite, PostgreSQL), whose save_many sends a
    batch of distinct subs to the database in one execution."""
    store: dict = {}
    if request.param == "sqlite":
        store = {"backend": "sql", "url": f"sqlite:///{tmp_path / 'tokens.sqlite3'}"}
    elif request.param == "postgres":
        store = {"backend": "sql", "url": request.getfixturevalue("postgres_url"), "table": unique_name}
    stack = io_loop.run_sync(lambda: start_stack(**({"store": store} if store else {})))
    stack.ctx.offline.retry_delays = (0.01, 0.01, 0.01)
    assert (type(stack.store.inner).__name__ == "SQLTokenStore") == bool(store)
    yield stack
    if request.param == "postgres":
        stack.store.inner.drop_schema()
    io_loop.run_sync(stack.close)


def seed(stack, count: int, *, expired: bool = True) -> list[str]:
    """Store ``count`` new users with a live offline grant at the emulator; return their subs."""
    state = stack.emulator.state
    first = len(state.accounts)
    accounts = tuple(TestAccount(f"bulk{i}@example.com", f"Bulk {i}", f"3{i:020d}") for i in range(first, first + count))
    state.accounts = state.accounts + accounts
    client = state.client(CLIENT_ID)
    now = time.time()
    for account in accounts:
        issued = state.exchange_code(client, stack.mint(account.email, SCOPE, prompt="consent"), "postmessage")
        stack.store.save(TokenRecord(
            sub=account.sub, email=account.email, refresh_token=issued.refresh_token, refresh_token_issued_at=now,
            access_token=issued.access_token, access_token_issued_at=now,
            access_token_expiry=now - 10 if expired else now + 3000, scopes=issued.scopes))
    return [account.sub for account in accounts]


async def collect(offline: OfflineAccess, users=None, **kw) -> dict:
    return {outcome.user: outcome async for outcome in offline.credentials_for_all(users, **kw)}


async def test_every_stored_user_gets_credentials_and_one_failure_does_not_stop_the_job(stack):
    expired = seed(stack, 5)
    valid = seed(stack, 2, expired=False)
    revoked = expired[2]
    stack.emulator.state.revoke_grant(CLIENT_ID, revoked)
    before = {sub: stack.store.get(sub) for sub in expired + valid}

    outcomes = await collect(stack.ctx.offline, concurrency=3)

    assert set(outcomes) == set(expired + valid)
    assert isinstance(outcomes[revoked].error, ConsentRequiredError) and outcomes[revoked].credentials is None
    assert stack.store.get(revoked).state == "revoked"
    for sub in set(expired) - {revoked}:
        outcome, stored = outcomes[sub], stack.store.get(sub)
        assert outcome.error is None and outcome.refreshed and outcome.credentials.valid
        # Persisted through the store's merge: the new access token, the refresh token kept.
        assert outcome.credentials.token == stored.access_token != before[sub].access_token
        assert stored.refresh_token == before[sub].refresh_token
    for sub in valid:
        assert not outcomes[sub].refreshed and outcomes[sub].credentials.token == before[sub].access_token
    assert stack.emulator.stats["token.refresh_token"] == 5  # the valid ones were not refreshed


async def test_at_most_concurrency_refreshes_are_in_flight(stack):
    subs = seed(stack, 8)
    google = stack.ctx.offline.google
    original, flying, most = google.refresh, 0, 0

    async def counted(*args, **kwargs):
        nonlocal flying, most
        flying += 1
        most = max(most, flying)
        try:
            await asyncio.sleep(0.05)
            return await original(*args, **kwargs)
        finally:
            flying -= 1

    google.refresh = counted
    outcomes = await collect(stack.ctx.offline, concurrency=3)
    assert len(outcomes) == 8 and all(o.error is None for o in outcomes.values())
    assert most == 3
    assert set(outcomes) == set(subs)


async def test_a_small_worker_pool_is_waited_for_not_overloaded(stack):
    # 40 users in flight on a pool of 1 thread and 1 queue slot: the job waits for room instead of
    # failing users with OverloadedError (a bare gather of credentials() would).
    subs = seed(stack, 40)
    ctx = stack.ctx
    workers = WorkerPool(1, 1)
    try:
        offline = OfflineAccess(ctx.store, ctx.google, workers, retry_delays=(0.01,))
        outcomes = await collect(offline, concurrency=40)
    finally:
        workers.shutdown()
    assert {sub: outcomes[sub].error for sub in subs} == {sub: None for sub in subs}


async def test_given_users_by_sub_or_email_and_unknown_ones(stack):
    first, second = seed(stack, 2)
    outcomes = await collect(stack.ctx.offline, [first, stack.store.get(second).email, "nobody@example.com"])
    assert outcomes[first].credentials.valid and outcomes[second].credentials.valid  # the email named its sub
    assert isinstance(outcomes["nobody@example.com"].error, UnknownUserError)


async def test_missing_scope_is_the_users_outcome(stack):
    (sub,) = seed(stack, 1)
    outcomes = await collect(stack.ctx.offline, required_scopes=["drive.appdata"])
    assert isinstance(outcomes[sub].error, MissingScopeError)
    assert stack.emulator.stats["token.refresh_token"] == 0


async def test_closing_the_iterator_early_cancels_the_users_in_progress(stack):
    (valid,) = seed(stack, 1, expired=False)
    seed(stack, 5)
    stack.emulator.faults.add("token.refresh_token", "delay", count=-1, seconds=5)
    offline = stack.ctx.offline
    began = time.monotonic()
    async with contextlib.aclosing(offline.credentials_for_all([valid, *[r.sub for r in stack.store.records()
                                                                         if r.sub != valid]])) as outcomes:
        async for outcome in outcomes:
            assert outcome.user == valid and not outcome.refreshed
            assert offline._refreshing  # the others are in flight
            break
    assert offline._refreshing == {}  # cancelled, not waited for
    assert time.monotonic() - began < 2
    # Nor is a batch of the job's store calls left pending on the loop (it was destroyed pending with it).
    assert [t for t in asyncio.all_tasks() if "_Batcher" in getattr(t.get_coro(), "__qualname__", "")] == []


async def test_concurrency_below_one_is_refused(stack):
    with pytest.raises(ValueError, match="concurrency"):
        await collect(stack.ctx.offline, concurrency=0)


async def test_the_jobs_store_calls_share_worker_hops(stack):
    # Two store calls per refreshed user (the re-read under the lease, the save), but the calls of one
    # IOLoop turn run in one worker call: far fewer hops than calls.
    subs = seed(stack, 30)
    ctx = stack.ctx

    class Counting(WorkerPool):
        hops = 0

        async def run(self, fn, *args, **kwargs):
            Counting.hops += 1
            return await super().run(fn, *args, **kwargs)

    workers = Counting(2, 16)
    try:
        outcomes = await collect(OfflineAccess(ctx.store, ctx.google, workers), concurrency=30)
    finally:
        workers.shutdown()
    assert all(outcomes[sub].refreshed and outcomes[sub].error is None for sub in subs)
    assert Counting.hops < len(subs)  # 60 store calls and the page reads


async def test_one_users_store_failure_is_that_users_outcome(stack):
    # The job's re-reads and saves go through the store's batch forms; one item failing there (a shard
    # down, a record that does not decrypt) is that user's outcome, the others of its batch go on.
    from tornado_signin.errors import StorageError

    subs = seed(stack, 8)
    ctx, unreadable, unsaved = stack.ctx, subs[3], subs[5]

    class Flaky:
        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def get(self, sub):
            return self.get_many([sub])[0]

        def get_many(self, subs):
            return [StorageError("disk on fire") if sub == unreadable else item
                    for sub, item in zip(subs, self.inner.get_many(subs), strict=True)]

        def save(self, record):
            return self.save_many([record])[0]

        def save_many(self, records):
            return [StorageError("disk on fire") if record.sub == unsaved else item
                    for record, item in zip(records, self.inner.save_many(records), strict=True)]

    outcomes = await collect(OfflineAccess(Flaky(ctx.store), ctx.google, ctx.workers), concurrency=8)
    assert isinstance(outcomes[unreadable].error, StorageError)
    assert isinstance(outcomes[unsaved].error, StorageError)
    assert all(outcomes[sub].credentials.valid for sub in subs if sub not in (unreadable, unsaved))


async def test_the_jobs_reads_and_saves_go_through_the_stores_batch_forms(stack):
    # Per refreshed user one re-read under its lease and one save; the job hands the calls of a turn to
    # get_many / save_many (one query, one transaction on the sql store), never to get / save one by one.
    subs = seed(stack, 24)
    ctx = stack.ctx
    calls: dict[str, list[int]] = {"get": [], "save": [], "get_many": [], "save_many": []}

    class Spy:
        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def get(self, sub):
            calls["get"].append(1)
            return self.inner.get(sub)

        def save(self, record):
            calls["save"].append(1)
            return self.inner.save(record)

        def get_many(self, subs):
            calls["get_many"].append(len(subs))
            return self.inner.get_many(subs)

        def save_many(self, records):
            calls["save_many"].append(len(records))
            return self.inner.save_many(records)

    before = {sub: ctx.store.get(sub) for sub in subs}
    outcomes = await collect(OfflineAccess(Spy(ctx.store), ctx.google, ctx.workers), concurrency=24)
    assert all(outcomes[sub].refreshed and outcomes[sub].credentials.valid for sub in subs)
    assert calls["get"] == calls["save"] == []
    assert sum(calls["get_many"]) == sum(calls["save_many"]) == len(subs)
    assert max(calls["get_many"]) > 1 and max(calls["save_many"]) > 1  # batched, not one by one
    for sub in subs:
        stored = ctx.store.get(sub)
        assert stored.access_token == outcomes[sub].credentials.token != before[sub].access_token
        assert stored.refresh_token == before[sub].refresh_token


async def test_a_disconnect_during_the_jobs_late_refresh_is_not_undone(any_store_stack):
    stack = any_store_stack
    # The refresh answers are late; one user disconnects meanwhile. The disconnect waits for that user's
    # grant lease, and the late answer, saved through the batch forms, must not bring the record back.
    subs = seed(stack, 4)
    gone = subs[1]
    stack.emulator.faults.add("token.refresh_token", "delay", count=-1, seconds=0.5)
    job = asyncio.ensure_future(collect(stack.ctx.offline, concurrency=4))
    await asyncio.sleep(0.2)  # every refresh is in flight at Google
    await stack.ctx.offline.revoke_and_forget(gone)
    outcomes = await job
    assert stack.store.get(gone) is None  # forgotten, and it stays so
    assert all(outcomes[sub].error is None and outcomes[sub].refreshed for sub in subs if sub != gone)
    assert all(stack.store.get(sub).access_token == outcomes[sub].credentials.token for sub in subs if sub != gone)
