"""The one validation layer: every value the server reads from a request is checked here, by its grammar.

Headers arrive as Latin-1 text (Tornado's parser), so a value can hold any
byte: NUL, controls, ``²`` (a digit to ``str.isdigit``, not to ``int``), a
broken IPv6 bracket that makes ``urlsplit`` raise. Handlers read request
values only through this module, which answers a malformed one with
:class:`InputError` — a 400 whose short ``reason`` (``malformed <name>``)
becomes the JSON ``{"error": …}`` — before any other code parses it:

- :func:`check_headers` — every header a handler reads (below), at once, in
  ``prepare()`` (and the websocket handshake): one pass, so no handler can
  forget one.
- accessors for what is then parsed: :func:`state`, :func:`origin`,
  :func:`content_length`, :func:`content_type`, :func:`flag` (query
  arguments), :func:`code` (the body), :func:`scheme` and :func:`own_origin`
  (the page's own origin, from ``server.public_origin`` when it is set).

The session cookie is the exception: a malformed or forged one is *ignored*
(the request has no session), as a browser may hold other cookies of the
site in any shape. ``X-Request-Id`` is sanitised, never refused
(:func:`tornado_signin.logctx.accept_request_id`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from urllib.parse import urlsplit

from tornado.httputil import HTTPServerRequest
from tornado.iostream import SSLIOStream
from tornado.web import HTTPError

from ..config import ServerConfig

__all__ = [
    "InputError",
    "HEADER_RULES",
    "check_headers",
    "state",
    "origin",
    "content_length",
    "content_type",
    "flag",
    "code",
    "scheme",
    "own_origin",
    "user_agent",
]

#: Printable ASCII without space (what a token, an origin or a state is made of).
_VISIBLE = re.compile(r"[\x21-\x7e]*")
#: What a state header may hold at all; its structure is StateSigner.check's (403 "invalid state").
_STATE = re.compile(r"[\x21-\x7e]{1,1024}")
_FETCH_TOKEN = re.compile(r"[A-Za-z0-9?_-]{1,32}")
_DIGITS = re.compile(r"[0-9]{1,12}")
_CONTENT_TYPE = re.compile(r"[\x20-\x7e]{0,256}")
_HOST = re.compile(r"(?:[A-Za-z0-9_.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?")
_WEBSOCKET_KEY = re.compile(r"[A-Za-z0-9+/]{22}==")
_PROTO = re.compile(r"[A-Za-z]{1,10}(?:[ \t]*,[ \t]*[A-Za-z]{1,10})*")
#: Google's one-time codes are URL-safe text ("4/0AX4Xf…"); nothing else is accepted.
_CODE = re.compile(r"[0-9A-Za-z/_.~+-]+")  # fullmatch: "$" would let a trailing LF through
_MAX_ORIGIN = 2048


class InputError(HTTPError):
    """A request value that breaks its grammar: 400 ``{"error": "malformed <name>"}``."""

    def __init__(self, name: str, detail: str = "") -> None:
        super().__init__(400, f"malformed {name}{': ' + detail if detail else ''}", reason=f"malformed {name}")


def _parses_as_origin(value: str) -> bool:
    if value in ("", "null"):  # absent or opaque: refused by the gate (403), not malformed
        return True
    if len(value) > _MAX_ORIGIN or not _VISIBLE.fullmatch(value):
        return False
    try:
        parts = urlsplit(value)
        _ = parts.port  # reading it raises ValueError for a port out of range or not a number
    except ValueError:
        return False
    return bool(parts.scheme) and bool(parts.netloc)


#: Each header a handler reads, with its grammar (applied to a present value).
HEADER_RULES: Mapping[str, Callable[[str], bool]] = {
    "X-Signin-State": lambda v: _STATE.fullmatch(v) is not None,
    "Origin": _parses_as_origin,
    "Sec-Fetch-Site": lambda v: _FETCH_TOKEN.fullmatch(v) is not None,
    "Sec-Fetch-Mode": lambda v: _FETCH_TOKEN.fullmatch(v) is not None,
    "Sec-Fetch-Dest": lambda v: _FETCH_TOKEN.fullmatch(v) is not None,
    "Sec-Fetch-User": lambda v: _FETCH_TOKEN.fullmatch(v) is not None,
    "Content-Length": lambda v: _DIGITS.fullmatch(v) is not None,
    "Content-Type": lambda v: _CONTENT_TYPE.fullmatch(v) is not None,
    "Host": lambda v: _HOST.fullmatch(v) is not None,
}
#: Read by the websocket handshake only.
WEBSOCKET_RULES: Mapping[str, Callable[[str], bool]] = {
    "Upgrade": lambda v: v.lower() == "websocket",
    "Connection": lambda v: "upgrade" in (token.strip().lower() for token in v.split(",")),
    "Sec-WebSocket-Key": lambda v: _WEBSOCKET_KEY.fullmatch(v) is not None,
    "Sec-WebSocket-Version": lambda v: v == "13",
}


def check_headers(request: HTTPServerRequest, *, websocket: bool = False) -> None:
    """Raise InputError for the first header (of :data:`HEADER_RULES`) whose value breaks its grammar.

    A header sent twice is malformed: each of these is single-valued, and two
    values would let two parsers (a proxy's and this one) see different ones.
    With ``websocket``, also check the handshake's own headers (which must be present).
    """
    headers = request.headers
    for name, valid in HEADER_RULES.items():
        values = headers.get_list(name)
        if len(values) > 1 or (values and not valid(values[0])):
            raise InputError(name.lower())
    if websocket:
        for name, valid in WEBSOCKET_RULES.items():
            values = headers.get_list(name)
            if len(values) != 1 or not valid(values[0]):
                raise InputError(name.lower())


def state(request: HTTPServerRequest) -> str | None:
    """Return the ``X-Signin-State`` header (checked by :func:`check_headers`), or None."""
    value = request.headers.get("X-Signin-State")
    if value is not None and not _STATE.fullmatch(value):
        raise InputError("x-signin-state")
    return value


def origin(request: HTTPServerRequest) -> str | None:
    """Return the ``Origin`` header, a parseable origin (or ``null``), or None when absent."""
    value = request.headers.get("Origin")
    if value is not None and not _parses_as_origin(value):
        raise InputError("origin")
    return value


def content_length(request: HTTPServerRequest) -> int | None:
    """Return ``Content-Length`` as an int (ASCII digits only), or None when absent."""
    value = request.headers.get("Content-Length")
    if value is None:
        return None
    if not _DIGITS.fullmatch(value):
        raise InputError("content-length")
    return int(value)


def content_type(request: HTTPServerRequest) -> str:
    """Return the media type of ``Content-Type``, lower case, without parameters ("" when absent)."""
    value = request.headers.get("Content-Type", "")
    if not _CONTENT_TYPE.fullmatch(value):
        raise InputError("content-type")
    return value.split(";")[0].strip().lower()


def flag(value: str | None, name: str) -> bool:
    """Return the boolean query argument ``name`` of value ``value`` (None: absent, False).

    ``1``/``true`` are True, ``0``/``false``/empty False; anything else is malformed.
    """
    if value is None or value in ("", "0", "false"):
        return False
    if value in ("1", "true"):
        return True
    raise InputError(name)


def code(body: bytes, max_length: int) -> str:
    """Return the one-time code of a POST body: URL-safe characters, at most ``max_length`` of them.

    Raise InputError("code") otherwise (also for a body that is not UTF-8).
    """
    try:
        text = body.decode("utf-8").strip(" ")
    except UnicodeDecodeError:
        raise InputError("code", "not UTF-8") from None
    if not text or len(text) > max_length or not _CODE.fullmatch(text):
        raise InputError("code", f"rejected by the charset/length bound ({len(text)} chars)")
    return text


def _connection_scheme(request: HTTPServerRequest) -> str:
    """Return the scheme of the connection itself, whatever the headers say."""
    stream = getattr(request.connection, "stream", None)
    return "https" if isinstance(stream, SSLIOStream) else "http"


def scheme(request: HTTPServerRequest, server: ServerConfig) -> str:
    """Return the scheme the client sees: the cookie's name and ``Secure``, HSTS and the own origin follow it.

    ``server.public_origin`` decides when it is set, whatever the headers say.
    Otherwise, with ``server.xheaders``, only ``X-Forwarded-Proto`` (its last
    value) counts: Tornado's xheaders would let ``X-Scheme`` win, a header
    a proxy may pass through from the client. Without either, the connection's.
    """
    if server.public_origin:
        return urlsplit(server.public_origin).scheme
    if server.xheaders:
        forwarded = request.headers.get("X-Forwarded-Proto")
        if forwarded is not None and _PROTO.fullmatch(forwarded):
            last = forwarded.split(",")[-1].strip().lower()
            if last in ("http", "https"):
                return last
        return _connection_scheme(request)
    return request.protocol


def own_origin(request: HTTPServerRequest, server: ServerConfig) -> str:
    """Return the app's own origin: ``server.public_origin``, else the request's scheme and ``Host``."""
    if server.public_origin:
        return server.public_origin.lower()
    host = request.host
    if not _HOST.fullmatch(host):
        raise InputError("host")
    return f"{scheme(request, server)}://{host}".lower()


def user_agent(request: HTTPServerRequest, limit: int = 200) -> str:
    """Return ``User-Agent`` cut to ``limit`` printable ASCII characters (others dropped): it is only listed."""
    return "".join(ch for ch in request.headers.get("User-Agent", "")[: 4 * limit] if " " <= ch <= "~")[:limit]
