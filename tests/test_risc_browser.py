"""Cross-Account Protection in Chromium: the open page shows signed out when Google's security event arrives."""

from __future__ import annotations

import pytest

from test_browser import sign_in
from test_risc_deploy import RiscDeployment, run_cli

pytestmark = pytest.mark.browser


@pytest.fixture
def single(tmp_path, unique_name):
    deployment = RiscDeployment(tmp_path, None, None, unique_name, instances=1)
    yield deployment
    deployment.close()


def test_open_page_shows_signed_out_after_a_security_event(chromium, single):
    registered = run_cli("risc", "register", "--config", str(single.config), "--url", single.urls[0] + "/risc")
    assert registered.returncode == 0, registered.stderr
    page, status = sign_in(chromium, single.urls[0], "carol@example.org")
    assert "fully logged in" in status
    summary = single.event(type="sessions-revoked", email="carol@example.org")
    assert [d["statuses"] for d in summary["deliveries"]] == [[202]]
    page.locator("#status", has_text="Signed out").wait_for(timeout=10000)
    # A reload does not bring the session back (its record is gone).
    page.reload()
    page.wait_for_selector("#signinButton:not([disabled])")
    assert "carol@example.org" not in (page.text_content("#status") or "")
    page.context.close()


def test_removing_access_on_the_permissions_page_revokes_the_grant(chromium, single):
    assert run_cli("risc", "register", "--config", str(single.config), "--url",
                   single.urls[0] + "/risc").returncode == 0
    page, _ = sign_in(chromium, single.urls[0], "bob@gmail.com")
    account = page.context.new_page()
    account.goto(single.emulator_url + "/permissions?authuser=bob@gmail.com")
    account.click("button.remove")
    account.locator("#message", has_text="Access removed").wait_for(timeout=10000)
    page.locator("#status", has_text="Signed out").wait_for(timeout=10000)  # tokens-revoked ends the sessions
    import json

    users = json.loads(run_cli("users", "--config", str(single.config), "--json").stdout)
    (bob,) = [u for u in users if u["email"] == "bob@gmail.com"]
    assert bob["state"] == "revoked" and bob["security_event"] == "tokens-revoked"
    page.context.close()


def test_consent_page_offers_time_limited_access(chromium, single):
    context = chromium.new_context()
    page = context.new_page()
    page.goto(single.urls[0] + "/")
    page.wait_for_selector("#signinButton:not([disabled])")
    with page.expect_popup() as popup_info:
        page.click("#signinButton")
    popup = popup_info.value
    popup.wait_for_load_state()
    popup.check("input[data-email='alice@example.com']")
    popup.select_option("#access-duration", "3600")
    popup.click("#approve")
    page.locator("#status", has_text="fully logged in").wait_for(timeout=15000)
    page.locator("#status", has_text="for a limited time").wait_for(timeout=10000)
    # One hour is within the default notice: the access_expiring frame follows and offers renewal.
    page.locator("#status", has_text="to renew it").wait_for(timeout=10000)
    assert page.is_visible("#signinButton")
    import json

    users = json.loads(run_cli("users", "--config", str(single.config), "--json").stdout)
    (alice,) = [u for u in users if u["email"] == "alice@example.com"]
    assert alice["refresh_token_expires_at"]
    table = run_cli("users", "--config", str(single.config)).stdout.splitlines()
    assert "ACCESS_UNTIL" in table[0]
    (row,) = [line for line in table if "alice@example.com" in line]
    assert alice["refresh_token_expires_at"] in row
    context.close()
