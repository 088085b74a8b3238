"""The ``tornado-signin`` command.

``serve`` (no ``--config``: demo mode), ``emulator``, ``backends``, ``check``,
and the offline-access commands ``users``, ``token``, ``call``, ``revoke``,
``rotate-keys``, ``migrate``, plus ``genkey``. Errors print one line naming
the config key or the problem and exit non-zero; nothing prints a token
except ``token`` (by design, alone on stdout).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from .errors import ConfigError, SigninError

__all__ = ["main", "build_parser"]

log = logging.getLogger("tornado_signin")

# Exit statuses of `check` (and of any command): one per failing part.
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_CONFIG = 3
EXIT_STORE = 4
EXIT_HUB = 5
EXIT_GOOGLE = 6


def _setup_logging(level: str = "INFO", fmt: str = "text") -> None:
    from .logctx import configure_logging
    from .redact import install_redaction

    install_redaction()
    configure_logging(level, fmt)


def _load(args: argparse.Namespace) -> Any:
    from .config import load_config

    return load_config(args.config)


# ----------------------------------------------------------------------------- serve


async def _serve_forever(servers: list[Any], contexts: list[Any], grace: float = 10.0) -> None:
    """Run until SIGTERM/SIGINT, then shut down gracefully within ``grace`` seconds.

    In order: stop accepting connections and mark the apps draining (readiness
    fails, new code POSTs get 503), wait for the logins in flight, close the
    websockets with 1001 "server shutting down", close the remaining
    connections, then close store, hub and clients.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    started = time.monotonic()
    deadline = started + grace
    log.info("shutting down: no new connections, finishing in-flight logins")
    for server in servers:
        server.stop()
    for ctx in contexts:
        ctx.draining = True
    while any(ctx.logins_in_flight for ctx in contexts) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    left = sum(ctx.logins_in_flight for ctx in contexts)
    if left:
        log.warning("%d login(s) still in flight after %.0fs; closing anyway", left, grace)
    from .confirm import CLOSE_SHUTDOWN

    for ctx in contexts:
        for socket in list(ctx.sockets):
            socket.close(CLOSE_SHUTDOWN, "server shutting down")
    for server in servers:
        try:
            await asyncio.wait_for(server.close_all_connections(), max(0.1, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            log.warning("connections still open after %.0fs; closing anyway", grace)
    for ctx in contexts:
        await ctx.close()
    log.info("shut down in %.2fs", time.monotonic() - started)


def _fork_workers(count: int) -> int | None:
    """Fork ``count`` workers sharing the listening sockets (Tornado's pre-fork model).

    Return the worker's task id in each child. The parent supervises: it
    forwards SIGTERM/SIGINT to the workers, replaces a worker that died
    unexpectedly (at most 100 times), and returns None once all have exited.
    """
    children: dict[int, int] = {}

    def spawn(task_id: int) -> bool:
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            return True
        children[pid] = task_id
        return False

    for task_id in range(count):
        if spawn(task_id):
            return task_id
    stopping = False

    def forward(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    log.info("supervising %d worker processes: %s", count, " ".join(map(str, children)))
    restarts = 0
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        task_id = children.pop(pid, None)
        if task_id is None:
            continue
        crashed = os.WIFSIGNALED(status) or os.waitstatus_to_exitcode(status) != 0
        if crashed and not stopping and restarts < 100:
            restarts += 1
            log.warning("worker %d (pid %d) exited with status %d; starting another",
                        task_id, pid, os.waitstatus_to_exitcode(status))
            if spawn(task_id):
                return task_id
    return None


def cmd_serve(args: argparse.Namespace) -> int:
    from tornado.netutil import bind_sockets

    from .app import make_app, make_server

    if args.config is None:
        return _serve_demo(args)
    config = _load(args)
    _setup_logging(config.log_level, config.log_format)
    host = args.host or config.server.host
    port = args.port if args.port is not None else config.server.port
    sockets = bind_sockets(port, address=host)
    processes = args.processes if args.processes is not None else config.server.processes
    if processes != 1:
        if config.hub.backend == "memory":
            raise ConfigError("hub.backend", "several processes need a shared hub (redis)")
        if _fork_workers(processes or os.cpu_count() or 1) is None:
            return EXIT_OK

    async def main() -> None:
        app = make_app(config)
        server = make_server(app, config)
        server.add_sockets(sockets)
        app.settings["signin"].store_health.start()
        log.info("tornado-signin listening on http://%s:%d (pid %d)", host, port, os.getpid())
        await _serve_forever([server], [app.settings["signin"]], grace=config.limits.shutdown_grace)

    asyncio.run(main())
    return EXIT_OK


def _serve_demo(args: argparse.Namespace) -> int:
    from .app import make_app, make_server
    from .demo import DEMO_CLIENT_ID, DEMO_EMULATOR_DIR, demo_config, load_dev_secrets
    from .emulator import Emulator, EmulatorClient, EmulatorStateError

    _setup_logging("INFO")
    host = args.host or "127.0.0.1"
    port = args.port if args.port is not None else 8080
    emulator_port = args.emulator_port
    folder = Path.cwd()
    dev = load_dev_secrets(folder)
    emulator_url = f"http://{host}:{emulator_port}"
    config = demo_config(folder=folder, host=host, port=port, emulator_url=emulator_url,
                         client_library=args.client_library)
    origins = tuple(sorted({f"http://{host}:{port}", f"http://localhost:{port}", f"http://127.0.0.1:{port}"}))

    async def main() -> None:
        emulator = Emulator(clients=[EmulatorClient(DEMO_CLIENT_ID, dev["client_secret"], origins)],
                            base_url=emulator_url, development=True, state_dir=folder / DEMO_EMULATOR_DIR)
        emulator_server = emulator.make_app().listen(emulator_port, address=host)
        app = make_app(config)
        server = make_server(app, config)
        server.listen(port, address=host)
        print(f"tornado-signin demo: open http://{host}:{port}/ "
              f"(Google is played by the emulator at {emulator_url})", flush=True)
        await _serve_forever([server, emulator_server], [app.settings["signin"]])
        emulator.close()

    try:
        asyncio.run(main())
    except EmulatorStateError as exc:
        print(f"tornado-signin: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return EXIT_OK


def cmd_emulator(args: argparse.Namespace) -> int:
    from .demo import DEMO_CLIENT_ID, load_dev_secrets
    from .emulator import Emulator, EmulatorClient, EmulatorStateError

    _setup_logging("INFO")
    host = args.host or "127.0.0.1"
    if args.config:
        config = _load(args)
        origins = config.server.allowed_origins or (
            config.server.public_origin or f"http://{config.server.host}:{config.server.port}",)
        client = EmulatorClient(config.google.client_id, config.google.client_secret, tuple(origins))
        development = config.development
    else:
        dev = load_dev_secrets(Path.cwd())
        client = EmulatorClient(DEMO_CLIENT_ID, dev["client_secret"],
                                ("http://127.0.0.1:8080", "http://localhost:8080"))
        development = True

    async def main() -> None:
        emulator = Emulator(clients=[client], base_url=f"http://{host}:{args.port}", development=development,
                            state_dir=args.state_dir)
        server = emulator.make_app().listen(args.port, address=host)
        print(f"Google emulator listening on http://{host}:{args.port}/ (development={development})", flush=True)
        await _serve_forever([server], [])
        emulator.close()

    try:
        asyncio.run(main())
    except EmulatorStateError as exc:
        print(f"tornado-signin: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return EXIT_OK


# ----------------------------------------------------------------------------- plugins and checks


def cmd_backends(args: argparse.Namespace) -> int:
    from .hub import HUB_ENTRY_POINT_GROUP
    from .store import ENTRY_POINT_GROUP, installed_backends

    infos = installed_backends()
    if args.json:
        print(json.dumps([info.__dict__ for info in infos], indent=2))
        return EXIT_OK
    print(f"Token stores (entry-point group {ENTRY_POINT_GROUP}):")
    for info in infos:
        state = "ok" if info.loadable else f"unavailable: {info.problem}"
        print(f"  {info.name:<10} {info.module:<40} {info.distribution or '?':<18} {state}")
        if info.install_hint:
            print(f"  {'':<10} install with: {info.install_hint}")
    from importlib import metadata

    hubs = sorted(metadata.entry_points(group=HUB_ENTRY_POINT_GROUP), key=lambda ep: ep.name)
    print(f"Confirmation hubs (entry-point group {HUB_ENTRY_POINT_GROUP}):")
    for ep in hubs:
        print(f"  {ep.name:<10} {ep.module}")
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    from .wiring import open_store
    from .google import GoogleClient
    from .hub import MemoryHub, load_hub

    try:
        config = _load(args)
    except ConfigError as exc:
        print(f"config: FAILED: {exc}")
        return EXIT_CONFIG
    print("config: ok")
    try:
        store = open_store(config)
        store.check()
        store.close()
        print(f"store ({config.store.backend}): ok")
    except (ConfigError, SigninError) as exc:
        print(f"store ({config.store.backend}): FAILED: {exc}")
        return EXIT_STORE

    async def check_async() -> int:
        try:
            hub = MemoryHub() if config.hub.backend == "memory" else load_hub(
                config.hub.backend, config.hub.url, key_prefix=config.hub.key_prefix)
            try:
                await asyncio.wait_for(hub.check(), 10)
            finally:
                await hub.close()
            print(f"hub ({config.hub.backend}): ok")
        except Exception as exc:
            print(f"hub ({config.hub.backend}): FAILED: {type(exc).__name__}: {exc}")
            return EXIT_HUB
        client = GoogleClient(config.google)
        try:
            endpoints = config.google.endpoints
            await client.fetch_json(endpoints.verification_certs_uri)
            print(f"google certs ({endpoints.verification_certs_uri}): ok")
            # The token endpoint answers a bogus grant with an OAuth error: that proves it is there.
            try:
                await client.refresh("tornado-signin-check")
            except SigninError as exc:
                if type(exc).__name__ in ("GoogleUnavailableError", "GoogleProtocolError"):
                    raise
            print(f"google token endpoint ({endpoints.token_uri}): ok")
        except SigninError as exc:
            print(f"google: FAILED: {exc}")
            return EXIT_GOOGLE
        finally:
            client.close()
        return EXIT_OK

    return asyncio.run(check_async())


# ----------------------------------------------------------------------------- offline access


def _with_offline(config: Any, work: Any) -> Any:
    from .wiring import run_offline

    return run_offline(config, work)


def _fmt_time(value: float | None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(value)) if value else "-"


def _public_record(record: Any) -> dict[str, Any]:
    return {
        "sub": record.sub,
        "email": record.email,
        "scopes": list(record.scopes),
        "state": record.state,
        "access_token_expiry": _fmt_time(record.access_token_expiry),
        "created": _fmt_time(record.created_at),
        "updated": _fmt_time(record.updated_at),
        "revoked": _fmt_time(record.revoked_at) if record.revoked_at else None,
    }


def cmd_users(args: argparse.Namespace) -> int:
    from .wiring import open_store

    config = _load(args)
    store = open_store(config)
    try:
        records = sorted(store.inner.records(), key=lambda r: (r.email or "", r.sub))
    finally:
        store.close()
    if args.json:
        print(json.dumps([_public_record(r) for r in records], indent=2))
        return EXIT_OK
    print(f"{'SUB':<24} {'EMAIL':<32} {'STATE':<17} {'UPDATED':<21} SCOPES")
    for r in records:
        print(f"{r.sub:<24} {(r.email or '-'):<32} {r.state:<17} {_fmt_time(r.updated_at):<21} {' '.join(r.scopes)}")
    return EXIT_OK


def cmd_token(args: argparse.Namespace) -> int:
    config = _load(args)

    async def work(offline: Any) -> Any:
        await offline.credentials(args.user, required_scopes=args.scope or ())
        return await offline.find(args.user)

    record = _with_offline(config, work)
    if args.json:
        document = _public_record(record)
        document["access_token"] = record.access_token
        print(json.dumps(document, indent=2))
    else:
        print(record.access_token)
    return EXIT_OK


def cmd_call(args: argparse.Namespace) -> int:
    config = _load(args)
    info = _with_offline(config, lambda offline: offline.call_userinfo(args.user))
    print(json.dumps(info, indent=2, sort_keys=True))
    return EXIT_OK


def cmd_revoke(args: argparse.Namespace) -> int:
    config = _load(args)
    revoked = _with_offline(config, lambda offline: offline.revoke_and_forget(args.user))
    print("revoked at Google and forgotten" if revoked else "Google already considered it revoked; forgotten")
    return EXIT_OK


def cmd_rotate_keys(args: argparse.Namespace) -> int:
    from .wiring import open_store

    config = _load(args)
    store = open_store(config)
    try:
        count = store.reencrypt_all()
    finally:
        store.close()
    print(f"re-encrypted {count} record(s) under the newest key")
    return EXIT_OK


def cmd_migrate(args: argparse.Namespace) -> int:
    from .config import load_config
    from .wiring import open_store
    from .migrate import migrate

    source = open_store(load_config(args.source))
    target = open_store(load_config(args.target))
    try:
        report = migrate(source, target, progress=lambda n: print(f"  copied {n}", file=sys.stderr))
    finally:
        source.close()
        target.close()
    print(json.dumps(report.__dict__ if hasattr(report, "__dict__") else dict(report), indent=2, default=str))
    return EXIT_OK if getattr(report, "ok", True) else EXIT_STORE


def cmd_genkey(args: argparse.Namespace) -> int:
    from .crypto import generate_key

    print(generate_key())
    return EXIT_OK


# ----------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tornado-signin",
        description="Google Sign-In server-side (one-time code) flow for Tornado.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("serve", help="run the server (without --config: demo mode with the emulator)")
    p.add_argument("--config", help="YAML config file; omit for demo mode")
    p.add_argument("--host", help="address to bind (default: server.host, or 127.0.0.1)")
    p.add_argument("--port", type=int, help="port of the app (default: server.port, or 8080)")
    p.add_argument("--emulator-port", type=int, default=8081, help="demo mode: port of the Google emulator")
    p.add_argument("--client-library", choices=("gis", "gapi"), default="gis",
                   help="demo mode: page client library (default gis)")
    p.add_argument("--processes", type=int, help="fork N processes (0: one per CPU); needs a shared hub")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("emulator", help="run the Google emulator alone")
    p.add_argument("--config", help="register this config's client with the emulator")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8081)
    p.add_argument("--state-dir", metavar="DIR",
                   help="keep grants, tokens and keys in DIR across restarts (default: in memory)")
    p.set_defaults(func=cmd_emulator)

    p = sub.add_parser("backends", help="list installed token-store plugins")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_backends)

    p = sub.add_parser("check", help="check config, store, hub and Google endpoints (exit status says which failed)")
    p.add_argument("--config", required=True)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("users", help="list stored users")
    p.add_argument("--config", required=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_users)

    p = sub.add_parser("token", help="print a valid access token for USER (sub or email)")
    p.add_argument("--config", required=True)
    p.add_argument("--json", action="store_true", help="the whole record, minus the refresh token")
    p.add_argument("--scope", action="append", help="require this scope (repeatable)")
    p.add_argument("user")
    p.set_defaults(func=cmd_token)

    p = sub.add_parser("call", help="call Google's userinfo API for USER with stored credentials")
    p.add_argument("--config", required=True)
    p.add_argument("user")
    p.set_defaults(func=cmd_call)

    p = sub.add_parser("revoke", help="revoke USER's grant at Google, then forget USER")
    p.add_argument("--config", required=True)
    p.add_argument("user")
    p.set_defaults(func=cmd_revoke)

    p = sub.add_parser("rotate-keys", help="re-encrypt every stored token under the newest key")
    p.add_argument("--config", required=True)
    p.set_defaults(func=cmd_rotate_keys)

    p = sub.add_parser("migrate", help="copy every record from one configured store to another")
    p.add_argument("--from", dest="source", required=True, metavar="CONFIG")
    p.add_argument("--to", dest="target", required=True, metavar="CONFIG")
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("genkey", help="print a new encryption key (Fernet) for store.encryption.keys")
    p.set_defaults(func=cmd_genkey)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"tornado-signin: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except SigninError as exc:
        print(f"tornado-signin: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_ERROR

    except KeyboardInterrupt:
        return EXIT_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
