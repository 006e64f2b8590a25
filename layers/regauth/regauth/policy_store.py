"""Versioned, atomic policy apply and rollback in the DynamoDB table.

Applying version N of a policy:

1. takes the lock item `policy#lock`, so applies and rollbacks run one at a time;
2. returns without a change when N's content hash equals the active version's;
3. takes N from the counter `policy#sequence` and stores the source, hash, actor,
   time and role map in `policy#version#<N>`;
4. adds N's entry to the `versions` map of every principal's `grants#` item, and
   creates `principal#` items for new principals;
5. flips `policy#current` to N with one conditional write;
6. records N in `policy#history`, marking which versions stay retained.

A token request reads `policy#current` and the principal's items together (see
`regauth.stores`), so it reads the old version until step 5 and the new one after it,
never a mix. Each apply retains the last `retained` versions (5 by default) and the
version that was active before it, and rollback flips the pointer back to one of them.

Nothing a retained version needs is removed before the flip. Step 4 removes only the
entries of versions that the history already marks as not retained, and entries of
applies that failed before their flip. So the entries of a version that step 6 stops
retaining are removed by the next apply, and after a failure at any step every
version that the history marks as retained can still be restored. Runtime attributes
in `principal#` items are never written here, except that step 4 deletes the items of
a principal that is in no retained version.
"""

from __future__ import annotations

import logging
import time
import uuid
import zlib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from boto3.dynamodb.types import Binary, TypeDeserializer, TypeSerializer
from botocore.exceptions import BotoCoreError, ClientError

from regauth.errors import (
    InvalidAdminRequestError,
    PolicyConflictError,
    StoreUnavailableError,
)
from regauth.models import ANONYMOUS
from regauth.stores import (
    GRANTS_PREFIX,
    POLICY_CURRENT_KEY,
    POLICY_VERSION_PREFIX,
    PRINCIPAL_PREFIX,
    decode_versions,
    encode_role_map,
    encode_versions,
    version_entry,
)

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

    from regauth.policy import CompiledPolicy

logger = logging.getLogger(__name__)

LOCK_KEY = "policy#lock"
SEQUENCE_KEY = "policy#sequence"
HISTORY_KEY = "policy#history"
VERSION_PREFIX = POLICY_VERSION_PREFIX

DEFAULT_RETAINED_VERSIONS = 5
# A Lambda function runs at most 15 minutes, so a lock older than that belongs to an
# apply that died, and the next apply may take it over.
LOCK_SECONDS = 15 * 60
# Entries kept in `policy#history`, which admin actions read in one GetItem.
MAX_HISTORY = 100
# A DynamoDB item is at most 400 KB. Larger compressed sources are not stored, and
# such a version can then be rolled back to but not shown or diffed.
MAX_STORED_SOURCE_BYTES = 300_000
BATCH_WRITE_SIZE = 25

_serializer = TypeSerializer()
_deserializer = TypeDeserializer()


@dataclass(frozen=True, slots=True)
class PolicyVersion:
    """An applied policy version: its number, content hash, who applied it and when."""

    seq: int
    content_hash: str
    actor: str
    applied_at: int
    source: str
    principals: int
    retained: bool = True


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """The outcome of an apply or a rollback.

    `changed` is false when the requested version was already active. `previous` is
    the version that was active before, or None for the first apply.
    """

    version: int
    content_hash: str
    changed: bool
    previous: int | None
    principals: int = 0


def _serialize(item: Mapping[str, Any]) -> dict[str, Any]:
    return {key: _serializer.serialize(value) for key, value in item.items() if value is not None}


def _deserialize(item: Mapping[str, Any]) -> dict[str, Any]:
    return {key: _deserializer.deserialize(value) for key, value in item.items()}


def _version_from_map(item: Mapping[str, Any]) -> PolicyVersion:
    return PolicyVersion(
        seq=int(item["seq"]),
        content_hash=str(item["content_hash"]),
        actor=str(item.get("actor", "")),
        applied_at=int(item.get("applied_at", 0)),
        source=str(item.get("source", "")),
        principals=int(item.get("principals", 0)),
        retained=bool(item.get("retained", True)),
    )


class PolicyStore:
    """Apply, roll back and read policy versions in one DynamoDB table."""

    def __init__(
        self,
        client: DynamoDBClient,
        table_name: str,
        *,
        retained: int = DEFAULT_RETAINED_VERSIONS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if retained < 2:
            raise ValueError("at least two versions must be retained, so rollback has a target")
        self._client = client
        self._table = table_name
        self._retained = retained
        self._clock = clock

    # Reading.

    def current(self) -> PolicyVersion | None:
        """Return the active version, or None before the first apply."""
        pointer = self._get(POLICY_CURRENT_KEY)
        if pointer is None:
            return None
        seq = int(pointer["seq"])
        # The history is written after the flip, so after a failure between the two
        # the version's own item is the record of the active version.
        return self.version(seq) or self._version_item(seq)

    def version(self, seq: int) -> PolicyVersion | None:
        """Return version `seq` from the history, or None if it was never applied."""
        for entry in self.history():
            if entry.seq == seq:
                return entry
        return None

    def _version_item(self, seq: int) -> PolicyVersion | None:
        item = self._get(VERSION_PREFIX + str(seq))
        return _version_from_map(item) if item else None

    def history(self) -> list[PolicyVersion]:
        """Return the applied versions, newest first, at most `MAX_HISTORY` of them."""
        item = self._get(HISTORY_KEY)
        entries = [_version_from_map(entry) for entry in (item or {}).get("versions", [])]
        return sorted(entries, key=lambda entry: entry.seq, reverse=True)

    def source_text(self, seq: int) -> str | None:
        """Return the policy file of version `seq`, or None if it was not stored."""
        item = self._get(VERSION_PREFIX + str(seq))
        if item is None or "text" not in item:
            return None
        return zlib.decompress(bytes(item["text"].value)).decode("utf-8")

    def descriptions(self, seq: int) -> dict[str, str]:
        """Return the rule descriptions of version `seq`, keyed by rule id."""
        item = self._get(VERSION_PREFIX + str(seq))
        return {str(key): str(value) for key, value in (item or {}).get("descriptions", {}).items()}

    # Changing.

    def apply(
        self,
        compiled: CompiledPolicy,
        *,
        actor: str = "",
        source: str = "",
        text: str = "",
        descriptions: Mapping[str, str] | None = None,
    ) -> ApplyResult:
        """Make `compiled` the active policy as a new version, as the module docstring lists.

        Raises PolicyConflictError when another apply or rollback runs, and
        StoreUnavailableError when DynamoDB fails. Either way the version that was
        active stays active.
        """
        with self._lock(actor):
            pointer = self._get(POLICY_CURRENT_KEY)
            previous = int(pointer["seq"]) if pointer else None
            if pointer is not None and pointer["content_hash"] == compiled.version:
                return ApplyResult(previous or 0, compiled.version, False, previous)

            seq = self._next_sequence()
            now = int(self._clock())
            entry = PolicyVersion(
                seq, compiled.version, actor, now, source, len(compiled.principals)
            )
            self._put_version_item(
                entry,
                text,
                descriptions or compiled.descriptions,
                encode_role_map(compiled.role_map()),
            )
            history = self._history_with_active(previous)
            self._write_principals(compiled, seq, _retained_versions(history, previous))
            self._activate(seq, compiled.version, expected=previous)
            self._record_history(history, entry, self._versions_to_keep(history, previous, seq))

        logger.info(
            "policy version activated",
            extra={"version": seq, "previous": previous, "content_hash": compiled.version},
        )
        return ApplyResult(seq, compiled.version, True, previous, len(compiled.principals))

    def rollback(self, seq: int, *, actor: str = "") -> ApplyResult:
        """Make retained version `seq` active again.

        Raises InvalidAdminRequestError when `seq` was never applied, is no longer
        retained, or its entries are missing from the table.
        """
        with self._lock(actor):
            pointer = self._get(POLICY_CURRENT_KEY)
            previous = int(pointer["seq"]) if pointer else None
            target = next((entry for entry in self.history() if entry.seq == seq), None)
            if target is None:
                raise InvalidAdminRequestError("version", f"policy version {seq} was never applied")
            if not target.retained:
                raise InvalidAdminRequestError(
                    "version",
                    f"policy version {seq} is no longer retained: only the last "
                    f"{self._retained} versions can be restored",
                )
            if previous == seq:
                return ApplyResult(seq, target.content_hash, False, previous, target.principals)
            # Every compiled version has an `anonymous` entry. Activating a version
            # without entries would resolve every principal, `anonymous` included, to
            # None.
            if str(seq) not in decode_versions(self._get(GRANTS_PREFIX + ANONYMOUS)):
                raise InvalidAdminRequestError(
                    "version",
                    f"policy version {seq} cannot be restored because its entries are "
                    "missing from the table: apply its policy file again instead",
                )
            self._activate(seq, target.content_hash, expected=previous)
        return ApplyResult(seq, target.content_hash, True, previous, target.principals)

    # Steps.

    def _history_with_active(self, active: int | None) -> list[PolicyVersion]:
        """Return the history, with the active version added when it is missing.

        The active version is missing when an earlier apply failed between its flip and
        its history write. Its version item records it instead.
        """
        history = self.history()
        if active is None or any(entry.seq == active for entry in history):
            return history
        item = self._version_item(active)
        if item is None:
            return history
        return sorted([item, *history], key=lambda entry: entry.seq, reverse=True)

    def _versions_to_keep(
        self, history: list[PolicyVersion], active: int | None, new: int
    ) -> set[int]:
        applied = sorted(entry.seq for entry in history if entry.retained)
        keep = set(applied[-(self._retained - 1) :]) | {new}
        # The version that was active stays retained even when it is older, after a
        # rollback, so that the apply can be undone.
        if active is not None:
            keep.add(active)
        return keep

    def _write_principals(self, compiled: CompiledPolicy, seq: int, stored: set[int]) -> None:
        """Add version `seq` to every principal, keeping the entries of `stored` versions.

        Entries of other versions are dropped, and the items of a principal left with no
        entry and absent from `compiled` are deleted.
        """
        existing = dict(self._scan_grants())
        writes: list[dict[str, Any]] = []
        for principal in compiled.principals:
            item = existing.pop(principal.name, None)
            versions = _kept(item, stored)
            versions[str(seq)] = version_entry(principal)
            writes.append(
                _put(GRANTS_PREFIX, principal.name, {"versions": encode_versions(versions)})
            )
            if item is None:
                # The runtime item is created with the principal and never rewritten,
                # so admin changes and lockout counters survive every later apply.
                writes.append(_put(PRINCIPAL_PREFIX, principal.name, {}))

        for name, item in existing.items():
            versions = _kept(item, stored)
            if versions == decode_versions(item):
                continue
            if versions:
                writes.append(_put(GRANTS_PREFIX, name, {"versions": encode_versions(versions)}))
            else:
                writes.append(_delete(GRANTS_PREFIX + name))
                writes.append(_delete(PRINCIPAL_PREFIX + name))
        self._batch_write(writes)

    def _activate(self, seq: int, content_hash: str, *, expected: int | None) -> None:
        item = {"pk": POLICY_CURRENT_KEY, "seq": seq, "content_hash": content_hash}
        if expected is None:
            condition = "attribute_not_exists(pk)"
            values: dict[str, Any] = {}
        else:
            condition = "seq = :expected"
            values = {":expected": {"N": str(expected)}}
        arguments: dict[str, Any] = {
            "TableName": self._table,
            "Item": _serialize(item),
            "ConditionExpression": condition,
        }
        if values:
            arguments["ExpressionAttributeValues"] = values
        try:
            self._client.put_item(**arguments)
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
                raise PolicyConflictError(
                    "the active policy version changed during this apply; nothing was activated"
                ) from exc
            raise self._unavailable("PutItem", exc) from exc
        except BotoCoreError as exc:
            raise self._unavailable("PutItem", exc) from exc

    def _put_version_item(
        self, entry: PolicyVersion, text: str, descriptions: Mapping[str, str], roles: str
    ) -> None:
        item: dict[str, Any] = {
            "pk": VERSION_PREFIX + str(entry.seq),
            "seq": entry.seq,
            "content_hash": entry.content_hash,
            "actor": entry.actor,
            "applied_at": entry.applied_at,
            "source": entry.source,
            "principals": entry.principals,
            "descriptions": {key: value for key, value in descriptions.items() if value},
            # Read by IAM sign-in for this version, and by a rollback to it.
            "roles": roles,
        }
        compressed = zlib.compress(text.encode("utf-8"), 9)
        if text and len(compressed) <= MAX_STORED_SOURCE_BYTES:
            item["text"] = Binary(compressed)
        self._put(item)

    def _record_history(
        self, history: list[PolicyVersion], entry: PolicyVersion, keep: set[int]
    ) -> None:
        entries = [entry, *history][:MAX_HISTORY]
        self._put(
            {
                "pk": HISTORY_KEY,
                "versions": [
                    {
                        "seq": version.seq,
                        "content_hash": version.content_hash,
                        "actor": version.actor,
                        "applied_at": version.applied_at,
                        "source": version.source,
                        "principals": version.principals,
                        "retained": version.seq in keep,
                    }
                    for version in entries
                ],
            }
        )

    # DynamoDB calls.

    @contextmanager
    def _lock(self, actor: str) -> Iterator[None]:
        owner = str(uuid.uuid4())
        now = int(self._clock())
        item = {"pk": LOCK_KEY, "owner": owner, "actor": actor, "expires_at": now + LOCK_SECONDS}
        try:
            self._client.put_item(
                TableName=self._table,
                Item=_serialize(item),
                ConditionExpression="attribute_not_exists(pk) OR expires_at < :now",
                ExpressionAttributeValues={":now": {"N": str(now)}},
            )
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
                raise PolicyConflictError(
                    "another policy apply or rollback is running; retry when it has finished"
                ) from exc
            raise self._unavailable("PutItem", exc) from exc
        except BotoCoreError as exc:
            raise self._unavailable("PutItem", exc) from exc

        try:
            yield
        finally:
            self._release(owner)

    def _release(self, owner: str) -> None:
        try:
            self._client.delete_item(
                TableName=self._table,
                Key={"pk": {"S": LOCK_KEY}},
                ConditionExpression="#owner = :owner",
                ExpressionAttributeNames={"#owner": "owner"},
                ExpressionAttributeValues={":owner": {"S": owner}},
            )
        except (ClientError, BotoCoreError) as exc:
            # The lock expires after LOCK_SECONDS, so a lost release delays the next
            # apply but blocks nothing for good.
            logger.warning("policy lock release failed", extra={"error": type(exc).__name__})

    def _next_sequence(self) -> int:
        try:
            response = self._client.update_item(
                TableName=self._table,
                Key={"pk": {"S": SEQUENCE_KEY}},
                UpdateExpression="ADD seq :one",
                ExpressionAttributeValues={":one": {"N": "1"}},
                ReturnValues="UPDATED_NEW",
            )
        except (ClientError, BotoCoreError) as exc:
            raise self._unavailable("UpdateItem", exc) from exc
        return int(response["Attributes"]["seq"]["N"])

    def _get(self, key: str) -> dict[str, Any] | None:
        try:
            response = self._client.get_item(
                TableName=self._table, Key={"pk": {"S": key}}, ConsistentRead=True
            )
        except (ClientError, BotoCoreError) as exc:
            raise self._unavailable("GetItem", exc) from exc
        item = response.get("Item")
        return _deserialize(item) if item else None

    def _put(self, item: Mapping[str, Any]) -> None:
        try:
            self._client.put_item(TableName=self._table, Item=_serialize(item))
        except (ClientError, BotoCoreError) as exc:
            raise self._unavailable("PutItem", exc) from exc

    def _scan_grants(self) -> Iterator[tuple[str, dict[str, Any]]]:
        paginator = self._client.get_paginator("scan")
        try:
            pages = paginator.paginate(
                TableName=self._table,
                FilterExpression="begins_with(pk, :prefix)",
                ExpressionAttributeValues={":prefix": {"S": GRANTS_PREFIX}},
                ConsistentRead=True,
            )
            for page in pages:
                for raw in page.get("Items", []):
                    item = _deserialize(raw)
                    yield str(item["pk"]).removeprefix(GRANTS_PREFIX), item
        except (ClientError, BotoCoreError) as exc:
            raise self._unavailable("Scan", exc) from exc

    def _batch_write(self, writes: list[dict[str, Any]]) -> None:
        try:
            for start in range(0, len(writes), BATCH_WRITE_SIZE):
                pending: dict[str, Any] = {self._table: writes[start : start + BATCH_WRITE_SIZE]}
                for attempt in range(8):
                    response = self._client.batch_write_item(RequestItems=pending)
                    pending = dict(response.get("UnprocessedItems") or {})
                    if not pending:
                        break
                    # Unprocessed items mean throttling, so back off before retrying.
                    time.sleep(min(0.05 * 2**attempt, 2.0))
                else:
                    raise StoreUnavailableError("DynamoDB BatchWriteItem left items unprocessed")
        except (ClientError, BotoCoreError) as exc:
            raise self._unavailable("BatchWriteItem", exc) from exc

    def _unavailable(self, operation: str, exc: Exception) -> StoreUnavailableError:
        code = exc.response["Error"]["Code"] if isinstance(exc, ClientError) else type(exc).__name__
        logger.error(
            "DynamoDB call failed",
            extra={"operation": operation, "error_code": code, "table": self._table},
        )
        return StoreUnavailableError(f"DynamoDB {operation} failed: {code}")


def _retained_versions(history: list[PolicyVersion], active: int | None) -> set[int]:
    """Return the versions whose entries must survive until the next flip."""
    retained = {entry.seq for entry in history if entry.retained}
    # Token requests read the active version until the flip.
    if active is not None:
        retained.add(active)
    return retained


def _kept(item: Mapping[str, Any] | None, keep: set[int]) -> dict[str, Any]:
    versions = decode_versions(item)
    return {key: value for key, value in versions.items() if int(key) in keep}


def _put(prefix: str, name: str, attributes: Mapping[str, Any]) -> dict[str, Any]:
    item = {"pk": prefix + name, "name": name, **attributes}
    return {"PutRequest": {"Item": _serialize(item)}}


def _delete(key: str) -> dict[str, Any]:
    return {"DeleteRequest": {"Key": {"pk": {"S": key}}}}
