"""Config mistakes as an operator meets them: `tornado-signin check` and `serve` run as subprocesses.

Each case is a file a user could write (a typo, the example with the
downloaded client_secret.json, a desktop client's file …); the test reads the
exit status, stdout and stderr the way the README documents them.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tornado_signin.crypto import generate_key

ROOT = Path(__file__).resolve().parent.parent
EXIT_CONFIG = 3
ENV = {"TORNADO_SIGNIN_COOKIE_SECRET": "c" * 40, "TORNADO_SIGNIN_KEY": generate_key()}
WEB_CLIENT = {"web": {"client_id": "1234-abc.apps.googleusercontent.com", "client_secret": "GOCSPX-from-file",
                      "project_id": "demo", "auth_uri": "https://accounts.google.com/o/oauth2/auth",
                      "token_uri": "https://oauth2.googleapis.com/token",
                      "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
                      "javascript_origins": ["https://app.example.com"]}}


def tornado_signin(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
                   timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the installed ``tornado-signin`` command (the one the README shows)."""
    command = shutil.which("tornado-signin", path=str(Path(sys.executable).parent)) or "tornado-signin"
    base = {k: v for k, v in os.environ.items() if not k.startswith(("TORNADO_SIGNIN_", "GOOGLE_"))}
    return subprocess.run([command, *args], capture_output=True, text=True, env={**base, **(env or {})},
                          cwd=cwd, timeout=timeout)


def write(path: Path, document: object) -> Path:
    path.write_text(document if isinstance(document, str) else yaml.safe_dump(document, sort_keys=False))
    return path


def valid_document(folder: Path) -> dict:
    """A config that loads (no network needed to load it)."""
    return {
        "server": {"cookie_secret": {"$env": "TORNADO_SIGNIN_COOKIE_SECRET"}},
        "google": {"client_id": "1234-abc.apps.googleusercontent.com", "client_secret": "GOCSPX-x"},
        "store": {"backend": "sql", "url": f"sqlite:///{folder / 'tokens.sqlite3'}",
                  "encryption": {"keys": [{"$env": "TORNADO_SIGNIN_KEY"}]}},
    }


def example_with(folder: Path, client_secrets: object = WEB_CLIENT, edit=lambda text: text) -> Path:
    """Return config.example.yaml (edited by ``edit``) in ``folder``, with a client_secret.json beside it."""
    if client_secrets is not None:
        write(folder / "client_secret.json", client_secrets if isinstance(client_secrets, str)
              else json.dumps(client_secrets))
    return write(folder / "config.yaml", edit((ROOT / "config.example.yaml").read_text()))


# --------------------------------------------------------------------------- typos


TYPOS = [
    ("sever", lambda d: {("sever" if k == "server" else k): v for k, v in d.items()},
     "config key 'sever': unknown; did you mean 'server'?"),
    ("cookie_secert", lambda d: {**d, "server": {"cookie_secert": d["server"]["cookie_secret"]}},
     "config key 'server.cookie_secert': unknown; did you mean 'server.cookie_secret'?"),
    ("developement", lambda d: {"developement": True, **d},
     "config key 'developement': unknown; did you mean 'development'?"),
    ("memroy", lambda d: {**d, "hub": {"backend": "memroy"}},
     "config key 'hub.backend': no hub 'memroy' is installed; did you mean 'memory'? "
     "(installed in entry-point group 'tornado_signin.hubs': memory, redis)"),
    ("store backend", lambda d: {**d, "store": {**d["store"], "backend": "sqll"}},
     "config key 'store.backend': no token store 'sqll' is installed; did you mean 'sql'? "
     "(installed in entry-point group 'tornado_signin.backends': dynamodb, file, memory, sql)"),
    ("store option", lambda d: {**d, "store": {**{k: v for k, v in d["store"].items() if k != "url"},
                                               "ulr": d["store"]["url"]}},
     "config key 'store.ulr': unknown option of backend 'sql'; did you mean 'store.url'?"),
]


@pytest.mark.parametrize("name, edit, message", TYPOS, ids=[t[0] for t in TYPOS])
def test_check_reports_a_typo_first_with_the_closest_key(tmp_path, name, edit, message):
    # The environment is empty too: the typo still comes before the unset variables.
    path = write(tmp_path / "config.yaml", edit(valid_document(tmp_path)))
    result = tornado_signin("check", "--config", str(path), env={})
    assert (result.returncode, result.stdout, result.stderr) == (EXIT_CONFIG, f"config: FAILED: {message}\n", "")
    assert not (tmp_path / "tokens.sqlite3").exists()


def test_check_and_serve_report_every_typo_in_one_line(tmp_path):
    document = valid_document(tmp_path)
    document = {"developement": True, **document, "server": {"cookie_secert": document["server"]["cookie_secret"]},
                "store": {**{k: v for k, v in document["store"].items() if k != "url"}, "ulr": document["store"]["url"]}}
    path = write(tmp_path / "config.yaml", document)
    message = ("config key 'developement': unknown; did you mean 'development'? Also unknown: "
               "'server.cookie_secert' (did you mean 'server.cookie_secret'?), "
               "'store.ulr' (unknown option of backend 'sql'; did you mean 'store.url'?)")
    result = tornado_signin("check", "--config", str(path), env={})
    assert (result.returncode, result.stdout, result.stderr) == (EXIT_CONFIG, f"config: FAILED: {message}\n", "")
    result = tornado_signin("serve", "--config", str(path), env=ENV)
    assert (result.returncode, result.stdout, result.stderr) == (EXIT_CONFIG, "", f"tornado-signin: {message}\n")
    assert not (tmp_path / "tokens.sqlite3").exists()


@pytest.mark.parametrize("name, edit, message", TYPOS[:3], ids=[t[0] for t in TYPOS[:3]])
def test_serve_reports_a_typo_first_with_the_closest_key(tmp_path, name, edit, message):
    path = write(tmp_path / "config.yaml", edit(valid_document(tmp_path)))
    result = tornado_signin("serve", "--config", str(path), env=ENV)
    assert (result.returncode, result.stdout, result.stderr) == (EXIT_CONFIG, "", f"tornado-signin: {message}\n")


# --------------------------------------------------------------------------- switching to real Google


def test_the_example_with_the_downloaded_file_takes_everything_from_the_file(tmp_path):
    """README step 2: the example beside client_secret.json; its client is the file's, not a placeholder."""
    from tornado_signin.config import load_config

    config = load_config(example_with(tmp_path), environ=ENV)
    assert config.google.client_id == WEB_CLIENT["web"]["client_id"]
    assert config.google.client_secret == WEB_CLIENT["web"]["client_secret"]
    assert config.google.endpoints.auth_uri == WEB_CLIENT["web"]["auth_uri"]
    text = (ROOT / "config.example.yaml").read_text()
    google = yaml.safe_load(text)["google"]
    assert google["client_secrets_file"] == "client_secret.json"
    assert not {"client_id", "client_secret", "endpoints"} & set(google), "the example must not override the file"


def test_check_names_both_places_of_a_conflicting_client_id(tmp_path):
    path = example_with(tmp_path, edit=lambda text: text.replace(
        "  # client_id: YOUR_CLIENT_ID.apps.googleusercontent.com", "  client_id: 999-other.apps.googleusercontent.com"))
    result = tornado_signin("check", "--config", str(path), env=ENV)
    assert result.returncode == EXIT_CONFIG and result.stderr == ""
    assert result.stdout == (
        f"config: FAILED: config key 'google.client_id': differs from web.client_id in {tmp_path / 'client_secret.json'}"
        " ('999-other.apps.googleusercontent.com' here, '1234-abc.apps.googleusercontent.com' in the file): "
        "the file is the source of truth, remove google.client_id from the config\n")


def test_serve_refuses_a_conflicting_client_secret_without_showing_either(tmp_path):
    path = example_with(tmp_path, edit=lambda text: text.replace(
        '  # client_secret: {"$env": "GOOGLE_CLIENT_SECRET"}', '  client_secret: {"$env": "GOOGLE_CLIENT_SECRET"}'))
    result = tornado_signin("serve", "--config", str(path), env={**ENV, "GOOGLE_CLIENT_SECRET": "GOCSPX-other"})
    assert result.returncode == EXIT_CONFIG and result.stdout == ""
    assert result.stderr.startswith("tornado-signin: config key 'google.client_secret': differs from "
                                    f"web.client_secret in {tmp_path / 'client_secret.json'}")
    assert "GOCSPX" not in result.stderr


@pytest.mark.parametrize("document, problem", [
    ('{"web": {"client_id": ', "is not JSON (line 1 column 23): download the client's JSON again"),
    ({"installed": {"client_id": "1-a.apps.googleusercontent.com", "client_secret": "GOCSPX-d"}},
     "is an 'installed' (desktop) client; the one-time-code flow needs a 'web' client"),
    ({"other": {}}, "has no 'web' section"),
], ids=["broken", "desktop", "no-web"])
def test_check_names_the_file_and_its_problem_before_any_environment_variable(tmp_path, document, problem):
    result = tornado_signin("check", "--config", str(example_with(tmp_path, document)), env={})
    assert result.returncode == EXIT_CONFIG and result.stderr == ""
    assert result.stdout.startswith(
        f"config: FAILED: config key 'google.client_secrets_file': {tmp_path / 'client_secret.json'} {problem}")


def test_check_names_a_missing_client_secrets_file(tmp_path):
    result = tornado_signin("check", "--config", str(example_with(tmp_path, None)), env={})
    assert (result.returncode, result.stdout) == (
        EXIT_CONFIG, f"config: FAILED: config key 'google.client_secrets_file': file not found: "
                     f"{tmp_path / 'client_secret.json'}\n")


def test_check_refuses_the_placeholder_client_id(tmp_path):
    """The example's alternative (client_id in YAML) uncommented but not filled in."""
    def edit(text: str) -> str:
        return (text.replace("  client_secrets_file: client_secret.json\n", "")
                .replace("  # client_id: ", "  client_id: ").replace("  # client_secret: ", "  client_secret: "))

    result = tornado_signin("check", "--config", str(example_with(tmp_path, None, edit)),
                            env={**ENV, "GOOGLE_CLIENT_SECRET": "GOCSPX-x"})
    assert result.returncode == EXIT_CONFIG and result.stderr == ""
    assert result.stdout.startswith("config: FAILED: config key 'google.client_id': "
                                    "'YOUR_CLIENT_ID.apps.googleusercontent.com' is a placeholder")


# --------------------------------------------------------------------------- check: store, hub, Google


from harness import CLIENT_ID, CLIENT_SECRET, self_signed_files  # noqa: E402  (tests/ is on the path)


@pytest.fixture(scope="module")
def emulator():
    from tornado_signin.emulator import EmulatorClient, EmulatorThread

    thread = EmulatorThread(clients=[EmulatorClient(CLIENT_ID, CLIENT_SECRET, ("http://127.0.0.1:8080",))])
    yield thread.start()
    thread.stop()


def dev_document(folder: Path, base_url: str, **google: object) -> dict:
    """A development config whose Google is the emulator at ``base_url`` and whose store is a SQLite file."""
    return {
        "development": True,
        "server": {"cookie_secret": {"$env": "TORNADO_SIGNIN_COOKIE_SECRET"}},
        "google": {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
                   "endpoints": {"auth_uri": f"{base_url}/o/oauth2/v2/auth", "token_uri": f"{base_url}/token",
                                 "certs_uri": f"{base_url}/oauth2/v1/certs"}, **google},
        "store": {"backend": "sql", "url": f"sqlite:///{folder / 'tokens.sqlite3'}",
                  "encryption": {"keys": [{"$env": "TORNADO_SIGNIN_KEY"}]}},
    }


def check(folder: Path, document: dict, *args: str) -> subprocess.CompletedProcess[str]:
    return tornado_signin("check", "--config", str(write(folder / "config.yaml", document)), *args, env=ENV)


def sqlite_tables(path: Path) -> list[str]:
    import sqlite3

    with sqlite3.connect(path) as db:
        return [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]


def test_check_creates_no_table_unless_asked(tmp_path, emulator):
    document = dev_document(tmp_path, emulator.base_url)
    database = tmp_path / "tokens.sqlite3"
    write(tmp_path / "config.yaml", document)
    before = sorted(tmp_path.iterdir())
    result = check(tmp_path, document)
    assert result.returncode == 4, result.stdout
    line = result.stdout.splitlines()[1]
    assert line.startswith("store (sql): FAILED: SQL token store")
    assert f"the database file {database} does not exist" in line, line
    assert "check creates nothing: run check with --create-table to create it" in line, line
    assert "OperationalError" not in result.stdout  # the cause's words, not its class
    assert sorted(tmp_path.iterdir()) == before  # no database file left behind (nor -wal, -shm, .lock)

    import sqlite3

    sqlite3.connect(database).close()  # a database without the table (as check left behind before)
    result = check(tmp_path, document)
    assert result.returncode == 4, result.stdout
    assert "no such table: tornado_signin_tokens" in result.stdout and "--create-table" in result.stdout
    assert sqlite_tables(database) == []
    database.unlink()

    result = check(tmp_path, document, "--create-table")
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.splitlines() == [
        "config: ok",
        "store (sql): ready (created if it was missing)",
        "store (sql): ok",
        "hub (memory): ok",
        f"google certs ({emulator.base_url}/oauth2/v3/certs): ok",
        f"google token endpoint ({emulator.base_url}/token): ok, client id {CLIENT_ID} and its secret accepted",
    ]
    assert sqlite_tables(tmp_path / "tokens.sqlite3") == ["tornado_signin_tokens"]
    assert check(tmp_path, document).returncode == 0


def test_check_creates_no_table_on_postgresql(tmp_path, emulator, postgres_url, unique_name):
    import sqlalchemy

    document = dev_document(tmp_path, emulator.base_url)
    document["store"].update(url=postgres_url, table=unique_name)
    result = check(tmp_path, document)
    assert result.returncode == 4 and f'relation "{unique_name}" does not exist' in result.stdout
    engine = sqlalchemy.create_engine(postgres_url)
    try:
        assert not sqlalchemy.inspect(engine).has_table(unique_name)
        assert check(tmp_path, document, "--create-table").returncode == 0
        assert sqlalchemy.inspect(engine).has_table(unique_name)
    finally:
        with engine.begin() as conn:
            conn.execute(sqlalchemy.text(f'DROP TABLE IF EXISTS "{unique_name}"'))
        engine.dispose()


@pytest.mark.parametrize("google, what", [
    ({"client_secret": "GOCSPX-wrong"}, "client id test-client.apps.googleusercontent.com refused (invalid_client)"),
    ({"client_id": "other.apps.googleusercontent.com"}, "client id other.apps.googleusercontent.com refused "
                                                        "(invalid_client)"),
], ids=["wrong-secret", "unknown-client"])
def test_check_confirms_the_client_at_the_token_endpoint(tmp_path, emulator, google, what):
    result = check(tmp_path, dev_document(tmp_path, emulator.base_url, **google), "--create-table")
    assert (result.returncode, result.stderr) == (6, "")
    last = result.stdout.splitlines()[-1]
    assert last == (f"google token endpoint ({emulator.base_url}/token): FAILED: {what}: the client secret or the "
                    "client id is wrong (download the client's JSON again and point google.client_secrets_file at it)")
    assert "GOCSPX" not in result.stdout


def test_check_says_connection_refused(tmp_path):
    from tornado.testing import bind_unused_port

    sock, port = bind_unused_port()
    sock.close()  # nothing listens there now
    result = check(tmp_path, dev_document(tmp_path, f"http://127.0.0.1:{port}"), "--create-table")
    assert result.returncode == 6
    assert result.stdout.splitlines()[-1] == (
        f"google certs (http://127.0.0.1:{port}/oauth2/v3/certs): FAILED: GET http://127.0.0.1:{port}/oauth2/v3/certs: "
        f"connection refused by 127.0.0.1:{port} (nothing listening there, or a firewall)")
    assert "CurlError" not in result.stdout


def test_check_names_an_unusable_proxy_variable_not_its_credentials(tmp_path, monkeypatch):
    monkeypatch.setenv("all_proxy", "socks5://ops:PROXY-SECRET@127.0.0.1:1080")
    result = check(tmp_path, dev_document(tmp_path, "http://127.0.0.1:9"), "--create-table")
    assert result.returncode == 6
    assert result.stdout.splitlines()[-1] == (
        "google certs (http://127.0.0.1:9/oauth2/v3/certs): FAILED: GET http://127.0.0.1:9/oauth2/v3/certs: "
        "all_proxy: proxy scheme 'socks5' is not supported; only an http://host:port proxy is")
    assert "PROXY-SECRET" not in result.stdout + result.stderr


def test_check_names_an_unreachable_proxy_not_google(tmp_path, monkeypatch):
    from tornado.testing import bind_unused_port

    sock, port = bind_unused_port()
    sock.close()  # nothing listens there now
    monkeypatch.setenv("http_proxy", f"http://ops:PROXY-SECRET@127.0.0.1:{port}")
    result = check(tmp_path, dev_document(tmp_path, "http://127.0.0.1:9"), "--create-table")
    assert result.returncode == 6
    assert result.stdout.splitlines()[-1] == (
        "google certs (http://127.0.0.1:9/oauth2/v3/certs): FAILED: GET http://127.0.0.1:9/oauth2/v3/certs: "
        f"cannot connect to proxy 127.0.0.1:{port} (connection refused)")
    assert "PROXY-SECRET" not in result.stdout + result.stderr


def test_check_says_timed_out(tmp_path):
    from tornado.testing import bind_unused_port

    sock, port = bind_unused_port()  # listens, never answers
    try:
        result = check(tmp_path, dev_document(tmp_path, f"http://127.0.0.1:{port}", request_timeout=0.5),
                       "--create-table")
    finally:
        sock.close()
    assert result.returncode == 6
    assert result.stdout.splitlines()[-1].endswith("/oauth2/v3/certs: timed out")


def test_check_says_the_tls_certificate_is_not_trusted(tmp_path):
    """An https endpoint with a self-signed certificate (what a TLS-intercepting proxy looks like)."""
    import ssl
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    cert_file, key_file = self_signed_files(tmp_path)
    server = HTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    port = server.server_address[1]
    try:
        result = check(tmp_path, dev_document(tmp_path, f"https://127.0.0.1:{port}"), "--create-table")
    finally:
        server.shutdown()
        server.server_close()
    assert result.returncode == 6
    assert result.stdout.splitlines()[-1].endswith(
        "TLS: the certificate of 127.0.0.1 is not trusted (self-signed, or an unknown CA)")


def _verify_error(code: int) -> ssl.SSLCertVerificationError:
    error = ssl.SSLCertVerificationError(1, "certificate verify failed")
    error.verify_code = code
    return error


@pytest.mark.parametrize("error, url, reason", [
    (socket.gaierror(-2, "Name or service not known"), "https://oauth2.googleapis.com/token",
     "DNS lookup failed for oauth2.googleapis.com"),
    (ConnectionRefusedError(111, "Connection refused"), "https://oauth2.googleapis.com/token",
     "connection refused by oauth2.googleapis.com:443"),
    (TimeoutError("POST https://oauth2.googleapis.com/token: timed out"), "https://oauth2.googleapis.com/token",
     "timed out"),
    (ssl.SSLError(1, "wrong version number"), "https://oauth2.googleapis.com/token",
     "TLS handshake with oauth2.googleapis.com:443 failed"),
    (_verify_error(18), "https://oauth2.googleapis.com/token",
     "TLS: the certificate of oauth2.googleapis.com is not trusted"),
    (_verify_error(62), "https://oauth2.googleapis.com/token",
     "TLS: the certificate of oauth2.googleapis.com is not valid for that name"),
    (_verify_error(64), "https://127.0.0.1:8443/token", "TLS: the certificate of 127.0.0.1 is not valid for that name"),
    (ConnectionResetError("127.0.0.1:81 closed the connection without a reply"), "http://127.0.0.1:81/t",
     "127.0.0.1:81 closed the connection without a reply"),
    (ConnectionResetError(104, "Connection reset by peer"), "http://127.0.0.1:81/t",
     "connection to 127.0.0.1:81 broken"),
    (OSError(101, "Network is unreachable"), "http://127.0.0.1:81/t", "network is unreachable"),
])
def test_transport_failures_are_named(error, url, reason):
    """The mapping itself, by the token client's exceptions (DNS cannot be failed here without a resolver)."""
    from tornado_signin.google import transport_reason

    assert transport_reason(error, url).startswith(reason)


def test_check_store_down_names_the_reason_without_the_password(tmp_path, emulator):
    document = dev_document(tmp_path, emulator.base_url)
    document["store"]["url"] = "postgresql+psycopg://app:s3cret-pw@127.0.0.1:1/signin"
    result = check(tmp_path, document)
    assert result.returncode == 4
    line = result.stdout.splitlines()[1]
    assert line.startswith("store (sql): FAILED: SQL token store postgresql+psycopg://app:***@127.0.0.1:1/signin")
    assert "Connection refused" in line and "s3cret-pw" not in result.stdout


def test_check_hub_down_names_it_without_the_password(tmp_path, emulator):
    pytest.importorskip("redis")
    document = dev_document(tmp_path, emulator.base_url)
    document["hub"] = {"backend": "redis", "url": "redis://:hub-s3cret@127.0.0.1:1/0"}
    result = check(tmp_path, document, "--create-table")
    assert result.returncode == 5
    line = result.stdout.splitlines()[-1]
    assert line.startswith("hub (redis at redis://:***@127.0.0.1:1/0): FAILED: ")
    assert "hub-s3cret" not in result.stdout and "ConnectionError" not in line


# --------------------------------------------------------------------------- serve: services down at start-up


def serve_until_listening(config: Path, deadline: float = 30) -> tuple[int, list[str]]:
    """Run ``tornado-signin serve --config``, wait for its listening line, stop it; return its exit status and log."""
    import signal
    import time

    from tornado.testing import bind_unused_port

    sock, port = bind_unused_port()
    sock.close()
    command = shutil.which("tornado-signin", path=str(Path(sys.executable).parent)) or "tornado-signin"
    log_path = config.parent / "serve.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([command, "serve", "--config", str(config), "--port", str(port)],
                                   stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **ENV})
    try:
        end = time.monotonic() + deadline
        while time.monotonic() < end and "listening on" not in log_path.read_text() and process.poll() is None:
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    lines = log_path.read_text().splitlines()
    assert any("listening on" in line for line in lines), lines
    return process.returncode, lines


def test_serve_logs_one_warning_per_service_down_at_start_up(tmp_path, emulator):
    pytest.importorskip("redis")
    document = dev_document(tmp_path, emulator.base_url)
    document["store"]["url"] = "postgresql+psycopg://app:s3cret-pw@127.0.0.1:1/signin"
    document["hub"] = {"backend": "redis", "url": "redis://:hub-s3cret@127.0.0.1:1/0"}
    status, lines = serve_until_listening(write(tmp_path / "config.yaml", document))
    assert status == 0, lines
    warnings = [line for line in lines if " WARNING " in line]
    assert len(warnings) == 2, lines
    store_line = next(line for line in warnings if "token store" in line)
    hub_line = next(line for line in warnings if " hub " in line)
    assert "token store sql at postgresql+psycopg://app:***@127.0.0.1:1/signin is unreachable at start-up: " in store_line
    assert "Connection refused" in store_line and "serving anyway" in store_line
    assert "hub redis at redis://:***@127.0.0.1:1/0 is unreachable at start-up: " in hub_line
    text = "\n".join(lines)
    assert "s3cret-pw" not in text and "hub-s3cret" not in text


def test_serve_logs_no_warning_when_everything_answers(tmp_path, emulator):
    status, lines = serve_until_listening(write(tmp_path / "config.yaml", dev_document(tmp_path, emulator.base_url)))
    assert status == 0, lines
    assert [line for line in lines if " WARNING " in line or " ERROR " in line] == []


@pytest.mark.parametrize("public_origin, warned", [("http://127.0.0.1:8080", False), ("http://127.0.0.1:9999", True)])
def test_check_through_the_client_secrets_file_and_its_origins(tmp_path, emulator, public_origin, warned):
    """README step 2 end to end: everything about the client from the file (here: the emulator's)."""
    base = emulator.base_url
    write(tmp_path / "client_secret.json", json.dumps({"web": {
        "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "auth_uri": f"{base}/o/oauth2/v2/auth",
        "token_uri": f"{base}/token", "auth_provider_x509_cert_url": f"{base}/oauth2/v1/certs",
        "javascript_origins": ["http://127.0.0.1:8080"]}}))
    document = dev_document(tmp_path, base)
    document["google"] = {"client_secrets_file": "client_secret.json"}
    document["server"]["public_origin"] = public_origin
    result = check(tmp_path, document, "--create-table")
    assert (result.returncode, result.stderr) == (0, ""), result.stdout
    lines = result.stdout.splitlines()
    assert lines[5] == f"google token endpoint ({base}/token): ok, client id {CLIENT_ID} and its secret accepted"
    expected = [f"google client origins: WARNING: {public_origin} is not among the Authorized JavaScript origins in "
                "client_secret.json (Google refuses sign-in from a page there: origin_mismatch) unless it was "
                "added in the Google API Console after the download"] if warned else []
    assert lines[6:] == expected


def test_check_creates_no_dynamodb_table_unless_asked(tmp_path, emulator, moto_server, unique_name):
    import boto3

    document = dev_document(tmp_path, emulator.base_url)
    document["store"] = {"backend": "dynamodb", "table": unique_name, "endpoint_url": moto_server,
                         "region": "us-east-1", "aws_access_key_id": "local", "aws_secret_access_key": "local",
                         "create_table": True, "encryption": {"keys": [{"$env": "TORNADO_SIGNIN_KEY"}]}}
    client = boto3.client("dynamodb", endpoint_url=moto_server, region_name="us-east-1",
                          aws_access_key_id="local", aws_secret_access_key="local")
    result = check(tmp_path, document)
    assert result.returncode == 4, result.stdout
    assert "ResourceNotFoundException" in result.stdout and "--create-table" in result.stdout
    assert unique_name not in client.list_tables()["TableNames"]
    result = check(tmp_path, document, "--create-table")
    assert result.returncode == 0, result.stdout
    assert result.stdout.splitlines()[1:3] == ["store (dynamodb): ready (created if it was missing)",
                                               "store (dynamodb): ok"]
    assert unique_name in client.list_tables()["TableNames"]
    client.delete_table(TableName=unique_name)


def test_the_example_as_shipped_passes_check_with_a_downloaded_file(tmp_path, emulator):
    """README "Switching to real Google": the example, the client's file, the two secrets, check --create-table.

    Only ``development`` is switched on so that the file may name the emulator
    instead of Google; every other line is the example's.
    """
    base = emulator.base_url
    downloaded = {"web": {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "project_id": "demo",
                          "auth_uri": f"{base}/o/oauth2/v2/auth", "token_uri": f"{base}/token",
                          "auth_provider_x509_cert_url": f"{base}/oauth2/v1/certs"}}
    path = example_with(tmp_path, downloaded, lambda text: text.replace("development: false", "development: true", 1))
    result = tornado_signin("check", "--config", str(path), "--create-table", env=ENV, cwd=tmp_path)
    assert (result.returncode, result.stderr) == (0, ""), result.stdout
    assert "hub (memory): ok" in result.stdout.splitlines()


def test_check_names_the_file_itself_when_it_is_not_a_config(tmp_path):
    """Problems of the file as a whole are the file's, not a key called 'config' or ''."""
    missing = tornado_signin("check", "--config", str(tmp_path / "nope.yaml"), env=ENV)
    assert (missing.returncode, missing.stderr) == (EXIT_CONFIG, "")
    assert missing.stdout == f"config: FAILED: config file: cannot read {tmp_path / 'nope.yaml'}: " \
                             "No such file or directory\n"
    broken = tornado_signin("check", "--config", str(write(tmp_path / "broken.yaml", "server: [\n")), env=ENV)
    assert broken.stdout == f"config: FAILED: config file: {tmp_path / 'broken.yaml'} is not valid YAML at line 2\n"
    listed = tornado_signin("users", "--config", str(write(tmp_path / "list.yaml", "- server\n- google\n")), env=ENV)
    assert (listed.returncode, listed.stdout) == (EXIT_CONFIG, "")
    assert listed.stderr == ("tornado-signin: config file: the top level must be a mapping of keys "
                             "(development:, server:, google:, store: …)\n")


def test_check_names_the_downloaded_file_when_it_lacks_the_client_secret(tmp_path):
    no_secret = {"web": {k: v for k, v in WEB_CLIENT["web"].items() if k != "client_secret"}}
    result = tornado_signin("check", "--config", str(example_with(tmp_path, no_secret)), env=ENV)
    assert (result.returncode, result.stderr) == (EXIT_CONFIG, "")
    assert result.stdout == (f"config: FAILED: config key 'google.client_secrets_file': {tmp_path / 'client_secret.json'}"
                             " has no web.client_secret: download the client's JSON again from the Google API Console\n")


def test_a_relative_sqlite_path_is_the_config_files_wherever_the_cli_runs(tmp_path):
    """The example's `sqlite:///tornado-signin.sqlite3`: the CLI run from another folder opens the same database
    (it used to create an empty one in the working directory and report no users)."""
    deploy, elsewhere = tmp_path / "deploy", tmp_path / "elsewhere"
    deploy.mkdir()
    elsewhere.mkdir()
    document = valid_document(deploy)
    document["store"]["url"] = "sqlite:///tornado-signin.sqlite3"
    config = write(deploy / "config.yaml", document)
    result = tornado_signin("rotate-keys", "--config", str(config), env=ENV, cwd=elsewhere)  # writes: creates it
    assert result.returncode == 0, result.stderr
    assert (deploy / "tornado-signin.sqlite3").exists()
    result = tornado_signin("users", "--config", str(config), env=ENV, cwd=elsewhere)
    assert (result.returncode, result.stdout) == (0, ""), result.stderr
    assert list(elsewhere.iterdir()) == []
