"""The ``dynamodb`` backend: the contract under moto (in-process and as a server), plus retries and errors."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from moto import mock_aws
from moto.dynamodb.responses import DynamoHandler

from tornado_signin.errors import ConfigError, StorageError
from tornado_signin.store import TokenRecord, load_store
from tornado_signin.testing import TokenStoreContract, full_record
from tornado_signin_backends.dynamodb import DynamoDBTokenStore

FAKE_KEYS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


@pytest.fixture(autouse=True, scope="module")
def atomic_moto():
    """Make moto answer one DynamoDB request at a time, as DynamoDB applies each request atomically.

    moto checks a ConditionExpression and applies the update in two steps
    without a lock, so two threads can both pass the same condition: a moto
    limitation, not DynamoDB's. Our retry loop still runs concurrently.
    """
    lock = threading.Lock()
    original = DynamoHandler.call_action

    def call_action(self):
        with lock:
            return original(self)

    DynamoHandler.call_action = call_action
    yield
    DynamoHandler.call_action = original


@pytest.fixture(scope="module")
def aws():
    """moto's in-process DynamoDB, shared by the module (every test uses its own table)."""
    with pytest.MonkeyPatch.context() as patch:
        for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE"):
            patch.delenv(name, raising=False)
        with mock_aws():
            yield


class TestDynamoDBContract(TokenStoreContract):
    @pytest.fixture
    def store(self, aws, unique_name):
        store = DynamoDBTokenStore(table=unique_name, create_table=True, **FAKE_KEYS)
        yield store
        store.close()


@pytest.mark.parametrize(
    "check",
    [
        "test_round_trip_of_every_field",
        "test_random_saves_follow_merge_records",
        "test_delete",
        "test_records_yields_every_record",
        "test_check_passes",
    ],
)
def test_contract_with_a_custom_partition_key(aws, unique_name, check):
    """A table keyed by ``user_id``, created beforehand (``create_table`` false)."""
    DynamoDBTokenStore(table=unique_name, partition_key="user_id", **FAKE_KEYS).create_schema()
    store = DynamoDBTokenStore(table=unique_name, partition_key="user_id", **FAKE_KEYS)
    getattr(TokenStoreContract(), check)(store)
    store.close()


@pytest.fixture
def server_store(moto_server, unique_name):
    store = DynamoDBTokenStore(table=unique_name, endpoint_url=moto_server, create_table=True, **FAKE_KEYS)
    yield store
    store.close()
    DynamoDBTokenStore(table=unique_name, endpoint_url=moto_server, **FAKE_KEYS).drop_schema()


@pytest.mark.parametrize(
    "check",
    [
        "test_round_trip_of_every_field",
        "test_random_saves_follow_merge_records",
        "test_edge_subs_round_trip_and_stay_apart",
        "test_concurrent_threads_never_lose_a_save",
    ],
)
def test_contract_through_moto_server(server_store, check):
    """Part of the contract through HTTP and ``endpoint_url``, as against DynamoDB Local or AWS."""
    getattr(TokenStoreContract(), check)(server_store)


def test_loaded_through_the_entry_point(aws, unique_name):
    store = load_store("dynamodb", {"table": unique_name, "create_table": True, "region": "eu-west-1", **FAKE_KEYS})
    assert isinstance(store, DynamoDBTokenStore)
    store.save(full_record())
    assert store.client.describe_table(TableName=unique_name)["Table"]["BillingModeSummary"]["BillingMode"] == (
        "PAY_PER_REQUEST"
    )
    store.close()


def test_misspelt_option_is_a_config_error():
    with pytest.raises(ConfigError, match="store"):
        load_store("dynamodb", {"table": "t", "regoin": "eu-west-1"})
    with pytest.raises(ConfigError) as info:
        DynamoDBTokenStore(table="")
    assert info.value.key == "store.table"
    with pytest.raises(ConfigError) as info:
        DynamoDBTokenStore(table="t", profile_name="no-such-profile-anywhere")
    assert info.value.key == "store.profile_name"


def test_missing_table_is_a_storage_error(aws, unique_name):
    store = DynamoDBTokenStore(table=unique_name, **FAKE_KEYS)
    for call in (store.check, lambda: store.get("u"), lambda: store.save(full_record()), lambda: list(store.records())):
        with pytest.raises(StorageError, match="ResourceNotFoundException") as info:
            call()
        assert info.value.__cause__ is not None
        assert full_record().refresh_token not in str(info.value)
    store.create_schema()
    store.check()
    store.close()
    with pytest.raises(StorageError, match="closed"):
        store.get("u")


def test_check_detects_a_wrong_partition_key(aws, unique_name):
    DynamoDBTokenStore(table=unique_name, **FAKE_KEYS).create_schema()
    with pytest.raises(StorageError, match="partition key"):
        DynamoDBTokenStore(table=unique_name, partition_key="user_id", **FAKE_KEYS).check()


def test_records_pages_through_a_scan(aws, unique_name):
    store = DynamoDBTokenStore(table=unique_name, create_table=True, **FAKE_KEYS)
    original_scan = store.client.scan
    pages = []

    def small_pages(**request):
        pages.append(request.get("ExclusiveStartKey"))
        return original_scan(Limit=3, **request)

    store.client.scan = small_pages
    subs = {f"u{i}" for i in range(8)}
    for sub in subs:
        store.save(TokenRecord(sub=sub))
    assert {r.sub for r in store.records()} == subs
    assert len(pages) >= 3


def test_lost_conditions_are_dropped_group_by_group(aws, unique_name):
    """One request when nothing conflicts; a second one only for the groups that still win."""
    store = DynamoDBTokenStore(table=unique_name, create_table=True, **FAKE_KEYS)
    store.save(full_record())
    calls = []
    original = store.client.update_item
    store.client.update_item = lambda **request: calls.append(request) or original(**request)
    merged = store.save(full_record(refresh_token="rt-old", refresh_token_issued_at=1.0,
                                    access_token="at-new", access_token_issued_at=2e9, revoked_at=1.0))
    assert (merged.refresh_token, merged.access_token) == (full_record().refresh_token, "at-new")
    assert merged.revoked_at == full_record().revoked_at
    assert len(calls) == 2
    assert "attribute_exists" in calls[1]["ConditionExpression"]
    calls.clear()
    store.save(TokenRecord(sub=full_record().sub, email="new@example.com"))
    assert len(calls) == 1 and "ConditionExpression" not in calls[0]


class _ThrottlingEndpoint(BaseHTTPRequestHandler):
    """Answers ThrottlingException ``throttles`` times, then an empty GetItem result."""

    throttles = 0
    requests = 0

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        cls = type(self)
        cls.requests += 1
        if cls.requests <= cls.throttles:
            status, body = 400, {"__type": "com.amazonaws.dynamodb.v20120810#ThrottlingException",
                                 "message": "Rate of requests exceeds the allowed throughput."}
        else:
            status, body = 200, {}
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/x-amz-json-1.0")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def throttling_endpoint():
    handler = type("Handler", (_ThrottlingEndpoint,), {"throttles": 0, "requests": 0})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield handler, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_throttling_is_retried_with_backoff(throttling_endpoint):
    handler, url = throttling_endpoint
    handler.throttles = 2
    store = DynamoDBTokenStore(table="t", endpoint_url=url, max_attempts=3, **FAKE_KEYS)
    started = time.monotonic()
    assert store.get("u") is None
    assert handler.requests == 3
    assert time.monotonic() - started < 10
    store.close()


def test_throttling_beyond_max_attempts_is_a_storage_error(throttling_endpoint):
    handler, url = throttling_endpoint
    handler.throttles = 100
    store = DynamoDBTokenStore(table="t", endpoint_url=url, max_attempts=2, **FAKE_KEYS)
    with pytest.raises(StorageError, match="ThrottlingException") as info:
        store.get("u")
    assert info.value.__cause__ is not None
    assert handler.requests == 2
    store.close()


def test_unreachable_endpoint_is_a_storage_error():
    store = DynamoDBTokenStore(table="t", endpoint_url="http://127.0.0.1:1", max_attempts=1, connect_timeout=1,
                               **FAKE_KEYS)
    with pytest.raises(StorageError, match="EndpointConnectionError"):
        store.check()
    store.close()
