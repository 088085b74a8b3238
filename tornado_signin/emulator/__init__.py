"""A local stand-in for Google's OAuth 2.0 / OpenID Connect endpoints ("the emulator").

Demo mode and every test talk to it instead of Google. It serves Google's
paths on its own origin and behaves like Google where the app depends on it:
one-time codes that expire, refresh tokens only on first consent or
``prompt=consent``, scope expansion, RS256 ID tokens verifiable with
google-auth, both certs formats with key rotation on Google's schedule
(:mod:`.keys`), revocation of whole
grants, Google's error bodies. Tests can make it misbehave through a fault
plan (:mod:`.faults`).

Paths (Google's where Google has one)::

    GET  /o/oauth2/v2/auth               consent popup, granular (POST: the user's answer)
    POST /token, /oauth2/v4/token, /o/oauth2/token
                                         authorization_code (PKCE enforced), refresh_token grants
    POST /revoke, /o/oauth2/revoke       end the grant of a token
    GET  /v1/userinfo, /oauth2/v3/userinfo                    OpenID Connect userinfo (sub, ...)
    GET  /oauth2/v2/userinfo, /oauth2/v1/userinfo, /userinfo/v2/me   oauth2 v2 Userinfo (id, ...)
    GET|POST /tokeninfo, /oauth2/v3/tokeninfo   ?id_token= | ?access_token= (values as strings)
    POST /oauth2/v2/tokeninfo            the oauth2 v2 Tokeninfo schema
    GET  /oauth2/v1/certs                {kid: X.509 PEM}   (Cache-Control and Age as Google's)
    GET  /oauth2/v3/certs                JWKS
    GET  /a/{sub}=s96-c                  a test account's picture (PNG)
    POST /device/code                    as Google answers a web client: 401 invalid_client
    GET  /.well-known/openid-configuration
    GET  /gsi/client                     google.accounts.oauth2.initCodeClient
    GET  /js/platform.js[?onload=fn]     gapi.auth2 ... grantOfflineAccess
    GET  /client_secret.json[?client_id=]
    GET  /favicon.ico                    the emulator's icon (the browser asks on the consent page)
    GET  /drive/v3/files                 Drive files.list (spaces, fields, pageSize, pageToken, q)
    GET  /drive/v3/files/{fileId}        Drive files.get (appfolder / appDataFolder, root)
    GET  /.well-known/risc-configuration Cross-Account Protection (:mod:`.risc`): issuer, jwks_uri
    POST /v1beta/stream:update, :verify  the RISC management API (bearer: the service account's JWT);
    GET  /v1beta/stream, /stream/status  POST /v1beta/stream/status:update
    test-only (403 unless development=True):
    POST /emulator/code                  form client_id, email, scope, prompt, redirect_uri,
                                         code_challenge, code_challenge_method, refresh_token_ttl
                                         (time-limited access: the exchange answers refresh_token_expires_in)
    GET  /service_account.json           a development service-account key (for the RISC API)
    POST /emulator/risc/event            form type, email or sub, reason: apply a security event, push its SET
    GET  /emulator/risc/deliveries       the SETs pushed and the receiver's answers
    GET  /permissions?authuser=EMAIL     account permissions: "Remove access" ends the grant, sends tokens-revoked
    GET|POST|DELETE /emulator/faults     list / plan (JSON) / clear faults
    POST /emulator/rotate-keys           {"kid": new kid}; abrupt, or {"abrupt": false}: Google's way
    GET  /emulator/stats                 {endpoint name: count}
    POST /emulator/reset                 clear stats, faults, switches
    POST /emulator/expire-refresh-token  form client_id, email
    GET|POST /emulator/settings          switches (JSON): list / change some

Switches (``POST /emulator/settings`` with a JSON object of some of them; it
answers all of them; an unknown name or a bad value is a 400;
``/emulator/reset`` restores the start-up values;
:meth:`Emulator.configure` is the Python form)::

    access_token_ttl       seconds, > 0 (default 3600): lifetime of access tokens issued from now on
                           (``expires_in`` is one less, as with Google, and at least 1)
    code_ttl               seconds, > 0 (default 600): lifetime of codes minted from now on
    rotate_refresh_tokens  bool (default false): a refresh returns a new refresh token and the
                           old one answers invalid_grant from then on
    issuer_without_scheme  bool (default false): ID tokens say ``iss: accounts.google.com``
    gapi_init_error        "" (default) or an error code: /js/platform.js's gapi.auth2.init fails with it
                           (``idpiframe_initialization_failed``, what Google answers for a client id
                           created after July 2022), so a page's handling of that failure is testable

Drive v3 (:mod:`.drive`): a few fake files per test account and an app data
folder per client; what a token sees follows its scopes (``drive.appdata``
for the app folder, a Drive read scope for the user's files); Google's 401,
403 ``insufficientPermissions`` / ``insufficientScopes``, 404 and 400 bodies.
Point google-api-python-client at ``Emulator.drive_endpoint``
(``<base_url>/drive/v3/``) through ``client_options={"api_endpoint": ...}``.

State: in memory by default (tests); with ``state_dir`` (CLI
``tornado-signin emulator --state-dir DIR``; the demo uses
``.tornado-signin-emulator/`` in its folder) clients, grants, codes, tokens,
signing keys and switches are written through to ``DIR/emulator-state.json``
(atomic, 0600, folder 0700), so a restart keeps every signed-in user working
(:mod:`.persist`).

Python::

    emulator, server = start_emulator(clients=[EmulatorClient(...)])
    code = emulator.mint_code(client_id, "alice@example.com")
    emulator.faults.add("token", "status", status=503)

:class:`EmulatorThread` runs one on its own IOLoop in a thread, for blocking
clients (google-auth, requests) and for tests.
"""

from .app import GOOGLE_ISSUER, Emulator, start_emulator
from .faults import Fault, FaultError, FaultPlan
from .keys import SIGNING_METHODS
from .persist import EmulatorStateError
from .state import DEFAULT_ACCOUNTS, EmulatorClient, OAuthError, TestAccount
from .threaded import EmulatorThread

__all__ = [
    "Emulator",
    "EmulatorClient",
    "TestAccount",
    "DEFAULT_ACCOUNTS",
    "start_emulator",
    "EmulatorThread",
    "Fault",
    "FaultError",
    "FaultPlan",
    "OAuthError",
    "EmulatorStateError",
    "SIGNING_METHODS",
    "GOOGLE_ISSUER",
]
