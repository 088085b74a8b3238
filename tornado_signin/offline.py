"""Offline access: valid Google credentials for a stored user, with the user gone.

This is why the flow exists (the seed: "to use Google services on behalf of a
user when the user is offline"). :class:`OfflineAccess` returns the stored
access token while it is valid, otherwise refreshes it with the stored
refresh token at the configured token endpoint and persists the result
through the store's merge (a rotated refresh token included).

* Concurrent requests for one user cause one refresh per process (single
  flight). Across processes two refreshes may race; the store's merge keeps
  the newest tokens, so neither loses a refresh token.
* ``invalid_grant`` (revoked, expired, unused for months) marks the record
  revoked, keeps its audit fields, stops retrying and raises
  ConsentRequiredError: the user's next sign-in goes through consent.
* Retryable failures (5xx, timeouts) are retried with backoff, then raised
  as GoogleUnavailableError.

* :meth:`OfflineAccess.credentials_for_all` is the bulk job: every stored
  user (or the ones given) on one IOLoop, at most ``concurrency`` refreshes
  in flight, each user's outcome yielded as it completes, one user's failure
  never stopping the others.

For scripts, :func:`tornado_signin.scripts.get_credentials` and
:func:`tornado_signin.scripts.authorized_session` wrap the same code path
without an IOLoop of their own.
"""

from __future__ import annotations

import asyncio
import datetime
import itertools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from google.oauth2.credentials import Credentials

from .errors import (
    ClientConfigError,
    ConsentRequiredError,
    GrantRevokedError,
    GoogleUnavailableError,
    InvalidGrantError,
    MissingScopeError,
    SigninError,
    UnknownUserError,
)
from .google import GoogleClient, checked_scopes, normalize_scopes
from .grants import GrantGuard
from .hooks import Revoked, SigninHooks
from .metrics import Metrics
from .signin import record_from_tokens
from .store import TokenRecord, TokenStore
from .workers import WorkerPool

__all__ = ["OfflineAccess", "OfflineOutcome", "REFRESH_MARGIN"]

log = logging.getLogger(__name__)

#: What UnknownUserError says when no record has that sub (or, for a lookup, that verified email).
_NO_SUCH_USER = "no stored user with that sub or verified email: give the user's sub"

#: An access token is refreshed when it has less than this many seconds left.
#: It exceeds google-auth's own threshold (225 s), so the Credentials handed
#: out are ``valid`` in google-auth's eyes too.
REFRESH_MARGIN = 300.0
REFRESH_RETRY_DELAYS = (0.2, 1.0, 3.0)
#: Records read per worker call while :meth:`OfflineAccess.credentials_for_all` walks the store.
BULK_PAGE = 256

T = TypeVar("T")
#: How a blocking store call leaves the IOLoop (the worker pool's ``run``, or a bounded wrapper of it).
Runner = Callable[..., Awaitable[Any]]


@dataclass(frozen=True)
class OfflineOutcome:
    """One user's outcome in :meth:`OfflineAccess.credentials_for_all`.

    Exactly one of ``credentials`` and ``error`` is set. ``user`` is the
    stored ``sub`` when the user was found, else what the caller passed;
    ``refreshed`` says whether a refresh (persisted through the store's
    merge) was needed.
    """

    user: str
    credentials: Credentials | None = None
    error: SigninError | None = None
    refreshed: bool = False


def _valid_for(record: TokenRecord, min_valid: float) -> bool:
    """Return True when ``record``'s stored access token is valid for ``min_valid`` seconds more."""
    return bool(record.access_token) and (record.access_token_expiry or 0) - time.time() > min_valid


def _require_active(record: TokenRecord) -> None:
    """Raise ConsentRequiredError unless ``record`` holds a usable refresh token (its state is ``active``)."""
    if record.has_usable_refresh_token:
        return
    # The record's own state says why (a time-limited grant that ended after an older revocation is "expired").
    if record.state == "expired":
        raise ConsentRequiredError("the user's time-limited access has ended: the user must sign in with consent again")
    if record.revoked_at is not None:
        raise ConsentRequiredError("the user's grant is revoked: the user must sign in with consent again")
    raise ConsentRequiredError("no refresh token is stored for the user: the user must sign in with consent again")


class OfflineAccess:
    """Credentials, refresh and revocation for stored users of one client."""

    def __init__(self, store: TokenStore, google: GoogleClient, workers: WorkerPool,
                 metrics: Metrics | None = None, *, retry_delays: Iterable[float] = REFRESH_RETRY_DELAYS,
                 grants: GrantGuard | None = None, hooks: SigninHooks | None = None) -> None:
        """``hooks``: the host app's (``on_revoked`` when a refresh finds the grant revoked); none by default."""
        self.hooks = hooks or SigninHooks()
        #: Serialises each user's grant changes with the sign-ins (see :mod:`tornado_signin.grants`).
        self.grants = grants or GrantGuard(None)
        self.store = store
        self.google = google
        self.workers = workers
        self.metrics = metrics or Metrics()
        self.retry_delays = tuple(retry_delays)
        self._refreshing: dict[str, asyncio.Future[TokenRecord]] = {}

    # -- lookup ------------------------------------------------------------------------

    def _find_blocking(self, user: str) -> TokenRecord:
        record = self.store.get(user)
        if record is not None:
            return record
        if "@" in user:
            # Only verified emails are stored; one that several records share
            # (an address re-assigned, an account re-created) names nobody.
            matches = self.store.find_by_email(user)
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                raise UnknownUserError(f"{len(matches)} users share that email: give the user's sub instead")
        raise UnknownUserError(_NO_SUCH_USER)

    async def find(self, user: str) -> TokenRecord:
        """Return the record of ``user``: a sub, or an email that exactly one record holds (compared ignoring
        ASCII case; only verified emails are stored). Raise UnknownUserError otherwise."""
        return await self.workers.run(self._find_blocking, user)

    # -- credentials -------------------------------------------------------------------

    async def fresh_record(self, user: str, *, min_valid: float = REFRESH_MARGIN, force: bool = False) -> TokenRecord:
        """Return the record of ``user`` with an access token valid for ``min_valid`` seconds more.

        Raise UnknownUserError, ConsentRequiredError (the record is not active:
        no usable refresh token, a revoked grant — even with an unexpired
        access token stored — or Google answered invalid_grant),
        GoogleUnavailableError.
        """
        return await self._fresh(await self.find(user), min_valid=min_valid, force=force)

    async def _fresh(self, record: TokenRecord, *, min_valid: float = REFRESH_MARGIN, force: bool = False,
                     run: Runner | None = None) -> TokenRecord:
        """:meth:`fresh_record` for a record already read; blocking calls go through ``run``."""
        run = run or self.workers.run
        # A stored access token is handed out only while the record is active:
        # once the grant is revoked (or was never offline), Google has most
        # likely ended that token too, and the caller must learn it now.
        _require_active(record)
        if not force and _valid_for(record, min_valid):
            return record
        pending = self._refreshing.get(record.sub)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[TokenRecord] = asyncio.get_running_loop().create_future()
        self._refreshing[record.sub] = future
        try:
            # Under the user's grant lease: a disconnect (or a sign-in's revoke)
            # waits for this refresh, so a late answer cannot re-create a record
            # forgotten meanwhile, nor land on a grant ended meanwhile.
            try:
                async with self.grants.hold(record.sub):
                    current = await run(self.store.get, record.sub)
                    if current is None:
                        raise UnknownUserError(_NO_SUCH_USER)
                    _require_active(current)
                    result = await self._refresh(current, run)
            except GrantRevokedError:
                # Told once the lease is released: a slow hook must not hold up the user's sign-ins.
                await self.hooks.revoked(Revoked(sub=record.sub, reason="invalid_grant", grant_revoked=True))
                raise
        except BaseException as exc:
            future.set_exception(exc)
            # Mark the exception retrieved: waiters, if any, get it through shield.
            future.exception()
            raise
        else:
            future.set_result(result)
            return result
        finally:
            del self._refreshing[record.sub]

    async def _refresh(self, record: TokenRecord, run: Runner) -> TokenRecord:
        assert record.refresh_token is not None
        for attempt, delay in enumerate((*self.retry_delays, None)):
            sent_at = time.time()
            try:
                tokens = await self.google.refresh(record.refresh_token)
            except InvalidGrantError as exc:
                self.metrics.inc("signin_refresh_total", outcome="invalid_grant")
                # The answer is about this refresh token only: if a newer one was
                # stored while the refresh was in flight, it stays usable. And the
                # mark is dated when the request left: a token Google issued after
                # that (a new consent waiting to be stored) outranks it.
                marked = await run(self.store.mark_revoked, record.sub, sent_at,
                                   if_refresh_token=record.refresh_token)
                if marked:
                    log.warning("refresh token rejected (invalid_grant); the grant is marked revoked")
                else:
                    log.warning("refresh token rejected (invalid_grant); a newer one is stored meanwhile: kept")
                error = GrantRevokedError if marked else ConsentRequiredError
                raise error("the refresh token was revoked or expired: the user must sign in again") from exc
            except GoogleUnavailableError as exc:
                self.metrics.inc("signin_refresh_total", outcome="retryable_error")
                if delay is None:
                    raise
                log.warning("refresh failed (attempt %d), retrying: %s", attempt + 1, exc)
                await asyncio.sleep(delay)
                continue
            self.metrics.inc("signin_refresh_total", outcome="refreshed")
            # Google may narrow or widen what it reports; keep the granted set.
            incoming = record_from_tokens(record.sub, None, tokens)
            if not tokens.scopes:
                incoming = incoming.replace(scopes=record.scopes)
            return await run(self.store.save, incoming)
        raise AssertionError("unreachable")

    def _credentials(self, record: TokenRecord) -> Credentials:
        google = self.google.google
        expiry = (datetime.datetime.fromtimestamp(record.access_token_expiry, datetime.timezone.utc).replace(tzinfo=None)
                  if record.access_token_expiry else None)
        return Credentials(
            token=record.access_token,
            refresh_token=record.refresh_token,
            token_uri=google.endpoints.token_uri,
            client_id=google.client_id,
            client_secret=google.client_secret,
            scopes=list(record.scopes) or None,
            expiry=expiry,
        )

    async def credentials(self, user: str, *, required_scopes: Iterable[str] = (),
                          min_valid: float = REFRESH_MARGIN) -> Credentials:
        """Return google-auth Credentials for ``user`` valid now (refreshed and persisted if needed).

        Raise MissingScopeError when ``required_scopes`` (short names or URLs)
        were not all granted, ValueError for a malformed one (whitespace, controls:
        see :func:`~tornado_signin.google.checked_scopes`), and as :meth:`fresh_record`.

        Example (in a handler of the app; never blocks the IOLoop)::

            offline = self.settings["signin"].offline
            creds = await offline.credentials(sub, required_scopes=["drive.appdata"])
        """
        wanted = checked_scopes(required_scopes)
        record = await self.find(user)
        missing = wanted - normalize_scopes(record.scopes)
        if missing:
            raise MissingScopeError(missing)
        # The record just read serves the freshness check (one store read less than fresh_record).
        return self._credentials(await self._fresh(record, min_valid=min_valid))

    async def call_userinfo(self, user: str) -> dict[str, Any]:
        """Call Google's userinfo API for ``user`` with stored credentials (the offline path end to end)."""
        record = await self.fresh_record(user)
        try:
            return await self.google.userinfo(record.access_token or "")
        except InvalidGrantError:
            # The access token died early (revoked at Google): refresh once.
            record = await self.fresh_record(user, force=True)
            return await self.google.userinfo(record.access_token or "")

    # -- the bulk job -------------------------------------------------------------------

    async def credentials_for_all(self, users: Iterable[str] | None = None, *, concurrency: int = 64,
                                  required_scopes: Iterable[str] = (),
                                  min_valid: float = REFRESH_MARGIN) -> AsyncIterator[OfflineOutcome]:
        """Yield an :class:`OfflineOutcome` for each of ``users`` (subs or emails; None: every stored user),
        in the order they complete: valid Credentials, refreshed and persisted as :meth:`credentials` does, or
        the user's error.

        At most ``concurrency`` users are in progress at once, and the job's
        blocking store calls take at most half of the worker pool's threads,
        so a job run inside a server leaves room for its sign-ins; they go to
        the store in batches (the re-reads through ``get_many``, the saves
        through ``save_many``: one query, one transaction on the sql store). One user's
        ConsentRequiredError (revoked, expired, never offline),
        MissingScopeError, UnknownUserError, GoogleUnavailableError (after
        the retries), StorageError or OverloadedError is that user's outcome
        and the job goes on. Raise ClientConfigError (Google refused this
        client: every user would fail), StorageError when the store cannot be
        listed, and ValueError for ``concurrency`` < 1 or a malformed scope.
        With ``users`` None the store is read page by page (each record once,
        and again under its grant lease only when it needs a refresh); a
        record's access token valid for ``min_valid`` seconds more is handed
        out without a refresh. Leaving the loop early cancels the users in
        progress.

        Example (a nightly job: every user's Drive files, 64 refreshes in flight)::

            from tornado_signin.config import load_config
            from tornado_signin.scripts import run_offline

            async def job(offline):
                done = failed = 0
                async for outcome in offline.credentials_for_all(concurrency=64,
                                                                 required_scopes=["drive.readonly"]):
                    if outcome.error is not None:
                        failed += 1  # the user must sign in again (or Google was down)
                    else:
                        done += 1
                        sync_drive(outcome.user, outcome.credentials)  # your code
                    if (done + failed) % 1000 == 0:
                        print(f"{done} users done, {failed} failed")
                return done, failed

            done, failed = run_offline(load_config("config.yaml"), job)
        """
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        wanted = checked_scopes(required_scopes)
        store = self.store
        # At most half of the pool's threads, so a job run inside a server leaves the rest to its sign-ins.
        batcher = _Batcher(self.workers, max(1, self.workers.threads // 2),
                           batched={store.get: store.get_many, store.save: store.save_many})
        run = batcher.run

        gate = asyncio.Semaphore(concurrency)
        done: asyncio.Queue[OfflineOutcome | BaseException] = asyncio.Queue()
        tasks: set[asyncio.Task[None]] = set()

        async def one(user: str, record: TokenRecord | None) -> None:
            try:
                done.put_nowait(await self._bulk_one(user, record, wanted, min_valid, run))
            except Exception as exc:  # a bug or ClientConfigError: handed to the loop below, which raises it
                done.put_nowait(exc)
            finally:
                gate.release()

        started = 0
        try:
            async for user, record in self._bulk_source(users, run):
                await gate.acquire()
                task = asyncio.create_task(one(user, record))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                started += 1
                while not done.empty():
                    started -= 1
                    yield _outcome(done.get_nowait())
            while started:
                started -= 1
                yield _outcome(await done.get())
        finally:
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            await batcher.close()

    async def _bulk_source(self, users: Iterable[str] | None,
                           run: Runner) -> AsyncIterator[tuple[str, TokenRecord | None]]:
        """Yield (user, its record read from the store, or None: look it up) for the bulk job."""
        if users is not None:
            for user in users:
                yield user, None
            return
        records: Iterator[TokenRecord] = iter(self.store.records())
        while True:
            # The store's iterator is resumed by one worker at a time, page by page.
            page = await run(lambda: list(itertools.islice(records, BULK_PAGE)))
            for record in page:
                yield record.sub, record
            if len(page) < BULK_PAGE:
                return

    async def _bulk_one(self, user: str, record: TokenRecord | None, wanted: frozenset[str], min_valid: float,
                        run: Runner) -> OfflineOutcome:
        try:
            if record is None:
                record = await run(self._find_blocking, user)
            user = record.sub
            missing = wanted - normalize_scopes(record.scopes)
            if missing:
                raise MissingScopeError(missing)
            refreshed = not _valid_for(record, min_valid)
            fresh = await self._fresh(record, min_valid=min_valid, run=run)
        except ClientConfigError:
            raise
        except SigninError as exc:
            return OfflineOutcome(user, error=exc)
        return OfflineOutcome(user, credentials=self._credentials(fresh), refreshed=refreshed)

    # -- revocation --------------------------------------------------------------------

    async def revoke_and_forget(self, user: str) -> bool:
        """Revoke ``user``'s grant at Google, then delete the record if it still holds the revoked refresh token.

        Runs under the user's grant lease. Return True when Google revoked it,
        False when Google already considered it invalid (which counts as
        revoked). A record that a newer sign-in rewrote meanwhile is kept.
        Raise GoogleUnavailableError (retried with backoff first; the record is
        kept so the revoke can be tried again) and UnknownUserError.
        """
        sub = (await self.find(user)).sub
        # Under the user's grant lease: no sign-in of this user stores a refresh
        # token between our read and our delete, and one whose exchange crossed
        # this revoke finds the note and tries its token before it answers.
        async with self.grants.hold(sub):
            record = await self.workers.run(self.store.get, sub)
            if record is None:
                raise UnknownUserError(_NO_SUCH_USER)
            token = record.refresh_token or record.access_token
            revoked = False
            if token:
                try:
                    revoked = await self._revoke_with_retry(token)
                finally:
                    await self.grants.note_revoked(sub)
            # Only the record this revoke was computed for: one that a newer
            # sign-in wrote meanwhile (another refresh token) is kept.
            deleted = await self.workers.run(self.store.delete_if, sub, if_refresh_token=record.refresh_token)
            if not deleted:
                log.info("revoked, but the record changed meanwhile (a newer sign-in): kept")
        return revoked

    async def _revoke_with_retry(self, token: str) -> bool:
        for attempt, delay in enumerate((*self.retry_delays, None)):
            try:
                return await self.google.revoke(token)
            except GoogleUnavailableError as exc:
                if delay is None:
                    raise
                log.warning("revoke failed (attempt %d), retrying: %s", attempt + 1, exc)
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")


class _Batcher:
    """The bulk job's blocking store calls, gathered into few worker calls.

    Hand-written because measurements earned it (job CPU per refreshed user,
    ``bench`` ``offline_refresh``, medians of alternated runs):

    * one worker-pool hop per store call (two per refreshed user) cost more
      CPU than the calls themselves (thread wake-ups, futures, the GIL handed
      back and forth): the calls of one IOLoop turn in one worker call,
      0.77 -> 0.59 ms;
    * the calls of a function in ``batched`` (the store's ``get`` and
      ``save``) go, together, to its batch form (``get_many``,
      ``save_many``: one query, one transaction on the sql store), which
      answers per item; and while ``slots`` batches run, new calls wait and
      go together in the next one (batches of ~30 calls instead of ~18):
      0.43 -> 0.35 ms on a loaded machine, 0.40 -> 0.27-0.29 ms on a quiet one.

    Each call gets its own result or exception. Gathering changes no
    outcome: the calls waiting together come from different users in flight
    at once (each user's own calls follow one another, each awaiting the
    last), so none waits for another and any order of them is one they could
    have run in. The merge, the grant lease around each user's re-read and
    save, and every rule of a single call stay as they are.
    """

    def __init__(self, workers: WorkerPool, slots: int, most: int = 64,
                 batched: dict[Callable[..., Any], Callable[[list[Any]], list[Any]]] | None = None) -> None:
        self.workers = workers
        self.slots = slots
        self.most = most
        self.batched = batched or {}
        self.pending: list[_Call] = []
        self.batches: set[asyncio.Task[None]] = set()
        self._flushing = False

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Return ``fn(*args, **kwargs)`` run in a worker thread with the other calls of this turn."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        if not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().call_soon(self._flush)
        self.pending.append((fn, args, kwargs, future))
        return await future

    def _flush(self) -> None:
        self._flushing = False
        # While every slot is busy, calls wait here and go together in the next batch: bigger batches, fewer
        # hops, fewer queries (the store's batch forms cost less per item the more items they get).
        while self.pending and len(self.batches) < self.slots:
            calls, self.pending = self.pending[:self.most], self.pending[self.most:]
            task = asyncio.ensure_future(self._run(calls))
            self.batches.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.batches.discard(task)
        self._flush()  # the calls that waited for a slot

    async def close(self) -> None:
        """Drop the calls not yet handed to a worker (their callers were cancelled) and wait for the batches
        running: a store call in a worker thread cannot be stopped, so the job returns once it is done, and no
        batch is left pending on the loop."""
        self.slots = 0  # nothing more starts
        for _, _, _, future in self.pending:
            future.cancel()
        self.pending.clear()
        while self.batches:
            await asyncio.gather(*self.batches, return_exceptions=True)

    async def _run(self, calls: list[_Call]) -> None:
        try:
            results = await self.workers.run(_call_all, [(fn, args, kwargs) for fn, args, kwargs, _ in calls],
                                             self.batched)
        except BaseException as exc:  # the pool refused or the job is cancelled: every call of the batch fails so
            results = [(False, exc)] * len(calls)
        for (_, _, _, future), (ok, value) in zip(calls, results, strict=True):
            if not future.done():
                if isinstance(value, asyncio.CancelledError):
                    future.cancel()
                elif ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)


#: One pending call of a :class:`_Batcher`: the function, its arguments, the future of its outcome.
_Call = tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any], "asyncio.Future[Any]"]


def _call_all(calls: list[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]],
              batched: dict[Callable[..., Any], Callable[[list[Any]], list[Any]]]) -> list[tuple[bool, Any]]:
    """Return (True, result) or (False, exception) of each call, in the calls' order (run in a worker thread).

    The one-argument calls of a function in ``batched`` go, together, to its
    batch form (one item per call, a result or an exception each); the other
    calls run one after the other.
    """
    results: list[tuple[bool, Any] | None] = [None] * len(calls)
    groups: dict[Callable[..., Any], list[int]] = {}
    for index, (fn, args, kwargs) in enumerate(calls):
        if fn in batched and len(args) == 1 and not kwargs:
            groups.setdefault(fn, []).append(index)
            continue
        try:
            results[index] = (True, fn(*args, **kwargs))
        except Exception as exc:
            results[index] = (False, exc)
    for fn, indices in groups.items():
        try:
            items = batched[fn]([calls[index][1][0] for index in indices])
            if len(items) != len(indices):
                raise RuntimeError(f"{batched[fn]!r} answered {len(items)} items for {len(indices)}")
        except Exception as exc:  # the batch form itself failed: each of its calls fails with it
            items = [exc] * len(indices)
        for index, item in zip(indices, items, strict=True):
            results[index] = (False, item) if isinstance(item, Exception) else (True, item)
    return [result for result in results if result is not None]


def _outcome(item: OfflineOutcome | BaseException) -> OfflineOutcome:
    if isinstance(item, BaseException):
        raise item
    return item
