"""Beyond one machine (DESIGN.md §5): real `tornado-signin serve` processes sharing PostgreSQL and Redis.

Each test starts its own emulator and servers on free ports, with a unique
PostgreSQL table and a unique Redis key prefix, so tests and engineers can
share the machine's services.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import signal
import ssl
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from harness import PageClient, json_body, self_signed_files, without_state
from procs import (
    Proc,
    free_port,
    get,
    mint,
    start_emulator,
    start_server,
    wait_port,
    write_config,
)
from tornado_signin.crypto import TokenCipher

pytestmark = [pytest.mark.gen_test(timeout=90), pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent


class Deployment:
    """An emulator plus N app instances sharing one store and one hub."""

    def __init__(self, tmp: Path, postgres_url: str, redis_url: str, table: str, *, instances: int = 2,
                 extra_origins: tuple[str, ...] = (), limits: dict | None = None, serve_args: tuple[str, ...] = ()):
        self.tmp = tmp
        self.table = table
        self.postgres_url = postgres_url
        self.ports = [free_port() for _ in range(instances)]
        self.emulator_url = f"http://127.0.0.1:{free_port()}"
        self.urls = [f"http://127.0.0.1:{p}" for p in self.ports]
        self.config = write_config(
            tmp, name="app", emulator_url=self.emulator_url, origins=[*self.urls, *extra_origins],
            store={"backend": "sql", "url": postgres_url, "table": table},
            hub={"backend": "redis", "url": redis_url, "key_prefix": f"{table}:"},
            limits=limits,
        )
        self.procs: list[Proc] = []
        self.servers: list[Proc] = []
        try:
            self.emulator = start_emulator(tmp, self.config, int(self.emulator_url.rsplit(":", 1)[1]))
            self.procs.append(self.emulator)
            for port in self.ports:
                self.servers.append(start_server(tmp, self.config, port, *serve_args))
                self.procs.append(self.servers[-1])
            for url in self.urls:
                assert get(url + "/healthz?ready=1")[0] == 200
        except BaseException:
            # The fixture never yields a deployment that failed to start: stop what did start here.
            self.close()
            raise

    def client(self, index: int = 0, origin: str | None = None) -> PageClient:
        return PageClient(self.urls[index], origin or self.urls[0])

    def rows(self) -> list[dict]:
        engine = create_engine(self.postgres_url)
        try:
            with engine.connect() as conn:
                return [dict(r._mapping) for r in conn.execute(text(f'SELECT * FROM "{self.table}"'))]
        finally:
            engine.dispose()

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        engine = create_engine(self.postgres_url)
        try:
            with engine.begin() as conn:
                conn.execute(text(f'DROP TABLE IF EXISTS "{self.table}"'))
        finally:
            engine.dispose()


@pytest.fixture
def deployment_factory(tmp_path, postgres_url, redis_url, unique_name):
    made: list[Deployment] = []

    def make(**kwargs) -> Deployment:
        deployment = Deployment(tmp_path, postgres_url, redis_url, unique_name + str(len(made)), **kwargs)
        made.append(deployment)
        return deployment

    yield make
    for deployment in made:
        deployment.close()


async def read_frame(socket, timeout: float = 10.0) -> dict:
    message = await asyncio.wait_for(socket.read_message(), timeout)
    assert message is not None, "socket closed"
    return json.loads(message)


async def test_socket_on_a_code_post_on_b_page_shows_fully_logged_in(deployment_factory):
    dep = deployment_factory()
    page_a = dep.client(0)
    await page_a.fetch("/")
    socket_a = await page_a.socket()
    # The load balancer routes the code POST to B; cookies are per host, not per port.
    page_b = dep.client(1)
    page_b.cookies = dict(page_a.cookies)
    response = await page_b.post_code(mint(dep.emulator_url, "alice@example.com"))
    assert response.code == 200, response.body
    user = json_body(response)["user"]
    assert without_state(await read_frame(socket_a)) == {"type": "signed_in", "user": user}
    assert user["email"] == "alice@example.com"
    # Late sockets, on either process, with the rotated session cookie, learn it too (recorded).
    for index in (0, 1):
        late = dep.client(index)
        late.cookies = dict(page_b.cookies)
        socket = await late.socket()
        assert (await read_frame(socket))["type"] == "signed_in"
        socket.close()
    # A late socket of the *old* session (the tab that was open) learns it as well.
    old = dep.client(1)
    old.cookies = dict(page_a.cookies)
    socket = await old.socket()
    assert (await read_frame(socket))["type"] == "signed_in"
    socket.close()
    socket_a.close()
    # Stored once, encrypted (AES-GCM, bound to the user and the field), in the shared PostgreSQL table:
    # the raw row holds neither token in plaintext.
    (row,) = dep.rows()
    assert row["email"] == "alice@example.com"
    cipher = TokenCipher([__import__("harness").ENCRYPTION_KEY])
    raw = repr(row)
    for field in ("refresh_token", "access_token"):
        assert row[field].startswith("tsg1."), (field, row[field][:8])
        plaintext = cipher.decrypt(row[field], sub=row["sub"], field=field)
        assert plaintext and plaintext not in raw, field
    # The state is single-use across processes (shared hub): replaying a spent one on A fails.
    state = await page_b.state()
    assert (await page_b.post_code(mint(dep.emulator_url, "bob@gmail.com"), state=state)).code == 200
    page_a.cookies = dict(page_b.cookies)
    replay = await page_a.post_code(mint(dep.emulator_url, "bob@gmail.com"), state=state)
    assert replay.code == 403


async def test_serve_processes_forks_workers_that_share_the_port(deployment_factory):
    dep = deployment_factory(instances=1, serve_args=("--processes", "2"))
    page = dep.client(0)
    await page.fetch("/")
    socket = await page.socket()
    for email in ("alice@example.com", "bob@gmail.com", "carol@example.org"):
        page_fresh = dep.client(0)
        await page_fresh.fetch("/")
        assert (await page_fresh.post_code(mint(dep.emulator_url, email))).code == 200
    assert (await page.post_code(mint(dep.emulator_url, "alice@example.com"))).code == 200
    assert (await read_frame(socket))["type"] == "signed_in"
    server = dep.servers[0]
    # Worker 1 starts once worker 0 serves (the supervisor's start-up order): wait for it.
    deadline = time.monotonic() + 15
    while server.log().count("listening on") < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    log = server.log()
    assert log.count("listening on") == 2, log
    socket.close()
    started = time.monotonic()
    server.signal(signal.SIGTERM)
    assert server.wait(20) == 0
    print(f"--processes 2: SIGTERM to exit of all workers: {time.monotonic() - started:.2f}s")
    assert server.log().count("shut down in") == 2


async def test_nginx_balances_two_instances_with_websocket_upgrade(deployment_factory, tmp_path):
    nginx_port = free_port()
    origin = f"http://127.0.0.1:{nginx_port}"
    dep = deployment_factory(extra_origins=(origin,))
    nginx = start_nginx(tmp_path, dep.ports, http_port=nginx_port, tls_port=free_port())
    try:
        # Several logins through the balancer, each page holding a socket through it.
        for email in ("alice@example.com", "bob@gmail.com", "carol@example.org", "alice@example.com"):
            page = PageClient(origin, origin)
            page_response = await page.fetch("/")
            assert page_response.code == 200
            socket = await page.socket()
            response = await page.post_code(mint(dep.emulator_url, email))
            assert response.code == 200, (response.code, response.body)
            assert response.headers.get("X-Request-Id")
            assert without_state(await read_frame(socket)) == {"type": "signed_in", "user": json_body(response)["user"]}
            socket.close()
        assert get(origin + "/healthz?ready=1")[0] == 200
        access = (tmp_path / "logs" / "tornado-signin.access.log").read_text()
        upstreams = {line.split("upstream=")[1].split()[0] for line in access.splitlines() if "upstream=" in line}
        assert {f"127.0.0.1:{p}" for p in dep.ports} <= upstreams, access
        assert " 101 " in access  # the websocket upgrade went through nginx
        # nginx's request id reaches the app's log lines.
        ids = [line.split("rid=")[1].split()[0] for line in access.splitlines() if "/storeauthcode" in line]
        logs = dep.servers[0].log() + dep.servers[1].log()
        assert ids and all(f"[{rid}]" in logs for rid in ids), (ids, logs[-2000:])
    finally:
        nginx.stop()


def start_nginx(tmp: Path, upstream_ports: list[int], *, http_port: int, tls_port: int) -> Proc:
    """Run deploy/nginx.conf.example as shipped, but for its ports, paths and (test-made) certificate."""
    template = (ROOT / "deploy" / "nginx.conf.example").read_text()
    upstreams = [f"127.0.0.1:{port}" for port in upstream_ports] * 2
    conf = template.replace("127.0.0.1:8001", upstreams[0]).replace("127.0.0.1:8002", upstreams[1]) \
                   .replace("listen 80;", f"listen 127.0.0.1:{http_port};") \
                   .replace("listen 443 ssl;", f"listen 127.0.0.1:{tls_port} ssl;") \
                   .replace("server_name app.example.com;", "server_name _;")
    cert, key = self_signed_files(tmp)
    conf = conf.replace("/etc/nginx/tls/app.example.com.crt", str(cert)) \
               .replace("/etc/nginx/tls/app.example.com.key", str(key))
    # Logs, temp folders and pid in the tmp prefix.
    (tmp / "logs").mkdir(exist_ok=True)
    conf = conf.replace("/var/log/nginx/", f"{tmp}/logs/").replace("worker_processes auto;", "worker_processes 1;")
    conf = conf.replace("http {", f"http {{\n    client_body_temp_path {tmp}/body;\n"
                                  f"    proxy_temp_path {tmp}/proxy;\n", 1)
    (tmp / "nginx.conf").write_text(conf)
    nginx = Proc(["/usr/sbin/nginx", "-c", str(tmp / "nginx.conf"), "-p", str(tmp),
                  "-g", f"daemon off; pid {tmp}/nginx.pid;"], tmp / "nginx.out")
    wait_port(http_port, proc=nginx.proc)
    wait_port(tls_port, proc=nginx.proc)
    return nginx


def request_via(url: str, path: str, headers: dict[str, str]) -> http.client.HTTPResponse:
    """One GET through the proxy with the client's own (forged) headers; certificates are not checked."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https":
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            parts.hostname, parts.port, timeout=10, context=ssl._create_unverified_context())
    else:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    conn.request("GET", path, headers=headers)
    response = conn.getresponse()
    response.read()
    conn.close()
    return response


# Every header the app trusts with server.xheaders on, as a client would forge it.
FORGED_SCHEME = [{"X-Scheme": "https"}, {"X-Forwarded-Proto": "https"},
                 {"X-Scheme": "https", "X-Forwarded-Proto": "https"}, {"X-Scheme": "HTTPS"}]
FORGED_DOWNGRADE = [{"X-Scheme": "http"}, {"X-Forwarded-Proto": "http"},
                    {"X-Scheme": "http", "X-Forwarded-Proto": "http"}]


def test_shipped_proxy_config_overwrites_every_header_the_app_trusts(tmp_path):
    """deploy/nginx.conf.example as shipped: a client's own X-Scheme / X-Forwarded-Proto change nothing.

    Tornado's xheaders reads X-Scheme before X-Forwarded-Proto, so the proxy must set both; over plain
    http no __Host- cookie and no HSTS, over TLS both, whatever the client says.
    """
    emulator_url = f"http://127.0.0.1:{free_port()}"
    app_port, http_port, tls_port = free_port(), free_port(), free_port()
    origins = [f"http://127.0.0.1:{http_port}", f"https://127.0.0.1:{tls_port}"]
    config = write_config(tmp_path, name="proxied", emulator_url=emulator_url, origins=origins,
                          store={"backend": "memory"},
                          server={"cookie_secret": {"$env": "TS_COOKIE_SECRET"}, "allowed_origins": origins,
                                  "xheaders": True})
    procs = [start_emulator(tmp_path, config, int(emulator_url.rsplit(":", 1)[1])),
             start_server(tmp_path, config, app_port)]
    try:
        procs.append(start_nginx(tmp_path, [app_port], http_port=http_port, tls_port=tls_port))
        for path in ("/", "/state", "/healthz"):
            for forged in [{}, *FORGED_SCHEME]:
                response = request_via(origins[0], path, forged)
                assert response.status == 200, (path, forged, response.status)
                cookies = response.headers.get_all("Set-Cookie") or []
                assert not any(c.startswith("__Host-") or "Secure" in c for c in cookies), (path, forged, cookies)
                assert response.headers.get("Strict-Transport-Security") is None, (path, forged)
            for forged in [{}, *FORGED_DOWNGRADE]:
                response = request_via(origins[1], path, forged)
                assert response.status == 200, (path, forged, response.status)
                cookies = response.headers.get_all("Set-Cookie") or []
                if path != "/healthz":
                    assert cookies and all(c.startswith("__Host-") and "Secure" in c for c in cookies), \
                        (path, forged, cookies)
                assert response.headers.get("Strict-Transport-Security"), (path, forged)
    finally:
        for proc in reversed(procs):
            proc.stop()


async def test_sigterm_finishes_in_flight_login_and_closes_sockets_with_reason(deployment_factory):
    dep = deployment_factory(instances=1)
    page = dep.client(0)
    await page.fetch("/")
    socket = await page.socket()
    faults = json.dumps({"endpoint": "token", "kind": "delay", "seconds": 1.5}).encode()
    urllib.request.urlopen(urllib.request.Request(dep.emulator_url + "/emulator/faults", data=faults,
                                                  headers={"Content-Type": "application/json"}), timeout=5)
    code = mint(dep.emulator_url, "bob@gmail.com")
    login = asyncio.ensure_future(page.post_code(code))
    await asyncio.sleep(0.5)  # the exchange is now waiting at the (slow) token endpoint
    server = dep.servers[0]
    started = time.monotonic()
    server.signal(signal.SIGTERM)
    response = await login
    assert response.code == 200, response.body
    frames = []
    while True:
        message = await asyncio.wait_for(socket.read_message(), 10)
        if message is None:
            break
        frames.append(json.loads(message))
    assert frames and frames[0]["type"] == "signed_in"
    assert socket.close_code == 1001 and socket.close_reason == "server shutting down"
    assert server.wait(15) == 0
    elapsed = time.monotonic() - started
    print(f"SIGTERM to exit: {elapsed:.2f}s")
    assert elapsed < 8
    assert len(dep.rows()) == 1
    assert "shut down in" in server.log()


async def test_sigkill_under_load_leaves_no_partial_record(deployment_factory):
    dep = deployment_factory(instances=1, limits={"worker_threads": 4})
    server = dep.servers[0]
    emails = ("alice@example.com", "bob@gmail.com", "carol@example.org")

    killed = asyncio.Event()
    results: list = []

    async def worker(i: int) -> None:
        # Each worker signs in again and again, until the process is gone.
        while not killed.is_set():
            page = dep.client(0)
            try:
                await page.fetch("/")
                code = await asyncio.get_running_loop().run_in_executor(None, mint, dep.emulator_url, emails[i % 3])
                results.append(await page.post_code(code))
            except Exception as exc:  # connection reset by the kill
                results.append(exc)
            if len([r for r in results if not isinstance(r, Exception) and r.code == 200]) >= 15:
                if not killed.is_set():
                    killed.set()
                    server.signal(signal.SIGKILL)

    await asyncio.wait_for(asyncio.gather(*(worker(i) for i in range(12))), 60)
    server.wait(5)
    ok = [r for r in results if not isinstance(r, Exception) and r.code == 200]
    cut = [r for r in results if isinstance(r, Exception) or r.code >= 500]
    print(f"SIGKILL under load: {len(ok)} completed, {len(cut)} cut")
    assert ok, "the kill came before any login completed"
    rows = dep.rows()
    cipher = TokenCipher([__import__("harness").ENCRYPTION_KEY])
    for row in rows:
        # Every row is whole: both tokens present and decryptable, times and scopes set.
        assert row["email"] in emails
        assert cipher.decrypt(row["refresh_token"], sub=row["sub"], field="refresh_token").startswith("1//")
        assert cipher.decrypt(row["access_token"], sub=row["sub"], field="access_token")
        assert row["access_token_expiry"] and row["created_at"] and row["updated_at"] and row["scopes"]
    # Every login answered 200 is stored.
    stored = {row["sub"] for row in rows}
    assert {json_body(r)["user"]["sub"] for r in ok} <= stored


def test_check_exit_status_per_failure(tmp_path, postgres_url, redis_url, unique_name):
    emulator_port = free_port()
    emulator_url = f"http://127.0.0.1:{emulator_port}"

    def config(name: str, **changes) -> Path:
        store = changes.pop("store", {"backend": "sql", "url": postgres_url, "table": unique_name})
        hub = changes.pop("hub", {"backend": "redis", "url": redis_url})
        return write_config(tmp_path, name=name, emulator_url=changes.pop("emulator_url", emulator_url),
                            origins=["http://127.0.0.1:8080"], store=store, hub=hub, **changes)

    def check(path: Path, *extra: str) -> tuple[int, str]:
        done = subprocess.run([__import__("sys").executable, "-m", "tornado_signin.cli", "check", "--config", str(path),
                               *extra],
                              capture_output=True, text=True, timeout=60, cwd=ROOT,
                              env={**__import__("os").environ, **__import__("procs").ENV})
        return done.returncode, done.stdout + done.stderr

    good = config("good")
    emulator = start_emulator(tmp_path, good, emulator_port)
    try:
        assert check(good)[0] == 4  # check creates no table ...
        assert check(good, "--create-table")[0] == 0  # ... unless asked
        assert check(good)[0] == 0, check(good)[1]
        bad = tmp_path / "bad.yaml"
        bad.write_text("server: {cookie_secret: short}\n")
        assert check(bad)[0] == 3
        down = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/test"
        code, out = check(config("store", store={"backend": "sql", "url": down, "table": unique_name}))
        assert code == 4, out
        code, out = check(config("hub", hub={"backend": "redis", "url": f"redis://127.0.0.1:{free_port()}/0"}))
        assert code == 5, out
        code, out = check(config("google", emulator_url=f"http://127.0.0.1:{free_port()}"))
        assert code == 6, out
    finally:
        emulator.stop()
        engine = create_engine(postgres_url)
        with engine.begin() as conn:
            conn.execute(text(f'DROP TABLE IF EXISTS "{unique_name}"'))
        engine.dispose()
