"""The token-store contract test kit, for the built-in backends and for plugin authors.

Every backend — built-in or third-party — proves it honours the
:class:`~tornado_signin.store.TokenStore` contract by subclassing
:class:`TokenStoreContract` in its own tests and providing ONE fixture,
``store``: a fresh, empty store, cleaned up at teardown (teardown must work
even when the test has already closed the store)::

    import pytest
    from tornado_signin.testing import TokenStoreContract
    from my_plugin import MyTokenStore

    class TestMyTokenStore(TokenStoreContract):
        @pytest.fixture
        def store(self, tmp_path):
            store = MyTokenStore(path=str(tmp_path / "db"))
            yield store
            store.close()

pytest then runs every ``test_*`` method below against it: misses, the round
trip of every field, each rule of :func:`~tornado_signin.store.merge_records`
(plus a randomised comparison against it), delete, ``records()``,
``find_by_email()`` (exact, ASCII case only), the batch forms ``get_many()``
and ``save_many()`` (each item as its one-by-one call would answer, merged in
order, a refused record its own outcome), the conditional writes
``mark_revoked()`` and ``delete_if()`` (exact compare, atomic against saves),
``check()``, ``close()``, awkward ``sub`` values, and 20 threads saving the
same user at once.

A backend shared between processes (a database, a directory) should also
prove it merges atomically across processes. Give
:meth:`TokenStoreContract.assert_process_safe` a picklable factory that builds
a store on the same storage (e.g. ``functools.partial(MyTokenStore,
path=...)``) from a test of your subclass; it saves the same user from several
``spawn``-ed processes at once and checks the outcome.

Needs pytest (``pip install 'tornado-signin[test]'``).
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import random
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from ..errors import StorageError
from ..store import MAX_SUB_LENGTH, TokenRecord, TokenStore, merge_records

__all__ = ["TokenStoreContract", "full_record", "contended_record", "assert_process_safe", "EDGE_SUBS"]

#: ``sub`` values every backend must keep apart and return unchanged.
EDGE_SUBS = (
    "108204268033311374519",
    "ünïcødé-用户-😀",
    "x" * MAX_SUB_LENGTH,
    "../../etc/passwd",
    "a/b\\c",
    "..",
    ".",
    "CaseSensitive",
    "casesensitive",
    "trailing ",
    "trailing",
    " leading",
    "quote'\"; DROP TABLE users; --",
    "%_*?[]{}$#:",
    "tab\tnew\nline",
)

#: ``sub`` values a backend may refuse (ValueError or StorageError) but must never mishandle.
INVALID_SUBS = ("", "y" * (MAX_SUB_LENGTH + 1), "z" * 5000, "nul\x00byte")

#: The fields a store must give back as saved: every field of TokenRecord (read from it, so a field it gains is
#: checked on every backend) but the two the store sets itself.
_FIELDS = tuple(f.name for f in dataclasses.fields(TokenRecord) if f.name not in ("created_at", "updated_at"))


def full_record(sub: str = "108204268033311374519", **changes: Any) -> TokenRecord:
    """Return a record with every field set (recognisable token values), with ``changes`` applied."""
    record = TokenRecord(
        sub=sub,
        email="ada@example.com",
        refresh_token="1//rt-PLAINTEXT-r1",
        refresh_token_issued_at=1_700_000_000.25,
        access_token="ya29.at-PLAINTEXT-a1",
        access_token_expiry=1_700_003_600.5,
        access_token_issued_at=1_700_000_000.25,
        scopes=("openid", "email", "https://www.googleapis.com/auth/drive.readonly"),
        revoked_at=1_600_000_000.0,
        refresh_token_expires_at=4_100_000_000.5,
        disabled_at=1_600_000_100.0,
        enabled_at=1_600_000_200.0,
        security_event="account-enabled",
        security_event_at=1_600_000_200.0,
    )
    return record.replace(**changes)


def contended_record(sub: str, order: int, *, email: str) -> TokenRecord:
    """Return save number ``order`` of a concurrency test: tokens issued at ``1000 + order``.

    Every third save carries no refresh token, so the merge must keep the
    newest one stored.
    """
    record = TokenRecord(
        sub=sub,
        email=email,
        access_token=f"at-{order}",
        access_token_issued_at=1000.0 + order,
        access_token_expiry=5000.0 + order,
        scopes=(f"scope-{order}",),
    )
    if order % 3 != 1:
        record = record.replace(refresh_token=f"rt-{order}", refresh_token_issued_at=1000.0 + order)
    return record


def _stored(store: TokenStore, sub: str) -> TokenRecord:
    """Return the stored record of ``sub``; fail the test when there is none."""
    record = store.get(sub)
    assert record is not None, f"no record stored for {sub!r}"
    return record


def _at(value: float | None) -> float:
    """Return the time ``value``; fail the test when it is unset."""
    assert value is not None, "a time the store sets is missing"
    return value


def _same_fields(actual: TokenRecord | None, expected: TokenRecord, fields: tuple[str, ...] = _FIELDS) -> None:
    assert actual is not None, f"no record stored for {expected.sub!r}"
    for name in fields:
        got, want = getattr(actual, name), getattr(expected, name)
        assert got == want, f"{name}: stored {got!r}, expected {want!r}"


def _process_worker(
    factory: Callable[[], TokenStore],
    sub: str,
    index: int,
    processes: int,
    saves: int,
    barrier: Any,
    results: Any,
) -> None:
    try:
        store = factory()
        try:
            outcome = []
            barrier.wait(timeout=60)
            for step in range(saves):
                order = step * processes + index
                record = contended_record(sub, order, email=f"p{index}@example.com")
                merged = store.save(record)
                outcome.append((order, record.refresh_token is not None, merged.refresh_token_issued_at,
                                merged.access_token_issued_at))
        finally:
            store.close()
        results.put((index, outcome, None))
    except BaseException:  # reported to the parent, which fails the test
        results.put((index, [], traceback.format_exc()))


def assert_process_safe(
    factory: Callable[[], TokenStore],
    *,
    sub: str = "process-user",
    processes: int = 3,
    saves_per_process: int = 15,
    timeout: float = 120.0,
) -> TokenRecord:
    """Save ``sub`` from ``processes`` spawned processes at once; assert no save was lost.

    ``factory`` must be picklable and build a store on the same storage in
    each process. Every process saves ``saves_per_process`` records with
    interleaved, increasing issue times (a third without a refresh token).
    Assert the final record holds the newest refresh token and the newest
    access token, and every save returned a record at least as new as what it
    saved. Return the final record.
    """
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(processes)
    results = ctx.Queue()
    workers = [
        ctx.Process(target=_process_worker, args=(factory, sub, i, processes, saves_per_process, barrier, results))
        for i in range(processes)
    ]
    for worker in workers:
        worker.start()
    reports = []
    try:
        deadline = time.monotonic() + timeout
        for _ in workers:
            reports.append(results.get(timeout=max(0.1, deadline - time.monotonic())))
    finally:
        for worker in workers:
            worker.join(timeout=10)
            if worker.is_alive():
                worker.kill()
    errors = [error for _, _, error in reports if error]
    assert not errors, "a worker process failed:\n" + "\n".join(errors)
    for _, outcome, _ in reports:
        for order, had_refresh, merged_rt_issued, merged_at_issued in outcome:
            assert merged_at_issued >= 1000.0 + order, "a save returned an older access token than it saved"
            if had_refresh:
                assert merged_rt_issued >= 1000.0 + order, "a save returned an older refresh token than it saved"

    total = processes * saves_per_process
    newest_refresh = max(o for o in range(total) if o % 3 != 1)
    newest_access = total - 1
    store = factory()
    try:
        final = store.get(sub)
    finally:
        store.close()
    assert final is not None
    assert final.refresh_token == f"rt-{newest_refresh}"
    assert final.refresh_token_issued_at == 1000.0 + newest_refresh
    assert final.access_token == f"at-{newest_access}"
    assert final.access_token_issued_at == 1000.0 + newest_access
    assert final.access_token_expiry == 5000.0 + newest_access
    assert final.scopes == (f"scope-{newest_access}",)
    return final


class TokenStoreContract:
    """Contract tests for a :class:`~tornado_signin.store.TokenStore`.

    Subclass it in a ``Test…`` class and provide a ``store`` fixture (a fresh,
    empty store; teardown cleans up, even after the test closed the store).
    """

    #: Threads used by :meth:`test_concurrent_threads_never_lose_a_save`.
    threads = 20
    #: Saves per thread in that test.
    saves_per_thread = 5

    def assert_process_safe(self, factory: Callable[[], TokenStore], **options: Any) -> TokenRecord:
        """Run :func:`assert_process_safe` (the multi-process check) with ``factory``."""
        return assert_process_safe(factory, **options)

    # -- basics ------------------------------------------------------------

    def test_get_missing_returns_none(self, store: TokenStore) -> None:
        assert store.get("no-such-user") is None

    def test_round_trip_of_every_field(self, store: TokenStore) -> None:
        record = full_record()
        before = time.time()
        saved = store.save(record)
        after = time.time()
        _same_fields(saved, record)
        _same_fields(store.get(record.sub), record)
        assert isinstance(saved.scopes, tuple)
        assert before - 1 <= _at(saved.created_at) <= after + 1
        assert saved.updated_at == saved.created_at
        assert store.get(record.sub) == saved

    def test_round_trip_of_a_minimal_record(self, store: TokenStore) -> None:
        saved = store.save(TokenRecord(sub="minimal"))
        expected = TokenRecord(sub="minimal")
        _same_fields(saved, expected)
        assert store.get("minimal") == saved
        assert saved.created_at is not None and saved.updated_at is not None

    def test_save_returns_what_get_returns(self, store: TokenStore) -> None:
        store.save(full_record())
        merged = store.save(TokenRecord(sub=full_record().sub, email="new@example.com"))
        assert store.get(merged.sub) == merged

    # -- merge rules (merge_records) ----------------------------------------

    def test_missing_refresh_token_never_replaces_a_stored_one(self, store: TokenStore) -> None:
        first = store.save(full_record())
        for incoming in (
            TokenRecord(sub=first.sub),
            TokenRecord(sub=first.sub, refresh_token=None, refresh_token_issued_at=9e9),
            TokenRecord(sub=first.sub, refresh_token="", refresh_token_issued_at=9e9),
        ):
            merged = store.save(incoming)
            assert merged.refresh_token == first.refresh_token
            assert merged.refresh_token_issued_at == first.refresh_token_issued_at
        assert _stored(store, first.sub).refresh_token == first.refresh_token

    def test_newer_refresh_token_replaces(self, store: TokenStore) -> None:
        first = store.save(full_record())
        merged = store.save(TokenRecord(sub=first.sub, refresh_token="rt-newer", refresh_token_issued_at=1_800_000_000.0))
        assert (merged.refresh_token, merged.refresh_token_issued_at) == ("rt-newer", 1_800_000_000.0)
        assert merged.access_token == first.access_token
        assert store.get(first.sub) == merged

    def test_equal_issue_time_replaces(self, store: TokenStore) -> None:
        first = store.save(full_record())
        merged = store.save(first.replace(refresh_token="rt-reencrypted", access_token="at-reencrypted"))
        assert merged.refresh_token == "rt-reencrypted"
        assert merged.access_token == "at-reencrypted"

    def test_older_refresh_token_does_not_replace(self, store: TokenStore) -> None:
        first = store.save(full_record())
        merged = store.save(TokenRecord(sub=first.sub, refresh_token="rt-older", refresh_token_issued_at=1.0))
        assert (merged.refresh_token, merged.refresh_token_issued_at) == (
            first.refresh_token,
            first.refresh_token_issued_at,
        )

    def test_refresh_token_without_issue_time(self, store: TokenStore) -> None:
        store.save(TokenRecord(sub="u", refresh_token="rt-undated"))
        merged = store.save(TokenRecord(sub="u", refresh_token="rt-undated-2"))
        assert merged.refresh_token == "rt-undated-2" and merged.refresh_token_issued_at is None
        merged = store.save(TokenRecord(sub="u", refresh_token="rt-dated", refresh_token_issued_at=5.0))
        assert (merged.refresh_token, merged.refresh_token_issued_at) == ("rt-dated", 5.0)
        merged = store.save(TokenRecord(sub="u", refresh_token="rt-undated-3"))
        assert (merged.refresh_token, merged.refresh_token_issued_at) == ("rt-dated", 5.0)

    def test_access_token_group_is_replaced_together(self, store: TokenStore) -> None:
        first = store.save(full_record())
        newer = TokenRecord(
            sub=first.sub,
            access_token="at-newer",
            access_token_expiry=1_800_003_600.0,
            access_token_issued_at=1_800_000_000.0,
            scopes=("openid",),
        )
        merged = store.save(newer)
        _same_fields(merged, first.replace(
            access_token="at-newer",
            access_token_expiry=1_800_003_600.0,
            access_token_issued_at=1_800_000_000.0,
            scopes=("openid",),
        ))
        older = newer.replace(access_token="at-older", access_token_expiry=1.0, access_token_issued_at=1.0,
                              scopes=("other",))
        assert store.save(older).access_token == "at-newer"
        _same_fields(store.get(first.sub), merged)

    def test_access_token_without_expiry_or_scopes(self, store: TokenStore) -> None:
        first = store.save(full_record())
        merged = store.save(TokenRecord(sub=first.sub, access_token="at-2", access_token_issued_at=1_800_000_000.0))
        assert merged.access_token == "at-2"
        assert merged.access_token_expiry is None
        assert merged.scopes == first.scopes, "empty incoming scopes keep the stored ones"

    def test_scopes_without_access_token_are_ignored(self, store: TokenStore) -> None:
        first = store.save(full_record())
        merged = store.save(TokenRecord(sub=first.sub, scopes=("ignored",)))
        assert merged.scopes == first.scopes
        fresh = store.save(TokenRecord(sub="new-user", scopes=("ignored",)))
        assert fresh.scopes == ()

    def test_email_is_replaced_only_when_given(self, store: TokenStore) -> None:
        first = store.save(full_record())
        assert store.save(TokenRecord(sub=first.sub)).email == first.email
        assert store.save(TokenRecord(sub=first.sub, email="")).email == first.email
        assert store.save(TokenRecord(sub=first.sub, email="grace@example.com")).email == "grace@example.com"

    def test_revoked_at_is_the_later_of_the_two(self, store: TokenStore) -> None:
        sub = "revoked-user"
        assert store.save(TokenRecord(sub=sub)).revoked_at is None
        assert store.save(TokenRecord(sub=sub, revoked_at=200.0)).revoked_at == 200.0
        assert store.save(TokenRecord(sub=sub, revoked_at=100.0)).revoked_at == 200.0
        assert store.save(TokenRecord(sub=sub)).revoked_at == 200.0
        assert store.save(TokenRecord(sub=sub, revoked_at=300.0)).revoked_at == 300.0
        assert _stored(store, sub).revoked_at == 300.0

    def test_new_record_keeps_an_incoming_created_at(self, store: TokenStore) -> None:
        saved = store.save(full_record(created_at=1_500_000_000.5))
        assert saved.created_at == 1_500_000_000.5
        assert _stored(store, saved.sub).created_at == 1_500_000_000.5

    def test_security_event_times_are_each_the_later_of_the_two(self, store: TokenStore) -> None:
        sub = "security-times"
        store.save(TokenRecord(sub=sub, disabled_at=200.0))
        assert store.save(TokenRecord(sub=sub, disabled_at=100.0, enabled_at=50.0)).disabled_at == 200.0
        merged = store.save(TokenRecord(sub=sub, enabled_at=300.0))
        assert (merged.disabled_at, merged.enabled_at) == (200.0, 300.0)
        assert not merged.signin_blocked
        assert store.save(TokenRecord(sub=sub, disabled_at=400.0)).signin_blocked
        assert _stored(store, sub).enabled_at == 300.0

    def test_last_security_event_is_the_newest(self, store: TokenStore) -> None:
        sub = "security-event"
        store.save(TokenRecord(sub=sub, security_event="sessions-revoked", security_event_at=200.0))
        older = store.save(TokenRecord(sub=sub, security_event="tokens-revoked", security_event_at=100.0))
        assert (older.security_event, older.security_event_at) == ("sessions-revoked", 200.0)
        assert store.save(TokenRecord(sub=sub)).security_event == "sessions-revoked"
        newer = store.save(TokenRecord(sub=sub, security_event="account-disabled:hijacking", security_event_at=300.0))
        assert (newer.security_event, newer.security_event_at) == ("account-disabled:hijacking", 300.0)

    def test_refresh_token_expiry_travels_with_its_refresh_token(self, store: TokenStore) -> None:
        sub = "time-limited"
        store.save(TokenRecord(sub=sub, refresh_token="rt-1", refresh_token_issued_at=100.0,
                               refresh_token_expires_at=4_000_000_000.0))
        kept = store.save(TokenRecord(sub=sub, access_token="at", access_token_issued_at=200.0))
        assert kept.refresh_token_expires_at == 4_000_000_000.0 and kept.has_usable_refresh_token
        older = store.save(TokenRecord(sub=sub, refresh_token="rt-0", refresh_token_issued_at=50.0))
        assert older.refresh_token_expires_at == 4_000_000_000.0
        unlimited = store.save(TokenRecord(sub=sub, refresh_token="rt-2", refresh_token_issued_at=300.0))
        assert unlimited.refresh_token_expires_at is None
        expired = store.save(TokenRecord(sub=sub, refresh_token="rt-3", refresh_token_issued_at=400.0,
                                         refresh_token_expires_at=1.0))
        assert expired.refresh_token_expires_at == 1.0 and not expired.has_usable_refresh_token
        assert _stored(store, sub).state == "expired"

    def test_created_at_is_kept_and_updated_at_advances(self, store: TokenStore) -> None:
        first = store.save(full_record())
        time.sleep(0.01)
        second = store.save(full_record(created_at=1.0, updated_at=1.0))
        assert second.created_at == first.created_at
        assert _at(second.updated_at) > _at(first.updated_at)
        assert _at(second.updated_at) >= _at(second.created_at)

    def test_random_saves_follow_merge_records(self, store: TokenStore) -> None:
        rng = random.Random(20240503)
        model: dict[str, TokenRecord] = {}
        subs = ("r1", "r2", "r3")
        for step in range(60):
            sub = rng.choice(subs)
            incoming = TokenRecord(
                sub=sub,
                email=rng.choice([None, "", f"e{step}@example.com"]),
                refresh_token=rng.choice([None, "", f"rt-{step}"]),
                refresh_token_issued_at=rng.choice([None, float(rng.randint(0, 8)), rng.randint(0, 8) + 0.5]),
                access_token=rng.choice([None, f"at-{step}"]),
                access_token_expiry=rng.choice([None, 100.0 + step]),
                access_token_issued_at=rng.choice([None, float(rng.randint(0, 8))]),
                scopes=rng.choice([(), ("a",), ("a", "b"), (f"s{step}",)]),
                revoked_at=rng.choice([None, None, float(rng.randint(0, 8))]),
                refresh_token_expires_at=rng.choice([None, 500.0 + step]),
                disabled_at=rng.choice([None, None, float(rng.randint(0, 8))]),
                enabled_at=rng.choice([None, None, float(rng.randint(0, 8))]),
                security_event=rng.choice([None, None, f"event-{step}"]),
                security_event_at=rng.choice([None, float(rng.randint(0, 8))]),
            )
            merged = store.save(incoming)
            expected = merge_records(model.get(sub), incoming, now=merged.updated_at)
            model[sub] = expected
            _same_fields(merged, expected, _FIELDS + ("created_at", "updated_at"))
        for sub, expected in model.items():
            assert store.get(sub) == expected

    # -- batches (get_many, save_many: the defaults loop; a backend may do them in one go) ----

    def test_get_many_answers_each_sub_as_get_does(self, store: TokenStore) -> None:
        saved = [store.save(full_record(sub=sub, email=f"{index}@example.com"))
                 for index, sub in enumerate(("b1", "b2", *EDGE_SUBS[:4]))]
        asked = ["b2", "missing", "b1", "b2", *(record.sub for record in saved[2:])]
        answers = store.get_many(asked)
        assert answers == [store.get(sub) for sub in asked]
        assert answers[:4] == [saved[1], None, saved[0], saved[1]]
        assert store.get_many([]) == []

    def test_get_many_of_subs_the_store_refuses(self, store: TokenStore) -> None:
        saved = store.save(full_record(sub="kept"))
        answers = store.get_many(["kept", *INVALID_SUBS, "kept"])
        assert len(answers) == len(INVALID_SUBS) + 2
        assert answers[0] == answers[-1] == saved
        for sub, answer in zip(INVALID_SUBS, answers[1:-1], strict=True):
            # As its get: not stored (None), or refused as that sub's own item.
            assert answer is None or isinstance(answer, (ValueError, StorageError)), f"{sub[:20]!r}: {answer!r}"

    def test_save_many_merges_each_record_in_order(self, store: TokenStore) -> None:
        store.save(full_record(sub="m1"))
        newer = full_record(sub="m1", refresh_token="rt-m1-newer", refresh_token_issued_at=1_800_000_000.0,
                            access_token="at-m1-newer", access_token_issued_at=1_800_000_000.0, email=None)
        older = TokenRecord(sub="m1", refresh_token="rt-m1-older", refresh_token_issued_at=1_700_000_000.0,
                            access_token="at-m1-older", access_token_issued_at=1_700_000_000.0)
        fresh = full_record(sub="m2", email="m2@example.com")
        incoming = [newer, fresh, older, TokenRecord(sub="m2", email="m2-new@example.com")]
        model: dict[str, TokenRecord | None] = {"m1": store.get("m1"), "m2": None}
        answers = store.save_many(incoming)
        assert len(answers) == len(incoming)
        for record, answer in zip(incoming, answers, strict=True):
            assert isinstance(answer, TokenRecord), f"save_many failed for {record.sub!r}: {answer!r}"
            expected = merge_records(model[record.sub], record, now=answer.updated_at)
            _same_fields(answer, expected)
            model[record.sub] = expected
        # The older save after the newer one left the newer tokens: each merge saw the one before it.
        final = _stored(store, "m1")
        assert (final.refresh_token, final.access_token) == ("rt-m1-newer", "at-m1-newer")
        assert final.email == full_record().email
        assert _stored(store, "m2").email == "m2-new@example.com"
        assert answers[-1] == store.get("m2") and answers[2] == final
        assert store.save_many([]) == []

    def test_save_many_of_distinct_subs_merges_each_with_its_stored_record(self, store: TokenStore) -> None:
        # Distinct subs may go to the database together (the sql store's one execution): each record
        # is still merged with its own stored row, as its save would merge it.
        store.save(full_record(sub="d1", refresh_token="rt-d1-stored", refresh_token_issued_at=1_800_000_000.0,
                               access_token="at-d1-stored", access_token_issued_at=1_800_000_000.0))
        store.save(full_record(sub="d2", refresh_token="rt-d2-stored", refresh_token_issued_at=1_700_000_000.0,
                               access_token="at-d2-stored", access_token_issued_at=1_700_000_000.0))
        incoming = [
            TokenRecord(sub="d1", refresh_token="rt-d1-older", refresh_token_issued_at=1_750_000_000.0,
                        access_token="at-d1-older", access_token_issued_at=1_750_000_000.0),
            TokenRecord(sub="d2", refresh_token="rt-d2-newer", refresh_token_issued_at=1_750_000_000.0,
                        access_token="at-d2-newer", access_token_issued_at=1_750_000_000.0, email=None),
            full_record(sub="d3", email="d3@example.com"),
        ]
        model = {record.sub: store.get(record.sub) for record in incoming}
        answers = store.save_many(incoming)
        for record, answer in zip(incoming, answers, strict=True):
            assert isinstance(answer, TokenRecord), f"save_many failed for {record.sub!r}: {answer!r}"
            _same_fields(answer, merge_records(model[record.sub], record, now=answer.updated_at))
            assert answer == store.get(record.sub)
        first, second = _stored(store, "d1"), _stored(store, "d2")
        assert (first.refresh_token, first.access_token) == ("rt-d1-stored", "at-d1-stored")  # the older lost
        assert (second.refresh_token, second.access_token) == ("rt-d2-newer", "at-d2-newer")  # the newer won
        assert second.email == full_record().email  # an absent email keeps the stored one

    def test_save_many_a_refused_record_is_its_own_outcome(self, store: TokenStore) -> None:
        incoming = [full_record(sub="ok-1"), *(TokenRecord(sub=sub, email="x@example.com") for sub in INVALID_SUBS),
                    full_record(sub="ok-2", email="ok2@example.com")]
        answers = store.save_many(incoming)
        assert len(answers) == len(incoming)
        for record, answer in zip(incoming, answers, strict=True):
            if record.sub.startswith("ok-"):
                assert isinstance(answer, TokenRecord), f"a good record failed with its batch: {answer!r}"
                assert answer == store.get(record.sub) and answer.email == record.email
            elif isinstance(answer, TokenRecord):  # stored exactly, as its save would
                assert answer.sub == record.sub
            else:
                assert isinstance(answer, (ValueError, StorageError)), f"{record.sub[:20]!r}: {answer!r}"
                assert store.get(record.sub) is None

    def test_save_many_of_many_records(self, store: TokenStore) -> None:
        incoming = [contended_record(f"many-{i:04d}", i, email=f"m{i}@example.com") for i in range(120)]
        answers = store.save_many(incoming)
        assert [a.sub if isinstance(a, TokenRecord) else a for a in answers] == [r.sub for r in incoming]
        got = store.get_many([r.sub for r in incoming])
        assert got == answers
        assert all(_at(r.access_token_issued_at) == 1000.0 + i for i, r in enumerate(got) if isinstance(r, TokenRecord))

    # -- delete, records, check, close -----------------------------------------

    def test_delete(self, store: TokenStore) -> None:
        store.save(full_record(sub="keep"))
        store.save(full_record(sub="gone"))
        assert store.delete("gone") is True
        assert store.get("gone") is None
        assert store.delete("gone") is False
        assert store.delete("never-stored") is False
        assert store.get("keep") is not None

    def test_save_after_delete_starts_afresh(self, store: TokenStore) -> None:
        store.save(full_record(sub="again"))
        store.delete("again")
        fresh = store.save(TokenRecord(sub="again", email="x@example.com"))
        assert fresh.refresh_token is None and fresh.revoked_at is None and fresh.email == "x@example.com"

    def test_records_yields_every_record(self, store: TokenStore) -> None:
        assert list(store.records()) == []
        saved = {store.save(full_record(sub=f"user-{i:03d}", email=f"u{i}@example.com")).sub for i in range(30)}
        listed = list(store.records())
        assert all(isinstance(r, TokenRecord) for r in listed)
        assert {r.sub for r in listed} == saved
        assert len(listed) == len(saved)
        for record in listed:
            assert record == store.get(record.sub)

    def test_check_passes(self, store: TokenStore) -> None:
        store.check()
        store.save(full_record())
        store.check()

    def test_close_is_idempotent(self, store: TokenStore) -> None:
        store.save(full_record())
        store.close()
        store.close()

    # -- conditional writes (an outcome applies only to the token it was computed for) ----

    def test_mark_revoked_only_for_the_refresh_token_it_names(self, store: TokenStore) -> None:
        first = store.save(full_record(revoked_at=None))
        assert store.mark_revoked(first.sub, 1_800_000_000.0, if_refresh_token="1//another") is False
        assert store.get(first.sub) == first, "a mark for another refresh token changed the record"
        assert store.mark_revoked(first.sub, 1_800_000_000.0, if_refresh_token=first.refresh_token) is True
        marked = _stored(store, first.sub)
        assert marked.revoked_at == 1_800_000_000.0 and _at(marked.updated_at) >= _at(first.updated_at)
        _same_fields(marked, first.replace(revoked_at=1_800_000_000.0))
        assert not marked.has_usable_refresh_token

    def test_mark_revoked_compares_exactly(self, store: TokenStore) -> None:
        first = store.save(full_record(refresh_token="1//Rt-Case-Sensitive", revoked_at=None))
        for variant in ("1//rt-case-sensitive", "1//RT-CASE-SENSITIVE", "1//Rt-Case-Sensitive ", "1//Rt-Case",
                        "%", "", None):
            assert store.mark_revoked(first.sub, 9e9, if_refresh_token=variant) is False, repr(variant)
            assert store.delete_if(first.sub, if_refresh_token=variant) is False, repr(variant)
        assert store.get(first.sub) == first

    def test_mark_revoked_keeps_the_later_mark(self, store: TokenStore) -> None:
        first = store.save(full_record(revoked_at=500.0))
        assert store.mark_revoked(first.sub, 300.0, if_refresh_token=first.refresh_token) is True
        assert _stored(store, first.sub).revoked_at == 500.0
        assert store.mark_revoked(first.sub, 700.0, if_refresh_token=first.refresh_token) is True
        assert _stored(store, first.sub).revoked_at == 700.0

    def test_mark_revoked_of_a_record_without_refresh_token(self, store: TokenStore) -> None:
        bare = store.save(TokenRecord(sub="bare", access_token="at", access_token_issued_at=1.0))
        assert store.mark_revoked("bare", 2.0, if_refresh_token="1//rt") is False
        assert store.mark_revoked("bare", 2.0, if_refresh_token=None) is True
        assert _stored(store, "bare").revoked_at == 2.0 and _stored(store, "bare").access_token == bare.access_token
        with_token = store.save(full_record(sub="with-token"))
        assert store.mark_revoked(with_token.sub, 2.0, if_refresh_token=None) is False

    def test_conditional_writes_of_a_missing_record_create_nothing(self, store: TokenStore) -> None:
        for token in ("1//rt", None):
            assert store.mark_revoked("nobody", 1.0, if_refresh_token=token) is False
            assert store.delete_if("nobody", if_refresh_token=token) is False
        assert store.get("nobody") is None and list(store.records()) == []

    def test_delete_if_only_for_the_refresh_token_it_names(self, store: TokenStore) -> None:
        first = store.save(full_record())
        newer = store.save(TokenRecord(sub=first.sub, refresh_token="1//newer", refresh_token_issued_at=2e9))
        assert store.delete_if(first.sub, if_refresh_token=first.refresh_token) is False
        assert store.get(first.sub) == newer
        assert store.delete_if(first.sub, if_refresh_token="1//newer") is True
        assert store.get(first.sub) is None
        store.save(TokenRecord(sub="bare"))
        assert store.delete_if("bare", if_refresh_token=None) is True and store.get("bare") is None

    def test_delete_if_racing_a_newer_save_never_loses_it(self, store: TokenStore) -> None:
        """Each round: one thread deletes "if rt-old", another saves rt-new. Whatever the order, rt-new survives."""
        rng = random.Random(4)
        errors: list[BaseException] = []

        def delete(sub: str, barrier: threading.Barrier, pause: float) -> None:
            try:
                barrier.wait(timeout=30)
                time.sleep(pause)
                store.delete_if(sub, if_refresh_token="rt-old")
            except BaseException as exc:  # reported below
                errors.append(exc)

        def save(sub: str, barrier: threading.Barrier, pause: float) -> None:
            try:
                barrier.wait(timeout=30)
                time.sleep(pause)
                store.save(TokenRecord(sub=sub, refresh_token="rt-new", refresh_token_issued_at=2.0))
            except BaseException as exc:  # reported below
                errors.append(exc)

        for round_ in range(40):
            sub = f"race-{round_}"
            store.save(TokenRecord(sub=sub, refresh_token="rt-old", refresh_token_issued_at=1.0))
            barrier = threading.Barrier(2)
            workers = [threading.Thread(target=work, args=(sub, barrier, rng.uniform(0, 0.003)))
                       for work in (delete, save)]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join(timeout=60)
            assert not errors, errors
            final = store.get(sub)
            assert final is not None and final.refresh_token == "rt-new", f"round {round_}: the newer save was lost"

    # -- lookup by email ------------------------------------------------------

    def test_find_by_email_ignores_ascii_case_only(self, store: TokenStore) -> None:
        store.save(full_record(sub="mixed", email="Ada.Lovelace@Example.com"))
        store.save(full_record(sub="upper", email="ADA.LOVELACE@EXAMPLE.COM"))
        store.save(full_record(sub="other", email="grace@example.com"))
        store.save(full_record(sub="longer", email="ada.lovelace@example.com.evil"))
        store.save(full_record(sub="prefix", email="xada.lovelace@example.com"))
        store.save(TokenRecord(sub="no-email"))
        found = store.find_by_email("ada.lovelace@example.com")
        assert sorted(r.sub for r in found) == ["mixed", "upper"]
        for record in found:
            assert record == store.get(record.sub), "find_by_email must return what get returns"
        assert [r.sub for r in store.find_by_email("GRACE@example.COM")] == ["other"]
        assert store.find_by_email("nobody@example.com") == []

    def test_find_by_email_is_exact_not_a_pattern(self, store: TokenStore) -> None:
        store.save(full_record(sub="ada", email="ada@example.com"))
        store.save(full_record(sub="pct", email="%@example.com"))
        for pattern in ("%@example.com", "_da@example.com", "ada@example.%", "*@example.com", "ada@example.co",
                        "ada@example.com ", " ada@example.com", "ada@example.com\x00", ".*", "%"):
            found = sorted(r.sub for r in store.find_by_email(pattern))
            assert found == (["pct"] if pattern == "%@example.com" else []), pattern

    def test_find_by_email_folds_no_unicode_case(self, store: TokenStore) -> None:
        """Only ASCII letters fold: the Kelvin sign (which Python lower-cases to k) and Ä stay themselves."""
        store.save(full_record(sub="kelvin", email="\u212aim@example.com"))
        store.save(full_record(sub="umlaut", email="\u00c4da@example.com"))
        store.save(full_record(sub="dotless", email="\u0130nci@example.com"))
        assert store.find_by_email("kim@example.com") == []
        assert store.find_by_email("\u00e4da@example.com") == []
        assert store.find_by_email("inci@example.com") == []
        assert [r.sub for r in store.find_by_email("\u212aIM@EXAMPLE.COM")] == ["kelvin"]
        assert [r.sub for r in store.find_by_email("\u00c4DA@example.com")] == ["umlaut"]

    def test_find_by_email_follows_changes_and_deletes(self, store: TokenStore) -> None:
        store.save(full_record(sub="mover", email="old@example.com"))
        store.save(TokenRecord(sub="mover", email="new@example.com"))
        assert store.find_by_email("old@example.com") == []
        assert [r.sub for r in store.find_by_email("new@example.com")] == ["mover"]
        store.delete("mover")
        assert store.find_by_email("new@example.com") == []

    # -- sub values ----------------------------------------------------------

    def test_edge_subs_round_trip_and_stay_apart(self, store: TokenStore) -> None:
        for index, sub in enumerate(EDGE_SUBS):
            store.save(full_record(sub=sub, email=f"edge{index}@example.com"))
        for index, sub in enumerate(EDGE_SUBS):
            record = store.get(sub)
            assert record is not None and record.sub == sub, f"lost {sub!r}"
            assert record.email == f"edge{index}@example.com", f"{sub!r} collided with another sub"
        assert sorted(r.sub for r in store.records()) == sorted(EDGE_SUBS)
        assert store.delete(EDGE_SUBS[1]) is True
        assert store.get(EDGE_SUBS[1]) is None

    def test_invalid_subs_are_refused_cleanly_or_stored_exactly(self, store: TokenStore) -> None:
        for sub in INVALID_SUBS:
            try:
                store.save(full_record(sub=sub))
            except (ValueError, StorageError):
                assert store.get(sub) is None
                assert store.delete(sub) is False
            else:
                assert _stored(store, sub).sub == sub
        store.check()

    # -- concurrency -----------------------------------------------------------

    def test_concurrent_threads_never_lose_a_save(self, store: TokenStore) -> None:
        sub = "concurrent-user"
        threads, per_thread = self.threads, self.saves_per_thread
        total = threads * per_thread
        barrier = threading.Barrier(threads)
        errors: list[BaseException] = []
        returned: list[tuple[TokenRecord, TokenRecord]] = []
        lock = threading.Lock()

        def incoming(order: int) -> TokenRecord:
            return contended_record(sub, order, email=f"t{order}@example.com")

        def work(index: int) -> None:
            try:
                barrier.wait(timeout=30)
                for step in range(per_thread):
                    record = incoming(step * threads + index)
                    merged = store.save(record)
                    with lock:
                        returned.append((record, merged))
            except BaseException as exc:
                with lock:
                    errors.append(exc)

        workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=120)
        assert not any(w.is_alive() for w in workers), "a save hung"
        assert not errors, f"{len(errors)} saves failed, first: {errors[0]!r}"
        assert len(returned) == total
        for record, merged in returned:
            assert _at(merged.access_token_issued_at) >= _at(record.access_token_issued_at)
            if record.refresh_token:
                assert _at(merged.refresh_token_issued_at) >= _at(record.refresh_token_issued_at)
            assert merged.refresh_token is None or merged.refresh_token.startswith("rt-")
        newest_refresh = max(o for o in range(total) if o % 3 != 1)
        final = _stored(store, sub)
        assert final.refresh_token == f"rt-{newest_refresh}"
        assert final.refresh_token_issued_at == 1000.0 + newest_refresh
        assert final.access_token == f"at-{total - 1}"
        assert final.access_token_expiry == 5000.0 + total - 1
        assert final.scopes == (f"scope-{total - 1}",)
        assert [r.sub for r in store.records()] == [sub]
