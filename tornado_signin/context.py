"""Everything a request handler needs, built once per application from the config.

Handlers receive one :class:`AppContext` through ``initialize()`` (the URL
table), never through globals, so several applications can live in one
process (tests do this constantly).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from .certs import CertCache
from .config import Config
from .crypto import EncryptingStore, TokenCipher
from .google import GoogleClient
from .health import StoreHealth
from .hub import ConfirmationHub, MemoryHub, load_hub
from .metrics import Metrics
from .offline import OfflineAccess
from .ratelimit import RateLimiter
from .redact import install_redaction
from .sessions import StateSigner
from .signin import SigninService
from .store import TokenStore, load_store
from .verify import IdTokenVerifier
from .workers import WorkerPool

__all__ = ["AppContext", "build_context", "open_store"]

log = logging.getLogger(__name__)


def open_store(config: Config) -> EncryptingStore:
    """Load the configured backend and wrap it with encryption at rest.

    Raise ConfigError naming the key for an unknown backend, a bad option or a bad key.
    """
    cipher = TokenCipher(config.store.encryption_keys, config_key="store.encryption.keys")
    return EncryptingStore(load_store(config.store.backend, dict(config.store.options)), cipher)


@dataclass
class AppContext:
    """The shared services of one application."""

    config: Config
    store: EncryptingStore
    hub: ConfirmationHub
    google: GoogleClient
    certs: CertCache
    verifier: IdTokenVerifier
    workers: WorkerPool
    metrics: Metrics
    signin: SigninService
    states: StateSigner
    code_rate_limit: RateLimiter
    offline: OfflineAccess
    #: Live websocket handlers, for metrics and graceful shutdown.
    sockets: set = field(default_factory=set)
    #: The store's up/down flag (the login gate and readiness); built by build_context.
    store_health: StoreHealth | None = None
    #: Code POSTs being completed now (graceful shutdown waits for them).
    logins_in_flight: int = 0
    #: Set at shutdown: readiness fails and new logins are refused with 503.
    draining: bool = False

    def __post_init__(self) -> None:
        # Asked on every code POST and websocket handshake; the configured list never changes.
        self._configured_origins = frozenset(self.config.server.allowed_origins)

    def allowed_origins(self, own_origin: str) -> frozenset[str]:
        """Return the origins allowed to post codes and open sockets."""
        if self._configured_origins:
            return self._configured_origins
        return frozenset({self.config.server.public_origin or own_origin})

    async def close(self) -> None:
        """Release every resource (store, hub, HTTP client, threads)."""
        if self.store_health is not None:
            await self.store_health.stop()
        try:
            await self.hub.close()
        except Exception:  # shutdown goes on whatever the hub does
            log.exception("closing the hub failed")
        self.google.close()
        self.workers.shutdown(wait=True)
        self.store.close()


def build_context(config: Config, *, store: TokenStore | None = None, hub: ConfirmationHub | None = None) -> AppContext:
    """Build the services of ``config``; ``store`` (plaintext-side) and ``hub`` override the configured ones."""
    install_redaction([config.google.client_secret, config.server.cookie_secret, *config.store.encryption_keys])
    metrics = Metrics()
    if store is None:
        store = open_store(config)
    elif not isinstance(store, EncryptingStore):
        store = EncryptingStore(store, TokenCipher(config.store.encryption_keys, config_key="store.encryption.keys"))
    if hub is None:
        hub = MemoryHub() if config.hub.backend == "memory" else load_hub(
            config.hub.backend, config.hub.url, key_prefix=config.hub.key_prefix)
    google = GoogleClient(config.google)
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
        signin=SigninService(google, verifier, store, workers, metrics),
        states=StateSigner(config.server.cookie_secret, config.limits.state_ttl_seconds),
        code_rate_limit=RateLimiter(config.limits.code_posts_per_minute),
        offline=OfflineAccess(store, google, workers, metrics),
    )
    context.store_health = StoreHealth(store, workers, interval=config.limits.store_check_interval,
                                       recheck=config.limits.store_recheck_interval)
    context.signin.health = context.store_health
    metrics.gauge("signin_store_up", "1 while the token store is believed reachable.",
                  lambda: 1.0 if context.store_health.up else 0.0)
    metrics.gauge("signin_logins_in_flight", "Code POSTs being completed now.", lambda: context.logins_in_flight)
    metrics.gauge("signin_open_sockets", "Open /confirm websockets.", lambda: len(context.sockets))
    metrics.gauge("signin_worker_pool_in_flight", "Blocking calls running or queued.", lambda: workers.in_flight)
    return context
