"""Run the benchmark: ``.venv/bin/python -m bench.run [--duration S] [--rounds N] [--smoke]``.

Starts the emulator and every server under test, then runs interleaved
rounds (each round: every scenario once, in a rotated order) after a
warm-up, then the socket scenario. Servers under test (and the offline
scenarios' job processes, see :mod:`bench.offline`) are pinned to CPU 0;
this process (the load generator), the emulator and Redis to CPU 1. Writes
``bench/results/<time>.json`` and ``bench/results/latest.json`` and, unless
``--smoke``, the results table of ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .common import (
    CLIENT_ID,
    CLIENT_SECRET,
    COOKIE_SECRET,
    ENCRYPTION_KEY,
    LOAD_CPU,
    PKCE_VERIFIER,
    SERVER_CPU,
    fetch_json,
    pin,
    pkce_challenge,
)
from .loadgen import run_load, run_sockets
from .servers import MAX_SOCKETS, bench_limits

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PYTHON = sys.executable
TICKS = os.sysconf("SC_CLK_TCK")

#: scenario -> (server, load kind); server "offline": a job process of bench.offline (the kind is its mode)
SCENARIOS = {
    "ceiling": ("ceiling", "exchange"),
    "signin": ("signin", "login"),
    "signin_two_requests": ("signin", "login2"),
    "mixin": ("mixin", "exchange"),
    "flask": ("flask", "exchange"),
    "echo": ("echo", "echo"),
    "tornado_get": ("get", "echo"),
    "signin_state_only": ("signin", "state"),
    "signin_1p_redis": ("signin_1p_redis", "login"),
    "signin_2p_redis": ("signin_2p_redis", "login"),
    "ceiling_2p": ("ceiling_2p", "exchange"),
    "offline_refresh": ("offline", "refresh"),
    "offline_ceiling": ("offline", "ceiling"),
    "offline_google_auth": ("offline", "google_auth"),
}
MAIN = ("ceiling", "signin", "signin_two_requests", "mixin", "flask", "echo", "signin_state_only", "tornado_get")
OFFLINE = ("offline_refresh", "offline_ceiling", "offline_google_auth")
SCALE = ("signin_1p_redis", "signin_2p_redis", "ceiling_2p")
#: What the smoke runs: every login scenario and every offline one, briefly.
SMOKE = (*MAIN, *OFFLINE)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} did not open")


def tree_cpu_seconds(pid: int) -> float:
    """Return user+system CPU seconds of ``pid`` and its descendants (live ones)."""
    total, stack = 0.0, [pid]
    while stack:
        current = stack.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / TICKS
            for task in Path(f"/proc/{current}/task").iterdir():
                children = (task / "children").read_text().split()
                stack.extend(int(c) for c in children)
        except (OSError, IndexError, ValueError):
            continue
    return total


class Fleet:
    """The processes of one benchmark run; stopped (by pid) at exit."""

    def __init__(self, workdir: Path, smoke: bool, with_scale: bool, profile: str | None = None,
                 tornado_token: bool = False, offline_users: int = 0) -> None:
        self.offline_users = offline_users
        self.seed_seconds: dict[str, float] = {}
        self.profile = profile
        self.tornado_token = tornado_token
        self.workdir = workdir
        self.smoke = smoke
        self.procs: dict[str, subprocess.Popen] = {}
        self.ports: dict[str, int] = {}
        self.with_scale = with_scale

    def start(self, name: str, argv: list[str], port: int, *, cpu: int | None, env: dict | None = None,
              wait: bool = True) -> None:
        if shutil.which("taskset") and (cpu is None or cpu < (os.cpu_count() or 1)):
            # Unpinned means every CPU: children would otherwise inherit this process's pin to LOAD_CPU.
            every = ",".join(str(c) for c in range(os.cpu_count() or 1))
            argv = ["taskset", "-c", every if cpu is None else str(cpu), *argv]
        log = open(self.workdir / f"{name}.log", "w")
        self.procs[name] = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                            env={**os.environ, **(env or {})}, start_new_session=True)
        self.ports[name] = port
        if wait:
            wait_port(port, self.procs[name])

    def wait_all(self) -> None:
        for name, proc in self.procs.items():
            wait_port(self.ports[name], proc)

    def start_all(self) -> None:
        ports = {name: free_port() for name in ("emulator", "token", "get", *SCENARIOS, "redis")}
        emulator_url = f"http://127.0.0.1:{ports['emulator']}"
        self.emulator_url = emulator_url
        token_uri = emulator_url + "/token" if self.tornado_token else f"http://127.0.0.1:{ports['token']}/token"
        accounts = ["--accounts", "5"] if self.smoke else ["--accounts", "100"]
        self.start("emulator", [PYTHON, "-m", "bench.emulator", "--port", str(ports["emulator"]), *accounts,
                                "--token-port", str(ports["token"])], ports["emulator"], cpu=LOAD_CPU)
        wait_port(ports["token"], self.procs["emulator"])
        self.token_uri = token_uri
        server = [PYTHON, "-m", "bench.servers", "--token-uri", token_uri]
        for kind in ("ceiling", "mixin", "echo", "get"):
            self.start(kind, [*server, kind, "--port", str(ports[kind]), "--emulator", emulator_url,
                              "--db", str(self.workdir / f"{kind}.db")], ports[kind], cpu=SERVER_CPU, wait=False)
        self.start("signin", [*server, "signin", "--port", str(ports["signin"]), "--emulator", emulator_url,
                              "--db", str(self.workdir / "signin.db")], ports["signin"], cpu=SERVER_CPU, wait=False)
        self.start("flask", [PYTHON, "-m", "gunicorn", "-w", "2", "-k", "sync", "-b", f"127.0.0.1:{ports['flask']}",
                             "--log-level", "warning", "bench.flask_peer:app"], ports["flask"], cpu=SERVER_CPU,
                   env={"BENCH_EMULATOR": emulator_url, "BENCH_DB": str(self.workdir / "flask.db"),
                        "BENCH_TOKEN_URI": token_uri}, wait=False)
        if self.with_scale:
            self.start("redis", ["redis-server", "--port", str(ports["redis"]), "--bind", "127.0.0.1",
                                 "--save", "", "--appendonly", "no"], ports["redis"], cpu=LOAD_CPU, wait=False)
            self.wait_all()
            redis_url = f"redis://127.0.0.1:{ports['redis']}/0"
            for name, processes, cpu in (("signin_1p_redis", 1, SERVER_CPU), ("signin_2p_redis", 2, None)):
                config = self.workdir / f"{name}.json"
                config.write_text(json.dumps(self.cli_config(ports[name], emulator_url, redis_url, name)))
                self.start(name, [PYTHON, "-m", "tornado_signin.cli", "serve", "--config", str(config),
                                  "--processes", str(processes)], ports[name], cpu=cpu,
                           env={"BENCH_CLIENT_SECRET": CLIENT_SECRET, "BENCH_COOKIE_SECRET": COOKIE_SECRET,
                                "BENCH_ENCRYPTION_KEY": ENCRYPTION_KEY}, wait=False)
            self.start("ceiling_2p", [*server, "ceiling", "--port", str(ports["ceiling_2p"]), "--emulator",
                                      emulator_url, "--processes", "2"], ports["ceiling_2p"], cpu=None, wait=False)
        self.wait_all()
        if self.offline_users:
            self.seed_offline()

    def seed_offline(self) -> None:
        """Make the offline scenarios' users: grants at the emulator, then the two SQLite templates (every
        access token expired) that each run starts from (a file copy, so every run refreshes everyone)."""
        from .offline import seed_peer_db, seed_product_store

        began = time.perf_counter()
        users: list[dict[str, str]] = []
        while len(users) < self.offline_users:
            batch = min(1000, self.offline_users - len(users))
            users += fetch_json(f"{self.emulator_url}/bench/offline?n={batch}", data=b"", timeout=300)["users"]
        self.seed_seconds["grants"] = time.perf_counter() - began
        self.users_file = self.workdir / "offline-users.json"
        self.users_file.write_text(json.dumps(users))
        began = time.perf_counter()
        self.templates = {"refresh": self.workdir / "offline-refresh.template.db",
                          "google_auth": self.workdir / "offline-google-auth.template.db"}
        seed_product_store(str(self.templates["refresh"]), users, self.token_uri)
        self.seed_seconds["product_store"] = time.perf_counter() - began
        began = time.perf_counter()
        seed_peer_db(str(self.templates["google_auth"]), users)
        self.seed_seconds["peer_db"] = time.perf_counter() - began

    def cli_config(self, port: int, emulator: str, redis_url: str, name: str) -> dict:
        return {
            "development": True,
            "log_level": "WARNING",
            "server": {"host": "127.0.0.1", "port": port, "cookie_secret": {"$env": "BENCH_COOKIE_SECRET"},
                       "allowed_origins": [f"http://127.0.0.1:{port}"]},
            "google": {"client_id": CLIENT_ID, "client_secret": {"$env": "BENCH_CLIENT_SECRET"},
                       "client_script_url": emulator + "/gsi/client",
                       "endpoints": {"auth_uri": emulator + "/o/oauth2/v2/auth", "token_uri": self.token_uri,
                                     "certs_uri": emulator + "/oauth2/v1/certs",
                                     "revoke_uri": emulator + "/revoke"}},
            "store": {"backend": "sql", "url": f"sqlite:///{self.workdir / (name + '.db')}",
                      "sqlite_synchronous": "NORMAL",
                      "encryption": {"keys": [{"$env": "BENCH_ENCRYPTION_KEY"}]}},
            "hub": {"backend": "redis", "url": redis_url},
            "limits": bench_limits(),  # see bench.servers.bench_limits: one address, raised for the benchmark
        }

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for proc in self.procs.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def mint(emulator_url: str, count: int, code_challenge: str | None = None) -> list[str]:
    codes: list[str] = []
    query = f"&code_challenge={code_challenge}" if code_challenge else ""
    while len(codes) < count:
        batch = min(50_000, count - len(codes))
        codes += fetch_json(f"{emulator_url}/bench/mint?n={batch}{query}", data=b"")["codes"]
    return codes


def _py_spy(pid: int, out: Path, duration: int | None) -> subprocess.Popen:
    # Sampled from the load generator's core, GIL holders only.
    argv = ["taskset", "-c", str(LOAD_CPU), shutil.which("py-spy") or str(Path(PYTHON).parent / "py-spy"), "record",
            "--pid", str(pid), "--subprocesses", "--gil", "--rate", "200", "--format", "raw", "--nonblocking",
            "-o", str(out)]
    if duration is not None:
        argv[-2:-2] = ["--duration", str(duration)]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def measure_offline(fleet: Fleet, scenario: str, args: argparse.Namespace, warm: bool = False) -> dict[str, Any]:
    """Run one offline scenario once (a job process refreshing every seeded user); return its summary."""
    _, mode = SCENARIOS[scenario]
    db = fleet.workdir / f"{scenario}.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    if mode in fleet.templates:
        shutil.copyfile(fleet.templates[mode], db)  # every access token expired again
    argv = [PYTHON, "-m", "bench.offline", mode, "--users", str(fleet.users_file), "--db", str(db),
            "--token-uri", fleet.token_uri, "--concurrency", str(args.offline_concurrency),
            "--threads", str(args.offline_threads)]
    if warm:
        argv += ["--limit", str(max(1, fleet.offline_users // 10))]
    if shutil.which("taskset"):
        argv = ["taskset", "-c", str(SERVER_CPU), *argv]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    emulator = fleet.procs["emulator"].pid
    marks: dict[str, tuple[float, float]] = {}
    report: dict[str, Any] | None = None
    spy = None
    profiling = not warm and (args.profile or "").split(":")[0] == scenario
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.strip()
            if line in ("start", "end"):
                marks[line] = (time.perf_counter(), tree_cpu_seconds(emulator))
                if profiling and line == "start":
                    target = emulator if args.profile.endswith(":emulator") else proc.pid
                    spy = _py_spy(target, Path(args.out) / f"profile-{args.profile.replace(':', '-')}.txt", None)
                elif spy is not None:
                    spy.send_signal(signal.SIGINT)
            elif line.startswith("{"):
                report = json.loads(line)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        if spy is not None:
            spy.wait(timeout=30)
    if proc.returncode != 0 or report is None or len(marks) != 2:
        stderr = proc.stderr.read() if proc.stderr else ""
        raise RuntimeError(f"{scenario}: the job exited {proc.returncode}: {stderr[-2000:]}")
    (t0, e0), (t1, e1) = marks["start"], marks["end"]
    seconds = report["seconds"]
    return {
        "throughput": report["throughput"], "completed": report["completed"], "p50_ms": report["p50_ms"],
        "p99_ms": report["p99_ms"], "errors": report["errors"], "seconds": seconds,
        "server_cpu": report["cpu_seconds"] / seconds if seconds else 0.0,
        "loadgen_cpu": 0.0, "emulator_cpu": (e1 - e0) / (t1 - t0) if t1 > t0 else 0.0, "redis_cpu": 0.0,
        "server_cpu_ms_per_login": 1000 * report["cpu_seconds"] / report["completed"] if report["completed"] else 0.0,
        **({"refreshed": report["refreshed"]} if "refreshed" in report else {}),
    }


def measure_store_floor(fleet: Fleet, concurrency: int) -> dict[str, Any]:
    """Return the CPU (ms) per user of the store work the job does for each refreshed user, inline, on a copy
    of the product's seeded store: the re-read and the save through the store's batch forms (``get_many``,
    ``save_many``) in batches of ``concurrency`` (bench.offline's ``store`` mode: the bound under the offline
    targets), and the same one ``get`` and ``save`` at a time beside it."""
    db = fleet.workdir / "offline-store-floor.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(fleet.templates["refresh"], db)
    argv = [PYTHON, "-m", "bench.offline", "store", "--users", str(fleet.users_file), "--db", str(db),
            "--token-uri", fleet.token_uri, "--limit", str(min(2000, fleet.offline_users)),
            "--concurrency", str(concurrency)]
    if shutil.which("taskset"):
        argv = ["taskset", "-c", str(SERVER_CPU), *argv]
    run = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)
    if run.returncode != 0:
        raise RuntimeError(f"store floor: exited {run.returncode}: {run.stderr[-2000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def measure(fleet: Fleet, scenario: str, args: argparse.Namespace, estimate: dict[str, float],
            warm: bool = False) -> dict[str, Any]:
    """Run one scenario once; return its summary."""
    server, kind = SCENARIOS[scenario]
    if server == "offline":
        return measure_offline(fleet, scenario, args, warm)
    port = fleet.ports[server]
    need = 0 if kind in ("echo", "state") else int(estimate.get(scenario, 3000) * (args.warmup + args.duration) * 1.6) + 500
    # The Flask peer's Flow does PKCE (see bench/flask_peer.py): its codes carry the challenge.
    challenge = pkce_challenge(PKCE_VERIFIER) if scenario == "flask" else None
    codes = mint(fleet.emulator_url, need, challenge) if need else []

    async def go() -> Any:
        task = asyncio.ensure_future(run_load(kind, [port], codes, connections=args.connections,
                                              warmup=args.warmup, duration=args.duration))
        await asyncio.sleep(args.warmup)
        spy = None
        target = (args.profile or "").split(":")
        if target[0] == scenario and not warm:
            profiled = fleet.procs["emulator" if target[1:] == ["emulator"] else server].pid
            # Sampled during the measured window only.
            spy = _py_spy(profiled, Path(args.out) / f"profile-{'-'.join(target)}.txt", int(args.duration))
        def cpu_now() -> tuple[float, ...]:
            redis = fleet.procs.get("redis")
            return (tree_cpu_seconds(fleet.procs[server].pid), time.process_time(),
                    tree_cpu_seconds(fleet.procs["emulator"].pid), tree_cpu_seconds(redis.pid) if redis else 0.0)

        cpu0 = cpu_now()
        await asyncio.sleep(args.duration)
        cpu1 = cpu_now()
        result = await task
        if spy is not None:
            spy.wait()
        return result, [(b - a) / args.duration for a, b in zip(cpu0, cpu1, strict=True)]

    result, (server_cpu, loadgen_cpu, emulator_cpu, redis_cpu) = asyncio.run(go())
    summary = result.summary()
    summary.update(server_cpu=server_cpu, loadgen_cpu=loadgen_cpu, emulator_cpu=emulator_cpu,
                   redis_cpu=redis_cpu if kind == "login" and "redis" in server else 0.0,
                   server_cpu_ms_per_login=1000 * server_cpu / summary["throughput"] if summary["throughput"] else 0.0)
    if summary["throughput"]:
        estimate[scenario] = summary["throughput"]
    if kind == "login" and summary["state_fallbacks"]:
        print(f"NOTE {scenario}: {summary['state_fallbacks']} answers carried no next state: those logins "
              "fetched GET /state first (two requests)", flush=True)
    return summary


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


TARGETS = [
    # name, what, target, comparison (issue 16; two_vs_one from issue 7)
    ("login_vs_mixin", "signin (one request) / Tornado GoogleOAuth2Mixin peer", 1.5, ">="),
    ("login_vs_flask", "signin / Flask + gunicorn (2 sync workers) peer", 3.0, ">="),
    ("login_vs_ceiling", "signin / ceiling", 0.45, ">="),
    ("p99_vs_mixin", "signin p99 / mixin p99 (50 connections)", 1.3, "<="),
    ("kb_per_socket", "memory per idle /confirm socket (KB, 10,000 sockets)", 16.0, "<="),
    ("delivery_p99_ms", "one-socket delivery p99 among them (ms)", 1.0, "<="),
    ("offline_vs_ceiling", "offline_refresh / offline_ceiling (refreshes/s)", 0.8, ">="),
    ("offline_vs_google_auth", "offline_refresh / offline_google_auth", 3.0, ">="),
    ("two_vs_one", "two processes / one (login, Redis hub)", 1.7, ">="),
]


#: Throughput ratios also computed from server CPU per login (a / b): what the ratio would be if every
#: scenario had its core to itself (the machine is shared: a scenario that got less of CPU 0 looks slower).
CPU_RATIOS = [
    ("login_vs_mixin", "signin", "mixin"),
    ("login_vs_flask", "signin", "flask"),
    ("login_vs_ceiling", "signin", "ceiling"),
    ("offline_vs_ceiling", "offline_refresh", "offline_ceiling"),
    ("offline_vs_google_auth", "offline_refresh", "offline_google_auth"),
]


def _offline_bound(results: dict[str, Any], *, reread: bool = True, peer: str = "offline_ceiling") -> float:
    """Return the most ``offline_refresh`` could reach as a ratio to ``peer`` (by CPU per refresh) if it did
    nothing but the product's refresh call (``GoogleClient.refresh`` alone, measured beside the store work; the
    ceiling's curl POST where that was not measured) and the store work every refreshed user needs, done as the
    job does it (measured inline: the save of the outcome through the store's merge, and with ``reread`` the
    re-read under the grant lease, each through the store's batch form in batches of the job's concurrency)."""
    if "offline_refresh" not in results or "offline_ceiling" not in results or peer not in results:
        return 0.0
    floor = results["offline_refresh"].get("store_floor") or {}
    post = floor.get("post_ms") or results["offline_ceiling"]["server_cpu_ms_per_login"]
    least = post + floor.get("save_ms", 0.0) + (floor.get("get_ms", 0.0) if reread else 0.0)
    return results[peer]["server_cpu_ms_per_login"] / least if floor and least else 0.0


def _two_request_bound(results: dict[str, Any]) -> float:
    """Return the most a login of two Tornado requests (a GET like /state, then the ceiling's POST)
    could reach, as a ratio to the ceiling, if it did no work of its own: by server CPU per request."""
    post, get = results["ceiling"]["server_cpu_ms_per_login"], results["tornado_get"]["server_cpu_ms_per_login"]
    return post / (post + get) if post and get else 0.0


def _two_process_bound(run: dict[str, Any], cpus: int) -> float:
    """Return how many times its one-process throughput ``run`` (a one-process scenario) could reach
    if the machine's ``cpus`` cores did nothing but what one login costs there: the server's,
    the load generator's, the emulator's and Redis's CPU per login (the second process shares
    the machine with all of them)."""
    cores_per_run = run["server_cpu"] + run["loadgen_cpu"] + run["emulator_cpu"] + run.get("redis_cpu", 0.0)
    return cpus / cores_per_run if cores_per_run else 0.0


def analyse(rounds: list[dict[str, Any]], sockets: dict[str, Any] | None, cpus: int = 2) -> dict[str, Any]:
    """Return medians per scenario, per-round ratios to the same round's ceiling, and target verdicts."""
    medians: dict[str, Any] = {}
    for scenario in SCENARIOS:
        runs = [r[scenario] for r in rounds if scenario in r]
        if runs:
            medians[scenario] = {key: _median([run[key] for run in runs])
                                 for key in ("throughput", "p50_ms", "p99_ms", "server_cpu", "loadgen_cpu",
                                             "emulator_cpu", "redis_cpu", "server_cpu_ms_per_login")}
            # Offline scenarios against the offline ceiling, the others against the login ceiling.
            ceiling = "offline_ceiling" if scenario in OFFLINE else "ceiling"
            medians[scenario]["ratio_to_ceiling"] = _median(
                [r[scenario]["throughput"] / r[ceiling]["throughput"] for r in rounds
                 if scenario in r and r.get(ceiling, {}).get("throughput")])
    def per_round(a: str, b: str, key: str = "throughput") -> float | None:
        values = [r[a][key] / r[b][key] for r in rounds if a in r and b in r and r[b][key]]
        return _median(values) if values else None

    def per_round_cpu(a: str, b: str) -> float | None:
        # b's server CPU per login over a's: the throughput ratio on a core each had whole.
        key = "server_cpu_ms_per_login"
        values = [r[b][key] / r[a][key] for r in rounds if a in r and b in r and r[a][key]]
        return _median(values) if values else None

    ratios = {
        "login_vs_ceiling": per_round("signin", "ceiling"),
        "login_vs_mixin": per_round("signin", "mixin"),
        "login_vs_flask": per_round("signin", "flask"),
        "p99_vs_mixin": per_round("signin", "mixin", "p99_ms"),
        "p99_vs_ceiling": per_round("signin", "ceiling", "p99_ms"),
        "two_requests_vs_ceiling": per_round("signin_two_requests", "ceiling"),
        "one_vs_two_requests": per_round("signin", "signin_two_requests"),
        "offline_vs_ceiling": per_round("offline_refresh", "offline_ceiling"),
        "offline_vs_google_auth": per_round("offline_refresh", "offline_google_auth"),
        "two_vs_one": per_round("signin_2p_redis", "signin_1p_redis"),
        "ceiling_two_vs_one": per_round("ceiling_2p", "ceiling"),
        "two_request_bound": _median([_two_request_bound(r) for r in rounds
                                      if "ceiling" in r and "tornado_get" in r]) or None,
        "two_process_bound": _median([_two_process_bound(r["signin_1p_redis"], cpus) for r in rounds
                                      if "signin_1p_redis" in r]) or None,
        "offline_bound": _median([b for r in rounds for b in [_offline_bound(r)] if b]) or None,
        "offline_bound_no_reread": _median([b for r in rounds for b in [_offline_bound(r, reread=False)] if b])
        or None,
        "offline_google_auth_bound": _median([b for r in rounds for b in [_offline_bound(r, peer="offline_google_auth")]
                                              if b]) or None,
        **{f"{name}_by_cpu": per_round_cpu(a, b) for name, a, b in CPU_RATIOS},
        "kb_per_socket": sockets["kb_per_socket"] if sockets else None,
        "delivery_p99_ms": sockets["delivery_p99_ms"] if sockets else None,
    }
    verdicts = []
    for name, what, target, op in TARGETS:
        value = ratios.get(name)
        met = None if value is None else (value >= target if op == ">=" else value <= target)
        verdicts.append({"name": name, "what": what, "target": f"{op} {target}", "value": value, "met": met})
    return {"medians": medians, "ratios": ratios, "targets": verdicts}


def table(report: dict[str, Any]) -> str:
    """Return the Markdown tables of a report."""
    lines = ["| scenario | logins (refreshes)/s, median | × ceiling (offline: × offline_ceiling) | p50 ms | p99 ms "
             "| server (job) CPU, cores | server (job) CPU ms/login (/refresh) | load-side CPU (cores, Redis included) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for scenario, m in report["analysis"]["medians"].items():
        lines.append(f"| {scenario} | {m['throughput']:.0f} | {m['ratio_to_ceiling']:.2f} | {m['p50_ms']:.2f} | "
                     f"{m['p99_ms']:.2f} | {m['server_cpu']:.2f} | {m['server_cpu_ms_per_login']:.2f} | "
                     f"{m['loadgen_cpu'] + m['emulator_cpu'] + m['redis_cpu']:.2f} |")
    lines += ["", "| target | measured | target | met |", "|---|---:|---:|:-:|"]
    for t in report["analysis"]["targets"]:
        value = "n/a" if t["value"] is None else f"{t['value']:.2f}"
        met = {True: "yes", False: "**no**", None: "n/a"}[t["met"]]
        lines.append(f"| {t['what']} | {value} | {t['target']} | {met} |")
    bound = report["analysis"]["ratios"].get("two_request_bound")
    if bound is not None:
        lines.append(f"| (bound for any login of GET + the ceiling's POST doing nothing else, by CPU) | {bound:.2f} | | |")
    ratios = report["analysis"]["ratios"]
    for name, _, _ in CPU_RATIOS:
        if ratios.get(f"{name}_by_cpu") is not None:
            lines.append(f"| ({name} by server CPU per login, as if each had its core to itself) "
                         f"| {ratios[f'{name}_by_cpu']:.2f} | | |")
    if ratios.get("offline_bound") is not None:
        lines.append(f"| (bound for offline_refresh / offline_ceiling: the product's refresh call alone + the store's "
                     f"batched get and save per user, by CPU) | {ratios['offline_bound']:.2f} | | |")
        lines.append(f"| (the same without the re-read under the grant lease: POST + the batched save) "
                     f"| {ratios['offline_bound_no_reread']:.2f} | | |")
    if ratios.get("offline_google_auth_bound") is not None:
        lines.append(f"| (bound for offline_refresh / offline_google_auth: its CPU per refresh over the "
                     f"product's refresh call + get + save) | {ratios['offline_google_auth_bound']:.2f} | | |")
    two_bound = report["analysis"]["ratios"].get("two_process_bound")
    if two_bound is not None:
        lines.append(f"| (bound for two / one on this machine: its cores / all CPU one login costs, Redis included) "
                     f"| {two_bound:.2f} | | |")
    extra = report["analysis"]["ratios"].get("ceiling_two_vs_one")
    if extra is not None:
        lines.append(f"| (for scale: the ceiling's own two / one processes) | {extra:.2f} | | |")
    sockets = report.get("sockets")
    if sockets:
        lines += ["", f"Sockets: {sockets['sockets']:,} opened in {sockets['open_seconds']:.1f} s ({sockets['failed']} "
                      f"failed, {sockets['open_at_end']:,} still open at the end); server RSS {sockets['rss_before_mb']:.0f} "
                      f"→ {sockets['rss_after_mb']:.0f} MB; delivery to one socket p50 {sockets['delivery_p50_ms']:.2f} ms, "
                      f"p99 {sockets['delivery_p99_ms']:.2f} ms over {sockets['probes']:,} probes."]
    return "\n".join(lines)


def update_readme(markdown: str, meta: dict[str, Any]) -> None:
    readme = HERE / "README.md"
    if not readme.exists():
        return
    text = readme.read_text()
    start, end = "<!-- results:start -->", "<!-- results:end -->"
    if start not in text or end not in text:
        return
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    note = (f"Run {meta['started']} on {meta['cpus']} CPUs, commit {meta['commit']}, {meta['rounds']} rounds × "
            f"{meta['duration']} s after {meta['warmup']} s warm-up, {meta['connections']} connections; "
            f"load average before: {meta['loadavg_before']}.")
    readme.write_text(f"{head}{start}\n{note}\n\n{markdown}\n{end}{tail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="tornado-signin benchmark (issue #7)")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per scenario run")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--sockets", type=int, default=10_000)
    parser.add_argument("--probes", type=int, default=2000)
    parser.add_argument("--scenarios", default=",".join(MAIN + SCALE), help="comma-separated subset")
    parser.add_argument("--no-sockets", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="a few seconds: one short round, 200 sockets")
    parser.add_argument("--offline-users", type=int, default=10_000, help="users the offline scenarios refresh")
    parser.add_argument("--offline-concurrency", type=int, default=64, help="refreshes in flight (offline scenarios)")
    parser.add_argument("--offline-threads", type=int, default=16, help="offline_google_auth's thread pool")
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--profile", metavar="SCENARIO", help="sample SCENARIO's server (SCENARIO:emulator: the emulator) with py-spy during its measured window "
                             "(raw stacks in --out)")
    parser.add_argument("--tornado-token-endpoint", action="store_true",
                        help="exchange codes at the emulator's own (Tornado) /token instead of its bare-asyncio twin")
    parser.add_argument("--max-load", type=float, default=None,
                        help="wait (up to 10 min) until the 1-minute load average is below this")
    args = parser.parse_args(argv)
    if args.smoke:
        args.duration, args.warmup, args.rounds, args.sockets, args.probes = 1.0, 0.3, 1, 200, 50
        args.scenarios, args.offline_users = ",".join(SMOKE), 300
    scenarios = [s for s in args.scenarios.split(",") if s]
    if args.sockets > MAX_SOCKETS:
        parser.error(f"--sockets: at most {MAX_SOCKETS} (the servers' limits are raised that far)")
    unknown = [s for s in scenarios if s not in SCENARIOS]
    if unknown:
        parser.error(f"--scenarios: unknown {', '.join(unknown)} (known: {', '.join(SCENARIOS)})")
    if args.max_load is not None:
        deadline = time.monotonic() + 600
        while os.getloadavg()[0] > args.max_load and time.monotonic() < deadline:
            time.sleep(10)
    pin(LOAD_CPU)
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    meta = {
        "started": started, "cpus": os.cpu_count(), "loadavg_before": [round(x, 2) for x in os.getloadavg()],
        "duration": args.duration, "warmup": args.warmup, "rounds": args.rounds, "connections": args.connections,
        "smoke": args.smoke, "python": sys.version.split()[0],
        "token_endpoint": "tornado" if args.tornado_token_endpoint else "bare-asyncio",
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                 text=True).stdout.strip(),
    }
    Path(args.out).mkdir(parents=True, exist_ok=True)  # py-spy writes its profile there mid-run
    workdir = Path(tempfile.mkdtemp(prefix="tornado-signin-bench-"))
    fleet = Fleet(workdir, args.smoke, with_scale=any(s in SCALE for s in scenarios), profile=args.profile,
                  tornado_token=args.tornado_token_endpoint,
                  offline_users=args.offline_users if any(s in OFFLINE for s in scenarios) else 0)
    rounds: list[dict[str, Any]] = []
    sockets = None
    estimate: dict[str, float] = {}
    try:
        fleet.start_all()
        meta["offline_users"] = fleet.offline_users
        meta["seed_seconds"] = {k: round(v, 2) for k, v in fleet.seed_seconds.items()}
        meta["loadavg_rounds"] = []
        warm = argparse.Namespace(**{**vars(args), "duration": max(args.warmup, 0.3), "warmup": 0.2})
        for scenario in scenarios if not args.smoke else ():  # warm-up: every server, once, unmeasured
            measure(fleet, scenario, warm, estimate, warm=True)
        for index in range(args.rounds):
            order = scenarios[index % len(scenarios):] + scenarios[:index % len(scenarios)]
            results: dict[str, Any] = {}
            meta["loadavg_rounds"].append([round(x, 2) for x in os.getloadavg()])
            for scenario in order:
                results[scenario] = measure(fleet, scenario, args, estimate)
                if scenario == "offline_refresh":
                    results[scenario]["store_floor"] = measure_store_floor(fleet, args.offline_concurrency)
                r = results[scenario]
                print(f"round {index + 1} {scenario:<16} {r['throughput']:8.0f}/s p50 {r['p50_ms']:6.2f} ms "
                      f"p99 {r['p99_ms']:6.2f} ms server CPU {r['server_cpu']:.2f} load side "
                      f"{r['loadgen_cpu'] + r['emulator_cpu'] + r['redis_cpu']:.2f} errors {r['errors']}", flush=True)
            rounds.append(results)
        if not args.no_sockets:
            sockets = asyncio.run(run_sockets(fleet.ports["signin"], fleet.procs["signin"].pid,
                                              count=args.sockets, probes=args.probes))
            print(f"sockets: {json.dumps(sockets)}", flush=True)
    finally:
        fleet.stop()
        meta["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    report = {"meta": meta, "rounds": rounds, "sockets": sockets, "analysis": analyse(rounds, sockets, os.cpu_count() or 1)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "smoke.json" if args.smoke else f"{started.replace(':', '')}.json"
    (out / name).write_text(json.dumps(report, indent=2))
    if not args.smoke and out.resolve() == (HERE / "results").resolve():
        (out / "latest.json").write_text(json.dumps(report, indent=2))
        update_readme(table(report), meta)
    print(table(report))
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
