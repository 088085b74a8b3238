"""Across every built-in backend: encryption at rest, key rotation, and migrations between any two."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator

import pytest
from moto import mock_aws
from sqlalchemy import select

from tornado_signin.crypto import EncryptingStore, TokenCipher, generate_key
from tornado_signin.errors import CryptoError, StorageError
from tornado_signin.migrate import MigrationReport, migrate
from tornado_signin.store import TokenRecord, TokenStore
from tornado_signin.testing import full_record
from tornado_signin_backends.dynamodb import DynamoDBTokenStore
from tornado_signin_backends.file import FileTokenStore
from tornado_signin_backends.memory import MemoryTokenStore
from tornado_signin_backends.sql import SQLTokenStore

AT_REST = ("sqlite", "postgres", "mariadb", "dynamodb", "file")
ALL = ("memory",) + AT_REST


@pytest.fixture(scope="module")
def aws():
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("AWS_PROFILE", raising=False)
        with mock_aws():
            yield


class Backend:
    """A fresh store of one kind, and a way to read what it holds at rest, bypassing the store."""

    def __init__(self, store: TokenStore, raw: Callable[[], bytes] | None, cleanup: Callable[[], None]):
        self.store, self.raw, self.cleanup = store, raw, cleanup


@pytest.fixture
def make_backend(request, tmp_path, unique_name) -> Iterator[Callable[[str], Backend]]:
    made: list[Backend] = []
    counter = itertools.count()

    def make(kind: str) -> Backend:
        name = f"{unique_name}_{next(counter)}"
        if kind == "memory":
            backend = Backend(MemoryTokenStore(), None, lambda: None)
        elif kind == "sqlite":
            directory = tmp_path / name
            directory.mkdir()
            store = SQLTokenStore(url=f"sqlite:///{directory / 'tokens.sqlite3'}")
            backend = Backend(
                store, lambda: b"".join(p.read_bytes() for p in sorted(directory.iterdir())), store.close
            )
        elif kind in ("postgres", "mariadb"):
            store = SQLTokenStore(url=request.getfixturevalue(f"{kind}_url"), table=name)

            def raw(store=store) -> bytes:
                with store.engine.connect() as conn:
                    return repr(conn.execute(select(store.table)).all()).encode()

            def cleanup(store=store) -> None:
                store.drop_schema()
                store.close()

            backend = Backend(store, raw, cleanup)
        elif kind == "dynamodb":
            request.getfixturevalue("aws")
            store = DynamoDBTokenStore(table=name, create_table=True, aws_access_key_id="testing",
                                       aws_secret_access_key="testing")

            def raw(store=store) -> bytes:
                return json.dumps(store.client.scan(TableName=store.table_name)["Items"]).encode()

            backend = Backend(store, raw, store.drop_schema)
        elif kind == "file":
            directory = tmp_path / name
            store = FileTokenStore(path=str(directory))
            backend = Backend(
                store, lambda: b"".join(p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()),
                store.close,
            )
        else:
            raise AssertionError(kind)
        made.append(backend)
        return backend

    yield make
    for backend in made:
        backend.cleanup()


# -- encryption at rest ----------------------------------------------------------------


@pytest.mark.parametrize("kind", AT_REST)
def test_tokens_are_encrypted_at_rest(make_backend, kind):
    backend = make_backend(kind)
    record = full_record()
    EncryptingStore(backend.store, TokenCipher([generate_key()])).save(record)
    raw = backend.raw()
    assert record.email.encode() in raw, "the raw reader must see the stored data"
    for token in (record.refresh_token, record.access_token):
        assert token.encode() not in raw
        assert token.split("-PLAINTEXT-")[0].encode() not in raw
    stored = backend.store.get(record.sub)
    assert stored.refresh_token != record.refresh_token and stored.access_token != record.access_token
    with pytest.raises(CryptoError):
        EncryptingStore(backend.store, TokenCipher([generate_key()])).get(record.sub)


@pytest.mark.parametrize("kind", AT_REST)
def test_key_rotation_re_encrypts_everything(make_backend, kind):
    backend = make_backend(kind)
    key_a, key_b = generate_key(), generate_key()
    records = [full_record(sub=f"user-{i}", refresh_token=f"rt-secret-{i}", access_token=f"at-secret-{i}")
               for i in range(3)] + [TokenRecord(sub="no-tokens", email="n@example.com")]
    under_a = EncryptingStore(backend.store, TokenCipher([key_a]))
    for record in records:
        under_a.save(record)
    assert EncryptingStore(backend.store, TokenCipher([key_b, key_a])).reencrypt_all() == 3
    only_b = EncryptingStore(backend.store, TokenCipher([key_b]))
    for record in records:
        got = only_b.get(record.sub)
        assert (got.refresh_token, got.access_token) == (record.refresh_token, record.access_token)
        assert got.refresh_token_issued_at == record.refresh_token_issued_at
    with pytest.raises(CryptoError):
        EncryptingStore(backend.store, TokenCipher([key_a])).get("user-0")
    raw = backend.raw()
    assert b"secret" not in raw


# -- migrations -----------------------------------------------------------------------


def _seed(store: TokenStore, count: int = 12) -> list[TokenRecord]:
    records = []
    for i in range(count):
        record = full_record(sub=f"user-{i:02d}", email=f"u{i}@example.com", refresh_token=f"rt-{i}",
                             refresh_token_issued_at=1000.0 + i, access_token=f"at-{i}")
        if i % 4 == 1:
            record = record.replace(refresh_token=None, refresh_token_issued_at=None)
        if i % 5 == 2:
            record = record.replace(revoked_at=2000.0 + i)
        records.append(store.save(record))
    return records


class _FailsAfter(TokenStore):
    """Wraps a store; every save after the first ``limit`` raises StorageError (an interrupted copy)."""

    def __init__(self, inner: TokenStore, limit: int):
        self.inner, self.limit, self.saves = inner, limit, 0

    def get(self, sub):
        return self.inner.get(sub)

    def save(self, record):
        if self.saves >= self.limit:
            raise StorageError("simulated outage")
        self.saves += 1
        return self.inner.save(record)

    def delete(self, sub):
        return self.inner.delete(sub)

    def mark_revoked(self, sub, revoked_at, *, if_refresh_token):
        return self.inner.mark_revoked(sub, revoked_at, if_refresh_token=if_refresh_token)

    def delete_if(self, sub, *, if_refresh_token):
        return self.inner.delete_if(sub, if_refresh_token=if_refresh_token)

    def records(self):
        return self.inner.records()


_COMPARED = ("sub", "email", "refresh_token", "refresh_token_issued_at", "access_token", "access_token_expiry",
             "access_token_issued_at", "scopes", "revoked_at", "created_at")


def _assert_same_records(source: TokenStore, target: TokenStore) -> None:
    def key(record):
        return tuple(getattr(record, name) for name in _COMPARED)

    assert sorted(map(key, source.records())) == sorted(map(key, target.records()))


@pytest.mark.parametrize(
    ("source_kind", "target_kind"), [(s, t) for s in ALL for t in ALL if s != t], ids=lambda kind: kind
)
def test_migration_between_backends_resumes_after_an_interruption(make_backend, source_kind, target_kind):
    source, target = make_backend(source_kind).store, make_backend(target_kind).store
    seeded = _seed(source)
    with pytest.raises(StorageError):
        migrate(source, _FailsAfter(target, 5), batch_size=4)
    assert len(list(target.records())) == 5
    report = migrate(source, target, batch_size=4)
    assert report == MigrationReport(copied=len(seeded), verified=len(seeded), mismatched=0)
    assert report.ok
    _assert_same_records(source, target)
    again = migrate(source, target)
    assert again.ok and again.copied == len(seeded)
    _assert_same_records(source, target)


def test_migration_between_encrypted_stores_re_encrypts(make_backend):
    key_a, key_b = generate_key(), generate_key()
    source_backend, target_backend = make_backend("sqlite"), make_backend("file")
    source = EncryptingStore(source_backend.store, TokenCipher([key_a]))
    target = EncryptingStore(target_backend.store, TokenCipher([key_b]))
    seeded = _seed(source)
    report = migrate(source, target)
    assert report.ok and report.verified == len(seeded)
    _assert_same_records(source, target)
    with pytest.raises(CryptoError):
        list(EncryptingStore(target_backend.store, TokenCipher([key_a])).records())
    assert b"rt-1" not in target_backend.raw()


def test_migration_reports_progress_and_mismatches(make_backend):
    source = make_backend("memory").store
    target = make_backend("memory").store
    seeded = _seed(source, 7)
    target.save(TokenRecord(sub="user-00", refresh_token="rt-newer", refresh_token_issued_at=9e9))
    calls = []
    report = migrate(source, target, batch_size=3, progress=lambda stage, n: calls.append((stage, n)))
    assert calls == [("copy", 3), ("copy", 6), ("copy", 7), ("verify", 3), ("verify", 6), ("verify", 7)]
    assert (report.copied, report.verified, report.mismatched) == (len(seeded), len(seeded) - 1, 1)
    assert report.mismatched_subs == ["user-00"] and not report.ok
    with pytest.raises(ValueError):
        migrate(source, target, batch_size=0)


# -- ciphertexts bound to their record (issue 12 §5) -------------------------------------


def _copy_tokens(raw_store: TokenStore, source_sub: str, target_sub: str) -> None:
    """Write ``source_sub``'s ciphertexts into ``target_sub``'s row, as someone with write access to the store."""
    stolen = raw_store.get(source_sub)
    raw_store.save(TokenRecord(sub=target_sub, refresh_token=stolen.refresh_token,
                               refresh_token_issued_at=9e9, access_token=stolen.access_token,
                               access_token_issued_at=9e9, access_token_expiry=9e9))


@pytest.mark.parametrize("kind", ALL)
def test_a_ciphertext_copied_into_another_users_row_does_not_decrypt(make_backend, kind):
    backend = make_backend(kind)
    store = EncryptingStore(backend.store, TokenCipher([generate_key()]))
    store.save(full_record(sub="alice", refresh_token="rt-alice", access_token="at-alice"))
    store.save(full_record(sub="bob", refresh_token="rt-bob", access_token="at-bob"))
    _copy_tokens(backend.store, "alice", "bob")
    with pytest.raises(CryptoError, match="does not belong to this record"):
        store.get("bob")
    with pytest.raises(CryptoError):
        list(store.records())
    assert store.get("alice").refresh_token == "rt-alice"


@pytest.mark.parametrize("kind", ["sqlite", "file"])
def test_a_ciphertext_moved_to_the_other_field_does_not_decrypt(make_backend, kind):
    backend = make_backend(kind)
    store = EncryptingStore(backend.store, TokenCipher([generate_key()]))
    store.save(full_record(sub="alice", refresh_token="rt-alice", access_token="at-alice"))
    sealed = backend.store.get("alice")
    backend.store.save(sealed.replace(access_token=sealed.refresh_token, access_token_issued_at=9e9))
    with pytest.raises(CryptoError):
        store.get("alice")


def _legacy_record(key: str, sub: str, refresh: str, access: str) -> TokenRecord:
    """A record as versions before the binding wrote it: plain Fernet tokens."""
    from cryptography.fernet import Fernet

    fernet = Fernet(key.encode())
    return full_record(sub=sub, email=f"{sub}@example.com", refresh_token=fernet.encrypt(refresh.encode()).decode(),
                       access_token=fernet.encrypt(access.encode()).decode())


@pytest.mark.parametrize("kind", ALL)
def test_legacy_fernet_records_still_decrypt_and_rotation_binds_them(make_backend, kind):
    backend = make_backend(kind)
    old_key, new_key = generate_key(), generate_key()
    for sub in ("alice", "bob"):
        backend.store.save(_legacy_record(old_key, sub, f"rt-{sub}", f"at-{sub}"))
    before = EncryptingStore(backend.store, TokenCipher([old_key]))
    assert before.get("alice").refresh_token == "rt-alice", "an old record must still decrypt"
    # Unbound: a legacy ciphertext copied elsewhere still opens (what the upgrade removes).
    rotated = EncryptingStore(backend.store, TokenCipher([new_key, old_key]))
    assert rotated.reencrypt_all() == 2
    for sub in ("alice", "bob"):
        raw = backend.store.get(sub)
        assert raw.refresh_token.startswith("tsg1.") and raw.access_token.startswith("tsg1.")
        got = EncryptingStore(backend.store, TokenCipher([new_key])).get(sub)
        assert (got.refresh_token, got.access_token) == (f"rt-{sub}", f"at-{sub}")
    _copy_tokens(backend.store, "alice", "bob")
    with pytest.raises(CryptoError):
        rotated.get("bob")


def test_migration_binds_legacy_records_in_the_target(make_backend):
    key = generate_key()
    source_backend, target_backend = make_backend("sqlite"), make_backend("file")
    source_backend.store.save(_legacy_record(key, "alice", "rt-alice", "at-alice"))
    source = EncryptingStore(source_backend.store, TokenCipher([key]))
    target = EncryptingStore(target_backend.store, TokenCipher([key]))
    assert migrate(source, target).ok
    raw = target_backend.store.get("alice")
    assert raw.refresh_token.startswith("tsg1.") and raw.access_token.startswith("tsg1.")
    assert target.get("alice").refresh_token == "rt-alice"


@pytest.mark.parametrize("kind", ["sqlite", "memory"])
def test_encrypted_conditional_writes_compare_plaintext(make_backend, kind):
    backend = make_backend(kind)
    key = generate_key()
    store = EncryptingStore(backend.store, TokenCipher([key]))
    store.save(full_record(sub="u", refresh_token="rt-1", revoked_at=None))
    assert store.mark_revoked("u", 5.0, if_refresh_token="rt-2") is False
    # A re-encryption changes the ciphertext, not the token: the condition still holds.
    rotated = EncryptingStore(backend.store, TokenCipher([generate_key(), key]))
    before = backend.store.get("u").refresh_token
    rotated.reencrypt_all()
    assert backend.store.get("u").refresh_token != before
    assert rotated.mark_revoked("u", 5.0, if_refresh_token="rt-1") is True
    assert rotated.get("u").revoked_at == 5.0
    assert rotated.delete_if("u", if_refresh_token="rt-2") is False
    assert rotated.delete_if("u", if_refresh_token="rt-1") is True
    assert rotated.get("u") is None
