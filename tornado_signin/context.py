"""Everything a request handler needs, built once per application by :func:`tornado_signin.wiring.build_context`.

Handlers receive one :class:`AppContext` through ``initialize()`` (the URL
table), never through globals, so several applications can live in one
process (tests do this constantly).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from .certs import CertCache
from .config import Config
from .crypto import EncryptingStore
from .google import GoogleClient
from .health import StoreHealth
from .hub import ConfirmationHub
from .expiry import AccessExpiry
from .hooks import SigninHooks
from .live_sessions import SessionRegistry
from .risc import RiscReceiver
from .metrics import Metrics
from .offline import OfflineAccess
from .ratelimit import RequestLimits, SocketQuota
from .sessions import StateSigner
from .signin import SigninService
from .verify import IdTokenVerifier
from .workers import WorkerPool

__all__ = ["AppContext"]

log = logging.getLogger(__name__)


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
    #: Per-client request budgets (limits.*_per_minute), counted by the hub.
    limits: RequestLimits
    offline: OfflineAccess
    #: Signed-in session records (sign-out everywhere); built by wiring.build_context.
    sessions: SessionRegistry = None  # type: ignore[assignment]
    #: Notices of ending time-limited grants (the page's frame, the host app's listeners).
    expiry: AccessExpiry = None  # type: ignore[assignment]
    #: The Cross-Account Protection receiver, with ``risc.enabled``; else None.
    risc: RiscReceiver | None = None
    #: Where the routes are mounted ("" or "/auth"): ``server.path_prefix``, or the prefix given to signin_routes.
    path_prefix: str = ""
    #: The host app's event hooks (none by default); built by wiring.build_context.
    hooks: SigninHooks = field(default_factory=SigninHooks)
    #: Live websocket handlers, for metrics and graceful shutdown.
    sockets: set = field(default_factory=set)
    #: Pings those sockets (limits.websocket_ping_*); built by wiring.build_context.
    pinger: Any = None
    #: Open websockets per session and per client address (limits.sockets_per_*); built by wiring.build_context.
    socket_quota: SocketQuota = field(default_factory=lambda: SocketQuota(0, 0))
    #: The store's up/down flag (the login gate and readiness); built by wiring.build_context.
    store_health: StoreHealth | None = None
    #: Code POSTs being completed now (graceful shutdown waits for them).
    logins_in_flight: int = 0
    #: Set at shutdown: readiness fails and new logins are refused with 503.
    draining: bool = False

    def __post_init__(self) -> None:
        # Asked on every code POST and websocket handshake; the configured list never changes.
        self._configured_origins = frozenset(self.config.server.allowed_origins)

    def url(self, path: str) -> str:
        """Return the absolute path of route ``path`` (``"/state"``) under the mount prefix (``"/auth/state"``)."""
        return self.path_prefix + path

    def allowed_origins(self, own_origin: str) -> frozenset[str]:
        """Return the origins allowed to post codes and open sockets."""
        if self._configured_origins:
            return self._configured_origins
        return frozenset({self.config.server.public_origin or own_origin})

    async def close(self) -> None:
        """Release every resource (store, hub, HTTP client, threads)."""
        if self.pinger is not None:
            self.pinger.stop()
        if self.expiry is not None:
            self.expiry.close()
        await self.hooks.drain(1.0)
        if self.store_health is not None:
            await self.store_health.stop()
        try:
            await self.hub.close()
        except Exception:  # shutdown goes on whatever the hub does
            log.exception("closing the hub failed")
        self.google.close()
        self.workers.shutdown(wait=True)
        self.store.close()
