"""Password hashing and verification.

New hashes are Argon2id PHC strings with OWASP's minimum parameters for Argon2id
(m=19456 KiB, t=2, p=1; OWASP Password Storage Cheat Sheet). bcrypt hashes with the
prefix `$2b$` or `$2y$` are verified too, so that an htpasswd file made with
`htpasswd -B` can be moved into a policy unchanged. `$2y$` is the crypt_blowfish name
of the same algorithm as `$2b$`. Other formats are rejected: `$2a$` because some
implementations wrote wrong `$2a$` hashes for non-ASCII passwords (crypt_blowfish
before 1.1, CVE-2011-2483), and MD5 (`$apr1$`), SHA-1 (`{SHA}`) and the crypt schemes
because they are too fast to resist guessing.

bcrypt reads only the first 72 bytes of a password, and bcrypt 5 raises for longer
ones. A longer password is rejected (verification returns False) instead of
truncated: truncating would let any password that shares the first 72 bytes log in.
The cost is that an htpasswd user with a longer password has to be given an Argon2id
hash.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import argon2
import bcrypt

ARGON2_MEMORY_COST_KIB = 19456
ARGON2_TIME_COST = 2
ARGON2_PARALLELISM = 1

BCRYPT_MAX_PASSWORD_BYTES = 72

# Upper bounds on the cost of a stored hash. Verification runs inside a token
# request, so a hash with a huge memory or time cost, by mistake or on purpose,
# would exhaust the function's memory or time out every login of that user.
ARGON2_MAX_MEMORY_COST_KIB = 262_144
ARGON2_MAX_TIME_COST = 16
ARGON2_MAX_PARALLELISM = 8
BCRYPT_MAX_COST = 14

_ARGON2ID_PREFIX = "$argon2id$"
# A bcrypt hash: prefix, two-digit cost from 04 to 31, then 22 characters of salt and
# 31 of digest in bcrypt's base64 alphabet.
_BCRYPT_HASH = re.compile(r"\$2[by]\$(?:0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")


@functools.cache
def _argon2_hasher() -> argon2.PasswordHasher:
    return argon2.PasswordHasher(
        time_cost=ARGON2_TIME_COST,
        memory_cost=ARGON2_MEMORY_COST_KIB,
        parallelism=ARGON2_PARALLELISM,
        hash_len=32,
        salt_len=16,
        type=argon2.Type.ID,
    )


def hash_password(password: str) -> str:
    """Hash a password into an Argon2id PHC string with a random salt.

    Raises ValueError for an empty password, which `verify_password` never accepts.
    """
    if not password:
        raise ValueError("password is empty")
    return str(_argon2_hasher().hash(password))


def is_supported_hash(value: str) -> bool:
    """Return whether `value` is an Argon2id PHC string or a `$2b$`/`$2y$` bcrypt hash.

    Hashes whose cost exceeds the `*_MAX_*` bounds are not supported.
    """
    if _BCRYPT_HASH.fullmatch(value):
        return int(value[4:6]) <= BCRYPT_MAX_COST
    if not value.startswith(_ARGON2ID_PREFIX):
        return False
    try:
        parameters = argon2.extract_parameters(value)
    except argon2.exceptions.InvalidHashError:
        return False
    return (
        parameters.memory_cost <= ARGON2_MAX_MEMORY_COST_KIB
        and parameters.time_cost <= ARGON2_MAX_TIME_COST
        and parameters.parallelism <= ARGON2_MAX_PARALLELISM
    )


def verify_password(password_hash: str, password: str) -> bool:
    """Return whether `password` matches `password_hash`.

    Returns False, never raises, for an empty password, an unsupported or malformed
    hash, a password that is not valid UTF-8, and a password over 72 bytes checked
    against bcrypt. argon2-cffi and bcrypt compare the digests in constant time.
    """
    if not password or not is_supported_hash(password_hash):
        return False
    try:
        secret = password.encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate, for instance, has no UTF-8 form and cannot be a password.
        return False

    if password_hash.startswith(_ARGON2ID_PREFIX):
        return _verify_argon2id(password_hash, secret)
    return _verify_bcrypt(password_hash, secret)


def _verify_argon2id(password_hash: str, secret: bytes) -> bool:
    try:
        return bool(_argon2_hasher().verify(password_hash, secret))
    except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
        return False


def _verify_bcrypt(password_hash: str, secret: bytes) -> bool:
    if len(secret) > BCRYPT_MAX_PASSWORD_BYTES:
        return False

    # bcrypt 5.0 accepts `$2y$` itself. The prefix is rewritten anyway so that older
    # releases of the package, which the dependency range allows, behave the same.
    normalized = "$2b$" + password_hash.removeprefix("$2y$").removeprefix("$2b$")
    try:
        return bcrypt.checkpw(secret, normalized.encode("ascii"))
    except ValueError:
        return False


@dataclass(slots=True)
class _CacheEntry:
    password_hash: str
    digest: bytes = field(repr=False)
    expires_at: float


class VerifiedPasswordCache:
    """Successful password verifications, kept so that repeated logins skip Argon2id.

    An entry stores the hash that was verified against, an HMAC-SHA256 of the password
    under a random per-instance key, and an expiry. The password itself is never
    stored. An entry is used only while the principal's current hash equals the stored
    one, so a changed password takes effect at once. Callers reject disabled principals
    before calling `verify`, because the cache cannot see that flag.
    """

    def __init__(
        self,
        *,
        ttl_seconds: float = 300.0,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
        verifier: Callable[[str, str], bool] = verify_password,
    ) -> None:
        if ttl_seconds <= 0:
            raise ValueError(f"ttl_seconds must be positive, got {ttl_seconds}")
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, got {max_entries}")
        self._ttl_seconds = ttl_seconds
        self._max_entries = max_entries
        self._clock = clock
        self._verifier = verifier
        self._key: bytes | None = None
        self._entries: OrderedDict[str, _CacheEntry] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def verify(self, username: str, password_hash: str, password: str) -> bool:
        """Return whether `password` matches `password_hash`, using the cache when it can.

        A cached success is used only if it was made for the same hash, has not
        expired and its digest equals the digest of `password`. Anything else runs
        the full verification, and only a success is cached.
        """
        if not password:
            return False
        try:
            digest = self._digest(password)
        except UnicodeEncodeError:
            return False

        if self._is_cached(username, password_hash, digest):
            return True

        # The slow hash runs outside the lock so that one login does not hold up others.
        if not self._verifier(password_hash, password):
            return False
        self._store(username, password_hash, digest)
        return True

    def is_cached(self, username: str, password_hash: str, password: str) -> bool:
        """Return whether a cached success for this user, hash and password exists."""
        if not password:
            return False
        try:
            digest = self._digest(password)
        except UnicodeEncodeError:
            return False
        return self._is_cached(username, password_hash, digest)

    def invalidate(self, username: str) -> None:
        """Forget the cached verification of one user."""
        with self._lock:
            self._entries.pop(username, None)

    def clear(self) -> None:
        """Forget every cached verification."""
        with self._lock:
            self._entries.clear()

    def _digest(self, password: str) -> bytes:
        with self._lock:
            if self._key is None:
                self._key = secrets.token_bytes(32)
            key = self._key
        return hmac.new(key, password.encode("utf-8"), hashlib.sha256).digest()

    def _is_cached(self, username: str, password_hash: str, digest: bytes) -> bool:
        now = self._clock()
        with self._lock:
            entry = self._entries.get(username)
            if entry is None:
                return False
            if entry.expires_at <= now or entry.password_hash != password_hash:
                del self._entries[username]
                return False
            if not hmac.compare_digest(entry.digest, digest):
                # A different password may still be valid, so the caller verifies it in
                # full. The entry stays for the password it was made for.
                return False
            self._entries.move_to_end(username)
            return True

    def _store(self, username: str, password_hash: str, digest: bytes) -> None:
        expires_at = self._clock() + self._ttl_seconds
        with self._lock:
            self._entries[username] = _CacheEntry(password_hash, digest, expires_at)
            self._entries.move_to_end(username)
            # The least recently used entries go first when the cache is full.
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)
