"""A partial grant from Google's granular consent screen, end to end through the server (issue 15 item 8).

Google lets the user untick individual non-sign-in scopes; the token
response's ``scope`` then lacks them
(https://developers.google.com/identity/protocols/oauth2/resources/granular-permissions: "your app should
check which scopes were granted ... and handle the case where ... not all"). The user is still signed in;
the offline API raises MissingScopeError for the missing scope, and asking again for it alone with
``include_granted_scopes`` completes the grant.
"""

from __future__ import annotations

import json
import re
import urllib.parse

import pytest
from tornado.httpclient import AsyncHTTPClient

from harness import CLIENT_ID, json_body, start_stack
from tornado_signin.errors import MissingScopeError

pytestmark = pytest.mark.gen_test(timeout=60)

DRIVE = "https://www.googleapis.com/auth/drive.appdata"
CALENDAR = "https://www.googleapis.com/auth/calendar.readonly"


@pytest.fixture
def stack(io_loop):
    stack = io_loop.run_sync(lambda: start_stack(google={"scopes": ["openid", "email", "profile", DRIVE, CALENDAR]}))
    yield stack
    io_loop.run_sync(stack.close)


async def consent_in_the_popup(stack, scope: str, *, tick: list[str], **extra: str) -> dict:
    """Open the emulator's consent page as the popup would, tick only ``tick``, approve; return the message."""
    http = AsyncHTTPClient()
    query = urllib.parse.urlencode({"client_id": CLIENT_ID, "redirect_uri": "postmessage", "origin": stack.app_url,
                                    "response_type": "code", "scope": scope, "access_type": "offline", **extra})
    page = (await http.fetch(f"{stack.emulator.base_url}/o/oauth2/v2/auth?{query}")).body.decode()
    offered = re.findall(r'type="checkbox" name="scope" id="[^"]+" value="([^"]+)"', page)
    consent = re.search(r'name="consent" value="([^"]+)"', page).group(1)
    form = [("consent", consent), ("action", "approve"), ("email", "alice@example.com"), ("granular", "1")]
    form += [("scope", name) for name in tick]
    answer = await http.fetch(f"{stack.emulator.base_url}/o/oauth2/v2/auth", method="POST",
                              body=urllib.parse.urlencode(form))
    data = re.search(r'<script type="application/json"[^>]*>(.*?)</script>', answer.body.decode(), re.S).group(1)
    message = json.loads(data)["message"]
    message["offered"] = offered
    return message


async def test_a_partial_grant_signs_in_and_the_missing_scope_raises(stack):
    message = await consent_in_the_popup(stack, f"openid email profile {DRIVE} {CALENDAR}", tick=[CALENDAR])
    assert message["offered"] == [DRIVE, CALENDAR]
    assert DRIVE not in message["scope"].split() and CALENDAR in message["scope"].split()
    response = await stack.client().post_code(message["code"])
    assert response.code == 200, response.body  # signed in with the partial grant
    sub = json_body(response)["user"]["sub"]
    assert DRIVE not in stack.store.get(sub).scopes
    offline = stack.ctx.offline
    assert (await offline.credentials(sub, required_scopes=[CALENDAR])).valid
    with pytest.raises(MissingScopeError) as caught:
        await offline.credentials(sub, required_scopes=[DRIVE])
    assert DRIVE in str(caught.value)
    # The feature that needs it asks for that scope again, with include_granted_scopes.
    again = await consent_in_the_popup(stack, DRIVE, tick=[DRIVE], include_granted_scopes="true")
    assert set(again["scope"].split()) >= {DRIVE, CALENDAR, "openid"}
    assert (await stack.client().post_code(again["code"])).code == 200
    assert (await offline.credentials(sub, required_scopes=[DRIVE, CALENDAR])).valid
