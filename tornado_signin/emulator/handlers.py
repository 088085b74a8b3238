"""The emulator's request handlers, one per Google endpoint (plus the test-only ones).

Every handler receives the :class:`~tornado_signin.emulator.Emulator` through
``initialize()``. Handlers that count as an *endpoint* (``endpoint_name``)
add to ``Emulator.stats`` and are subject to the fault plan: transport faults
are applied in :meth:`EmulatorHandler.prepare` or, for ``drip`` and the
``after`` variants, by :meth:`EmulatorHandler.reply`.

Error bodies are Google-shaped: ``{"error": ..., "error_description": ...}``.
Log lines carry endpoint names and outcomes, never a token, code or secret;
request URLs are logged without their query string for the same reason.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import email.utils
import json
import logging
import re
import secrets
import urllib.parse
from typing import TYPE_CHECKING, Any

import tornado.http1connection
import tornado.iostream
import tornado.web

from .faults import Fault, FaultError
from .pictures import avatar_png, favicon_ico
from .state import GOOGLE_ISSUER, IDENTITY_SCOPES, OAuthError, format_scopes, ordered_scopes

if TYPE_CHECKING:
    from . import Emulator

__all__ = ["HANDLERS", "NotFoundHandler"]

log = logging.getLogger(__name__)

GRANT_TYPES = ("authorization_code", "refresh_token")
#: Grant types Google's discovery document lists that the emulator's (web) clients cannot use.
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"

#: Statuses of OAuth errors that are not 400.
_ERROR_STATUS = {"invalid_client": 401, "unauthorized_client": 401}

_HOST_RE = re.compile(r"^[A-Za-z0-9.\-]+(:\d{1,5})?$|^\[[0-9A-Fa-f:.]+\](:\d{1,5})?$")
_JS_IDENTIFIER_RE = re.compile(r"^[A-Za-z_$][A-Za-z0-9_$]{0,99}$")


def _error_body(error: str, description: str) -> dict:
    return {"error": error, "error_description": description}


def _default_fault_body(status: int) -> dict:
    if status >= 500:
        return _error_body("internal_failure", "Backend Error")
    if status == 429:
        return _error_body("rate_limit_exceeded", "Rate Limit Exceeded")
    return _error_body("invalid_request", "Bad Request")


def _script_json(value: Any) -> str:
    """Return ``value`` as JSON safe inside an HTML ``<script>`` data block."""
    return json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def path_only(uri: str) -> str:
    """Return ``uri`` without its query string (tokens may travel there; logs must not see them)."""
    return uri.split("?", 1)[0]


class EmulatorHandler(tornado.web.RequestHandler):
    """Base of every emulator handler: stats, faults, JSON replies, Google-shaped errors."""

    def initialize(self, emulator: "Emulator", endpoint: str = "") -> None:
        self.emulator = emulator
        self.endpoint = endpoint
        self._fault: Fault | None = None
        self._gone = asyncio.Event()

    def endpoint_name(self) -> str:
        """Return the name this request counts under in stats and faults ("" = none)."""
        return self.endpoint

    def set_default_headers(self) -> None:
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Cache-Control", "no-cache, no-store, max-age=0, must-revalidate")
        self.set_header("Pragma", "no-cache")

    def compute_etag(self) -> None:
        return None

    def on_connection_close(self) -> None:
        self._gone.set()

    async def prepare(self) -> None:
        name = self.endpoint_name()
        if not name:
            return
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            self.emulator.stats[".".join(parts[:i])] += 1
        fault = self.emulator.faults.take_transport(name)
        if fault is None:
            return
        if fault.kind == "delay" and not fault.params.get("after"):
            await asyncio.sleep(fault.params["seconds"])
        elif fault.kind in ("drip", "delay") or fault.params.get("after"):
            self._fault = fault
        else:
            await self._misbehave(fault)

    async def _misbehave(self, fault: Fault) -> None:
        """Answer as ``fault`` (hang, status or body) says, then finish."""
        if fault.kind == "hang":
            try:
                await asyncio.wait_for(self._gone.wait(), fault.params.get("seconds", 30))
            except asyncio.TimeoutError:
                pass
            if isinstance(self.request.connection, tornado.http1connection.HTTP1Connection):
                self.request.connection.close()
            self.finish()  # onto the closed connection: Tornado discards it
            return
        status = fault.params.get("status", 200)
        if "size" in fault.params:
            prefix, suffix = b'{"padding":"', b'"}'
            body = prefix + b"x" * max(fault.params["size"] - len(prefix) - len(suffix), 0) + suffix
        else:
            raw = fault.params.get("body", _default_fault_body(status) if fault.kind == "status" else "")
            body = raw.encode() if isinstance(raw, str) else json.dumps(raw).encode()
        self.clear()
        self.set_status(status)
        self.set_header("Content-Type", fault.params.get("content_type", "application/json; charset=utf-8"))
        for header, value in fault.params.get("headers", {}).items():
            self.set_header(header, str(value))
        self.finish(body)

    async def reply(self, payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> None:
        """Send ``payload`` as JSON with ``status`` (unless a pending fault says otherwise)."""
        fault, self._fault = self._fault, None
        if fault is not None and fault.kind == "delay":
            # Processed already (a code spent, a grant revoked): only the answer is late.
            await asyncio.sleep(fault.params["seconds"])
            fault = None
        if fault is not None and fault.kind != "drip":
            await self._misbehave(fault)
            return
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        for header, value in (headers or {}).items():
            self.set_header(header, value)
        body = json.dumps(payload, indent=2).encode()
        if fault is None:
            self.finish(body)
            return
        chunks = max(fault.params.get("chunks", 10), 1)
        interval = fault.params.get("interval", 0.5)
        size = -(-len(body) // chunks)
        self.set_header("Content-Length", str(len(body)))
        try:
            for start in range(0, len(body), size):
                if start:
                    await asyncio.sleep(interval)
                self.write(body[start : start + size])
                await self.flush()
            self.finish()
        except tornado.iostream.StreamClosedError:
            log.info("%s: client went away during drip", self.endpoint_name())

    async def oauth_error(self, exc: OAuthError, headers: dict[str, str] | None = None) -> None:
        """Reply with the Google-shaped body and status of ``exc``."""
        log.info("%s: %s", self.endpoint_name() or self.request.path, exc.error)
        await self.reply(_error_body(exc.error, exc.description), _ERROR_STATUS.get(exc.error, 400), headers)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.set_header("Content-Type", "application/json; charset=utf-8")
        if status_code >= 500:
            body = _error_body("internal_failure", "Backend Error")
        elif status_code == 405:
            body = _error_body("invalid_request", "Method Not Allowed")
        else:
            body = _error_body("invalid_request", self._reason)
        self.finish(json.dumps(body))

    def _request_summary(self) -> str:
        return f"{self.request.method} {path_only(self.request.uri or '')}"

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, tornado.web.HTTPError):
            log.warning("%d %s", value.status_code, self._request_summary())
        else:
            log.error("uncaught exception %s", self._request_summary(), exc_info=(typ, value, tb))

    def emulator_origin(self) -> str:
        """Return the emulator's origin as the client reached it (base_url if the Host looks odd)."""
        host = self.request.host or ""
        if _HOST_RE.match(host):
            return f"{self.request.protocol}://{host}"
        return self.base_url()

    def base_url(self) -> str:
        """Return the configured base URL, or the one this request reached."""
        return self.emulator.base_url or f"{self.request.protocol}://{self.request.host}"

    def render_text(self, template: str, **namespace: Any) -> bytes:
        """Return the emulator template ``template`` rendered with ``namespace``."""
        return self.emulator.templates.load(template).generate(**namespace)


class NotFoundHandler(EmulatorHandler):
    """Every unknown path: a Google-shaped 404."""

    async def prepare(self) -> None:
        await self.reply(_error_body("not_found", "Not Found"), 404)


# -- token endpoint --------------------------------------------------------


class TokenHandler(EmulatorHandler):
    """``POST /token``: the authorization_code and refresh_token grants."""

    def endpoint_name(self) -> str:
        grant_type = self.get_body_argument("grant_type", None)
        return f"token.{grant_type}" if grant_type in GRANT_TYPES else "token"

    def _client_credentials(self) -> tuple[str | None, str | None]:
        client_id = self.get_body_argument("client_id", None)
        client_secret = self.get_body_argument("client_secret", None)
        auth = self.request.headers.get("Authorization", "")
        if not auth.lower().startswith("basic "):
            return client_id, client_secret
        try:
            decoded = base64.b64decode(auth[6:].strip(), validate=True).decode("utf-8")
            basic_id, basic_secret = decoded.split(":", 1)
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise OAuthError("invalid_client", "Unauthorized") from None
        basic_id, basic_secret = urllib.parse.unquote_plus(basic_id), urllib.parse.unquote_plus(basic_secret)
        if client_secret is not None or (client_id is not None and client_id != basic_id):
            raise OAuthError("invalid_request", "Client credentials were sent by more than one method.")
        return basic_id, basic_secret

    async def post(self) -> None:
        grant_type = self.get_body_argument("grant_type", None)
        state = self.emulator.state
        try:
            # Google's words: https://github.com/googlearchive/gplus-quickstart-ruby/issues/11 (missing),
            # https://github.com/natelindev/tsdav/issues/130 (empty or unknown: "Invalid grant_type: ").
            if grant_type is None:
                raise OAuthError("invalid_request", "Required parameter is missing: grant_type")
            if grant_type not in (*GRANT_TYPES, DEVICE_GRANT):
                raise OAuthError("unsupported_grant_type", f"Invalid grant_type: {grant_type}")
            client = state.authenticate(*self._client_credentials())
            if grant_type == DEVICE_GRANT:
                # Only "TVs and Limited Input devices" clients may; the emulator registers web clients.
                await self.reply(_DEVICE_FLOW_REFUSED, 401)
                return
            if grant_type == "authorization_code":
                issued = state.exchange_code(
                    client,
                    self.get_body_argument("code", None),
                    self.get_body_argument("redirect_uri", None),
                    self.get_body_argument("code_verifier", None),
                )
            else:
                issued = state.refresh(
                    client, self.get_body_argument("refresh_token", None), self.get_body_argument("scope", None)
                )
        except OAuthError as exc:
            await self.oauth_error(exc)
            return
        log.info("%s: ok (refresh_token issued: %s)", self.endpoint_name(), issued.refresh_token is not None)
        await self.reply(self.emulator.token_response(issued, client, self.endpoint_name()))


# -- revoke, userinfo ------------------------------------------------------


class RevokeHandler(EmulatorHandler):
    """``POST /revoke`` and ``GET|POST /o/oauth2/revoke``: end the whole grant of the token (form or query ``token``).

    Only the legacy accounts.google.com path answers GET; oauth2.googleapis.com's
    ``/revoke`` is 404 to a GET (https://github.com/googleapis/oauth2client/issues/750).
    """

    def initialize(self, emulator: "Emulator", endpoint: str = "", allow_get: bool = False) -> None:
        super().initialize(emulator, endpoint)
        self.allow_get = allow_get

    async def post(self) -> None:
        try:
            self.emulator.state.revoke(self.get_argument("token", None))
        except OAuthError as exc:
            await self.oauth_error(exc)
            return
        log.info("revoke: ok")
        await self.reply({})

    async def get(self) -> None:
        if not self.allow_get:
            await self.reply(_error_body("not_found", "Not Found"), 404)
            return
        await self.post()


def _bearer_token(handler: tornado.web.RequestHandler) -> str | None:
    """Return the access token of a request: ``Authorization: Bearer``, else the query's ``access_token``."""
    auth = handler.request.headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return handler.get_query_argument("access_token", None)


class UserinfoHandler(EmulatorHandler):
    """``GET /v1/userinfo`` and ``/oauth2/v3/userinfo``: the OpenID Connect profile behind a Bearer token."""

    async def get(self) -> None:
        try:
            info = self.emulator.state.userinfo(_bearer_token(self))
        except OAuthError as exc:
            challenge = 'Bearer realm="https://accounts.google.com/", error="invalid_token"'
            log.info("userinfo: invalid credentials")
            await self.reply(_error_body(exc.error, exc.description), 401, {"WWW-Authenticate": challenge})
            return
        await self.reply(info)

    post = get


#: The 401 of Google's API front end (www.googleapis.com) for a missing or bad token.
_API_UNAUTHENTICATED = {
    "error": {
        "code": 401,
        "message": "Request is missing required authentication credential. Expected OAuth 2 access token, "
        "login cookie or other valid authentication credential. "
        "See https://developers.google.com/identity/sign-in/web/devconsole-project.",
        "errors": [
            {
                "message": "Invalid Credentials",
                "domain": "global",
                "reason": "authError",
                "location": "Authorization",
                "locationType": "header",
            }
        ],
        "status": "UNAUTHENTICATED",
    }
}


class UserinfoV2Handler(EmulatorHandler):
    """``/oauth2/v2/userinfo``, ``/oauth2/v1/userinfo``, ``/userinfo/v2/me``: the oauth2 v2 ``Userinfo`` schema.

    ``id`` and ``verified_email``, as google-api-python-client's oauth2 v2
    discovery document declares; a bad token gets the API front end's 401.
    """

    async def get(self) -> None:
        token = _bearer_token(self)
        try:
            info = self.emulator.state.userinfo_v2(token)
        except OAuthError:
            log.info("userinfo: invalid credentials")
            body = json.loads(json.dumps(_API_UNAUTHENTICATED))
            if token:  # a token was sent, and it is not live
                body["error"]["message"] = body["error"]["message"].replace(
                    "Request is missing required authentication credential.",
                    "Request had invalid authentication credentials.")
            challenge = 'Bearer realm="https://accounts.google.com/"' + (', error="invalid_token"' if token else "")
            await self.reply(body, 401, {"WWW-Authenticate": challenge})
            return
        await self.reply(info)

    post = get


class TokeninfoHandler(EmulatorHandler):
    """``/tokeninfo``, ``/oauth2/v3/tokeninfo`` (``version`` 3) and ``/oauth2/v2/tokeninfo`` (``version`` 2).

    ``id_token`` or ``access_token`` from the query or a form body (v3 also
    takes the access token as ``Authorization: Bearer``, as Node's
    ``getTokenInfo`` sends it). v3 answers every value as a string, the ID
    token's claims plus its ``alg``/``kid``/``typ``; v2 answers the
    ``Tokeninfo`` schema of the oauth2 v2 discovery document. A bad token:
    400 ``invalid_token`` "Invalid Value" (v2: only the description).
    """

    def initialize(self, emulator: "Emulator", endpoint: str = "", version: int = 3) -> None:
        super().initialize(emulator, endpoint)
        self.version = version

    async def get(self) -> None:
        id_token = self.get_argument("id_token", None)
        access_token = self.get_argument("access_token", None)
        if id_token is None and access_token is None and self.version == 3:
            access_token = _bearer_token(self)
        state = self.emulator.state
        if id_token is None and access_token is None:
            # Google's words, v3 and the older front end (v2) differing in case and shape.
            if self.version == 2:
                await self.reply({"error_description": "either access_token, id_token, or token_handle required"}, 400)
            else:
                await self.reply(
                    _error_body("invalid_token", "Either access_token, id_token, or token_handle required"), 400
                )
            return
        info = (
            self.emulator.tokeninfo_id_token(id_token, self.version)
            if id_token is not None
            else state.tokeninfo_access_token(access_token, self.version)
        )
        if info is None:
            log.info("tokeninfo: invalid token")
            body = {"error_description": "Invalid Value"} if self.version == 2 else _error_body("invalid_token", "Invalid Value")
            await self.reply(body, 400)
            return
        await self.reply(info)

    post = get


class PictureHandler(EmulatorHandler):
    """``GET /a/{sub}=s{size}-c``: a test account's picture, a PNG made here (no network)."""

    async def get(self, sub: str, size: str | None) -> None:
        try:
            account = self.emulator.state.account(sub)
        except KeyError:
            await self.reply(_error_body("not_found", "Not Found"), 404)
            return
        pixels = min(max(int(size or 96), 16), 256)
        self.clear_header("Pragma")
        self.set_header("Cache-Control", "public, max-age=86400, no-transform")
        self.set_header("Content-Type", "image/png")
        self.finish(avatar_png(account.sub, pixels))


class FaviconHandler(EmulatorHandler):
    """``GET /favicon.ico``: the emulator's icon, so its consent page makes no 404 in the browser's console."""

    async def get(self) -> None:
        self.clear_header("Pragma")
        self.set_header("Cache-Control", "public, max-age=86400")
        self.set_header("Content-Type", "image/x-icon")
        self.finish(favicon_ico())


#: Google's answer when a web client tries the device flow, verbatim (its
#: apostrophes come HTML-escaped): quoted in public tests of Google clients.
_DEVICE_FLOW_REFUSED = {
    "error": "invalid_client",
    "error_description": "Only clients of type &#39;TVs and Limited Input devices&#39; can use the OAuth 2.0 "
    "flow for TV and Limited-Input Device Applications. Please create and use an appropriate client.",
    "error_uri": "https://developers.google.com/identity/protocols/oauth2/limited-input-device#creatingcred",
}


class DeviceCodeHandler(EmulatorHandler):
    """``POST /device/code``: Google's device authorization endpoint, as it answers a web client.

    Only clients of type "TVs and Limited Input devices" may use the device
    flow; the emulator registers web clients, so a known client gets Google's
    ``401 invalid_client`` (an unknown one: "The OAuth client was not found.").
    """

    async def post(self) -> None:
        client_id = self.get_body_argument("client_id", None)
        if not client_id:
            await self.oauth_error(OAuthError("invalid_request", "Missing required parameter: client_id"))
            return
        try:
            self.emulator.state.client(client_id)
        except OAuthError as exc:
            await self.oauth_error(exc)
            return
        log.info("device: refused (web client)")
        await self.reply(_DEVICE_FLOW_REFUSED, 401)


# -- certs, discovery, client secrets ---------------------------------------


class CertsHandler(EmulatorHandler):
    """``GET /oauth2/v1/certs`` (PEM map) and ``/oauth2/v3/certs`` (JWKS), cacheable like Google's."""

    async def get(self) -> None:
        keys = self.emulator.keys
        payload = keys.pem_map() if self.endpoint == "certs.pem" else keys.jwks()
        max_age = self.emulator.certs_max_age
        now = self.emulator.state.clock()
        # As from Google's edge cache: the document is refreshed every max_age
        # seconds since the key set last changed, and Age says how old this copy is.
        age = int((now - keys.changed_at) % max_age) if max_age > 0 else 0
        self.clear_header("Pragma")
        headers = {
            "Cache-Control": f"public, max-age={max_age}, must-revalidate, no-transform",
            "Expires": email.utils.formatdate(now - age + max_age, usegmt=True),
            "Age": str(age),
        }
        await self.reply(payload, headers=headers)


class DiscoveryHandler(EmulatorHandler):
    """``GET /.well-known/openid-configuration``, with endpoints at the emulator."""

    async def get(self) -> None:
        await self.reply(self.emulator.openid_configuration(self.base_url()))


class ClientSecretHandler(EmulatorHandler):
    """``GET /client_secret.json[?client_id=...]``: Google's client secrets file format.

    Only for a client whose secret the emulator generated
    (``EmulatorClient.secret_generated``): any other secret came from an
    operator and is never served (403).
    """

    async def get(self) -> None:
        client_id = self.get_query_argument("client_id", None)
        clients = self.emulator.state.clients
        if client_id is None and len(clients) == 1:
            client_id = next(iter(clients))
        if client_id not in clients:
            await self.reply(_error_body("invalid_request", "Unknown or missing client_id"), 404)
            return
        if not clients[client_id].secret_generated:
            log.warning("client_secret.json refused: that client's secret was not generated by the emulator")
            await self.reply(
                _error_body("access_denied", "This client's secret was not generated by the emulator; it is not served."),
                403,
            )
            return
        self.set_header("Content-Disposition", 'attachment; filename="client_secret.json"')
        await self.reply(self.emulator.client_secrets(client_id, base_url=self.base_url()))


# -- the consent popup -------------------------------------------------------


class PopupPageHandler(EmulatorHandler):
    """Security headers for the HTML pages of the popup."""

    def page_headers(self, nonce: str, form_targets: tuple[str, ...] = ()) -> None:
        """Set a strict CSP (scripts and styles by ``nonce`` only) and anti-framing headers."""
        form_action = " ".join(["'self'", *form_targets])
        self.set_header(
            "Content-Security-Policy",
            f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; img-src 'self' data:; "
            f"form-action {form_action}; frame-ancestors 'none'; base-uri 'none'",
        )
        self.set_header("X-Frame-Options", "DENY")
        self.set_header("Referrer-Policy", "no-referrer")
        # No Cross-Origin-Opener-Policy: a same-origin COOP would sever
        # window.opener, and the popup must postMessage to the page that opened it.
        self.set_header("Content-Type", "text/html; charset=utf-8")

    def error_page(self, status: int, error: str, description: str) -> None:
        """Render Google's "Access blocked" page for ``error``; nothing is posted to the opener."""
        log.info("auth: %s", error)
        nonce = secrets.token_urlsafe(16)
        self.page_headers(nonce)
        self.set_status(status)
        self.finish(self.render_text("error.html", nonce=nonce, error=error, description=description))


class AuthHandler(PopupPageHandler):
    """``/o/oauth2/v2/auth``: GET shows the account chooser, POST records the user's answer."""

    async def get(self) -> None:
        # Google takes values as sent (no stripping: "offline " is not a valid access_type).
        args = {name: self.get_query_argument(name, None, strip=False) for name in _AUTH_PARAMS}
        try:
            request = self.emulator.state.validate_auth_request(args)
        except OAuthError as exc:
            self.error_page(_ERROR_STATUS.get(exc.error, 400), exc.error, exc.description)
            return
        accounts = list(self.emulator.state.accounts)
        if request.get("hd"):
            accounts = [a for a in accounts if a.hosted_domain == request["hd"]] or accounts
        hint = (request.get("login_hint") or "").lower()
        selected = next((a.email for a in accounts if a.email.lower() == hint), accounts[0].email)
        token = self.emulator.state.open_consent(request)
        nonce = secrets.token_urlsafe(16)
        # Browsers apply form-action to the redirect that follows the form
        # post, so the registered redirect URI's origin must be allowed too.
        targets: tuple[str, ...] = ()
        if request["redirect_uri"] != "postmessage":
            parts = urllib.parse.urlsplit(request["redirect_uri"] or "")
            targets = (f"{parts.scheme}://{parts.netloc}",)
        self.page_headers(nonce, targets)
        self.finish(
            self.render_text(
                "consent.html",
                nonce=nonce,
                accounts=accounts,
                selected=selected,
                consent_token=token,
                client_id=request["client_id"],
                requester=request["origin"] or request["redirect_uri"],
                scopes=ordered_scopes(request["scope"] or ""),
                identity_scopes=IDENTITY_SCOPES,
                action=self.request.path,
            )
        )

    async def post(self) -> None:
        request = self.emulator.state.take_consent(self.get_body_argument("consent", ""))
        if request is None:
            self.error_page(400, "invalid_request", "This sign-in page has expired or was already used.")
            return
        client_id, scope, redirect_uri = request["client_id"], request["scope"], request["redirect_uri"]
        assert client_id and scope and redirect_uri  # validate_auth_request refused a request without them
        action = self.get_body_argument("action", "")
        message: dict[str, Any]
        if action == "approve":
            email_address = self.get_body_argument("email", "")
            # Granular consent: the page lists each non-sign-in scope with a
            # checkbox; the unticked ones are not granted. A post without the
            # page's "granular" field (a scripted answer) grants them all.
            unticked: set[str] = set()
            if self.get_body_argument("granular", None) is not None:
                ticked = set(self.get_body_arguments("scope"))
                unticked = {name for name in ordered_scopes(scope) if name not in ticked}
            try:
                code, record = self.emulator.state.consent(
                    client_id,
                    email_address,
                    scope,
                    redirect_uri=redirect_uri,
                    prompt=request.get("prompt"),
                    access_type=request.get("access_type") or "online",
                    include_granted_scopes=request.get("include_granted_scopes") == "true",
                    nonce=request.get("nonce"),
                    unticked=unticked,
                    code_challenge=request.get("code_challenge"),
                    code_challenge_method=request.get("code_challenge_method"),
                    # Time-limited access, as Google's consent screen offers it.
                    refresh_token_ttl=float(duration) if (duration := self.get_body_argument(
                        "access_duration", "")).isdigit() and 0 < int(duration) <= 31536000 else None,
                )
            except KeyError:
                self.error_page(400, "invalid_request", "Unknown test account.")
                return
            account = self.emulator.state.account(email_address)
            message = {
                "code": code,
                "scope": format_scopes(record.scopes),
                "authuser": "0",
                "prompt": "consent" if record.consent_shown else "none",
            }
            if account.hosted_domain:
                message["hd"] = account.hosted_domain
            log.info("auth: approved")
        else:
            message = {"error": "access_denied"}
            log.info("auth: denied")
        if request.get("state") is not None:
            message["state"] = request["state"]
        if redirect_uri != "postmessage":
            # RFC 9207, which Google's discovery document advertises
            # (authorization_response_iss_parameter_supported).
            message["iss"] = GOOGLE_ISSUER
            separator = "&" if "?" in redirect_uri else "?"
            self.redirect(redirect_uri + separator + urllib.parse.urlencode(message))
            return
        nonce = secrets.token_urlsafe(16)
        self.page_headers(nonce)
        payload = {"message": message, "target_origin": request["origin"]}
        self.finish(self.render_text("result.html", nonce=nonce, payload_json=_script_json(payload)))


_AUTH_PARAMS = (
    "client_id",
    "redirect_uri",
    "response_type",
    "scope",
    "access_type",
    "prompt",
    "state",
    "origin",
    "include_granted_scopes",
    "login_hint",
    "hd",
    "nonce",
    "code_challenge",
    "code_challenge_method",
)


# -- client scripts ----------------------------------------------------------


class ScriptHandler(EmulatorHandler):
    """``GET /gsi/client`` and ``/js/platform.js``: the client libraries, bound to this origin."""

    def initialize(self, emulator: "Emulator", endpoint: str = "", template: str = "") -> None:
        super().initialize(emulator, endpoint)
        self.template = template

    async def get(self) -> None:
        onload = self.get_query_argument("onload", "")
        if not _JS_IDENTIFIER_RE.match(onload):
            onload = ""
        self.set_header("Content-Type", "text/javascript; charset=utf-8")
        self.finish(
            self.render_text(
                self.template,
                origin_json=_script_json(self.emulator_origin()),
                onload_json=_script_json(onload),
                init_error_json=_script_json(self.emulator.gapi_init_error),
            )
        )


# -- test-only endpoints -------------------------------------------------------


class TestOnlyHandler(EmulatorHandler):
    """Base of the ``/emulator/...`` paths: refused with 403 unless ``development`` is on."""

    async def prepare(self) -> None:
        if not self.emulator.development:
            log.warning("test-only path refused: %s", self.request.path)
            await self.reply(
                _error_body("access_denied", "The emulator's test-only endpoints are disabled (development is off)."),
                403,
            )

    def json_body(self) -> Any:
        """Return the request body parsed as JSON; raise OAuthError ``invalid_request`` if it is not."""
        try:
            return json.loads(self.request.body or b"{}")
        except (ValueError, RecursionError):  # RecursionError: deeply nested JSON
            raise OAuthError("invalid_request", "The body is not JSON.") from None


class MintCodeHandler(TestOnlyHandler):
    """``POST /emulator/code``: a one-time code, as if the account had just consented."""

    async def post(self) -> None:
        ttl_text = self.get_argument("refresh_token_ttl", "")
        ttl: float | None = None
        if ttl_text:
            if not ttl_text.isdigit() or not 0 < int(ttl_text) <= 10 * 365 * 86400:
                await self.reply(_error_body("invalid_request", "refresh_token_ttl must be a number of seconds."), 400)
                return
            ttl = float(ttl_text)
        try:
            code = self.emulator.mint_code(
                self.get_argument("client_id", ""),
                self.get_argument("email", ""),
                self.get_argument("scope", "openid email profile"),
                prompt=self.get_argument("prompt", None),
                redirect_uri=self.get_argument("redirect_uri", "postmessage"),
                access_type=self.get_argument("access_type", "offline"),
                include_granted_scopes=self.get_argument("include_granted_scopes", "") == "true",
                code_challenge=self.get_argument("code_challenge", None),
                code_challenge_method=self.get_argument("code_challenge_method", None),
                refresh_token_ttl=ttl,
            )
        except OAuthError as exc:
            await self.oauth_error(exc)
            return
        except KeyError:
            await self.reply(_error_body("invalid_request", "Unknown test account."), 400)
            return
        await self.reply({"code": code})


class FaultsHandler(TestOnlyHandler):
    """``/emulator/faults``: POST plans faults (one object or a list), DELETE clears, GET lists."""

    async def get(self) -> None:
        await self.reply({"faults": [fault.to_json() for fault in self.emulator.faults.pending()]})

    async def post(self) -> None:
        try:
            faults = self.emulator.faults.load(self.json_body())
        except OAuthError as exc:
            await self.oauth_error(exc)
            return
        except FaultError as exc:
            await self.reply(_error_body("invalid_request", str(exc)), 400)
            return
        await self.reply({"faults": [fault.to_json() for fault in faults]})

    async def delete(self) -> None:
        self.emulator.faults.clear()
        await self.reply({})


class RotateKeysHandler(TestOnlyHandler):
    """``POST /emulator/rotate-keys``: rotate the signing key; answer ``{"kid": ...}``.

    By default abruptly (the new key signs at once: the test-only switch for
    a verifier's refetch); with the JSON body ``{"abrupt": false}`` Google's
    way (published now, signing after the schedule's lead).
    """

    async def post(self) -> None:
        try:
            body = self.json_body()
            if not isinstance(body, dict) or not isinstance(body.get("abrupt", True), bool):
                raise OAuthError("invalid_request", 'Expected {"abrupt": true|false}.')
        except OAuthError as exc:
            await self.oauth_error(exc)
            return
        await self.reply({"kid": self.emulator.rotate_keys(abrupt=body.get("abrupt", True))})


class StatsHandler(TestOnlyHandler):
    """``GET /emulator/stats``: requests per endpoint name."""

    async def get(self) -> None:
        await self.reply(dict(self.emulator.stats))


class ResetHandler(TestOnlyHandler):
    """``POST /emulator/reset``: clear stats, faults and switches (grants stay)."""

    async def post(self) -> None:
        self.emulator.reset()
        await self.reply({})


class ExpireRefreshTokenHandler(TestOnlyHandler):
    """``POST /emulator/expire-refresh-token`` (form ``client_id``, ``email``)."""

    async def post(self) -> None:
        try:
            expired = self.emulator.expire_refresh_tokens(self.get_argument("client_id", ""), self.get_argument("email", ""))
        except KeyError:
            await self.reply(_error_body("invalid_request", "Unknown test account."), 400)
            return
        await self.reply({"expired": expired})


class SettingsHandler(TestOnlyHandler):
    """``/emulator/settings``: GET the switches, POST a JSON object to change some."""

    async def get(self) -> None:
        await self.reply(self.emulator.settings())

    async def post(self) -> None:
        try:
            body = self.json_body()
            if not isinstance(body, dict):
                raise OAuthError("invalid_request", "Expected a JSON object.")
            settings = self.emulator.configure(**body)
        except OAuthError as exc:
            await self.oauth_error(exc)
            return
        except (TypeError, ValueError) as exc:
            await self.reply(_error_body("invalid_request", str(exc)), 400)
            return
        await self.reply(settings)


#: (path, handler, extra initialize() arguments) of every emulator URL.
HANDLERS: list[tuple[str, type[EmulatorHandler], dict[str, Any]]] = [
    (r"/o/oauth2/v2/auth", AuthHandler, {"endpoint": "auth"}),
    (r"/o/oauth2/auth", AuthHandler, {"endpoint": "auth"}),
    (r"/token", TokenHandler, {"endpoint": "token"}),
    (r"/oauth2/v4/token", TokenHandler, {"endpoint": "token"}),
    (r"/o/oauth2/token", TokenHandler, {"endpoint": "token"}),
    (r"/revoke", RevokeHandler, {"endpoint": "revoke"}),
    (r"/o/oauth2/revoke", RevokeHandler, {"endpoint": "revoke", "allow_get": True}),
    (r"/device/code", DeviceCodeHandler, {"endpoint": "device"}),
    (r"/v1/userinfo", UserinfoHandler, {"endpoint": "userinfo"}),
    (r"/oauth2/v3/userinfo", UserinfoHandler, {"endpoint": "userinfo"}),
    (r"/oauth2/v2/userinfo", UserinfoV2Handler, {"endpoint": "userinfo"}),
    (r"/oauth2/v1/userinfo", UserinfoV2Handler, {"endpoint": "userinfo"}),
    (r"/userinfo/v2/me", UserinfoV2Handler, {"endpoint": "userinfo"}),
    (r"/tokeninfo", TokeninfoHandler, {"endpoint": "tokeninfo", "version": 3}),
    (r"/oauth2/v3/tokeninfo", TokeninfoHandler, {"endpoint": "tokeninfo", "version": 3}),
    (r"/oauth2/v2/tokeninfo", TokeninfoHandler, {"endpoint": "tokeninfo", "version": 2}),
    (r"/a/([0-9]{1,30})(?:=s([0-9]{1,3})-c)?", PictureHandler, {"endpoint": "picture"}),
    (r"/favicon\.ico", FaviconHandler, {}),
    (r"/oauth2/v1/certs", CertsHandler, {"endpoint": "certs.pem"}),
    (r"/oauth2/v3/certs", CertsHandler, {"endpoint": "certs.jwks"}),
    (r"/\.well-known/openid-configuration", DiscoveryHandler, {"endpoint": "discovery"}),
    (r"/client_secret\.json", ClientSecretHandler, {"endpoint": "client_secret"}),
    (r"/gsi/client", ScriptHandler, {"endpoint": "script.gsi", "template": "gsi_client.js"}),
    (r"/js/platform\.js", ScriptHandler, {"endpoint": "script.platform", "template": "platform.js"}),
    (r"/emulator/code", MintCodeHandler, {}),
    (r"/emulator/faults", FaultsHandler, {}),
    (r"/emulator/rotate-keys", RotateKeysHandler, {}),
    (r"/emulator/stats", StatsHandler, {}),
    (r"/emulator/reset", ResetHandler, {}),
    (r"/emulator/expire-refresh-token", ExpireRefreshTokenHandler, {}),
    (r"/emulator/settings", SettingsHandler, {}),
]
