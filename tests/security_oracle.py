"""One oracle for every rejected case of the security suite (issue #5), and the stack it watches.

:func:`open_stack` starts the app + emulator pair of :mod:`harness` with the
root logger at DEBUG and a :class:`~harness.LogCapture` on it, and records
every body the emulator's token endpoint answers, so the oracle knows each
access, refresh and ID token that ever existed in the test.

:func:`assert_rejected` is the oracle: a rejected request got

* a clean JSON 4xx/5xx: exactly ``{"error": <short reason>}``, nothing else;
* nothing stored (no record beyond the subs the test allowed);
* no session cookie carrying a ``sub``;
* no ``signed_in`` frame on the page's open socket;
* no userinfo call at the emulator (and, for gate cases, no token request);
* no code, client secret, Basic header, or access/refresh/ID token in any
  captured log line (every logger, requests-oauthlib and oauthlib included).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
from typing import Any, Iterable

import pytest
from tornado.httpclient import HTTPResponse
from tornado.web import decode_signed_value

from harness import CLIENT_ID, CLIENT_SECRET, COOKIE_SECRET, LogCapture, PageClient, Stack, start_stack
from tornado_signin.emulator import keys as emulator_keys
from tornado_signin.sessions import SECURE_SESSION_COOKIE, SESSION_COOKIE, Session

__all__ = ["open_stack", "close_stack", "stack_fixture", "assert_rejected", "assert_logs_clean", "no_signed_in_frame",
           "session_of", "secrets_of", "BASIC_HEADER", "drain"]

#: What a client_secret_basic header of this client would look like (never sent by this server).
BASIC_HEADER = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
_REASON = re.compile(r"^[a-z][a-z0-9 _'./-]{0,63}$")


_KEY_POOL: list[Any] = []
_generate = emulator_keys.SigningKey.generate.__func__


def _pooled_generate(cls: Any) -> Any:
    # RSA key generation is ~0.13 s and the suite starts hundreds of stacks:
    # reuse real keys across stacks (each stack has its own certs cache), and
    # hand out distinct ones within a stack (rotation, the impostor key).
    index = _pooled_generate.calls % 8
    _pooled_generate.calls += 1
    while len(_KEY_POOL) <= index:
        _KEY_POOL.append(_generate(cls))
    return _KEY_POOL[index]


_pooled_generate.calls = 0


async def open_stack(**overrides: Any) -> Stack:
    """Start a stack with every log record (root at DEBUG) captured into ``stack.logs``.

    ``stack.issued`` collects every token-endpoint answer body the emulator built.
    """
    emulator_keys.SigningKey.generate = classmethod(_pooled_generate)
    try:
        stack = await start_stack(**overrides)
    finally:
        emulator_keys.SigningKey.generate = classmethod(_generate)
    capture = LogCapture()
    capture.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    stack.logs = capture
    stack.saved_root_level = root.level
    root.addHandler(capture)
    root.setLevel(logging.DEBUG)
    stack.issued = []
    emulator = stack.emulator
    original = emulator.token_response

    def recording(*args: Any, **kwargs: Any) -> dict:
        body = original(*args, **kwargs)
        stack.issued.append(dict(body))
        return body

    emulator.token_response = recording
    return stack


async def close_stack(stack: Stack) -> None:
    root = logging.getLogger()
    root.removeHandler(stack.logs)
    root.setLevel(stack.saved_root_level)
    await stack.close()


def stack_fixture(**overrides: Any) -> Any:
    """Return a pytest fixture giving each test an :func:`open_stack` (``overrides`` as config), closed after it."""

    @pytest.fixture
    def stack(io_loop: Any) -> Any:
        opened = io_loop.run_sync(lambda: open_stack(**overrides))
        yield opened
        io_loop.run_sync(lambda: close_stack(opened))

    return stack


def secrets_of(stack: Stack, extra: Iterable[str] = ()) -> list[str]:
    """Return every secret that must never be logged: client secret, Basic header, issued tokens, ``extra``."""
    found = [CLIENT_SECRET, BASIC_HEADER, COOKIE_SECRET]
    for body in getattr(stack, "issued", []):
        for name in ("access_token", "refresh_token", "id_token"):
            value = body.get(name)
            if isinstance(value, str) and len(value) >= 8:
                found.append(value)
                signature = value.rsplit(".", 1)[-1]
                if name == "id_token" and value.count(".") == 2 and len(signature) >= 16:
                    found.append(signature)  # the signature alone
    found.extend(s for s in extra if isinstance(s, str) and len(s) >= 8)
    return found


def assert_logs_clean(stack: Stack, extra: Iterable[str] = ()) -> None:
    """Assert no secret of :func:`secrets_of` appears in any captured log line."""
    text = stack.logs.text()
    for secret in secrets_of(stack, extra):
        assert secret not in text, f"a secret ({secret[:6]}…) reached the logs"
    assert not re.search(r"(?i)authorization:\s*basic\s+[A-Za-z0-9+/=]{8,}", text), "a Basic header was logged"
    assert not re.search(r"(?i)bearer\s+ya29\.", text), "a Bearer token was logged"


def session_of(client: PageClient) -> Session | None:
    """Return the Session of the client's session cookie (either name), or None."""
    for name in (SESSION_COOKIE, SECURE_SESSION_COOKIE):
        value = client.cookies.get(name)
        if value:
            payload = decode_signed_value(COOKIE_SECRET, name, value, max_age_days=31)
            return Session.decode(payload)
    return None


async def drain(socket: Any, wait: float = 0.05) -> list[Any]:
    """Return the frames that arrive on ``socket`` within ``wait`` seconds of quiet (None = closed)."""
    frames: list[Any] = []
    while True:
        try:
            message = await asyncio.wait_for(socket.read_message(), wait)
        except asyncio.TimeoutError:
            return frames
        if message is None:
            frames.append(None)
            return frames
        frames.append(json.loads(message))


async def no_signed_in_frame(socket: Any) -> list[Any]:
    frames = await drain(socket)
    assert not any(isinstance(f, dict) and f.get("type") == "signed_in" for f in frames), frames
    return frames


def assert_json_error(response: HTTPResponse, statuses: Iterable[int] | None = None) -> str:
    """Assert a clean JSON error answer; return its reason."""
    assert 400 <= response.code < 600, (response.code, response.body)
    if statuses is not None:
        assert response.code in set(statuses), (response.code, response.body)
    assert response.headers.get("Content-Type", "").startswith("application/json"), response.headers
    document = json.loads(response.body)
    # Besides its reason an error may carry only the next single-use state (the code endpoint's answers).
    assert isinstance(document, dict) and set(document) - {"state"} == {"error"}, document
    assert isinstance(document.get("state", ""), str), document
    reason = document["error"]
    assert isinstance(reason, str) and _REASON.match(reason), reason
    assert "Access-Control-Allow-Credentials" not in response.headers
    assert "Traceback" not in response.body.decode("utf-8", "replace")
    return reason


async def assert_rejected(stack: Stack, response: HTTPResponse, *, client: PageClient | None = None,
                          socket: Any = None, statuses: Iterable[int] | None = None, gate: bool = False,
                          token_requests: int | None = None, known_subs: Iterable[str] = (),
                          secrets: Iterable[str] = ()) -> str:
    """The oracle of every rejected case (see the module docstring); return the reason.

    ``gate``: the request must have been refused before any outbound call
    (the emulator saw no token request). ``token_requests``: the exact number
    of code exchanges the emulator saw (e.g. 1: no automatic retry).
    """
    reason = assert_json_error(response, statuses)
    body = response.body.decode("utf-8", "replace")
    for secret in secrets_of(stack, secrets):
        assert secret not in body, "the error body echoes a secret"
    extra = [r.sub for r in stack.store.records() if r.sub not in set(known_subs)]
    assert not extra, f"something was stored for {extra}"
    if client is not None:
        session = session_of(client)
        assert session is None or session.sub is None or session.sub in set(known_subs), session
    if socket is not None:
        await no_signed_in_frame(socket)
    stats = stack.emulator.stats
    assert stats["userinfo"] == 0, "the server called userinfo for a rejected sign-in"
    if gate:
        assert stats["token"] == 0, "a gated request reached the token endpoint"
    if token_requests is not None:
        assert stats["token.authorization_code"] == token_requests, dict(stats)
    assert_logs_clean(stack, secrets)
    return reason
