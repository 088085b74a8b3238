"""The token cipher: AES-GCM bound to the record's sub and field, rotating keys, legacy Fernet tokens."""

from __future__ import annotations

import pytest
from cryptography.fernet import Fernet

from tornado_signin.crypto import TokenCipher, generate_key
from tornado_signin.errors import ConfigError, CryptoError, StorageError


def test_round_trip_and_binding():
    cipher = TokenCipher([generate_key()])
    sealed = cipher.encrypt("1//secret", sub="alice", field="refresh_token")
    assert sealed.startswith("tsg1.") and "secret" not in sealed
    assert cipher.decrypt(sealed, sub="alice", field="refresh_token") == "1//secret"
    assert cipher.encrypt("1//secret", sub="alice", field="refresh_token") != sealed, "a fresh nonce every time"
    for sub, field in (("bob", "refresh_token"), ("alice", "access_token"), ("Alice", "refresh_token"),
                       ("alice\x00", "refresh_token"), ("", "refresh_token")):
        with pytest.raises(CryptoError, match="does not belong"):
            cipher.decrypt(sealed, sub=sub, field=field)


def test_rotation_newest_encrypts_every_key_decrypts():
    old, new = generate_key(), generate_key()
    made_by_old = TokenCipher([old]).encrypt("tok", sub="u", field="access_token")
    rotated = TokenCipher([new, old])
    assert rotated.decrypt(made_by_old, sub="u", field="access_token") == "tok"
    made_by_rotated = rotated.encrypt("tok", sub="u", field="access_token")
    assert TokenCipher([new]).decrypt(made_by_rotated, sub="u", field="access_token") == "tok"
    with pytest.raises(CryptoError, match="configured encryption.keys"):
        TokenCipher([old]).decrypt(made_by_rotated, sub="u", field="access_token")


def test_legacy_fernet_tokens_decrypt_under_any_configured_key():
    old = generate_key()
    legacy = Fernet(old.encode()).encrypt(b"1//legacy").decode()
    assert TokenCipher([generate_key(), old]).decrypt(legacy, sub="anyone", field="refresh_token") == "1//legacy"
    with pytest.raises(CryptoError):
        TokenCipher([generate_key()]).decrypt(legacy, sub="anyone", field="refresh_token")


@pytest.mark.parametrize("garbage", ["tsg1.", "tsg1.!!!", "tsg1.AAAA", "tsg1." + "A" * 40, "gAAAAAgarbage", ""])
def test_garbage_is_a_crypto_error(garbage):
    with pytest.raises(CryptoError):
        TokenCipher([generate_key()]).decrypt(garbage, sub="u", field="refresh_token")


def test_a_crypto_error_is_a_storage_error():
    """Handlers treat an unreadable stored token like any store failure: a clean 503, never a 500."""
    assert issubclass(CryptoError, StorageError)


def test_bad_keys_name_the_config_key():
    with pytest.raises(ConfigError, match=r"store.encryption.keys\[1\]"):
        TokenCipher([generate_key(), "not-a-key"], config_key="store.encryption.keys")
    with pytest.raises(ConfigError, match="at least one key"):
        TokenCipher([])


# -- end to end: Alice's ciphertexts in Bob's row ------------------------------------------------------


from harness import json_body  # noqa: E402
from security_oracle import stack_fixture  # noqa: E402
from tornado_signin.store import TokenRecord  # noqa: E402

stack = stack_fixture()


@pytest.mark.gen_test(timeout=30)
async def test_alices_ciphertexts_in_bobs_row_never_answer_as_alice(stack):
    alice_client, bob_client = stack.client(), stack.client()
    assert (await alice_client.post_code(stack.mint("alice@example.com"))).code == 200
    assert (await bob_client.post_code(stack.mint("bob@gmail.com"))).code == 200
    alice = stack.emulator.state.account("alice@example.com").sub
    bob = stack.emulator.state.account("bob@gmail.com").sub
    raw = stack.store.inner
    stolen = raw.get(alice)
    raw.save(TokenRecord(sub=bob, refresh_token=stolen.refresh_token, refresh_token_issued_at=9e9,
                         access_token=stolen.access_token, access_token_issued_at=9e9, access_token_expiry=9e9))
    calls = stack.emulator.stats["userinfo"]
    response = await bob_client.fetch("/api/userinfo", method="POST",
                                      headers={"X-Requested-With": "XMLHttpRequest", "Origin": stack.app_url})
    assert response.code == 503, response.body
    assert json_body(response) == {"error": "storage unavailable"}
    assert stack.emulator.stats["userinfo"] == calls, "a token was used for Bob's request"
    assert "alice" not in response.body.decode()
    # Alice's own row still works.
    response = await alice_client.fetch("/api/userinfo", method="POST",
                                        headers={"X-Requested-With": "XMLHttpRequest", "Origin": stack.app_url})
    assert response.code == 200 and json_body(response)["userinfo"]["email"] == "alice@example.com"


def test_rotate_keys_command_binds_legacy_records(tmp_path):
    """``tornado-signin rotate-keys`` as the README shows it: old Fernet records decrypt, and come out bound."""
    import os
    import subprocess
    import sys
    import time

    from harness import write_offline_config
    from tornado_signin.config import load_config
    from tornado_signin.wiring import open_store

    key = generate_key()
    path, env = write_offline_config(tmp_path, key)
    store = open_store(load_config(path, environ=env))
    fernet, now = Fernet(key.encode()), time.time()
    for sub in ("alice", "bob"):
        store.inner.save(TokenRecord(sub=sub, refresh_token=fernet.encrypt(f"1//rt-{sub}".encode()).decode(),
                                     refresh_token_issued_at=now, access_token=fernet.encrypt(
                                         f"ya29.at-{sub}".encode()).decode(),
                                     access_token_issued_at=now, access_token_expiry=now + 3600))
    store.close()

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "tornado_signin.cli", *args, "--config", str(path)],
                              capture_output=True, text=True, env={**os.environ, **env}, timeout=60)

    assert cli("token", "alice").stdout.strip() == "ya29.at-alice", "a legacy record must still decrypt"
    result = cli("rotate-keys")
    assert result.returncode == 0, result.stderr
    assert "re-encrypted 2 record(s)" in result.stdout
    store = open_store(load_config(path, environ=env))
    try:
        for sub in ("alice", "bob"):
            raw = store.inner.get(sub)
            assert raw.refresh_token.startswith("tsg1.") and raw.access_token.startswith("tsg1.")
        stolen = store.inner.get("alice")
        store.inner.save(TokenRecord(sub="bob", access_token=stolen.access_token, access_token_issued_at=now + 1,
                                     access_token_expiry=now + 3600))
    finally:
        store.close()
    assert cli("token", "alice").stdout.strip() == "ya29.at-alice"
    swapped = cli("token", "bob")
    assert swapped.returncode != 0 and "ya29" not in swapped.stdout + swapped.stderr
    assert "does not belong to this record" in swapped.stderr and swapped.stderr.count("\n") == 1


# -- the batch forms through the encryption (issue 16: the offline job's reads and saves) ----------------

from tornado_signin.crypto import EncryptingStore  # noqa: E402
from tornado_signin.store import load_store  # noqa: E402
from tornado_signin.testing import TokenStoreContract  # noqa: E402


class TestEncryptingStoreContract(TokenStoreContract):
    """The whole contract above the encryption: get_many/save_many over the sql store's own batches (one query,
    one transaction) and over the memory store's defaults (one get/save each)."""

    @pytest.fixture(params=["sql", "memory"])
    def store(self, request, tmp_path):
        options = {"url": f"sqlite:///{tmp_path / 'tokens.sqlite3'}"} if request.param == "sql" else {}
        store = EncryptingStore(load_store(request.param, options), TokenCipher([generate_key()]))
        yield store
        store.close()


@pytest.mark.parametrize("backend", ["sql", "memory"])
def test_a_batch_read_of_a_record_that_does_not_decrypt_fails_that_record_alone(backend, tmp_path):
    options = {"url": f"sqlite:///{tmp_path / 'tokens.sqlite3'}"} if backend == "sql" else {}
    store = EncryptingStore(load_store(backend, options), TokenCipher([generate_key()]))
    try:
        alice = store.save(TokenRecord(sub="alice", refresh_token="1//rt-alice", refresh_token_issued_at=1.0))
        bob = store.save(TokenRecord(sub="bob", refresh_token="1//rt-bob", refresh_token_issued_at=1.0))
        # Alice's ciphertext copied into Carol's row: bound to Alice, it does not open as Carol's.
        store.inner.save(TokenRecord(sub="carol", refresh_token=store.inner.get("alice").refresh_token,
                                     refresh_token_issued_at=2.0))
        answers = store.get_many(["alice", "carol", "nobody", "bob"])
        assert answers[0] == alice and answers[2] is None and answers[3] == bob
        assert isinstance(answers[1], CryptoError)
        # Saved in a batch: encrypted at rest, bound to each record, plaintext in each answer.
        saved = store.save_many([TokenRecord(sub="dave", access_token="ya29.at-dave", access_token_issued_at=3.0),
                                 TokenRecord(sub="alice", access_token="ya29.at-alice", access_token_issued_at=3.0)])
        assert [r.access_token for r in saved] == ["ya29.at-dave", "ya29.at-alice"]
        assert saved[1].refresh_token == "1//rt-alice"
        assert store.inner.get("dave").access_token.startswith("tsg1.")
        assert saved == store.get_many(["dave", "alice"])
    finally:
        store.close()
