"""The benchmark's Google: the real emulator, with ID tokens signed ahead of time.

``python -m bench.emulator --port P`` serves :class:`tornado_signin.emulator.Emulator`
(development mode, logging at WARNING) with two changes, both for the
benchmark only:

* ``POST /bench/mint?n=N`` mints N one-time codes in one request, through the
  same :meth:`Emulator.mint_code` that the test-only ``POST /emulator/code``
  calls (round-robin over the test accounts, ``prompt=consent`` so every code
  carries a refresh token). Minting is not measured.
* The token endpoint's RSA signature is taken from a pool of ID tokens signed
  at start-up (per account, with ``at_hash`` matching the pooled access token)
  instead of being computed per request: RSA-2048 signing costs ~1.1 ms here,
  so a per-request signature would make the emulator, which shares its core
  with the load generator, the bottleneck of every scenario. Everything else
  of ``/token`` is the emulator's own code: client authentication, the
  single-use, expiring code, the redirect_uri check, the JSON reply. Tokens
  are valid for an hour, so the pool outlives any run.
  ``--sign-per-request`` restores the emulator's own signing.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging

import tornado.web

from tornado_signin.emulator import Emulator, EmulatorClient, TestAccount
from tornado_signin.emulator.keys import at_hash
from tornado_signin.emulator.state import IssuedTokens, _new_token, expand_scopes

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
        if not sign_per_request:
            scopes = expand_scopes(SCOPE)
            for account in self.state.accounts:
                pairs = []
                for _ in range(pool_per_account):
                    access_token = _new_token("ya29.a0", 96)
                    claims = self.state.id_token_claims(CLIENT_ID, account, scopes, int(self.state.clock()), None)
                    claims["at_hash"] = at_hash(access_token)
                    pairs.append((access_token, self.keys.sign({}, claims, client_secret=CLIENT_SECRET)))
                self._pools[account.sub] = itertools.cycle(pairs)

    def token_response(self, issued: IssuedTokens, client: EmulatorClient, endpoint: str = "token") -> dict:
        body = super().token_response(
            issued if self.sign_per_request else _without_id_token(issued), client, endpoint)
        if not self.sign_per_request and issued.id_token_claims is not None:
            body["access_token"], body["id_token"] = next(self._pools[issued.account.sub])
        return body

    def mint_batch(self, count: int) -> list[str]:
        """Return ``count`` fresh codes for round-robin accounts (each with a refresh token)."""
        return [self.mint_code(CLIENT_ID, next(self._mint_accounts).email, SCOPE, prompt="consent")
                for _ in range(count)]


def _without_id_token(issued: IssuedTokens) -> IssuedTokens:
    return IssuedTokens(issued.access_token, issued.expires_in, issued.scopes, issued.refresh_token, None,
                        issued.account)


class MintBatchHandler(tornado.web.RequestHandler):
    def initialize(self, emulator: BenchEmulator) -> None:
        self.emulator = emulator

    def post(self) -> None:
        count = int(self.get_argument("n", "1"))
        self.write({"codes": self.emulator.mint_batch(min(max(count, 1), 200_000))})


def make_bench_app(emulator: BenchEmulator) -> tornado.web.Application:
    """Return the emulator's application plus ``POST /bench/mint``."""
    app = emulator.make_app()
    app.add_handlers(r".*", [(r"/bench/mint", MintBatchHandler, {"emulator": emulator})])
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--accounts", type=int, default=100)
    parser.add_argument("--origin", action="append", default=[], help="allowed JavaScript origin of the client")
    parser.add_argument("--sign-per-request", action="store_true")
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
        print("ready", flush=True)
        await asyncio.Event().wait()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
