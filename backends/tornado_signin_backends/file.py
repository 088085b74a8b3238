"""``file``: a token store in a local directory, one JSON file per user (POSIX only).

Config (``store:`` section)::

    store:
      backend: file
      path: /var/lib/tornado-signin/tokens   # a directory; created 0700 if missing
      create_directory: true                # optional

Missing parent folders are created 0700. With ``create_directory`` false
(what the commands that only read the store pass) nothing is created: a
missing directory reads as an empty store (``has_schema()`` is False) until
``create_schema()`` creates it, and writes fail. A path with an existing parent that
another user owns, or may write (unless it is sticky, like ``/tmp``), is
refused at start-up: that user could move the store away or swap in another.

Layout of the directory::

    <sha256 of the sub, hex>.json    one record (0600)
    .locks/<2 hex digits>.lock       256 lock files, one per first byte of the hash (0600)
    .tmp-<sha256>-*                  a write in progress (or killed): never read

File names are the SHA-256 of the ``sub`` (UTF-8), so no ``sub`` — ``../``,
``/``, NUL, any length or alphabet — can name a path outside the directory or
collide with another; the record inside holds the ``sub`` itself. Subs the
built-in backends refuse (empty, over 255 characters, NUL, not UTF-8
encodable) raise ValueError on ``save``.

Writes are atomic and durable: the record is written to a temporary file in
the same directory, fsynced, renamed over the old one with ``os.replace`` and
the directory is fsynced, so a reader (or a crash, even SIGKILL mid-write)
sees the old record or the new one, never a torn file. ``save``,
``delete``, ``mark_revoked`` and ``delete_if`` hold an exclusive ``fcntl.flock`` on the user's lock stripe around
read → :func:`~tornado_signin.store.merge_records` → write, which makes the
merge atomic across threads (each lock is taken on its own open file, and
flock locks of distinct open files exclude each other even in one process) and
across processes on the same host. Lock files are never deleted (deleting a
lock file while another process waits on it would let two writers in); there
are at most 256. Reads take no lock. Not for network file systems whose
``flock`` is not coherent between hosts.

Every OS error and every unreadable record file is raised as
:class:`~tornado_signin.errors.StorageError` chained to it; messages name
files by their hash, never a token.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import stat
import tempfile
from collections.abc import Iterator
from typing import Any

from tornado_signin.errors import ConfigError, StorageError
from tornado_signin.store import TokenRecord, TokenStore, merge_records, revoked_record

from ._common import check_sub, is_valid_sub

__all__ = ["FileTokenStore"]

log = logging.getLogger(__name__)

_FORMAT_VERSION = 1
_RECORD_FILE = re.compile(r"^[0-9a-f]{64}\.json$")
#: The record's fields a file holds as they are: every field but ``sub`` and ``scopes`` (written apart), read
#: from TokenRecord so that a field it gains is stored here without a second list to keep in step.
_FIELDS = tuple(f.name for f in dataclasses.fields(TokenRecord) if f.name not in ("sub", "scopes"))


def _file_id(sub: str) -> str:
    return hashlib.sha256(sub.encode("utf-8")).hexdigest()


def _encode(record: TokenRecord) -> bytes:
    fields: dict[str, Any] = {name: getattr(record, name) for name in _FIELDS}
    fields["sub"] = record.sub
    fields["scopes"] = list(record.scopes)
    return json.dumps({"version": _FORMAT_VERSION, "record": fields}, sort_keys=True).encode("utf-8")


def _decode(data: bytes) -> TokenRecord:
    document = json.loads(data)
    if not isinstance(document, dict) or document.get("version") != _FORMAT_VERSION:
        raise ValueError("unknown record format")
    fields = document["record"]
    return TokenRecord(
        sub=fields["sub"],
        scopes=tuple(fields.get("scopes") or ()),
        **{name: fields.get(name) for name in _FIELDS},
    )


def _fsync_directory(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unsafe(directory: str) -> str | None:
    """Return why another local user could move or replace entries of ``directory``, or None when none can."""
    info = os.stat(directory)
    if info.st_uid not in (0, os.geteuid()):
        return f"owned by another user (uid {info.st_uid})"
    if info.st_mode & 0o022 and not info.st_mode & stat.S_ISVTX:
        return f"writable by other users (mode {info.st_mode & 0o777:o})"
    return None


def _unsafe_parents(path: str) -> str | None:
    """Return a message naming the folder when another user could move the store at ``path`` away, else None.

    Every existing folder above ``path`` counts, along the path as written and
    along where its symlinks lead: it must belong to root or to this user and
    be writable by nobody else, unless it is sticky (as ``/tmp`` is: others
    can write it but not move what they do not own).
    """
    chains = []
    for start in (os.path.dirname(path), os.path.dirname(os.path.realpath(path))):
        chain, folder = [], start
        while True:
            chain.append(folder)
            up = os.path.dirname(folder)
            if up == folder:
                break
            folder = up
        chains.append(chain)
    for chain in chains:
        for folder in chain:
            if not os.path.lexists(folder) or os.path.islink(folder):
                continue  # missing: created 0700 below; a link: its target's chain is checked
            problem = _unsafe(folder)
            if problem:
                return (f"{folder} (a parent of the token store {path}) is {problem}: "
                        "another user could move the store away; use a private folder")
    return None


class FileTokenStore(TokenStore):
    """A token store in the directory ``path``."""

    #: The option that creates the directory (:func:`tornado_signin.plugins.creation_option`).
    creation_option = "create_directory"

    def __init__(self, *, path: str, create_directory: bool = True) -> None:
        """Create ``path`` (mode 0700, and its missing parents, 0700 too) if missing, unless ``create_directory``
        is false (then nothing is created: see :meth:`create_schema`).

        Raise ConfigError naming ``store.path`` and the folder when a parent
        folder lets another user move the store away (see
        :func:`_unsafe_parents`), StorageError when ``path`` cannot be
        created or is not a directory.
        """
        if not path or not isinstance(path, (str, os.PathLike)):
            raise TypeError("FileTokenStore() option 'path' must be a directory path")
        self.path = os.path.abspath(os.fspath(path))
        self._locks = os.path.join(self.path, ".locks")
        self._closed = False
        self._create_directory = create_directory
        with self._translate("check the parent folders"):
            problem = _unsafe_parents(self.path)
        if problem:
            raise ConfigError("store.path", problem)
        if create_directory:
            self.create_schema()

    def __repr__(self) -> str:
        return f"<FileTokenStore {self.path}>"

    def _prepare(self) -> None:
        missing = []
        parent = os.path.dirname(self.path)
        while not os.path.lexists(parent):
            missing.append(parent)
            parent = os.path.dirname(parent)
        for directory in reversed(missing):
            try:
                os.mkdir(directory, 0o700)
            except FileExistsError:
                continue
            os.chmod(directory, 0o700)  # exactly 0700, whatever the umask
        for directory in (self.path, self._locks):
            try:
                os.mkdir(directory, 0o700)
            except FileExistsError:
                pass
            else:
                os.chmod(directory, 0o700)  # exactly 0700, whatever the umask
        mode = os.stat(self.path).st_mode
        if not stat.S_ISDIR(mode):
            raise NotADirectoryError(errno.ENOTDIR, "not a directory", self.path)
        if mode & 0o077:
            log.warning("token store directory %s is accessible to other users (mode %o)", self.path, mode & 0o777)

    def create_schema(self) -> None:
        """Create the directory (0700, and its missing parents, 0700 too) if missing (idempotent).

        Raise StorageError when it cannot be created or is not a directory.
        """
        with self._translate("create the directory"):
            self._prepare()

    def has_schema(self) -> bool:
        """Return whether the directory exists, creating nothing. Raise StorageError when ``path`` is not one."""
        with self._translate("look for the directory"):
            if not os.path.lexists(self.path):
                return False
            if not os.path.isdir(self.path):
                raise NotADirectoryError(errno.ENOTDIR, "not a directory", self.path)
            return True

    def _not_created(self) -> bool:
        """Return whether the directory is missing in a store that may not create it (it reads as empty)."""
        return not self._create_directory and not os.path.lexists(self.path)

    # -- the boundary ----------------------------------------------------

    @contextlib.contextmanager
    def _translate(self, operation: str) -> Iterator[None]:
        """Raise every OS error of the block, and unreadable records, as StorageError chained to it."""
        if self._closed:
            raise StorageError(f"file token store {self.path}: cannot {operation}: the store is closed")
        try:
            yield
        except OSError as exc:
            raise StorageError(
                f"file token store {self.path}: cannot {operation} ({type(exc).__name__}: {exc.strerror})"
            ) from exc
        except (ValueError, KeyError, TypeError) as exc:
            raise StorageError(f"file token store {self.path}: cannot {operation}: a record file is corrupt") from exc

    def _record_path(self, file_id: str) -> str:
        return os.path.join(self.path, f"{file_id}.json")

    @contextlib.contextmanager
    def _locked(self, file_id: str) -> Iterator[None]:
        fd = os.open(os.path.join(self._locks, f"{file_id[:2]}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _read(self, file_id: str) -> TokenRecord | None:
        try:
            with open(self._record_path(file_id), "rb") as f:
                return _decode(f.read())
        except FileNotFoundError:
            return None

    def _write(self, file_id: str, record: TokenRecord) -> None:
        fd, temporary = tempfile.mkstemp(dir=self.path, prefix=f".tmp-{file_id}-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(_encode(record))
                f.flush()
                os.fsync(f.fileno())
            os.replace(temporary, self._record_path(file_id))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        _fsync_directory(self.path)

    def _sweep(self, file_id: str) -> None:
        """Remove temporary files of ``file_id`` left by a killed writer (the caller holds its lock)."""
        prefix = f".tmp-{file_id}-"
        with os.scandir(self.path) as entries:
            for entry in entries:
                if entry.name.startswith(prefix):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)
                    log.info("file token store %s: removed an interrupted write %s", self.path, entry.name)

    # -- TokenStore ------------------------------------------------------

    def get(self, sub: str) -> TokenRecord | None:
        if not is_valid_sub(sub):
            return None
        with self._translate("read a record"):
            record = self._read(_file_id(sub))
        if record is not None and record.sub != sub:
            raise StorageError(f"file token store {self.path}: record file {_file_id(sub)}.json holds another sub")
        return record

    def save(self, record: TokenRecord) -> TokenRecord:
        check_sub(record.sub)
        file_id = _file_id(record.sub)
        with self._translate("save a record"), self._locked(file_id):
            self._sweep(file_id)
            merged = merge_records(self._read(file_id), record)
            self._write(file_id, merged)
        return merged

    def delete(self, sub: str) -> bool:
        if not is_valid_sub(sub):
            return False
        file_id = _file_id(sub)
        with self._translate("delete a record"), self._locked(file_id):
            try:
                os.unlink(self._record_path(file_id))
            except FileNotFoundError:
                return False
            _fsync_directory(self.path)
        return True

    def mark_revoked(self, sub: str, revoked_at: float, *, if_refresh_token: str | None) -> bool:
        if not is_valid_sub(sub):
            return False
        file_id = _file_id(sub)
        with self._translate("mark a record revoked"), self._locked(file_id):
            stored = self._read(file_id)
            if stored is None or stored.sub != sub or stored.refresh_token != if_refresh_token:
                return False
            self._write(file_id, revoked_record(stored, revoked_at))
        return True

    def delete_if(self, sub: str, *, if_refresh_token: str | None) -> bool:
        if not is_valid_sub(sub):
            return False
        file_id = _file_id(sub)
        with self._translate("delete a record"), self._locked(file_id):
            stored = self._read(file_id)
            if stored is None or stored.sub != sub or stored.refresh_token != if_refresh_token:
                return False
            os.unlink(self._record_path(file_id))
            _fsync_directory(self.path)
        return True

    def records(self) -> Iterator[TokenRecord]:
        if self._not_created():
            return
        with self._translate("list records"):
            with os.scandir(self.path) as entries:
                names = sorted(entry.name for entry in entries if _RECORD_FILE.match(entry.name))
        for name in names:
            with self._translate("read a record"):
                record = self._read(name[: -len(".json")])
            if record is not None:  # deleted meanwhile
                yield record

    def check(self) -> None:
        """Raise StorageError unless the directory is readable and writable."""
        with self._translate("use the directory"):
            if not os.path.isdir(self.path):
                raise FileNotFoundError(errno.ENOENT, "no such directory", self.path)
            if not os.access(self.path, os.R_OK | os.W_OK | os.X_OK):
                raise PermissionError(errno.EACCES, "directory not readable and writable", self.path)
            with self._locked("00"):
                pass
            list(self.records())

    def close(self) -> None:
        self._closed = True
