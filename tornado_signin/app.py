"""Build the Tornado application (and its HTTP server) from a config.

:func:`make_app` is the Python API for mounting tornado-signin: it returns a
``tornado.web.Application`` whose ``settings["signin"]`` is the
:class:`~tornado_signin.context.AppContext`; :func:`signin_routes` returns
just the URL table, to merge into a bigger application.
"""

from __future__ import annotations

import json
import re
from typing import Any

from tornado.httpserver import HTTPServer
from tornado.web import Application, RedirectHandler, RequestHandler

from .config import Config, normalize_path_prefix
from .context import AppContext
from .hooks import SigninHooks
from .hub import ConfirmationHub
from .listener import GuardedHTTPServer, connection_budget
from .store import TokenStore
from .web.api import ScopeHandler, UserinfoHandler
from .web.assets import FaviconHandler, SigninScriptHandler
from .web.base import AccessLog, BaseHandler
from .web.confirm import ConfirmSocket
from .web.host import SessionHandler
from .web.ops import HealthHandler, MetricsHandler
from .web.risc import RiscHandler
from .web.signin import (DisconnectHandler, PageHandler, SignoutHandler, StateHandler, StoreAuthCodeHandler,
                         page_template_path)
from .wiring import build_context

__all__ = ["make_app", "make_server", "signin_routes", "template_path"]


def template_path() -> str:
    """Return the folder of the page templates, from an editable install or a wheel alike."""
    return page_template_path()


class NotFoundHandler(BaseHandler):
    """Any other path: a JSON 404 (and 405-free: every method gets the same answer)."""

    def prepare(self) -> None:
        self.set_status(404)
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(json.dumps({"error": "not found"}))


def signin_routes(ctx: AppContext, prefix: str | None = None) -> list[tuple[str, type[RequestHandler], dict[str, Any]]]:
    """Return the URL table of tornado-signin bound to ``ctx``, to merge into a bigger application.

    Every route is mounted under ``prefix`` (``"/auth"``: the page at
    ``/auth/``, ``/auth/state``, ``/auth/confirm``…); None takes
    ``server.path_prefix``. The context remembers it (``ctx.path_prefix``):
    the page, the host mixin and UI module build their URLs from it, so one
    context is mounted once. Raise ValueError for a prefix that
    :func:`~tornado_signin.config.normalize_path_prefix` refuses.

    Example::

        from tornado.web import Application
        from tornado_signin.app import signin_routes, template_path
        from tornado_signin.wiring import build_context

        ctx = build_context(config)
        app = Application([(r"/", HomeHandler), *signin_routes(ctx, prefix="/auth")],
                          cookie_secret=config.server.cookie_secret, template_path=template_path(), signin=ctx)
    """
    if prefix is not None:
        ctx.path_prefix = normalize_path_prefix(prefix)
    mount = re.escape(ctx.path_prefix)
    args = {"ctx": ctx}
    routes: list[tuple[str, type[RequestHandler], dict[str, Any]]] = []
    if ctx.path_prefix:
        # The bare prefix leads to the page, whose URLs are all absolute.
        routes.append((mount, RedirectHandler, {"url": ctx.path_prefix + "/"}))
    routes += [
        (mount + r"/", PageHandler, args),
        (mount + r"/state", StateHandler, args),
        (mount + r"/storeauthcode", StoreAuthCodeHandler, args),
        (mount + r"/confirm", ConfirmSocket, args),
        (mount + r"/signout", SignoutHandler, args),
        (mount + r"/disconnect", DisconnectHandler, args),
        (mount + r"/session", SessionHandler, args),
        (mount + r"/healthz", HealthHandler, args),
        (mount + r"/metrics", MetricsHandler, args),
        (mount + r"/api/userinfo", UserinfoHandler, args),
        (mount + r"/api/scopes", ScopeHandler, args),
        (mount + r"/signin.js", SigninScriptHandler, args),
        (mount + r"/favicon.ico", FaviconHandler, args),
        *([(mount + r"/risc", RiscHandler, args)] if ctx.config.risc.enabled else []),
    ]
    return routes


def make_app(config: Config, *, store: TokenStore | None = None, hub: ConfirmationHub | None = None,
             hooks: SigninHooks | None = None, **settings: Any) -> Application:
    """Return the application for ``config``; ``app.settings["signin"]`` is its AppContext.

    ``store`` and ``hub`` replace the configured ones (tests, embedding);
    ``hooks`` are the host app's events (:mod:`tornado_signin.hooks`);
    extra ``settings`` go to ``tornado.web.Application``. Raise ConfigError
    naming the key for a store or hub that cannot be built.

    Example::

        import asyncio
        from tornado_signin.app import make_app, make_server
        from tornado_signin.config import load_config

        async def main():
            config = load_config("config.yaml")
            app = make_app(config)
            make_server(app, config).listen(config.server.port)
            await asyncio.Event().wait()

        asyncio.run(main())
    """
    ctx = build_context(config, store=store, hub=hub, hooks=hooks)
    limits = config.limits
    return Application(
        signin_routes(ctx),
        default_handler_class=NotFoundHandler,
        default_handler_args={"ctx": ctx},
        template_path=template_path(),
        cookie_secret=config.server.cookie_secret,
        xsrf_cookies=False,  # the code endpoint has its own, stricter gate
        # /confirm is pinged by ctx.pinger (one timer for every socket), not by Tornado (one task per socket).
        websocket_max_message_size=limits.websocket_max_message_bytes,
        signin=ctx,
        **{"log_function": AccessLog(), **settings},
    )


def make_server(app: Application, config: Config) -> HTTPServer:
    """Return an HTTPServer for ``app`` with the configured transport limits.

    Tornado's defaults are permissive (100 MB bodies, 1 h header timeout);
    these are tight because every request here is small. The server holds at
    most ``limits.max_connections`` connections (by default the descriptor
    limit less ``limits.descriptor_reserve``) and backs off accept errors
    (:class:`~tornado_signin.listener.GuardedHTTPServer`).
    """
    limits = config.limits
    ctx: AppContext = app.settings["signin"]
    ctx.metrics.counter("signin_connections_refused_total",
                        "Connections refused at accept: full (the connection cap), address (the per-address cap), "
                        "accept_error (EMFILE...).")
    server = GuardedHTTPServer(
        app,
        xheaders=config.server.xheaders,
        max_body_size=max(limits.max_body_bytes, 16 * 1024),
        max_header_size=16 * 1024,
        idle_connection_timeout=limits.header_timeout,
        body_timeout=limits.body_timeout,
        max_connections=connection_budget(limits.max_connections, limits.descriptor_reserve),
        # Behind a proxy every connection is the proxy's: the per-address cap would cap the deployment.
        per_address=0 if config.server.xheaders else limits.connections_per_address,
        open_sockets=lambda: len(ctx.sockets),
        on_refused=lambda reason: ctx.metrics.inc("signin_connections_refused_total", reason=reason),
    )
    ctx.metrics.gauge("signin_open_connections", "Client connections open now (HTTP and websockets).",
                      lambda: server.open_connections)
    return server
