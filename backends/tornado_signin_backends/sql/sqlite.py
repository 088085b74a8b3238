"""SQLite specifics of the ``sql`` store: a private database file, the connection pragmas, the write queue.

A new SQLite database file is created 0600, whatever the umask (SQLite
itself would make it 0644), and SQLite gives its ``-wal`` and ``-shm`` files
the database's mode: no other local user reads an email or a ciphertext. An
existing file that others can read is used with a warning (:func:`private_file`).

SQLite has one writer at a time, and a writer that finds the file locked
waits in SQLite's busy handler, which polls: it sleeps 1, 2, 5, 10 … up to
100 ms between tries and does not wake when the lock is released. With
several server processes on one file (``serve --processes N``) the writers
then spend their time asleep: two processes logged in fewer users per second
than one. So the writes of a store on a SQLite file queue instead
(:class:`WriteQueue`): threads of a process on an in-process lock, then the
processes on an exclusive ``fcntl.flock`` of ``<database file>.lock``
(created next to the database, mode 0600, never deleted), held around each
write transaction and released after its commit. The kernel wakes the next
waiting process at once. Readers take neither (WAL readers do not block the
writer, nor it them). Other programs writing the file without the lock are
still waited for by the busy handler. The lock is per host, like SQLite's own
locking (not for network file systems). A writer stopped while holding it
(SIGSTOP, a debugger) holds up the other processes' writes until it resumes or
exits (the kernel releases the lock of a dead process), where SQLite alone
would have failed them after the busy timeout.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import unquote, urlsplit

__all__ = ["BUSY_TIMEOUT", "file_path", "lock_path", "private_file", "pragmas", "WriteQueue", "QueueClosed"]

log = logging.getLogger(__name__)

#: Seconds SQLite's busy handler waits for a lock taken outside the write queue.
BUSY_TIMEOUT = 30.0


def file_path(database: str, uri: bool) -> str:
    """Return the path of the SQLite database file ``database`` (a path, or a URI if ``uri``)."""
    if uri and database.startswith("file:"):
        database = unquote(urlsplit(database).path)
    return database


def lock_path(database: str, uri: bool) -> str:
    """Return the path of the write lock file of the SQLite database file ``database`` (a path, or a URI if ``uri``)."""
    return file_path(database, uri) + ".lock"


def private_file(path: str, may_create: Callable[[], bool]) -> Callable[[Any, Any, Any, Any], None]:
    """Return a ``do_connect`` event listener that creates the database file 0600 before SQLite opens it.

    SQLite creates a new database 0644 (it fchmods to its default, whatever
    the umask) and gives its ``-wal`` and ``-shm`` files the database's own
    mode; an email or a ciphertext must not be readable by other local users.
    A file that exists already is left as it is, with a warning when others
    can read it. While ``may_create()`` is False a missing file is not
    created (SQLite would create it): the connection fails with the driver's
    OperationalError "the database file PATH does not exist".
    """
    warned = False

    def create_private(dialect: Any, _record: Any, _cargs: Any, _cparams: Any) -> None:
        nonlocal warned
        if not may_create() and not os.path.exists(path):
            raise dialect.loaded_dbapi.OperationalError(f"the database file {path} does not exist")
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
        except FileExistsError:
            if not warned:
                warned = True
                mode = os.stat(path).st_mode & 0o777
                if mode & 0o077:
                    log.warning("SQLite token store %s is accessible to other users (mode %o): chmod 600 it "
                                "and its -wal and -shm files", path, mode)
        except OSError:
            pass  # SQLite's own open reports it, as it would have without this listener

    return create_private


def pragmas(synchronous: str) -> Callable[[Any, Any], None]:
    """Return a ``connect`` event listener setting WAL mode, the busy timeout and ``synchronous`` on each connection."""

    def set_pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT * 1000)}")
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute(f"PRAGMA synchronous = {synchronous}")
        finally:
            cursor.close()

    return set_pragmas


class QueueClosed(RuntimeError):
    """Raised by :meth:`WriteQueue.held` once the queue is closed."""


class WriteQueue:
    """The write serialisation of one store: an in-process lock, then the flock of ``path`` when there is one.

    ``path`` None: only the lock (``lock``, a threading.Lock by default).
    Only one thread of a process reaches the flock (threads share the
    descriptor, and flock would not exclude them from each other).

    Example::

        writes = WriteQueue(lock_path("/var/lib/signin/tokens.db", uri=False))
        with writes.held():
            ...  # one write transaction, committed before the lock is released
        writes.close()
    """

    def __init__(self, path: str | None, lock: contextlib.AbstractContextManager[Any] | None = None) -> None:
        self.path = path
        self._lock = lock if lock is not None else threading.Lock()
        self._fd: int | None = None
        self._pid = 0  # the process that opened _fd
        self._closed = False

    @property
    def fd(self) -> int | None:
        """The descriptor open on the lock file in this process, or None."""
        return self._fd

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Hold the queue for one write; raise OSError if the lock file cannot be opened, QueueClosed once closed."""
        with self._lock:
            if self.path is None:
                yield
                return
            fd = self._open()
            fcntl.flock(fd, fcntl.LOCK_EX)  # releases the GIL while it waits
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)

    def _open(self) -> int:
        """Return the descriptor of the lock file, opened by this process (the caller holds the lock)."""
        if self._closed:
            raise QueueClosed("the write queue is closed")
        pid = os.getpid()
        if self._pid != pid:
            # A descriptor inherited across fork() shares its flock with the
            # parent's, which would let both write at once: open our own.
            if self._fd is not None:
                os.close(self._fd)  # our copy only: the parent's lock is untouched
                self._fd = None
            assert self.path is not None
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._pid = pid
        assert self._fd is not None
        return self._fd

    def close(self) -> None:
        """Close the lock file, after any write in flight (which may hold it). Idempotent."""
        with self._lock:
            self._closed = True
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
