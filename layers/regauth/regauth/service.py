"""The token service: authenticate, authorize against policy, sign, audit."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from typing import NoReturn

from regauth.audit import AuditEvent, AuditSink, EventType, RequestContext
from regauth.config import Settings
from regauth.errors import (
    AuthenticationError,
    InvalidCredentialsError,
    InvalidRefreshTokenError,
    InvalidRequestError,
    RegauthError,
    TooManyRequestsError,
    UnavailableError,
    UnknownServiceError,
)
from regauth.hosts import check_api_key, hash_api_key, is_host, principal_name_for
from regauth.iam import IAM_USERNAME, IamVerifier, RoleMap, arn_pattern_matches, principal_arn
from regauth.models import ANONYMOUS, IssuedToken, Principal, RefreshTokenRecord, TokenRequest
from regauth.passwords import VerifiedPasswordCache, hash_password, verify_password
from regauth.policy import authorize_with_reasons
from regauth.roles import RoleMapCache
from regauth.signing import SigningKeyManager
from regauth.stores import IdentityStore
from regauth.tokens import new_claims, sign_token

USER_PREFIX = "user:"
# Longer user names are rejected before any table read.
MAX_USERNAME_LENGTH = 128
REFRESH_TOKEN_PREFIX = "rt1"  # noqa: S105 - a format marker, not a secret


def reason_code(exc: Exception) -> str:
    """Derive an audit reason code from the error class, such as `unknown_service`."""
    name = type(exc).__name__.removesuffix("Error")
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def credential_fingerprint(principal: Principal) -> str:
    """Return a digest of the principal's current password hash or API key digest.

    Refresh tokens are bound to it, so changing a password or rotating a key ends the
    refresh tokens issued for the old one.
    """
    credential = principal.password_hash or principal.api_key_hash or ""
    return hashlib.sha256(f"{principal.name}\n{credential}".encode()).hexdigest()


def hash_refresh_token(token: str) -> str:
    """Return the SHA-256 hex digest under which a refresh token is stored.

    A refresh token carries 256 random bits, so a fast hash is enough. A preimage
    cannot be guessed, and the table never contains a usable token.
    """
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_refresh_token(principal: str) -> str:
    """Make a refresh token that names its principal, so a refresh needs one read."""
    encoded_name = base64.urlsafe_b64encode(principal.encode("utf-8")).rstrip(b"=").decode()
    return f"{REFRESH_TOKEN_PREFIX}.{encoded_name}.{secrets.token_urlsafe(32)}"


def principal_of_refresh_token(token: str) -> str:
    """Return the principal a refresh token names, or raise if it is malformed."""
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != REFRESH_TOKEN_PREFIX or not parts[1] or not parts[2]:
        raise InvalidRefreshTokenError("invalid refresh token", reason="malformed_refresh_token")
    padded = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        # validate=True rejects characters outside the alphabet instead of
        # silently skipping them, so one token has exactly one spelling.
        name = base64.b64decode(padded.encode("ascii"), altchars=b"-_", validate=True)
        return name.decode("utf-8")
    except (binascii.Error, UnicodeError, ValueError):
        raise InvalidRefreshTokenError(
            "invalid refresh token", reason="malformed_refresh_token"
        ) from None


class TokenService:
    """Issue registry tokens for parsed `TokenRequest`s.

    Collaborators are passed in so tests can use moto clients and fake clocks. A warm
    request costs one DynamoDB read: the principal item already contains its compiled
    grants, the signing key and its certificate are cached in memory, and repeated
    credentials are checked against `VerifiedPasswordCache` instead of re-hashed.
    """

    def __init__(
        self,
        settings: Settings,
        store: IdentityStore,
        signing: SigningKeyManager,
        audit: AuditSink,
        *,
        password_cache: VerifiedPasswordCache | None = None,
        iam: IamVerifier | None = None,
        role_maps: RoleMapCache | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._store = store
        self._signing = signing
        self._audit = audit
        self._passwords = password_cache or VerifiedPasswordCache(clock=clock)
        self._clock = clock
        self._dummy_hash: str | None = None
        self._iam = iam
        # Role maps are read from the store by policy version, see `regauth.roles`.
        self._role_maps = role_maps

    def issue(self, request: TokenRequest, *, iam_caller_arn: str | None = None) -> IssuedToken:
        """Authenticate and authorize `request` and return a signed token.

        Every outcome, success or error, is written to the audit sink before this
        returns or raises.
        """
        context = RequestContext(
            request_id=request.request_id,
            source_ip=request.source_ip,
            user_agent=request.user_agent,
            registry_service=request.service,
        )
        try:
            return self._issue(request, context, iam_caller_arn)
        except AuthenticationError as exc:
            self._emit_failure("authentication.failed", context, request, exc, exc.principal)
            raise
        except TooManyRequestsError as exc:
            self._emit_failure("authentication.failed", context, request, exc, exc.principal)
            raise
        except UnavailableError as exc:
            self._emit_failure("service.unavailable", context, request, exc, None)
            raise
        except RegauthError as exc:
            self._emit_failure("request.rejected", context, request, exc, None)
            raise
        except Exception as exc:
            # A bug must still leave an audit record. Only the exception's type is
            # recorded, because its message may quote internal data.
            self._audit.emit(
                AuditEvent(
                    event_type="service.unavailable",
                    outcome="failure",
                    context=context,
                    auth_method=_auth_method_of(request),
                    reason="internal_error",
                    details={"message": type(exc).__name__, "client_id": request.client_id},
                )
            )
            raise

    def record_rejected(self, context: RequestContext, exc: RegauthError) -> None:
        """Audit a request that was rejected before it could be parsed."""
        event_type: EventType = (
            "authentication.failed" if isinstance(exc, AuthenticationError) else "request.rejected"
        )
        self._audit.emit(
            AuditEvent(
                event_type=event_type,
                outcome="failure",
                context=context,
                principal=getattr(exc, "principal", None),
                reason=getattr(exc, "reason", None) or reason_code(exc),
                details={"message": str(exc)},
            )
        )

    def _issue(
        self, request: TokenRequest, context: RequestContext, iam_caller_arn: str | None = None
    ) -> IssuedToken:
        self._check_request(request)
        principal, auth_method, caller_arn = self._authenticate(request, context, iam_caller_arn)

        # Conditions on grants are checked against this request's address and time.
        now = datetime.fromtimestamp(self._clock(), UTC).replace(microsecond=0)
        access, dropped = authorize_with_reasons(
            principal, request.scopes, source_ip=request.source_ip, now=int(now.timestamp())
        )

        signing_key = self._signing.current()
        claims = new_claims(
            issuer=self._settings.issuer,
            subject=principal.display_name,
            service=request.service,
            access=access,
            now=now,
            ttl=self._settings.token_ttl,
        )
        token = sign_token(claims, signing_key.private_key, signing_key.x5c)

        refresh_token = None
        if request.offline and auth_method == "password":
            refresh_token = self._new_refresh_token(principal, request, claims.issued_at, context)

        self._audit.emit(
            AuditEvent(
                event_type="token.issued",
                outcome="success",
                context=context,
                principal=principal.name,
                auth_method=auth_method,
                details={
                    "client_id": request.client_id,
                    "requested": [
                        {"type": s.type, "name": s.name, "actions": sorted(s.actions)}
                        for s in request.scopes
                    ],
                    "granted": [entry.to_claim() for entry in access],
                    "dropped": [asdict(item) for item in dropped],
                    "jti": claims.jwt_id,
                    "expires_at": claims.expires_at,
                    "refresh_token_issued": refresh_token is not None,
                    "caller_arn": caller_arn,
                },
            )
        )
        return IssuedToken(
            token=token,
            jti=claims.jwt_id,
            subject=claims.subject,
            issued_at=now,
            expires_in=self._settings.token_ttl,
            access=access,
            refresh_token=refresh_token,
        )

    def _check_request(self, request: TokenRequest) -> None:
        if not request.service:
            raise InvalidRequestError(
                "parameter 'service' is required: it names the registry the token is for"
            )
        if request.service not in self._settings.services:
            raise UnknownServiceError(
                f"unknown service {request.service!r}: this token server issues tokens "
                f"for {', '.join(self._settings.services)}"
            )
        if request.offline and not request.client_id:
            raise InvalidRequestError("client_id is required when requesting a refresh token")

    def _authenticate(
        self, request: TokenRequest, context: RequestContext, iam_caller_arn: str | None
    ) -> tuple[Principal, str, str | None]:
        """Return the principal, the authentication method and any verified IAM caller ARN."""
        if iam_caller_arn is not None:
            # API Gateway verified the SigV4 signature of this request (AWS_IAM auth).
            principal = self._principal_for_arn(principal_arn(iam_caller_arn))
            return principal, "aws_iam", iam_caller_arn
        if request.grant_type == "refresh_token":
            principal, token_hash = self._authenticate_refresh(request)
            self._emit_refresh_used(principal, token_hash, request, context)
            return principal, "refresh_token", None
        if request.credentials is None:
            return self._anonymous(), "anonymous", None
        if request.credentials.username == IAM_USERNAME:
            principal, caller_arn = self._authenticate_iam(request)
            return principal, "aws_iam", caller_arn
        return self._authenticate_password(request), "password", None

    def _anonymous(self) -> Principal:
        # Without an applied policy there is no anonymous item, and anonymous gets
        # nothing rather than an error.
        return self._store.get_principal(ANONYMOUS) or Principal(name=ANONYMOUS, grants=())

    def _authenticate_password(self, request: TokenRequest) -> Principal:
        credentials = request.credentials
        assert credentials is not None  # noqa: S101 - the caller checked this
        username = credentials.username
        # `host/NAME` names a host, whose password is its API key (see regauth.hosts).
        claimed = principal_name_for(username) if username else None
        if not username or not credentials.password:
            raise InvalidCredentialsError(
                "invalid username or password", reason="empty_credentials", principal=claimed
            )
        if request.account and request.account != username:
            raise InvalidRequestError("account does not match the authenticated user name")

        assert claimed is not None  # noqa: S101 - username is not empty here
        if len(username) > MAX_USERNAME_LENGTH or not username.isprintable():
            # No principal can have such a name, and DynamoDB rejects keys over 2 KB,
            # so the table is not asked. The audit record keeps a bounded prefix.
            verify_password(self._dummy_password_hash(), credentials.password)
            raise InvalidCredentialsError(
                "invalid username or password",
                reason="invalid_username",
                principal=claimed[: MAX_USERNAME_LENGTH + 5].encode("unicode_escape").decode(),
            )
        principal = self._store.get_principal(claimed)
        now = int(self._clock())
        if principal is None:
            self._reject_unknown(claimed, credentials.password, now)

        # Hosts are not locked out: their API keys carry 256 random bits, so a lockout
        # protects nothing and would let anyone with a host's name stop its CI.
        # Their failures are still counted, for alarms.
        if not is_host(principal.name):
            self._check_lockout(principal, now)
        if principal.disabled:
            # Hash anyway, as for unknown names, so a faster response does not reveal
            # that the account exists but is disabled.
            verify_password(self._dummy_password_hash(), credentials.password)
            raise InvalidCredentialsError(
                "invalid username or password", reason="principal_disabled", principal=claimed
            )

        if is_host(principal.name):
            failure = check_api_key(principal, credentials.password, now)
            if failure is not None:
                self._store.record_failed_login(principal.name, now, self._settings.lockout_seconds)
        else:
            failure = self._check_password(principal, credentials.password, now)
        if failure is not None:
            raise InvalidCredentialsError(
                "invalid username or password", reason=failure, principal=claimed
            )
        return principal

    def _reject_unknown(self, claimed: str, password: str, now: int) -> NoReturn:
        """Reject a name that is no principal, at the cost and with the lockout of a real one.

        The secret is hashed anyway, so an unknown user name takes as long as a wrong
        password. Unknown user names are also counted like real ones, so that only
        real ones reaching 429 cannot reveal which names exist.
        """
        if is_host(claimed):
            hash_api_key(password)
        else:
            attempts, window_start = self._store.reserve_unknown_name_attempt(
                claimed, now, self._settings.lockout_seconds
            )
            if attempts > self._settings.max_failed_logins:
                raise TooManyRequestsError(
                    "too many failed logins, try again later",
                    retry_after=max(window_start + self._settings.lockout_seconds - now, 1),
                    principal=claimed,
                )
            verify_password(self._dummy_password_hash(), password)
        raise InvalidCredentialsError(
            "invalid username or password", reason="unknown_principal", principal=claimed
        )

    def _check_password(self, principal: Principal, password: str, now: int) -> str | None:
        """Check a user's password; return the audit reason of a failure.

        A password verified recently comes from the cache and costs no write. Any
        other attempt is counted in the table before Argon2id runs, so parallel
        guesses are counted one by one and those over the limit are never checked.
        """
        password_hash = principal.password_hash or ""
        if password_hash and self._passwords.is_cached(principal.name, password_hash, password):
            if principal.failed_logins:
                self._store.reset_failed_logins(principal.name)
            return None

        attempts, window_start = self._store.reserve_login_attempt(
            principal.name, now, self._settings.lockout_seconds
        )
        if attempts > self._settings.max_failed_logins:
            raise TooManyRequestsError(
                "too many failed logins, try again later",
                retry_after=max(window_start + self._settings.lockout_seconds - now, 1),
                principal=principal.name,
            )
        if not password_hash:
            verify_password(self._dummy_password_hash(), password)
            return "no_password_set"
        if not self._passwords.verify(principal.name, password_hash, password):
            return "wrong_password"

        self._store.reset_failed_logins(principal.name)
        return None

    def _authenticate_iam(self, request: TokenRequest) -> tuple[Principal, str]:
        """Verify an IAM proof and return the role or user principal it maps to.

        A new proof costs one STS call and one DynamoDB read, and a cached one only the
        read. The caller's ARN must match the patterns stored on the principal too, so
        a role map that is older than the policy cannot admit a removed ARN.
        """
        credentials = request.credentials
        assert credentials is not None  # noqa: S101 - the caller checked this
        if self._iam is None:
            raise InvalidCredentialsError(
                "invalid username or password", reason="iam_sign_in_disabled"
            )
        identity = self._iam.verify(credentials.password)
        return self._principal_for_arn(identity.arn), identity.caller_arn

    def _principal_for_arn(self, arn: str) -> Principal:
        """Map a verified IAM ARN to its role or user principal under the active policy.

        The cached role map is checked against the version that the principal read
        returns, so a steady-state request makes no extra read. When the versions
        differ, the map of the active version is loaded and the lookup retried once,
        so a role removed by an apply stops working with the next request.
        """
        role_maps = self._role_map_cache()
        current = role_maps.latest()
        name = self._resolve_role(current.role_map, arn)
        if name is None:
            # A newer version may map the ARN, so check before rejecting. This read
            # happens only for ARNs the cached map does not know.
            current = role_maps.refresh()
            name = current.role_map.resolve(arn)

        principal, version = self._store.get_principal_with_version(name)
        if version != current.version:
            current = role_maps.for_version(version)
            name = current.role_map.resolve(arn)
            principal, version = self._store.get_principal_with_version(name)
            if version != current.version:
                # Two applies within one request: fail closed, the client may retry.
                raise InvalidCredentialsError(
                    "invalid username or password", reason="policy_changed", principal=name
                )

        if principal is None or not _arn_matches_principal(principal, arn):
            raise InvalidCredentialsError(
                "invalid username or password", reason="unknown_principal", principal=name
            )
        if principal.disabled:
            raise InvalidCredentialsError(
                "invalid username or password", reason="principal_disabled", principal=name
            )
        return principal

    def _role_map_cache(self) -> RoleMapCache:
        if self._role_maps is None:
            self._role_maps = RoleMapCache(self._store)
        return self._role_maps

    @staticmethod
    def _resolve_role(role_map: RoleMap, arn: str) -> str | None:
        """Resolve `arn`, or return None when the map has no role for it."""
        try:
            return role_map.resolve(arn)
        except InvalidCredentialsError as exc:
            if exc.reason == "unmapped_iam_principal":
                return None
            raise

    def _check_lockout(self, principal: Principal, now: int) -> None:
        window_end = principal.failed_window_start + self._settings.lockout_seconds
        if principal.failed_logins >= self._settings.max_failed_logins and now < window_end:
            raise TooManyRequestsError(
                "too many failed logins, try again later",
                retry_after=window_end - now,
                principal=principal.name,
            )

    def _dummy_password_hash(self) -> str:
        if self._dummy_hash is None:
            self._dummy_hash = hash_password(secrets.token_urlsafe(16))
        return self._dummy_hash

    def _authenticate_refresh(self, request: TokenRequest) -> tuple[Principal, str]:
        """Return the principal of a valid refresh token, and the token's stored digest."""
        token = request.refresh_token or ""
        name = principal_of_refresh_token(token)
        token_hash = hash_refresh_token(token)
        principal, record = self._store.get_principal_and_refresh_token(name, token_hash)
        now = int(self._clock())

        def reject(reason: str) -> InvalidRefreshTokenError:
            return InvalidRefreshTokenError("invalid refresh token", reason=reason, principal=name)

        if record is None or record.principal != name:
            raise reject("unknown_refresh_token")
        if record.expires_at <= now:
            raise reject("expired_refresh_token")
        if record.service != request.service:
            raise reject("refresh_token_service_mismatch")
        if record.client_id != request.client_id:
            raise reject("refresh_token_client_mismatch")
        if principal is None:
            raise reject("unknown_principal")
        if principal.disabled:
            raise reject("principal_disabled")
        if record.issued_at < principal.refresh_not_before:
            raise reject("refresh_token_revoked")
        if not hmac.compare_digest(record.credential, credential_fingerprint(principal)):
            raise reject("refresh_token_credential_changed")
        return principal, token_hash

    def _new_refresh_token(
        self, principal: Principal, request: TokenRequest, issued_at: int, context: RequestContext
    ) -> str:
        token = new_refresh_token(principal.name)
        record = RefreshTokenRecord(
            token_hash=hash_refresh_token(token),
            principal=principal.name,
            service=request.service,
            client_id=request.client_id,
            issued_at=issued_at,
            expires_at=issued_at + self._settings.refresh_ttl,
            credential=credential_fingerprint(principal),
        )
        self._store.put_refresh_token(record)
        self._audit.emit(
            AuditEvent(
                event_type="refresh_token.issued",
                outcome="success",
                context=context,
                principal=principal.name,
                auth_method="password",
                # The first 12 hex digits of the stored digest identify the token in
                # audit queries without revealing anything usable.
                details={
                    "refresh_token_id": record.token_hash[:12],
                    "client_id": record.client_id,
                    "expires_at": record.expires_at,
                },
            )
        )
        return token

    def _emit_refresh_used(
        self, principal: Principal, token_hash: str, request: TokenRequest, context: RequestContext
    ) -> None:
        self._audit.emit(
            AuditEvent(
                event_type="refresh_token.used",
                outcome="success",
                context=context,
                principal=principal.name,
                auth_method="refresh_token",
                details={
                    "refresh_token_id": token_hash[:12],
                    "client_id": request.client_id,
                },
            )
        )

    def _emit_failure(
        self,
        event_type: EventType,
        context: RequestContext,
        request: TokenRequest,
        exc: RegauthError,
        principal: str | None,
    ) -> None:
        reason = getattr(exc, "reason", None) or reason_code(exc)
        self._audit.emit(
            AuditEvent(
                event_type=event_type,
                outcome="failure",
                context=context,
                principal=principal,
                auth_method=_auth_method_of(request),
                reason=reason,
                details={"message": str(exc), "client_id": request.client_id},
            )
        )


def _arn_matches_principal(principal: Principal, arn: str) -> bool:
    """Return whether the principal, as its policy version defines it, admits `arn`.

    The role map and the principal come from the same version, so this is true unless
    the stored items disagree. It is checked anyway, because it is what decides.
    """
    return any(arn_pattern_matches(pattern, arn) for pattern in principal.arn_patterns)


def _auth_method_of(request: TokenRequest) -> str:
    if request.grant_type == "refresh_token":
        return "refresh_token"
    if request.credentials is None:
        return "anonymous"
    return "aws_iam" if request.credentials.username == IAM_USERNAME else "password"
