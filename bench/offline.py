"""The offline bulk-refresh scenarios: ``python -m bench.offline MODE --users FILE --db PATH --token-uri URI``.

One process (pinned to the server core by bench.run) refreshes every user of
``--users`` (a JSON list of ``{"sub", "email", "refresh_token"}``, the grants
the benchmark's emulator made) once, with at most ``--concurrency`` refreshes
in flight, and prints one JSON line: how many completed, the seconds from the
first refresh to the last outcome, the per-user latencies, the process's CPU.
Setup (imports, opening the store, the HTTP clients) is not measured. Before
the first refresh it prints ``start``, after the last ``end`` (bench.run
samples the emulator's CPU there).

MODE:

* ``refresh``: the product. tornado-signin's ``OfflineAccess`` built by
  ``tornado_signin.scripts.run_offline`` (the script API) on the encrypted
  SQLite store the benchmark seeded (every access token expired), and its
  bulk job ``credentials_for_all(concurrency=…)``: each user's record read,
  refreshed under its grant lease, the answer persisted through the store's
  merge, Credentials returned.
* ``ceiling``: a bare loop of the same refresh POSTs to the same token
  endpoint with Tornado's curl client (keep-alive, ``max_clients`` =
  concurrency), nothing else: the limit of this machine for the job.
* ``store``: not a scenario but a bound: the CPU of the store work each
  refreshed user needs at least, done inline (no IOLoop, no thread hop) on
  the same seeded store, the way the job does it: the re-reads under the
  grant leases through ``get_many`` and the saves of the refreshes' outcomes
  through ``save_many`` (the store's merge), in batches of ``--concurrency``
  users (the most the job gathers in one batch), for the first ``--limit``
  users (default 2,000). The same one ``get`` and one ``save`` per user are
  reported beside it (``get_one_ms``, ``save_one_ms``) for comparison, and
  the CPU of the product's refresh call alone (``post_ms``: ``GoogleClient.refresh``
  for the same users, ``--concurrency`` in flight, nothing else).
* ``google_auth``: what a user writes by hand: google-auth's
  ``Credentials.refresh()`` (its requests transport, one keep-alive session
  per thread) in a pool of ``--threads`` threads, each result written back
  with a sqlite3 upsert (WAL, ``synchronous=NORMAL`` like the product here).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from .common import CLIENT_ID, CLIENT_SECRET, COOKIE_SECRET, CREATE_SQL, ENCRYPTION_KEY, SCOPE, UPSERT_SQL

__all__ = ["offline_config", "seed_product_store", "seed_peer_db"]


def offline_config(db: str, token_uri: str) -> Any:
    """Return the tornado-signin Config of the offline job: the encrypted SQLite store, the token endpoint."""
    from tornado_signin.config import config_from_dict

    return config_from_dict({
        "development": True,
        "log_level": "WARNING",
        "server": {"cookie_secret": COOKIE_SECRET},  # required by every config; the job serves nothing
        "google": {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
                   "endpoints": {"token_uri": token_uri}},
        "store": {"backend": "sql", "url": f"sqlite:///{db}", "sqlite_synchronous": "NORMAL",
                  "encryption": {"keys": [ENCRYPTION_KEY]}},
    }, environ={})


def _checkpoint(db: str) -> None:
    # Everything in the main file, no WAL beside it: the file can be copied as it is.
    with sqlite3.connect(db) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def seed_product_store(db: str, users: list[dict[str, str]], token_uri: str) -> None:
    """Store ``users`` in the product's encrypted SQLite store at ``db``, every access token expired.

    What sign-ins would have left an hour later, written in bulk: the store
    opened as the product opens it (``open_store``: the sql backend under the
    encryption wrapper), each token encrypted by the store's own cipher bound
    to its record, the rows the backend's save would insert (its
    ``incoming_row``) in one transaction on its engine — one save per user
    took ~2 ms here, 20 s for 10,000. One record is read back through the
    store (decrypted) as a check.
    """
    from tornado_signin.google import normalize_scopes
    from tornado_signin.store import TokenRecord
    from tornado_signin.wiring import open_store
    from tornado_signin_backends.sql.schema import incoming_row

    store = open_store(offline_config(db, token_uri))
    now = time.time()
    scopes = tuple(sorted(normalize_scopes(SCOPE)))
    cipher, inner = store.cipher, store.inner
    try:
        inner.check()  # creates the table
        rows = []
        for user in users:
            sub = user["sub"]
            rows.append(incoming_row(TokenRecord(
                sub=sub, email=user["email"],
                refresh_token=cipher.encrypt(user["refresh_token"], sub=sub, field="refresh_token"),
                refresh_token_issued_at=now - 7200,
                access_token=cipher.encrypt("ya29.expired-" + sub, sub=sub, field="access_token"),
                access_token_issued_at=now - 7200, access_token_expiry=now - 3600, scopes=scopes,
                created_at=now - 7200), now))
        with inner.engine.begin() as connection:
            connection.execute(inner.table.insert(), rows)
        check = store.get(users[0]["sub"])
        assert check is not None and check.refresh_token == users[0]["refresh_token"], "seeded store unreadable"
    finally:
        store.close()
    _checkpoint(db)


def seed_peer_db(db: str, users: list[dict[str, str]]) -> None:
    """Store ``users`` in the google-auth peer's table at ``db`` (one transaction), every access token expired."""
    connection = sqlite3.connect(db)
    try:
        connection.execute("PRAGMA journal_mode = WAL")
        connection.execute(CREATE_SQL)
        now = time.time()
        connection.executemany(UPSERT_SQL, [(u["sub"], u["email"], u["refresh_token"], "ya29.expired", now - 3600,
                                             now - 7200) for u in users])
        connection.commit()
    finally:
        connection.close()
    _checkpoint(db)


def _percentiles(latencies: list[float]) -> dict[str, float]:
    from .loadgen import percentile

    return {"p50_ms": 1000 * percentile(latencies, 0.50), "p99_ms": 1000 * percentile(latencies, 0.99)}


def _report(completed: int, errors: dict[str, int], seconds: float, cpu: float, latencies: list[float],
            **extra: Any) -> dict[str, Any]:
    return {"completed": completed, "errors": errors, "seconds": seconds, "cpu_seconds": cpu,
            "throughput": completed / seconds if seconds else 0.0, **_percentiles(latencies), **extra}


def _mark(what: str) -> None:
    print(what, flush=True)


def run_product(users: list[dict[str, str]], args: argparse.Namespace) -> dict[str, Any]:
    from tornado_signin.offline import OfflineAccess, OfflineOutcome
    from tornado_signin.scripts import run_offline

    config = offline_config(args.db, args.token_uri)
    latencies: list[float] = []

    async def timed(self: OfflineAccess, *a: Any, **kw: Any) -> OfflineOutcome:
        # Per-user latency, from the job starting that user to its outcome (measurement only).
        began = time.perf_counter()
        try:
            return await bulk_one(self, *a, **kw)
        finally:
            latencies.append(time.perf_counter() - began)

    bulk_one = OfflineAccess._bulk_one
    OfflineAccess._bulk_one = timed  # type: ignore[method-assign]

    async def job(offline: OfflineAccess) -> dict[str, Any]:
        completed, refreshed, errors = 0, 0, {}
        _mark("start")
        cpu0, began = time.process_time(), time.perf_counter()
        # Every stored user: the job walks the store (users=None), as a nightly job would
        # (--limit, for the warm-up: the first users, by sub).
        subs = [user["sub"] for user in users] if args.limit else None
        async for outcome in offline.credentials_for_all(subs, concurrency=args.concurrency):
            if outcome.error is None:
                completed += 1
                refreshed += outcome.refreshed
            else:
                name = type(outcome.error).__name__
                errors[name] = errors.get(name, 0) + 1
        seconds, cpu = time.perf_counter() - began, time.process_time() - cpu0
        _mark("end")
        return _report(completed, errors, seconds, cpu, latencies, refreshed=refreshed)

    return run_offline(config, job)


def run_ceiling(users: list[dict[str, str]], args: argparse.Namespace) -> dict[str, Any]:
    from tornado.curl_httpclient import CurlAsyncHTTPClient
    from tornado.httpclient import HTTPRequest

    async def main() -> dict[str, Any]:
        http = CurlAsyncHTTPClient(force_instance=True, max_clients=args.concurrency)
        todo = iter(users)
        latencies: list[float] = []
        errors: dict[str, int] = {}
        completed = 0

        async def worker() -> None:
            nonlocal completed
            for user in todo:
                began = time.perf_counter()
                body = urlencode({"grant_type": "refresh_token", "refresh_token": user["refresh_token"],
                                  "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET})
                response = await http.fetch(HTTPRequest(args.token_uri, method="POST", body=body), raise_error=False)
                latencies.append(time.perf_counter() - began)
                if response.code == 200:
                    completed += 1
                else:
                    errors[str(response.code)] = errors.get(str(response.code), 0) + 1

        _mark("start")
        cpu0, began = time.process_time(), time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        seconds, cpu = time.perf_counter() - began, time.process_time() - cpu0
        _mark("end")
        http.close()
        return _report(completed, errors, seconds, cpu, latencies)

    return asyncio.run(main())


def run_google_auth(users: list[dict[str, str]], args: argparse.Namespace) -> dict[str, Any]:
    import google.auth.transport.requests
    import requests
    from google.oauth2.credentials import Credentials

    local = threading.local()
    lock = threading.Lock()
    latencies: list[float] = []
    errors: dict[str, int] = {}

    def one(user: dict[str, str]) -> bool:
        if not hasattr(local, "db"):
            local.db = sqlite3.connect(args.db, timeout=30)
            local.db.execute("PRAGMA synchronous = NORMAL")
            local.request = google.auth.transport.requests.Request(session=requests.Session())
        began = time.perf_counter()
        try:
            credentials = Credentials(None, refresh_token=user["refresh_token"], token_uri=args.token_uri,
                                      client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
            credentials.refresh(local.request)
            expiry = credentials.expiry.timestamp() if credentials.expiry else time.time() + 3600
            local.db.execute(UPSERT_SQL, (user["sub"], user["email"], credentials.refresh_token, credentials.token,
                                          expiry, time.time()))
            local.db.commit()
        except Exception as exc:  # counted by kind, as the other modes count failures
            with lock:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
            return False
        finally:
            latencies.append(time.perf_counter() - began)
        return True

    with ThreadPoolExecutor(args.threads) as pool:
        list(pool.map(lambda _: None, range(args.threads)))  # threads started before the window
        _mark("start")
        cpu0, began = time.process_time(), time.perf_counter()
        completed = sum(pool.map(one, users))
        seconds, cpu = time.perf_counter() - began, time.process_time() - cpu0
        _mark("end")
    return _report(completed, errors, seconds, cpu, latencies)


def run_store(users: list[dict[str, str]], args: argparse.Namespace) -> dict[str, Any]:
    from tornado_signin.google import normalize_scopes
    from tornado_signin.store import TokenRecord
    from tornado_signin.wiring import open_store

    store = open_store(offline_config(args.db, args.token_uri))
    now = time.time()
    scopes = tuple(sorted(normalize_scopes(SCOPE)))
    outcomes = [TokenRecord(sub=user["sub"], access_token="ya29.a0" + "x" * 150, access_token_expiry=now + 3599,
                            access_token_issued_at=now, scopes=scopes) for user in users]
    subs = [user["sub"] for user in users]
    size = max(1, args.concurrency)
    batches = range(0, len(users), size)
    try:
        # The connection opened, the statements compiled.
        store.get_many(subs[:size])
        store.get(subs[0])
        cpu0 = time.process_time()
        for start in batches:
            store.get_many(subs[start:start + size])
        cpu1 = time.process_time()
        for start in batches:
            store.save_many(outcomes[start:start + size])
        cpu2 = time.process_time()
        for sub in subs:
            store.get(sub)
        cpu3 = time.process_time()
        for record in outcomes:
            store.save(record)
        cpu4 = time.process_time()
    finally:
        store.close()
    per_user = 1000 / len(users)
    return {"get_ms": per_user * (cpu1 - cpu0), "save_ms": per_user * (cpu2 - cpu1), "batch": size,
            "get_one_ms": per_user * (cpu3 - cpu2), "save_one_ms": per_user * (cpu4 - cpu3), "users": len(users),
            "post_ms": _product_post_ms(users, args)}


def _product_post_ms(users: list[dict[str, str]], args: argparse.Namespace) -> float:
    """CPU (ms) per refresh of the product's refresh call alone: ``GoogleClient.refresh`` (its token client,
    the reply parsed and checked) for ``users``, ``--concurrency`` in flight, nothing else."""
    from tornado_signin.wiring import open_google

    config = offline_config(args.db, args.token_uri)

    async def main() -> float:
        google = open_google(config)
        todo = iter(users)

        async def worker() -> None:
            for user in todo:
                await google.refresh(user["refresh_token"])

        await google.refresh(users[0]["refresh_token"])  # the connection opened
        cpu0 = time.process_time()
        await asyncio.gather(*(worker() for _ in range(max(1, args.concurrency))))
        cpu = time.process_time() - cpu0
        google.close()
        return 1000 * cpu / len(users)

    return asyncio.run(main())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("refresh", "ceiling", "google_auth", "store"))
    parser.add_argument("--users", required=True, help="JSON file: the users to refresh")
    parser.add_argument("--db", required=True, help="the SQLite file (refresh: the product's; google_auth: the peer's)")
    parser.add_argument("--token-uri", required=True)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--threads", type=int, default=16, help="google_auth: the thread pool's size")
    parser.add_argument("--limit", type=int, default=0, help="only the first N users (0: all)")
    args = parser.parse_args(argv)
    users = json.loads(Path(args.users).read_text())
    if args.limit or args.mode == "store":
        users = users[:args.limit or 2000]
    run = {"refresh": run_product, "ceiling": run_ceiling, "google_auth": run_google_auth,
           "store": run_store}[args.mode]
    print(json.dumps(run(users, args)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
