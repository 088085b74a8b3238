"""The one place tornado-signin's services are built: for the server, the CLI and scripts.

Every entry point that builds services comes through here, so none can miss
what each of them needs. Above all, each builder installs log redaction
(:mod:`tornado_signin.redact`) with the config's secrets before anything is
opened: a script that turns on ``logging.basicConfig(level=logging.DEBUG)``
would otherwise log tokens through the libraries it uses (requests-oauthlib's
and oauthlib's debug output: the refresh token and the client secret).

- :func:`open_store` — the configured token store, encrypted at rest
  (``create=False``: one that creates nothing, for the commands that read).
- :func:`open_hub`, :func:`open_google` — the configured hub; a Google client;
  :func:`open_shared_hub` — the hub for a tool outside the servers (not ``memory``).
- :func:`session_registry` — the live sessions recorded in a hub (the CLI's
  ``sessions`` command and the server).
- :func:`build_context` — every service of one application (the server).
- :func:`run_offline` — a store, a Google client and workers for one piece of
  offline work on a private IOLoop (the CLI and the script API).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from .certs import CertCache
from .collector import settled_collector
from .config import Config
from .context import AppContext
from .crypto import EncryptingStore, TokenCipher
from .errors import ConfigError
from .google import GoogleClient
from .grants import GrantGuard
from .health import StoreHealth
from .hooks import SigninHooks
from .hub import ConfirmationHub, load_hub
from .expiry import AccessExpiry
from .live_sessions import SessionRegistry
from .metrics import Metrics
from .offline import OfflineAccess
from .plugins import STORES, creation_option
from .ratelimit import RequestLimits, SocketQuota
from .redact import install_redaction
from .risc import RiscReceiver, SecurityEventVerifier
from .sessions import Session, StateSigner
from .signin import SigninService
from .store import TokenStore, load_store
from .verify import IdTokenVerifier
from .workers import WorkerPool

__all__ = ["install_config_redaction", "open_store", "open_hub", "open_shared_hub", "open_google", "session_registry",
           "build_context", "run_offline"]

log = logging.getLogger(__name__)

T = TypeVar("T")


def install_config_redaction(config: Config) -> None:
    """Redact every log record of this process from now on, including the literal secrets of ``config``.

    Idempotent (see :func:`tornado_signin.redact.install_redaction`).
    """
    install_redaction([config.google.client_secret, config.server.cookie_secret, *config.store.encryption_keys])


def _cipher(config: Config) -> TokenCipher:
    return TokenCipher(config.store.encryption_keys, config_key="store.encryption.keys")


def open_store(config: Config, *, create: bool = True) -> EncryptingStore:
    """Load the configured backend and wrap it with encryption at rest; install redaction first.

    ``create`` False: the backend's creation option (where it has one,
    :func:`~tornado_signin.plugins.creation_option`: ``create_table``, the
    file store's ``create_directory``) is off, so this store creates
    nothing, no table, no SQLite file, no folder: what the commands that
    only read use (a missing table is then the backend's error; a missing
    folder, an empty file store). Raise ConfigError naming the key for an
    unknown backend, a bad option or a bad key.

    Example::

        store = open_store(load_config("config.yaml"))
        try:
            record = store.get(sub)            # plaintext tokens, decrypted; blocking: off the IOLoop
        finally:
            store.close()
    """
    install_config_redaction(config)
    options = dict(config.store.options)
    option = None if create else creation_option(STORES, config.store.backend)
    if option is not None:
        options[option] = False
    return EncryptingStore(load_store(config.store.backend, options), _cipher(config))


def open_hub(config: Config) -> ConfirmationHub:
    """Load the configured confirmation hub; install redaction first.

    Raise ConfigError naming ``hub.backend`` or ``hub.<option>`` (see :func:`tornado_signin.hub.load_hub`).
    """
    install_config_redaction(config)
    return load_hub(config.hub.backend, config.hub.url, key_prefix=config.hub.key_prefix)


def open_shared_hub(config: Config, command: str) -> ConfirmationHub:
    """Return the configured hub for a tool outside the servers (``command`` names it in the error).

    Raise ConfigError naming ``hub.backend`` for the memory hub: its records
    live inside the server process, so another process would see none of them.
    """
    if config.hub.backend == "memory":
        raise ConfigError("hub.backend", f"`{command}` needs a shared hub (redis): with the memory hub the "
                                         "records live inside the server process")
    return open_hub(config)


def open_google(config: Config) -> GoogleClient:
    """Return a client of ``config``'s Google endpoints (close it when done); install redaction first."""
    install_config_redaction(config)
    return GoogleClient(config.google)


def session_registry(config: Config, hub: ConfirmationHub, metrics: Metrics | None = None) -> SessionRegistry:
    """Return the registry of the sessions recorded in ``hub``, each living ``limits.session_max_age_days``.

    Example (a script listing a user's sessions on the deployment's Redis hub)::

        hub = open_hub(config)
        for record in await session_registry(config, hub).list(sub):
            print(record.sid, record.started_at, record.address)
        await hub.close()
    """
    return SessionRegistry(hub, metrics or Metrics(), ttl=config.limits.session_max_age_days * 86400.0)


def build_context(config: Config, *, store: TokenStore | None = None, hub: ConfirmationHub | None = None,
                  hooks: SigninHooks | None = None) -> AppContext:
    """Build the services of ``config``; ``store`` (plaintext-side) and ``hub`` override the configured ones.

    ``hooks`` are the host app's events (:mod:`tornado_signin.hooks`).
    Install redaction first. Raise ConfigError naming the key for a bad store or hub.

    Example (a host app building its own Application)::

        ctx = build_context(load_config("config.yaml"), hooks=SigninHooks(on_signed_in=remember_user))
        app = Application([(r"/", Home), *signin_routes(ctx, prefix="/auth")], signin=ctx, ...)
    """
    hooks = hooks or SigninHooks()
    install_config_redaction(config)
    metrics = Metrics()
    if store is None:
        store = open_store(config)
    elif not isinstance(store, EncryptingStore):
        store = EncryptingStore(store, _cipher(config))
    if hub is None:
        hub = open_hub(config)
    grants = GrantGuard(hub)
    google = open_google(config)
    certs = CertCache(google, config.google.endpoints.verification_certs_uri,
                      on_fetch=lambda result: metrics.inc("signin_certs_cache_total", result=result))
    verifier = IdTokenVerifier(config.google, certs)
    workers = WorkerPool(config.limits.worker_threads, config.limits.worker_queue)
    context = AppContext(
        config=config,
        store=store,
        hub=hub,
        google=google,
        certs=certs,
        verifier=verifier,
        workers=workers,
        metrics=metrics,
        signin=SigninService(google, verifier, store, workers, metrics, grants),
        states=StateSigner(config.server.cookie_secret, config.limits.state_ttl_seconds),
        limits=RequestLimits(hub, {
            "code": config.limits.code_posts_per_minute,
            "state": config.limits.state_requests_per_minute,
            "signout": config.limits.signout_posts_per_minute,
            "disconnect": config.limits.disconnect_posts_per_minute,
            "socket": config.limits.socket_handshakes_per_minute,
        }),
        offline=OfflineAccess(store, google, workers, metrics, grants=grants, hooks=hooks),
        sessions=session_registry(config, hub, metrics),
        socket_quota=SocketQuota(config.limits.sockets_per_session, config.limits.sockets_per_address),
        path_prefix=config.server.path_prefix,
        hooks=hooks,
    )
    sessions = context.sessions
    from .web.confirm import SocketPinger  # the web layer's, built here with the other services

    context.pinger = SocketPinger(config.limits.websocket_ping_interval, config.limits.websocket_ping_timeout)
    context.expiry = AccessExpiry(
        hub, notice=config.limits.access_expiry_notice_seconds,
        is_live=lambda sid, sub: sessions.is_live(Session(sid=sid, sub=sub)))
    if hooks.has("access_expiring"):
        context.expiry.add_listener(hooks.access_expiring)
    if config.risc.enabled:
        context.risc = RiscReceiver(
            SecurityEventVerifier(google, config.risc.configuration_url,
                                  (config.google.client_id, *config.risc.client_ids),
                                  clock_skew=config.google.clock_skew_seconds,
                                  on_fetch=lambda result: metrics.inc("signin_certs_cache_total", result=result)),
            store, context.sessions, hub, metrics, run=workers.run, save=context.signin.save_with_retry, hooks=hooks)
    store_health = StoreHealth(store, workers, interval=config.limits.store_check_interval,
                               recheck=config.limits.store_recheck_interval)
    context.store_health = store_health
    context.signin.health = store_health
    metrics.gauge("signin_store_up", "1 while the token store is believed reachable (by every worker).",
                  lambda: 1.0 if store_health.up else 0.0, aggregate="min")
    metrics.gauge("signin_logins_in_flight", "Code POSTs being completed now.", lambda: context.logins_in_flight)
    metrics.counter("signin_rate_limited_total", "Requests refused 429 by a per-client budget, by budget.")
    metrics.counter("signin_sockets_refused_total", "Websocket handshakes refused by a quota: cap=session|address.")
    metrics.gauge("signin_open_sockets", "Open /confirm websockets.", lambda: len(context.sockets))
    metrics.gauge("signin_worker_pool_in_flight", "Blocking calls running or queued.", lambda: workers.in_flight)
    return context


def run_offline(config: Config, work: Callable[[OfflineAccess], Awaitable[T]], *, create_store: bool = True) -> T:
    """Run ``await work(offline)`` on a private IOLoop with a store and client of ``config``; return its result.

    For scripts and the CLI: redaction is installed first, and everything
    opened is closed again. ``create_store`` is :func:`open_store`'s
    ``create``. Raise what ``work`` raises, and ConfigError as
    :func:`open_store`. While it runs, the process's garbage collector is
    settled (:func:`~tornado_signin.collector.settled_collector`: the bulk job
    spent 100-140 ms of each 10,000 users in it) and put back after.

    Example::

        async def work(offline):
            return await offline.call_userinfo("alice@example.com")

        print(run_offline(load_config("config.yaml"), work))
    """

    async def main() -> T:
        store = open_store(config, create=create_store)
        # A shared hub orders this process's revokes with the servers' sign-ins
        # (a memory hub would share nothing: the guard keeps its leases here).
        hub = None if config.hub.backend == "memory" else open_hub(config)
        google = open_google(config)
        workers = WorkerPool(2, 16)
        try:
            return await work(OfflineAccess(store, google, workers, grants=GrantGuard(hub)))
        finally:
            google.close()
            workers.shutdown()
            store.close()
            if hub is not None:
                await hub.close()

    # A script's process, not ours: the collector is settled for the run only (see settled_collector).
    with settled_collector():
        return asyncio.run(main())
