"""The emulator's memory: clients, test accounts, grants, codes and tokens.

Everything Google would remember lives in one :class:`State` object, driven
by the handlers and by the Python methods of
:class:`~tornado_signin.emulator.Emulator`. It knows nothing of HTTP: a
refused operation raises :class:`OAuthError` carrying Google's ``error`` code
and description, and the handler picks the status.

The grant model, as Google behaves:

* A *grant* is one user's consent to one client. It is recorded when the user
  consents (a code is minted), and it accumulates the scopes granted so far.
* A code carries a refresh token only when it was minted for offline access
  on the first consent of that user to that client, on the first consent
  after the grant was revoked, or with ``prompt=consent``.
* Every token belongs to the grant generation that issued it (its ``grant_id``).
  Revoking any token of a grant deletes the grant: all its tokens die at once
  and the next consent counts as a first one again.

Every change to what Google would remember calls :attr:`State.on_change`
(the emulator writes its state folder there, see :mod:`.persist`);
:meth:`State.snapshot` and :meth:`State.restore` turn that memory into a
JSON document and back. Open consent pages are not part of it.

Not thread-safe: the emulator runs on one IOLoop.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import logging
import re
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "EmulatorClient",
    "TestAccount",
    "DEFAULT_ACCOUNTS",
    "OAuthError",
    "Code",
    "IssuedTokens",
    "State",
    "expand_scopes",
    "ordered_scopes",
    "merge_scopes",
    "format_scopes",
    "IDENTITY_SCOPES",
    "pkce_challenge",
]

log = logging.getLogger(__name__)

GOOGLE_ISSUER = "https://accounts.google.com"
OPENID = "openid"
EMAIL_SCOPE = "https://www.googleapis.com/auth/userinfo.email"
PROFILE_SCOPE = "https://www.googleapis.com/auth/userinfo.profile"

#: Seconds a consent page stays answerable.
CONSENT_TTL = 3600

_SHORT_SCOPES = {"email": EMAIL_SCOPE, "profile": PROFILE_SCOPE, OPENID: OPENID}

#: The sign-in scopes: Google's granular consent screen never lets the user untick these.
IDENTITY_SCOPES = frozenset({OPENID, EMAIL_SCOPE, PROFILE_SCOPE})

#: PKCE methods Google accepts (case-sensitive), and the default without one.
PKCE_METHODS = ("S256", "plain")


@dataclass(frozen=True)
class EmulatorClient:
    """One registered OAuth client, as the Google API Console would hold it.

    ``javascript_origins`` are the exact origins (scheme, host, port) allowed
    to request codes with ``redirect_uri=postmessage``; ``redirect_uris`` are
    the other redirect URIs accepted, matched exactly. ``secret_generated``
    says the secret was made for the emulator (:meth:`generate`, the demo's
    dev secrets file): only such a secret is ever served at
    ``/client_secret.json``; one from an operator's config never is.
    """

    client_id: str
    client_secret: str
    javascript_origins: tuple[str, ...]
    redirect_uris: tuple[str, ...] = ()
    secret_generated: bool = False

    @classmethod
    def generate(
        cls, client_id: str, javascript_origins: Iterable[str], redirect_uris: Iterable[str] = ()
    ) -> "EmulatorClient":
        """Return a client with a fresh Google-style secret (``GOCSPX-…``) made for the emulator."""
        return cls(client_id, "GOCSPX-" + secrets.token_urlsafe(21), tuple(javascript_origins), tuple(redirect_uris),
                   secret_generated=True)


@dataclass(frozen=True)
class TestAccount:
    """A Google account the consent popup offers.

    ``sub`` is a stable 21-digit numeric string, like Google's; a
    ``hosted_domain`` becomes the ``hd`` claim (Workspace accounts).
    """

    __test__ = False  # not a pytest test class, despite the name

    email: str
    name: str
    sub: str
    hosted_domain: str | None = None
    email_verified: bool = True
    picture: str | None = None

    @property
    def given_name(self) -> str:
        """Return the first word of ``name``."""
        return self.name.split(" ", 1)[0]

    @property
    def family_name(self) -> str:
        """Return everything after the first word of ``name`` (may be empty)."""
        parts = self.name.split(" ", 1)
        return parts[1] if len(parts) > 1 else ""


DEFAULT_ACCOUNTS: tuple[TestAccount, ...] = (
    TestAccount("alice@example.com", "Alice Example", "108123456789012345671", hosted_domain="example.com"),
    TestAccount("bob@gmail.com", "Bob Gmail", "108123456789012345672"),
    TestAccount("carol@example.org", "Carol Example", "108123456789012345673", hosted_domain="example.org"),
)


class OAuthError(Exception):
    """An OAuth error reply: ``error`` is Google's code, ``description`` its text."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description


#: Scope names Google knows, in the shapes it accepts: the short sign-in names and Google's scope URLs
#: (``…/auth/name.part``; no trailing slash: Google calls ``…/auth/drive.file/`` invalid).
_SCOPE_RE = re.compile(
    r"(?:openid|email|profile)"
    r"|https://www\.googleapis\.com/auth/[a-z][a-z0-9_]*(?:[.-][a-z0-9_]+)*"
    r"|https://(?:mail|www)\.google\.com/[A-Za-z0-9/_.-]*"
)


def _valid_scope(name: str) -> bool:
    """Return True for a scope Google would accept on its consent screen (see :data:`_SCOPE_RE`)."""
    return _SCOPE_RE.fullmatch(name) is not None


def ordered_scopes(scope: str | Iterable[str]) -> tuple[str, ...]:
    """Return the scopes of a space-separated string (or iterable) as Google expands and orders them.

    ``email`` and ``profile`` become their ``userinfo`` URLs, duplicates go,
    and the order is the request's, not sorted. An email or profile scope
    implies ``openid``, which Google reports right after the first of them:
    asked for ``email profile``, Google answers ``…/userinfo.email openid
    …/userinfo.profile`` (quoted in googleapis/google-api-python-client#1088).
    """
    names = scope.split() if isinstance(scope, str) else list(scope)
    ordered: list[str] = []
    for name in names:
        expanded = _SHORT_SCOPES.get(name, name)
        if expanded not in ordered:
            ordered.append(expanded)
        if expanded in (EMAIL_SCOPE, PROFILE_SCOPE) and OPENID not in ordered:
            ordered.append(OPENID)
    return tuple(ordered)


def expand_scopes(scope: str | Iterable[str]) -> frozenset[str]:
    """Return the scopes of :func:`ordered_scopes` as a set (for comparisons)."""
    return frozenset(ordered_scopes(scope))


def merge_scopes(first: Iterable[str], then: Iterable[str]) -> tuple[str, ...]:
    """Return ``first`` followed by the scopes of ``then`` it lacks, order kept."""
    merged = list(dict.fromkeys(first))
    merged.extend(name for name in then if name not in merged)
    return tuple(merged)


def format_scopes(scopes: Iterable[str]) -> str:
    """Return ``scopes`` as one space-separated string, in their order (Google's is not sorted)."""
    return " ".join(scopes)


def pkce_challenge(verifier: str, method: str) -> str:
    """Return the RFC 7636 code challenge of ``verifier`` for ``method`` (``S256`` or ``plain``)."""
    if method == "S256":
        digest = hashlib.sha256(verifier.encode("ascii", "replace")).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
    return verifier


#: What Google's codes look like (``4/0A…``, URL-safe); anything else is "Malformed auth code.".
_CODE_RE = re.compile(r"^4/[A-Za-z0-9_\-]{20,}$")


def _new_token(prefix: str, nbytes: int) -> str:
    return prefix + secrets.token_urlsafe(nbytes)


@dataclass
class _Grant:
    grant_id: str
    client_id: str
    sub: str
    scopes: list[str] = field(default_factory=list)


@dataclass
class Code:
    """A minted one-time authorization code and what it was issued for."""

    client_id: str
    sub: str
    scopes: tuple[str, ...]
    redirect_uri: str
    issued_at: float
    grant_id: str
    with_refresh_token: bool
    consent_shown: bool
    nonce: str | None = None
    code_challenge: str | None = None
    code_challenge_method: str | None = None
    access_type: str = "offline"
    #: Time-limited access: the refresh token this code yields works this many seconds (None: until revoked).
    refresh_token_ttl: float | None = None


@dataclass
class _RefreshToken:
    client_id: str
    sub: str
    scopes: tuple[str, ...]
    grant_id: str
    #: Time-limited access: POSIX seconds after which it answers invalid_grant (None: until revoked).
    expires_at: float | None = None


@dataclass
class _AccessToken:
    client_id: str
    sub: str
    scopes: tuple[str, ...]
    grant_id: str
    expires_at: float
    access_type: str = "online"


@dataclass
class IssuedTokens:
    """The outcome of a successful token request, before it becomes JSON.

    ``id_token_claims`` is None when ``openid`` was not granted; the caller
    signs the claims (faults may tamper with them first).
    """

    access_token: str
    expires_in: int
    scopes: tuple[str, ...]
    refresh_token: str | None
    id_token_claims: dict | None
    account: TestAccount
    #: Time-limited access: seconds the refresh token still works (Google's ``refresh_token_expires_in``).
    refresh_token_expires_in: int | None = None


class State:
    """Grants, codes and tokens of one emulator; see the module docstring.

    ``clock`` returns POSIX seconds; tests inject one to move time forward.
    """

    def __init__(
        self,
        *,
        clients: Iterable[EmulatorClient],
        accounts: Iterable[TestAccount],
        code_ttl: float,
        access_token_ttl: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.clients = {client.client_id: client for client in clients}
        self.accounts = tuple(accounts)
        self.code_ttl = code_ttl
        self.access_token_ttl = access_token_ttl
        self.rotate_refresh_tokens = False
        self.clock = clock
        self._grants: dict[tuple[str, str], _Grant] = {}
        self._codes: dict[str, Code] = {}
        self._refresh_tokens: dict[str, _RefreshToken] = {}
        self._access_tokens: dict[str, _AccessToken] = {}
        self._consents: dict[str, tuple[float, dict]] = {}
        #: Where the emulator serves account pictures (its base URL; None before binding).
        self.picture_base: str | None = None
        #: Called after every change worth keeping (None: nobody keeps it).
        self.on_change: Callable[[], None] | None = None

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    # -- persistence -------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Return what Google would remember as a JSON-ready dict (see :meth:`restore`).

        Expired codes and access tokens are left out; open consent pages too.
        """
        now = self.clock()
        return {
            "clients": [_dump(client) for client in self.clients.values()],
            "grants": [_dump(grant) for grant in self._grants.values()],
            "codes": {code: _dump(rec) for code, rec in self._codes.items() if now - rec.issued_at < self.code_ttl},
            "refresh_tokens": {token: _dump(rec) for token, rec in self._refresh_tokens.items()},
            "access_tokens": {
                token: _dump(rec) for token, rec in self._access_tokens.items() if rec.expires_at > now
            },
            "settings": {
                "rotate_refresh_tokens": self.rotate_refresh_tokens,
                "access_token_ttl": self.access_token_ttl,
                "code_ttl": self.code_ttl,
            },
        }

    def restore(self, document: dict[str, Any]) -> None:
        """Load a :meth:`snapshot` document into this state.

        Clients given to the constructor win over stored ones of the same id
        (the operator's config is newer than the folder); records of test
        accounts that no longer exist are dropped. Raise ValueError or
        TypeError for a malformed document.
        """
        given = self.clients
        self.clients = {c.client_id: c for c in (_load(EmulatorClient, d) for d in document.get("clients", []))}
        self.clients.update(given)
        subs = {account.sub for account in self.accounts}
        grants = [_load(_Grant, d) for d in document.get("grants", [])]
        self._grants = {(g.client_id, g.sub): g for g in grants if g.sub in subs}
        self._codes = {k: _load(Code, d) for k, d in document.get("codes", {}).items()}
        self._refresh_tokens = {k: _load(_RefreshToken, d) for k, d in document.get("refresh_tokens", {}).items()}
        self._access_tokens = {k: _load(_AccessToken, d) for k, d in document.get("access_tokens", {}).items()}
        settings = document.get("settings", {})
        self.rotate_refresh_tokens = bool(settings.get("rotate_refresh_tokens", self.rotate_refresh_tokens))
        self.access_token_ttl = float(settings.get("access_token_ttl", self.access_token_ttl))
        self.code_ttl = float(settings.get("code_ttl", self.code_ttl))

    # -- lookups ---------------------------------------------------------

    def client(self, client_id: str) -> EmulatorClient:
        """Return the client ``client_id``; raise OAuthError ``invalid_client`` if unknown."""
        try:
            return self.clients[client_id]
        except KeyError:
            raise OAuthError("invalid_client", "The OAuth client was not found.") from None

    def account(self, email_or_sub: str) -> TestAccount:
        """Return the test account with that email (case-insensitive) or sub; raise KeyError."""
        wanted = email_or_sub.lower()
        for account in self.accounts:
            if account.email.lower() == wanted or account.sub == email_or_sub:
                return account
        raise KeyError(email_or_sub)

    def authenticate(self, client_id: str | None, client_secret: str | None) -> EmulatorClient:
        """Return the client whose id and secret these are.

        Raise OAuthError as Google's token endpoint answers: ``invalid_request``
        "Could not determine client ID from request." without a client id,
        ``invalid_client`` "The OAuth client was not found." for an unknown
        one, ``invalid_request`` "client_secret is missing." without a secret
        (a web client must send it even with PKCE), ``invalid_client``
        "Unauthorized" for a wrong one.
        """
        if not client_id:
            raise OAuthError("invalid_request", "Could not determine client ID from request.")
        client = self.client(client_id)
        if not client_secret:
            raise OAuthError("invalid_request", "client_secret is missing.")
        if not secrets.compare_digest(client_secret.encode(), client.client_secret.encode()):
            raise OAuthError("invalid_client", "Unauthorized")
        return client

    def grant_revoked(self, client_id: str, email_or_sub: str) -> bool:
        """Return True when that user has no live grant for ``client_id`` (revoked or never given)."""
        return (client_id, self.account(email_or_sub).sub) not in self._grants

    # -- consent ---------------------------------------------------------

    def validate_auth_request(self, args: dict[str, str | None]) -> dict[str, str | None]:
        """Check the query of an authorization request as Google does; return it.

        Raise OAuthError with Google's words: ``invalid_request`` "Missing
        required parameter: client_id" / "…: redirect_uri" / "…: scope",
        "Required parameter is missing: response_type", an unknown
        ``code_challenge_method``, ``access_type`` or ``prompt`` value; ``invalid_client`` (unknown client),
        ``redirect_uri_mismatch`` (unregistered redirect URI),
        ``origin_mismatch`` (with ``redirect_uri=postmessage``, an ``origin``
        that is not exactly one of the client's JavaScript origins),
        ``unsupported_response_type``.
        """
        if not args.get("client_id"):
            raise OAuthError("invalid_request", "Missing required parameter: client_id")
        client = self.client(args["client_id"] or "")
        redirect_uri = args.get("redirect_uri")
        if not redirect_uri:
            raise OAuthError("invalid_request", "Missing required parameter: redirect_uri")
        if redirect_uri == "postmessage":
            if args.get("origin") not in client.javascript_origins:
                raise OAuthError("origin_mismatch", "The origin of this request is not registered for this client.")
        elif redirect_uri not in client.redirect_uris:
            raise OAuthError("redirect_uri_mismatch", "The redirect URI is not registered for this client.")
        response_type = args.get("response_type")
        if not response_type:
            raise OAuthError("invalid_request", "Required parameter is missing: response_type")
        if response_type != "code":
            raise OAuthError("unsupported_response_type", f"Invalid response_type: {response_type}")
        names = (args.get("scope") or "").split()
        if not names:
            raise OAuthError("invalid_request", "Missing required parameter: scope")
        invalid = [name for name in names if not _valid_scope(name)]
        if invalid:
            valid = [name for name in ordered_scopes(n for n in names if _valid_scope(n)) if name != OPENID or
                     OPENID in names]
            listed = f"valid=[{', '.join(valid)}], " if valid else ""
            raise OAuthError("invalid_scope", f"Some requested scopes were invalid. {{{listed}invalid=[{', '.join(invalid)}]}}")
        access_type = args.get("access_type")
        if access_type and access_type not in ("online", "offline"):
            raise OAuthError("invalid_request", f"Invalid parameter value for access_type: '{access_type}' is not valid")
        prompt = args.get("prompt")
        if prompt and not set(prompt.split(" ")) <= {"none", "consent", "select_account"}:
            raise OAuthError("invalid_request", f"Invalid parameter value for prompt: Invalid prompt: {prompt}")
        method = args.get("code_challenge_method")
        if args.get("code_challenge") and method is not None and method not in PKCE_METHODS:
            raise OAuthError(
                "invalid_request",
                f"Invalid parameter value for code_challenge_method: '{method}' is not a valid CodeChallengeMethod",
            )
        return dict(args)

    def open_consent(self, request: dict[str, str | None]) -> str:
        """Remember a validated authorization request shown to the user; return its form token.

        The token is single-use and binds the answer to these exact parameters,
        so the consent form cannot be replayed or pointed at another origin.
        """
        now = self.clock()
        for token in [t for t, (at, _) in self._consents.items() if now - at > CONSENT_TTL]:
            del self._consents[token]
        token = secrets.token_urlsafe(24)
        self._consents[token] = (now, dict(request))
        return token

    def take_consent(self, token: str) -> dict[str, str | None] | None:
        """Return (and forget) the request behind a consent form token; None if unknown or stale."""
        opened = self._consents.pop(token, None)
        if opened is None or self.clock() - opened[0] > CONSENT_TTL:
            return None
        return opened[1]

    def consent(
        self,
        client_id: str,
        email: str,
        scope: str,
        *,
        redirect_uri: str = "postmessage",
        prompt: str | None = None,
        access_type: str = "offline",
        include_granted_scopes: bool = False,
        nonce: str | None = None,
        unticked: Iterable[str] = (),
        code_challenge: str | None = None,
        code_challenge_method: str | None = None,
        refresh_token_ttl: float | None = None,
    ) -> tuple[str, Code]:
        """Record that the user ``email`` consented to ``scope`` for ``client_id``; mint a code.

        ``unticked`` are scopes the user unticked on the granular consent
        screen: they are not granted (the sign-in scopes cannot be unticked,
        as on Google's screen). ``code_challenge`` binds the code to a PKCE
        verifier (``code_challenge_method`` defaults to ``plain``, as at
        Google). ``refresh_token_ttl``: the user granted time-limited access
        (seconds; the exchange answers ``refresh_token_expires_in`` and the
        refresh token stops working after it). Return ``(code, Code)``. Raise KeyError for an unknown
        account and OAuthError ``invalid_client`` for an unknown client.
        """
        self.client(client_id)
        account = self.account(email)
        refused = expand_scopes(unticked) - IDENTITY_SCOPES
        requested = tuple(name for name in ordered_scopes(scope) if name not in refused)
        key = (client_id, account.sub)
        grant = self._grants.get(key)
        first = grant is None
        if grant is None:
            grant = self._grants[key] = _Grant(secrets.token_hex(8), client_id, account.sub)
        prompts = set((prompt or "").split())
        consent_shown = first or "consent" in prompts
        code_scopes = merge_scopes(requested, grant.scopes) if include_granted_scopes else requested
        grant.scopes = list(merge_scopes(grant.scopes, requested))
        code = _new_token("4/0A", 48)
        record = Code(
            client_id=client_id,
            sub=account.sub,
            scopes=code_scopes,
            redirect_uri=redirect_uri,
            issued_at=self.clock(),
            grant_id=grant.grant_id,
            with_refresh_token=access_type == "offline" and consent_shown,
            consent_shown=consent_shown,
            nonce=nonce,
            code_challenge=code_challenge or None,
            code_challenge_method=(code_challenge_method or "plain") if code_challenge else None,
            access_type=access_type,
            refresh_token_ttl=refresh_token_ttl if refresh_token_ttl and refresh_token_ttl > 0 else None,
        )
        self._codes[code] = record
        self._changed()
        log.info("consent recorded (first=%s, refresh_token=%s)", first, record.with_refresh_token)
        return code, record

    # -- token endpoint --------------------------------------------------

    def _grant_alive(self, client_id: str, sub: str, grant_id: str) -> bool:
        grant = self._grants.get((client_id, sub))
        return grant is not None and grant.grant_id == grant_id

    def exchange_code(
        self,
        client: EmulatorClient,
        code: str | None,
        redirect_uri: str | None,
        code_verifier: str | None = None,
    ) -> IssuedTokens:
        """Spend ``code`` for ``client``; return the tokens.

        Raise OAuthError: ``invalid_request`` for a missing parameter,
        ``invalid_grant`` for an unknown, spent, expired or revoked code or
        one issued to another client, ``redirect_uri_mismatch`` when
        ``redirect_uri`` differs from the one the code was issued for, and
        ``invalid_grant`` with Google's PKCE words: "Missing code verifier."
        (the code has a challenge, no verifier came), "Invalid code
        verifier." (it does not match), "code_verifier or verifier is not
        needed" (a verifier for a code issued without a challenge). The code
        stays usable after a redirect URI or PKCE refusal, as at Google,
        where clients retry the exchange without the verifier.
        """
        if not code:
            raise OAuthError("invalid_request", "Missing required parameter: code")
        if redirect_uri is None:
            raise OAuthError("invalid_request", "Missing parameter: redirect_uri")
        record = self._codes.get(code)
        if record is None:
            raise OAuthError("invalid_grant", "Malformed auth code." if not _CODE_RE.match(code) else "Bad Request")
        if record.client_id != client.client_id:
            raise OAuthError("invalid_grant", "Bad Request")
        if redirect_uri != record.redirect_uri:
            raise OAuthError("redirect_uri_mismatch", "Bad Request")
        if record.code_challenge is not None:
            if not code_verifier:
                raise OAuthError("invalid_grant", "Missing code verifier.")
            expected = pkce_challenge(code_verifier, record.code_challenge_method or "plain")
            if not secrets.compare_digest(expected.encode(), record.code_challenge.encode()):
                raise OAuthError("invalid_grant", "Invalid code verifier.")
        elif code_verifier:
            raise OAuthError("invalid_grant", "code_verifier or verifier is not needed")
        del self._codes[code]
        if self.clock() - record.issued_at >= self.code_ttl or not self._grant_alive(
            record.client_id, record.sub, record.grant_id
        ):
            self._changed()
            raise OAuthError("invalid_grant", "Bad Request")
        refresh_token = None
        expires_at = None
        if record.with_refresh_token:
            refresh_token = _new_token("1//0", 64)
            if record.refresh_token_ttl:
                expires_at = self.clock() + record.refresh_token_ttl
            self._refresh_tokens[refresh_token] = _RefreshToken(
                record.client_id, record.sub, record.scopes, record.grant_id, expires_at
            )
        issued = self._issue(
            record.client_id, record.sub, record.scopes, record.grant_id, refresh_token, record.nonce,
            access_type="offline" if record.access_type == "offline" else "online",
        )
        if expires_at is not None:
            issued.refresh_token_expires_in = int(record.refresh_token_ttl or 0)
        return issued

    def refresh(self, client: EmulatorClient, refresh_token: str | None, scope: str | None) -> IssuedTokens:
        """Use ``refresh_token`` for ``client``; return a new access token (and ID token).

        With :attr:`rotate_refresh_tokens` on, a new refresh token replaces
        the old one, which stops working. Raise OAuthError:
        ``invalid_request`` for a missing token, ``invalid_grant`` for an
        unknown, expired or revoked one, ``unauthorized_client`` for one
        issued to another client, ``invalid_scope`` when ``scope`` asks for
        more than the token carries.
        """
        if not refresh_token:
            raise OAuthError("invalid_request", "Missing required parameter: refresh_token")
        record = self._refresh_tokens.get(refresh_token)
        if record is None or not self._grant_alive(record.client_id, record.sub, record.grant_id) or (
                record.expires_at is not None and record.expires_at <= self.clock()):
            raise OAuthError("invalid_grant", "Token has been expired or revoked.")
        if record.client_id != client.client_id:
            raise OAuthError("unauthorized_client", "Unauthorized")
        scopes = record.scopes
        if scope:
            wanted = ordered_scopes(scope)
            if not set(wanted) <= set(record.scopes):
                raise OAuthError("invalid_scope", "Bad Request")
            scopes = wanted
        new_refresh_token = None
        if self.rotate_refresh_tokens:
            del self._refresh_tokens[refresh_token]
            new_refresh_token = _new_token("1//0", 64)
            self._refresh_tokens[new_refresh_token] = record
        return self._issue(
            record.client_id, record.sub, scopes, record.grant_id, new_refresh_token, None, access_type="offline"
        )

    def _issue(
        self,
        client_id: str,
        sub: str,
        scopes: tuple[str, ...],
        grant_id: str,
        refresh_token: str | None,
        nonce: str | None,
        *,
        access_type: str = "online",
    ) -> IssuedTokens:
        now = self.clock()
        access_token = _new_token("ya29.a0", 96)
        self._access_tokens[access_token] = _AccessToken(
            client_id, sub, scopes, grant_id, now + self.access_token_ttl, access_type
        )
        account = self.account(sub)
        claims = None
        if OPENID in scopes:
            claims = self.id_token_claims(client_id, account, frozenset(scopes), int(now), nonce)
        self._changed()
        return IssuedTokens(
            access_token=access_token,
            expires_in=max(int(self.access_token_ttl) - 1, 1),  # Google's are positive integers
            scopes=scopes,
            refresh_token=refresh_token,
            id_token_claims=claims,
            account=account,
        )

    def picture(self, account: TestAccount) -> str | None:
        """Return the account's picture URL: its own, or the one the emulator serves (None before binding)."""
        if account.picture:
            return account.picture
        if not self.picture_base:
            return None
        return f"{self.picture_base}/a/{account.sub}=s96-c"

    def id_token_claims(
        self, client_id: str, account: TestAccount, scopes: frozenset[str], now: int, nonce: str | None
    ) -> dict:
        """Return the ID token claims Google would sign for ``account`` (``at_hash`` added later).

        Email claims need the email scope and profile claims (``name``,
        ``picture``, ``given_name``, ``family_name``) the profile scope, as
        with Google.
        """
        claims: dict = {"iss": GOOGLE_ISSUER, "azp": client_id, "aud": client_id, "sub": account.sub}
        if account.hosted_domain:
            claims["hd"] = account.hosted_domain
        if EMAIL_SCOPE in scopes:
            claims["email"] = account.email
            claims["email_verified"] = account.email_verified
        if nonce:
            claims["nonce"] = nonce
        if PROFILE_SCOPE in scopes:
            claims["name"] = account.name
            picture = self.picture(account)
            if picture:
                claims["picture"] = picture
            claims["given_name"] = account.given_name
            if account.family_name:
                claims["family_name"] = account.family_name
        claims["iat"] = now
        claims["exp"] = now + 3600
        return claims

    # -- revocation, userinfo, switches ----------------------------------

    def revoke(self, token: str | None) -> None:
        """End the whole grant that ``token`` (access or refresh) belongs to.

        Raise OAuthError ``invalid_request`` for a missing token and
        ``invalid_token`` for an unknown, expired or already revoked one.
        """
        if not token:
            raise OAuthError("invalid_request", "Missing required parameter: token")
        record: _RefreshToken | _AccessToken | None = self._refresh_tokens.get(token)
        if record is None:
            record = self._access_tokens.get(token)
            if record is not None and record.expires_at <= self.clock():
                record = None
        if record is None or not self._grant_alive(record.client_id, record.sub, record.grant_id):
            raise OAuthError("invalid_token", "Token expired or revoked")
        self._revoke_grant(record.client_id, record.sub)

    def _revoke_grant(self, client_id: str, sub: str) -> None:
        grant = self._grants.pop((client_id, sub), None)
        if grant is None:
            return
        for table in (self._refresh_tokens, self._access_tokens, self._codes):
            for token in [t for t, rec in table.items() if rec.grant_id == grant.grant_id]:
                del table[token]
        self._changed()
        log.info("grant revoked")

    def live_access_token(self, access_token: str | None) -> _AccessToken | None:
        """Return the record of a live access token; None if missing, unknown, expired or revoked."""
        record = self._access_tokens.get(access_token or "")
        if (
            record is None
            or record.expires_at <= self.clock()
            or not self._grant_alive(record.client_id, record.sub, record.grant_id)
        ):
            return None
        return record

    def tokeninfo_access_token(self, access_token: str | None, version: int = 3) -> dict | None:
        """Return Google's tokeninfo answer for a live access token, or None (Google: "Invalid Value").

        ``version`` 3 (``/tokeninfo``, ``/oauth2/v3/tokeninfo``): ``azp``,
        ``aud``, ``sub``, ``scope``, ``exp``, ``expires_in``, ``email``,
        ``email_verified``, ``access_type``, every value a string. ``version``
        2 (``/oauth2/v2/tokeninfo``): the oauth2 v2 ``Tokeninfo`` schema,
        ``issued_to``, ``audience``, ``user_id``, ``scope``, ``expires_in``
        (integer), ``email``, ``verified_email`` (boolean), ``access_type``.
        """
        record = self.live_access_token(access_token)
        if record is None:
            return None
        account = self.account(record.sub)
        expires_in = max(int(record.expires_at - self.clock()), 0)
        scope = format_scopes(record.scopes)
        with_email = EMAIL_SCOPE in record.scopes
        if version == 2:
            info: dict = {"issued_to": record.client_id, "audience": record.client_id, "user_id": account.sub,
                          "scope": scope, "expires_in": expires_in}
            if with_email:
                info.update(email=account.email, verified_email=account.email_verified)
            info["access_type"] = record.access_type
            return info
        info = {"azp": record.client_id, "aud": record.client_id, "sub": account.sub, "scope": scope,
                "exp": str(int(record.expires_at)), "expires_in": str(expires_in)}
        if with_email:
            info.update(email=account.email, email_verified=str(account.email_verified).lower())
        info["access_type"] = record.access_type
        return info

    def userinfo(self, access_token: str | None) -> dict:
        """Return the OpenID Connect userinfo answer (``/v1/userinfo``, ``/oauth2/v3/userinfo``) for a live token.

        Raise OAuthError ``invalid_request`` ("Invalid Credentials") for a
        missing, unknown, expired or revoked token.
        """
        record, account = self._userinfo_caller(access_token)
        info: dict = {"sub": account.sub}
        if PROFILE_SCOPE in record.scopes:
            info.update(self._userinfo_profile(account))
        if EMAIL_SCOPE in record.scopes:
            info.update(email=account.email, email_verified=account.email_verified)
        if account.hosted_domain:
            info["hd"] = account.hosted_domain
        return info

    def _userinfo_caller(self, access_token: str | None) -> tuple[_AccessToken, TestAccount]:
        """Return the live ``access_token``'s record and its account, for both userinfo answers.

        Raise OAuthError ``invalid_request`` ("Invalid Credentials") for a token that is not live.
        """
        record = self.live_access_token(access_token)
        if record is None:
            raise OAuthError("invalid_request", "Invalid Credentials")
        return record, self.account(record.sub)

    def _userinfo_profile(self, account: TestAccount) -> dict:
        """Return the profile fields of both userinfo answers, in Google's order."""
        profile: dict = {"name": account.name, "given_name": account.given_name}
        if account.family_name:
            profile["family_name"] = account.family_name
        picture = self.picture(account)
        if picture:
            profile["picture"] = picture
        return profile

    def userinfo_v2(self, access_token: str | None) -> dict:
        """Return the ``oauth2/v2/userinfo`` answer (also ``oauth2/v1/userinfo``, ``userinfo/v2/me``).

        The schema of Google's oauth2 v2 discovery document: ``id`` (not
        ``sub``), ``verified_email`` (not ``email_verified``). Raise
        OAuthError ``invalid_request`` for a token that is not live.
        """
        record, account = self._userinfo_caller(access_token)
        info: dict = {"id": account.sub}
        if EMAIL_SCOPE in record.scopes:
            info.update(email=account.email, verified_email=account.email_verified)
        if PROFILE_SCOPE in record.scopes:
            info.update(self._userinfo_profile(account))
        if account.hosted_domain:
            info["hd"] = account.hosted_domain
        return info

    def expire_refresh_tokens(self, client_id: str, email_or_sub: str) -> int:
        """Make every refresh token of that user for ``client_id`` answer ``invalid_grant``.

        The grant itself stays (later consents give no refresh token, as
        with Google when a token expires unused). Return how many expired.
        Raise KeyError for an unknown account.
        """
        sub = self.account(email_or_sub).sub
        expired = [t for t, rec in self._refresh_tokens.items() if rec.client_id == client_id and rec.sub == sub]
        for token in expired:
            del self._refresh_tokens[token]
        if expired:
            self._changed()
        return len(expired)

    # -- what Cross-Account Protection (emulator/risc.py) needs -------------

    def clients_granted(self, sub: str) -> list[str]:
        """Return the client ids holding a live grant of ``sub``."""
        return sorted(client_id for (client_id, grant_sub) in self._grants if grant_sub == sub)

    def refresh_tokens_of(self, client_id: str, sub: str) -> list[str]:
        """Return the live refresh tokens of ``sub`` for ``client_id``, oldest first."""
        return [t for t, rec in self._refresh_tokens.items() if rec.client_id == client_id and rec.sub == sub]

    def revoke_refresh_token(self, token: str) -> bool:
        """Make one refresh token answer ``invalid_grant`` (the grant stays); return whether it was live."""
        if self._refresh_tokens.pop(token, None) is None:
            return False
        self._changed()
        return True

    def revoke_grant(self, client_id: str, sub: str) -> bool:
        """End the grant of ``sub`` for ``client_id`` (its tokens stop working); return whether one was live."""
        alive = (client_id, sub) in self._grants
        self._revoke_grant(client_id, sub)
        return alive


def _dump(record: Any) -> dict[str, Any]:
    """Return a dataclass record as a JSON-ready dict (sets and tuples as sorted lists / lists)."""
    document = dataclasses.asdict(record)
    for name, value in document.items():
        if isinstance(value, (set, frozenset)):
            document[name] = sorted(value)
        elif isinstance(value, tuple):
            document[name] = list(value)
    return document


def _load(cls: Any, document: dict[str, Any]) -> Any:
    """Return ``cls`` built from a :func:`_dump` dict, its fields retyped as the class declares them.

    Unknown keys are ignored (a field dropped since); raise TypeError for a
    missing required field.
    """
    if not isinstance(document, dict):
        raise TypeError(f"{cls.__name__}: expected an object")
    values: dict[str, Any] = {}
    for spec in dataclasses.fields(cls):
        if spec.name not in document:
            continue
        value = document[spec.name]
        kind = str(spec.type)
        if kind.startswith("frozenset"):
            value = frozenset(value)
        elif kind.startswith("set"):
            value = set(value)
        elif kind.startswith("tuple"):
            value = tuple(value)
        values[spec.name] = value
    return cls(**values)
