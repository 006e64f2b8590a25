"""DynamoDB storage of principals, refresh tokens and the root certificate.

Everything lives in one table with a string partition key `pk`:

- `principal#<name>`: a `Principal` with its compiled grants, so one `GetItem`
  answers a token request.
- `refresh#<sha256 hex>`: a `RefreshTokenRecord`; `expires_at` is the table's TTL
  attribute, and reads check it too because TTL deletion can lag by days.
- `root-certificate#<key id>`: the PEM of the root certificate KMS signed.
- `policy#current`: the version of the policy last applied.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import BotoCoreError, ClientError

from regauth.errors import StoreUnavailableError
from regauth.models import Grant, Principal, RefreshTokenRecord

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

    from regauth.policy import CompiledPolicy

logger = logging.getLogger(__name__)

PRINCIPAL_PREFIX = "principal#"
REFRESH_PREFIX = "refresh#"
ROOT_CERTIFICATE_PREFIX = "root-certificate#"
POLICY_CURRENT_KEY = "policy#current"

# Attributes that admin actions and the token path change at run time. Applying a
# policy keeps them, so a re-apply does not undo a revocation or a lockout.
_RUNTIME_ATTRIBUTES = ("refresh_not_before", "failed_logins", "failed_window_start")

_serializer = TypeSerializer()
_deserializer = TypeDeserializer()


class IdentityStore(Protocol):
    """What the token service reads and writes. `DynamoStore` is the implementation."""

    def get_principal(self, name: str) -> Principal | None: ...

    def get_principal_and_refresh_token(
        self, name: str, token_hash: str
    ) -> tuple[Principal | None, RefreshTokenRecord | None]: ...

    def put_refresh_token(self, record: RefreshTokenRecord) -> None: ...

    def record_failed_login(self, name: str, now: int, window: int) -> None: ...

    def reset_failed_logins(self, name: str) -> None: ...


def _serialize(item: Mapping[str, Any]) -> dict[str, Any]:
    return {key: _serializer.serialize(value) for key, value in item.items() if value is not None}


def _deserialize(item: Mapping[str, Any]) -> dict[str, Any]:
    return {key: _deserializer.deserialize(value) for key, value in item.items()}


def principal_to_item(principal: Principal) -> dict[str, Any]:
    """Convert a principal to a DynamoDB item (Python values, not yet serialized)."""
    return {
        "pk": PRINCIPAL_PREFIX + principal.name,
        "name": principal.name,
        "password_hash": principal.password_hash,
        "disabled": principal.disabled,
        "refresh_not_before": principal.refresh_not_before,
        "policy_version": principal.policy_version,
        "failed_logins": principal.failed_logins,
        "failed_window_start": principal.failed_window_start,
        "grants": [
            {
                "type": grant.type,
                "pattern": grant.pattern,
                "actions": sorted(grant.actions),
                "rule_id": grant.rule_id,
            }
            for grant in principal.grants
        ],
    }


def principal_from_item(item: Mapping[str, Any]) -> Principal:
    """Build a principal from a deserialized item. Numbers arrive as `Decimal`."""
    return Principal(
        name=str(item["name"]),
        password_hash=item.get("password_hash"),
        disabled=bool(item.get("disabled", False)),
        refresh_not_before=int(item.get("refresh_not_before", 0)),
        policy_version=str(item.get("policy_version", "")),
        failed_logins=int(item.get("failed_logins", 0)),
        failed_window_start=int(item.get("failed_window_start", 0)),
        grants=tuple(
            Grant(
                type=grant["type"],
                pattern=str(grant["pattern"]),
                actions=frozenset(str(action) for action in grant["actions"]),
                rule_id=str(grant["rule_id"]),
            )
            for grant in item.get("grants", [])
        ),
    )


def _refresh_from_item(item: Mapping[str, Any]) -> RefreshTokenRecord:
    return RefreshTokenRecord(
        token_hash=str(item["pk"]).removeprefix(REFRESH_PREFIX),
        principal=str(item["principal"]),
        service=str(item["service"]),
        client_id=str(item["client_id"]),
        issued_at=int(item["issued_at"]),
        expires_at=int(item["expires_at"]),
    )


class DynamoStore:
    """`IdentityStore` and `RootCertificateStore` backed by one DynamoDB table."""

    def __init__(self, client: DynamoDBClient, table_name: str) -> None:
        self._client = client
        self._table = table_name

    def _unavailable(self, operation: str, exc: Exception) -> StoreUnavailableError:
        code = exc.response["Error"]["Code"] if isinstance(exc, ClientError) else type(exc).__name__
        logger.error(
            "DynamoDB call failed",
            extra={"operation": operation, "error_code": code, "table": self._table},
        )
        return StoreUnavailableError(f"DynamoDB {operation} failed: {code}")

    def _get(self, key: str, *, consistent: bool = False) -> dict[str, Any] | None:
        try:
            response = self._client.get_item(
                TableName=self._table,
                Key={"pk": {"S": key}},
                ConsistentRead=consistent,
            )
        except (ClientError, BotoCoreError) as exc:
            raise self._unavailable("GetItem", exc) from exc
        item = response.get("Item")
        return _deserialize(item) if item else None

    def get_principal(self, name: str) -> Principal | None:
        item = self._get(PRINCIPAL_PREFIX + name)
        return principal_from_item(item) if item else None

    def get_principal_and_refresh_token(
        self, name: str, token_hash: str
    ) -> tuple[Principal | None, RefreshTokenRecord | None]:
        """Read a principal and a refresh token in one `BatchGetItem` round trip."""
        keys = [{"pk": {"S": PRINCIPAL_PREFIX + name}}, {"pk": {"S": REFRESH_PREFIX + token_hash}}]
        request: dict[str, Any] = {self._table: {"Keys": keys, "ConsistentRead": True}}
        items: list[dict[str, Any]] = []
        try:
            # DynamoDB may return some keys as unprocessed under throttling. Two keys
            # need at most a few retries; past that, fail closed.
            for _attempt in range(3):
                response = self._client.batch_get_item(RequestItems=request)
                items.extend(response.get("Responses", {}).get(self._table, []))
                request = dict(response.get("UnprocessedKeys") or {})
                if not request:
                    break
            else:
                raise StoreUnavailableError("DynamoDB BatchGetItem left keys unprocessed")
        except (ClientError, BotoCoreError) as exc:
            raise self._unavailable("BatchGetItem", exc) from exc

        principal: Principal | None = None
        refresh: RefreshTokenRecord | None = None
        for raw in items:
            item = _deserialize(raw)
            if str(item["pk"]).startswith(PRINCIPAL_PREFIX):
                principal = principal_from_item(item)
            else:
                refresh = _refresh_from_item(item)
        return principal, refresh

    def put_refresh_token(self, record: RefreshTokenRecord) -> None:
        item = {
            "pk": REFRESH_PREFIX + record.token_hash,
            "principal": record.principal,
            "service": record.service,
            "client_id": record.client_id,
            "issued_at": record.issued_at,
            "expires_at": record.expires_at,
        }
        try:
            self._client.put_item(TableName=self._table, Item=_serialize(item))
        except (ClientError, BotoCoreError) as exc:
            raise self._unavailable("PutItem", exc) from exc

    def record_failed_login(self, name: str, now: int, window: int) -> None:
        """Count a failed login, starting a new window when the old one has passed.

        The condition makes the update a no-op for names that are not principals,
        so guessing user names cannot fill the table.
        """
        key = {"pk": {"S": PRINCIPAL_PREFIX + name}}
        try:
            try:
                self._client.update_item(
                    TableName=self._table,
                    Key=key,
                    UpdateExpression="ADD failed_logins :one",
                    ConditionExpression="attribute_exists(pk) AND failed_window_start > :start",
                    ExpressionAttributeValues={
                        ":one": {"N": "1"},
                        ":start": {"N": str(now - window)},
                    },
                )
            except ClientError as exc:
                if exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
                    raise
                self._client.update_item(
                    TableName=self._table,
                    Key=key,
                    UpdateExpression="SET failed_logins = :one, failed_window_start = :now",
                    ConditionExpression="attribute_exists(pk)",
                    ExpressionAttributeValues={":one": {"N": "1"}, ":now": {"N": str(now)}},
                )
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
                return
            raise self._unavailable("UpdateItem", exc) from exc
        except BotoCoreError as exc:
            raise self._unavailable("UpdateItem", exc) from exc

    def reset_failed_logins(self, name: str) -> None:
        try:
            self._client.update_item(
                TableName=self._table,
                Key={"pk": {"S": PRINCIPAL_PREFIX + name}},
                UpdateExpression="SET failed_logins = :zero",
                ConditionExpression="attribute_exists(pk)",
                ExpressionAttributeValues={":zero": {"N": "0"}},
            )
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
                return
            raise self._unavailable("UpdateItem", exc) from exc
        except BotoCoreError as exc:
            raise self._unavailable("UpdateItem", exc) from exc

    def get_root_certificate(self, key_id: str) -> bytes | None:
        item = self._get(ROOT_CERTIFICATE_PREFIX + key_id, consistent=True)
        return str(item["pem"]).encode("ascii") if item else None

    def put_root_certificate(self, key_id: str, pem: bytes) -> bytes:
        """Store the root certificate unless one exists, and return the stored one.

        Two cold instances may build a root at once. The conditional write lets the
        first one win, and the other adopts it, so every leaf chains to one root.
        """
        key = ROOT_CERTIFICATE_PREFIX + key_id
        item = {"pk": key, "pem": pem.decode("ascii")}
        try:
            self._client.put_item(
                TableName=self._table,
                Item=_serialize(item),
                ConditionExpression="attribute_not_exists(pk)",
            )
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise self._unavailable("PutItem", exc) from exc
            stored = self.get_root_certificate(key_id)
            if stored is None:
                raise StoreUnavailableError("root certificate vanished after a write race") from exc
            return stored
        except BotoCoreError as exc:
            raise self._unavailable("PutItem", exc) from exc
        return pem

    def get_policy_version(self) -> str | None:
        item = self._get(POLICY_CURRENT_KEY, consistent=True)
        return str(item["version"]) if item else None

    def apply_policy(self, compiled: CompiledPolicy) -> None:
        """Write every principal of a compiled policy and delete the ones it dropped.

        Runtime attributes of existing principals (revocation time, failed-login
        counters) are carried over.
        """
        # NOTE: principals are written in batches of 25, so a token request that runs
        # during an apply may see some principals from the old policy and some from
        # the new one.
        existing = {item["name"]: item for item in self._scan_principals()}
        writes: list[dict[str, Any]] = []
        for principal in compiled.principals:
            item = principal_to_item(principal)
            previous = existing.pop(principal.name, None)
            if previous is not None:
                for attribute in _RUNTIME_ATTRIBUTES:
                    if attribute in previous:
                        item[attribute] = int(previous[attribute])
            writes.append({"PutRequest": {"Item": _serialize(item)}})

        for name in existing:
            writes.append({"DeleteRequest": {"Key": {"pk": {"S": PRINCIPAL_PREFIX + name}}}})
        writes.append(
            {
                "PutRequest": {
                    "Item": _serialize({"pk": POLICY_CURRENT_KEY, "version": compiled.version})
                }
            }
        )
        self._batch_write(writes)

    def _scan_principals(self) -> Iterable[dict[str, Any]]:
        paginator = self._client.get_paginator("scan")
        try:
            pages = paginator.paginate(
                TableName=self._table,
                FilterExpression="begins_with(pk, :prefix)",
                ExpressionAttributeValues={":prefix": {"S": PRINCIPAL_PREFIX}},
                ConsistentRead=True,
            )
            for page in pages:
                for raw in page.get("Items", []):
                    yield _deserialize(raw)
        except (ClientError, BotoCoreError) as exc:
            raise self._unavailable("Scan", exc) from exc

    def _batch_write(self, writes: list[dict[str, Any]]) -> None:
        try:
            for start in range(0, len(writes), 25):
                pending: dict[str, Any] = {self._table: writes[start : start + 25]}
                for _attempt in range(8):
                    response = self._client.batch_write_item(RequestItems=pending)
                    pending = dict(response.get("UnprocessedItems") or {})
                    if not pending:
                        break
                else:
                    raise StoreUnavailableError("DynamoDB BatchWriteItem left items unprocessed")
        except (ClientError, BotoCoreError) as exc:
            raise self._unavailable("BatchWriteItem", exc) from exc
