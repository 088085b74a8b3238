"""A local stand-in for Google's OAuth 2.0 / OpenID Connect endpoints ("the emulator").

Demo mode and every test talk to it instead of Google. It serves Google's
paths on its own origin and behaves like Google where the app depends on it:
one-time codes that expire, refresh tokens only on first consent or
``prompt=consent``, scope expansion, RS256 ID tokens verifiable with
google-auth, both certs formats with key rotation, revocation of whole
grants, Google's error bodies. Tests can make it misbehave through a fault
plan (:mod:`.faults`).

Paths (Google's where Google has one)::

    GET  /o/oauth2/v2/auth               consent popup (POST: the user's answer)
    POST /token                          authorization_code, refresh_token grants
    POST /revoke                         end the grant of a token
    GET  /v1/userinfo, /oauth2/v3/userinfo
    GET  /oauth2/v1/certs                {kid: X.509 PEM}
    GET  /oauth2/v3/certs                JWKS
    GET  /.well-known/openid-configuration
    GET  /gsi/client                     google.accounts.oauth2.initCodeClient
    GET  /js/platform.js[?onload=fn]     gapi.auth2 ... grantOfflineAccess
    GET  /client_secret.json[?client_id=]
    test-only (403 unless development=True):
    POST /emulator/code                  form client_id, email, scope, prompt, redirect_uri
    GET|POST|DELETE /emulator/faults     list / plan (JSON) / clear faults
    POST /emulator/rotate-keys           {"kid": new kid}
    GET  /emulator/stats                 {endpoint name: count}
    POST /emulator/reset                 clear stats, faults, switches
    POST /emulator/expire-refresh-token  form client_id, email
    GET|POST /emulator/settings          switches (JSON)

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
