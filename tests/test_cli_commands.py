"""Every ``tornado-signin`` command as a subprocess, the way the README shows it, on real stores.

Each data command runs against a SQLite file, PostgreSQL and DynamoDB (moto's
server), after users signed in through a real ``tornado-signin serve``
process and the emulator (codes minted at its test-only ``/emulator/code``,
as if the user had consented in the popup). Success and error paths check the
exit code (README's CLI section lists them), stdout and stderr: an error is
ONE line on stderr, ``tornado-signin: <what went wrong>``, never a traceback
or an exception class name, and stdout stays empty so scripts can trust it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from cryptography.fernet import Fernet

from conftest import POSTGRES_URL, require_service
from harness import CLIENT_ID, CLIENT_SECRET
from procs import ENV, ROOT, Proc, free_port, mint, wait_port, write_config
from tornado_signin.crypto import generate_key
from tornado_signin.emulator import DEFAULT_ACCOUNTS, EmulatorClient, EmulatorThread

pytestmark = pytest.mark.slow

STORES = ("sqlite", "postgres", "dynamodb")
SUBS = {a.email: a.sub for a in DEFAULT_ACCOUNTS}
ALICE, BOB = "alice@example.com", "bob@gmail.com"

# The documented exit codes (README, "CLI").
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_CONFIG, EXIT_STORE, EXIT_HUB, EXIT_GOOGLE = 0, 1, 2, 3, 4, 5, 6
EXIT_LISTEN, EXIT_UNKNOWN_USER, EXIT_CONSENT, EXIT_WORKERS = 7, 8, 9, 10

STORES_GROUP, HUBS_GROUP = "tornado_signin.backends", "tornado_signin.hubs"
AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
CLASS_NAME = re.compile(r"\b[A-Z][A-Za-z]*(Error|Exception|Exit)\b")
SCRIPT = Path(sys.executable).with_name("tornado-signin")
COMMANDS = ("serve", "emulator", "backends", "check", "users", "token", "call", "revoke", "rotate-keys",
            "migrate", "genkey")


def cli_argv(*args: str) -> list[str]:
    """The console script the README shows (``python -m`` where it is not installed)."""
    if SCRIPT.exists():
        return [str(SCRIPT), *args]
    return [sys.executable, "-m", "tornado_signin.cli", *args]


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "TORNADO_SIGNIN_", "PROMETHEUS_"))}
    return {**env, **ENV, **AWS_ENV, **(extra or {})}


def run(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(cli_argv(*args), capture_output=True, text=True, env=clean_env(env),
                          cwd=cwd or ROOT, timeout=timeout)


def assert_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == EXIT_OK, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr


def assert_error(result: subprocess.CompletedProcess, code: int, *fragments: str) -> str:
    """Check a clean failure: exit ``code``, nothing on stdout, ONE ``tornado-signin:`` line on stderr."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert result.stdout == "", result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("tornado-signin: "), line
    assert not CLASS_NAME.search(line), line
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    return line


def assert_usage_error(result: subprocess.CompletedProcess, command: str, message: str) -> None:
    """argparse's own refusal: exit 2, the command's usage, then ``tornado-signin CMD: error: MESSAGE``."""
    assert result.returncode == EXIT_USAGE, (result.returncode, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[0].startswith(f"usage: tornado-signin {command} "), result.stderr
    assert lines[-1] == f"tornado-signin {command}: error: {message}", result.stderr
    assert "Traceback" not in result.stderr


# ----------------------------------------------------------------------------- stores


class Stores:
    """Builds store sections of each kind, each with its own table; drops the PostgreSQL ones at the end."""

    def __init__(self, request: pytest.FixtureRequest, tmp: Path) -> None:
        self.request = request
        self.tmp = tmp
        self.tables: list[str] = []

    def section(self, kind: str, name: str) -> dict[str, Any]:
        table = f"t{os.urandom(6).hex()}"
        if kind == "sqlite":
            return {"backend": "sql", "url": f"sqlite:///{self.tmp / (name + '.sqlite3')}"}
        if kind == "postgres":
            require_service("PostgreSQL", 5432)
            self.tables.append(table)
            return {"backend": "sql", "url": POSTGRES_URL, "table": table}
        if kind == "file":  # below a folder that does not exist either: a mistyped path
            return {"backend": "file", "path": str(self.tmp / "missing" / name)}
        if kind == "dynamodb":
            url = self.request.getfixturevalue("moto_server")
            return {"backend": "dynamodb", "table": table, "region": "us-east-1", "endpoint_url": url,
                    "create_table": True}
        raise AssertionError(kind)

    def close(self) -> None:
        if not self.tables:
            return
        from sqlalchemy import create_engine, text

        engine = create_engine(POSTGRES_URL)
        with engine.begin() as conn:
            for table in self.tables:
                conn.execute(text(f'DROP TABLE IF EXISTS "{table}"'))
        engine.dispose()


@pytest.fixture
def stores(request, tmp_path):
    built = Stores(request, tmp_path)
    yield built
    built.close()


class Stack:
    """The emulator (in this process), one config on one store, and a ``serve`` process users sign in through."""

    def __init__(self, tmp: Path, stores: Stores, kind: str, hub: dict[str, Any] | None = None) -> None:
        self.tmp = tmp
        self.kind = kind
        self.stores = stores
        self.port = free_port()
        self.app_url = f"http://127.0.0.1:{self.port}"
        self.thread = EmulatorThread(clients=[EmulatorClient(CLIENT_ID, CLIENT_SECRET, (self.app_url,))])
        self.emulator = self.thread.start()
        self.emulator_url = self.emulator.base_url
        self.store = stores.section(kind, "tokens")
        self.hub = hub
        self.config = self.write("app", self.store)
        self.server: Proc | None = None

    def write(self, name: str, store: dict[str, Any], **extra: Any) -> Path:
        return write_config(self.tmp, name=name, emulator_url=self.emulator_url, origins=[self.app_url],
                            store=store, hub=extra.pop("hub", self.hub), **extra)

    def cli(self, command: str, *args: str, config: Path | None = None, **kw: Any) -> subprocess.CompletedProcess:
        return run(command, "--config", str(config or self.config), *args, **kw)

    def sign_in(self, email: str) -> str:
        """Sign ``email`` in through the running server as the page does; return the sub."""
        if self.server is None:
            self.server = Proc(cli_argv("serve", "--config", str(self.config), "--port", str(self.port)),
                               self.tmp / "serve.log", env=clean_env())
            wait_port(self.port, proc=self.server.proc)
        session = requests.Session()
        state = session.get(self.app_url + "/state", timeout=10).json()["state"]
        response = session.post(self.app_url + "/storeauthcode", data=mint(self.emulator_url, email), timeout=20,
                                headers={"X-Requested-With": "XMLHttpRequest", "Origin": self.app_url,
                                         "Content-Type": "application/octet-stream", "X-Signin-State": state})
        assert response.status_code == 200, response.text
        return response.json()["user"]["sub"]

    def store_created(self) -> bool:
        """Whether the store's table exists (on SQLite: whether any file of the database does; for files: whether
        the folder above the store's does)."""
        if self.kind == "file":
            return (self.tmp / "missing").exists()
        if self.kind == "sqlite":
            return any(p.name.startswith("tokens.sqlite3") for p in self.tmp.iterdir())
        if self.kind == "postgres":
            from sqlalchemy import create_engine, inspect

            engine = create_engine(POSTGRES_URL)
            try:
                return inspect(engine).has_table(self.store["table"])
            finally:
                engine.dispose()
        import boto3

        client = boto3.client("dynamodb", endpoint_url=self.store["endpoint_url"], region_name="us-east-1",
                              aws_access_key_id="testing", aws_secret_access_key="testing")
        return self.store["table"] in client.list_tables()["TableNames"]

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
        self.thread.stop()


@pytest.fixture(params=STORES)
def stack(request, tmp_path, stores):
    built = Stack(tmp_path, stores, request.param)
    yield built
    built.close()


@pytest.fixture(params=(*STORES, "file"))
def any_stack(request, tmp_path, stores):
    """A :func:`stack` on each store, the file store too (the commands' own tests need no more than one)."""
    built = Stack(tmp_path, stores, request.param)
    yield built
    built.close()


# ----------------------------------------------------------------------------- help, genkey, backends


def test_help_lists_exactly_the_commands():
    result = run("--help")
    assert_ok(result)
    assert result.stdout.startswith("usage: tornado-signin [-h] COMMAND ...\n")
    listed = re.findall(r"^    ([a-z-]+)\s", result.stdout, re.M)
    assert set(COMMANDS) <= set(listed), listed


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_has_its_own_help(command):
    result = run(command, "--help")
    assert_ok(result)
    assert result.stdout.startswith(f"usage: tornado-signin {command} ")
    assert result.stderr == ""


def test_no_command_is_a_usage_error():
    result = run()
    assert result.returncode == EXIT_USAGE
    assert result.stdout == "" and result.stderr.splitlines()[-1].startswith("tornado-signin: error: ")


def test_genkey_prints_a_new_fernet_key_each_time():
    first, second = run("genkey"), run("genkey")
    assert_ok(first)
    assert first.stderr == ""
    key = first.stdout.removesuffix("\n")
    assert "\n" not in key
    Fernet(key.encode())  # a usable key for store.encryption.keys
    assert second.stdout != first.stdout


def test_backends_lists_stores_and_hubs():
    result = run("backends")
    assert_ok(result)
    lines = result.stdout.splitlines()
    assert lines[0] == "Token stores (entry-point group tornado_signin.backends):"
    hubs_at = lines.index("Confirmation hubs (entry-point group tornado_signin.hubs):")
    stores = {line.split()[0]: line.split()[-1] for line in lines[1:hubs_at] if not line.startswith("   ")}
    hubs = {line.split()[0]: line.split()[-1] for line in lines[hubs_at + 1:] if not line.startswith("   ")}
    assert {"sql", "dynamodb", "file", "memory"} <= set(stores) and set(stores.values()) == {"ok"}
    assert {"memory": "ok", "redis": "ok"}.items() <= hubs.items()
    listed = json.loads(run("backends", "--json").stdout)
    assert {(b["group"], b["name"]) for b in listed} >= {(STORES_GROUP, "sql"), (STORES_GROUP, "memory"),
                                                          (HUBS_GROUP, "memory"), (HUBS_GROUP, "redis")}


def test_backends_shows_a_hub_whose_extra_is_missing(no_redis):
    result = run("backends", env=no_redis)
    assert_ok(result)
    lines = result.stdout.splitlines()
    hubs = lines[lines.index("Confirmation hubs (entry-point group tornado_signin.hubs):") + 1:]
    redis_at = next(i for i, line in enumerate(hubs) if line.split()[0] == "redis")
    assert hubs[redis_at].endswith("unavailable: missing dependency: redis")
    assert hubs[redis_at + 1].split() == ["install", "with:", "pip", "install", "'tornado-signin[redis]'"]
    listed = json.loads(run("backends", "--json", env=no_redis).stdout)
    redis = next(b for b in listed if b["group"] == HUBS_GROUP and b["name"] == "redis")
    assert not redis["loadable"] and redis["install_hint"] == "pip install 'tornado-signin[redis]'"


def test_output_into_a_closed_pipe_is_quiet():
    """``tornado-signin backends | head -1`` (git's behaviour: no traceback; the shell sees SIGPIPE's 141)."""
    result = subprocess.run(f"{' '.join(cli_argv('backends'))} | head -1; echo \"status=${{PIPESTATUS[0]}}\"",
                            shell=True, executable="/bin/bash", capture_output=True, text=True, env=clean_env(),
                            cwd=ROOT, timeout=60)
    assert result.stdout.splitlines()[0].startswith("Token stores")
    assert result.stderr == ""
    assert result.stdout.splitlines()[-1] in ("status=0", "status=141")
    # Deterministically: the reader is gone before the first write.
    proc = subprocess.Popen(cli_argv("backends"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=clean_env(),
                            cwd=ROOT)
    proc.stdout.close()
    stderr = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(60) in (0, 141) and stderr == ""


# ----------------------------------------------------------------------------- users, token, call, revoke


def test_users_empty_store(stack):
    result = stack.cli("users")
    assert_ok(result)
    assert result.stdout == ""
    assert result.stderr == "tornado-signin: no users stored\n"
    as_json = stack.cli("users", "--json")
    assert_ok(as_json)
    assert json.loads(as_json.stdout) == [] and as_json.stderr == ""


def test_read_only_commands_create_no_table(any_stack):
    """On a store nobody created yet, the commands that read it create nothing (no table, no SQLite file, no
    folder) and answer as for an empty store; rotate-keys, which writes, still creates it."""
    stack = any_stack
    assert not stack.store_created()
    result = stack.cli("users")
    assert (result.returncode, result.stdout, result.stderr) == (EXIT_OK, "", "tornado-signin: no users stored\n")
    result = stack.cli("users", "--json")
    assert_ok(result)
    assert json.loads(result.stdout) == []
    assert not stack.store_created()
    for args in (("token", ALICE), ("token", SUBS[ALICE], "--json"), ("call", ALICE), ("revoke", SUBS[ALICE]),
                 ("sessions", ALICE)):
        line = assert_error(stack.cli(*args), EXIT_UNKNOWN_USER, "no user is stored: the store has not been created yet",
                            "--create-table")
        assert line.startswith(f"tornado-signin: user '{args[1]}': "), line
    result = stack.cli("check")
    assert result.returncode == EXIT_STORE, result.stdout
    assert "the store has not been created yet, and check creates nothing: run check with --create-table" \
        in result.stdout
    target = stack.write("target", stack.stores.section("sqlite", "target"))
    assert_error(run("migrate", "--from", str(stack.config), "--to", str(target)), EXIT_STORE)
    assert not stack.store_created()
    assert_ok(stack.cli("rotate-keys"))
    assert stack.store_created()


def test_users_lists_signed_in_users(stack):
    alice, bob = stack.sign_in(ALICE), stack.sign_in(BOB)
    result = stack.cli("users")
    assert_ok(result)
    assert result.stderr == ""
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["SUB", "EMAIL", "STATE", "UPDATED", "ACCESS_UNTIL", "SCOPES"]
    assert [row.split()[:3] for row in rows] == [[alice, ALICE, "active"], [bob, BOB, "active"]]
    assert all("openid" in row.split()[4:] for row in rows)
    listed = json.loads(stack.cli("users", "--json").stdout)
    assert [(u["sub"], u["email"], u["state"]) for u in listed] == [(alice, ALICE, "active"), (bob, BOB, "active")]
    assert not any("token" in key and "expir" not in key for u in listed for key in u)
    text = result.stdout + json.dumps(listed)
    assert "ya29." not in text and "1//" not in text


def test_users_pipe_to_head(stack):
    stack.sign_in(ALICE)
    stack.sign_in(BOB)
    proc = subprocess.Popen(cli_argv("users", "--config", str(stack.config)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=clean_env(), cwd=ROOT)
    proc.stdout.close()
    stderr = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(60) in (0, 141)
    assert stderr == ""


def test_token_prints_the_access_token_alone(stack):
    sub = stack.sign_in(ALICE)
    result = stack.cli("token", ALICE)
    assert_ok(result)
    assert result.stderr == ""
    token = result.stdout.removesuffix("\n")
    assert token.startswith("ya29.") and "\n" not in token
    by_sub = stack.cli("token", sub)
    assert by_sub.stdout == result.stdout
    whole = json.loads(stack.cli("token", sub, "--json").stdout)
    assert whole["access_token"] == token and whole["sub"] == sub and whole["email"] == ALICE
    assert "refresh_token" not in whole
    assert stack.emulator.stats["token.refresh_token"] == 0  # the stored token was still valid


def test_token_errors(stack):
    sub = stack.sign_in(ALICE)
    assert_error(stack.cli("token", "nobody@example.com"), EXIT_UNKNOWN_USER, "no stored user")
    line = assert_error(stack.cli("token", sub, "--scope", "https://www.googleapis.com/auth/drive.appdata"),
                        EXIT_CONSENT, "missing scopes: https://www.googleapis.com/auth/drive.appdata")
    assert "ya29." not in line


def test_user_errors_name_the_user_given_escaped(stack):
    """Every error about a USER repeats it (escaped: a stored or typed value never acts on the terminal)."""
    sub = stack.sign_in(ALICE)
    for command in ("token", "call", "revoke"):
        assert_error(stack.cli(command, "nobody@example.com"), EXIT_UNKNOWN_USER,
                     "tornado-signin: user 'nobody@example.com': no stored user with that sub or verified email")
    line = assert_error(stack.cli("token", "x\x1b]0;owned\x07\u202e@example.com"), EXIT_UNKNOWN_USER)
    assert line.startswith("tornado-signin: user 'x\\x1b]0;owned\\x07\\u202e@example.com': no stored user"), line
    assert_error(stack.cli("token", sub, "--scope", "https://www.googleapis.com/auth/drive.appdata"),
                 EXIT_CONSENT, f"tornado-signin: user '{sub}': missing scopes: ")


@pytest.mark.parametrize("scope", ["bad scope!", "drive\treadonly", "drive!", "https://x.example/a b", ""])
def test_token_refuses_a_malformed_scope_with_a_usage_error(tmp_path, scope):
    """Refused before the config is read: exit 2, one line naming the scope (escaped)."""
    result = run("token", "--config", str(tmp_path / "absent.yaml"), "--scope", "drive.readonly", "--scope", scope,
                 "alice@example.com")
    line = assert_error(result, EXIT_USAGE, "tornado-signin: --scope: malformed scope ",
                        "a scope is a URL or a name of letters, digits and ._-/: (no spaces)")
    assert repr(scope) in line and "googleapis.com/auth/" not in line


def test_token_of_a_user_revoked_at_google(stack):
    """The grant is revoked behind our back: the next refresh learns it, the user must consent again."""
    # Access tokens that live less than the refresh margin: every `token` refreshes.
    stack.thread.call(stack.emulator.configure, access_token_ttl=60)
    sub = stack.sign_in(ALICE)
    token = stack.cli("token", sub).stdout.strip()
    assert stack.emulator.stats["token.refresh_token"] == 1
    urllib.request.urlopen(urllib.request.Request(stack.emulator_url + "/revoke", data=f"token={token}".encode(),
                                                  method="POST"), timeout=10).read()
    assert_error(stack.cli("token", sub), EXIT_CONSENT)
    assert [u["state"] for u in json.loads(stack.cli("users", "--json").stdout)] == ["revoked"]
    # From now on no refresh is tried: the record says revoked.
    assert_error(stack.cli("token", sub), EXIT_CONSENT)
    assert stack.emulator.stats["token.refresh_token"] == 2


def test_call_userinfo(stack):
    sub = stack.sign_in(BOB)
    result = stack.cli("call", sub)
    assert_ok(result)
    assert result.stderr == ""
    info = json.loads(result.stdout)
    assert info["email"] == BOB and info["sub"] == sub
    assert stack.emulator.stats["userinfo"] == 1
    assert_error(stack.cli("call", "nobody@example.com"), EXIT_UNKNOWN_USER, "no stored user")


def test_revoke_then_forget(stack):
    alice, bob = stack.sign_in(ALICE), stack.sign_in(BOB)
    result = stack.cli("revoke", ALICE)
    assert_ok(result)
    assert result.stdout == "revoked at Google and forgotten\n" and result.stderr == ""
    assert stack.emulator.grant_revoked(CLIENT_ID, alice)
    assert not stack.emulator.grant_revoked(CLIENT_ID, bob)
    assert [u["sub"] for u in json.loads(stack.cli("users", "--json").stdout)] == [bob]
    assert_error(stack.cli("revoke", alice), EXIT_UNKNOWN_USER, "no stored user")


# ----------------------------------------------------------------------------- rotate-keys, migrate


def test_rotate_keys(stack):
    sub = stack.sign_in(ALICE)
    token = stack.cli("token", sub).stdout
    empty = stack.write("empty", stack.stores.section(stack.kind, "empty"))
    assert stack.cli("rotate-keys", config=empty).stdout == "re-encrypted 0 record(s) under the newest key\n"

    new_key = generate_key()
    rotated = stack.tmp / "rotated.yaml"
    document = yaml.safe_load(stack.config.read_text())
    document["store"]["encryption"]["keys"] = [{"$env": "TS_NEW_KEY"}, {"$env": "TS_KEY"}]
    rotated.write_text(yaml.safe_dump(document))
    result = stack.cli("rotate-keys", config=rotated, env={"TS_NEW_KEY": new_key})
    assert_ok(result)
    assert result.stdout == "re-encrypted 1 record(s) under the newest key\n" and result.stderr == ""
    # The old key alone no longer opens the record: a one-line error, no token.
    line = assert_error(stack.cli("token", sub), EXIT_STORE)
    assert "encryption.keys" in line
    assert stack.cli("token", sub, env={"TS_KEY": new_key}).stdout == token


MIGRATIONS = [("sqlite", "postgres"), ("postgres", "dynamodb"), ("dynamodb", "sqlite")]


@pytest.mark.parametrize("source_kind,target_kind", MIGRATIONS, ids=[f"{a}-to-{b}" for a, b in MIGRATIONS])
def test_migrate_copies_verifies_and_reports(tmp_path, stores, source_kind, target_kind):
    stack = Stack(tmp_path, stores, source_kind)
    try:
        alice, bob = stack.sign_in(ALICE), stack.sign_in(BOB)
        tokens = {sub: stack.cli("token", sub).stdout for sub in (alice, bob)}
        target = stack.write("target", stores.section(target_kind, "target"))
        result = run("migrate", "--from", str(stack.config), "--to", str(target))
        assert_ok(result)
        assert json.loads(result.stdout) == {"copied": 2, "verified": 2, "mismatched": 0, "mismatched_subs": [],
                                             "ok": True}
        assert result.stderr.splitlines() == ["tornado-signin: migrate: copied 2 record(s)",
                                              "tornado-signin: migrate: verified 2 record(s)"]
        # The target serves the same users, with the same tokens, from a fresh process.
        assert [u["sub"] for u in json.loads(stack.cli("users", "--json", config=target).stdout)] == [alice, bob]
        assert {sub: stack.cli("token", sub, config=target).stdout for sub in (alice, bob)} == tokens
        # Idempotent: a second run copies again and still verifies.
        again = run("migrate", "--from", str(stack.config), "--to", str(target))
        assert_ok(again)
        assert json.loads(again.stdout)["verified"] == 2
    finally:
        stack.close()


def test_migrate_errors(stack):
    stack.sign_in(ALICE)
    assert_error(run("migrate", "--from", str(stack.config), "--to", str(stack.tmp / "missing.yaml")),
                 EXIT_CONFIG, "missing.yaml")
    down = stack.write("down", {"backend": "sql", "url": "postgresql+psycopg://nobody@127.0.0.1:1/none"})
    assert_error(run("migrate", "--from", str(stack.config), "--to", str(down)), EXIT_STORE)
    assert_usage_error(run("migrate", "--from", str(stack.config)), "migrate",
                       "the following arguments are required: --to")
    # The same store under another config file (another key, say): refused before anything is written.
    same = stack.write("same", stack.store)
    line = assert_error(run("migrate", "--from", str(stack.config), "--to", str(same)), EXIT_CONFIG,
                        "name the same", "rotate-keys")
    assert str(same) in line


def test_migrate_refuses_one_store_spelled_two_ways(tmp_path):
    """./, .., a symlink, relative to the config's folder: still the same SQLite file or file-store folder."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "files").mkdir()
    os.symlink(tmp_path / "tokens.sqlite3", tmp_path / "link.sqlite3")
    os.symlink(tmp_path / "files", tmp_path / "files-link")

    def config(folder: Path, name: str, store: dict[str, Any]) -> Path:
        return write_config(folder, name=name, emulator_url="http://127.0.0.1:9", origins=["http://127.0.0.1:8"],
                            store=store)

    sqlite = config(tmp_path, "a", {"backend": "sql", "url": "sqlite:///tokens.sqlite3"})
    files = config(tmp_path, "f", {"backend": "file", "path": "files"})
    for source, other in [
        (sqlite, config(tmp_path / "sub", "b", {"backend": "sql", "url": "sqlite:///../tokens.sqlite3"})),
        (sqlite, config(tmp_path, "c", {"backend": "sql", "url": "sqlite:///./sub/../link.sqlite3"})),
        (sqlite, config(tmp_path, "d", {"backend": "sql", "url": f"sqlite+pysqlite:///{tmp_path}/./tokens.sqlite3"})),
        (files, config(tmp_path / "sub", "g", {"backend": "file", "path": "../files/"})),
        (files, config(tmp_path, "h", {"backend": "file", "path": "./files-link"})),
    ]:
        line = assert_error(run("migrate", "--from", str(source), "--to", str(other)), EXIT_CONFIG, "name the same",
                            "rotate-keys")
        assert str(other) in line
    assert not (tmp_path / "tokens.sqlite3").exists()  # refused before anything was opened


# ----------------------------------------------------------------------------- config and store errors


def test_data_commands_on_a_store_that_is_down(stack):
    if stack.kind == "sqlite":
        store = {"backend": "sql", "url": f"sqlite:///{stack.tmp / 'no-such-folder' / 'x.sqlite3'}"}
    elif stack.kind == "postgres":
        store = {"backend": "sql", "url": "postgresql+psycopg://nobody@127.0.0.1:1/none"}
    else:
        store = {**stack.store, "endpoint_url": "http://127.0.0.1:1", "max_attempts": 1}
    down = stack.write("down", store)
    for args in (("users",), ("token", ALICE), ("call", ALICE), ("revoke", ALICE), ("rotate-keys",)):
        line = assert_error(stack.cli(*args, config=down, timeout=120), EXIT_STORE)
        assert "ya29." not in line and CLIENT_SECRET not in line


@pytest.mark.parametrize("command", ["users", "rotate-keys", "check", ("token", ALICE), ("call", ALICE),
                                     ("revoke", ALICE)], ids=str)
def test_config_errors_are_one_line(tmp_path, command):
    args = (command,) if isinstance(command, str) else command
    missing = tmp_path / "missing.yaml"
    result = run(args[0], "--config", str(missing), *args[1:])
    if args[0] == "check":  # check reports each part on stdout (see test_check_*)
        assert result.returncode == EXIT_CONFIG and "missing.yaml" in result.stdout + result.stderr
        return
    assert_error(result, EXIT_CONFIG, "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("server: {cookie_secret: short}\ngoogle: {client_id: x, client_secret: y}\n")
    assert_error(run(args[0], "--config", str(bad), *args[1:]), EXIT_CONFIG, "server.cookie_secret")
    missing_option = run(args[0], *args[1:])
    assert missing_option.returncode == EXIT_USAGE and missing_option.stdout == ""
    assert missing_option.stderr.splitlines()[-1] == (
        f"tornado-signin: error: {args[0]}: --config FILE is required (or set TORNADO_SIGNIN_CONFIG)")


def test_check_each_store(stack):
    stack.sign_in(ALICE)  # the server created the table; check creates nothing
    result = stack.cli("check")
    assert result.returncode == EXIT_OK, result.stdout + result.stderr
    backend = stack.store["backend"]
    assert f"store ({backend}): ok" in result.stdout.splitlines()
    assert "Traceback" not in result.stderr


# ----------------------------------------------------------------------------- serve and emulator


def busy_port() -> tuple[socket.socket, int]:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    return holder, holder.getsockname()[1]


@pytest.mark.parametrize("value", ["99999", "0", "-1", "http", "65536"])
@pytest.mark.parametrize("command,option", [("serve", "--port"), ("serve", "--emulator-port"),
                                            ("emulator", "--port")])
def test_port_options_are_validated(command, option, value):
    result = run(command, f"{option}={value}")
    assert_usage_error(result, command, f"argument {option}: {value!r} is not a port number (1-65535)")


@pytest.mark.parametrize("value", [0, 99999, -1, "8080"])
def test_config_ports_are_validated_as_the_options(tmp_path, stores, value):
    stack = Stack(tmp_path, stores, "sqlite")
    try:
        document = yaml.safe_load(stack.config.read_text())
        document["server"]["port"] = value
        stack.config.write_text(yaml.safe_dump(document))
        assert_error(stack.cli("serve"), EXIT_CONFIG, "server.port")
    finally:
        stack.close()


def test_serve_config_mode_on_a_busy_port(stack):
    holder, port = busy_port()
    with holder:
        result = stack.cli("serve", "--port", str(port))
    assert_error(result, EXIT_LISTEN, f"app port {port}", "already in use", "--port")


def test_serve_demo_mode_busy_ports(tmp_path):
    holder, port = busy_port()
    with holder:
        app = run("serve", "--port", str(port), "--emulator-port", str(free_port()), cwd=tmp_path)
        emulator = run("serve", "--port", str(free_port()), "--emulator-port", str(port), cwd=tmp_path)
    assert_error(app, EXIT_LISTEN, f"app port {port}", "already in use", "--port")
    assert_error(emulator, EXIT_LISTEN, f"emulator port {port}", "already in use", "--emulator-port")


def test_emulator_on_a_busy_port(stack):
    holder, port = busy_port()
    with holder:
        result = stack.cli("emulator", "--port", str(port))
    assert_error(result, EXIT_LISTEN, f"emulator port {port}", "already in use", "--port")


def test_emulator_serves_and_stops_cleanly(stack):
    port = free_port()
    proc = Proc(cli_argv("emulator", "--config", str(stack.config), "--port", str(port)), stack.tmp / "emu.log",
                env=clean_env())
    try:
        wait_port(port, proc=proc.proc)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/.well-known/openid-configuration", timeout=10) as r:
            assert json.load(r)["token_endpoint"] == f"http://127.0.0.1:{port}/token"
        proc.signal(signal.SIGTERM)
        assert proc.wait(20) == EXIT_OK
        assert "Traceback" not in proc.log()
    finally:
        proc.stop()


def test_serve_stops_cleanly_on_sigterm(stack):
    stack.sign_in(ALICE)
    assert stack.server is not None
    with urllib.request.urlopen(stack.app_url + "/healthz?ready=1", timeout=10) as response:
        assert response.status == 200
    stack.server.signal(signal.SIGTERM)
    assert stack.server.wait(30) == EXIT_OK
    assert "Traceback" not in stack.server.log()


def test_demo_leaves_nothing_for_git_to_add(tmp_path):
    """The demo's working files (store, WAL, lock, secrets, config, emulator state) are all in .gitignore."""
    from tornado_signin.demo import DEMO_CLIENT_ID

    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / ".gitignore").write_text((ROOT / ".gitignore").read_text())
    port, emulator_port = free_port(), free_port()
    log = open(tmp_path.parent / f"{tmp_path.name}-demo.log", "wb")
    proc = subprocess.Popen(cli_argv("serve", "--port", str(port), "--emulator-port", str(emulator_port)),
                            stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, env=clean_env())
    try:
        wait_port(port, proc=proc)
        wait_port(emulator_port, proc=proc)
        app_url, emulator_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{emulator_port}"
        session = requests.Session()
        state = session.get(app_url + "/state", timeout=10).json()["state"]
        code = requests.post(emulator_url + "/emulator/code", timeout=10, data={
            "client_id": DEMO_CLIENT_ID, "email": ALICE, "scope": "openid email profile", "prompt": "consent"})
        response = session.post(app_url + "/storeauthcode", data=code.json()["code"], timeout=20,
                                headers={"X-Requested-With": "XMLHttpRequest", "Origin": app_url,
                                         "Content-Type": "application/octet-stream", "X-Signin-State": state})
        assert response.status_code == 200, response.text
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        log.close()
    assert any(p.name.startswith("tornado-signin-demo.sqlite3") for p in tmp_path.iterdir())
    status = subprocess.run(["git", "-C", str(tmp_path), "status", "--porcelain", "--untracked-files=all", "--",
                             ".", ":!.gitignore"],
                            capture_output=True, text=True, check=True)
    assert status.stdout == "", status.stdout


# ----------------------------------------------------------------------------- sessions and risc (their own helpers'
# behaviour; here: the CLI's contract of one error line and the exit status)


def test_sessions_list_and_end(tmp_path, stores, redis_url, unique_name):
    stack = Stack(tmp_path, stores, "sqlite", hub={"backend": "redis", "url": redis_url, "key_prefix": f"{unique_name}:"})
    try:
        sub = stack.sign_in(ALICE)
        listed = stack.cli("sessions", ALICE, "--json")
        assert_ok(listed)
        sessions = json.loads(listed.stdout)
        assert [s["sub"] for s in sessions] == [sub]
        table = stack.cli("sessions", sub)
        assert_ok(table)
        assert table.stdout.splitlines()[0].split() == ["SESSION_ID", "STARTED", "ADDRESS", "USER_AGENT"]
        assert table.stdout.splitlines()[1].split()[0] == sessions[0]["session_id"]
        ended = stack.cli("sessions", sub, "--end", sessions[0]["session_id"])
        assert_ok(ended)
        assert ended.stdout == f"ended session {sessions[0]['session_id']} of {sub}\n"
        assert json.loads(stack.cli("sessions", sub, "--json").stdout) == []
        none = stack.cli("sessions", sub)  # as `users` on an empty store: no header alone on stdout
        assert (none.returncode, none.stdout, none.stderr) == (0, "", f"tornado-signin: no live sessions of {sub}\n")
        assert_error(stack.cli("sessions", sub, "--end", sessions[0]["session_id"]), EXIT_ERROR, "no live session")
        assert_error(stack.cli("sessions", "nobody@example.com"), EXIT_UNKNOWN_USER, "no stored user")
        memory = stack.write("memory", stack.store, hub={"backend": "memory"})
        assert_error(stack.cli("sessions", sub, config=memory), EXIT_CONFIG, "hub.backend")
    finally:
        stack.close()


def test_risc_commands_without_their_setup(tmp_path, stores):
    """risc needs risc.service_account_file (tests/test_risc_deploy.py drives it against the emulator)."""
    stack = Stack(tmp_path, stores, "sqlite")
    try:
        for args in (("status",), ("verify",), ("register", "--url", "https://example.com/risc")):
            line = assert_error(run("risc", args[0], "--config", str(stack.config), *args[1:]), EXIT_CONFIG)
            assert "risc" in line
    finally:
        stack.close()


def test_google_unreachable(tmp_path, stores):
    """Google (the emulator) gone: call, revoke and a refresh fail with exit 6, naming the reason; nothing is lost."""
    stack = Stack(tmp_path, stores, "sqlite")
    try:
        sub = stack.sign_in(ALICE)
        gone = free_port()
        document = yaml.safe_load(stack.config.read_text())
        for name, url in document["google"]["endpoints"].items():
            document["google"]["endpoints"][name] = url.replace(stack.emulator_url, f"http://127.0.0.1:{gone}")
        document["google"]["endpoints"]["userinfo_uri"] = f"http://127.0.0.1:{gone}/v1/userinfo"
        document["google"]["endpoints"]["revoke_uri"] = f"http://127.0.0.1:{gone}/revoke"
        offline = stack.tmp / "offline.yaml"
        offline.write_text(yaml.safe_dump(document))
        for args in (("call", sub), ("revoke", sub)):
            line = assert_error(stack.cli(*args, config=offline, timeout=120), EXIT_GOOGLE)
            assert "refused" in line.lower(), line
        assert [u["sub"] for u in json.loads(stack.cli("users", "--json").stdout)] == [sub]
    finally:
        stack.close()
