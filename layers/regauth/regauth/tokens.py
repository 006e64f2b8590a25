"""Build and sign the registry's JWT (distribution `docs/spec/auth/jwt.md`)."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import jwt
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey

from regauth.models import AccessEntry

# `nbf` is set this many seconds before `iat` so that a registry whose clock runs a
# little behind still accepts a fresh token.
NOT_BEFORE_SKEW = 5


@dataclass(frozen=True, slots=True)
class TokenClaims:
    """Claims of one access token. `audience` is a single service string."""

    issuer: str
    subject: str
    audience: str
    issued_at: int
    expires_at: int
    jwt_id: str
    access: tuple[AccessEntry, ...]

    def to_dict(self) -> dict[str, object]:
        # Distribution 2.8 decodes `aud` into a string and rejects an array, so the
        # audience is never wrapped in a list.
        return {
            "iss": self.issuer,
            "sub": self.subject,
            "aud": self.audience,
            "exp": self.expires_at,
            "nbf": self.issued_at - NOT_BEFORE_SKEW,
            "iat": self.issued_at,
            "jti": self.jwt_id,
            "access": [entry.to_claim() for entry in self.access],
        }


def new_claims(
    *,
    issuer: str,
    subject: str,
    service: str,
    access: Sequence[AccessEntry],
    now: datetime,
    ttl: int,
) -> TokenClaims:
    """Make the claims for a token issued at `now` that lives `ttl` seconds."""
    issued_at = int(now.astimezone(UTC).timestamp())
    return TokenClaims(
        issuer=issuer,
        subject=subject,
        audience=service,
        issued_at=issued_at,
        expires_at=issued_at + ttl,
        jwt_id=secrets.token_urlsafe(18),
        access=tuple(access),
    )


def sign_token(claims: TokenClaims, key: EllipticCurvePrivateKey, x5c: Sequence[str]) -> str:
    """Sign `claims` as a compact ES256 JWS that carries the certificate chain in `x5c`.

    PyJWT writes ES256 signatures as raw `r || s` (RFC 7518 section 3.4), which is
    what the registry's verifier expects. `x5c` is the only key-identification header
    that distribution 2.8 and 3.x both accept unchanged, so no `kid` is sent.
    """
    return jwt.encode(
        claims.to_dict(),
        key,
        algorithm="ES256",
        headers={"x5c": list(x5c)},
    )
