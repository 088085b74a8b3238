"""The host app's hooks (``SigninHooks``): what each event carries, when it runs relative to the HTTP answer
and the socket frame, and that a failing or slow hook never breaks a sign-in."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import pytest

from harness import LogCapture, PageClient, json_body, start_stack
from test_risc import start_risc_stack, trigger
from tornado_signin.errors import ConsentRequiredError
from tornado_signin.hooks import ConsentRequired, Revoked, SignedIn, SignedOut, SigninHooks

pytestmark = pytest.mark.gen_test(timeout=30)

EMAIL_SCOPE = "https://www.googleapis.com/auth/userinfo.email"


class Recorder:
    """Every hook call with the moment it started and ended (monotonic seconds)."""

    def __init__(self, delay: float = 0.0, fail: bool = False) -> None:
        self.delay = delay
        self.fail = fail
        self.calls: list[tuple[str, Any, float, float]] = []
        self.store_seen: list[Any] = []
        self.store: Any = None

    def hook(self, name: str):
        async def record(event: Any) -> None:
            started = time.monotonic()
            if self.store is not None and isinstance(event, SignedIn):
                self.store_seen.append(self.store.get(event.user.sub))
            if self.delay:
                await asyncio.sleep(self.delay)
            self.calls.append((name, event, started, time.monotonic()))
            if self.fail:
                raise ValueError("the host's own bug")
        return record

    def hooks(self, **kw: Any) -> SigninHooks:
        return SigninHooks(on_signed_in=self.hook("signed_in"), on_signed_out=self.hook("signed_out"),
                           on_revoked=self.hook("revoked"), on_consent_required=self.hook("consent_required"),
                           on_access_expiring=self.hook("access_expiring"), **kw)

    def events(self, name: str) -> list[Any]:
        return [event for called, event, _, _ in self.calls if called == name]


@pytest.fixture
def logs():
    capture = LogCapture()
    capture.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    level = root.level
    root.addHandler(capture)
    root.setLevel(logging.DEBUG)
    yield capture
    root.removeHandler(capture)
    root.setLevel(level)


async def open_stack(recorder: Recorder, **kw: Any):
    stack = await start_stack(hooks=recorder.hooks(**kw))
    recorder.store = stack.store
    return stack


async def read_frames(socket, into: list[tuple[float, dict]]) -> None:
    while True:
        message = await socket.read_message()
        if message is None:
            return
        into.append((time.monotonic(), json.loads(message)))


async def timed_sign_in(stack, email: str = "alice@example.com", **mint: Any):
    """Sign in with a socket open; return (answer, its arrival time, the frames with their arrival times)."""
    client = stack.client()
    await client.fetch("/")
    socket = await client.socket()
    frames: list[tuple[float, dict]] = []
    reader = asyncio.ensure_future(read_frames(socket, frames))
    response = await client.post_code(stack.mint(email, **mint))
    answered = time.monotonic()
    for _ in range(100):
        if frames:
            break
        await asyncio.sleep(0.02)
    socket.close()
    await asyncio.wait_for(reader, 5)
    return client, response, answered, frames


async def test_signed_in_hook_runs_before_the_frame_and_the_answer(logs):
    recorder = Recorder(delay=0.3)
    stack = await open_stack(recorder)
    try:
        _, response, answered, frames = await timed_sign_in(stack, "alice@example.com")
        assert response.code == 200, response.body
        (event,) = recorder.events("signed_in")
        _, _, started, ended = recorder.calls[0]
        assert frames and frames[0][1]["type"] == "signed_in"
        # The hook ran to its end before the socket frame and the HTTP answer left.
        assert ended < frames[0][0] and ended < answered
        assert answered - started >= 0.3
        # What it carries: the user, the granted scopes, whether a refresh token was stored (first consent).
        user = json_body(response)["user"]
        assert event.user.as_dict() == user and event.user.email == "alice@example.com"
        assert EMAIL_SCOPE in event.scopes and list(event.scopes) == sorted(event.scopes)
        assert event.refresh_token_stored is True and event.access_expires_at is None
        # The tokens were stored before the hook ran.
        assert recorder.store_seen[0].refresh_token
        # A later sign-in without consent brings no refresh token: the hook says so.
        _, again, _, _ = await timed_sign_in(stack, "alice@example.com")
        assert again.code == 200
        assert recorder.events("signed_in")[-1].refresh_token_stored is False
        # No token in any event.
        record = stack.store.get(user["sub"])
        assert record.refresh_token not in repr(recorder.calls) and record.access_token not in repr(recorder.calls)
    finally:
        await stack.close()


async def test_a_failing_hook_is_logged_and_the_sign_in_goes_on(logs):
    recorder = Recorder(fail=True)
    stack = await open_stack(recorder)
    try:
        _, response, _, frames = await timed_sign_in(stack, "bob@gmail.com")
        assert response.code == 200 and json_body(response)["status"] == "signed_in"
        assert [frame["type"] for _, frame in frames] == ["signed_in"]
        assert recorder.events("signed_in")
        failures = [line for line in logs.lines if "on_signed_in hook failed" in line]
        assert failures and failures[0].startswith("ERROR")
        record = stack.store.get(json_body(response)["user"]["sub"])
        text = "\n".join(logs.lines)
        assert record.refresh_token not in text and record.access_token not in text
    finally:
        await stack.close()


async def test_a_slow_hook_does_not_hold_the_sign_in_past_its_timeout(logs):
    recorder = Recorder(delay=2.0)
    stack = await open_stack(recorder, timeout=0.2)
    try:
        started = time.monotonic()
        _, response, answered, frames = await timed_sign_in(stack, "carol@example.org")
        assert response.code == 200
        assert frames and frames[0][1]["type"] == "signed_in"
        assert answered - started < 1.5
        assert not recorder.calls  # still running
        assert any("on_signed_in hook is still running after 0.2s" in line for line in logs.lines)
        await stack.ctx.hooks.drain(5)
        assert recorder.events("signed_in")  # it finished in the background
    finally:
        await stack.close()


async def test_consent_required_hook_before_the_409_and_the_frame(logs):
    recorder = Recorder(delay=0.2)
    stack = await open_stack(recorder)
    try:
        first = json_body(await stack.client().post_code(stack.mint("carol@example.org")))
        stack.store.delete(first["user"]["sub"])
        _, response, answered, frames = await timed_sign_in(stack, "carol@example.org")
        assert response.code == 409
        (event,) = recorder.events("consent_required")
        assert event == ConsentRequired(sub=first["user"]["sub"], reason="no_refresh_token")
        ended = next(end for name, _, _, end in recorder.calls if name == "consent_required")
        consent_frames = [at for at, frame in frames if frame["type"] == "consent_required"]
        assert consent_frames and ended < consent_frames[0] and ended < answered
    finally:
        await stack.close()


async def test_signout_and_disconnect_hooks(logs):
    recorder = Recorder()
    stack = await open_stack(recorder)
    try:
        client, response, _, _ = await timed_sign_in(stack, "alice@example.com")
        user = json_body(response)["user"]
        kept = dict(client.cookies)
        socket = await client.socket()
        frames: list[tuple[float, dict]] = []
        reader = asyncio.ensure_future(read_frames(socket, frames))
        await asyncio.sleep(0.1)  # the recorded signed_in frame first
        recorder.delay = 0.3
        answer = await client.post_gated("/signout")
        answered = time.monotonic()
        recorder.delay = 0.0
        assert answer.code == 200
        await asyncio.wait_for(reader, 5)
        # The sockets are told (and closed) before the hook runs (the frame does not wait for the 0.3 s
        # hook); the answer waits for the hook.
        _, _, started, ended = next(call for call in recorder.calls if call[0] == "signed_out")
        closed = [at for at, frame in frames if frame["type"] == "signed_out"]
        assert closed and closed[0] < ended - 0.2 and ended <= answered
        (signed_out,) = recorder.events("signed_out")
        assert signed_out == SignedOut(user=signed_out.user, reason="signout", everywhere=False)
        assert signed_out.user.as_dict() == user
        # Signing out again with a copy of the ended cookie: no second event.
        client.cookies = kept
        assert (await client.post_gated("/signout")).code == 200
        assert len(recorder.events("signed_out")) == 1
        # Sign out everywhere.
        everywhere, _, _, _ = await timed_sign_in(stack, "alice@example.com")
        state = await everywhere.state()
        answer = await everywhere.fetch("/signout?everywhere=1", method="POST", body=b"",
                                        headers=everywhere.gate_headers(state))
        assert answer.code == 200
        assert recorder.events("signed_out")[-1].reason == "signout_everywhere"
        assert recorder.events("signed_out")[-1].everywhere is True
        # Disconnect: revoked (the grant, the sessions ended), then signed out, before the answer.
        other, _, _, _ = await timed_sign_in(stack, "alice@example.com")
        recorder.calls.clear()
        assert (await other.post_gated("/disconnect")).code == 200
        assert [name for name, *_ in recorder.calls] == ["revoked", "signed_out"]
        revoked = recorder.events("revoked")[0]
        assert revoked == Revoked(sub=user["sub"], reason="disconnect", grant_revoked=True, sessions_ended=1)
        assert recorder.events("signed_out")[0].reason == "disconnect"
    finally:
        await stack.close()


async def test_invalid_grant_on_refresh_fires_revoked(logs):
    recorder = Recorder()
    stack = await open_stack(recorder)
    try:
        _, response, _, _ = await timed_sign_in(stack, "bob@gmail.com")
        sub = json_body(response)["user"]["sub"]
        stack.emulator.state.revoke(stack.store.get(sub).refresh_token)
        with pytest.raises(ConsentRequiredError):
            await stack.ctx.offline.fresh_record(sub, force=True)
        assert recorder.events("revoked") == [Revoked(sub=sub, reason="invalid_grant", grant_revoked=True)]
        # Asking again finds the grant revoked already: no second event.
        with pytest.raises(ConsentRequiredError):
            await stack.ctx.offline.fresh_record(sub, force=True)
        assert len(recorder.events("revoked")) == 1
    finally:
        await stack.close()


async def test_access_expiring_reaches_the_hook_after_the_pages_frame(logs):
    recorder = Recorder(delay=0.3)
    stack = await open_stack(recorder)
    try:
        stack.ctx.expiry.notice = 3600  # the grant below is shorter than the notice: told as soon as may be
        _, response, _, _ = await timed_sign_in(stack, "alice@example.com", prompt="consent", refresh_token_ttl=600)
        body = json_body(response)
        # The page's socket, reconnected on the new session (a plain listener of the same session's channel).
        frames: list[tuple[float, dict]] = []
        socket = await _socket_of(stack, response)
        reader = asyncio.ensure_future(read_frames(socket, frames))
        for _ in range(150):
            if recorder.events("access_expiring"):
                break
            await asyncio.sleep(0.02)
        (event,) = recorder.events("access_expiring")
        assert event.sub == body["user"]["sub"] and int(event.expires_at) == body["access_expires_at"]
        ended = next(end for name, _, _, end in recorder.calls if name == "access_expiring")
        expiring = [at for at, frame in frames if frame["type"] == "access_expiring"]
        assert expiring and expiring[0] < ended - 0.2  # the frame went out before the (0.3 s) hook
        socket.close()
        await asyncio.wait_for(reader, 5)
    finally:
        await stack.close()


async def _socket_of(stack, response):
    """A socket on the session that ``response`` (a sign-in's answer) set."""
    client = PageClient(stack.app_url, stack.app_url)
    client._remember(response)
    return await client.socket()


@pytest.mark.parametrize("event, grant_revoked", [("sessions-revoked", False), ("tokens-revoked", True)])
async def test_security_events_fire_revoked(logs, event, grant_revoked):
    recorder = Recorder()
    stack = await start_risc_stack(hooks=recorder.hooks())
    try:
        client = stack.client()
        await client.fetch("/")
        body = json_body(await client.post_code(stack.mint("alice@example.com", prompt="consent")))
        await trigger(stack, event, "alice@example.com")
        for _ in range(100):
            if recorder.events("revoked"):
                break
            await asyncio.sleep(0.02)
        assert recorder.events("revoked") == [Revoked(sub=body["user"]["sub"], reason=f"risc:{event}",
                                                      grant_revoked=grant_revoked, sessions_ended=1)]
    finally:
        await stack.close()


def test_hooks_refuse_what_is_not_callable():
    with pytest.raises(TypeError, match="on_signed_in"):
        SigninHooks(on_signed_in="not a function")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        SigninHooks(timeout=0)


async def test_plain_function_hooks_work_too(logs):
    seen: list[Any] = []
    stack = await start_stack(hooks=SigninHooks(on_signed_in=seen.append))
    try:
        response = await stack.client().post_code(stack.mint("alice@example.com"))
        assert response.code == 200 and len(seen) == 1 and isinstance(seen[0], SignedIn)
    finally:
        await stack.close()
