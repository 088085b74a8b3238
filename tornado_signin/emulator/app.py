"""The :class:`Emulator` object and :func:`start_emulator`.

An :class:`Emulator` owns one :class:`~.state.State` (grants, codes, tokens),
one :class:`~.keys.KeySet`, one :class:`~.faults.FaultPlan` and the request
counters; :meth:`Emulator.make_app` mounts the handlers on a Tornado
application. Every test-only HTTP path has a Python method here of the same
effect, for tests that run in-process.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import re
import socket
import time
from collections.abc import Callable, Iterable
from importlib import resources
from typing import Any

import tornado.httpserver
import tornado.netutil
import tornado.template
import tornado.web

from .faults import FaultPlan
from .drive import DRIVE_HANDLERS
from .handlers import HANDLERS, NotFoundHandler, path_only
from .risc import RISC_HANDLERS, RiscEmulator
from .keys import DEFAULT_LEAD, KeySet, at_hash
from .persist import EmulatorStateError, StateDir
from .state import DEFAULT_ACCOUNTS, GOOGLE_ISSUER, EmulatorClient, IssuedTokens, State, TestAccount, format_scopes

__all__ = ["Emulator", "start_emulator", "GOOGLE_ISSUER"]

log = logging.getLogger(__name__)


_SETTINGS = ("rotate_refresh_tokens", "access_token_ttl", "code_ttl", "issuer_without_scheme", "gapi_init_error")


def _load_templates() -> tornado.template.DictLoader:
    folder = resources.files(__package__ or "tornado_signin.emulator") / "templates"
    texts = {
        entry.name: entry.read_text(encoding="utf-8")
        for entry in folder.iterdir()
        if entry.name.endswith((".html", ".js"))
    }
    return tornado.template.DictLoader(texts, whitespace="all")


def _log_request(handler: tornado.web.RequestHandler) -> None:
    status = handler.get_status()
    level = logging.INFO if status < 500 else logging.WARNING
    log.log(
        level,
        "%d %s %s %.1fms",
        status,
        handler.request.method,
        path_only(handler.request.uri or ""),
        1000.0 * handler.request.request_time(),
    )


class Emulator:
    """A local stand-in for Google's OAuth 2.0 / OpenID Connect endpoints.

    ``clients`` are the registered OAuth clients, ``accounts`` the test users
    the consent popup offers. ``base_url`` (no trailing slash) is where the
    emulator is reachable; :func:`start_emulator` sets it after binding.
    With ``development`` off, the test-only ``/emulator/...`` paths answer
    403. ``clock`` (POSIX seconds) is injectable so tests can expire codes
    and access tokens without sleeping. ``certs_max_age`` is the max-age
    of the certs endpoints' ``Cache-Control``. ``key_schedule`` overrides
    the signing keys' rotation schedule (``period``, ``lead``, ``linger`` in
    seconds, see :class:`~.keys.KeySet`; ``period=None`` rotates only on
    request); ``lead`` must be at least ``certs_max_age``.

    ``stats`` counts requests per endpoint name, each dotted prefix too:
    ``auth``, ``token`` (and ``token.authorization_code``,
    ``token.refresh_token``), ``revoke``, ``userinfo``, ``certs`` (and
    ``certs.pem``, ``certs.jwks``), ``discovery``, ``client_secret``,
    ``script`` (``script.gsi``, ``script.platform``), ``drive``
    (``drive.files.list``, ``drive.files.get``). The test-only paths
    are not counted. ``faults`` is the :class:`~.faults.FaultPlan`.

    ``state_dir`` (a folder path) keeps clients, grants, codes, tokens,
    signing keys and switches across restarts (see :mod:`.persist`); the
    folder is locked until :meth:`close`. Without it everything lives in
    memory. Raise :class:`~.persist.EmulatorStateError` when the folder is in
    use or its file is unreadable or corrupt.
    """

    def __init__(
        self,
        *,
        clients: Iterable[EmulatorClient],
        accounts: Iterable[TestAccount] = DEFAULT_ACCOUNTS,
        base_url: str | None = None,
        development: bool = True,
        code_ttl: float = 600,
        access_token_ttl: float = 3600,
        clock: Callable[[], float] = time.time,
        certs_max_age: int = 3600,
        state_dir: str | os.PathLike[str] | None = None,
        key_schedule: dict[str, Any] | None = None,
    ) -> None:
        self.state = State(
            clients=clients, accounts=accounts, code_ttl=code_ttl, access_token_ttl=access_token_ttl, clock=clock
        )
        if not self.state.accounts:
            raise ValueError("the emulator needs at least one test account")
        self.development = development
        self.certs_max_age = certs_max_age
        self._key_schedule = {"clock": clock, **dict(key_schedule or {})}
        if self._key_schedule.get("lead", DEFAULT_LEAD) < certs_max_age:
            raise ValueError("key_schedule lead must be at least certs_max_age (caches must see a key before it signs)")
        self.keys = KeySet(**self._key_schedule)
        self.faults = FaultPlan()
        #: Cross-Account Protection: the RISC stream, its pushes and the service-account key (:mod:`.risc`).
        self.risc = RiscEmulator(self)
        self.stats: collections.Counter[str] = collections.Counter()
        self.templates = _load_templates()
        self.issuer_without_scheme = False
        #: The error platform.js's gapi.auth2.init reports ("" = init succeeds); not persisted.
        self.gapi_init_error = ""
        self._defaults = {"code_ttl": code_ttl, "access_token_ttl": access_token_ttl}
        self._base_url: str | None = None
        self.base_url = base_url
        self._restored: tuple[int, int, int] | None = None
        self._state_dir = StateDir(state_dir) if state_dir is not None else None
        if self._state_dir is not None:
            try:
                self._restore(self._state_dir)
            except BaseException:
                self._state_dir.close()
                raise
            self.state.on_change = self.keys.on_change = self.persist
            self.persist()

    def _restore(self, folder: StateDir) -> None:
        document = folder.load()
        if document is None:
            return
        try:
            self.state.restore(document)
            self.keys = KeySet.from_json(document.get("keys", []), **self._key_schedule)
            self.issuer_without_scheme = bool(document.get("settings", {}).get("issuer_without_scheme", False))
            self.risc.restore(document.get("risc"))
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise EmulatorStateError(f"emulator state file {folder.file} is malformed ({exc!r})") from None
        # Said when the emulator starts serving (make_app), not here: the demo opens the emulator (its
        # folder's lock, its key file) before its ports, and a start refused for a busy port prints one line.
        self._restored = (len(self.state.clients), len(document.get("grants", [])),
                          len(document.get("refresh_tokens", {})))

    @property
    def state_dir(self) -> str | None:
        """The state folder's path, or None when the emulator keeps its state in memory."""
        return str(self._state_dir.path) if self._state_dir is not None else None

    def persist(self) -> None:
        """Write the state folder now (no-op without one); called after every change.

        Raise :class:`~.persist.EmulatorStateError` when the write fails.
        """
        if self._state_dir is None:
            return
        document = self.state.snapshot()
        document["settings"]["issuer_without_scheme"] = self.issuer_without_scheme
        document["keys"] = self.keys.to_json()
        document["risc"] = self.risc.to_json()
        self._state_dir.save(document)

    def close(self) -> None:
        """Release the state folder (idempotent); the emulator must not be used afterwards."""
        if self._state_dir is not None:
            self._state_dir.close()

    @property
    def base_url(self) -> str | None:
        """The emulator's URL without trailing slash, e.g. ``http://127.0.0.1:8081``."""
        return self._base_url

    @base_url.setter
    def base_url(self, value: str | None) -> None:
        self._base_url = value.rstrip("/") if value else None
        self.state.picture_base = self._base_url

    @property
    def drive_endpoint(self) -> str | None:
        """Drive v3's base URL at the emulator, for ``client_options={"api_endpoint": ...}``.

        Like Google's ``https://www.googleapis.com/drive/v3/``; None while
        ``base_url`` is unknown.
        """
        return f"{self._base_url}/drive/v3/" if self._base_url else None

    def make_app(self, **settings: Any) -> tornado.web.Application:
        """Return a Tornado application serving every emulator path (``settings`` pass through)."""
        if self._restored is not None:
            log.info("emulator state loaded: %d client(s), %d grant(s), %d refresh token(s)", *self._restored)
            self._restored = None
        routes = [(path, handler, {"emulator": self, **extra})
                  for path, handler, extra in HANDLERS + DRIVE_HANDLERS + RISC_HANDLERS]
        settings.setdefault("log_function", _log_request)
        return tornado.web.Application(
            routes,
            default_handler_class=NotFoundHandler,
            default_handler_args={"emulator": self},
            **settings,
        )

    # -- Python equivalents of the test-only paths ------------------------

    def mint_code(
        self,
        client_id: str,
        email: str,
        scope: str = "openid email profile",
        *,
        prompt: str | None = None,
        redirect_uri: str = "postmessage",
        access_type: str = "offline",
        include_granted_scopes: bool = False,
        nonce: str | None = None,
        unticked: Iterable[str] = (),
        code_challenge: str | None = None,
        code_challenge_method: str | None = None,
        refresh_token_ttl: float | None = None,
    ) -> str:
        """Return a one-time code, exactly as if ``email`` had just consented in the popup.

        ``unticked``: scopes the user unticked on the granular consent screen
        (not granted; the sign-in scopes cannot be unticked).
        ``code_challenge`` / ``code_challenge_method``: PKCE, as the
        authorization request would carry them. Raise KeyError for an
        unknown account and :class:`~.state.OAuthError` for an unknown client.
        """
        code, _ = self.state.consent(
            client_id,
            email,
            scope,
            redirect_uri=redirect_uri,
            prompt=prompt,
            access_type=access_type,
            include_granted_scopes=include_granted_scopes,
            nonce=nonce,
            unticked=unticked,
            code_challenge=code_challenge,
            code_challenge_method=code_challenge_method,
            refresh_token_ttl=refresh_token_ttl,
        )
        return code

    def rotate_keys(self, *, abrupt: bool = True) -> str:
        """Rotate the signing key now; return the new kid.

        ``abrupt`` (default; test-only): sign with the new key from now on,
        the previous key stays published. ``abrupt=False``: Google's way,
        publish the new key now and sign with it after the schedule's lead.
        """
        return self.keys.rotate(abrupt=abrupt)

    def reset(self) -> None:
        """Clear the stats, the faults and the switches (grants, codes and tokens stay)."""
        self.stats.clear()
        self.faults.clear()
        self.configure(rotate_refresh_tokens=False, issuer_without_scheme=False, gapi_init_error="", **self._defaults)

    def grant_revoked(self, client_id: str, email_or_sub: str) -> bool:
        """Return True when that user has no live grant for ``client_id`` (revoked, or never given)."""
        return self.state.grant_revoked(client_id, email_or_sub)

    def expire_refresh_tokens(self, client_id: str, email_or_sub: str) -> int:
        """Make that user's refresh tokens for ``client_id`` answer ``invalid_grant``; return how many.

        Raise KeyError for an unknown account.
        """
        return self.state.expire_refresh_tokens(client_id, email_or_sub)

    def settings(self) -> dict[str, Any]:
        """Return the current switches (see :meth:`configure`)."""
        return {
            "rotate_refresh_tokens": self.state.rotate_refresh_tokens,
            "access_token_ttl": self.state.access_token_ttl,
            "code_ttl": self.state.code_ttl,
            "issuer_without_scheme": self.issuer_without_scheme,
            "gapi_init_error": self.gapi_init_error,
        }

    def configure(
        self,
        *,
        rotate_refresh_tokens: bool | None = None,
        access_token_ttl: float | None = None,
        code_ttl: float | None = None,
        issuer_without_scheme: bool | None = None,
        gapi_init_error: str | None = None,
    ) -> dict[str, Any]:
        """Change the given switches; return all of them.

        ``rotate_refresh_tokens``: the refresh grant returns a new refresh
        token and the old one stops working. ``access_token_ttl`` /
        ``code_ttl``: lifetimes in seconds for tokens and codes issued from
        now on. ``issuer_without_scheme``: ID tokens say
        ``iss: accounts.google.com``. ``gapi_init_error``: platform.js's
        ``gapi.auth2.init(...).then(ok, fail)`` calls ``fail({error, details})``
        with this error (``"idpiframe_initialization_failed"``, what Google
        answers for a client id created after July 2022); ``""`` lets init
        succeed. Raise TypeError/ValueError for a bad value.
        """
        for name, value, kind in (
            ("rotate_refresh_tokens", rotate_refresh_tokens, bool),
            ("issuer_without_scheme", issuer_without_scheme, bool),
        ):
            if value is not None and not isinstance(value, kind):
                raise TypeError(f"{name}: expected a boolean")
        if gapi_init_error is not None and (not isinstance(gapi_init_error, str)
                                            or not re.fullmatch(r"[a-z_]{0,64}", gapi_init_error)):
            raise ValueError("gapi_init_error: expected an error code (lower case and _) or \"\"")
        for name, seconds in (("access_token_ttl", access_token_ttl), ("code_ttl", code_ttl)):
            if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, (int, float))
                                        or seconds <= 0):
                raise ValueError(f"{name}: expected a positive number of seconds")
        if rotate_refresh_tokens is not None:
            self.state.rotate_refresh_tokens = rotate_refresh_tokens
        if issuer_without_scheme is not None:
            self.issuer_without_scheme = issuer_without_scheme
        if gapi_init_error is not None:
            self.gapi_init_error = gapi_init_error
        if access_token_ttl is not None:
            self.state.access_token_ttl = access_token_ttl
        if code_ttl is not None:
            self.state.code_ttl = code_ttl
        self.persist()
        return self.settings()

    # -- documents -------------------------------------------------------

    def _require_base_url(self, base_url: str | None) -> str:
        base = (base_url or self.base_url or "").rstrip("/")
        if not base:
            raise RuntimeError("the emulator's base_url is not known yet (bind it first)")
        return base

    def client_secrets(self, client_id: str | None = None, *, base_url: str | None = None) -> dict:
        """Return the ``client_secret.json`` document of ``client_id``, pointing at the emulator.

        ``client_id`` may be omitted when exactly one client is registered.
        Raise KeyError for an unknown client and RuntimeError while
        ``base_url`` is unknown.
        """
        if client_id is None and len(self.state.clients) == 1:
            client_id = next(iter(self.state.clients))
        client = self.state.clients[client_id or ""]
        base = self._require_base_url(base_url)
        web = {
            "client_id": client.client_id,
            "project_id": "tornado-signin-emulator",
            "auth_uri": f"{base}/o/oauth2/v2/auth",
            "token_uri": f"{base}/token",
            "auth_provider_x509_cert_url": f"{base}/oauth2/v1/certs",
            "client_secret": client.client_secret,
            "javascript_origins": list(client.javascript_origins),
        }
        if client.redirect_uris:
            web["redirect_uris"] = list(client.redirect_uris)
        return {"web": web}

    def openid_configuration(self, base_url: str | None = None) -> dict:
        """Return the discovery document, Google's with the endpoints at the emulator."""
        base = self._require_base_url(base_url)
        return {
            "issuer": GOOGLE_ISSUER,
            "authorization_endpoint": f"{base}/o/oauth2/v2/auth",
            "device_authorization_endpoint": f"{base}/device/code",
            "token_endpoint": f"{base}/token",
            "userinfo_endpoint": f"{base}/v1/userinfo",
            "revocation_endpoint": f"{base}/revoke",
            "jwks_uri": f"{base}/oauth2/v3/certs",
            "response_types_supported": [
                "code",
                "token",
                "id_token",
                "code token",
                "code id_token",
                "token id_token",
                "code token id_token",
                "none",
            ],
            "response_modes_supported": ["query", "fragment", "form_post"],
            "authorization_response_iss_parameter_supported": True,
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "scopes_supported": ["openid", "email", "profile"],
            "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
            "claims_supported": [
                "aud",
                "email",
                "email_verified",
                "exp",
                "family_name",
                "given_name",
                "iat",
                "iss",
                "name",
                "picture",
                "sub",
            ],
            "code_challenge_methods_supported": ["plain", "S256"],
            "grant_types_supported": [
                "authorization_code",
                "refresh_token",
                "urn:ietf:params:oauth:grant-type:device_code",
                "urn:ietf:params:oauth:grant-type:jwt-bearer",
            ],
        }

    def tokeninfo_id_token(self, id_token: str, version: int = 3) -> dict | None:
        """Return Google's tokeninfo answer for an ID token this emulator signed and that has not expired, or None.

        ``version`` 3: the token's claims and its header's ``alg``, ``kid``,
        ``typ``, every value a string (``"email_verified": "true"``), as in
        https://developers.google.com/identity/sign-in/web/backend-auth#calling-the-tokeninfo-endpoint.
        ``version`` 2: the oauth2 v2 ``Tokeninfo`` schema (``issued_to``,
        ``audience``, ``user_id``, ``expires_in``, ``email``, ``verified_email``).
        """
        verified = self.keys.verify(id_token)
        if verified is None:
            return None
        header, claims = verified
        exp = claims.get("exp")
        now = self.state.clock()
        if not isinstance(exp, (int, float)) or isinstance(exp, bool) or exp <= now:
            return None
        if version == 2:
            info: dict[str, Any] = {"issued_to": claims.get("azp", claims.get("aud")), "audience": claims.get("aud"),
                                    "user_id": claims.get("sub"), "expires_in": int(exp - now)}
            if "email" in claims:
                info.update(email=claims["email"], verified_email=bool(claims.get("email_verified")))
            return info

        def text(value: Any) -> str:
            if isinstance(value, bool):
                return "true" if value else "false"
            return value if isinstance(value, str) else json.dumps(value)

        info = {name: text(value) for name, value in claims.items()}
        for name in ("alg", "kid", "typ"):
            if name in header:
                info[name] = text(header[name])
        return info

    def token_response(self, issued: IssuedTokens, client: EmulatorClient, endpoint: str = "token") -> dict:
        """Return the JSON answer of the token endpoint for ``issued``, with token faults applied.

        The ID token is signed here, after the ``id_token_*`` faults had
        their say; ``endpoint`` selects which faults apply.
        """
        faults = self.faults.take_token_faults(endpoint)
        body: dict[str, Any] = {"access_token": issued.access_token, "expires_in": issued.expires_in}
        if issued.refresh_token:
            body["refresh_token"] = issued.refresh_token
            if issued.refresh_token_expires_in is not None:
                body["refresh_token_expires_in"] = issued.refresh_token_expires_in
        body["scope"] = format_scopes(issued.scopes)
        body["token_type"] = "Bearer"
        if issued.id_token_claims is not None and not any(f.kind == "omit_id_token" for f in faults):
            claims = dict(issued.id_token_claims)
            claims["at_hash"] = at_hash(issued.access_token)
            if self.issuer_without_scheme or any(f.kind == "issuer_without_scheme" for f in faults):
                claims["iss"] = "accounts.google.com"
            header: dict[str, Any] = {}
            signing: dict[str, Any] = {"unset": []}
            for fault in faults:
                params = fault.params
                if fault.kind == "id_token_claims":
                    for name, seconds in params.get("shift", {}).items():
                        if isinstance(claims.get(name), (int, float)):
                            claims[name] += seconds
                    claims.update(params.get("set", {}))
                    for name in params.get("unset", []):
                        claims.pop(name, None)
                elif fault.kind == "id_token_header":
                    header.update(params.get("set", {}))
                    signing["unset"].extend(params.get("unset", []))
                elif fault.kind == "id_token_signing":
                    signing.update(method=params["method"], raw=params.get("value", ""))
            body["id_token"] = self.keys.sign(header, claims, client_secret=client.client_secret, **signing)
        for fault in faults:
            if fault.kind == "scope":
                body["scope"] = fault.params["value"]
            elif fault.kind == "token_type":
                body["token_type"] = fault.params["value"]
        return body


def start_emulator(
    *, host: str = "127.0.0.1", port: int = 0, **emulator_kwargs: Any
) -> tuple[Emulator, tornado.httpserver.HTTPServer]:
    """Build an :class:`Emulator`, bind ``host:port`` (0 = a free port) and serve on the current IOLoop.

    Set ``base_url`` to ``http://host:actual_port`` and return
    ``(emulator, server)``; stop with ``server.stop()`` and
    ``await server.close_all_connections()``.
    """
    emulator = Emulator(**emulator_kwargs)
    sockets = tornado.netutil.bind_sockets(port, host, family=socket.AF_UNSPEC)
    server = tornado.httpserver.HTTPServer(emulator.make_app())
    server.add_sockets(sockets)
    actual_port = sockets[0].getsockname()[1]
    netloc = f"[{host}]" if ":" in host else host
    emulator.base_url = f"http://{netloc}:{actual_port}"
    log.info("emulator listening on %s", emulator.base_url)
    return emulator, server
