"""CI smoke of the benchmark (bench/, issues 7 and 16): the harness runs end to end and reports well-formed results.

A few seconds of load, no timing assertions: it only keeps the harness working (every login scenario, the
one-request login really carrying its state, the 200 sockets all accepted from one address, the three offline
scenarios refreshing every seeded user without an error).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


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
    offline = {"offline_refresh", "offline_ceiling", "offline_google_auth"}
    assert set(results) == {"ceiling", "signin", "signin_two_requests", "mixin", "flask", "echo",
                            "signin_state_only", "tornado_get", *offline}
    for name, result in results.items():
        assert result["throughput"] > 0, name
        assert result["completed"] > 0, name
        assert result["p99_ms"] >= result["p50_ms"] > 0, name
        assert not result["errors"], (name, result["errors"])
    # The one-request login used the state each answer carried, never GET /state.
    assert results["signin"]["states_carried"] > 0 and results["signin"]["state_fallbacks"] == 0
    users = report["meta"]["offline_users"]
    for name in offline:
        assert results[name]["completed"] == users, name  # every seeded user, once
    assert results["offline_refresh"]["refreshed"] == users  # every access token had expired

    sockets = report["sockets"]
    assert sockets["failed"] == 0 and sockets["open_at_end"] == sockets["sockets"] > 0
    assert sockets["probes"] > 0 and sockets["delivery_p99_ms"] > 0
    assert sockets["kb_per_socket"] > 0

    analysis = report["analysis"]
    assert analysis["ratios"]["login_vs_ceiling"] > 0
    assert 0 < analysis["ratios"]["two_request_bound"] < 1
    assert analysis["ratios"]["offline_vs_ceiling"] > 0 and analysis["ratios"]["offline_vs_google_auth"] > 0
    assert {t["name"] for t in analysis["targets"]} >= {"login_vs_ceiling", "login_vs_mixin", "login_vs_flask",
                                                          "p99_vs_mixin", "kb_per_socket", "delivery_p99_ms",
                                                          "offline_vs_ceiling", "offline_vs_google_auth"}
    for name in ("throughput", "p99_ms"):
        assert analysis["medians"]["signin"][name] > 0 and analysis["medians"]["offline_refresh"][name] > 0
    for scenario, medians in analysis["medians"].items():
        assert medians["ratio_to_ceiling"] > 0, scenario


def test_bench_token_client_compares_the_clients() -> None:
    """``python -m bench.token_client`` runs each client against its loopback server and reports each one."""
    run = subprocess.run([sys.executable, "-m", "bench.token_client", "--requests", "300", "--rounds", "1"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    medians = {line.split()[1]: float(line.split()[2]) for line in run.stdout.splitlines()
               if line.startswith("median ")}
    assert {"curl", "product"} <= set(medians), run.stdout
    assert all(value > 0 for value in medians.values()), run.stdout


def test_bench_token_endpoint_refuses_what_google_refuses(monkeypatch: pytest.MonkeyPatch) -> None:
    """The benchmark's bare token endpoint enforces PKCE and serves refreshes as the emulator's own /token does."""
    from urllib.parse import urlencode

    monkeypatch.syspath_prepend(str(ROOT))  # bench/ is a package of the checkout, not installed

    from bench.common import CLIENT_ID, CLIENT_SECRET, pkce_challenge
    from bench.emulator import BenchEmulator, TokenProtocol, bench_accounts
    from tornado_signin.emulator import EmulatorClient

    emulator = BenchEmulator(clients=[EmulatorClient(CLIENT_ID, CLIENT_SECRET, ("http://127.0.0.1",))],
                             accounts=bench_accounts(2), base_url="http://127.0.0.1:1", development=True,
                             pool_per_account=1)
    endpoint = TokenProtocol(emulator)

    def post(**form: str) -> tuple[int, dict]:
        body = urlencode({"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, **form}).encode()
        return endpoint.answer(["POST", "/token"], body, "")

    def exchange(challenge: str | None, **verifier: str) -> tuple[int, dict]:
        (code,) = emulator.mint_batch(1, challenge)
        return post(grant_type="authorization_code", code=code, redirect_uri="postmessage", **verifier)

    verifier = "v" * 50
    assert exchange(pkce_challenge(verifier)) == (400, {"error": "invalid_grant",
                                                        "error_description": "Missing code verifier."})
    assert exchange(pkce_challenge(verifier), code_verifier="w" * 50)[1]["error_description"] == "Invalid code verifier."
    assert exchange(None, code_verifier=verifier)[1]["error_description"] == "code_verifier or verifier is not needed"
    status, tokens = exchange(pkce_challenge(verifier), code_verifier=verifier)
    assert status == 200 and tokens["refresh_token"]

    status, refreshed = post(grant_type="refresh_token", refresh_token=tokens["refresh_token"])
    assert status == 200 and refreshed["access_token"] and refreshed["id_token"] and "refresh_token" not in refreshed
    assert post(grant_type="refresh_token", refresh_token="1//0bogus")[1]["error"] == "invalid_grant"
    (user,) = emulator.offline_grants(1)
    assert post(grant_type="refresh_token", refresh_token=user["refresh_token"])[0] == 200
    assert post(grant_type="password")[1]["error"] == "unsupported_grant_type"
