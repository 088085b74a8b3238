"""The demo's proof of the point: the *server* calls a Google API with stored credentials.

``POST /api/userinfo`` calls Google's userinfo endpoint for the signed-in
user through :class:`~tornado_signin.offline.OfflineAccess` (the same code
path a script or a background job uses: stored access token, refreshed when
needed). ``GET /api/scopes`` lists the scopes granted so far, which grow with
incremental authorization.
"""

from __future__ import annotations

from ..errors import ConsentRequiredError, GoogleError, StorageError, UnknownUserError
from .base import BaseHandler

__all__ = ["UserinfoHandler", "ScopeHandler"]


class _SignedInHandler(BaseHandler):
    async def signed_in_sub(self) -> str:
        session = await self.read_session()
        if session is None or not session.sub:
            raise self.fail(401, "not signed in")
        return session.sub


class UserinfoHandler(_SignedInHandler):
    """``POST /api/userinfo``: the server calls userinfo for the session's user."""

    async def post(self) -> None:
        self.check_request_origin()
        sub = await self.signed_in_sub()
        try:
            info = await self.ctx.offline.call_userinfo(sub)
        except (ConsentRequiredError, UnknownUserError):
            self.write_json({"status": "consent_required"}, 409)
            return
        except (GoogleError, StorageError) as exc:
            raise self.fail_logged(exc, "userinfo") from exc
        allowed = ("sub", "email", "email_verified", "name", "given_name", "family_name", "picture", "hd", "locale")
        self.write_json({"userinfo": {k: info[k] for k in allowed if k in info}})


class ScopeHandler(_SignedInHandler):
    """``GET /api/scopes``: the scopes granted to this server for the session's user."""

    async def get(self) -> None:
        sub = await self.signed_in_sub()
        try:
            record = await self.ctx.offline.find(sub)
        except UnknownUserError:
            self.write_json({"scopes": []})
            return
        except StorageError as exc:
            raise self.fail_for(exc) from exc
        self.write_json({"scopes": sorted(record.scopes)})
