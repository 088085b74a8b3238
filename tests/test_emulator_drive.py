"""Drive v3 at the emulator, as google-api-python-client (unmodified) and raw HTTP see it.

The client is built the way the seed's sample and the example host app do:
``discovery.build('drive', 'v3', credentials=creds, static_discovery=True,
client_options={'api_endpoint': emulator.drive_endpoint})``.
"""

from __future__ import annotations

import json

import google.oauth2.credentials
import pytest
import requests
from googleapiclient import discovery
from googleapiclient.errors import HttpError

from tornado_signin.emulator import EmulatorClient, EmulatorThread
from tornado_signin.emulator.drive import parse_fields, select_fields

CLIENT = EmulatorClient("drive-client.apps.googleusercontent.com", "drive-secret", ("http://127.0.0.1:8080",))
OTHER = EmulatorClient("other-drive.apps.googleusercontent.com", "other-secret", ("http://127.0.0.1:8080",))
AUTH = "https://www.googleapis.com/auth/"
APPDATA = AUTH + "drive.appdata"
READONLY = AUTH + "drive.readonly"


@pytest.fixture(scope="module")
def runner():
    thread = EmulatorThread(clients=[CLIENT, OTHER])
    thread.start()
    yield thread
    thread.stop()


@pytest.fixture
def emu(runner):
    runner.emulator.reset()
    yield runner.emulator
    runner.emulator.reset()


def grant(emu, scope: str, email: str = "alice@example.com", client: EmulatorClient = CLIENT) -> dict:
    """Consent + code exchange over HTTP; return the token endpoint's answer."""
    code = emu.mint_code(client.client_id, email, scope, prompt="consent")
    response = requests.post(emu.base_url + "/token", data={
        "grant_type": "authorization_code", "code": code, "redirect_uri": "postmessage",
        "client_id": client.client_id, "client_secret": client.client_secret}, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def drive(emu, tokens: dict, client: EmulatorClient = CLIENT):
    creds = google.oauth2.credentials.Credentials(
        tokens["access_token"], refresh_token=tokens.get("refresh_token"), token_uri=emu.base_url + "/token",
        client_id=client.client_id, client_secret=client.client_secret)
    return discovery.build("drive", "v3", credentials=creds, static_discovery=True,
                           client_options={"api_endpoint": emu.drive_endpoint}), creds


def error_of(exc: HttpError) -> dict:
    return json.loads(exc.content)["error"]


def test_appfolder_and_listing_with_the_client_library(emu):
    service, _ = drive(emu, grant(emu, f"openid email {APPDATA}"))
    folder = service.files().get(fileId="appfolder").execute()
    assert folder == {"kind": "drive#file", "id": folder["id"], "name": "Application Data",
                      "mimeType": "application/vnd.google-apps.folder"}
    assert service.files().get(fileId="appDataFolder", fields="id").execute() == {"id": folder["id"]}
    listed = service.files().list(spaces="appDataFolder", fields="nextPageToken, files(id, name, parents)",
                                  pageSize=10).execute()
    assert sorted(f["name"] for f in listed["files"]) == ["settings.json", "sync-state.json"]
    assert all(f["parents"] == [folder["id"]] for f in listed["files"]) and "nextPageToken" not in listed
    # Another client of the same user has its own app folder.
    other, _ = drive(emu, grant(emu, APPDATA, client=OTHER), client=OTHER)
    assert other.files().get(fileId="appfolder").execute()["id"] != folder["id"]


def test_user_files_page_by_page(emu):
    service, _ = drive(emu, grant(emu, f"openid email {READONLY}"))
    default = service.files().list().execute()
    assert default["kind"] == "drive#fileList" and default["incompleteSearch"] is False
    assert set(default) == {"kind", "incompleteSearch", "files"}  # one page: no nextPageToken
    assert all(set(f) == {"kind", "id", "name", "mimeType"} for f in default["files"])
    names, token, pages = [], None, 0
    while True:
        page = service.files().list(pageSize=2, pageToken=token, fields="nextPageToken,files/name").execute()
        assert len(page["files"]) <= 2 and all(set(f) == {"name"} for f in page["files"])
        names += [f["name"] for f in page["files"]]
        pages += 1
        token = page.get("nextPageToken")
        if not token:
            break
    assert names == [f["name"] for f in default["files"]] and pages == 3 and len(names) == 6
    # list_next, the library's own paging helper, follows the same tokens.
    request, seen = service.files().list(pageSize=4, fields="nextPageToken, files(id)"), 0
    while request is not None:
        response = request.execute()
        seen += len(response["files"])
        request = service.files().list_next(request, response)
    assert seen == 6
    # Without nextPageToken in fields, Google leaves it out even if there is a next page.
    assert "nextPageToken" not in service.files().list(pageSize=2, fields="files(id)").execute()
    everything = service.files().list(fields="*").execute()["files"]
    assert {"owners", "modifiedTime", "trashed", "parents"} <= set(everything[0])
    one = service.files().get(fileId=everything[0]["id"], fields="id,name,owners(emailAddress)").execute()
    assert one == {"id": everything[0]["id"], "name": everything[0]["name"],
                   "owners": [{"emailAddress": "alice@example.com"}]}
    # Bob's files are his, not Alice's.
    bob, _ = drive(emu, grant(emu, READONLY, email="bob@gmail.com"))
    assert not {f["id"] for f in bob.files().list().execute()["files"]} & {f["id"] for f in everything}


def test_q_and_order_by(emu):
    service, _ = drive(emu, grant(emu, READONLY))
    live = service.files().list(q="trashed = false", fields="files(name,trashed)").execute()["files"]
    assert len(live) == 5 and not any(f["trashed"] for f in live)
    docs = service.files().list(q="mimeType = 'application/vnd.google-apps.folder' and trashed = false").execute()
    assert [f["name"] for f in docs["files"]] == ["Reports"]
    assert [f["name"] for f in service.files().list(q="name contains 'PLAN'").execute()["files"]] == ["Project plan"]
    assert len(service.files().list(q="'root' in parents").execute()["files"]) == 6
    ordered = service.files().list(orderBy="name", fields="files(name)").execute()["files"]
    assert [f["name"] for f in ordered] == sorted((f["name"] for f in ordered), key=str.lower)
    with pytest.raises(HttpError) as caught:
        service.files().list(q="fullText contains 'x'").execute()
    assert caught.value.status_code == 400 and error_of(caught.value)["errors"][0]["location"] == "q"


def test_scopes_decide_what_a_token_sees(emu):
    appdata_only, _ = drive(emu, grant(emu, APPDATA))
    with pytest.raises(HttpError) as caught:
        appdata_only.files().list().execute()  # spaces=drive by default
    error = error_of(caught.value)
    assert caught.value.status_code == 403 and error["errors"][0]["reason"] == "insufficientScopes"
    assert error["message"] == "The granted scopes do not give access to all of the requested spaces."
    user_file = drive(emu, grant(emu, READONLY))[0].files().list(pageSize=1).execute()["files"][0]["id"]
    appdata_only, _ = drive(emu, grant(emu, APPDATA))
    with pytest.raises(HttpError) as caught:
        appdata_only.files().get(fileId=user_file).execute()
    assert caught.value.status_code == 403
    assert error_of(caught.value)["errors"][0]["reason"] == "insufficientPermissions"

    # A Drive read scope does not open the app folder: that is drive.appdata's alone.
    full, _ = drive(emu, grant(emu, AUTH + "drive"))
    with pytest.raises(HttpError) as caught:
        full.files().get(fileId="appfolder").execute()
    assert caught.value.status_code == 403
    assert error_of(caught.value)["errors"][0]["reason"] == "insufficientPermissions"
    with pytest.raises(HttpError) as caught:
        full.files().list(spaces="appDataFolder").execute()
    assert error_of(caught.value)["errors"][0]["reason"] == "insufficientScopes"

    # No Drive scope at all: Google's insufficient-scope answer, with its challenge.
    profile, _ = drive(emu, grant(emu, "openid email profile"))
    with pytest.raises(HttpError) as caught:
        profile.files().list().execute()
    error = error_of(caught.value)
    assert error == {
        "code": 403, "message": "Request had insufficient authentication scopes.",
        "errors": [{"message": "Insufficient Permission", "domain": "global", "reason": "insufficientPermissions"}],
        "status": "PERMISSION_DENIED", "details": error["details"]}
    assert error["details"][0]["reason"] == "ACCESS_TOKEN_SCOPE_INSUFFICIENT"
    assert 'error="insufficient_scope"' in caught.value.resp["www-authenticate"]

    # drive.file sees only what the app created; the rest does not exist for it.
    per_file, _ = drive(emu, grant(emu, AUTH + "drive.file"))
    assert [f["name"] for f in per_file.files().list().execute()["files"]] == ["notes.txt"]
    with pytest.raises(HttpError) as caught:
        per_file.files().get(fileId=user_file).execute()
    assert caught.value.status_code == 404


def test_expired_token_is_refreshed_by_the_client_library(emu):
    emu.configure(access_token_ttl=1)
    tokens = grant(emu, f"openid {APPDATA}")
    emu.configure(access_token_ttl=3600)
    service, creds = drive(emu, tokens)
    before = emu.stats["token.refresh_token"]
    import time
    time.sleep(1.1)
    assert service.files().get(fileId="appfolder", fields="name").execute() == {"name": "Application Data"}
    assert emu.stats["token.refresh_token"] == before + 1 and creds.token != tokens["access_token"]


def test_401_bodies_and_revoked_grants(emu):
    url = emu.drive_endpoint + "files"
    missing = requests.get(url, timeout=10)
    assert missing.status_code == 401 and missing.headers["WWW-Authenticate"] == 'Bearer realm="https://accounts.google.com/"'
    error = missing.json()["error"]
    assert error["status"] == "UNAUTHENTICATED" and error["errors"][0] == {
        "message": "Login Required.", "domain": "global", "reason": "required",
        "location": "Authorization", "locationType": "header"}
    assert error["message"].startswith("Request is missing required authentication credential.")
    bogus = requests.get(url, headers={"Authorization": "Bearer ya29.nope"}, timeout=10)
    assert bogus.status_code == 401 and bogus.json()["error"]["errors"][0]["reason"] == "authError"
    assert 'error="invalid_token"' in bogus.headers["WWW-Authenticate"]

    tokens = grant(emu, READONLY)
    headers = {"Authorization": "Bearer " + tokens["access_token"]}
    assert requests.get(url, headers=headers, timeout=10).status_code == 200
    assert requests.get(url, params={"access_token": tokens["access_token"]}, timeout=10).status_code == 200
    requests.post(emu.base_url + "/revoke", data={"token": tokens["refresh_token"]}, timeout=10)
    assert requests.get(url, headers=headers, timeout=10).status_code == 401


@pytest.mark.parametrize("params,location", [
    ({"pageSize": "0"}, "pageSize"), ({"pageSize": "1001"}, "pageSize"), ({"pageSize": "ten"}, "pageSize"),
    ({"pageToken": "garbage"}, "pageToken"), ({"pageToken": "~!!~e30="}, "pageToken"),
    ({"pageToken": "~!!~\u00e9"}, "pageToken"), ({"fields": "files(id"}, "fields"), ({"fields": "colour"}, "fields"),
    ({"fields": "files(colour)"}, "fields"), ({"fields": ",,"}, "fields"), ({"fields": "(" * 50}, "fields"),
    ({"spaces": "photos"}, "spaces"), ({"orderBy": "size desc"}, "orderBy"), ({"q": "name = "}, "q"),
])
def test_bad_parameters_are_400s_naming_the_parameter(emu, params, location):
    tokens = grant(emu, READONLY)
    response = requests.get(emu.drive_endpoint + "files", params=params,
                            headers={"Authorization": "Bearer " + tokens["access_token"]}, timeout=10)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["errors"][0]["location"] == location


def test_a_page_token_belongs_to_its_query(emu):
    tokens = grant(emu, READONLY)
    headers = {"Authorization": "Bearer " + tokens["access_token"]}
    first = requests.get(emu.drive_endpoint + "files", params={"pageSize": 2, "fields": "nextPageToken"},
                         headers=headers, timeout=10).json()
    other = requests.get(emu.drive_endpoint + "files", headers=headers, timeout=10,
                         params={"pageSize": 2, "pageToken": first["nextPageToken"], "q": "trashed = false"})
    assert other.status_code == 400 and other.json()["error"]["errors"][0]["location"] == "pageToken"


def test_unknown_file_is_googles_404(emu):
    service, _ = drive(emu, grant(emu, READONLY))
    with pytest.raises(HttpError) as caught:
        service.files().get(fileId="1nope").execute()
    assert caught.value.status_code == 404
    assert error_of(caught.value) == {"code": 404, "message": "File not found: 1nope.", "errors": [{
        "message": "File not found: 1nope.", "domain": "global", "reason": "notFound",
        "location": "fileId", "locationType": "parameter"}]}


def test_drive_faults_and_stats(emu):
    service, _ = drive(emu, grant(emu, APPDATA))
    emu.faults.add("drive.files.get", "status", status=503)
    with pytest.raises(HttpError) as caught:
        service.files().get(fileId="appfolder").execute(num_retries=0)
    assert caught.value.status_code == 503
    service.files().get(fileId="appfolder").execute()
    assert emu.stats["drive.files.get"] == 2 and emu.stats["drive"] == 2


def test_fields_grammar():
    tree = parse_fields("kind,files(id,owners/displayName),files/name, nextPageToken")
    assert tree == {"kind": None, "files": {"id": None, "owners": {"displayName": None}, "name": None},
                    "nextPageToken": None}
    value = {"kind": "k", "files": [{"id": 1, "name": "n", "size": 3, "owners": [{"displayName": "A", "me": True}]}]}
    assert select_fields(value, tree) == {"kind": "k", "files": [{"id": 1, "name": "n",
                                                                  "owners": [{"displayName": "A"}]}]}
    assert select_fields(value, parse_fields("*")) == value
    assert select_fields(value, parse_fields("files(*)")) == {"files": value["files"]}


WEIRD = ["", " ", "*", "()", "files()", "a" * 5000, "'", "\\", "%00", "\u2603", "-1", "1e3", "files(id)(name)",
         "files/", "/files", "name = 'a' and", "'x' in parents and trashed = maybe", "~!!~" + "A" * 30, "null"]


@pytest.mark.parametrize("name", ["fields", "pageSize", "pageToken", "q", "spaces", "orderBy", "alt"])
def test_no_value_makes_a_5xx(emu, name):
    tokens = grant(emu, f"{READONLY} {APPDATA}")
    headers = {"Authorization": "Bearer " + tokens["access_token"]}
    for value in WEIRD:
        for path in ("files", "files/appfolder", "files/" + requests.utils.quote(value or "x", safe="")):
            response = requests.get(emu.drive_endpoint + path, params={name: value}, headers=headers, timeout=10)
            assert response.status_code < 500, (path, name, value, response.text)
            assert "error" in response.json() or response.status_code == 200
