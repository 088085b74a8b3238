"""The ``tornado-signin`` command.

``serve`` (no ``--config``: demo mode), ``emulator``, ``backends``, ``check``,
the offline-access commands ``users``, ``token``, ``call``, ``revoke``,
``sessions`` (list and end a user's signed-in sessions),
``rotate-keys``, ``migrate``, plus ``genkey``. Errors print one line naming
the config key or the problem and exit non-zero; nothing prints a token
except ``token`` (by design, alone on stdout). ``TORNADO_SIGNIN_CONFIG``
stands for ``--config FILE`` wherever the option is absent.

Every failure is ONE line on stderr, ``tornado-signin: <what went wrong>``
(never a traceback or an exception class name), and the exit status says
what failed; README's CLI section lists the codes (the ``EXIT_*`` constants
below). Output into a closed pipe (``tornado-signin users | head -1``) ends
quietly with status 141, as git does (128 + SIGPIPE).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from .errors import (
    ConfigError,
    ConsentRequiredError,
    CryptoError,
    GoogleError,
    HubUnavailableError,
    ListenError,
    MissingScopeError,
    SigninBlockedError,
    SigninError,
    StorageError,
    UnknownUserError,
    WorkerError,
)

__all__ = ["main", "build_parser"]

log = logging.getLogger("tornado_signin")

#: Stands for ``--config FILE`` in every command that takes one, when the option is absent.
CONFIG_ENV = "TORNADO_SIGNIN_CONFIG"

# Exit statuses of every command (README, "CLI"): one per failing part.
EXIT_OK = 0
EXIT_ERROR = 1          # anything else
EXIT_USAGE = 2          # bad arguments (argparse)
EXIT_CONFIG = 3         # the config (a key, a file)
EXIT_STORE = 4          # the token store: unreachable, failing, or records the configured keys cannot open
EXIT_HUB = 5            # the confirmation hub
EXIT_GOOGLE = 6         # Google's endpoints (or the emulator standing in)
EXIT_LISTEN = 7         # a port cannot be listened on (in use, not permitted)
EXIT_UNKNOWN_USER = 8   # no stored user with that sub or email
EXIT_CONSENT = 9        # the user must sign in with consent again (revoked, no refresh token, missing scope)
EXIT_WORKERS = 10       # serve --processes: a worker killed before it served, or workers dying too often
EXIT_INTERRUPTED = 130  # SIGINT (Ctrl-C) during a one-shot command
EXIT_PIPE = 141         # stdout was closed by its reader (128 + SIGPIPE)

#: The exit status of each error family, most specific first.
_EXIT_CODES: tuple[tuple[type[BaseException], int], ...] = (
    (ConfigError, EXIT_CONFIG),
    (ListenError, EXIT_LISTEN),
    (UnknownUserError, EXIT_UNKNOWN_USER),
    (ConsentRequiredError, EXIT_CONSENT),
    (MissingScopeError, EXIT_CONSENT),
    (StorageError, EXIT_STORE),
    (CryptoError, EXIT_STORE),
    (HubUnavailableError, EXIT_HUB),
    (GoogleError, EXIT_GOOGLE),
    (WorkerError, EXIT_WORKERS),
)


def _port(value: str) -> int:
    """argparse type of every port option: an integer from 1 to 65535 (0 would bind a random port)."""
    try:
        port = int(value, 10)
    except ValueError:
        port = -1
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port number (1-65535)")
    return port


def _processes(value: str) -> int:
    """argparse type of ``--processes``: 0 (one per CPU) or more."""
    try:
        count = int(value, 10)
    except ValueError:
        count = -1
    if count < 0:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of processes (0: one per CPU)")
    return count


def _setup_logging(level: str = "INFO", fmt: str = "text") -> None:
    from .logctx import configure_logging
    from .redact import install_redaction

    install_redaction()
    configure_logging(level, fmt)


def _load(args: argparse.Namespace) -> Any:
    from .config import load_config

    return load_config(args.config)


# ----------------------------------------------------------------------------- serve


def cmd_serve(args: argparse.Namespace) -> int:
    from .server import serve

    if args.config is None:
        return _serve_demo(args)
    for option, value in (("--emulator-port", args.emulator_port), ("--client-library", args.client_library)):
        if value is not None:
            # Refused rather than ignored: with a config, google: says where Google is and which library the page uses.
            return _fail(f"{option} is for the demo (serve without --config); with --config set google.endpoints "
                         "and google.client_library in the config", EXIT_USAGE)
    config = _load(args)
    _setup_logging(config.log_level, config.log_format)
    option = "--port" if args.port is not None else "--port (or server.port)"
    try:
        return serve(config, host=args.host or config.server.host,
                     port=args.port if args.port is not None else config.server.port,
                     processes=args.processes if args.processes is not None else config.server.processes)
    except ListenError as exc:
        return _fail(f"{exc}; choose another with {option}", EXIT_LISTEN)


def _serve_demo(args: argparse.Namespace) -> int:
    from .demo import cli_command
    from .emulator import EmulatorStateError
    from .server import serve_demo

    if args.processes not in (None, 1):
        # Several processes need a shared hub; the demo's is in memory. Refused, not silently run as one.
        return _fail("--processes: the demo runs in one process (several need a shared hub: "
                     "serve --config FILE with hub.backend: redis, see Deployment in the README)", EXIT_USAGE)
    _setup_logging("INFO")

    def announce(app_url: str, emulator_url: str, config_path: Path) -> None:
        print(f"tornado-signin demo: open {app_url} (Google is played by the emulator at {emulator_url})", flush=True)
        print(f"tornado-signin demo: the CLI reaches this demo with: "
              f"{cli_command()} users --config {shlex.quote(str(config_path))}", flush=True)

    try:
        serve_demo(host=args.host or "127.0.0.1", port=args.port if args.port is not None else 8080,
                   emulator_port=args.emulator_port if args.emulator_port is not None else 8081,
                   client_library=args.client_library or "gis", folder=Path.cwd(),
                   on_listening=announce)
    except EmulatorStateError as exc:
        return _fail(str(exc), EXIT_CONFIG)
    except ListenError as exc:
        option = "--emulator-port" if exc.listener == "emulator" else "--port"
        return _fail(f"{exc}; choose another with {option}", EXIT_LISTEN)
    return EXIT_OK


def cmd_emulator(args: argparse.Namespace) -> int:
    from .demo import DEMO_CLIENT_ID, load_dev_secrets
    from .emulator import EmulatorClient, EmulatorStateError
    from .server import serve_emulator

    _setup_logging("INFO")
    host = args.host or "127.0.0.1"
    if args.config:
        config = _load(args)
        if not config.development:
            # The emulator stands in for Google only in development: a production
            # config's client and secret are real Google's, never the emulator's.
            return _fail(f"refusing to run the emulator for {args.config}: it has development: false "
                         "(the emulator stands in for Google only with development: true)", EXIT_CONFIG)
        origins = config.server.allowed_origins or (
            config.server.public_origin or f"http://{config.server.host}:{config.server.port}",)
        client = EmulatorClient(config.google.client_id, config.google.client_secret, tuple(origins))
        development = config.development
    else:
        dev = load_dev_secrets(Path.cwd())
        client = EmulatorClient(DEMO_CLIENT_ID, dev["client_secret"],
                                ("http://127.0.0.1:8080", "http://localhost:8080"), secret_generated=True)
        development = True

    def announce(url: str) -> None:
        print(f"Google emulator listening on {url} (development={development})", flush=True)

    try:
        serve_emulator(client, host=host, port=args.port, development=development, state_dir=args.state_dir,
                       on_listening=announce)
    except EmulatorStateError as exc:
        return _fail(str(exc), EXIT_CONFIG)
    except ListenError as exc:
        return _fail(f"{exc}; choose another with --port", EXIT_LISTEN)
    return EXIT_OK


# ----------------------------------------------------------------------------- plugins and checks


def cmd_backends(args: argparse.Namespace) -> int:
    from .plugins import GROUPS, HUBS, STORES, installed_backends

    infos = installed_backends()
    if args.json:
        print(json.dumps([info.__dict__ for info in infos], indent=2))
        return EXIT_OK
    titles = {STORES.name: "Token stores", HUBS.name: "Confirmation hubs"}
    for group in GROUPS:
        print(f"{titles[group.name]} (entry-point group {group.name}):")
        for info in (i for i in infos if i.group == group.name):
            state = "ok" if info.loadable else f"unavailable: {info.problem}"
            print(f"  {info.name:<10} {info.module:<40} {info.distribution or '?':<18} {_printable(state)}")
            if info.install_hint:
                print(f"  {'':<10} install with: {info.install_hint}")
    return EXIT_OK


#: The code `check` exchanges to test the client: never valid, so Google answers
#: invalid_grant to a client it knows (id and secret right) and invalid_client otherwise.
CHECK_CODE = "4/tornado-signin-check-this-code-is-invalid"


def _has_no_table(store: Any) -> bool:
    """Return True when ``store``'s backend says it has not been created yet (its table, or the file store's
    folder); False when it exists or it cannot tell.

    Not part of the TokenStore interface: the SQL, DynamoDB and file stores
    have ``has_schema()`` (which creates nothing, not even a SQLite file).
    """
    has_schema = getattr(store.inner, "has_schema", None)
    if not callable(has_schema):
        return False
    try:
        return not has_schema()
    except SigninError:  # unreachable: the caller reports its own error
        return False


def cmd_check(args: argparse.Namespace) -> int:
    """Check config, store, hub and Google in that order; return the exit status of the first failure.

    Nothing is changed anywhere: no table (nor SQLite file) is created unless ``--create-table``.
    """
    from .redact import reason, redact_url
    from .wiring import open_store

    try:
        config = _load(args)
        # Building the store object is part of the config: an unknown backend,
        # a bad option, a missing extra or a bad key fails here, not as the store.
        store = open_store(config, create=False)
    except ConfigError as exc:
        print(f"config: FAILED: {exc}{_config_origin(args)}")
        return EXIT_CONFIG
    print("config: ok")
    name = f"store ({config.store.backend})"
    # Not part of the TokenStore interface: the backends that create something (sql, dynamodb, file) have it.
    create_schema: Any = getattr(store.inner, "create_schema", None)
    creatable = callable(create_schema)
    try:
        if args.create_table:
            if creatable:
                create_schema()
                print(f"{name}: ready (created if it was missing)")
            else:
                print(f"{name}: nothing to create")
        store.check()
        print(f"{name}: ok")
    except SigninError as exc:
        hint = ""
        if creatable and not args.create_table:
            hint = (" (the store has not been created yet, and check creates nothing: run check with "
                    "--create-table to create it)" if _has_no_table(store) else
                    " (check creates nothing: if the store's table or folder is missing, run check with "
                    "--create-table)")
        print(f"{name}: FAILED: {_CLASS_BEFORE_REASON.sub('', reason(exc))}{hint}")
        return EXIT_STORE
    finally:
        store.close()
    return asyncio.run(_check_hub_and_google(config, reason, redact_url))


def _check_origins(config: Any) -> None:
    """Print a warning for each configured page origin that client_secret.json does not list.

    Only a warning: origins added in the Google API Console after the file
    was downloaded count at Google without a new download.
    """
    listed = config.google.javascript_origins
    origins = list(config.server.allowed_origins) or (
        [config.server.public_origin] if config.server.public_origin else [])
    if not listed or not origins:
        return
    for origin in origins:
        if origin not in listed:
            print(f"google client origins: WARNING: {origin} is not among the Authorized JavaScript origins in "
                  "client_secret.json (Google refuses sign-in from a page there: origin_mismatch) unless it was "
                  "added in the Google API Console after the download")


async def _check_hub_and_google(config: Any, reason: Any, redact_url: Any) -> int:
    from .errors import ClientConfigError, GoogleError, GoogleOAuthError, InvalidGrantError
    from .wiring import open_google, open_hub

    where = f" at {redact_url(config.hub.url)}" if config.hub.url else ""
    name = f"hub ({config.hub.backend}{where})"
    try:
        hub = open_hub(config)
    except ConfigError as exc:
        print(f"{name}: FAILED: {exc}")
        return EXIT_HUB
    try:
        await asyncio.wait_for(hub.check(), 10)
        print(f"{name}: ok")
    except asyncio.TimeoutError:
        print(f"{name}: FAILED: no answer within 10s")
        return EXIT_HUB
    except Exception as exc:  # a plugin may raise anything; the operator needs its reason
        print(f"{name}: FAILED: {reason(exc)}")
        return EXIT_HUB
    finally:
        await hub.close()

    google = config.google
    client = open_google(config)
    try:
        certs = google.endpoints.verification_certs_uri
        try:
            await client.fetch_json(certs)
        except GoogleError as exc:
            print(f"google certs ({certs}): FAILED: {exc}")
            return EXIT_GOOGLE
        print(f"google certs ({certs}): ok")
        token = f"google token endpoint ({google.endpoints.token_uri})"
        try:
            await client.exchange_code(CHECK_CODE)
        except InvalidGrantError:
            print(f"{token}: ok, client id {google.client_id} and its secret accepted")
            _check_origins(config)
            return EXIT_OK
        except ClientConfigError as exc:
            if exc.error in ("invalid_client", "unauthorized_client"):
                print(f"{token}: FAILED: client id {google.client_id} refused ({exc.error}): the client secret "
                      "or the client id is wrong (download the client's JSON again and point "
                      "google.client_secrets_file at it)")
            else:
                print(f"{token}: FAILED: the client is refused ({exc.error})")
            return EXIT_GOOGLE
        except GoogleOAuthError as exc:
            print(f"{token}: FAILED: unexpected OAuth error {exc.error!r} for an invalid code")
            return EXIT_GOOGLE
        except GoogleError as exc:
            print(f"{token}: FAILED: {exc}")
            return EXIT_GOOGLE
        print(f"{token}: FAILED: it accepted a code that cannot be valid; this is not Google")
        return EXIT_GOOGLE
    finally:
        client.close()


# ----------------------------------------------------------------------------- offline access


def _with_offline(config: Any, work: Any) -> Any:
    """Return ``run_offline(config, work)`` on a store that creates nothing (these commands act on stored users).

    A store not created yet (no table, no folder) holds no user: raise UnknownUserError saying so.
    """
    from .plugins import STORES, creation_option
    from .wiring import open_store, run_offline

    try:
        return run_offline(config, work, create_store=False)
    except (StorageError, UnknownUserError):
        # A store without its table fails; an uncreated file store reads as empty.
        store = open_store(config, create=False)
        try:
            missing = _has_no_table(store)
        finally:
            store.close()
        if missing:
            option = creation_option(STORES, config.store.backend) or "create_table"
            raise UnknownUserError("no user is stored: the store has not been created yet (tornado-signin "
                                   f"check --create-table creates it; so does the server, with {option} on)") from None
        raise


def _fmt_time(value: float | None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(value)) if value else "-"


def _printable(text: str) -> str:
    """Return ``text`` with every non-printable character (controls, ESC, bidi overrides …) escaped as ``\\xNN``.

    Stored values (an email, a sub, a token written by hand or by an older
    version) reach the operator's terminal: none may act on it. JSON output
    needs no help, ``json.dumps`` escapes them already.
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _fmt_time_or_none(value: float | None) -> str | None:
    """Return ``value`` as :func:`_fmt_time` does, or None for a time that is not set (JSON's null, not "-")."""
    return _fmt_time(value) if value else None


def _public_record(record: Any) -> dict[str, Any]:
    return {
        "sub": record.sub,
        "email": record.email,
        "scopes": list(record.scopes),
        "state": record.state,
        "access_token_expiry": _fmt_time(record.access_token_expiry),
        "created": _fmt_time(record.created_at),
        "updated": _fmt_time(record.updated_at),
        "revoked": _fmt_time_or_none(record.revoked_at),
        # Time-limited access: when the refresh token stops working (None: no limit).
        "refresh_token_expires_at": _fmt_time_or_none(record.refresh_token_expires_at),
        # What security events (Cross-Account Protection) did to the record.
        "signin_blocked": record.signin_blocked,
        "disabled_at": _fmt_time_or_none(record.disabled_at),
        "enabled_at": _fmt_time_or_none(record.enabled_at),
        "security_event": record.security_event,
        "security_event_at": _fmt_time_or_none(record.security_event_at),
    }


def cmd_users(args: argparse.Namespace) -> int:
    from .wiring import open_store

    config = _load(args)
    store = open_store(config, create=False)
    try:
        try:
            records = sorted(store.inner.records(), key=lambda r: (r.email or "", r.sub))
        except StorageError:
            if not _has_no_table(store):
                raise
            records = []  # not created yet: no user
    finally:
        store.close()
    if args.json:
        print(json.dumps([_public_record(r) for r in records], indent=2))
        return EXIT_OK
    if not records:
        # On stderr: stdout stays what a script parses (no rows, so nothing).
        print("tornado-signin: no users stored", file=sys.stderr)
        return EXIT_OK
    print(f"{'SUB':<24} {'EMAIL':<32} {'STATE':<17} {'UPDATED':<21} {'ACCESS_UNTIL':<21} SCOPES")
    for r in records:
        sub, email, scopes = _printable(r.sub), _printable(r.email or "-"), _printable(" ".join(r.scopes))
        print(f"{sub:<24} {email:<32} {r.state:<17} {_fmt_time(r.updated_at):<21} "
              f"{_fmt_time(r.refresh_token_expires_at):<21} {scopes}")
    return EXIT_OK


def cmd_token(args: argparse.Namespace) -> int:
    from .google import checked_scopes

    try:
        checked_scopes(args.scope or ())
    except ValueError as exc:
        return _fail(f"--scope: {exc}", EXIT_USAGE)
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
        print(_printable(record.access_token or ""))
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


def _resolve_sub(config: Any, user: str) -> str:
    """Return the sub of ``user`` (a sub or an email of a stored user); a sub not in the store is kept as given."""
    from .errors import UnknownUserError

    try:
        return str(_with_offline(config, lambda offline: offline.find(user)).sub)
    except UnknownUserError:
        if "@" in user:
            raise
        return user


def cmd_sessions(args: argparse.Namespace) -> int:
    from .errors import HubUnavailableError
    from .wiring import open_shared_hub, session_registry

    if args.all and args.end is None:
        return _fail("--all goes with --end (sessions --config C USER --end --all)", EXIT_USAGE)
    if args.end == "" and not args.all:
        return _fail("--end needs a SESSION_ID or --all", EXIT_USAGE)
    config = _load(args)
    sub = _resolve_sub(config, args.user)

    async def work() -> int:
        hub = open_shared_hub(config, "sessions")
        registry = session_registry(config, hub)
        try:
            if args.end is None:
                records = await registry.list(sub)
                if args.json:
                    print(json.dumps([{"session_id": r.sid, "sub": r.sub, "started": _fmt_time(r.started_at),
                                       "address": r.address, "user_agent": r.user_agent} for r in records], indent=2))
                    return EXIT_OK
                if not records:
                    # As `users` on an empty store: stdout stays what a script parses (no rows, so nothing).
                    print(f"tornado-signin: no live sessions of {_printable(sub)}", file=sys.stderr)
                    return EXIT_OK
                print(f"{'SESSION_ID':<24} {'STARTED':<21} {'ADDRESS':<16} USER_AGENT")
                for r in records:
                    print(f"{r.sid:<24} {_fmt_time(r.started_at):<21} {(r.address or '-'):<16} {r.user_agent or '-'}")
                return EXIT_OK
            if args.all:
                ended = await registry.end_all(sub, reason="cli")
                print(f"ended {len(ended)} session(s) of {_printable(sub)}")
                return EXIT_OK
            live = {r.sid for r in await registry.list(sub)}
            if args.end not in live:
                return _fail(f"no live session {args.end} of {sub}", EXIT_ERROR)
            await registry.end(args.end, reason="cli")
            print(f"ended session {_printable(args.end)} of {_printable(sub)}")
            return EXIT_OK
        except HubUnavailableError as exc:
            return _fail(f"hub ({config.hub.backend}) unavailable: {exc}", EXIT_HUB)
        finally:
            await hub.close()

    return asyncio.run(work())


def cmd_risc(args: argparse.Namespace) -> int:
    import secrets as _secrets

    from .risc_admin import RiscAdmin, RiscAdminError, wait_for_verification

    config = _load(args)
    try:
        admin = RiscAdmin(config)
        if args.risc_command == "register":
            body = admin.register(args.url)
            print(f"registered {args.url} for {len(body['events_requested'])} event types")
            return EXIT_OK
        if args.risc_command == "status":
            status = admin.status()
            if args.json:
                print(json.dumps(status, indent=2))
                return EXIT_OK
            stream = status["stream"] if isinstance(status["stream"], dict) else {}
            print(f"status: {status['status']}")
            print(f"receiver: {_printable(str(stream.get('delivery', {}).get('url', '-')))}")
            for event in stream.get("events_requested", []):
                print(f"event: {_printable(str(event))}")
            return EXIT_OK
        state = f"tornado-signin verify {_secrets.token_hex(8)}"
        admin.request_verification(state)
        print(f"verification requested (state {state!r}); waiting up to {args.timeout:g}s for the receiver",
              flush=True)
        if wait_for_verification(config, state, args.timeout):
            print("verification event received by the receiver")
            return EXIT_OK
        return _fail(f"no verification event reached the receiver within {args.timeout:g}s", EXIT_ERROR)
    except RiscAdminError as exc:
        return _fail(str(exc), EXIT_GOOGLE)


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
    from dataclasses import asdict

    from .config import load_config
    from .migrate import migrate, same_store
    from .wiring import open_store

    source_config, target_config = load_config(args.source), load_config(args.target)
    if same_store(source_config.store.backend, source_config.store.options,
                  target_config.store.backend, target_config.store.options):
        # Copying a store onto itself rewrites every record under --to's keys, which --from may not hold.
        return _fail(f"--from {args.source} and --to {args.target} name the same {source_config.store.backend} store: "
                     "migrate copies between two stores (to re-encrypt one in place, use rotate-keys)", EXIT_CONFIG)
    source = open_store(source_config, create=False)  # read only: its table (or folder) must exist
    try:
        if _has_no_table(source):  # a file store not created yet reads as empty: say so rather than copy nothing
            return _fail(f"--from {args.source}: the store has not been created yet: nothing to migrate", EXIT_STORE)
        target = open_store(target_config)
        try:
            report = migrate(source, target, progress=_migrate_progress)
        finally:
            target.close()
    finally:
        source.close()
    print(json.dumps({**asdict(report), "ok": report.ok}, indent=2))
    return EXIT_OK if report.ok else EXIT_STORE


def _migrate_progress(stage: str, count: int) -> None:
    """Report a batch of ``migrate`` on stderr ("copy" or "verify", records so far)."""
    done = {"copy": "copied", "verify": "verified"}.get(stage, stage)
    print(f"tornado-signin: migrate: {done} {count} record(s)", file=sys.stderr, flush=True)


def cmd_genkey(args: argparse.Namespace) -> int:
    from .crypto import generate_key

    print(generate_key())
    return EXIT_OK


# ----------------------------------------------------------------------------- parser


def _config_option(parser: argparse.ArgumentParser, *, required: bool = True, help: str = "YAML config file") -> None:
    """Add ``--config FILE`` to ``parser``; :func:`main` takes it from ``TORNADO_SIGNIN_CONFIG`` when absent."""
    parser.add_argument("--config", metavar="FILE", help=f"{help} (default: ${CONFIG_ENV} if set)")
    parser.set_defaults(config_required=required)


def _config_from_environment(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Fill a missing ``--config`` from ``TORNADO_SIGNIN_CONFIG``; exit 2 when a command needs one and has none."""
    args.config_from_env = False
    if not hasattr(args, "config_required") or args.config:
        return
    from_env = os.environ.get(CONFIG_ENV, "").strip()
    if from_env:
        args.config, args.config_from_env = from_env, True
    elif args.config_required:
        parser.error(f"{args.command}: --config FILE is required (or set {CONFIG_ENV})")


def _config_origin(args: argparse.Namespace) -> str:
    """Return " (--config from TORNADO_SIGNIN_CONFIG=…)" when the config came from there, else ""."""
    return f" (--config from {CONFIG_ENV}={args.config})" if getattr(args, "config_from_env", False) else ""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tornado-signin",
        description="Google Sign-In server-side (one-time code) flow for Tornado.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("serve", help="run the server (without --config: demo mode with the emulator)")
    _config_option(p, required=False, help="YAML config file; omit for demo mode")
    p.add_argument("--host", help="address to bind (default: server.host, or 127.0.0.1)")
    p.add_argument("--port", type=_port, help="port of the app, 1-65535 (default: server.port, or 8080)")
    p.add_argument("--emulator-port", type=_port, help="demo mode: port of the Google emulator (default 8081)")
    p.add_argument("--client-library", choices=("gis", "gapi"),
                   help="demo mode: page client library (default gis; gapi is legacy only)")
    p.add_argument("--processes", type=_processes,
                   help="fork N processes (0: one per CPU); needs a shared hub")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("emulator", help="run the Google emulator alone")
    _config_option(p, required=False, help="register this config's client with the emulator")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=_port, default=8081, help="port of the emulator, 1-65535 (default 8081)")
    p.add_argument("--state-dir", metavar="DIR",
                   help="keep grants, tokens and keys in DIR across restarts (default: in memory)")
    p.set_defaults(func=cmd_emulator)

    p = sub.add_parser("backends", help="list installed token-store and hub plugins")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_backends)

    p = sub.add_parser("check", help="check config, store, hub and Google endpoints (exit status says which failed)")
    _config_option(p)
    p.add_argument("--create-table", action="store_true",
                   help="create the store (its table and SQLite file, or its folder) if missing "
                        "(check changes nothing without it)")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("users", help="list stored users")
    _config_option(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_users)

    p = sub.add_parser("token", help="print a valid access token for USER (sub or email)")
    _config_option(p)
    p.add_argument("--json", action="store_true", help="the whole record, minus the refresh token")
    p.add_argument("--scope", action="append", help="require this scope (repeatable)")
    p.add_argument("user")
    p.set_defaults(func=cmd_token)

    p = sub.add_parser("call", help="call Google's userinfo API for USER with stored credentials")
    _config_option(p)
    p.add_argument("user")
    p.set_defaults(func=cmd_call)

    p = sub.add_parser("revoke", help="revoke USER's grant at Google, then forget USER")
    _config_option(p)
    p.add_argument("user")
    p.set_defaults(func=cmd_revoke)

    p = sub.add_parser(
        "sessions", help="list USER's signed-in sessions, or end them (--end SESSION_ID | --end --all)",
        description="List the signed-in sessions of USER (sub or email), or end them: `--end SESSION_ID` ends one, "
                    "`--end --all` ends every session of USER. An ended session stops working in every server "
                    "process (copied cookies included) and its open pages are told `signed_out`. "
                    "Needs a shared hub (hub.backend: redis).")
    _config_option(p)
    p.add_argument("--json", action="store_true", help="list as JSON")
    p.add_argument("--end", nargs="?", const="", metavar="SESSION_ID", help="end this session (or --all)")
    p.add_argument("--all", action="store_true", help="with --end: end every session of USER")
    p.add_argument("user", metavar="USER")
    p.set_defaults(func=cmd_sessions)

    p = sub.add_parser(
        "risc", help="Cross-Account Protection: register the receiver with Google, its status, verify it",
        description="Talk to Google's RISC management API with the service-account key of "
                    "risc.service_account_file: `risc register --url https://HOST/PREFIX/risc` points the "
                    "project's security-event stream at this server's receiver (every event type it handles), "
                    "`risc status` shows the stream, `risc verify` asks Google for a verification event and waits "
                    "until the receiver got it (exit 0; 1 on timeout; needs a shared hub). Exit 6: Google refused "
                    "or could not be reached.")
    risc_sub = p.add_subparsers(dest="risc_command", required=True, metavar="{register,status,verify}")
    q = risc_sub.add_parser("register", help="point the event stream at --url")
    _config_option(q)
    q.add_argument("--url", required=True, help="the receiver, https://HOST[/PREFIX]/risc")
    q.set_defaults(func=cmd_risc)
    q = risc_sub.add_parser("status", help="the event stream's status and configuration")
    _config_option(q)
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_risc)
    q = risc_sub.add_parser("verify", help="ask for a verification event and wait for the receiver to get it")
    _config_option(q)
    q.add_argument("--timeout", type=float, default=30.0, help="seconds to wait (default 30)")
    q.set_defaults(func=cmd_risc)

    p = sub.add_parser("rotate-keys", help="re-encrypt every stored token under the newest key")
    _config_option(p)
    p.set_defaults(func=cmd_rotate_keys)

    p = sub.add_parser("migrate", help="copy every record from one configured store to another")
    p.add_argument("--from", dest="source", required=True, metavar="CONFIG")
    p.add_argument("--to", dest="target", required=True, metavar="CONFIG")
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("genkey", help="print a new encryption key (Fernet) for store.encryption.keys")
    p.set_defaults(func=cmd_genkey)
    return parser


#: The errors about the USER a command was given: their line names that USER.
_USER_ERRORS = (UnknownUserError, ConsentRequiredError, SigninBlockedError)


def _about_user(args: argparse.Namespace, exc: BaseException) -> str:
    """Return ``user 'USER': `` (escaped for the terminal) when ``exc`` is about the command's USER, else ""."""
    user = getattr(args, "user", None)
    if not isinstance(user, str) or not isinstance(exc, _USER_ERRORS):
        return ""
    return f"user '{_printable(user)}': "


def _fail(message: str, code: int) -> int:
    """Print ``message`` as the command's one error line on stderr; return ``code``."""
    print(f"tornado-signin: {_printable(' '.join(message.split()))}", file=sys.stderr)
    return code


# A class name the message ends with, e.g. "cannot list records (OperationalError)" or
# "failed: CurlError": replaced by what the cause says.
_CLASS_NAME = re.compile(r"(?:: | \()([A-Z][A-Za-z0-9]*(?:Error|Exception))(?:: ([^)]*))?\)?$")
# One in the middle, before the cause's own words: "cannot reach the table (OperationalError): no such table".
_CLASS_BEFORE_REASON = re.compile(r" \([A-Z][A-Za-z0-9]*(?:Error|Exception)\)(?=: )")


def _cause_reason(exc: BaseException) -> str | None:
    """Return the first line of what the root cause (OS, database driver, AWS, HTTP client) says, or None."""
    cause: BaseException = exc
    while cause.__cause__ is not None:
        cause = cause.__cause__
    if cause is exc:
        return None
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror
    response = getattr(cause, "response", None)  # botocore's ClientError
    if isinstance(response, dict) and response.get("Error", {}).get("Message"):
        return str(response["Error"]["Message"])
    text = str(getattr(cause, "orig", None) or cause)  # SQLAlchemy wraps the driver's error in .orig
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0][:300] if lines else None


def _error_message(exc: BaseException) -> str:
    """Return the user-facing text of ``exc``: its message, with the cause's reason instead of a class name."""
    message = _CLASS_BEFORE_REASON.sub("", str(exc)) or "failed"
    match = _CLASS_NAME.search(message)
    if match:
        reason = _cause_reason(exc) or match.group(2)
        message = message[:match.start()] + (f": {reason}" if reason else "")
    return message


#: Commands that run a server and log as one (the others print their outcome, and only errors are logged).
_SERVERS = frozenset({"serve", "emulator"})


def _quiet_logging() -> None:
    """Log only errors, as ``tornado-signin: …`` lines: a one-shot command's outcome is its output and exit status.

    Without this, Python's last-resort handler would print every warning
    (a refresh rejected, a record that differs) beside the error line.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("tornado-signin: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _config_from_environment(parser, args)
    if args.command not in _SERVERS:
        _quiet_logging()
    try:
        code = args.func(args)
        sys.stdout.flush()
        return int(code)
    except BrokenPipeError:
        # The reader went away (`| head`): say nothing, and keep the interpreter's
        # final flush from complaining about the same pipe.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_PIPE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except ConfigError as exc:
        return _fail(f"{_error_message(exc)}{_config_origin(args)}", EXIT_CONFIG)
    except SigninError as exc:
        code = next((c for kind, c in _EXIT_CODES if isinstance(exc, kind)), EXIT_ERROR)
        return _fail(_about_user(args, exc) + _error_message(exc), code)
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        return _fail(f"{exc.strerror or _error_message(exc)}{where}", EXIT_ERROR)
    except Exception as exc:
        if os.environ.get("TORNADO_SIGNIN_TRACEBACK"):
            raise
        return _fail(f"unexpected error: {_error_message(exc)} (set TORNADO_SIGNIN_TRACEBACK=1 for the traceback)",
                     EXIT_ERROR)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
