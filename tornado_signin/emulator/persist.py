"""Keep the emulator's memory in a folder, so a restarted emulator still knows its grants.

Without a state folder the emulator forgets everything when it stops (tests
want that). With one (``tornado-signin emulator --state-dir DIR``; the demo
passes ``.tornado-signin-emulator/`` in its folder), every change to what
Google would remember — clients, grants, outstanding codes, refresh and
access tokens, the signing keys and their rotation, the switches — is
written through before the reply leaves, so a demo restarted (or killed)
after a sign-in still refreshes that user's tokens instead of answering
``invalid_grant``.

The folder holds::

    emulator-state.json   the whole state, one JSON document (0600)
    emulator.lock         held (flock) while an emulator uses the folder

Writes are atomic: a temporary file in the folder, fsync, rename over the
old file, fsync of the folder. The folder is made 0700: the file holds
private signing keys and live tokens (of the emulator, not of Google). Not
kept: faults, stats, open consent pages.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["StateDir", "EmulatorStateError", "STATE_FILE", "LOCK_FILE", "STATE_VERSION"]

log = logging.getLogger(__name__)

STATE_FILE = "emulator-state.json"
LOCK_FILE = "emulator.lock"
#: The document's ``version``; another one is refused rather than half-read.
STATE_VERSION = 1


class EmulatorStateError(ValueError):
    """The state folder cannot be used: unreadable, corrupt, or in use by another emulator."""


class StateDir:
    """One emulator's state folder, locked for as long as this object is open.

    Raise :class:`EmulatorStateError` when the folder cannot be created or
    another emulator (any process) holds it.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).expanduser().resolve()
        self.file = self.path / STATE_FILE
        try:
            self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
            # An existing folder may have been made by hand with a wider mode.
            if self.path.stat().st_mode & 0o077:
                os.chmod(self.path, 0o700)
            lock_fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise EmulatorStateError(f"emulator state folder {self.path}: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(lock_fd)
            raise EmulatorStateError(
                f"emulator state folder {self.path} is in use by another emulator (its {LOCK_FILE} is locked)"
            ) from None
        self._lock_fd: int | None = lock_fd

    def load(self) -> dict[str, Any] | None:
        """Return the stored document, or None when the folder holds none yet.

        Raise :class:`EmulatorStateError` (naming the file) for one that is
        unreadable, not JSON, or of another version.
        """
        try:
            text = self.file.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise EmulatorStateError(f"emulator state file {self.file}: {exc.strerror or exc}") from exc
        try:
            document = json.loads(text)
        except ValueError as exc:
            raise EmulatorStateError(f"emulator state file {self.file} is not valid JSON ({exc})") from None
        if not isinstance(document, dict) or document.get("version") != STATE_VERSION:
            raise EmulatorStateError(
                f"emulator state file {self.file} is not a version {STATE_VERSION} emulator state; "
                "move it away to start afresh"
            )
        return document

    def save(self, document: dict[str, Any]) -> None:
        """Replace the stored document with ``document`` atomically (0600, fsynced).

        Raise :class:`EmulatorStateError` when the write fails (the old file stays).
        """
        data = json.dumps({**document, "version": STATE_VERSION}, separators=(",", ":")).encode("utf-8")
        try:
            fd, temp = tempfile.mkstemp(prefix=f".{STATE_FILE}.", dir=str(self.path))
        except OSError as exc:
            raise EmulatorStateError(f"emulator state folder {self.path}: {exc.strerror or exc}") from exc
        try:
            try:
                os.fchmod(fd, 0o600)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temp, self.file)
        except OSError as exc:
            Path(temp).unlink(missing_ok=True)
            raise EmulatorStateError(f"emulator state file {self.file}: {exc.strerror or exc}") from exc
        # The rename is durable only once the folder's entry is on disk too.
        dir_fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def close(self) -> None:
        """Release the folder's lock (idempotent)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
