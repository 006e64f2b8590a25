"""Versioned policy apply in DynamoDB: atomic, idempotent, with rollback and pruning."""

from __future__ import annotations

import json
from typing import Any

import pytest
from botocore.exceptions import ClientError

from regauth.errors import InvalidAdminRequestError, PolicyConflictError, StoreUnavailableError
from regauth.policy import compile_policy, load_policy
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
    item = store._client.get_item(TableName=TABLE, Key={"pk": {"S": "grants#user:user0"}})
    assert sorted(json.loads(item["Item"]["versions"]["S"])) == ["2", "3"]


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
