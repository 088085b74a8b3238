"""Drive v3, as far as a host app listing its users' files needs it: ``files.list`` and ``files.get``.

Paths (Google's, under ``/drive/v3/``; point google-api-python-client at
them with ``client_options={"api_endpoint": emulator_url + "/drive/v3/"}``,
as one would with ``https://www.googleapis.com/drive/v3/``)::

    GET /drive/v3/files              files.list: spaces, fields, pageSize, pageToken, q, orderBy
    GET /drive/v3/files/{fileId}     files.get: fields; fileId may be an alias

Every test account has the same few fake files (ids differ per account):
in its Drive (space ``drive``, parent ``root``) a Doc, a Sheet, a folder, a
JPEG, a text file and a trashed draft; in each client's application data
folder (space ``appDataFolder``) ``settings.json`` and ``sync-state.json``.
Aliases: ``root`` (My Drive), ``appDataFolder`` / ``appfolder`` /
``appdata`` (the calling client's application data folder).

Access, as Google decides it from the Bearer token's scopes:

* no token: 401 ``required``; an unknown, expired or revoked token: 401
  ``authError`` (google-auth refreshes and retries on 401);
* none of the Drive scopes: 403 ``insufficientPermissions``;
* the app folder and its files need ``drive.appdata``; the user's files a
  read scope (``drive``, ``drive.readonly``, ``drive.metadata``,
  ``drive.metadata.readonly``); ``drive.file`` sees only the files the app
  created (here: ``notes.txt``) and answers 404 for the others. A file whose
  scope is missing: 403 ``insufficientPermissions``; a list whose ``spaces``
  the token cannot see: 403 ``insufficientScopes``;
* an unknown file: 404 ``notFound``; a bad ``fields``, ``pageSize``,
  ``pageToken``, ``spaces``, ``orderBy`` or ``q``: 400 naming the parameter.

``fields`` is Google's partial-response syntax (``nextPageToken,
files(id,name)``, ``files/name``, ``*``). Without it a list answers
``kind, incompleteSearch, files(kind,id,name,mimeType)`` and
``nextPageToken`` when there is a next page, as Google does. ``q`` supports
clauses joined by ``and``: ``trashed = true|false``, ``name = '…'``, ``name
contains '…'``, ``mimeType = '…'`` / ``!=``, ``'ID' in parents``; any other
query is a 400 (Google would accept it: the emulator says so in its log).

Error bodies are Google's API shape: ``{"error": {"code", "message",
"errors": [{"message", "domain", "reason", …}], "status", …}}``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import re
from dataclasses import dataclass
from typing import Any

from .handlers import EmulatorHandler
from .state import TestAccount

__all__ = [
    "DRIVE_HANDLERS",
    "DRIVE_SCOPES",
    "APPDATA_SCOPE",
    "READ_SCOPES",
    "FILE_SCOPE",
    "DriveError",
    "drive_files",
    "parse_fields",
    "select_fields",
]

log = logging.getLogger(__name__)

_AUTH = "https://www.googleapis.com/auth/"
APPDATA_SCOPE = _AUTH + "drive.appdata"
FILE_SCOPE = _AUTH + "drive.file"
#: Scopes that read the user's whole Drive (metadata at least).
READ_SCOPES = frozenset(
    _AUTH + name for name in ("drive", "drive.readonly", "drive.metadata", "drive.metadata.readonly")
)
#: Every scope files.list / files.get accept (the discovery document's list).
DRIVE_SCOPES = frozenset(
    {APPDATA_SCOPE, FILE_SCOPE, *READ_SCOPES, _AUTH + "drive.photos.readonly", _AUTH + "drive.meet.readonly"}
)

FOLDER = "application/vnd.google-apps.folder"
APPDATA_ALIASES = ("appDataFolder", "appfolder", "appdata")
MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 100

#: Fields of a file when ``fields`` is not given, as Drive v3 answers.
DEFAULT_FILE_FIELDS = ("kind", "id", "name", "mimeType")
#: The File resource's properties (Drive v3 discovery document), for ``fields`` validation.
FILE_PROPERTIES = frozenset(
    """appProperties capabilities clientEncryptionDetails contentHints contentRestrictions
    copyRequiresWriterPermission createdTime description downloadRestrictions driveId explicitlyTrashed
    exportLinks fileExtension folderColorRgb fullFileExtension hasAugmentedPermissions hasThumbnail
    headRevisionId iconLink id imageMediaMetadata inheritedPermissionsDisabled isAppAuthorized kind
    labelInfo lastModifyingUser linkShareMetadata md5Checksum mimeType modifiedByMe modifiedByMeTime
    modifiedTime name originalFilename ownedByMe owners parents permissionIds permissions properties
    quotaBytesUsed resourceKey sha1Checksum sha256Checksum shared sharedWithMeTime sharingUser
    shortcutDetails size spaces starred teamDriveId thumbnailLink thumbnailVersion trashed trashedTime
    trashingUser version videoMediaMetadata viewedByMe viewedByMeTime viewersCanCopyContent
    webContentLink webViewLink writersCanShare""".split()
)
LIST_PROPERTIES = frozenset({"kind", "nextPageToken", "incompleteSearch", "files"})

_LOGIN = "See https://developers.google.com/identity/sign-in/web/devconsole-project."
_REALM = 'Bearer realm="https://accounts.google.com/"'


class DriveError(Exception):
    """A Drive API error reply: ``status``, ``body`` (Google's JSON) and extra ``headers``."""

    def __init__(self, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{status} {body['error']['errors'][0]['reason']}")
        self.status = status
        self.body = body
        self.headers = headers or {}
        self.reason = body["error"]["errors"][0]["reason"]


def _error(status: int, message: str, reason: str, *, item_message: str | None = None, location: str | None = None,
           location_type: str = "parameter", status_name: str | None = None,
           details: list[dict] | None = None, headers: dict[str, str] | None = None) -> DriveError:
    item: dict[str, str] = {"message": item_message or message, "domain": "global", "reason": reason}
    if location is not None:
        item.update(location=location, locationType=location_type)
    error: dict[str, Any] = {"code": status, "message": message, "errors": [item]}
    if status_name:
        error["status"] = status_name
    if details:
        error["details"] = details
    return DriveError(status, {"error": error}, headers)


def _error_info(reason: str, method: str) -> list[dict]:
    return [{
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "reason": reason,
        "domain": "googleapis.com",
        "metadata": {"service": "drive.googleapis.com", "method": f"google.apps.drive.v3.DriveFiles.{method}"},
    }]


def invalid(location: str, message: str = "Invalid Value") -> DriveError:
    """Return the 400 ``invalid`` error Google gives for a bad ``location`` parameter."""
    return _error(400, message, "invalid", location=location)


# -- fake files ----------------------------------------------------------------------


def _file_id(*parts: str) -> str:
    """Return a stable Drive-looking id (33 characters of ``[A-Za-z0-9_-]``) for ``parts``."""
    digest = hashlib.sha256("\x00".join(parts).encode()).digest()
    return "1" + base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")[:32]


@dataclass(frozen=True)
class _Spec:
    name: str
    mime_type: str
    modified: str
    size: int | None = None
    trashed: bool = False
    starred: bool = False
    created_by_app: bool = False


_USER_FILES = (
    _Spec("Project plan", "application/vnd.google-apps.document", "2026-11-30T16:20:11.512Z", starred=True),
    _Spec("Budget 2026", "application/vnd.google-apps.spreadsheet", "2026-11-28T09:02:45.004Z"),
    _Spec("Reports", FOLDER, "2026-11-20T12:00:00.000Z"),
    _Spec("Team photo.jpg", "image/jpeg", "2026-11-12T18:44:03.250Z", size=482133),
    _Spec("notes.txt", "text/plain", "2026-11-05T07:31:59.901Z", size=1204, created_by_app=True),
    _Spec("Old draft.docx", "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
          "2026-10-01T10:10:10.100Z", size=20480, trashed=True),
)
_APP_FILES = (
    _Spec("settings.json", "application/json", "2026-11-30T08:00:00.000Z", size=187, created_by_app=True),
    _Spec("sync-state.json", "application/json", "2026-11-29T23:59:30.000Z", size=64, created_by_app=True),
)


def _resource(spec: _Spec, file_id: str, parent: str, space: str, owner: TestAccount) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "kind": "drive#file",
        "id": file_id,
        "name": spec.name,
        "mimeType": spec.mime_type,
        "starred": spec.starred,
        "trashed": spec.trashed,
        "explicitlyTrashed": spec.trashed,
        "parents": [parent],
        "spaces": [space],
        "version": str(1000 + len(spec.name)),
        "createdTime": spec.modified[:8] + "01T00:00:00.000Z",
        "modifiedTime": spec.modified,
        "ownedByMe": True,
        "owners": [{
            "kind": "drive#user",
            "displayName": owner.name,
            "me": True,
            "permissionId": owner.sub[-20:],
            "emailAddress": owner.email,
        }],
        "shared": False,
        "isAppAuthorized": spec.created_by_app,
    }
    if space == "drive":
        resource["webViewLink"] = f"https://drive.google.com/file/d/{file_id}/view?usp=drivesdk"
    if spec.size is not None:
        resource["size"] = str(spec.size)
        resource["quotaBytesUsed"] = str(spec.size)
        resource["md5Checksum"] = hashlib.md5(file_id.encode(), usedforsecurity=False).hexdigest()
        if "." in spec.name:
            resource["fileExtension"] = resource["fullFileExtension"] = spec.name.rsplit(".", 1)[1]
            resource["originalFilename"] = spec.name
    else:
        resource["quotaBytesUsed"] = "0"
    return resource


@dataclass(frozen=True)
class _Files:
    root: dict[str, Any]
    appfolder: dict[str, Any]
    files: tuple[dict[str, Any], ...]
    app_created: frozenset[str]


def drive_files(account: TestAccount, client_id: str) -> _Files:
    """Return ``account``'s fake Drive as ``client_id`` sees it: root, app folder, every file (fresh dicts)."""
    root_id = "0A" + _file_id("root", account.sub)[1:20] + "Uk9PVA"
    app_id = _file_id("appDataFolder", client_id, account.sub)
    root = {"kind": "drive#file", "id": root_id, "name": "My Drive", "mimeType": FOLDER, "parents": [],
            "spaces": ["drive"], "trashed": False, "ownedByMe": True}
    appfolder = {"kind": "drive#file", "id": app_id, "name": "Application Data", "mimeType": FOLDER,
                 "parents": [], "spaces": ["appDataFolder"], "trashed": False, "ownedByMe": True}
    files = [_resource(s, _file_id("drive", account.sub, s.name), root_id, "drive", account) for s in _USER_FILES]
    files += [_resource(s, _file_id("app", client_id, account.sub, s.name), app_id, "appDataFolder", account)
              for s in _APP_FILES]
    app_created = frozenset(f["id"] for f in files if f["isAppAuthorized"])
    return _Files(root, appfolder, tuple(files), app_created)


# -- partial responses ---------------------------------------------------------------

_FIELD_NAME_RE = re.compile(r"[A-Za-z0-9_$@.\-]+|\*")

#: A ``fields`` selection: name -> sub-selection (None: the whole value).
Selection = dict[str, "Selection | None"]


def parse_fields(text: str) -> Selection:
    """Return the selection tree of a ``fields`` parameter (Google's partial-response syntax).

    ``a,b/c,d(e,f/g)``: ``b/c`` is ``b(c)``. Raise :class:`DriveError`
    (400 ``invalidParameter``) for a malformed selection.
    """
    pos = 0

    def fail() -> DriveError:
        snippet = text[:100]
        return _error(400, f"Invalid field selection {snippet}", "invalidParameter", location="fields")

    def selection(depth: int) -> Selection:
        nonlocal pos
        tree: Selection = {}
        while True:
            while pos < len(text) and text[pos] == " ":
                pos += 1
            path = []
            while True:
                match = _FIELD_NAME_RE.match(text, pos)
                if match is None:
                    raise fail()
                path.append(match.group())
                pos = match.end()
                if pos < len(text) and text[pos] == "/":
                    pos += 1
                    continue
                break
            sub: Selection | None = None
            if pos < len(text) and text[pos] == "(":
                if depth > 8:
                    raise fail()
                pos += 1
                sub = selection(depth + 1)
                if pos >= len(text) or text[pos] != ")":
                    raise fail()
                pos += 1
            for name in reversed(path[1:]):
                sub = {name: sub}
            _merge(tree, path[0], sub)
            while pos < len(text) and text[pos] == " ":
                pos += 1
            if pos < len(text) and text[pos] == ",":
                pos += 1
                continue
            return tree

    tree = selection(0)
    if pos != len(text):
        raise fail()
    return tree


def _merge(tree: Selection, name: str, sub: Selection | None) -> None:
    if name not in tree:
        tree[name] = sub
    elif tree[name] is None or sub is None:
        tree[name] = None
    else:
        existing = tree[name]
        assert existing is not None
        for key, value in sub.items():
            _merge(existing, key, value)


def check_fields(tree: Selection, allowed: frozenset[str]) -> None:
    """Raise :class:`DriveError` when ``tree`` names a property the resource does not have.

    ``allowed`` are the top-level names; the ``files`` sub-selection (a list
    answer) is checked against the File resource.
    """
    for name, sub in tree.items():
        if name != "*" and name not in allowed:
            raise _error(400, f"Invalid field selection {name}", "invalidParameter", location="fields")
        if name == "files" and sub is not None:
            check_fields(sub, FILE_PROPERTIES)


def select_fields(value: Any, tree: Selection | None) -> Any:
    """Return the part of ``value`` that the selection ``tree`` names (lists are mapped element-wise)."""
    if tree is None:
        return value
    if isinstance(value, list):
        return [select_fields(item, tree) for item in value]
    if not isinstance(value, dict):
        return value
    if "*" in tree:
        wildcard = tree["*"]
        return {key: select_fields(item, tree.get(key, wildcard)) for key, item in value.items()}
    return {key: select_fields(value[key], sub) for key, sub in tree.items() if key in value}


# -- queries --------------------------------------------------------------------------

_STRING = r"'((?:[^'\\]|\\.)*)'"
_CLAUSES = (
    (re.compile(r"^trashed\s*(=|!=)\s*(true|false)$"), "trashed"),
    (re.compile(r"^name\s*(=|!=)\s*" + _STRING + "$"), "name"),
    (re.compile(r"^name\s+(contains)\s+" + _STRING + "$"), "name"),
    (re.compile(r"^mimeType\s*(=|!=)\s*" + _STRING + "$"), "mimeType"),
    (re.compile("^" + _STRING + r"\s+(in)\s+parents$"), "parents"),
)


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def parse_query(q: str) -> list[tuple[str, str, Any]]:
    """Return the clauses of ``q`` as ``(field, operator, value)``; raise :class:`DriveError` 400 otherwise."""
    clauses = []
    for part in re.split(r"\s+and\s+", q.strip()):
        for pattern, name in _CLAUSES:
            match = pattern.match(part.strip())
            if match is None:
                continue
            if name == "trashed":
                clauses.append(("trashed", match.group(1), match.group(2) == "true"))
            elif name == "parents":
                clauses.append(("parents", "in", _unescape(match.group(1))))
            else:
                clauses.append((name, match.group(1), _unescape(match.group(2))))
            break
        else:
            log.info("drive: q clause not supported by the emulator")
            raise invalid("q")
    return clauses


def _matches(resource: dict[str, Any], clauses: list[tuple[str, str, Any]], aliases: dict[str, str]) -> bool:
    for name, operator, value in clauses:
        if name == "parents":
            if aliases.get(value, value) not in resource["parents"]:
                return False
            continue
        actual = resource[name]
        if operator == "contains":
            ok = value.lower() in actual.lower()
        else:
            ok = actual == value
            if operator == "!=":
                ok = not ok
        if not ok:
            return False
    return True


_ORDER_KEYS = {"name", "modifiedTime", "createdTime", "folder", "starred", "name_natural", "recency",
               "quotaBytesUsed", "viewedByMeTime", "modifiedByMeTime", "sharedWithMeTime"}


def _sort(files: list[dict[str, Any]], order_by: str) -> list[dict[str, Any]]:
    keys = []
    for part in order_by.split(","):
        words = part.split()
        if not words or len(words) > 2 or words[0] not in _ORDER_KEYS or (len(words) == 2 and words[1] != "desc"):
            raise invalid("orderBy", "Invalid Value")
        keys.append((words[0], len(words) == 2))
    for key, descending in reversed(keys):
        def sort_key(resource: dict[str, Any], key: str = key) -> Any:
            if key == "folder":
                return resource["mimeType"] != FOLDER
            if key in ("name", "name_natural"):
                return resource["name"].lower()
            if key == "recency":
                return resource["modifiedTime"]
            if key == "quotaBytesUsed":
                return int(resource.get("quotaBytesUsed", "0"))
            return resource.get(key) or ""
        files = sorted(files, key=sort_key, reverse=descending)
    return files


# -- handlers ------------------------------------------------------------------------


class DriveHandler(EmulatorHandler):
    """Base of the Drive handlers: the Bearer token, scope checks, Google API error bodies."""

    #: The Drive method name in Google's ErrorInfo details (``List``, ``Get``).
    method = ""

    def caller(self) -> tuple[TestAccount, str, frozenset[str]]:
        """Return ``(account, client_id, scopes)`` of the request's live access token.

        Raise :class:`DriveError` 401 for a missing or dead token and 403
        ``insufficientPermissions`` when it carries no Drive scope.
        """
        auth = self.request.headers.get("Authorization", "")
        if auth:
            token = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        else:
            token = self.get_query_argument("access_token", "")
        if not token and not auth:
            raise _error(
                401, "Request is missing required authentication credential. Expected OAuth 2 access token, "
                f"login cookie or other valid authentication credential. {_LOGIN}", "required",
                item_message="Login Required.", location="Authorization", location_type="header",
                status_name="UNAUTHENTICATED", details=_error_info("CREDENTIALS_MISSING", self.method),
                headers={"WWW-Authenticate": _REALM},
            )
        record = self.emulator.state.live_access_token(token)
        if record is None:
            raise _error(
                401, "Request had invalid authentication credentials. Expected OAuth 2 access token, "
                f"login cookie or other valid authentication credential. {_LOGIN}", "authError",
                item_message="Invalid Credentials", location="Authorization", location_type="header",
                status_name="UNAUTHENTICATED", headers={"WWW-Authenticate": _REALM + ', error="invalid_token"'},
            )
        scopes = frozenset(record.scopes)  # the record keeps Google's order; a set here
        if not scopes & DRIVE_SCOPES:
            raise self.insufficient_permissions()
        return self.emulator.state.account(record.sub), record.client_id, scopes

    def insufficient_permissions(self) -> DriveError:
        """Return the 403 Google answers when the token lacks the scope this call needs."""
        challenge = f'{_REALM}, error="insufficient_scope", scope="{" ".join(sorted(DRIVE_SCOPES))}"'
        return _error(
            403, "Request had insufficient authentication scopes.", "insufficientPermissions",
            item_message="Insufficient Permission", status_name="PERMISSION_DENIED",
            details=_error_info("ACCESS_TOKEN_SCOPE_INSUFFICIENT", self.method),
            headers={"WWW-Authenticate": challenge},
        )

    def fields(self, allowed: frozenset[str]) -> Selection | None:
        """Return the parsed, checked ``fields`` parameter, or None when absent."""
        text = self.get_query_argument("fields", None)
        if text is None or text == "":
            return None
        tree = parse_fields(text)
        check_fields(tree, allowed)
        return tree

    async def drive_error(self, exc: DriveError) -> None:
        log.info("%s: %d %s", self.endpoint_name(), exc.status, exc.reason)
        await self.reply(exc.body, exc.status, exc.headers)


class FilesListHandler(DriveHandler):
    """``GET /drive/v3/files``: ``files.list``."""

    method = "List"

    async def get(self) -> None:
        try:
            body = self.list_files()
        except DriveError as exc:
            await self.drive_error(exc)
            return
        await self.reply(body)

    def list_files(self) -> dict[str, Any]:
        account, client_id, scopes = self.caller()
        spaces = [s.strip() for s in (self.get_query_argument("spaces", None) or "drive").split(",")]
        if any(space not in ("drive", "appDataFolder") for space in spaces):
            raise invalid("spaces")
        allowed_spaces = set()
        if APPDATA_SCOPE in scopes:
            allowed_spaces.add("appDataFolder")
        if scopes & (READ_SCOPES | {FILE_SCOPE}):
            allowed_spaces.add("drive")
        if not set(spaces) <= allowed_spaces:
            raise _error(403, "The granted scopes do not give access to all of the requested spaces.",
                         "insufficientScopes", location="spaces")
        tree = self.fields(LIST_PROPERTIES)
        page_size = self._page_size()
        q = self.get_query_argument("q", None) or ""
        order_by = self.get_query_argument("orderBy", None) or ""
        clauses = parse_query(q) if q.strip() else []
        drive = drive_files(account, client_id)
        aliases = {"root": drive.root["id"], **{alias: drive.appfolder["id"] for alias in APPDATA_ALIASES}}
        visible = [
            f for f in drive.files
            if f["spaces"][0] in spaces
            and (f["spaces"][0] == "appDataFolder" or scopes & READ_SCOPES or f["id"] in drive.app_created)
            and _matches(f, clauses, aliases)
        ]
        if order_by:
            visible = _sort(visible, order_by)
        digest = hashlib.sha256(json.dumps([sorted(spaces), q, order_by, account.sub]).encode()).hexdigest()[:16]
        start = self._page_start(digest)
        page = visible[start : start + page_size]
        body: dict[str, Any] = {"kind": "drive#fileList"}
        if start + page_size < len(visible):
            token = json.dumps({"o": start + page_size, "d": digest}, separators=(",", ":"))
            body["nextPageToken"] = "~!!~" + base64.urlsafe_b64encode(token.encode()).decode("ascii")
        body["incompleteSearch"] = False
        if tree is None:
            body["files"] = [{name: f[name] for name in DEFAULT_FILE_FIELDS} for f in page]
            return body
        body["files"] = page
        return select_fields(body, tree)

    def _page_size(self) -> int:
        raw = self.get_query_argument("pageSize", None)
        if raw is None:
            return DEFAULT_PAGE_SIZE
        try:
            size = int(raw)
        except ValueError:
            raise invalid("pageSize", f"Invalid value '{raw[:40]}'. Values must be within the range: "
                                      f"[1, {MAX_PAGE_SIZE}]") from None
        if not 1 <= size <= MAX_PAGE_SIZE:
            raise invalid("pageSize", f"Invalid value '{size}'. Values must be within the range: [1, {MAX_PAGE_SIZE}]")
        return size

    def _page_start(self, digest: str) -> int:
        token = self.get_query_argument("pageToken", None)
        if not token:
            return 0
        try:
            if not token.startswith("~!!~"):
                raise ValueError(token)
            document = json.loads(base64.urlsafe_b64decode(token[4:].encode("ascii")))
            offset = document["o"]
            if document["d"] != digest or not isinstance(offset, int) or offset < 0:
                raise ValueError(token)
        except (ValueError, KeyError, TypeError, UnicodeEncodeError, binascii.Error):
            raise invalid("pageToken") from None
        return offset


class FilesGetHandler(DriveHandler):
    """``GET /drive/v3/files/{fileId}``: ``files.get`` (metadata; ``alt=media`` is not served)."""

    method = "Get"

    async def get(self, file_id: str) -> None:
        try:
            body = self.get_file(file_id)
        except DriveError as exc:
            await self.drive_error(exc)
            return
        await self.reply(body)

    def get_file(self, file_id: str) -> dict[str, Any]:
        account, client_id, scopes = self.caller()
        if self.get_query_argument("alt", "json") != "json":
            raise invalid("alt", "The emulator serves file metadata only (alt=json).")
        tree = self.fields(FILE_PROPERTIES)
        drive = drive_files(account, client_id)
        if file_id in APPDATA_ALIASES or file_id == drive.appfolder["id"]:
            resource = drive.appfolder
        elif file_id == "root" or file_id == drive.root["id"]:
            resource = drive.root
        else:
            found = [f for f in drive.files if f["id"] == file_id]
            if not found:
                raise self.not_found(file_id)
            resource = found[0]
        if resource["spaces"] == ["appDataFolder"]:
            if APPDATA_SCOPE not in scopes:
                raise self.insufficient_permissions()
        elif not scopes & READ_SCOPES:
            if FILE_SCOPE in scopes and resource["id"] not in drive.app_created:
                raise self.not_found(file_id)  # drive.file cannot see it at all
            if FILE_SCOPE not in scopes:
                raise self.insufficient_permissions()
        if tree is None:
            return {name: resource[name] for name in DEFAULT_FILE_FIELDS}
        return select_fields(resource, tree)

    @staticmethod
    def not_found(file_id: str) -> DriveError:
        message = f"File not found: {file_id[:200]}."
        return _error(404, message, "notFound", location="fileId")


#: (path, handler, extra initialize() arguments) of the Drive URLs.
DRIVE_HANDLERS: list[tuple[str, type[EmulatorHandler], dict[str, str]]] = [
    (r"/drive/v3/files", FilesListHandler, {"endpoint": "drive.files.list"}),
    (r"/drive/v3/files/([^/]+)", FilesGetHandler, {"endpoint": "drive.files.get"}),
]
