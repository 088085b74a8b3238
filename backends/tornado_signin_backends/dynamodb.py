"""``dynamodb``: a token store in one Amazon DynamoDB table (one item per ``sub``).

Config (``store:`` section; every option is a keyword-only constructor argument)::

    store:
      backend: dynamodb
      table: tornado-signin-tokens   # required: the table name
      region: eu-west-1              # AWS region (default us-east-1)
      endpoint_url: null             # e.g. http://127.0.0.1:8000 for DynamoDB Local / moto
      create_table: false            # create the table (PAY_PER_REQUEST) on first use if missing
      partition_key: sub             # name of the table's string partition-key attribute
      aws_access_key_id: null        # credentials; default: boto3's chain (env, profile, role)
      aws_secret_access_key: null    #   write secrets as {"$env": "NAME"}
      aws_session_token: null
      profile_name: null             # a named profile of ~/.aws/config
      max_attempts: 10               # total tries per request (botocore "standard" retries)
      connect_timeout: 5             # seconds
      read_timeout: 10               # seconds
      max_pool_connections: 32       # HTTP connections shared by all threads

Items hold ``email``, ``refresh_token``, ``refresh_token_issued_at``,
``access_token``, ``access_token_expiry``, ``access_token_issued_at``,
``scopes`` (space-joined), ``created_at``, ``updated_at``, ``revoked_at``,
``refresh_token_expires_at``, ``disabled_at``, ``enabled_at``,
``security_event`` and ``security_event_at`` beside the partition key; absent values are absent attributes. Tokens are the
core's ciphertext.

**The merge** (:func:`tornado_signin.store.merge_records`) is done by DynamoDB
with conditional ``UpdateItem`` requests, never read-then-write. A save is
split into groups: the unconditional part (``email`` if given, ``updated_at``,
``created_at = if_not_exists(…)``) and up to three conditional groups — the
refresh token with its issue time and expiry (condition
``attribute_not_exists(issued) OR issued <= :new``), the access token with
expiry, issue time and scopes (same shape), the security event with its time
(same shape), and each of ``revoked_at``, ``disabled_at`` and ``enabled_at``
(``attribute_not_exists OR revoked_at < :new``). The first request carries every group under the AND of their
conditions, with ``ReturnValues=ALL_NEW`` and
``ReturnValuesOnConditionCheckFailure=ALL_OLD``. If the condition fails,
DynamoDB returns the item it saw; the groups whose condition that item fails
are dropped and the rest retried under their conditions plus
``attribute_exists(<key>)``. This is exact because each condition is
monotonic: stored issue times and ``revoked_at`` (and the others) only grow while the item
exists, so a group that lost once loses forever — unless the item is deleted,
which the ``attribute_exists`` guard detects (and the save starts over). Each
retry follows another writer's progress, so the loop ends; it is bounded all
the same.

Throttling (``ProvisionedThroughputExceededException``,
``ThrottlingException``, ``RequestLimitExceeded``) and transient 5xx errors
are retried by botocore's "standard" retry mode with exponential backoff and
jitter, up to ``max_attempts`` tries. One boto3 client (thread-safe) serves
every thread. Every botocore error is raised as
:class:`~tornado_signin.errors.StorageError` chained to it, naming the AWS
error code, never a token value.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, ProfileNotFound

from tornado_signin.errors import ConfigError, StorageError
from tornado_signin.store import TokenRecord, TokenStore

from ._common import check_sub, is_valid_sub

__all__ = ["DynamoDBTokenStore"]

log = logging.getLogger(__name__)

_MAX_CONDITION_ROUNDS = 100
_NUMBERS = (
    "refresh_token_issued_at",
    "access_token_expiry",
    "access_token_issued_at",
    "created_at",
    "updated_at",
    "revoked_at",
    "refresh_token_expires_at",
    "disabled_at",
    "enabled_at",
    "security_event_at",
)
_STRINGS = ("email", "refresh_token", "access_token", "scopes", "security_event")
#: Attributes a save sets to the later of the stored and the incoming time.
_LATER = ("revoked_at", "disabled_at", "enabled_at")


def _number(value: float) -> dict[str, str]:
    return {"N": repr(float(value))}


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", "Unknown"))


def _failed_item(exc: ClientError) -> dict[str, Any] | None:
    """Return the stored item a failed condition returned (ReturnValuesOnConditionCheckFailure); None if absent."""
    item = exc.response.get("Item")
    return item if isinstance(item, dict) else None


class _Update:
    """One UpdateItem request being assembled: clauses plus the placeholders they use."""

    def __init__(self) -> None:
        self.sets: list[str] = []
        self.removes: list[str] = []
        self.conditions: list[str] = []
        self.names: dict[str, str] = {}
        self.values: dict[str, dict[str, str]] = {}

    def name(self, attribute: str) -> str:
        for placeholder, known in self.names.items():
            if known == attribute:
                return placeholder
        placeholder = f"#a{len(self.names)}"
        self.names[placeholder] = attribute
        return placeholder

    def value(self, value: dict[str, str]) -> str:
        placeholder = f":v{len(self.values)}"
        self.values[placeholder] = value
        return placeholder

    def set(self, attribute: str, value: dict[str, str]) -> None:
        self.sets.append(f"{self.name(attribute)} = {self.value(value)}")

    def newer_or_absent(self, attribute: str, new: float | None, *, strictly: bool = False) -> None:
        """Require the stored ``attribute`` to be absent, or older than ``new`` (or equal unless ``strictly``)."""
        placeholder = self.name(attribute)
        if new is None:
            self.conditions.append(f"attribute_not_exists({placeholder})")
        else:
            operator = "<" if strictly else "<="
            self.conditions.append(
                f"(attribute_not_exists({placeholder}) OR {placeholder} {operator} {self.value(_number(new))})"
            )

    def request(self) -> dict[str, Any]:
        expression = "SET " + ", ".join(self.sets)
        if self.removes:
            expression += " REMOVE " + ", ".join(self.removes)
        request: dict[str, Any] = {"UpdateExpression": expression, "ExpressionAttributeNames": self.names}
        if self.values:
            request["ExpressionAttributeValues"] = self.values
        if self.conditions:
            request["ConditionExpression"] = " AND ".join(self.conditions)
        return request


def _stored_number(item: dict[str, Any], attribute: str) -> float | None:
    value = item.get(attribute)
    return None if value is None else float(value["N"])


def _newer(incoming: float | None, stored: float | None, *, strictly: bool = False) -> bool:
    if stored is None:
        return True
    if incoming is None:
        return False
    return incoming > stored if strictly else incoming >= stored


class DynamoDBTokenStore(TokenStore):
    """A token store in the DynamoDB table ``table``, keyed by the string attribute ``partition_key``."""

    def __init__(
        self,
        *,
        table: str,
        region: str = "us-east-1",
        endpoint_url: str | None = None,
        create_table: bool = False,
        partition_key: str = "sub",
        aws_access_key_id: str | None = None,
        aws_secret_access_key: str | None = None,
        aws_session_token: str | None = None,
        profile_name: str | None = None,
        max_attempts: int = 10,
        connect_timeout: float = 5.0,
        read_timeout: float = 10.0,
        max_pool_connections: int = 32,
    ) -> None:
        """Build the store and its client (no request is made until first use).

        See the module docstring for each option. Raise ConfigError naming the
        option for a missing table name, an unknown profile or a bad endpoint.
        """
        if not table or not isinstance(table, str):
            raise ConfigError("store.table", "the DynamoDB table name is required")
        if not partition_key or not isinstance(partition_key, str):
            raise ConfigError("store.partition_key", "must be a non-empty attribute name")
        if partition_key in _NUMBERS + _STRINGS:
            raise ConfigError("store.partition_key", f"{partition_key!r} is already a record attribute")
        if int(max_attempts) < 1:
            raise ConfigError("store.max_attempts", "must be at least 1")
        try:
            session = boto3.session.Session(
                aws_access_key_id=aws_access_key_id,
                aws_secret_access_key=aws_secret_access_key,
                aws_session_token=aws_session_token,
                profile_name=profile_name,
                region_name=region,
            )
        except ProfileNotFound as exc:
            raise ConfigError("store.profile_name", f"no AWS profile {profile_name!r}") from exc
        config = Config(
            region_name=region,
            retries={"mode": "standard", "total_max_attempts": int(max_attempts)},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            max_pool_connections=max_pool_connections,
        )
        try:
            self._client = session.client("dynamodb", endpoint_url=endpoint_url, config=config)
        except ValueError as exc:
            raise ConfigError("store.endpoint_url", f"rejected by botocore: {exc}") from exc
        self.table_name = table
        self.partition_key = partition_key
        self._create_table = create_table
        self._table_ready = not create_table
        self._table_lock = threading.Lock()
        self._closed = False

    def __repr__(self) -> str:
        return f"<DynamoDBTokenStore table {self.table_name}>"

    @property
    def client(self) -> Any:
        """The store's shared boto3 DynamoDB client (for tests and administration)."""
        return self._client

    # -- the boundary ----------------------------------------------------

    @contextlib.contextmanager
    def _translate(self, operation: str) -> Iterator[None]:
        """Raise every botocore/OS error of the block as StorageError chained to it."""
        if self._closed:
            raise StorageError(f"DynamoDB token store {self.table_name}: cannot {operation}: the store is closed")
        try:
            yield
        except ClientError as exc:
            raise StorageError(
                f"DynamoDB token store {self.table_name}: cannot {operation} ({_error_code(exc)})"
            ) from exc
        except (BotoCoreError, OSError) as exc:
            raise StorageError(
                f"DynamoDB token store {self.table_name}: cannot {operation} ({type(exc).__name__})"
            ) from exc

    def _key(self, sub: str) -> dict[str, dict[str, str]]:
        return {self.partition_key: {"S": sub}}

    def _record(self, item: dict[str, Any]) -> TokenRecord:
        strings: dict[str, Any] = {name: item[name]["S"] for name in _STRINGS if name in item}
        scopes = strings.pop("scopes", "")
        numbers: dict[str, Any] = {name: _stored_number(item, name) for name in _NUMBERS}
        return TokenRecord(sub=item[self.partition_key]["S"], scopes=tuple(scopes.split()), **strings, **numbers)

    # -- schema ----------------------------------------------------------

    def _ensure_table(self) -> None:
        if self._table_ready:
            return
        with self._table_lock:
            if not self._table_ready:
                self._create()
                self._table_ready = True

    def _create(self) -> None:
        try:
            self._client.describe_table(TableName=self.table_name)
            return
        except ClientError as exc:
            if _error_code(exc) != "ResourceNotFoundException":
                raise
        try:
            self._client.create_table(
                TableName=self.table_name,
                AttributeDefinitions=[{"AttributeName": self.partition_key, "AttributeType": "S"}],
                KeySchema=[{"AttributeName": self.partition_key, "KeyType": "HASH"}],
                BillingMode="PAY_PER_REQUEST",
            )
            log.info("DynamoDB token store: created table %s", self.table_name)
        except ClientError as exc:
            if _error_code(exc) != "ResourceInUseException":  # created meanwhile by another process
                raise
        self._client.get_waiter("table_exists").wait(
            TableName=self.table_name, WaiterConfig={"Delay": 1, "MaxAttempts": 120}
        )

    def create_schema(self) -> None:
        """Create the table (PAY_PER_REQUEST) if missing and wait until it is active. Idempotent."""
        with self._translate("create the table"), self._table_lock:
            self._create()
            self._table_ready = True

    def has_schema(self) -> bool:
        """Return whether the table exists (``DescribeTable``), creating nothing. Raise StorageError on failure."""
        with self._translate("describe the table"):
            try:
                self._client.describe_table(TableName=self.table_name)
            except ClientError as exc:
                if _error_code(exc) != "ResourceNotFoundException":
                    raise
                return False
        return True

    def drop_schema(self) -> None:
        """Delete the table and every record in it (idempotent)."""
        with self._translate("delete the table"), self._table_lock:
            try:
                self._client.delete_table(TableName=self.table_name)
            except ClientError as exc:
                if _error_code(exc) != "ResourceNotFoundException":
                    raise
                return
            self._client.get_waiter("table_not_exists").wait(
                TableName=self.table_name, WaiterConfig={"Delay": 1, "MaxAttempts": 120}
            )
            self._table_ready = not self._create_table

    # -- TokenStore ------------------------------------------------------

    def get(self, sub: str) -> TokenRecord | None:
        if not is_valid_sub(sub):
            return None
        with self._translate("read a record"):
            self._ensure_table()
            item = self._client.get_item(TableName=self.table_name, Key=self._key(sub), ConsistentRead=True).get("Item")
        return None if item is None else self._record(item)

    def _groups(self, record: TokenRecord) -> list[str]:
        groups = []
        if record.refresh_token:
            groups.append("refresh")
        if record.access_token:
            groups.append("access")
        if record.security_event:
            groups.append("event")
        groups.extend(name for name in _LATER if getattr(record, name) is not None)
        return groups

    def _group_holds(self, group: str, record: TokenRecord, item: dict[str, Any]) -> bool:
        """Return True when ``group`` of ``record`` would win over the stored ``item`` (merge_records)."""
        if group == "refresh":
            return _newer(record.refresh_token_issued_at, _stored_number(item, "refresh_token_issued_at"))
        if group == "access":
            return _newer(record.access_token_issued_at, _stored_number(item, "access_token_issued_at"))
        if group == "event":
            return _newer(record.security_event_at, _stored_number(item, "security_event_at"))
        return _newer(getattr(record, group), _stored_number(item, group), strictly=True)

    def _update_request(self, record: TokenRecord, now: float, groups: list[str], must_exist: bool) -> dict[str, Any]:
        update = _Update()
        update.set("updated_at", _number(now))
        update.sets.append(f"{update.name('created_at')} = if_not_exists({update.name('created_at')}, "
                           f"{update.value(_number(record.created_at or now))})")
        if record.email:
            update.set("email", {"S": record.email})
        # _groups puts a group in only when the record carries its value.
        if "refresh" in groups and record.refresh_token:
            update.newer_or_absent("refresh_token_issued_at", record.refresh_token_issued_at)
            update.set("refresh_token", {"S": record.refresh_token})
            if record.refresh_token_issued_at is not None:
                update.set("refresh_token_issued_at", _number(record.refresh_token_issued_at))
            if record.refresh_token_expires_at is not None:
                update.set("refresh_token_expires_at", _number(record.refresh_token_expires_at))
            else:
                update.removes.append(update.name("refresh_token_expires_at"))
        if "access" in groups and record.access_token:
            update.newer_or_absent("access_token_issued_at", record.access_token_issued_at)
            update.set("access_token", {"S": record.access_token})
            if record.access_token_issued_at is not None:
                update.set("access_token_issued_at", _number(record.access_token_issued_at))
            if record.access_token_expiry is not None:
                update.set("access_token_expiry", _number(record.access_token_expiry))
            else:
                update.removes.append(update.name("access_token_expiry"))
            if record.scopes:
                update.set("scopes", {"S": " ".join(record.scopes)})
        if "event" in groups and record.security_event:
            update.newer_or_absent("security_event_at", record.security_event_at)
            update.set("security_event", {"S": record.security_event})
            if record.security_event_at is not None:
                update.set("security_event_at", _number(record.security_event_at))
        for name in _LATER:
            if name in groups:
                update.newer_or_absent(name, getattr(record, name), strictly=True)
                update.set(name, _number(getattr(record, name)))
        if must_exist:
            update.conditions.append(f"attribute_exists({update.name(self.partition_key)})")
        return {
            "TableName": self.table_name,
            "Key": self._key(record.sub),
            "ReturnValues": "ALL_NEW",
            "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
            **update.request(),
        }

    def save(self, record: TokenRecord) -> TokenRecord:
        check_sub(record.sub)
        now = time.time()
        every_group = self._groups(record)
        groups, must_exist = list(every_group), False
        with self._translate("save a record"):
            self._ensure_table()
            for _ in range(_MAX_CONDITION_ROUNDS):
                try:
                    response = self._client.update_item(**self._update_request(record, now, groups, must_exist))
                    return self._record(response["Attributes"])
                except ClientError as exc:
                    if _error_code(exc) != "ConditionalCheckFailedException":
                        raise
                    seen = _failed_item(exc)
                if seen is None:
                    # Deleted since the groups were chosen: it is a new record again.
                    groups, must_exist = list(every_group), False
                else:
                    groups = [g for g in groups if self._group_holds(g, record, seen)]
                    must_exist = True
        raise StorageError(
            f"DynamoDB token store {self.table_name}: cannot save a record (still conflicting after "
            f"{_MAX_CONDITION_ROUNDS} conditional updates)"
        )

    def delete(self, sub: str) -> bool:
        if not is_valid_sub(sub):
            return False
        with self._translate("delete a record"):
            self._ensure_table()
            response = self._client.delete_item(TableName=self.table_name, Key=self._key(sub), ReturnValues="ALL_OLD")
        return bool(response.get("Attributes"))

    def _holds(self, update: _Update, refresh_token: str | None) -> None:
        """Add the condition "the item exists and its refresh token is ``refresh_token``" to ``update``."""
        update.conditions.append(f"attribute_exists({update.name(self.partition_key)})")
        if refresh_token is None:
            update.conditions.append(f"attribute_not_exists({update.name('refresh_token')})")
        else:
            update.conditions.append(f"{update.name('refresh_token')} = {update.value({'S': refresh_token})}")

    def mark_revoked(self, sub: str, revoked_at: float, *, if_refresh_token: str | None) -> bool:
        if not is_valid_sub(sub):
            return False
        update = _Update()
        update.set("revoked_at", _number(revoked_at))
        update.set("updated_at", _number(time.time()))
        self._holds(update, if_refresh_token)
        update.newer_or_absent("revoked_at", revoked_at, strictly=True)
        with self._translate("mark a record revoked"):
            self._ensure_table()
            try:
                self._client.update_item(TableName=self.table_name, Key=self._key(sub),
                                         ReturnValuesOnConditionCheckFailure="ALL_OLD", **update.request())
                return True
            except ClientError as exc:
                if _error_code(exc) != "ConditionalCheckFailedException":
                    raise
                seen = _failed_item(exc)
        # The condition failed: on another refresh token (or no item), or only
        # because a later mark is stored already, which counts as marked.
        if seen is None:
            return False
        stored = self._record(seen)
        return stored.refresh_token == if_refresh_token and (stored.revoked_at or 0.0) >= revoked_at

    def delete_if(self, sub: str, *, if_refresh_token: str | None) -> bool:
        if not is_valid_sub(sub):
            return False
        condition = _Update()
        self._holds(condition, if_refresh_token)
        request: dict[str, Any] = {"ConditionExpression": " AND ".join(condition.conditions),
                                   "ExpressionAttributeNames": condition.names}
        if condition.values:
            request["ExpressionAttributeValues"] = condition.values
        with self._translate("delete a record"):
            self._ensure_table()
            try:
                self._client.delete_item(TableName=self.table_name, Key=self._key(sub), **request)
            except ClientError as exc:
                if _error_code(exc) != "ConditionalCheckFailedException":
                    raise
                return False
        return True

    def records(self) -> Iterator[TokenRecord]:
        request: dict[str, Any] = {"TableName": self.table_name, "ConsistentRead": True}
        while True:
            with self._translate("list records"):
                self._ensure_table()
                page = self._client.scan(**request)
            for item in page.get("Items", []):
                yield self._record(item)
            if not page.get("LastEvaluatedKey"):
                return
            request["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def check(self) -> None:
        """Raise StorageError unless the table exists, is keyed by ``partition_key`` and answers reads."""
        with self._translate("describe the table"):
            self._ensure_table()
            table = self._client.describe_table(TableName=self.table_name)["Table"]
        hash_keys = [k["AttributeName"] for k in table.get("KeySchema", []) if k.get("KeyType") == "HASH"]
        if hash_keys != [self.partition_key]:
            raise StorageError(
                f"DynamoDB token store {self.table_name}: the table's partition key is {hash_keys}, "
                f"but store.partition_key is {self.partition_key!r}"
            )
        self.get("tornado-signin-health-check")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._client.close()
