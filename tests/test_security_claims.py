"""Issue 12 §8: control characters in the claims the server stores are refused, and the CLI escapes what it prints.

An ID token whose ``email``, ``name``, ``picture`` or ``hd`` carries a C0 or
C1 control, DEL, a line or paragraph separator, or a Unicode format control
(the bidi overrides and isolates of "Trojan source", zero-width spaces, BOM)
is refused like any other bad token: one clean 401, nothing stored, a log
line for the operator. What is already stored (written by an older version,
or by hand) is printed escaped by the CLI: no raw ESC byte reaches the
operator's terminal.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from harness import CLIENT_ID, write_offline_config
from security_oracle import assert_rejected, stack_fixture
from tornado_signin.config import GoogleConfig
from tornado_signin.errors import TokenVerificationError
from tornado_signin.store import TokenRecord
from tornado_signin.verify import IdTokenVerifier

stack = stack_fixture()

HOSTILE = [
    "\x1b[31mred",          # ESC: a terminal escape sequence
    "\x1b]0;title\x07",     # OSC + BEL
    "bell\x07",
    "nul\x00",
    "tab\tand\nnewline",
    "carriage\rreturn",
    "del\x7f",
    "\x9b31mc1-csi",        # C1 CSI (8-bit escape)
    "\x85next-line",        # C1 NEL
    "\u202eevil\u202c",     # RIGHT-TO-LEFT OVERRIDE ... POP
    "\u2066isolate\u2069",  # LEFT-TO-RIGHT ISOLATE ... POP
    "zero\u200bwidth",
    "\ufeffbom",
    "line\u2028separator",
    "para\u2029separator",
    "\ud800lone-surrogate",
]


def email_with(value: str) -> str:
    return f"alice{value}@example.com"


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("claim", ["email", "name", "picture", "hd"])
@pytest.mark.parametrize("value", HOSTILE, ids=[repr(v)[1:8] for v in HOSTILE])
async def test_control_characters_in_claims_are_refused(stack, claim, value):
    hostile = email_with(value) if claim == "email" else value
    stack.emulator.faults.add("token", kind="id_token_claims", set={claim: hostile})
    client = stack.client()
    await client.fetch("/")
    socket = await client.socket()
    code = stack.mint("alice@example.com")
    response = await client.post_code(code)
    reason = await assert_rejected(stack, response, client=client, socket=socket, statuses={401},
                                   token_requests=1, secrets=[code])
    assert reason == "id token rejected"
    lines = [line for line in stack.logs.text().splitlines() if "ID token rejected" in line]
    assert lines and all(f"claim {claim} contains a control character" in line for line in lines), lines
    assert not any(c in stack.logs.text() for c in ("\x1b", "\u202e", "\x9b")), "the hostile value reached the log"
    socket.close()


@pytest.mark.gen_test(timeout=30)
async def test_ordinary_unicode_in_claims_is_kept(stack):
    """Names in any script stay accepted: accents, CJK, emoji with joiners, a Persian zero-width non-joiner."""
    name = "Zoë 用户 👩‍👩‍👧 می‌خواهم"
    stack.emulator.faults.add("token", kind="id_token_claims", set={"name": name})
    client = stack.client()
    await client.fetch("/")
    response = await client.post_code(stack.mint("alice@example.com"))
    assert response.code == 200, response.body
    assert json.loads(response.body)["user"]["name"] == name


def test_the_verifier_names_the_claim_and_never_echoes_it():
    verifier = IdTokenVerifier(GoogleConfig(client_id=CLIENT_ID, client_secret="s" * 24), certs=None)
    now = int(time.time())
    base = {"iss": "https://accounts.google.com", "aud": CLIENT_ID, "sub": "123", "iat": now, "exp": now + 600}
    for value in HOSTILE:
        with pytest.raises(TokenVerificationError) as caught:
            verifier._check_claims({**base, "email": email_with(value)}, None)
        assert str(caught.value) == "claim email contains a control character"


# -- the CLI escapes what it prints -------------------------------------------------------------------------


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tornado_signin.cli", *args], capture_output=True,
                          env={**os.environ, **env}, timeout=60)


@pytest.fixture
def hostile_store(tmp_path):
    """A SQLite store holding records with terminal escapes in every printed field, written straight to the store."""
    path, env = write_offline_config(tmp_path)
    from tornado_signin.config import load_config
    from tornado_signin.wiring import open_store

    store = open_store(load_config(path, environ=env))
    now = time.time()
    store.save(TokenRecord(sub="evil\x1b[2J\x1b]0;owned\x07\u202esub", email="boss\x1b[31m@example.com\x9b",
                           refresh_token="1//rt", refresh_token_issued_at=now, access_token="ya29.at\x1b[0m",
                           access_token_issued_at=now, access_token_expiry=now + 3600,
                           scopes=("openid", "sco\x1bpe")))
    store.close()
    return path, env


def assert_escaped(output: bytes) -> None:
    assert b"\x1b" not in output and b"\x07" not in output, output
    text = output.decode("utf-8")
    assert "\x9b" not in text and "\u202e" not in text, text
    assert "\\x1b" in text or "\\u001b" in text, text


def test_users_escapes_control_characters(hostile_store):
    path, env = hostile_store
    for extra in ((), ("--json",)):
        result = run_cli("users", "--config", str(path), *extra, env=env)
        assert result.returncode == 0, result.stderr
        assert_escaped(result.stdout)
        assert b"\x1b" not in result.stderr


def test_token_json_escapes_control_characters(hostile_store):
    path, env = hostile_store
    result = run_cli("token", "--config", str(path), "evil\x1b[2J\x1b]0;owned\x07\u202esub", "--json", env=env)
    assert result.returncode == 0, result.stderr
    assert_escaped(result.stdout)
    assert json.loads(result.stdout)["email"] == "boss\x1b[31m@example.com\x9b"  # JSON keeps the value, escaped


def test_token_escapes_a_stored_access_token(hostile_store):
    path, env = hostile_store
    result = run_cli("token", "--config", str(path), "evil\x1b[2J\x1b]0;owned\x07\u202esub", env=env)
    assert result.returncode == 0, result.stderr
    assert b"\x1b" not in result.stdout
