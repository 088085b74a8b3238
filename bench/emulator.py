"""The benchmark's Google: the real emulator, with ID tokens signed ahead of time.

``python -m bench.emulator --port P`` serves :class:`tornado_signin.emulator.Emulator`
(development mode, logging at WARNING) with two changes, both for the
benchmark only:

* ``POST /bench/mint?n=N[&code_challenge=C]`` mints N one-time codes in one
  request, through the same :meth:`Emulator.mint_code` that the test-only
  ``POST /emulator/code`` calls (round-robin over the test accounts,
  ``prompt=consent`` so every code carries a refresh token; with an S256
  ``code_challenge`` as a PKCE client's authorization request carries it).
  Minting is not measured.
* The token endpoint's RSA signature is taken from a pool of ID tokens signed
  at start-up (per account, with ``at_hash`` matching the pooled access token)
  instead of being computed per request: RSA-2048 signing costs ~1.1 ms here,
  so a per-request signature would make the emulator, which shares its core
  with the load generator, the bottleneck of every scenario. Everything else
  of ``/token`` is the emulator's own code: client authentication, the
  single-use, expiring code, the redirect_uri check, the JSON reply. Tokens
  are valid for an hour, so the pool outlives any run.
  ``--sign-per-request`` restores the emulator's own signing.
* ``--token-port``: the token endpoint is also served on a second port by a
  minimal asyncio HTTP/1.1 server (keep-alive) calling the same emulator
  state: client authentication, ``State.exchange_code`` (single use, expiry,
  redirect_uri), ``Emulator.token_response``, Google's error bodies. Tornado's
  HTTP layer costs about as much per request in the emulator as in the server
  under test, so with it the emulator's core, shared with the load generator,
  saturated before the ceiling server's core did; this one costs a fraction.
  The servers under test use this port as their ``token_uri``. It serves
  the ``refresh_token`` grant too (``State.refresh``), and passes the PKCE
  ``code_verifier`` on like the emulator's own ``/token`` (a code minted
  with a challenge needs its verifier; a verifier for a code without one
  is refused, as at Google).
* ``POST /bench/offline?n=N``: N more accounts, each with a live offline
  grant (a code minted with consent and exchanged in process), answered as
  ``{"users": [{"sub", "email", "refresh_token"}]}`` for the offline
  scenarios' stores, which are seeded directly (not measured). Their refresh
  answers carry one ID token per account signed here (the same pool rule).
* Accounts are looked up by an index instead of the emulator's linear scan,
  which at 10,000 accounts would cost the emulator's core more per request
  than the request itself.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import json
import logging
from typing import Any
from urllib.parse import parse_qsl, unquote_plus

import tornado.web

from tornado_signin.emulator import Emulator, EmulatorClient, TestAccount
from tornado_signin.emulator.keys import at_hash
from tornado_signin.emulator.state import IssuedTokens, OAuthError, _new_token, expand_scopes

from .common import CLIENT_ID, CLIENT_SECRET, SCOPE

__all__ = ["BenchEmulator", "bench_accounts"]


def bench_accounts(count: int) -> tuple[TestAccount, ...]:
    """Return ``count`` test accounts with Google-like numeric subs."""
    return tuple(TestAccount(f"user{i}@example.com", f"User {i}", f"1{i:020d}") for i in range(count))


class BenchEmulator(Emulator):
    """An Emulator whose token replies carry pre-signed ID tokens (see the module docstring)."""

    def __init__(self, *, pool_per_account: int = 20, sign_per_request: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.sign_per_request = sign_per_request
        self._pools: dict[str, itertools.cycle] = {}
        self._mint_accounts = itertools.cycle(self.state.accounts)
        self._index: dict[str, TestAccount] = {}
        self._index_accounts(self.state.accounts)
        self.state.account = self._account  # type: ignore[method-assign]
        self._offline_count = 0
        if not sign_per_request:
            for account in self.state.accounts:
                self._sign_pool(account, pool_per_account)

    def _index_accounts(self, accounts: tuple[TestAccount, ...]) -> None:
        for account in accounts:
            self._index[account.email.lower()] = self._index[account.sub] = account

    def _account(self, email_or_sub: str) -> TestAccount:
        """``State.account`` by dict (same answers: email case-insensitive, or sub; KeyError)."""
        account = self._index.get(email_or_sub) or self._index.get(email_or_sub.lower())
        if account is None:
            raise KeyError(email_or_sub)
        return account

    def _sign_pool(self, account: TestAccount, size: int) -> None:
        scopes = expand_scopes(SCOPE)
        pairs = []
        for _ in range(size):
            access_token = _new_token("ya29.a0", 96)
            claims = self.state.id_token_claims(CLIENT_ID, account, scopes, int(self.state.clock()), None)
            claims["at_hash"] = at_hash(access_token)
            pairs.append((access_token, self.keys.sign({}, claims, client_secret=CLIENT_SECRET)))
        self._pools[account.sub] = itertools.cycle(pairs)

    def offline_grants(self, count: int) -> list[dict[str, str]]:
        """Return ``count`` new accounts with a live offline grant each: their sub, email and refresh token.

        Each grant is made as a sign-in makes it (a code minted with consent,
        then exchanged in process); the exchange's tokens are dropped, only
        the refresh token is handed over (for the offline scenarios' stores).
        """
        start = self._offline_count
        self._offline_count += count
        accounts = tuple(TestAccount(f"offline{i}@example.com", f"Offline {i}", f"2{i:020d}")
                         for i in range(start, start + count))
        self.state.accounts = self.state.accounts + accounts
        self._index_accounts(accounts)
        client = self.state.client(CLIENT_ID)
        users = []
        for account in accounts:
            code = self.mint_code(CLIENT_ID, account.email, SCOPE, prompt="consent")
            issued = self.state.exchange_code(client, code, "postmessage")
            assert issued.refresh_token is not None
            if not self.sign_per_request:
                self._sign_pool(account, 1)
            users.append({"sub": account.sub, "email": account.email, "refresh_token": issued.refresh_token})
        return users

    def token_response(self, issued: IssuedTokens, client: EmulatorClient, endpoint: str = "token") -> dict:
        body = super().token_response(
            issued if self.sign_per_request else _without_id_token(issued), client, endpoint)
        if not self.sign_per_request and issued.id_token_claims is not None:
            body["access_token"], body["id_token"] = next(self._pools[issued.account.sub])
        return body

    def mint_batch(self, count: int, code_challenge: str | None = None) -> list[str]:
        """Return ``count`` fresh codes for round-robin accounts (each with a refresh token); with
        ``code_challenge`` (S256) each needs its verifier at the exchange, as PKCE clients' codes do."""
        return [self.mint_code(CLIENT_ID, next(self._mint_accounts).email, SCOPE, prompt="consent",
                               code_challenge=code_challenge, code_challenge_method="S256" if code_challenge else None)
                for _ in range(count)]


def _without_id_token(issued: IssuedTokens) -> IssuedTokens:
    return IssuedTokens(issued.access_token, issued.expires_in, issued.scopes, issued.refresh_token, None,
                        issued.account)


class MintBatchHandler(tornado.web.RequestHandler):
    def initialize(self, emulator: BenchEmulator) -> None:
        self.emulator = emulator

    def post(self) -> None:
        count = int(self.get_argument("n", "1"))
        challenge = self.get_argument("code_challenge", None)
        self.write({"codes": self.emulator.mint_batch(min(max(count, 1), 200_000), challenge)})


class OfflineGrantsHandler(tornado.web.RequestHandler):
    def initialize(self, emulator: BenchEmulator) -> None:
        self.emulator = emulator

    def post(self) -> None:
        count = int(self.get_argument("n", "1"))
        self.write({"users": self.emulator.offline_grants(min(max(count, 1), 200_000))})


class TokenProtocol(asyncio.Protocol):
    """``POST /token`` (authorization_code and refresh_token grants, client_secret_post or basic) over a bare
    keep-alive HTTP/1.1 connection."""

    def __init__(self, emulator: BenchEmulator) -> None:
        self.emulator = emulator
        self.buffer = b""

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].decode("latin-1")
            length, authorization = 0, ""
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                name = name.strip().lower()
                if name == "content-length":
                    length = int(value)
                elif name == "authorization":
                    authorization = value.strip()
            if len(self.buffer) < end + 4 + length:
                return
            body, self.buffer = self.buffer[end + 4:end + 4 + length], self.buffer[end + 4 + length:]
            status, payload = self.answer(head.split(" ", 2)[:2], body, authorization)
            raw = json.dumps(payload).encode()
            self.transport.write(b"HTTP/1.1 %d %s\r\nContent-Type: application/json; charset=utf-8\r\n"
                                 b"Cache-Control: no-cache, no-store, max-age=0, must-revalidate\r\n"
                                 b"Content-Length: %d\r\n\r\n" % (status, b"OK" if status == 200 else b"Bad Request",
                                                                    len(raw)) + raw)

    def answer(self, request_line: list[str], body: bytes, authorization: str) -> tuple[int, dict]:
        if request_line != ["POST", "/token"]:
            return 404, {"error": "not_found", "error_description": "Not Found"}
        form = dict(parse_qsl(body.decode("utf-8", "replace")))
        state = self.emulator.state
        grant_type = form.get("grant_type")
        try:
            if grant_type not in ("authorization_code", "refresh_token"):
                raise OAuthError("unsupported_grant_type", f"Invalid grant_type: {grant_type}")
            client_id, client_secret = form.get("client_id"), form.get("client_secret")
            if authorization.lower().startswith("basic "):  # client_secret_basic (requests-oauthlib's default)
                client_id, _, client_secret = base64.b64decode(authorization[6:]).decode().partition(":")
                client_id, client_secret = unquote_plus(client_id), unquote_plus(client_secret)
            client = state.authenticate(client_id, client_secret)
            if grant_type == "authorization_code":
                issued = state.exchange_code(client, form.get("code"), form.get("redirect_uri"),
                                             form.get("code_verifier"))
            else:
                issued = state.refresh(client, form.get("refresh_token"), form.get("scope"))
        except OAuthError as exc:
            return (401 if exc.error == "invalid_client" else 400), {"error": exc.error,
                                                                   "error_description": exc.description}
        endpoint = f"token.{grant_type}"
        self.emulator.stats[endpoint] += 1
        return 200, self.emulator.token_response(issued, client, endpoint)


def make_bench_app(emulator: BenchEmulator) -> tornado.web.Application:
    """Return the emulator's application plus ``POST /bench/mint``."""
    app = emulator.make_app()
    app.add_handlers(r".*", [(r"/bench/mint", MintBatchHandler, {"emulator": emulator}),
                             (r"/bench/offline", OfflineGrantsHandler, {"emulator": emulator})])
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--accounts", type=int, default=100)
    parser.add_argument("--origin", action="append", default=[], help="allowed JavaScript origin of the client")
    parser.add_argument("--sign-per-request", action="store_true")
    parser.add_argument("--token-port", type=int, help="also serve POST /token on this port (bare asyncio HTTP)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    base = f"http://127.0.0.1:{args.port}"

    async def serve() -> None:
        emulator = BenchEmulator(
            clients=[EmulatorClient(CLIENT_ID, CLIENT_SECRET, tuple(args.origin) or ("http://127.0.0.1",))],
            accounts=bench_accounts(args.accounts), base_url=base, development=True,
            sign_per_request=args.sign_per_request,
        )
        make_bench_app(emulator).listen(args.port, address="127.0.0.1")
        if args.token_port:
            await asyncio.get_running_loop().create_server(lambda: TokenProtocol(emulator), "127.0.0.1",
                                                           args.token_port)
        print("ready", flush=True)
        await asyncio.Event().wait()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
