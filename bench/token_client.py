"""The token client alone: ``python -m bench.token_client [--requests N] [--concurrency C] [--rounds R]``.

Why the product's calls to Google do not go through Tornado's curl client
(``tornado_signin/http_client.py``): CPU per token POST of each client, on
kept-alive connections to the same loopback server (a bare asyncio
responder on the load core answering every request with a token reply the
size of Google's, its headers included), N POSTs with C in flight, each client
in its own process pinned to the server core, rounds interleaved. Clients:

* ``curl``: Tornado's ``CurlAsyncHTTPClient`` with the request the product made
  before (``HTTPRequest`` with its timeouts, ``decompress_response``);
* ``product``: ``tornado_signin.http_client.KeepAliveClient.request``;
* ``aiohttp``: ``aiohttp.ClientSession.post`` (only when aiohttp is installed:
  it is not a dependency).

Prints one line per client and round (ms of CPU per request, requests/s) and
the medians.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import shutil
import statistics
import subprocess
import sys
import time
from typing import Any

from .common import LOAD_CPU, SERVER_CPU

_BODY = json.dumps({"access_token": "ya29." + "a" * 150, "expires_in": 3599, "scope": "openid email profile",
                    "token_type": "Bearer", "id_token": "e" * 900}).encode()
_REPLY = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\n"
          b"Cache-Control: no-cache, no-store, max-age=0, must-revalidate\r\nPragma: no-cache\r\n"
          b"Date: Mon, 01 Jan 1990 00:00:00 GMT\r\nVary: Origin\r\nVary: X-Origin\r\n"
          b"Server: scaffolding on HTTPServer2\r\nX-XSS-Protection: 0\r\n"
          b"Content-Length: %d\r\n\r\n" % len(_BODY)) + _BODY
_FORM = "grant_type=refresh_token&client_id=bench.apps.googleusercontent.com&client_secret=x&refresh_token=1%2F%2Frt-"


class _Responder(asyncio.Protocol):
    """Answers each request (head + Content-Length body) with the token reply, keep-alive."""

    def connection_made(self, transport: Any) -> None:
        self.transport, self.buffer = transport, b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            head = self.buffer[:end].lower()
            at = head.find(b"content-length:")
            length = int(head[at + 15:].split(b"\r\n")[0]) if at >= 0 else 0
            if len(self.buffer) < end + 4 + length:
                return
            self.buffer = self.buffer[end + 4 + length:]
            self.transport.write(_REPLY)


async def _serve(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(_Responder, "127.0.0.1", port)
    print("ready", flush=True)
    async with server:
        await asyncio.Event().wait()


async def _drive(kind: str, url: str, requests: int, concurrency: int) -> tuple[float, float]:
    if kind == "curl":
        from tornado.curl_httpclient import CurlAsyncHTTPClient
        from tornado.httpclient import HTTPRequest

        curl = CurlAsyncHTTPClient(force_instance=True, max_clients=concurrency)

        async def one(body: str) -> tuple[int, bytes]:
            reply = await curl.fetch(HTTPRequest(
                url, method="POST", body=body, headers={"Accept": "application/json"}, connect_timeout=5,
                request_timeout=10, follow_redirects=False, decompress_response=True), raise_error=False)
            return reply.code, reply.body
    elif kind == "aiohttp":
        import aiohttp

        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency))

        async def one(body: str) -> tuple[int, bytes]:
            async with session.post(url, data=body, headers={
                    "Accept": "application/json", "Content-Type": "application/x-www-form-urlencoded"}) as reply:
                return reply.status, await reply.read()
    else:
        from tornado_signin.http_client import KeepAliveClient

        client = KeepAliveClient(max_connections=concurrency)
        headers = {"Accept": "application/json", "Content-Type": "application/x-www-form-urlencoded"}

        async def one(body: str) -> tuple[int, bytes]:
            reply = await client.request("POST", url, body=body.encode(), headers=headers)
            return reply.code, reply.body

    slots = asyncio.Semaphore(concurrency)

    async def task(index: int) -> None:
        async with slots:
            code, body = await one(_FORM + str(index))
            assert code == 200, code
            json.loads(body)

    await asyncio.gather(*(task(i) for i in range(min(1000, requests))))  # connections opened, warm
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu0, began = usage.ru_utime + usage.ru_stime, time.perf_counter()
    await asyncio.gather(*(task(i) for i in range(requests)))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    if kind == "aiohttp":
        await session.close()
    return 1000 * (usage.ru_utime + usage.ru_stime - cpu0) / requests, requests / (time.perf_counter() - began)


def _pinned(cpu: int, argv: list[str]) -> list[str]:
    return ["taskset", "-c", str(cpu), *argv] if shutil.which("taskset") else argv


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--client", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        asyncio.run(_serve(args.serve))
        return 0
    if args.client:
        ms, rate = asyncio.run(_drive(args.client, args.url, args.requests, args.concurrency))
        print(json.dumps({"ms": ms, "rate": rate}), flush=True)
        return 0
    from .run import free_port

    port = free_port()
    server = subprocess.Popen(_pinned(LOAD_CPU, [sys.executable, "-m", "bench.token_client", "--serve", str(port)]),
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        kinds = ["curl", "product"]
        try:
            import aiohttp  # noqa: F401
            kinds.append("aiohttp")
        except ImportError:
            print("(aiohttp is not installed: only curl and product)")
        results: dict[str, list[float]] = {kind: [] for kind in kinds}
        for round_ in range(args.rounds):
            for kind in kinds:
                run = subprocess.run(_pinned(SERVER_CPU, [
                    sys.executable, "-m", "bench.token_client", "--client", kind, "--url",
                    f"http://127.0.0.1:{port}/token", "--requests", str(args.requests),
                    "--concurrency", str(args.concurrency)]), capture_output=True, text=True, timeout=300, check=True)
                report = json.loads(run.stdout.strip().splitlines()[-1])
                results[kind].append(report["ms"])
                print(f"round {round_ + 1} {kind:8s} {report['ms']:.3f} ms of CPU per request, "
                      f"{report['rate']:.0f} requests/s", flush=True)
        for kind, values in results.items():
            print(f"median   {kind:8s} {statistics.median(values):.3f} ms of CPU per request")
    finally:
        server.terminate()
        server.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
