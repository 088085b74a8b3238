"""``tornado-signin serve --processes N`` as a subprocess: start-up failures, dying workers, /metrics of all workers.

The supervisor's rules (README, "Deployment"): a worker that exits before it
served is fatal (its error printed once, its exit status returned); a worker
that dies after serving is replaced after a back-off; workers dying
MAX_FAILURES times within FAILURE_WINDOW make the supervisor give up (exit
10). A scrape of ``/metrics`` answered by any worker reports every worker.
SIGSTOP decides which worker takes a connection: a stopped worker cannot
accept, so the other one does.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import requests

from harness import CLIENT_ID, CLIENT_SECRET
from procs import ROOT, Proc, free_port, mint, wait_port, write_config
from test_cli_commands import cli_argv, clean_env
from tornado_signin.emulator import EmulatorClient, EmulatorThread
from tornado_signin.server import FAILURE_WINDOW, MAX_FAILURES

pytestmark = pytest.mark.slow

EXIT_CONFIG, EXIT_WORKERS = 3, 10
LISTENING = re.compile(r"tornado-signin listening on \S+ \(pid (\d+)\)")


def workers_of(pid: int) -> set[int]:
    """Return the pids of the supervisor's children (Linux /proc)."""
    try:
        return {int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}
    except FileNotFoundError:
        return set()


def serving(proc: Proc) -> set[int]:
    """Return the pids of the supervisor's workers that logged that they listen."""
    return {int(p) for p in LISTENING.findall(proc.log())} & workers_of(proc.pid)


def wait_for(condition, timeout: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError(f"no {what} after {timeout}s")


class Cluster:
    """The emulator (in this process), a config on a SQLite file and Redis, and one supervised ``serve``."""

    def __init__(self, tmp: Path, redis_url: str, prefix: str) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.app_url = f"http://127.0.0.1:{self.port}"
        self.thread = EmulatorThread(clients=[EmulatorClient(CLIENT_ID, CLIENT_SECRET, (self.app_url,))])
        self.emulator_url = self.thread.start().base_url
        self.config = write_config(tmp, name="app", emulator_url=self.emulator_url, origins=[self.app_url],
                                   store={"backend": "sql", "url": f"sqlite:///{tmp / 'tokens.sqlite3'}"},
                                   hub={"backend": "redis", "url": redis_url, "key_prefix": f"{prefix}:"})
        self.proc: Proc | None = None

    def argv(self, processes: int) -> list[str]:
        return cli_argv("serve", "--config", str(self.config), "--port", str(self.port), "--processes", str(processes))

    def start(self, processes: int = 2, env: dict[str, str] | None = None) -> Proc:
        self.proc = Proc(self.argv(processes), self.tmp / "serve.log", env=clean_env(env))
        wait_port(self.port, proc=self.proc.proc)
        wait_for(lambda: len(serving(self.proc)) == processes, what=f"{processes} serving workers")
        return self.proc

    def sign_in(self, email: str = "alice@example.com") -> None:
        with requests.Session() as session:  # a connection of its own, taken by whichever worker accepts
            state = session.get(self.app_url + "/state", timeout=10).json()["state"]
            response = session.post(self.app_url + "/storeauthcode", data=mint(self.emulator_url, email),
                                    headers={"X-Requested-With": "XMLHttpRequest", "Origin": self.app_url,
                                             "Content-Type": "application/octet-stream", "X-Signin-State": state},
                                    timeout=20)
        assert response.status_code == 200, response.text

    def signed_in(self) -> float:
        """Scrape /metrics (a fresh connection) and return the signed_in count it reports."""
        text = requests.get(self.app_url + "/metrics", timeout=10).text
        match = re.search(r'^signin_logins_total\{outcome="signed_in"\} (\S+)$', text, re.M)
        return float(match.group(1)) if match else 0.0

    def close(self) -> None:
        if self.proc is not None:
            for pid in workers_of(self.proc.pid):
                try:
                    os.kill(pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
            self.proc.stop()
        self.thread.stop()


@pytest.fixture
def cluster(tmp_path, redis_url, unique_name):
    built = Cluster(tmp_path, redis_url, unique_name)
    yield built
    built.close()


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("tornado-signin: ")]


def test_workers_that_cannot_start_stop_the_supervisor_with_the_error_once(cluster, no_redis):
    """The redis hub's extra missing in every worker: the one-process run's error and exit status, once."""
    one = subprocess.run(cluster.argv(1), capture_output=True, text=True, env=clean_env(no_redis), cwd=ROOT,
                         timeout=60)
    assert one.returncode == EXIT_CONFIG, one.stderr
    expected = error_lines(one.stderr)
    assert expected == ["tornado-signin: config key 'hub.backend': hub 'redis' needs a missing dependency (redis): "
                        "pip install 'tornado-signin[redis]'"], one.stderr
    started = time.monotonic()
    many = subprocess.run(cluster.argv(3), capture_output=True, text=True, env=clean_env(no_redis), cwd=ROOT,
                          timeout=60)
    assert many.returncode == EXIT_CONFIG, many.stderr
    assert error_lines(many.stderr) == expected, many.stderr
    assert "starting another" not in many.stderr and "Traceback" not in many.stderr
    assert time.monotonic() - started < 20


def test_a_worker_killed_before_it_served_stops_the_supervisor(cluster, tmp_path):
    """A worker that dies by a signal while starting (here: on importing redis) cannot print why: the supervisor does."""
    shim = tmp_path / "kill-shim"
    (shim / "redis").mkdir(parents=True)
    (shim / "redis" / "__init__.py").write_text("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n")
    result = subprocess.run(cluster.argv(2), capture_output=True, text=True, env=clean_env({"PYTHONPATH": str(shim)}),
                            cwd=ROOT, timeout=60)
    assert result.returncode == EXIT_WORKERS, result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and re.fullmatch(
        r"tornado-signin: worker 0 \(pid \d+\) was killed by SIGKILL before it served", lines[0]), result.stderr
    assert "starting another" not in result.stderr


def test_a_worker_killed_after_serving_is_replaced(cluster):
    proc = cluster.start(2)
    victim, survivor = sorted(serving(proc))
    os.kill(victim, signal.SIGKILL)
    replacement = wait_for(lambda: serving(proc) - {survivor, victim}, what="replacement worker").pop()
    assert workers_of(proc.pid) == {survivor, replacement}
    assert f"(pid {victim}) was killed by SIGKILL; starting another in 0.5s" in proc.log()
    for _ in range(5):
        assert requests.get(cluster.app_url + "/healthz", timeout=10).status_code == 200
    proc.signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    assert "Traceback" not in proc.log()


def test_workers_dying_again_and_again_make_the_supervisor_give_up(cluster):
    proc = cluster.start(2)
    killed: set[int] = set()
    deadline = time.monotonic() + 60
    while proc.proc.poll() is None and time.monotonic() < deadline:
        for pid in serving(proc) - killed:
            killed.add(pid)
            os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
    assert proc.wait(30) == EXIT_WORKERS, proc.log()
    log = proc.log()
    assert len(killed) == MAX_FAILURES
    # The back-off doubled between restarts.
    delays = re.findall(r"was killed by SIGKILL; starting another in (\S+)s", log)
    assert delays == ["0.5", "1.0", "2.0", "4.0"], log
    assert error_lines(log)[-1].startswith(
        f"tornado-signin: workers died {MAX_FAILURES} times within {FAILURE_WINDOW:g}s (the last: worker ")
    assert error_lines(log)[-1].endswith("was killed by SIGKILL); giving up")
    assert not any(Path(f"/proc/{pid}").exists() for pid in killed | workers_of(proc.pid))


def test_metrics_report_every_worker(cluster):
    proc = cluster.start(2)
    first, second = sorted(serving(proc))

    def only(other: int, logins: int) -> None:
        """Sign in ``logins`` times while ``other`` is stopped: the remaining worker takes them all."""
        os.kill(other, signal.SIGSTOP)
        try:
            for _ in range(logins):
                cluster.sign_in()
            assert cluster.signed_in() == total[0] + logins
        finally:
            os.kill(other, signal.SIGCONT)
        total[0] += logins

    total = [0.0]
    only(second, 3)
    only(first, 2)
    # Whichever worker answers, the scrape reports both; and counters never go backwards.
    seen = [cluster.signed_in() for _ in range(12)]
    assert seen == [5.0] * 12
    for stopped in (first, second):
        os.kill(stopped, signal.SIGSTOP)
        try:
            assert cluster.signed_in() == 5.0
        finally:
            os.kill(stopped, signal.SIGCONT)
    # A dead worker's logins stay counted; its replacement adds to the total.
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: len(serving(proc) - {first}) == 2, what="replacement worker")
    assert [cluster.signed_in() for _ in range(6)] == [5.0] * 6
    cluster.sign_in()
    assert [cluster.signed_in() for _ in range(6)] == [6.0] * 6
    proc.signal(signal.SIGTERM)
    assert proc.wait(30) == 0
