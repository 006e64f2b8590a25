"""Versioned policy apply in DynamoDB: atomic, idempotent, with rollback and pruning."""

from __future__ import annotations

import json
from typing import Any, cast

import pytest
from botocore.exceptions import ClientError

from regauth.errors import InvalidAdminRequestError, PolicyConflictError, StoreUnavailableError
from regauth.policy import compile_policy
from regauth.policy_file import load_policy
from regauth.policy_store import LOCK_KEY, PolicyStore
from regauth.runtime import Runtime
from regauth.stores import DynamoStore
from tests.functional.conftest import TABLE

# Large enough that the apply needs several BatchWriteItem calls of 25 writes.
USERS = 40


def policy(pattern: str) -> str:
    users = "".join(f"  - name: user{index}\n" for index in range(USERS))
    return (
        f"users:\n{users}groups:\n  - name: all\n    members: ["
        + ", ".join(f"user:user{index}" for index in range(USERS))
        + f"]\ngrants:\n  - id: all-pull\n    to: group:all\n    repositories: ['{pattern}']\n"
        "    actions: [pull]\n"
    )


def patterns_of(store: DynamoStore, name: str) -> list[str]:
    principal = store.get_principal(name)
    assert principal is not None
    return [grant.pattern for grant in principal.grants]


@pytest.fixture
def store(key_id: str) -> DynamoStore:
    import boto3

    return DynamoStore(boto3.client("dynamodb"), TABLE)


@pytest.fixture
def policies(store: DynamoStore) -> PolicyStore:
    return PolicyStore(store._client, TABLE)


def apply(policies: PolicyStore, text: str) -> Any:
    return policies.apply(compile_policy(load_policy(text)), actor="test", text=text)


def test_apply_twice_changes_nothing(policies: PolicyStore) -> None:
    first = apply(policies, policy("old/**"))
    second = apply(policies, policy("old/**"))
    assert first.changed is True
    assert second.changed is False
    assert second.version == first.version
    assert [entry.seq for entry in policies.history()] == [1]


def test_version_records_actor_and_hash(policies: PolicyStore) -> None:
    result = apply(policies, policy("old/**"))
    current = policies.current()
    assert current is not None
    assert current.actor == "test"
    assert current.content_hash == result.content_hash
    assert policies.source_text(current.seq) == policy("old/**")


def test_readers_see_old_version_until_flip(policies: PolicyStore, store: DynamoStore) -> None:
    apply(policies, policy("old/**"))
    seen: list[list[str]] = []

    def observe(**_: Any) -> None:
        seen.append(patterns_of(store, "user:user39"))

    store._client.meta.events.register("after-call.dynamodb.BatchWriteItem", observe)
    apply(policies, policy("new/**"))
    store._client.meta.events.unregister("after-call.dynamodb.BatchWriteItem", observe)

    assert len(seen) > 1
    assert all(patterns == ["old/**"] for patterns in seen)
    assert patterns_of(store, "user:user39") == ["new/**"]


def test_failure_midway_keeps_old_version(policies: PolicyStore, store: DynamoStore) -> None:
    apply(policies, policy("old/**"))
    calls = {"count": 0}

    def fail_second(**_: Any) -> None:
        calls["count"] += 1
        if calls["count"] == 2:
            raise ClientError(
                {"Error": {"Code": "InternalServerError", "Message": "injected"}},
                "BatchWriteItem",
            )

    store._client.meta.events.register("before-call.dynamodb.BatchWriteItem", fail_second)
    with pytest.raises(StoreUnavailableError):
        apply(policies, policy("new/**"))
    store._client.meta.events.unregister("before-call.dynamodb.BatchWriteItem", fail_second)

    assert patterns_of(store, "user:user0") == ["old/**"]
    assert patterns_of(store, "user:user39") == ["old/**"]
    current = policies.current()
    assert current is not None
    assert current.seq == 1
    # The lock was released, so the next apply succeeds.
    assert apply(policies, policy("new/**")).version == 3


def test_rollback_restores_previous(policies: PolicyStore, store: DynamoStore) -> None:
    apply(policies, policy("old/**"))
    apply(policies, policy("new/**"))
    result = policies.rollback(1, actor="test")
    assert result.changed is True
    assert result.previous == 2
    assert patterns_of(store, "user:user0") == ["old/**"]


def test_rollback_pruned_version_rejected(store: DynamoStore) -> None:
    policies = PolicyStore(store._client, TABLE, retained=2)
    for index in range(3):
        apply(policies, policy(f"v{index}/**"))
    with pytest.raises(InvalidAdminRequestError, match="no longer retained"):
        policies.rollback(1)
    assert [entry.retained for entry in policies.history()] == [True, True, False]


def test_apply_after_rollback_keeps_active_version(store: DynamoStore) -> None:
    policies = PolicyStore(store._client, TABLE, retained=2)
    apply(policies, policy("v1/**"))
    apply(policies, policy("v2/**"))
    policies.rollback(1)
    apply(policies, policy("v3/**"))
    # Version 1 was active when version 3 was applied, so undoing that apply must work.
    policies.rollback(1)
    principal = store.get_principal("user:user0")
    assert principal is not None
    assert [grant.pattern for grant in principal.grants] == ["v1/**"]


def test_pruned_entries_removed_next_apply(store: DynamoStore) -> None:
    policies = PolicyStore(store._client, TABLE, retained=2)
    for index in range(4):
        apply(policies, policy(f"v{index}/**"))
    # Version 2 stopped being retained at the flip to version 4, so its entries stay
    # until the next apply.
    assert stored_versions(store, "user:user0") == ["2", "3", "4"]


class FailingPutClient:
    """A DynamoDB client whose PutItem of one key fails as DynamoDB does when it errs."""

    def __init__(self, client: Any, key: str) -> None:
        self._client = client
        self._key = key

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def put_item(self, **arguments: Any) -> Any:
        if arguments["Item"]["pk"]["S"] == self._key:
            raise ClientError(
                {"Error": {"Code": "InternalServerError", "Message": "injected"}}, "PutItem"
            )
        return self._client.put_item(**arguments)


def failing_store(store: DynamoStore, key: str) -> PolicyStore:
    return PolicyStore(cast(Any, FailingPutClient(store._client, key)), TABLE)


def stored_versions(store: DynamoStore, name: str) -> list[str]:
    item = store._client.get_item(TableName=TABLE, Key={"pk": {"S": f"grants#{name}"}})
    return sorted(json.loads(item["Item"]["versions"]["S"]), key=int)


OLD_USER_POLICY = "users:\n  - name: olduser\n  - name: user0\n"


def test_failed_flip_keeps_retained_principal(policies: PolicyStore, store: DynamoStore) -> None:
    apply(policies, OLD_USER_POLICY)
    store._client.update_item(
        TableName=TABLE,
        Key={"pk": {"S": "principal#user:olduser"}},
        UpdateExpression="SET admin_password_hash = :hash",
        ExpressionAttributeValues={":hash": {"S": "$argon2id$admin-set"}},
    )
    for index in range(2, 6):
        apply(policies, policy(f"v{index}/**"))

    failing = failing_store(store, "policy#current")
    with pytest.raises(StoreUnavailableError):
        apply(failing, policy("v6/**"))
    current = policies.current()
    assert current is not None
    assert current.seq == 5

    policies.rollback(1)
    olduser = store.get_principal("user:olduser")
    assert olduser is not None
    assert olduser.password_hash == "$argon2id$admin-set"
    assert store.get_principal("anonymous") is not None


def test_failed_flip_entries_removed_next_apply(policies: PolicyStore, store: DynamoStore) -> None:
    apply(policies, policy("v1/**"))
    failing = failing_store(store, "policy#current")
    with pytest.raises(StoreUnavailableError):
        apply(failing, policy("v2/**"))
    assert stored_versions(store, "user:user0") == ["1", "2"]
    apply(policies, policy("v3/**"))
    assert stored_versions(store, "user:user0") == ["1", "3"]


def test_removed_principal_deleted_next_apply(store: DynamoStore) -> None:
    policies = PolicyStore(store._client, TABLE, retained=2)
    apply(policies, OLD_USER_POLICY)
    apply(policies, "users:\n  - name: user0\n")
    apply(policies, "users:\n  - name: user0\n    disabled: true\n")
    # Version 1 is no longer retained, but its principal is removed only by the next
    # apply, before its flip.
    assert runtime_item(store, "user:olduser") is not None
    apply(policies, "users:\n  - name: user0\n")
    assert runtime_item(store, "user:olduser") is None


def runtime_item(store: DynamoStore, name: str) -> Any:
    item = store._client.get_item(TableName=TABLE, Key={"pk": {"S": f"principal#{name}"}})
    return item.get("Item")


def test_rollback_missing_entries_rejected(policies: PolicyStore, store: DynamoStore) -> None:
    apply(policies, policy("v1/**"))
    apply(policies, policy("v2/**"))
    # Releases that pruned before the flip could leave a version listed as retained
    # with no entries.
    store._client.put_item(
        TableName=TABLE,
        Item={"pk": {"S": "grants#anonymous"}, "versions": {"S": '{"2":{"grants":[]}}'}},
    )
    with pytest.raises(InvalidAdminRequestError, match="entries are missing"):
        policies.rollback(1)
    current = policies.current()
    assert current is not None
    assert current.seq == 2


def test_history_write_failure_repaired(policies: PolicyStore, store: DynamoStore) -> None:
    apply(policies, policy("v1/**"))
    failing = failing_store(store, "policy#history")
    with pytest.raises(StoreUnavailableError):
        apply(failing, policy("v2/**"))
    apply(policies, policy("v3/**"))
    assert [entry.seq for entry in policies.history()] == [3, 2, 1]
    assert policies.rollback(2).changed is True
    assert patterns_of(store, "user:user0") == ["v2/**"]


def test_removed_principal_unknown(policies: PolicyStore, store: DynamoStore) -> None:
    apply(policies, policy("old/**"))
    apply(policies, "users:\n  - name: user0\n")
    assert store.get_principal("user:user1") is None
    assert store.get_principal("user:user0") is not None


def test_runtime_state_survives_apply(policies: PolicyStore, store: DynamoStore) -> None:
    apply(policies, policy("old/**"))
    store._client.update_item(
        TableName=TABLE,
        Key={"pk": {"S": "principal#user:user0"}},
        UpdateExpression="SET refresh_not_before = :t",
        ExpressionAttributeValues={":t": {"N": "12345"}},
    )
    apply(policies, policy("new/**"))
    principal = store.get_principal("user:user0")
    assert principal is not None
    assert principal.refresh_not_before == 12345


def test_lock_held_conflict(policies: PolicyStore, store: DynamoStore) -> None:
    store._client.put_item(
        TableName=TABLE,
        Item={"pk": {"S": LOCK_KEY}, "owner": {"S": "other"}, "expires_at": {"N": "9999999999"}},
    )
    with pytest.raises(PolicyConflictError, match="another policy apply"):
        apply(policies, policy("old/**"))
    assert policies.current() is None


def test_token_request_one_round_trip(runtime: Runtime) -> None:
    calls: list[str] = []
    runtime.clients.dynamodb.meta.events.register(
        "before-call.dynamodb.*", lambda event_name, **_: calls.append(event_name)
    )
    assert runtime.store.get_principal("user:alice") is not None
    assert calls == ["before-call.dynamodb.BatchGetItem"]


def test_current_without_history(policies: PolicyStore, store: DynamoStore) -> None:
    # A failure between the flip and the history write leaves no history entry.
    apply(policies, policy("old/**"))
    store._client.delete_item(TableName=TABLE, Key={"pk": {"S": "policy#history"}})
    current = policies.current()
    assert current is not None
    assert current.seq == 1
    assert current.actor == "test"
