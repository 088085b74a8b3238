"""The contract kit against the ``memory`` backend (the reference implementation)."""

import pytest

from tornado_signin.store import load_store
from tornado_signin.testing import TokenStoreContract


class TestMemoryContract(TokenStoreContract):
    @pytest.fixture
    def store(self):
        store = load_store("memory")
        yield store
        store.close()


def test_the_default_batch_forms_answer_per_item_for_a_store_that_fails_one():
    """A backend with only the abstract methods (a plugin written before the batch forms) gets get_many and
    save_many from the base class: one get/save per item, a failure that item's outcome, the others done."""
    from tornado_signin.errors import StorageError
    from tornado_signin.store import TokenRecord, TokenStore

    inner = load_store("memory")

    class Refusing(TokenStore):
        def get(self, sub):
            if sub == "broken":
                raise StorageError("that shard is down")
            return inner.get(sub)

        def save(self, record):
            if record.sub == "broken":
                raise StorageError("that shard is down")
            return inner.save(record)

        def delete(self, sub):
            return inner.delete(sub)

        def records(self):
            return inner.records()

        def mark_revoked(self, sub, revoked_at, *, if_refresh_token):
            return inner.mark_revoked(sub, revoked_at, if_refresh_token=if_refresh_token)

        def delete_if(self, sub, *, if_refresh_token):
            return inner.delete_if(sub, if_refresh_token=if_refresh_token)

    store = Refusing()
    saved = store.save_many([TokenRecord(sub="a", email="a@example.com"), TokenRecord(sub="broken"),
                             TokenRecord(sub="b", email="b@example.com")])
    assert [type(item).__name__ for item in saved] == ["TokenRecord", "StorageError", "TokenRecord"]
    answers = store.get_many(["b", "broken", "a", "none"])
    assert answers[0] == saved[2] and answers[2] == saved[0] and answers[3] is None
    assert isinstance(answers[1], StorageError)
