"""What a host Tornado app builds on: who is signed in, Google credentials for them, the button for its pages.

- ``GET <prefix>/session`` (:class:`SessionHandler`): ``{"signed_in": true,
  "user": {"sub", "email", "name"}}`` or ``{"signed_in": false}``, no-store;
- :class:`SigninMixin` for the host's own handlers: ``current_user`` is the
  signed-in :class:`~tornado_signin.users.SignedInUser` (so
  ``tornado.web.authenticated`` and ``login_url`` work), and
  ``await self.google_credentials(scopes=[…])`` gives valid
  ``google.oauth2.credentials.Credentials`` for them.

The mixin finds the context in ``self.application.settings["signin"]``,
where :func:`tornado_signin.app.make_app` puts it; a host app that builds its
own ``Application`` builds the context once with
:func:`tornado_signin.wiring.build_context` and passes it the same way.

Example::

    import tornado.web
    from tornado_signin.app import signin_routes, template_path
    from tornado_signin.errors import ConsentRequiredError
    from tornado_signin.web.host import SigninMixin
    from tornado_signin.wiring import build_context

    class FilesHandler(SigninMixin, tornado.web.RequestHandler):
        @tornado.web.authenticated
        async def get(self):
            try:
                creds = await self.google_credentials(scopes=["drive.readonly"])
            except ConsentRequiredError:       # MissingScopeError is one
                self.redirect(self.consent_url(["drive.readonly"]))
                return
            ...

    ctx = build_context(config)
    app = tornado.web.Application(
        [(r"/files", FilesHandler), *signin_routes(ctx, prefix="/auth")],
        signin=ctx, login_url="/", cookie_secret=config.server.cookie_secret,
        template_path=template_path())
"""

from __future__ import annotations

import logging
import secrets
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import Any

from google.oauth2.credentials import Credentials
from tornado.escape import xhtml_escape
from tornado.web import UIModule
from ..context import AppContext
from ..errors import ConsentRequiredError, MissingScopeError, UnknownUserError
from ..google import checked_scopes, expand_scope
from ..hooks import ConsentRequired
from ..users import SignedInUser
from . import inputs
from .base import BaseHandler, csp_header, live_session
from .base import signin_csp as _signin_csp

__all__ = ["SessionHandler", "SigninMixin", "SignedInUser", "SigninButton", "UI_MODULES", "signin_csp", "csp_header",
           "HOST_PAGE_CSP"]

log = logging.getLogger(__name__)


#: A strict policy for a host page, which :meth:`SigninMixin.set_signin_csp` extends with what signin.js needs.
HOST_PAGE_CSP: Mapping[str, list[str]] = {
    "default-src": ["'self'"], "img-src": ["'self'", "data:", "https:"], "style-src": ["'self'"],
    "base-uri": ["'none'"], "form-action": ["'self'"], "frame-ancestors": ["'none'"],
}


def signin_csp(ctx: AppContext, nonce: str, *, origin: str | None = None) -> dict[str, list[str]]:
    """Return the CSP sources, by directive, that a host page running ``<prefix>/signin.js`` needs.

    ``nonce`` is the page's (the script tags carry it); ``origin`` the page's
    own origin for the websocket's ``ws(s)://`` source (default
    ``server.public_origin``; without either, ``'self'`` covers it in current
    browsers). Merge it into the page's own policy with :func:`csp_header`.

    Example::

        nonce = secrets.token_urlsafe(16)
        self.set_header("Content-Security-Policy",
                        csp_header({"default-src": ["'self'"]}, signin_csp(ctx, nonce, origin="https://app.example")))
    """
    return _signin_csp(ctx.config, nonce, origin or ctx.config.server.public_origin)


class SessionHandler(BaseHandler):
    """``GET <prefix>/session``: whether this browser is signed in, and as whom (never starts a session)."""

    async def get(self) -> None:
        user = SignedInUser.of(await self.read_session())
        self.write_json({"signed_in": True, "user": user.as_dict()} if user else {"signed_in": False})


class SigninMixin:
    """Mix into a host ``RequestHandler`` (first among the bases) to know who is signed in.

    ``prepare()`` reads the session cookie and checks its record (the check
    every handler of tornado-signin makes: an ended or revoked session is
    signed out); ``current_user`` is then the
    :class:`~tornado_signin.users.SignedInUser` or None. Tornado's
    ``get_current_user`` cannot wait for the hub, so the check runs in
    ``prepare``: a subclass that overrides ``prepare`` calls
    ``await super().prepare()`` first.

    ``@tornado.web.authenticated`` redirects a signed-out GET to the
    application's ``login_url`` (the sign-in page under the prefix when the
    application has none) and answers 403 to other methods.
    """

    #: Set by prepare(); what get_current_user() returns.
    _signin_user: SignedInUser | None

    @property
    def signin(self) -> AppContext:
        """Return the application's tornado-signin context (``application.settings["signin"]``).

        Raise RuntimeError naming the setting when the application has none.
        """
        handler: Any = self
        ctx = handler.application.settings.get("signin")
        if not isinstance(ctx, AppContext):
            raise RuntimeError('the application has no settings["signin"]: build it with '
                               'tornado_signin.wiring.build_context(config) and pass signin=ctx')
        return ctx

    async def prepare(self) -> None:
        handler: Any = self
        self._signin_user = SignedInUser.of(await live_session(self.signin, handler))
        handler.current_user = self._signin_user
        result = super().prepare()  # type: ignore[misc]
        if result is not None:
            await result

    def get_current_user(self) -> SignedInUser | None:
        """Return the signed-in user that ``prepare()`` found, or None.

        Raise RuntimeError when ``prepare()`` has not run (a subclass's
        ``prepare`` did not call ``await super().prepare()``): an unchecked
        cookie could be a session that was ended.
        """
        try:
            return self._signin_user
        except AttributeError:
            raise RuntimeError("SigninMixin.prepare() has not run: call `await super().prepare()` "
                               "from your prepare()") from None

    @property
    def csp_nonce(self) -> str:
        """Return this response's CSP nonce (made on first use): :class:`SigninButton` puts it on its script tag."""
        nonce = self.__dict__.get("_signin_csp_nonce")
        if nonce is None:
            nonce = self.__dict__["_signin_csp_nonce"] = secrets.token_urlsafe(16)
        return nonce

    def set_signin_csp(self, *policies: Mapping[str, Iterable[str]]) -> str:
        """Set a Content-Security-Policy for a page that runs signin.js; return its nonce.

        The policy is :data:`HOST_PAGE_CSP`, plus :func:`signin_csp` for this
        request's origin, plus ``policies`` (the page's own sources, merged per
        directive). Also set ``Cross-Origin-Opener-Policy:
        same-origin-allow-popups``: Google's popup reports back to its opener.
        """
        handler: Any = self
        origin = inputs.own_origin(handler.request, self.signin.config.server)
        handler.set_header("Content-Security-Policy",
                           csp_header(HOST_PAGE_CSP, signin_csp(self.signin, self.csp_nonce, origin=origin), *policies))
        handler.set_header("Cross-Origin-Opener-Policy", "same-origin-allow-popups")
        return self.csp_nonce

    def get_login_url(self) -> str:
        """Return the application's ``login_url``, else the sign-in page under the prefix."""
        handler: Any = self
        return handler.settings.get("login_url") or self.signin.url("/")

    async def google_credentials(self, scopes: Iterable[str] = ()) -> Credentials:
        """Return valid Google Credentials of the signed-in user, refreshed and persisted if needed.

        ``scopes`` (short names like ``"drive.readonly"`` or full URLs) must
        all have been granted. Never blocks the IOLoop
        (:meth:`~tornado_signin.offline.OfflineAccess.credentials`).

        Raise ConsentRequiredError when nobody is signed in here, the user
        has no usable refresh token (revoked, expired, never offline) or was
        forgotten; MissingScopeError (a ConsentRequiredError) when a scope is
        not granted yet — the host sends the user to consent
        (:meth:`consent_url`); ValueError for a malformed scope (whitespace, controls);
        GoogleUnavailableError and StorageError pass.
        """
        scopes = tuple(checked_scopes(scopes))  # a malformed scope is the caller's bug: ValueError, before anything
        user = self.get_current_user()
        hooks = self.signin.hooks
        if user is None:
            await hooks.consent_required(ConsentRequired(sub=None, reason="signed_out"))
            raise ConsentRequiredError("nobody is signed in on this request")
        try:
            return await self.signin.offline.credentials(user.sub, required_scopes=tuple(scopes))
        except UnknownUserError as exc:
            await hooks.consent_required(ConsentRequired(sub=user.sub, reason="unknown_user"))
            raise ConsentRequiredError("the signed-in user's tokens were forgotten: sign in again") from exc
        except MissingScopeError as exc:
            await hooks.consent_required(ConsentRequired(sub=user.sub, reason="missing_scope",
                                                         missing_scopes=tuple(sorted(exc.missing))))
            raise
        except ConsentRequiredError:
            await hooks.consent_required(ConsentRequired(sub=user.sub, reason="not_active"))
            raise

    def consent_url(self, scopes: Iterable[str] = (), *, next_url: str | None = None) -> str:
        """Return the login URL with ``scope`` (space-separated) and ``next`` query arguments.

        The page behind ``login_url`` reads them and asks Google for those
        scopes with the JavaScript client (incremental consent); ``next``
        defaults to this request's URI, as ``tornado.web.authenticated`` does.
        """
        handler: Any = self
        url = self.get_login_url()
        query = {"next": next_url if next_url is not None else handler.request.uri}
        wanted = " ".join(scopes)
        if wanted:
            query["scope"] = wanted
        return url + ("&" if "?" in url else "?") + urllib.parse.urlencode(query)



class SigninButton(UIModule):
    """``{% module SigninButton() %}``: the sign-in button and the ``<prefix>/signin.js`` tag, for host templates.

    Register it with ``ui_modules=UI_MODULES`` (or ``{"SigninButton":
    SigninButton}``). It renders::

        <button id="signinButton" type="button" disabled>Sign in with Google</button>
        <script src="/auth/signin.js" nonce="…" data-client-id="…" data-scope="…"
                data-library="gis" data-script-url="…"></script>

    The nonce is the handler's :attr:`SigninMixin.csp_nonce` unless given; the
    page's CSP must allow it (:meth:`SigninMixin.set_signin_csp`). The page's
    own script then mounts the client:
    ``TornadoSignin.mount(document.getElementById("signinButton"), {...})``.
    ``scopes`` adds to ``google.scopes`` (full URLs or short names such as
    ``drive.readonly``). Raise RuntimeError without a nonce.
    """

    def render(self, label: str = "Sign in with Google", *, button_id: str = "signinButton",
               scopes: Iterable[str] = (), nonce: str | None = None) -> str:
        handler: Any = self.handler
        ctx = handler.application.settings.get("signin")
        if not isinstance(ctx, AppContext):
            raise RuntimeError('SigninButton needs the application\'s settings["signin"] (wiring.build_context)')
        if nonce is None:
            nonce = getattr(handler, "csp_nonce", None)
        if not nonce:
            raise RuntimeError("SigninButton needs the page's CSP nonce: pass nonce=… or use a SigninMixin handler")
        google = ctx.config.google
        wanted = [*google.scopes, *(expand_scope(scope) for scope in scopes)]
        attributes = {
            "src": ctx.url("/signin.js"), "nonce": nonce, "data-prefix": ctx.path_prefix,
            "data-client-id": google.client_id, "data-scope": " ".join(dict.fromkeys(wanted)),
            "data-library": google.client_library, "data-script-url": google.client_script_url,
        }
        tag = " ".join(f'{name}="{xhtml_escape(value)}"' for name, value in attributes.items())
        return (f'<button id="{xhtml_escape(button_id)}" type="button" disabled>{xhtml_escape(label)}</button>\n'
                f"<script {tag}></script>")


#: The UI modules of tornado-signin, for ``Application(..., ui_modules=UI_MODULES)``.
UI_MODULES: dict[str, type[UIModule]] = {"SigninButton": SigninButton}
