"""tornado_signin.wiring: every entry point that builds services installs log redaction."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap

from harness import CLIENT_SECRET, COOKIE_SECRET, make_config
from test_cli import emulator_thread, store_bob_with_an_expired_access_token, write_config  # noqa: F401
from tornado_signin.collector import GC_YOUNG_THRESHOLD, settled_collector
from tornado_signin.config import load_config
from tornado_signin.crypto import generate_key
from tornado_signin.scripts import run_offline
from tornado_signin.wiring import open_store

SCRIPT = textwrap.dedent("""
    import logging, sys, time
    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
    from tornado_signin.config import load_config
    from tornado_signin.scripts import authorized_session, get_credentials, run_offline

    config = load_config(sys.argv[1])
    creds = get_credentials(config, "bob@gmail.com")           # refreshes the expired access token
    assert creds.valid
    run_offline(config, lambda offline: offline.fresh_record("bob@gmail.com", force=True))
    session = authorized_session(config, "bob@gmail.com")
    session.token = {**session.token, "expires_at": time.time() - 5, "expires_in": -5}
    assert session.get(config.google.endpoints.userinfo_uri, timeout=10).status_code == 200   # requests-oauthlib refreshes
    print("done")
""")


def test_a_script_logging_at_debug_logs_no_token_or_secret(tmp_path, emulator_thread):  # noqa: F811
    """issue 11 item 4: get_credentials / run_offline / authorized_session from a script at DEBUG."""
    emulator, _, app_url = emulator_thread
    env = {"TS_COOKIE": COOKIE_SECRET, "TS_CLIENT_SECRET": CLIENT_SECRET, "TS_KEY": generate_key()}
    config_path = write_config(tmp_path, emulator.base_url, app_url)
    config = load_config(config_path, environ=env)
    sub, reply = store_bob_with_an_expired_access_token(config, emulator)
    emulator.configure(access_token_ttl=3600)

    result = subprocess.run([sys.executable, "-c", SCRIPT, str(config_path)], capture_output=True, text=True,
                            env={**os.environ, **env, "OAUTHLIB_INSECURE_TRANSPORT": "1"}, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "done", result.stderr[-3000:]
    assert emulator.stats["token.refresh_token"] == 3
    # The refresh POSTs were logged (the token client's and requests-oauthlib's debug output) ...
    assert "/token" in result.stderr and "grant_type=refresh_token" in result.stderr
    # ... without the secrets in them.
    store = open_store(config)
    latest = store.get(sub)
    store.close()
    for secret in (reply["refresh_token"], reply["access_token"], latest.access_token, CLIENT_SECRET, COOKIE_SECRET,
                   env["TS_KEY"]):
        assert secret and secret not in result.stderr
    assert "ya29." not in result.stderr.replace("ya29.expired", "")


def _collector() -> tuple[tuple[int, int, int], int]:
    return gc.get_threshold(), gc.get_freeze_count()


def test_run_offline_settles_the_collector_for_its_run_only():
    """A script's process: the bulk job's collector settling (frozen, young threshold raised) ends with the run."""
    gc.unfreeze()
    before = _collector()
    assert before[0][0] < GC_YOUNG_THRESHOLD and before[1] == 0

    async def work(offline):
        return _collector()

    (threshold, frozen) = run_offline(make_config("http://127.0.0.1:1", "http://127.0.0.1:1"), work)
    assert threshold == (GC_YOUNG_THRESHOLD, *before[0][1:]) and frozen > 0
    assert _collector() == before


def test_settled_collector_blocks_share_one_settling_and_keep_what_was_set_before():
    gc.unfreeze()
    before = _collector()
    with settled_collector():
        with settled_collector(young=50):  # a second block (another thread's run) changes nothing
            assert _collector()[0][0] == GC_YOUNG_THRESHOLD
        assert _collector()[0][0] == GC_YOUNG_THRESHOLD and gc.get_freeze_count() > 0  # the first is still open
    assert _collector() == before
    # Frozen already (serve's settle_collector) and a higher threshold: both are left as they were.
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        gc.set_threshold(2 * GC_YOUNG_THRESHOLD, *before[0][1:])
        with settled_collector():
            assert _collector() == ((2 * GC_YOUNG_THRESHOLD, *before[0][1:]), frozen)
        assert _collector() == ((2 * GC_YOUNG_THRESHOLD, *before[0][1:]), frozen)
    finally:
        gc.set_threshold(*before[0])
        gc.unfreeze()
