"""Host API keys: generation, storage form and verification.

A host is a machine principal (`host:NAME` in the policy) that signs in with HTTP
Basic auth, because Docker, skopeo and other registry clients speak nothing else. The
user name is `host/NAME` and the password is the API key. User names cannot contain
`/`, so a Basic user name names a user or a host without ambiguity.

A key is `rgk1_` followed by 32 random bytes in base64url (256 bits). Only its
SHA-256 digest is stored: a slow password hash protects guessable secrets, and a
random 256-bit key is not guessable, so a fast hash loses nothing and keeps a warm
token request free of hashing cost. Comparison is in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from regauth.models import Principal

API_KEY_PREFIX = "rgk1_"
HOST_USERNAME_PREFIX = "host/"
HOST_PRINCIPAL_PREFIX = "host:"
# The first hex digits of the stored digest identify a key in audit records and in
# listings without revealing anything usable.
KEY_ID_LENGTH = 12


def new_api_key() -> str:
    """Return a new random API key. Show it once and store only `hash_api_key` of it."""
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> str:
    """Return the SHA-256 hex digest under which an API key is stored."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def key_id_of(key_hash: str) -> str:
    """Return the short id of a stored key digest."""
    return key_hash[:KEY_ID_LENGTH]


def principal_name_for(username: str) -> str:
    """Map a Basic auth user name to a principal name: `host/ci` to `host:ci`."""
    if username.startswith(HOST_USERNAME_PREFIX):
        return HOST_PRINCIPAL_PREFIX + username.removeprefix(HOST_USERNAME_PREFIX)
    return "user:" + username


def is_host(principal_name: str) -> bool:
    """Return whether a principal name is a host's."""
    return principal_name.startswith(HOST_PRINCIPAL_PREFIX)


def check_api_key(principal: Principal, key: str, now: int) -> str | None:
    """Check a presented API key against a host's stored key.

    Returns None when the key is valid, or the audit reason for rejecting it:
    `no_api_key`, `wrong_api_key` or `expired_api_key`. The expiry is checked only
    after the key matched, so the reason never reveals to a guesser that a key expired.
    """
    if not principal.api_key_hash:
        return "no_api_key"
    if not hmac.compare_digest(hash_api_key(key), principal.api_key_hash):
        return "wrong_api_key"
    if principal.api_key_expires_at and now >= principal.api_key_expires_at:
        return "expired_api_key"
    return None
