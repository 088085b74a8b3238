"""Who is signed in, as the host app sees it: :class:`SignedInUser`.

The page, ``GET <prefix>/session``, the host mixin
(:class:`~tornado_signin.web.host.SigninMixin`) and the hooks
(:mod:`tornado_signin.hooks`) all describe a user with the same three
fields, never a token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .sessions import Session

__all__ = ["SignedInUser"]


@dataclass(frozen=True)
class SignedInUser:
    """A signed-in Google user: ``sub`` (Google's stable id: key your records by it), ``email``, ``name``.

    ``email`` is the address Google verified for the account, or None: an
    unverified one (``email_verified`` not true) is anybody's claim and is
    never shown or handed on, as it is never stored.

    Example::

        user = self.current_user          # in a SigninMixin handler
        self.write(f"hello {user.email}")
    """

    sub: str
    email: str | None = None
    name: str | None = None

    @classmethod
    def of(cls, session: Session | None) -> "SignedInUser | None":
        """Return the user of a signed-in ``session``, None for an anonymous one or None."""
        if session is None or not session.sub:
            return None
        return cls(sub=session.sub, email=session.email, name=session.name)

    def as_dict(self) -> dict[str, Any]:
        """Return ``{"sub", "email", "name"}``: what the page and ``/session`` show."""
        return {"sub": self.sub, "email": self.email, "name": self.name}
