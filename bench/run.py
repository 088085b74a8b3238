"""Run the benchmark: ``.venv/bin/python -m bench.run [--duration S] [--rounds N] [--smoke]``.

Starts the emulator and every server under test, then runs interleaved
rounds (each round: every scenario once, in a rotated order) after a
warm-up, then the socket scenario. Servers under test are pinned to CPU 0;
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

from .common import CLIENT_ID, CLIENT_SECRET, COOKIE_SECRET, ENCRYPTION_KEY, LOAD_CPU, SERVER_CPU, fetch_json, pin
from .loadgen import run_load, run_sockets

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PYTHON = sys.executable
TICKS = os.sysconf("SC_CLK_TCK")

#: scenario -> (server, load kind, pinned to SERVER_CPU)
SCENARIOS = {
    "ceiling": ("ceiling", "exchange"),
    "signin": ("signin", "login"),
    "mixin": ("mixin", "exchange"),
    "flask": ("flask", "exchange"),
    "echo": ("echo", "echo"),
    "tornado_get": ("get", "echo"),
    "signin_state_only": ("signin", "state"),
    "signin_1p_redis": ("signin_1p_redis", "login"),
    "signin_2p_redis": ("signin_2p_redis", "login"),
    "ceiling_2p": ("ceiling_2p", "exchange"),
}
MAIN = ("ceiling", "signin", "mixin", "flask", "echo", "signin_state_only", "tornado_get")
SCALE = ("signin_1p_redis", "signin_2p_redis", "ceiling_2p")


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
                 tornado_token: bool = False) -> None:
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
            "limits": {"code_posts_per_minute": 100_000_000},
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


def mint(emulator_url: str, count: int) -> list[str]:
    codes: list[str] = []
    while len(codes) < count:
        batch = min(50_000, count - len(codes))
        codes += fetch_json(f"{emulator_url}/bench/mint?n={batch}", data=b"")["codes"]
    return codes


def measure(fleet: Fleet, scenario: str, args: argparse.Namespace, estimate: dict[str, float]) -> dict[str, Any]:
    """Run one scenario once; return its summary."""
    server, kind = SCENARIOS[scenario]
    port = fleet.ports[server]
    need = 0 if kind in ("echo", "state") else int(estimate.get(scenario, 3000) * (args.warmup + args.duration) * 1.6) + 500
    codes = mint(fleet.emulator_url, need) if need else []

    async def go() -> Any:
        task = asyncio.ensure_future(run_load(kind, [port], codes, connections=args.connections,
                                              warmup=args.warmup, duration=args.duration))
        await asyncio.sleep(args.warmup)
        spy = None
        target = (args.profile or "").split(":")
        if target[0] == scenario:
            profiled = fleet.procs["emulator" if target[1:] == ["emulator"] else server].pid
            # Sampled during the measured window only, from the load generator's core.
            spy = subprocess.Popen(["taskset", "-c", str(LOAD_CPU), shutil.which("py-spy") or
                                    str(Path(PYTHON).parent / "py-spy"), "record", "--pid",
                                    str(profiled), "--subprocesses", "--gil", "--rate", "200",
                                    "--duration", str(int(args.duration)), "--format", "raw", "--nonblocking",
                                    "-o", str(Path(args.out) / f"profile-{'-'.join(target)}.txt")],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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
    return summary


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


TARGETS = [
    # name, what, target, comparison
    ("login_vs_ceiling", "full login throughput / ceiling", 0.80, ">="),
    ("login_vs_mixin", "full login / Tornado GoogleOAuth2Mixin peer", 1.5, ">="),
    ("login_vs_flask", "full login / Flask + gunicorn (2 sync workers) peer", 3.5, ">="),
    ("p99_vs_ceiling", "full login p99 / ceiling p99 (50 connections)", 1.5, "<="),
    ("kb_per_socket", "memory per idle /confirm socket (KB, 10,000 sockets)", 20.0, "<="),
    ("delivery_p99_ms", "one-socket delivery p99 among them (ms)", 2.0, "<"),
    ("two_vs_one", "two processes / one (full login, Redis hub)", 1.7, ">="),
]


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
            medians[scenario]["ratio_to_ceiling"] = _median(
                [r[scenario]["throughput"] / r["ceiling"]["throughput"] for r in rounds
                 if scenario in r and r.get("ceiling", {}).get("throughput")])
    def per_round(a: str, b: str, key: str = "throughput") -> float | None:
        values = [r[a][key] / r[b][key] for r in rounds if a in r and b in r and r[b][key]]
        return _median(values) if values else None

    ratios = {
        "login_vs_ceiling": per_round("signin", "ceiling"),
        "login_vs_mixin": per_round("signin", "mixin"),
        "login_vs_flask": per_round("signin", "flask"),
        "p99_vs_ceiling": per_round("signin", "ceiling", "p99_ms"),
        "two_vs_one": per_round("signin_2p_redis", "signin_1p_redis"),
        "ceiling_two_vs_one": per_round("ceiling_2p", "ceiling"),
        "two_request_bound": _median([_two_request_bound(r) for r in rounds
                                      if "ceiling" in r and "tornado_get" in r]) or None,
        "two_process_bound": _median([_two_process_bound(r["signin_1p_redis"], cpus) for r in rounds
                                      if "signin_1p_redis" in r]) or None,
        "kb_per_socket": sockets["kb_per_socket"] if sockets else None,
        "delivery_p99_ms": sockets["delivery_p99_ms"] if sockets else None,
    }
    verdicts = []
    for name, what, target, op in TARGETS:
        value = ratios.get(name)
        met = None if value is None else (value >= target if op == ">=" else value <= target if op == "<="
                                          else value < target)
        verdicts.append({"name": name, "what": what, "target": f"{op} {target}", "value": value, "met": met})
    return {"medians": medians, "ratios": ratios, "targets": verdicts}


def table(report: dict[str, Any]) -> str:
    """Return the Markdown tables of a report."""
    lines = ["| scenario | logins/s (median) | × ceiling | p50 ms | p99 ms | server CPU (cores) "
             "| server CPU ms/login | load-side CPU (cores, Redis included) |",
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
        args.scenarios = ",".join(MAIN)
    scenarios = [s for s in args.scenarios.split(",") if s]
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
                  tornado_token=args.tornado_token_endpoint)
    rounds: list[dict[str, Any]] = []
    sockets = None
    estimate: dict[str, float] = {}
    try:
        fleet.start_all()
        warm = argparse.Namespace(**{**vars(args), "duration": max(args.warmup, 0.3), "warmup": 0.2})
        for scenario in scenarios if not args.smoke else ():  # warm-up: every server, once, unmeasured
            measure(fleet, scenario, warm, estimate)
        for index in range(args.rounds):
            order = scenarios[index % len(scenarios):] + scenarios[:index % len(scenarios)]
            results: dict[str, Any] = {}
            for scenario in order:
                results[scenario] = measure(fleet, scenario, args, estimate)
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
