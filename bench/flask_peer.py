"""The Flask peer: google-auth-oauthlib's ``Flow.fetch_token``, google-auth verification, a sqlite3 upsert.

Run by bench.run as ``gunicorn -w 2 bench.flask_peer:app`` (sync workers) with
``BENCH_EMULATOR`` (the emulator's URL) and ``BENCH_DB`` (the SQLite file), ``BENCH_TOKEN_URI`` in
the environment. ``POST /exchange`` with the code as the body, like the
other peers. A Flow per request, as the library's examples do.

PKCE: google-auth-oauthlib's Flow generates a code verifier in
``authorization_url()`` (``autogenerate_code_verifier`` defaults to True) and
sends it with ``fetch_token``; the app keeps it in its session between the
two requests. The benchmark mints the peer's codes with the S256 challenge
of one verifier per run (``PKCE_VERIFIER``), which the peer hands its Flow as
if read back from the session, so every exchange is a valid PKCE exchange:
the emulator's token endpoints refuse a missing or wrong verifier ("Missing
code verifier.", "Invalid code verifier.") as Google does.
"""

from __future__ import annotations

import os

os.environ.setdefault("OAUTHLIB_INSECURE_TRANSPORT", "1")  # the emulator is plain http on the loopback
os.environ.setdefault("OAUTHLIB_RELAX_TOKEN_SCOPE", "1")  # Google expands "email" to its URL in replies

from flask import Flask, jsonify, request, session  # noqa: E402
from google_auth_oauthlib.flow import Flow  # noqa: E402

from .common import CLIENT_ID, CLIENT_SECRET, COOKIE_SECRET, PKCE_VERIFIER, fetch_json  # noqa: E402
from .servers import open_peer_db, peer_store, verify_peer  # noqa: E402

EMULATOR = os.environ.get("BENCH_EMULATOR", "http://127.0.0.1:8081")
CLIENT_CONFIG = {"web": {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
                         "auth_uri": EMULATOR + "/o/oauth2/v2/auth",
                         "token_uri": os.environ.get("BENCH_TOKEN_URI", EMULATOR + "/token")}}
SCOPES = ["openid", "https://www.googleapis.com/auth/userinfo.email",
          "https://www.googleapis.com/auth/userinfo.profile"]

app = Flask(__name__)
app.secret_key = COOKIE_SECRET
_state: dict = {}


def _worker_state() -> dict:
    # Per worker process (after gunicorn's fork): the certs, fetched once, and a connection.
    if not _state:
        _state["certs"] = fetch_json(EMULATOR + "/oauth2/v1/certs")
        _state["db"] = open_peer_db(os.environ.get("BENCH_DB", "/tmp/bench-flask.db"))
    return _state


@app.post("/exchange")
def exchange():
    state = _worker_state()
    # The verifier authorization_url() generated, as the session would hand it back (see the module docstring).
    flow = Flow.from_client_config(CLIENT_CONFIG, scopes=SCOPES, redirect_uri="postmessage",
                                   code_verifier=PKCE_VERIFIER)
    tokens = flow.fetch_token(code=request.get_data(as_text=True))
    try:
        claims = verify_peer(tokens["id_token"], state["certs"])
    except ValueError:
        return jsonify(error="id token rejected"), 401
    peer_store(state["db"], claims, tokens)
    session["sub"] = claims["sub"]
    return jsonify(status="signed_in", user={"sub": claims["sub"], "email": claims.get("email")})
