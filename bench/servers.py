"""The servers under test, one per scenario: ``python -m bench.servers KIND --port P --emulator URL``.

KIND:

* ``ceiling``: a bare Tornado handler, ``POST /exchange`` (body: a code), making
  one outbound POST to the emulator's token endpoint with CurlAsyncHTTPClient
  (keep-alive) and answering 200. The practical limit of a one-process login server.
* ``signin``: tornado-signin itself, ``make_app(config)`` + ``make_server`` with
  the ``sql`` backend on a SQLite file, encryption at rest, the memory hub (or
  ``--hub-url redis://…``). One bench-only route is added: ``POST
  /bench/publish?channel=C`` publishes a ``signed_in`` frame through the hub
  (the socket scenario's delivery probe).
* ``mixin``: Tornado's ``GoogleOAuth2Mixin.get_authenticated_user`` (its default
  HTTP client), google-auth's ``jwt.decode`` with certs fetched once, and a
  raw sqlite3 upsert, ``POST /exchange``.
* ``flask``: see :mod:`bench.flask_peer` (run under gunicorn by bench.run).
* ``echo``: a minimal asyncio HTTP responder, to measure the load generator's own ceiling.
* ``get``: a bare Tornado ``RequestHandler`` answering ``GET /`` with a small
  JSON body: what one inbound request costs Tornado before any work of ours
  (the floor under ``GET /state``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sqlite3
import time
from typing import Any
from urllib.parse import urlencode

from .common import CLIENT_ID, CLIENT_SECRET, COOKIE_SECRET, CREATE_SQL, ENCRYPTION_KEY, UPSERT_SQL, fetch_json


#: Idle /confirm sockets the socket scenario may open (bench.run's --sockets at most this).
MAX_SOCKETS = 16_000


def bench_limits(sockets: int = MAX_SOCKETS) -> dict[str, int]:
    """Return the ``limits`` the benchmark's tornado-signin servers run with.

    Every client of the benchmark comes from one address, 127.0.0.1: the load
    generator's 50 logins and its ``sockets`` idle websockets. The product's
    per-address defaults are right for browsers behind their own addresses
    and would refuse the benchmark (128 sockets and 128 connections per address;
    30 code POSTs, and the other ``*_per_minute`` budgets, per address per minute), so they
    are raised here, for the benchmark only, rather than switched off: their
    bookkeeping stays part of every request measured. Every ``*_per_minute``
    budget and every ``*_per_address`` cap the installed version has is
    raised (the set grows with the product); the product's defaults are
    unchanged.
    """
    from dataclasses import fields

    from tornado_signin.config import LimitsConfig

    names = {f.name for f in fields(LimitsConfig)}
    limits = {name: 100_000_000 for name in names if name.endswith("_per_minute")}
    # The sockets, the login connections and room for the probes: every per-address cap of the installed
    # version (sockets_per_address, connections_per_address, …), and the process's connection cap.
    limits.update({name: sockets + 1_000 for name in names if name.endswith("_per_address")})
    limits["max_connections"] = sockets + 2_000
    return limits


def raise_fd_limit() -> None:
    """Raise this process's open-file limit to its hard limit (the socket scenario needs >10,000)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def signin_config(port: int, emulator: str, db: str, hub_url: str | None = None, token_uri: str | None = None) -> Any:
    """Return the tornado-signin Config the benchmark serves."""
    from tornado_signin.config import config_from_dict

    data: dict[str, Any] = {
        "development": True,
        "log_level": "WARNING",
        "server": {"cookie_secret": COOKIE_SECRET, "port": port,
                   "allowed_origins": [f"http://127.0.0.1:{port}", "http://127.0.0.1"]},
        "google": {
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "client_script_url": emulator + "/gsi/client",
            "endpoints": {"auth_uri": emulator + "/o/oauth2/v2/auth", "token_uri": token_uri or emulator + "/token",
                          "certs_uri": emulator + "/oauth2/v1/certs", "revoke_uri": emulator + "/revoke"},
        },
        "store": {"backend": "sql", "url": f"sqlite:///{db}", "sqlite_synchronous": "NORMAL",
                  "encryption": {"keys": [ENCRYPTION_KEY]}},
        "limits": bench_limits(),
    }
    if hub_url:
        data["hub"] = {"backend": "redis", "url": hub_url}
    return config_from_dict(data, environ={})


def serve_signin(args: argparse.Namespace) -> None:
    from tornado.netutil import bind_sockets
    from tornado.web import RequestHandler

    from tornado_signin.app import make_app, make_server
    from tornado_signin.server import settle_collector

    config = signin_config(args.port, args.emulator, args.db, args.hub_url, args.token_uri)
    logging.basicConfig(level=logging.WARNING)
    raise_fd_limit()
    sockets = bind_sockets(args.port, address="127.0.0.1", reuse_port=args.reuse_port)

    class PublishHandler(RequestHandler):
        def initialize(self, ctx: Any) -> None:
            self.ctx = ctx

        async def post(self) -> None:
            channel = self.get_argument("channel")
            await self.ctx.hub.publish(channel, {"frame": {"type": "signed_in", "user": {"sub": "1"}}},
                                       record=False)
            self.finish(b"ok")

    async def main() -> None:
        app = make_app(config)
        ctx = app.settings["signin"]
        app.add_handlers(r".*", [(r"/bench/publish", PublishHandler, {"ctx": ctx})])
        server = make_server(app, config)
        server.add_sockets(sockets)
        settle_collector()  # as the serve command does
        print("ready", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


def serve_ceiling(args: argparse.Namespace) -> None:
    from tornado.curl_httpclient import CurlAsyncHTTPClient
    from tornado.httpclient import HTTPRequest
    from tornado.web import Application, RequestHandler

    token_uri = args.token_uri

    class ExchangeHandler(RequestHandler):
        def initialize(self, http: Any) -> None:
            self.http = http

        async def post(self) -> None:
            body = urlencode({"grant_type": "authorization_code", "code": self.request.body.decode(),
                              "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "redirect_uri": "postmessage"})
            response = await self.http.fetch(HTTPRequest(token_uri, method="POST", body=body), raise_error=False)
            self.set_status(200 if response.code == 200 else 502)
            self.finish(b'{"status":"ok"}')

    from tornado.httpserver import HTTPServer
    from tornado.netutil import bind_sockets
    from tornado.process import fork_processes

    sockets = bind_sockets(args.port, address="127.0.0.1")
    if args.processes > 1:
        fork_processes(args.processes)

    async def main() -> None:
        http = CurlAsyncHTTPClient(force_instance=True, max_clients=64)
        server = HTTPServer(Application([(r"/exchange", ExchangeHandler, {"http": http})]))
        server.add_sockets(sockets)
        print("ready", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


def open_peer_db(path: str) -> sqlite3.Connection:
    """Return a sqlite3 connection in WAL mode with the peers' table."""
    db = sqlite3.connect(path, timeout=30, check_same_thread=False)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")  # as the product's sql backend is configured here
    db.execute(CREATE_SQL)
    db.commit()
    return db


def peer_store(db: sqlite3.Connection, claims: dict, tokens: dict) -> None:
    """The peers' SQLite upsert: one statement, one commit."""
    db.execute(UPSERT_SQL, (claims["sub"], claims.get("email"), tokens.get("refresh_token"),
                            tokens["access_token"], time.time() + int(tokens.get("expires_in", 3600)), time.time()))
    db.commit()


def verify_peer(id_token: str, certs: dict) -> dict:
    """google-auth verification with cached certs, as a careful peer writes it."""
    from google.auth import jwt

    claims = jwt.decode(id_token, certs=certs, audience=CLIENT_ID)
    if claims.get("iss") not in ("https://accounts.google.com", "accounts.google.com"):
        raise ValueError("wrong issuer")
    return claims


def serve_mixin(args: argparse.Namespace) -> None:
    from tornado.auth import GoogleOAuth2Mixin
    from tornado.web import Application, HTTPError, RequestHandler

    certs = fetch_json(args.emulator + "/oauth2/v1/certs")
    db = open_peer_db(args.db)

    class ExchangeHandler(RequestHandler, GoogleOAuth2Mixin):
        _OAUTH_ACCESS_TOKEN_URL = args.token_uri

        async def post(self) -> None:
            tokens = await self.get_authenticated_user(redirect_uri="postmessage", code=self.request.body.decode())
            try:
                claims = verify_peer(tokens["id_token"], certs)
            except ValueError as exc:
                raise HTTPError(401) from exc
            peer_store(db, claims, tokens)
            self.set_signed_cookie("user", claims["sub"])
            self.finish({"status": "signed_in", "user": {"sub": claims["sub"], "email": claims.get("email")}})

    async def main() -> None:
        Application([(r"/exchange", ExchangeHandler)], cookie_secret=COOKIE_SECRET,
                    google_oauth={"key": CLIENT_ID, "secret": CLIENT_SECRET}).listen(args.port, address="127.0.0.1")
        print("ready", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


def serve_get(args: argparse.Namespace) -> None:
    from tornado.web import Application, RequestHandler

    class StateLike(RequestHandler):
        def get(self) -> None:
            self.set_header("Content-Type", "application/json; charset=UTF-8")
            self.finish(b'{"state":"0123456789abcdef0123456789abcdef.1700000000.0123456789abcdef"}')

    async def main() -> None:
        Application([(r"/", StateLike)]).listen(args.port, address="127.0.0.1")
        print("ready", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


def serve_echo(args: argparse.Namespace) -> None:
    response = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"

    class Echo(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            self.transport = transport
            self.buffer = b""

        def data_received(self, data: bytes) -> None:
            self.buffer += data
            while True:
                end = self.buffer.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = self.buffer[:end].lower()
                length = 0
                at = head.find(b"content-length:")
                if at >= 0:
                    length = int(head[at + 15:].split(b"\r\n", 1)[0])
                if len(self.buffer) < end + 4 + length:
                    return
                self.buffer = self.buffer[end + 4 + length:]
                self.transport.write(response)

    async def main() -> None:
        await asyncio.get_running_loop().create_server(Echo, "127.0.0.1", args.port)
        print("ready", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="a server under test")
    parser.add_argument("kind", choices=("ceiling", "signin", "mixin", "echo", "get"))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--emulator", default="")
    parser.add_argument("--db", default=os.devnull)
    parser.add_argument("--hub-url")
    parser.add_argument("--token-uri", help="the token endpoint (default: the emulator's /token)")
    parser.add_argument("--reuse-port", action="store_true")
    parser.add_argument("--processes", type=int, default=1, help="ceiling: fork this many processes")
    args = parser.parse_args(argv)
    args.token_uri = args.token_uri or args.emulator + "/token"
    {"ceiling": serve_ceiling, "signin": serve_signin, "mixin": serve_mixin, "echo": serve_echo,
     "get": serve_get}[args.kind](args)


if __name__ == "__main__":
    main()
