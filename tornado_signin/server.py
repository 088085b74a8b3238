"""The server's lifecycle: listen, the pre-fork supervisor, graceful drain.

The CLI (:mod:`tornado_signin.cli`) parses arguments and prints; everything
that runs a server lives here:

- :func:`serve` — the configured app on one process or several (pre-fork).
- :func:`serve_demo` — the demo: the app and the Google emulator in one process.
- :func:`serve_emulator` — the emulator alone.
- :func:`serve_forever` — run until SIGTERM/SIGINT, then drain.
- :func:`fork_workers` — Tornado's pre-fork model with a supervising parent.
- :func:`warn_unreachable` — one WARNING per service that does not answer at start-up.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import ConfigError, ListenError

__all__ = ["serve", "serve_demo", "serve_emulator", "serve_forever", "fork_workers", "warn_unreachable"]

log = logging.getLogger("tornado_signin")


def bind(listener: str, port: int, host: str) -> list[Any]:
    """Return the listening sockets of ``listener`` (``app`` or ``emulator``) on ``host:port``.

    Raise ListenError naming the listener and the port when the port is in use
    or not permitted, or the address cannot be used.
    """
    import errno
    import socket

    from tornado.netutil import bind_sockets

    try:
        return bind_sockets(port, address=host)
    except socket.gaierror as exc:
        raise ListenError(listener, host, port, f"cannot be used: unknown address ({exc.strerror})") from exc
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            reason = "is already in use"
        elif exc.errno == errno.EACCES:
            reason = "is not permitted to this user"
        else:
            reason = f"cannot be listened on: {exc.strerror or exc}"
        raise ListenError(listener, host, port, reason) from exc


async def serve_forever(servers: list[Any], contexts: list[Any], grace: float = 10.0) -> None:
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
    from .web.confirm import CLOSE_SHUTDOWN

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


def fork_workers(count: int) -> int | None:
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


#: Seconds the start-up checks of store and hub may take before they count as down.
STARTUP_CHECK_TIMEOUT = 5.0


async def warn_unreachable(context: Any, limit: float = STARTUP_CHECK_TIMEOUT) -> None:
    """Check the store and the hub of ``context`` once; log one WARNING line for each that does not answer.

    The line names the service (URLs with their password as ``***``) and the
    reason. The server serves anyway: a store that is down is marked so (code
    POSTs get 503 until it answers; see :mod:`tornado_signin.health`), a hub
    that is down delays confirmations until it is back.
    """
    from .redact import reason, redact_url

    config = context.config

    def where(url: Any) -> str:
        return f" at {redact_url(url)}" if isinstance(url, str) and url else ""

    async def store() -> None:
        try:
            await asyncio.wait_for(context.workers.run(context.store.check), limit)
        except Exception as exc:  # any failure: the operator needs its reason, the server goes on
            why = f"no answer within {limit:g}s" if isinstance(exc, asyncio.TimeoutError) else reason(exc)
            log.warning("token store %s%s is unreachable at start-up: %s; serving anyway (sign-ins get 503 "
                        "until it answers)", config.store.backend, where(config.store.options.get("url")), why)
            context.store_health.mark_down()

    async def hub() -> None:
        try:
            await asyncio.wait_for(context.hub.check(), limit)
        except Exception as exc:  # as above
            why = f"no answer within {limit:g}s" if isinstance(exc, asyncio.TimeoutError) else reason(exc)
            log.warning("hub %s%s is unreachable at start-up: %s; serving anyway (confirmations wait until "
                        "it answers)", config.hub.backend, where(config.hub.url), why)

    await asyncio.gather(store(), hub())


def serve(config: Any, *, host: str, port: int, processes: int) -> None:
    """Serve ``config``'s app on ``host:port`` until SIGTERM/SIGINT, on ``processes`` processes (0: one per CPU).

    Return when the server (or, pre-fork, the supervisor) has shut down.
    Raise ConfigError when several processes would share a memory hub.
    """
    from .app import make_app, make_server

    sockets = bind("app", port, host)
    if processes != 1:
        if config.hub.backend == "memory":
            raise ConfigError("hub.backend", "several processes need a shared hub (redis)")
        if fork_workers(processes or os.cpu_count() or 1) is None:
            return

    async def main() -> None:
        app = make_app(config)
        server = make_server(app, config)
        server.add_sockets(sockets)
        await warn_unreachable(app.settings["signin"])
        app.settings["signin"].store_health.start()
        log.info("tornado-signin listening on http://%s:%d%s/ (pid %d)", host, port, config.server.path_prefix,
                 os.getpid())
        await serve_forever([server], [app.settings["signin"]], grace=config.limits.shutdown_grace)

    asyncio.run(main())


def serve_demo(*, host: str, port: int, emulator_port: int, client_library: str, folder: Path,
               on_listening: Callable[[str, str, Path], None]) -> None:
    """Serve the demo (the app and the Google emulator, dev secrets and store in ``folder``) until SIGTERM/SIGINT.

    The emulator keeps its state in ``folder``/DEMO_EMULATOR_DIR; the
    effective config is written to ``folder``/DEMO_CONFIG_FILE for the CLI.
    ``on_listening(app_url, emulator_url, config_path)`` is called once both listen.
    Raise EmulatorStateError for an unusable emulator state folder.
    """
    from tornado.httpserver import HTTPServer

    from .app import make_app, make_server
    from .config import config_from_dict
    from .demo import DEMO_CLIENT_ID, DEMO_EMULATOR_DIR, demo_config_document, load_dev_secrets, write_demo_config
    from .emulator import Emulator, EmulatorClient

    emulator_sockets = bind("emulator", emulator_port, host)
    app_sockets = bind("app", port, host)
    dev = load_dev_secrets(folder)
    emulator_url = f"http://{host}:{emulator_port}"
    document = demo_config_document(folder=folder, host=host, port=port, emulator_url=emulator_url,
                                    client_library=client_library)
    config = config_from_dict(document, base_dir=folder, environ={})
    origins = tuple(sorted({f"http://{host}:{port}", f"http://localhost:{port}", f"http://127.0.0.1:{port}"}))

    async def main() -> None:
        emulator = Emulator(clients=[EmulatorClient(DEMO_CLIENT_ID, dev["client_secret"], origins, secret_generated=True)],
                            base_url=emulator_url, development=True, state_dir=folder / DEMO_EMULATOR_DIR)
        emulator_server = HTTPServer(emulator.make_app())
        emulator_server.add_sockets(emulator_sockets)
        # The demo's "Google" pushes its security events to the demo's receiver (as `risc register` would).
        emulator.risc.register_receiver(f"http://{host}:{port}/risc")
        app = make_app(config)
        server = make_server(app, config)
        server.add_sockets(app_sockets)
        # Written once both ports are ours, so the file never names a demo that did not start.
        on_listening(f"http://{host}:{port}/", emulator_url, write_demo_config(folder, document))
        await serve_forever([server, emulator_server], [app.settings["signin"]])
        emulator.close()

    asyncio.run(main())


def serve_emulator(client: Any, *, host: str, port: int, development: bool, state_dir: str | Path | None = None,
                   on_listening: Callable[[str], None]) -> None:
    """Serve the Google emulator alone, for ``client`` (an EmulatorClient), until SIGTERM/SIGINT.

    ``state_dir`` keeps its state across restarts (None: in memory).
    ``on_listening(url)`` is called once it listens. Raise EmulatorStateError
    for an unusable ``state_dir``.
    """
    from tornado.httpserver import HTTPServer

    from .emulator import Emulator

    sockets = bind("emulator", port, host)

    async def main() -> None:
        emulator = Emulator(clients=[client], base_url=f"http://{host}:{port}", development=development,
                            state_dir=state_dir)
        server = HTTPServer(emulator.make_app())
        server.add_sockets(sockets)
        on_listening(f"http://{host}:{port}/")
        await serve_forever([server], [])
        emulator.close()

    asyncio.run(main())
