"""Tests for password hashing, verification and the verified-password cache."""

from __future__ import annotations

import argon2
import bcrypt
import pytest

from regauth.passwords import (
    BCRYPT_MAX_PASSWORD_BYTES,
    VerifiedPasswordCache,
    hash_password,
    is_supported_hash,
    verify_password,
)

PASSWORD = "correct horse battery staple"

# The smallest bcrypt cost keeps the tests fast. Verification reads the cost from the
# hash, so the code under test is the same as for cost 12.
BCRYPT_COST = 4


@pytest.fixture(scope="module")
def argon2_hash() -> str:
    return hash_password(PASSWORD)


@pytest.fixture(scope="module")
def bcrypt_hash() -> str:
    return bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(BCRYPT_COST)).decode()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CountingVerifier:
    """Stands in for `verify_password`: accepts `password` for `password_hash` pairs."""

    def __init__(self, valid: dict[str, str]) -> None:
        self.valid = valid
        self.calls = 0

    def __call__(self, password_hash: str, password: str) -> bool:
        self.calls += 1
        return self.valid.get(password_hash) == password


def test_hash_password_parameters(argon2_hash: str) -> None:
    parameters = argon2.extract_parameters(argon2_hash)
    assert parameters.type is argon2.Type.ID
    assert parameters.memory_cost == 19456
    assert parameters.time_cost == 2
    assert parameters.parallelism == 1


def test_hash_password_phc_prefix(argon2_hash: str) -> None:
    assert argon2_hash.startswith("$argon2id$v=19$m=19456,t=2,p=1$")


def test_hash_password_empty_raises() -> None:
    with pytest.raises(ValueError, match="empty"):
        hash_password("")


def test_verify_password_argon2id(argon2_hash: str) -> None:
    assert verify_password(argon2_hash, PASSWORD) is True


def test_verify_password_argon2id_wrong(argon2_hash: str) -> None:
    assert verify_password(argon2_hash, PASSWORD + "x") is False


def test_verify_password_bcrypt_2b(bcrypt_hash: str) -> None:
    assert verify_password(bcrypt_hash, PASSWORD) is True


def test_verify_password_bcrypt_2y(bcrypt_hash: str) -> None:
    htpasswd_hash = "$2y$" + bcrypt_hash.removeprefix("$2b$")
    assert verify_password(htpasswd_hash, PASSWORD) is True


def test_verify_password_bcrypt_wrong(bcrypt_hash: str) -> None:
    assert verify_password(bcrypt_hash, "wrong password") is False


def test_verify_password_bcrypt_2a_rejected(bcrypt_hash: str) -> None:
    # bcrypt itself would accept this hash, so only the format check can reject it.
    legacy_hash = "$2a$" + bcrypt_hash.removeprefix("$2b$")
    assert bcrypt.checkpw(PASSWORD.encode(), legacy_hash.encode())
    assert verify_password(legacy_hash, PASSWORD) is False


def test_verify_password_bcrypt_72_bytes() -> None:
    password = "p" * BCRYPT_MAX_PASSWORD_BYTES
    password_hash = bcrypt.hashpw(password.encode(), bcrypt.gensalt(BCRYPT_COST)).decode()
    assert verify_password(password_hash, password) is True


def test_verify_password_bcrypt_over_72_bytes() -> None:
    # A hash of the first 72 bytes would match a truncated longer password, which is
    # exactly the case that must not log in.
    prefix = "p" * BCRYPT_MAX_PASSWORD_BYTES
    password_hash = bcrypt.hashpw(prefix.encode(), bcrypt.gensalt(BCRYPT_COST)).decode()
    assert verify_password(password_hash, prefix + "suffix") is False


def test_verify_password_bcrypt_multibyte_limit() -> None:
    # 25 characters of 3 bytes each: 75 bytes, over the limit although under 72 characters.
    password = "€" * 25
    password_hash = bcrypt.hashpw(password.encode()[:72], bcrypt.gensalt(BCRYPT_COST)).decode()
    assert verify_password(password_hash, password) is False


def test_verify_password_bcrypt_nul_byte() -> None:
    password_hash = bcrypt.hashpw(b"a\x00b", bcrypt.gensalt(BCRYPT_COST)).decode()
    assert verify_password(password_hash, "a\x00c") is False


@pytest.mark.parametrize(
    "password_hash",
    [
        "",
        "plaintext-password",
        "$apr1$abcdefgh$0123456789abcdefghijkl",
        "{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=",
        "$1$abcdefgh$0123456789abcdefghijkl",
        "$6$salt$hash",
        "$argon2i$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
        "$argon2id$garbage",
        "$2b$12$short",
        "$2b$99$" + "a" * 53,
        "$2b$03$" + "a" * 53,
    ],
    ids=[
        "empty",
        "plaintext",
        "apr1",
        "sha1",
        "md5-crypt",
        "sha512-crypt",
        "argon2i",
        "argon2id-malformed",
        "bcrypt-short",
        "bcrypt-cost-99",
        "bcrypt-cost-3",
    ],
)
def test_verify_password_unsupported_hash(password_hash: str) -> None:
    assert verify_password(password_hash, PASSWORD) is False


def test_verify_password_empty_password() -> None:
    password_hash = bcrypt.hashpw(b"", bcrypt.gensalt(BCRYPT_COST)).decode()
    assert verify_password(password_hash, "") is False


def test_verify_password_lone_surrogate(argon2_hash: str) -> None:
    assert verify_password(argon2_hash, "\ud800") is False


def test_verify_password_bcrypt_invalid_salt() -> None:
    # The hash passes the format check, and the bcrypt package raises ValueError for its
    # salt, which verify_password turns into False.
    corrupt = "$2b$04$" + "a" * 53
    assert is_supported_hash(corrupt) is True
    assert verify_password(corrupt, PASSWORD) is False


def test_is_supported_hash_argon2id(argon2_hash: str) -> None:
    assert is_supported_hash(argon2_hash) is True


def test_is_supported_hash_bcrypt(bcrypt_hash: str) -> None:
    assert is_supported_hash(bcrypt_hash) is True


@pytest.mark.parametrize(
    "prefix", ["$2a$", "$2x$", "$2$"], ids=["bcrypt-2a", "bcrypt-2x", "bcrypt-2"]
)
def test_is_supported_hash_bcrypt_prefix(prefix: str, bcrypt_hash: str) -> None:
    assert is_supported_hash(prefix + bcrypt_hash.removeprefix("$2b$")) is False


def test_is_supported_hash_plaintext() -> None:
    assert is_supported_hash("hunter2") is False


def test_cache_hit_skips_verifier() -> None:
    verifier = CountingVerifier({"hash-1": PASSWORD})
    cache = VerifiedPasswordCache(clock=FakeClock(), verifier=verifier)

    assert cache.verify("alice", "hash-1", PASSWORD) is True
    assert cache.verify("alice", "hash-1", PASSWORD) is True
    assert verifier.calls == 1


def test_cache_failure_not_cached() -> None:
    verifier = CountingVerifier({"hash-1": PASSWORD})
    cache = VerifiedPasswordCache(clock=FakeClock(), verifier=verifier)

    assert cache.verify("alice", "hash-1", "wrong") is False
    assert cache.verify("alice", "hash-1", "wrong") is False
    assert verifier.calls == 2
    assert len(cache) == 0


def test_cache_wrong_password_after_hit() -> None:
    verifier = CountingVerifier({"hash-1": PASSWORD})
    cache = VerifiedPasswordCache(clock=FakeClock(), verifier=verifier)
    cache.verify("alice", "hash-1", PASSWORD)

    assert cache.verify("alice", "hash-1", "wrong") is False
    # The entry for the right password survives a wrong attempt.
    assert cache.verify("alice", "hash-1", PASSWORD) is True
    assert verifier.calls == 2


def test_cache_changed_hash_reverifies() -> None:
    verifier = CountingVerifier({"hash-1": PASSWORD, "hash-2": "new password"})
    cache = VerifiedPasswordCache(clock=FakeClock(), verifier=verifier)
    cache.verify("alice", "hash-1", PASSWORD)

    # After a password change the old password must fail at once, within the TTL.
    assert cache.verify("alice", "hash-2", PASSWORD) is False
    assert cache.verify("alice", "hash-2", "new password") is True
    assert verifier.calls == 3


def test_cache_expiry() -> None:
    clock = FakeClock()
    verifier = CountingVerifier({"hash-1": PASSWORD})
    cache = VerifiedPasswordCache(ttl_seconds=300, clock=clock, verifier=verifier)
    cache.verify("alice", "hash-1", PASSWORD)

    clock.now += 299
    cache.verify("alice", "hash-1", PASSWORD)
    assert verifier.calls == 1

    clock.now += 1
    cache.verify("alice", "hash-1", PASSWORD)
    assert verifier.calls == 2


def test_cache_keyed_by_username() -> None:
    verifier = CountingVerifier({"hash-1": PASSWORD})
    cache = VerifiedPasswordCache(clock=FakeClock(), verifier=verifier)
    cache.verify("alice", "hash-1", PASSWORD)

    cache.verify("bob", "hash-1", PASSWORD)
    assert verifier.calls == 2


def test_cache_evicts_least_recently_used() -> None:
    verifier = CountingVerifier({"hash-1": PASSWORD})
    cache = VerifiedPasswordCache(max_entries=2, clock=FakeClock(), verifier=verifier)
    cache.verify("alice", "hash-1", PASSWORD)
    cache.verify("bob", "hash-1", PASSWORD)
    cache.verify("alice", "hash-1", PASSWORD)
    cache.verify("carol", "hash-1", PASSWORD)
    assert len(cache) == 2
    assert verifier.calls == 3

    # bob was the least recently used entry, so only he needs verifying again.
    cache.verify("alice", "hash-1", PASSWORD)
    assert verifier.calls == 3
    cache.verify("bob", "hash-1", PASSWORD)
    assert verifier.calls == 4


def test_cache_invalidate() -> None:
    verifier = CountingVerifier({"hash-1": PASSWORD})
    cache = VerifiedPasswordCache(clock=FakeClock(), verifier=verifier)
    cache.verify("alice", "hash-1", PASSWORD)

    cache.invalidate("alice")
    cache.verify("alice", "hash-1", PASSWORD)
    assert verifier.calls == 2


def test_cache_empty_password() -> None:
    verifier = CountingVerifier({"hash-1": ""})
    cache = VerifiedPasswordCache(clock=FakeClock(), verifier=verifier)

    assert cache.verify("alice", "hash-1", "") is False
    assert verifier.calls == 0


def test_cache_lone_surrogate() -> None:
    verifier = CountingVerifier({})
    cache = VerifiedPasswordCache(clock=FakeClock(), verifier=verifier)

    assert cache.verify("alice", "hash-1", "\ud800") is False


def test_cache_never_stores_password() -> None:
    verifier = CountingVerifier({"hash-1": PASSWORD})
    cache = VerifiedPasswordCache(clock=FakeClock(), verifier=verifier)
    cache.verify("alice", "hash-1", PASSWORD)

    entry = cache._entries["alice"]
    stored = [getattr(entry, name) for name in entry.__slots__]
    assert PASSWORD not in stored
    assert PASSWORD.encode() not in stored


def test_cache_keys_differ_per_instance() -> None:
    verifier = CountingVerifier({"hash-1": PASSWORD})
    first = VerifiedPasswordCache(clock=FakeClock(), verifier=verifier)
    second = VerifiedPasswordCache(clock=FakeClock(), verifier=verifier)
    first.verify("alice", "hash-1", PASSWORD)
    second.verify("alice", "hash-1", PASSWORD)

    assert first._entries["alice"].digest != second._entries["alice"].digest


def test_cache_real_argon2id(argon2_hash: str) -> None:
    cache = VerifiedPasswordCache(clock=FakeClock())

    assert cache.verify("alice", argon2_hash, PASSWORD) is True
    assert cache.verify("alice", argon2_hash, PASSWORD) is True
    assert cache.verify("alice", argon2_hash, "wrong") is False


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"ttl_seconds": 0}, "ttl_seconds must be positive"),
        ({"max_entries": 0}, "max_entries must be at least 1"),
    ],
    ids=["ttl-zero", "max-entries-zero"],
)
def test_cache_invalid_settings(options: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        VerifiedPasswordCache(**options)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "parameters",
    ["m=262145,t=2,p=1", "m=19456,t=17,p=1", "m=19456,t=2,p=9"],
    ids=["memory", "time", "parallelism"],
)
def test_is_supported_hash_argon2_cost_cap(argon2_hash: str, parameters: str) -> None:
    costly = argon2_hash.replace("m=19456,t=2,p=1", parameters)
    assert is_supported_hash(costly) is False
    assert verify_password(costly, "anything") is False


def test_is_supported_hash_bcrypt_cost_cap(bcrypt_hash: str) -> None:
    salt_and_digest = bcrypt_hash[7:]
    assert is_supported_hash("$2b$14$" + salt_and_digest) is True
    assert is_supported_hash("$2b$15$" + salt_and_digest) is False
