"""The ``file`` backend: the contract, permissions, path safety, crash safety under SIGKILL, processes."""

from __future__ import annotations

import functools
import json
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import textwrap

import pytest

from tornado_signin.errors import ConfigError, StorageError
from tornado_signin.store import TokenRecord, load_store
from tornado_signin.testing import EDGE_SUBS, TokenStoreContract, full_record
from tornado_signin_backends.file import FileTokenStore


class TestFileContract(TokenStoreContract):
    @pytest.fixture
    def store(self, tmp_path):
        store = FileTokenStore(path=str(tmp_path / "tokens"))
        yield store
        store.close()

    def test_processes_never_lose_a_save(self, tmp_path):
        self.assert_process_safe(functools.partial(FileTokenStore, path=str(tmp_path / "shared")))


def _files(root):
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_loaded_through_the_entry_point(tmp_path):
    store = load_store("file", {"path": str(tmp_path / "t")})
    assert isinstance(store, FileTokenStore)
    with pytest.raises(ConfigError, match="store"):
        load_store("file", {"pth": str(tmp_path / "t")})


def test_directory_0700_and_files_0600(tmp_path):
    old_umask = os.umask(0)
    try:
        store = FileTokenStore(path=str(tmp_path / "tokens"))
        store.save(full_record())
    finally:
        os.umask(old_umask)
    root = tmp_path / "tokens"
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    assert stat.S_IMODE((root / ".locks").stat().st_mode) == 0o700
    files = _files(root)
    assert files
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_no_sub_escapes_the_directory(tmp_path):
    root = tmp_path / "a" / "tokens"
    store = FileTokenStore(path=str(root))
    for sub in EDGE_SUBS:
        store.save(TokenRecord(sub=sub))
    for sub in ("", "x" * 256, "nul\x00", "\ud800"):
        with pytest.raises(ValueError):
            store.save(TokenRecord(sub=sub))
        assert store.get(sub) is None
        assert store.delete(sub) is False
    outside = [p for p in tmp_path.rglob("*") if root not in p.parents and p != root]
    assert outside == [tmp_path / "a"]
    names = {p.name for p in root.iterdir() if p.is_file()}
    assert len(names) == len(EDGE_SUBS)
    assert all(len(name) == 64 + len(".json") for name in names)


def test_records_ignore_interrupted_writes_and_saves_sweep_them(tmp_path):
    store = FileTokenStore(path=str(tmp_path))
    store.save(full_record())
    from tornado_signin_backends.file import _file_id

    leftover = tmp_path / f".tmp-{_file_id(full_record().sub)}-abc"
    leftover.write_text('{"torn')
    assert [r.sub for r in store.records()] == [full_record().sub]
    store.save(TokenRecord(sub=full_record().sub, email="x@example.com"))
    assert not leftover.exists()


def test_corrupt_file_is_a_storage_error_without_tokens(tmp_path):
    store = FileTokenStore(path=str(tmp_path))
    store.save(full_record())
    (path,) = [p for p in tmp_path.iterdir() if p.suffix == ".json"]
    path.write_text(path.read_text()[:40])
    with pytest.raises(StorageError, match="corrupt") as info:
        store.get(full_record().sub)
    assert info.value.__cause__ is not None
    assert full_record().refresh_token not in str(info.value)
    with pytest.raises(StorageError):
        store.save(full_record())


def test_unusable_path_is_a_storage_error(tmp_path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    with pytest.raises(StorageError) as info:
        FileTokenStore(path=str(not_a_dir))
    assert isinstance(info.value.__cause__, OSError)
    store = FileTokenStore(path=str(tmp_path / "t"))
    store.close()
    with pytest.raises(StorageError, match="closed"):
        store.get("u")


def test_check_fails_when_the_directory_is_gone(tmp_path):
    store = FileTokenStore(path=str(tmp_path / "t"))
    store.check()
    shutil.rmtree(tmp_path / "t")
    (tmp_path / "t").write_text("not a directory")
    with pytest.raises(StorageError) as info:
        store.check()
    assert isinstance(info.value.__cause__, OSError)
    with pytest.raises(StorageError):
        store.save(full_record())


_WRITER = textwrap.dedent(
    """
    import sys
    from tornado_signin.store import TokenRecord
    from tornado_signin_backends.file import FileTokenStore

    store = FileTokenStore(path=sys.argv[1])
    n = int(sys.argv[2])
    print("ready", flush=True)
    while True:
        n += 1
        store.save(TokenRecord(sub="victim", email=f"e{n}@example.com", refresh_token=f"rt-{n}",
                               refresh_token_issued_at=float(n), access_token=f"at-{n}",
                               access_token_issued_at=float(n), scopes=(f"s{n}",)))
    """
)


def test_sigkill_mid_write_never_leaves_a_torn_record(tmp_path):
    """Kill a writer at random points 30 times: the store always parses and holds a whole state."""
    root = tmp_path / "tokens"
    store = FileTokenStore(path=str(root))
    rng = random.Random(7)
    last = 0  # the newest state observed so far; each writer continues from it
    killed_while_writing = 0
    for _ in range(30):
        writer = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(root), str(last)],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert writer.stdout.readline().strip() == "ready"
            signal_after = rng.uniform(0.0, 0.04)
            try:
                writer.wait(timeout=signal_after)
            except subprocess.TimeoutExpired:
                pass
            writer.send_signal(signal.SIGKILL)
            writer.wait(timeout=10)
        finally:
            if writer.poll() is None:
                writer.kill()
                writer.wait()
            writer.stdout.close()
        assert writer.returncode == -signal.SIGKILL
        if any(p.name.startswith(".tmp-") for p in root.iterdir()):
            killed_while_writing += 1
        for path in root.glob("*.json"):
            json.loads(path.read_bytes())  # every record file parses
        record = store.get("victim")
        if record is None:
            assert last == 0, "a record vanished"
            continue
        n = int(record.refresh_token_issued_at)
        assert n >= last, "an older state came back"
        assert record == record.replace(
            email=f"e{n}@example.com", refresh_token=f"rt-{n}", access_token=f"at-{n}",
            access_token_issued_at=float(n), scopes=(f"s{n}",),
        ), "a torn record"
        last = n
        assert [r.sub for r in store.records()] == ["victim"]
    assert last > 0
    print(f"{killed_while_writing} of 30 kills interrupted a write")


def test_missing_parents_are_created_0700_whatever_the_umask(tmp_path):
    old_umask = os.umask(0)
    try:
        FileTokenStore(path=str(tmp_path / "a" / "b" / "tokens")).close()
    finally:
        os.umask(old_umask)
    for folder in (tmp_path / "a", tmp_path / "a" / "b", tmp_path / "a" / "b" / "tokens"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder


def test_create_directory_off_creates_nothing_and_reads_as_empty_until_create_schema(tmp_path):
    path = tmp_path / "a" / "tokens"
    store = FileTokenStore(path=str(path), create_directory=False)
    assert not store.has_schema()
    assert store.get("u") is None
    assert list(store.records()) == [] and store.find_by_email("e@example.com") == []
    with pytest.raises(StorageError):
        store.check()
    with pytest.raises(StorageError):
        store.save(full_record())
    assert not (tmp_path / "a").exists()
    store.create_schema()
    assert store.has_schema()
    assert stat.S_IMODE(path.stat().st_mode) == 0o700 and stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o700
    store.check()
    saved = store.save(full_record())
    assert store.get(saved.sub) == saved
    store.close()
    (tmp_path / "f").write_text("x")
    with pytest.raises(StorageError):
        FileTokenStore(path=str(tmp_path / "f"), create_directory=False).has_schema()


def test_creation_option_names_the_file_stores_create_directory():
    from tornado_signin.plugins import STORES, creation_option

    assert creation_option(STORES, "file") == "create_directory"
    assert creation_option(STORES, "sql") == "create_table" and creation_option(STORES, "memory") is None


@pytest.mark.parametrize("mode", [0o777, 0o775, 0o757])
def test_a_parent_writable_by_others_is_refused_naming_it(tmp_path, mode):
    """Whoever can write a parent can move the store away (or swap in their own): refuse to start."""
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, mode)
    for path in (shared / "tokens", shared / "deeper" / "tokens"):
        with pytest.raises(ConfigError) as caught:
            FileTokenStore(path=str(path))
        assert str(shared) in str(caught.value) and "store.path" in str(caught.value)
        assert not path.exists() and not (shared / "deeper").exists()


def test_a_sticky_world_writable_parent_is_accepted(tmp_path):
    """Like /tmp: others may write it, but not move what they do not own."""
    shared = tmp_path / "sticky"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    FileTokenStore(path=str(shared / "tokens")).close()


def test_a_symlinked_path_is_checked_where_it_leads(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    (shared / "real").mkdir(mode=0o700)
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    (private / "link").symlink_to(shared / "real")
    with pytest.raises(ConfigError, match="shared"):
        FileTokenStore(path=str(private / "link" / "tokens"))
