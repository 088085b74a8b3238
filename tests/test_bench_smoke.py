"""CI smoke of the benchmark (bench/, issue #7): the harness runs end to end and reports well-formed results.

A few seconds of load, no timing assertions: it only keeps the harness working.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent

# The peers' packages come with the test extra; a missing one is an install bug, not a reason to skip.
import flask  # noqa: E402,F401
import google_auth_oauthlib  # noqa: E402,F401
import gunicorn  # noqa: E402,F401


def test_bench_smoke(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, "-m", "bench.run", "--smoke", "--out", str(tmp_path)], cwd=ROOT,
                         capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    report = json.loads((tmp_path / "smoke.json").read_text())

    assert set(report) >= {"meta", "rounds", "sockets", "analysis"}
    assert report["meta"]["smoke"] is True
    (results,) = report["rounds"]
    assert set(results) == {"ceiling", "signin", "mixin", "flask", "echo", "signin_state_only", "tornado_get"}
    for name, result in results.items():
        assert result["throughput"] > 0, name
        assert result["completed"] > 0, name
        assert result["p99_ms"] >= result["p50_ms"] > 0, name
        assert not result["errors"], (name, result["errors"])

    sockets = report["sockets"]
    assert sockets["failed"] == 0 and sockets["open_at_end"] == sockets["sockets"] > 0
    assert sockets["probes"] > 0 and sockets["delivery_p99_ms"] > 0
    assert sockets["kb_per_socket"] > 0

    analysis = report["analysis"]
    assert analysis["ratios"]["login_vs_ceiling"] > 0
    assert 0 < analysis["ratios"]["two_request_bound"] < 1
    assert {t["name"] for t in analysis["targets"]} >= {"login_vs_ceiling", "login_vs_mixin", "login_vs_flask",
                                                          "p99_vs_ceiling", "kb_per_socket", "delivery_p99_ms",
                                                          "two_vs_one"}
    for scenario, medians in analysis["medians"].items():
        assert medians["ratio_to_ceiling"] > 0, scenario
