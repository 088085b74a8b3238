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
import urllib.parse
from collections.abc import Iterable
from typing import Any

from google.oauth2.credentials import Credentials
from ..context import AppContext
from ..errors import ConsentRequiredError, MissingScopeError, UnknownUserError
from ..hooks import ConsentRequired
from ..users import SignedInUser
from .base import BaseHandler, live_session

__all__ = ["SessionHandler", "SigninMixin", "SignedInUser"]

log = logging.getLogger(__name__)


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
        (:meth:`consent_url`); GoogleUnavailableError and StorageError pass.
        """
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

