"""Issue 12.7: hostile values in every request input the server parses.

Each parsed input — the headers (X-Signin-State, Origin, Sec-Fetch-*,
Content-Length, Content-Type, Cookie, X-Request-Id, X-Forwarded-*, Host,
User-Agent, the websocket handshake's own), the query arguments and the body
— is sent a seeded set of hostile strings (Unicode digits, NUL and controls,
CR/LF, very long, lone surrogates, %-encodings, IDNA, IPv6 brackets, bidi
controls…) as raw bytes on a socket, to every endpoint that reads it. Every
answer must be a 4xx (or 2xx): no 5xx. An answer of the app (it carries
``X-Request-Id``) must be JSON; one Tornado's HTTP parser gave before the app
saw the request must be a 400 (or a closed connection). The log, captured at
DEBUG, holds no ERROR line and no traceback.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random

import pytest

from security_oracle import stack_fixture

pytestmark = pytest.mark.gen_test(timeout=120)

SEED = 12_7

HOSTILE: list[str] = [
    "²", "١٢٣", "٣", "𝟗", "①", "0x10", "-1", "+1", "1e3", " 1", "1 ", "99999999999999999999999",
    "\x00", "a\x00b", "\x01", "\x7f", "\x1b[31m", "\t", " ", "", "\r", "a\rb",
    "x" * 300, "y" * 5000, "\ud800", "a\udfffb", "\ufeff", "\u202eevil", "\u2028", "é", "ÿ", "\xff\xfe",
    "%00", "%0d%0a", "%ff", "%c0%af", "%%", "%",
    "null", "*", "http://", "http://[", "http://[::1", "http://[::1]:99999", "http://[fe80::1%25eth0]",
    "http://127.0.0.1:-1", "http://127.0.0.1:port", "https://a:b@c", "http://xn--80ak6aa92e.com",
    "http://пример.рф", "https://ex ample.com", "javascript:alert(1)", "file:///etc/passwd",
    "http://127.0.0.1:8080/", "ws://127.0.0.1", "//evil", "a,b", "a;b", "=", "\"", "'", "\\",
    "🙂", "中文", "\u0130", "ß",
]


def hostile_values(seed: int = SEED) -> list[str]:
    """Return :data:`HOSTILE` plus seeded random mixes of its pieces."""
    rng = random.Random(seed)
    mixed = ["".join(rng.choice(HOSTILE[:40]) for _ in range(rng.randint(2, 5))) for _ in range(20)]
    return HOSTILE + mixed


def wire(value: str) -> bytes:
    """Encode ``value`` as an attacker sends it: UTF-8, lone surrogates included."""
    return value.encode("utf-8", "surrogatepass")


stack = stack_fixture(limits={"code_posts_per_minute": 0})
proxied = stack_fixture(limits={"code_posts_per_minute": 0}, server={"xheaders": True})


class Answer:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body


async def raw(port: int, head: bytes, body: bytes = b"") -> Answer:
    """Send one request (``head`` without its final CRLF) on a fresh connection; return the answer.

    Status 0: the server closed the connection without answering.
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head + b"Connection: close\r\n\r\n" + body)
        data = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    if not data:
        return Answer(0, {}, b"")
    header_block, _, payload = data.partition(b"\r\n\r\n")
    lines = header_block.decode("latin1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Answer(int(lines[0].split()[1]), headers, payload)


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def capture() -> Records:
    handler = Records()
    logging.getLogger().addHandler(handler)
    return handler


def check(answer: Answer, what: str) -> None:
    assert answer.status < 500, (what, answer.status, answer.body[:200])
    if "x-request-id" in answer.headers:  # the app answered
        if answer.status not in (101, 200, 204):
            assert answer.headers.get("content-type", "").startswith("application/json"), (what, answer.headers)
            document = json.loads(answer.body)
            assert isinstance(document.get("error"), str) and len(document["error"]) < 60, (what, document)
    else:  # Tornado's HTTP parser refused the request before the app
        assert answer.status in (0, 400), (what, answer.status, answer.body[:200])


def no_errors(records: Records) -> None:
    bad = [r for r in records.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not bad, [(r.name, r.getMessage()[:200]) for r in bad[:5]]


async def session_page(stack) -> tuple[str, str, str]:
    """Return (cookie header, a fresh state, host:port) of a page that loaded /."""
    client = stack.client()
    assert (await client.fetch("/")).code == 200
    state = await client.state()
    return client.cookie_header(), state, stack.app_url.split("://", 1)[1]


def gate_head(host: str, cookie: str, state: str, path: str = "/storeauthcode", **replace: str | None) -> bytes:
    """The head of a POST the page sends, with header ``replace[name]`` swapped in (None: left out)."""
    headers = {
        "Host": host, "Cookie": cookie, "X-Requested-With": "XMLHttpRequest", "Origin": f"http://{host}",
        "Content-Type": "application/octet-stream", "X-Signin-State": state, "Content-Length": "12",
        "Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "cors", "Sec-Fetch-Dest": "empty",
    }
    out = [f"POST {path} HTTP/1.1\r\n".encode()]
    for name, value in {**headers, **{k.replace("_", "-"): v for k, v in replace.items()}}.items():
        if value is not None:
            out.append(name.encode() + b": " + wire(value) + b"\r\n")
    return b"".join(out)


def get_head(path: str, host: str, **headers: str | None) -> bytes:
    out = [b"GET " + path.encode("latin1") + b" HTTP/1.1\r\n"]
    for name, value in {"Host": host, **{k.replace("_", "-"): v for k, v in headers.items()}}.items():
        if value is not None:
            out.append(name.encode() + b": " + wire(value) + b"\r\n")
    return b"".join(out)


def handshake_head(host: str, **headers: str | None) -> bytes:
    base = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version": "13", "Origin": f"http://{host}"}
    base.update({k.replace("_", "-"): v for k, v in headers.items()})
    return get_head("/confirm", host, **base)


POST_HEADERS = ["X-Signin-State", "Origin", "Sec-Fetch-Site", "Sec-Fetch-Mode", "Sec-Fetch-Dest", "Sec-Fetch-User",
                "Content-Type", "Content-Length", "Cookie", "X-Request-Id", "Host", "User-Agent"]


@pytest.mark.parametrize("name", POST_HEADERS)
async def test_hostile_header_values_on_the_code_endpoint_sign_out_and_disconnect(stack, name):
    records = capture()
    port = int(stack.app_url.rsplit(":", 1)[1])
    try:
        cookie, state, host = await session_page(stack)
        for value in hostile_values():
            for path in ("/storeauthcode", "/signout", "/disconnect"):
                answer = await raw(port, gate_head(host, cookie, state, path, **{name: value}), b"4/0Afuzzcode")
                check(answer, f"{path} {name}={value!r}")
        no_errors(records)
        assert not stack.emulator.token_requests if hasattr(stack.emulator, "token_requests") else True
    finally:
        logging.getLogger().removeHandler(records)


HANDSHAKE_HEADERS = ["Origin", "Cookie", "Host", "X-Request-Id", "Upgrade", "Connection", "Sec-WebSocket-Key",
                     "Sec-WebSocket-Version", "Sec-Fetch-Site"]


@pytest.mark.parametrize("name", HANDSHAKE_HEADERS)
async def test_hostile_header_values_on_the_websocket_handshake(stack, name):
    """Without a cookie (nothing is needed to reach the origin check) and with one."""
    records = capture()
    port = int(stack.app_url.rsplit(":", 1)[1])
    try:
        cookie, _state, host = await session_page(stack)
        for value in hostile_values():
            for with_cookie in (False, True):
                extra = {"Cookie": cookie} if with_cookie else {}
                answer = await raw(port, handshake_head(host, **{**extra, name: value}))
                check(answer, f"/confirm {name}={value!r} cookie={with_cookie}")
                assert answer.status != 101 or name in ("X-Request-Id", "Sec-Fetch-Site"), (name, value)
        no_errors(records)
    finally:
        logging.getLogger().removeHandler(records)


GET_HEADERS = ["Cookie", "Host", "X-Request-Id", "User-Agent", "Origin", "Sec-Fetch-Site"]


@pytest.mark.parametrize("name", GET_HEADERS)
async def test_hostile_header_values_on_the_page_state_and_health(stack, name):
    records = capture()
    port = int(stack.app_url.rsplit(":", 1)[1])
    try:
        cookie, _state, host = await session_page(stack)
        for value in hostile_values():
            for path in ("/", "/state", "/healthz", "/api/scopes", "/nowhere"):
                answer = await raw(port, get_head(path, host, **{"Cookie": cookie, name: value}))
                check(answer, f"{path} {name}={value!r}")
        no_errors(records)
    finally:
        logging.getLogger().removeHandler(records)


@pytest.mark.parametrize("name", ["X-Forwarded-For", "X-Real-Ip", "X-Forwarded-Proto", "X-Scheme", "Host"])
async def test_hostile_forwarded_headers_behind_a_proxy(proxied, name):
    """With server.xheaders the X-Forwarded-* headers are parsed: by Tornado (the address) and the app (the scheme)."""
    records = capture()
    port = int(proxied.app_url.rsplit(":", 1)[1])
    try:
        cookie, state, host = await session_page(proxied)
        for value in hostile_values():
            for head in (get_head("/", host, Cookie=cookie, **{name: value}),
                         get_head("/state", host, Cookie=cookie, **{name: value}),
                         gate_head(host, cookie, state, "/storeauthcode", **{name: value}),
                         handshake_head(host, Cookie=cookie, **{name: value})):
                check(await raw(port, head, b"4/0Afuzzcode" if head.startswith(b"POST") else b""), f"{name}={value!r}")
        no_errors(records)
    finally:
        logging.getLogger().removeHandler(records)


async def test_hostile_query_arguments_and_paths(stack):
    records = capture()
    port = int(stack.app_url.rsplit(":", 1)[1])
    try:
        cookie, state, host = await session_page(stack)
        for value in hostile_values():
            encoded = "".join(ch if ch.isascii() and ch.isalnum() else "".join(f"%{b:02X}" for b in wire(ch))
                              for ch in value)
            for path in (f"/healthz?ready={encoded}", f"/state?{encoded}={encoded}", f"/?x={encoded}",
                         f"/healthz?ready={value}", f"/{encoded}"):
                try:
                    target = path.encode("latin1")
                except UnicodeEncodeError:
                    target = wire(path)
                answer = await raw(port, b"GET " + target + b" HTTP/1.1\r\nHost: " + host.encode() + b"\r\n")
                check(answer, f"GET {path!r}")
            answer = await raw(port, gate_head(host, cookie, state, f"/signout?everywhere={encoded}",
                                               Content_Length="0"), b"")
            check(answer, f"signout everywhere={value!r}")
        no_errors(records)
    finally:
        logging.getLogger().removeHandler(records)


async def test_hostile_code_bodies(stack):
    records = capture()
    port = int(stack.app_url.rsplit(":", 1)[1])
    try:
        cookie, state, host = await session_page(stack)
        for value in [*hostile_values(), "4/0A" + "\x00", "4/0A\r\n", "4/0A" + "a" * 5000]:
            body = wire(value)
            head = gate_head(host, cookie, state, "/storeauthcode", Content_Length=str(len(body)))
            check(await raw(port, head, body), f"body {value[:40]!r}")
        for blob in (b"\xff\xfe\xfd", b"\xc0\xaf", b"4/0A\xed\xa0\x80", bytes(range(256))):
            head = gate_head(host, cookie, state, "/storeauthcode", Content_Length=str(len(blob)))
            check(await raw(port, head, blob), f"body {blob[:20]!r}")
        no_errors(records)
    finally:
        logging.getLogger().removeHandler(records)


@pytest.mark.parametrize("name,value,reason", [
    # Raw Latin-1 bytes: b"\xb2" is "²" to Tornado's parser, a digit to str.isdigit and not to int().
    ("X-Signin-State", b"abc.\xb2.def", "malformed x-signin-state"),
    ("X-Signin-State", "abc.١٢٣.def".encode(), "malformed x-signin-state"),
    ("X-Signin-State", b"not-a-state", "invalid state"),
    ("Origin", b"http://[::1", "malformed origin"),
    ("Origin", b"http://127.0.0.1:99999", "malformed origin"),
    ("Origin", "http://пример.рф".encode(), "malformed origin"),
    ("Content-Type", "application/octet-stream; charset=é".encode(), "malformed content-type"),
    ("Content-Length", b"1\xb2", None),  # Tornado's parser refuses it first: a 400 without the app
    ("Content-Length", "١٢".encode(), None),
])
async def test_named_cases_answer_a_short_json_4xx(stack, name, value, reason):
    port = int(stack.app_url.rsplit(":", 1)[1])
    cookie, state, host = await session_page(stack)
    records = capture()
    try:
        head = gate_head(host, cookie, state, **{name: None}) + name.encode() + b": " + value + b"\r\n"
        answer = await raw(port, head, b"4/0Afuzzcode")
        check(answer, f"{name}={value!r}")
        if reason is None:
            assert answer.status == 400
        else:
            assert "x-request-id" in answer.headers and json.loads(answer.body)["error"] == reason
        no_errors(records)
    finally:
        logging.getLogger().removeHandler(records)


async def test_websocket_origin_that_is_no_url_without_a_cookie(stack):
    port = int(stack.app_url.rsplit(":", 1)[1])
    host = stack.app_url.split("://", 1)[1]
    answer = await raw(port, handshake_head(host, Origin="http://[::1"))
    assert answer.status == 400 and json.loads(answer.body) == {"error": "malformed origin"}
    assert "x-request-id" in answer.headers
