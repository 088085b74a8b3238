"""The server's lifecycle: listen, the pre-fork supervisor, graceful drain.

The CLI (:mod:`tornado_signin.cli`) parses arguments and prints; everything
that runs a server lives here:

- :func:`serve` — the configured app on one process or several (pre-fork).
- :func:`serve_demo` — the demo: the app and the Google emulator in one process.
- :func:`serve_emulator` — the emulator alone.
- :func:`serve_forever` — run until SIGTERM/SIGINT, then drain.
- :func:`stop_on_signals` — handle SIGTERM/SIGINT from before a server announces itself.
- :func:`fork_workers` — Tornado's pre-fork model with a supervising parent.
- :func:`start_services` — a serving process's start-up checks and probes (``serve`` and the demo).
- :func:`warn_unreachable` — one WARNING per service that does not answer at start-up.
- :func:`settle_collector` — the garbage collector tuned for serving, once start-up is done
  (from :mod:`tornado_signin.collector`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .collector import GC_YOUNG_THRESHOLD, settle_collector
from .errors import ConfigError, ListenError

__all__ = ["serve", "serve_demo", "serve_emulator", "serve_forever", "stop_on_signals", "fork_workers",
           "start_services", "warn_unreachable", "settle_collector", "GC_YOUNG_THRESHOLD"]

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


def stop_on_signals() -> asyncio.Event:
    """Return an event that SIGTERM and SIGINT set from now on (call it on the running loop).

    A server calls it before it says it is ready: a process manager may
    signal as soon as it reads the announcement, and the signal must drain
    the server, not kill it.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def serve_forever(servers: list[Any], contexts: list[Any], grace: float = 10.0, *,
                        stop: asyncio.Event | None = None) -> None:
    """Run until ``stop`` is set (default: SIGTERM/SIGINT), then shut down gracefully within ``grace`` seconds.

    ``stop`` comes from :func:`stop_on_signals`, called before the server
    announced itself. In order: stop accepting connections and mark the apps draining (readiness
    fails, new code POSTs get 503), wait for the logins in flight, close the
    websockets with 1001 "server shutting down", close the remaining
    connections, then close store, hub and clients.
    """
    if stop is None:
        stop = stop_on_signals()
    await stop.wait()
    started = time.monotonic()
    deadline = started + grace
    log.info("shutting down: no new connections, finishing in-flight logins")
    for server in servers:
        server.stop()
    for ctx in contexts:
        ctx.draining = True
    # Polls the handlers' counter: 20 ms steps, during shutdown only.
    while any(ctx.logins_in_flight for ctx in contexts) and time.monotonic() < deadline:  # noqa: ASYNC110
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


#: A worker that dies after it has served is replaced after a back-off: RESTART_DELAY seconds, doubled for
#: each further failure within FAILURE_WINDOW, at most RESTART_DELAY_MAX.
RESTART_DELAY = 0.5
RESTART_DELAY_MAX = 10.0
#: The supervisor gives up (WorkerError) when workers die this many times within FAILURE_WINDOW seconds.
MAX_FAILURES = 5
FAILURE_WINDOW = 60.0
#: How often the supervisor looks for dead workers and due restarts, in seconds.
_POLL = 0.05


class Worker:
    """What :func:`fork_workers` returns in a worker: its task id, and :meth:`ready` to tell the supervisor."""

    def __init__(self, task_id: int, ready_fd: int) -> None:
        self.task_id = task_id
        self._ready_fd: int | None = ready_fd

    def ready(self) -> None:
        """Tell the supervisor this worker serves (from now on, its death is a failure to restart). Idempotent."""
        if self._ready_fd is not None:
            fd, self._ready_fd = self._ready_fd, None
            try:
                os.write(fd, b"R")
            finally:
                os.close(fd)


def _describe(status: int) -> str:
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


@dataclass
class _Child:
    """A forked worker, as the supervisor knows it."""

    task_id: int
    #: The read end of its ready pipe, until read (or closed).
    ready_fd: int | None
    #: Whether it said it serves (:meth:`Worker.ready`).
    served: bool = False


def fork_workers(count: int, *, on_exit: Callable[[int], None] | None = None) -> Worker | int:
    """Fork ``count`` workers sharing the listening sockets (Tornado's pre-fork model) and supervise them.

    In each worker, return its :class:`Worker` (the worker calls
    :meth:`Worker.ready` once it serves). In the supervisor, return the exit
    status once every worker has exited: 0 after SIGTERM/SIGINT (forwarded to
    the workers, which drain).

    Start-up: worker 0 starts first and the others once it serves, so an
    error every worker would meet (a missing extra, a bad option) is printed
    once, by worker 0. A worker that exits before it served is fatal: the
    others are stopped and its exit status is returned (the worker printed
    why). Afterwards, a worker that dies (a signal, a non-zero status) is
    replaced after a back-off (:data:`RESTART_DELAY`, doubling up to
    :data:`RESTART_DELAY_MAX`); a worker that exits 0 is not. Raise
    WorkerError, after stopping the others, when a worker is killed before
    it served, or when workers die :data:`MAX_FAILURES` times within
    :data:`FAILURE_WINDOW` seconds. ``on_exit(pid)`` is called for every
    worker reaped.
    """
    children: dict[int, _Child] = {}  # by pid
    served_once: set[int] = set()  # task ids whose worker served at least once
    stopping = False

    def spawn(task_id: int) -> Worker | None:
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            for child in children.values():
                if child.ready_fd is not None:
                    os.close(child.ready_fd)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            return Worker(task_id, write_fd)
        os.close(write_fd)
        children[pid] = _Child(task_id, read_fd)
        return None

    def note_ready(pid: int, *, block: bool) -> bool:
        child = children[pid]
        if child.ready_fd is not None:
            os.set_blocking(child.ready_fd, block)
            try:
                child.served = os.read(child.ready_fd, 1) == b"R"
            except BlockingIOError:
                return False
            os.close(child.ready_fd)
            child.ready_fd = None
            if child.served:
                served_once.add(child.task_id)
        return child.served

    def reap(pid: int) -> _Child:
        note_ready(pid, block=False)
        child = children.pop(pid)
        if child.ready_fd is not None:
            os.close(child.ready_fd)
        if on_exit is not None:
            on_exit(pid)
        return child

    def stop_all() -> None:
        for pid in list(children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        while children:
            try:
                pid, _ = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            if pid in children:
                reap(pid)

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

    def fatal(task_id: int, pid: int, status: int) -> int:
        stop_all()
        code = os.waitstatus_to_exitcode(status)
        if code > 0:
            return code  # the worker printed why
        from .errors import WorkerError

        raise WorkerError(f"worker {task_id} (pid {pid}) {_describe(status)} before it served")

    # Start-up: worker 0 alone, then the others once it serves.
    first = spawn(0)
    if first is not None:
        return first
    pid0 = next(iter(children))
    if not note_ready(pid0, block=True):
        _, status = os.waitpid(pid0, 0)
        reap(pid0)
        return 0 if stopping else fatal(0, pid0, status)
    for task_id in range(1, count):
        if stopping:
            break
        worker = spawn(task_id)
        if worker is not None:
            return worker
    log.info("supervising %d worker processes: %s", count, " ".join(map(str, children)))

    failures: list[float] = []
    pending: list[tuple[float, int]] = []  # (when, task id) of restarts waiting for their back-off
    while children or (pending and not stopping):
        now = time.monotonic()
        if not stopping:
            for when, task_id in sorted(p for p in pending if p[0] <= now):
                pending.remove((when, task_id))
                worker = spawn(task_id)
                if worker is not None:
                    return worker
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            pid, status = 0, 0
        if pid == 0 or pid not in children:
            time.sleep(_POLL)
            continue
        child = reap(pid)
        task_id, served = child.task_id, child.served
        if stopping:
            continue
        if os.waitstatus_to_exitcode(status) == 0:
            log.info("worker %d (pid %d) exited; not replaced", task_id, pid)
            continue
        if not served and task_id not in served_once:
            return fatal(task_id, pid, status)
        failures = [t for t in failures if t > now - FAILURE_WINDOW] + [now]
        if len(failures) >= MAX_FAILURES:
            stop_all()
            from .errors import WorkerError

            raise WorkerError(f"workers died {len(failures)} times within {FAILURE_WINDOW:g}s "
                              f"(the last: worker {task_id}, pid {pid}, {_describe(status)}); giving up")
        delay = min(RESTART_DELAY * 2 ** (len(failures) - 1), RESTART_DELAY_MAX)
        log.warning("worker %d (pid %d) %s%s; starting another in %.1fs", task_id, pid, _describe(status),
                    "" if served else " before it served", delay)
        pending.append((now + delay, task_id))
    return 0


#: Seconds the start-up checks of store and hub may take before they count as down.
STARTUP_CHECK_TIMEOUT = 5.0


async def start_services(context: Any) -> None:
    """What a server does once its app listens, the demo's as ``serve``'s: check the store (creating its
    table where the config lets it) and the hub once (:func:`warn_unreachable`), start the store's health
    probe. (``serve`` also settles the collector, which is process-wide: the demo can run in a caller's
    process, as tests run it.)"""
    await warn_unreachable(context)
    context.store_health.start()


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


def serve(config: Any, *, host: str, port: int, processes: int) -> int:
    """Serve ``config``'s app on ``host:port`` until SIGTERM/SIGINT, on ``processes`` processes (0: one per CPU).

    Return the exit status when the server (or, pre-fork, the supervisor)
    has shut down: 0, or the status of a worker that could not start (see
    :func:`fork_workers`). Raise ConfigError when several processes would
    share a memory hub, ListenError when the port cannot be listened on,
    WorkerError when the supervisor gives up. With several processes,
    ``/metrics`` of any worker reports them all (:mod:`tornado_signin.metrics`).
    """
    sockets = bind("app", port, host)
    worker: Worker | None = None
    if processes != 1:
        if config.hub.backend == "memory":
            raise ConfigError("hub.backend", "several processes need a shared hub (redis)")
        from .metrics import prepare_multiprocess, worker_exited

        # Before anything imports prometheus_client: it picks its mode at import.
        clean_up = prepare_multiprocess()
        try:
            forked = fork_workers(processes or os.cpu_count() or 1, on_exit=worker_exited)
        except BaseException:
            clean_up()
            raise
        if not isinstance(forked, Worker):
            clean_up()
            return forked
        worker = forked

    from tornado.ioloop import PeriodicCallback

    from .app import make_app, make_server
    from .metrics import GAUGE_REFRESH_SECONDS

    async def main() -> None:
        stop = stop_on_signals()
        app = make_app(config)
        server = make_server(app, config)
        server.add_sockets(sockets)
        context = app.settings["signin"]
        settle_collector()  # process-wide: here, not in start_services (the demo may run inside a caller's process)
        await start_services(context)
        gauges = PeriodicCallback(context.metrics.refresh_gauges, GAUGE_REFRESH_SECONDS * 1000)
        if context.metrics.multiprocess_dir:
            gauges.start()
        if worker is not None:
            worker.ready()
        log.info("tornado-signin listening on http://%s:%d%s/ (pid %d)", host, port, config.server.path_prefix,
                 os.getpid())
        try:
            await serve_forever([server], [context], grace=config.limits.shutdown_grace, stop=stop)
        finally:
            gauges.stop()

    asyncio.run(main())
    return 0


def serve_demo(*, host: str, port: int, emulator_port: int, client_library: str = "gis", folder: Path,
               on_listening: Callable[[str, str, Path], None], document: dict[str, Any] | None = None,
               build_app: Callable[[Any], Any] | None = None, config_file: str | None = None) -> None:
    """Serve the demo (the app and the Google emulator, dev secrets and store in ``folder``) until SIGTERM/SIGINT.

    The emulator keeps its state in ``folder``/DEMO_EMULATOR_DIR; the
    effective config is written to ``folder``/``config_file`` (default
    DEMO_CONFIG_FILE) for the CLI. ``on_listening(app_url, emulator_url,
    config_path)`` is called once both listen.

    A host app runs the same way beside its own emulator (the Drive example):
    ``document`` replaces the demo's config document (start from
    :func:`~tornado_signin.demo.demo_config_document` and set the prefix,
    scopes, store), ``build_app(config)`` returns its ``tornado.web.Application``
    (with ``settings["signin"]``) instead of :func:`~tornado_signin.app.make_app`.
    Raise EmulatorStateError for an unusable emulator state folder.
    """
    from tornado.httpserver import HTTPServer

    from .app import make_app, make_server
    from .config import config_from_dict
    from .demo import (DEMO_CLIENT_ID, DEMO_CONFIG_FILE, DEMO_EMULATOR_DIR, DEMO_SERVICE_ACCOUNT_FILE,
                       demo_config_document, demo_config_written, load_dev_secrets, write_secret_file)
    from .emulator import Emulator, EmulatorClient

    # The files first, then the ports: whoever sees a port answer (a test, a
    # script, a browser) finds the secrets and the config file in place.
    dev = load_dev_secrets(folder)
    emulator_url = f"http://{host}:{emulator_port}"
    if document is None:
        document = demo_config_document(folder=folder, host=host, port=port, emulator_url=emulator_url,
                                        client_library=client_library)
    config = config_from_dict(document, base_dir=folder, environ={})
    origins = tuple(sorted({f"http://{host}:{port}", f"http://localhost:{port}", f"http://127.0.0.1:{port}"}))
    # A port in use puts the previous config file back: it never names a demo that did not start.
    # So does an emulator state folder in use (another demo runs in this folder: the file names its ports).
    with demo_config_written(folder, document, name=config_file or DEMO_CONFIG_FILE) as path:
        # The emulator first (its state folder's lock: a second demo here is refused before any port), then
        # the key the config's risc.service_account_file names (for the CLI's risc commands), then the ports.
        emulator = Emulator(clients=[EmulatorClient(DEMO_CLIENT_ID, dev["client_secret"], origins,
                                                    secret_generated=True)],
                            base_url=emulator_url, development=True, state_dir=folder / DEMO_EMULATOR_DIR)
        sockets: list[Any] = []
        try:
            write_secret_file(folder / DEMO_EMULATOR_DIR / DEMO_SERVICE_ACCOUNT_FILE,
                              emulator.risc.service_account(emulator_url))
            sockets += (emulator_sockets := bind("emulator", emulator_port, host))
            sockets += (app_sockets := bind("app", port, host))
        except BaseException:
            for sock in sockets:
                sock.close()
            emulator.close()
            raise

    async def main() -> None:
        stop = stop_on_signals()
        emulator_server = HTTPServer(emulator.make_app())
        emulator_server.add_sockets(emulator_sockets)
        if config.risc.enabled:
            # The demo's "Google" pushes its security events to the demo's receiver (as `risc register` would).
            emulator.risc.register_receiver(f"http://{host}:{port}{config.server.path_prefix}/risc")
        app = (build_app or make_app)(config)
        server = make_server(app, config)
        server.add_sockets(app_sockets)
        await start_services(app.settings["signin"])
        on_listening(f"http://{host}:{port}/", emulator_url, path)
        await serve_forever([server, emulator_server], [app.settings["signin"]], stop=stop)
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
        stop = stop_on_signals()
        emulator = Emulator(clients=[client], base_url=f"http://{host}:{port}", development=development,
                            state_dir=state_dir)
        server = HTTPServer(emulator.make_app())
        server.add_sockets(sockets)
        on_listening(f"http://{host}:{port}/")
        await serve_forever([server], [], stop=stop)
        emulator.close()

    asyncio.run(main())
