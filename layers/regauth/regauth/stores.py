"""DynamoDB storage of principals, refresh tokens and the root certificate.

Everything lives in one table with a string partition key `pk`:

- `principal#<name>`: what admin actions and the token path change at run time: a
  password hash set by an admin, the admin's disable flag, the refresh revocation
  time, failed-login counters and a host's API key digest. Applying a policy never
  writes these attributes.
- `grants#<name>`: the principal as each retained policy version compiled it, in
  `versions`, a JSON object keyed by version number: grants and denies, the policy's
  password hash and its disable flag. Versions that stopped being retained, and
  entries of an apply that failed before its flip, stay until the next apply removes
  them, so an item can hold up to two versions more. Only applying a policy writes it
  (`regauth.policy_store`). JSON text instead of nested DynamoDB maps keeps the item
  cheap to read and write, both for DynamoDB and for the JSON parsing in a request.
- `policy#current`: the number (`seq`) and content hash of the active version.
- `policy#version#<n>`: besides the version's source and metadata, its role map in
  `roles` (JSON text: role principal name to ARN patterns), which IAM sign-in caches
  in memory by version number (`regauth.roles`).
- `policy#version#<n>`, `policy#history`, `policy#sequence`, `policy#lock`: the
  versions' sources and metadata, see `regauth.policy_store`.
- `refresh#<sha256 hex>`: a `RefreshTokenRecord`; `expires_at` is the table's TTL
  attribute, and reads check it too because TTL deletion can lag by days.
- `root-certificate#<key id>`: the PEM of the root certificate KMS signed.
- `attempts#<sha256 hex of a user name>`: failed-login counter of a name that is no
  principal, expiring through the TTL attribute `expires_at`.

A token request reads `policy#current` and both items of its principal, plus the
refresh token when it presents one, in one `BatchGetItem`. That one round trip returns
either the old or the new version of a policy being applied, never a mix.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import BotoCoreError, ClientError

from regauth.errors import StoreUnavailableError
from regauth.iam import RoleMap
from regauth.models import Grant, Principal, RefreshTokenRecord

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

    from regauth.policy import CompiledPolicy
    from regauth.policy_store import ApplyResult

logger = logging.getLogger(__name__)

PRINCIPAL_PREFIX = "principal#"
GRANTS_PREFIX = "grants#"
REFRESH_PREFIX = "refresh#"
ROOT_CERTIFICATE_PREFIX = "root-certificate#"
UNKNOWN_ATTEMPTS_PREFIX = "attempts#"
POLICY_CURRENT_KEY = "policy#current"
POLICY_VERSION_PREFIX = "policy#version#"

_serializer = TypeSerializer()
_deserializer = TypeDeserializer()


class IdentityStore(Protocol):
    """The storage interface of the token service, implemented by `DynamoStore`."""

    def get_principal(self, name: str) -> Principal | None: ...

    def get_principal_with_version(self, name: str) -> tuple[Principal | None, int | None]: ...

    def get_policy_seq(self) -> int | None: ...

    def get_role_map(self, version: int) -> RoleMap: ...

    def get_principal_and_refresh_token(
        self, name: str, token_hash: str
    ) -> tuple[Principal | None, RefreshTokenRecord | None]: ...

    def put_refresh_token(self, record: RefreshTokenRecord) -> None: ...

    def record_failed_login(self, name: str, now: int, window: int) -> None: ...

    def reserve_login_attempt(self, name: str, now: int, window: int) -> tuple[int, int]: ...

    def reserve_unknown_name_attempt(self, name: str, now: int, window: int) -> tuple[int, int]: ...

    def reset_failed_logins(self, name: str) -> None: ...


def _serialize(item: Mapping[str, Any]) -> dict[str, Any]:
    return {key: _serializer.serialize(value) for key, value in item.items() if value is not None}


def _deserialize(item: Mapping[str, Any]) -> dict[str, Any]:
    return {key: _deserializer.deserialize(value) for key, value in item.items()}


def grant_to_map(grant: Grant) -> dict[str, Any]:
    """Convert a compiled grant to a DynamoDB map, leaving out unset conditions."""
    item: dict[str, Any] = {
        "type": grant.type,
        "pattern": grant.pattern,
        "actions": sorted(grant.actions),
        "rule_id": grant.rule_id,
    }
    if grant.effect != "allow":
        item["effect"] = grant.effect
    if grant.source_ips:
        item["source_ips"] = list(grant.source_ips)
    if grant.not_before is not None:
        item["not_before"] = grant.not_before
    if grant.not_after is not None:
        item["not_after"] = grant.not_after
    return item


def grant_from_map(item: Mapping[str, Any]) -> Grant:
    """Build a grant from a deserialized map. Numbers arrive as `Decimal`."""
    not_before = item.get("not_before")
    not_after = item.get("not_after")
    return Grant(
        type=item["type"],
        pattern=str(item["pattern"]),
        actions=frozenset(str(action) for action in item["actions"]),
        rule_id=str(item["rule_id"]),
        effect="deny" if item.get("effect") == "deny" else "allow",
        source_ips=tuple(str(cidr) for cidr in item.get("source_ips", ())),
        not_before=None if not_before is None else int(not_before),
        not_after=None if not_after is None else int(not_after),
    )


def version_entry(principal: Principal) -> dict[str, Any]:
    """Convert a compiled principal to its entry in a `grants#` item's `versions` map."""
    entry: dict[str, Any] = {
        "grants": [grant_to_map(grant) for grant in principal.grants],
        "disabled": principal.disabled,
    }
    if principal.password_hash:
        entry["password_hash"] = principal.password_hash
    if principal.arn_patterns:
        entry["arn_patterns"] = list(principal.arn_patterns)
    return entry


def decode_versions(grants: Mapping[str, Any] | None) -> dict[str, Any]:
    """Return the `versions` object of a deserialized `grants#` item, or an empty one."""
    if not grants or "versions" not in grants:
        return {}
    versions: dict[str, Any] = json.loads(grants["versions"])
    return versions


def encode_versions(versions: Mapping[str, Any]) -> str:
    """Encode a `versions` object as compact JSON text for a `grants#` item."""
    return json.dumps(versions, separators=(",", ":"), sort_keys=True)


def principal_from_items(
    name: str,
    version: int,
    runtime: Mapping[str, Any] | None,
    grants: Mapping[str, Any] | None,
) -> Principal | None:
    """Build a principal as policy version `version` defines it, with its runtime state.

    Returns None when that version has no such principal. A password hash set by an
    admin takes precedence over one in the policy. The principal is disabled when the
    policy or an admin disabled it.
    """
    entry = decode_versions(grants).get(str(version))
    if entry is None:
        return None
    state = runtime or {}
    return Principal(
        name=name,
        grants=tuple(grant_from_map(grant) for grant in entry.get("grants", [])),
        password_hash=state.get("admin_password_hash") or entry.get("password_hash"),
        disabled=bool(entry.get("disabled", False)) or bool(state.get("admin_disabled", False)),
        refresh_not_before=int(state.get("refresh_not_before", 0)),
        policy_version=str(version),
        failed_logins=int(state.get("failed_logins", 0)),
        failed_window_start=int(state.get("failed_window_start", 0)),
        api_key_hash=state.get("api_key_hash"),
        api_key_expires_at=int(state.get("api_key_expires_at", 0)),
        api_key_id=str(state.get("api_key_id", "")),
        arn_patterns=tuple(str(pattern) for pattern in entry.get("arn_patterns", ())),
    )


def encode_role_map(role_map: RoleMap) -> str:
    """Encode a role map as the JSON text stored in a `policy#version#<n>` item."""
    return json.dumps(
        [[name, list(patterns)] for name, patterns in role_map.roles], separators=(",", ":")
    )


def decode_role_map(text: str | None) -> RoleMap:
    """Decode `encode_role_map` text. A version stored before roles existed has none."""
    if not text:
        return RoleMap()
    entries = json.loads(text)
    return RoleMap(
        tuple(
            (str(name), tuple(str(pattern) for pattern in patterns)) for name, patterns in entries
        )
    )


def _refresh_from_item(item: Mapping[str, Any]) -> RefreshTokenRecord:
    return RefreshTokenRecord(
        token_hash=str(item["pk"]).removeprefix(REFRESH_PREFIX),
        principal=str(item["principal"]),
        service=str(item["service"]),
        client_id=str(item["client_id"]),
        issued_at=int(item["issued_at"]),
        expires_at=int(item["expires_at"]),
        credential=str(item.get("credential", "")),
    )


def _attempt_count(attributes: Mapping[str, Any]) -> tuple[int, int]:
    return int(attributes["failed_logins"]["N"]), int(attributes["failed_window_start"]["N"])


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

    def _batch_get(self, keys: list[str]) -> dict[str, dict[str, Any]]:
        """Read up to 100 items in one `BatchGetItem` round trip, with strong consistency.

        Strong consistency makes an admin change (a rotated key, a disable) take effect
        on the next request instead of after replication.
        """
        request: dict[str, Any] = {
            self._table: {"Keys": [{"pk": {"S": key}} for key in keys], "ConsistentRead": True}
        }
        items: dict[str, dict[str, Any]] = {}
        try:
            # DynamoDB may return some keys as unprocessed under throttling. A few keys
            # need at most a few retries; past that, fail closed.
            for _attempt in range(3):
                response = self._client.batch_get_item(RequestItems=request)
                for raw in response.get("Responses", {}).get(self._table, []):
                    item = _deserialize(raw)
                    items[str(item["pk"])] = item
                request = dict(response.get("UnprocessedKeys") or {})
                if not request:
                    break
            else:
                raise StoreUnavailableError("DynamoDB BatchGetItem left keys unprocessed")
        except (ClientError, BotoCoreError) as exc:
            raise self._unavailable("BatchGetItem", exc) from exc
        return items

    def _principal_of(self, name: str, items: Mapping[str, Mapping[str, Any]]) -> Principal | None:
        pointer = items.get(POLICY_CURRENT_KEY)
        if pointer is None:
            return None
        return principal_from_items(
            name,
            int(pointer["seq"]),
            items.get(PRINCIPAL_PREFIX + name),
            items.get(GRANTS_PREFIX + name),
        )

    def get_principal(self, name: str) -> Principal | None:
        """Read a principal as the active policy version defines it, in one round trip."""
        return self.get_principal_with_version(name)[0]

    def get_principal_with_version(self, name: str) -> tuple[Principal | None, int | None]:
        """Read a principal and the active version number (None before any apply) at once.

        The number is returned even when that version has no such principal, so IAM
        sign-in can tell a removed role from a stale role map without another read.
        """
        keys = [POLICY_CURRENT_KEY, PRINCIPAL_PREFIX + name, GRANTS_PREFIX + name]
        items = self._batch_get(keys)
        pointer = items.get(POLICY_CURRENT_KEY)
        version = int(pointer["seq"]) if pointer is not None else None
        return self._principal_of(name, items), version

    def get_policy_seq(self) -> int | None:
        """Return the active policy version number, or None before the first apply."""
        item = self._get(POLICY_CURRENT_KEY, consistent=True)
        return int(item["seq"]) if item else None

    def get_role_map(self, version: int) -> RoleMap:
        """Return the role map stored with policy version `version` (empty if it has none)."""
        item = self._get(POLICY_VERSION_PREFIX + str(version), consistent=True)
        return decode_role_map(str(item["roles"]) if item and "roles" in item else None)

    def get_principal_and_refresh_token(
        self, name: str, token_hash: str
    ) -> tuple[Principal | None, RefreshTokenRecord | None]:
        """Read a principal and a refresh token in one `BatchGetItem` round trip."""
        refresh_key = REFRESH_PREFIX + token_hash
        keys = [POLICY_CURRENT_KEY, PRINCIPAL_PREFIX + name, GRANTS_PREFIX + name, refresh_key]
        items = self._batch_get(keys)
        refresh_item = items.get(refresh_key)
        refresh = _refresh_from_item(refresh_item) if refresh_item else None
        return self._principal_of(name, items), refresh

    def put_refresh_token(self, record: RefreshTokenRecord) -> None:
        item = {
            "pk": REFRESH_PREFIX + record.token_hash,
            "principal": record.principal,
            "service": record.service,
            "client_id": record.client_id,
            "issued_at": record.issued_at,
            "expires_at": record.expires_at,
            "credential": record.credential,
        }
        try:
            self._client.put_item(TableName=self._table, Item=_serialize(item))
        except (ClientError, BotoCoreError) as exc:
            raise self._unavailable("PutItem", exc) from exc

    def record_failed_login(self, name: str, now: int, window: int) -> None:
        """Count a failed login (see `reserve_login_attempt`)."""
        self.reserve_login_attempt(name, now, window)

    def reserve_login_attempt(self, name: str, now: int, window: int) -> tuple[int, int]:
        """Count a login attempt atomically; return the count and its window's start.

        The count is taken before the password is checked, so concurrent guesses
        cannot all read the same old count and pass the limit together. A success
        resets it. A new window starts when the old one has passed, and that write is
        conditional too, so two requests cannot both restart it and lose a count.
        For a name that is not a principal this returns `(0, 0)` and writes nothing.
        """
        return self._reserve_attempt(PRINCIPAL_PREFIX + name, now, window, expires_at=None)

    def reserve_unknown_name_attempt(self, name: str, now: int, window: int) -> tuple[int, int]:
        """Count a login attempt for a name that is no principal, like `reserve_login_attempt`.

        Without it, unknown names would never reach the lockout and so could be
        distinguished from real ones. The counter item is keyed by a digest of the name and
        expires with its window through the table's TTL, so guessed names do not
        accumulate.
        """
        digest = hashlib.sha256(name.encode("utf-8")).hexdigest()
        return self._reserve_attempt(
            UNKNOWN_ATTEMPTS_PREFIX + digest, now, window, expires_at=now + 2 * window
        )

    def _reserve_attempt(
        self, key_value: str, now: int, window: int, *, expires_at: int | None
    ) -> tuple[int, int]:
        # A principal's counter may only be updated on an existing item; an unknown
        # name's counter item is created on demand and carries a TTL.
        must_exist = expires_at is None
        exists = "attribute_exists(pk) AND " if must_exist else ""
        expiry = "" if must_exist else ", expires_at = :expires"
        values: dict[str, Any] = {":one": {"N": "1"}, ":start": {"N": str(now - window)}}
        if not must_exist:
            values[":expires"] = {"N": str(expires_at)}
        key = {"pk": {"S": key_value}}
        try:
            for _attempt in range(3):
                try:
                    response = self._client.update_item(
                        TableName=self._table,
                        Key=key,
                        UpdateExpression=(
                            "ADD failed_logins :one"
                            if must_exist
                            else "SET expires_at = :expires ADD failed_logins :one"
                        ),
                        ConditionExpression=f"{exists}failed_window_start > :start",
                        ExpressionAttributeValues=values,
                        ReturnValues="ALL_NEW",
                    )
                    return _attempt_count(response["Attributes"])
                except ClientError as exc:
                    if exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
                        raise
                try:
                    response = self._client.update_item(
                        TableName=self._table,
                        Key=key,
                        UpdateExpression=(
                            f"SET failed_logins = :one, failed_window_start = :now{expiry}"
                        ),
                        ConditionExpression=(
                            f"{exists}(attribute_not_exists(failed_window_start)"
                            " OR failed_window_start <= :start)"
                        ),
                        ExpressionAttributeValues={**values, ":now": {"N": str(now)}},
                        ReturnValues="ALL_NEW",
                    )
                    return _attempt_count(response["Attributes"])
                except ClientError as exc:
                    if exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
                        raise
                # Either the principal does not exist, or another request started a
                # new window between the two writes. A read distinguishes the two.
                if must_exist and self._get(key_value, consistent=True) is None:
                    return 0, 0
        except ClientError as exc:
            raise self._unavailable("UpdateItem", exc) from exc
        except BotoCoreError as exc:
            raise self._unavailable("UpdateItem", exc) from exc
        raise StoreUnavailableError("DynamoDB UpdateItem kept conflicting on the login counter")

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
        """Return the content hash of the active policy version, or None before any apply."""
        item = self._get(POLICY_CURRENT_KEY, consistent=True)
        return str(item["content_hash"]) if item else None

    def apply_policy(
        self, compiled: CompiledPolicy, *, actor: str = "", source: str = "", text: str = ""
    ) -> ApplyResult:
        """Apply a compiled policy as a new version. See `PolicyStore.apply`."""
        from regauth.policy_store import PolicyStore

        store = PolicyStore(self._client, self._table)
        return store.apply(compiled, actor=actor, source=source, text=text)
