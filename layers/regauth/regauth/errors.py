"""Errors raised by regauth.

The tree::

    RegauthError
    ├── RequestError                  the client sent something invalid (HTTP 400)
    │   ├── InvalidRequestError       a parameter is missing, repeated or malformed
    │   ├── InvalidScopeError         a `scope` value does not follow the scope grammar
    │   ├── UnknownServiceError       `service` is not one this deployment serves
    │   ├── UnsupportedGrantTypeError `grant_type` is not `password` or `refresh_token`
    │   ├── InvalidAuditPayloadError  a log subscription payload or audit record is malformed
    │   └── InvalidAdminRequestError  an admin payload is invalid; names the field
    ├── AuthenticationError           credentials were presented and rejected (HTTP 401)
    │   ├── InvalidCredentialsError   wrong user, password or Authorization header
    │   ├── InvalidRefreshTokenError  unknown, expired, revoked or mismatched refresh token
    │   └── InvalidIamProofError      an IAM proof failed a check or STS did not confirm it
    ├── TooManyRequestsError          failed logins for a principal exceed the limit (429)
    ├── UnavailableError              a dependency failed, so regauth fails closed (503)
    │   ├── StoreUnavailableError     DynamoDB could not be read or written
    │   ├── SigningUnavailableError   KMS could not sign a certificate
    │   ├── ArchiveUnavailableError   S3, DynamoDB or CloudWatch Logs failed while archiving
    │   └── PolicyConflictError       another apply or rollback runs or changed the version
    └── PolicyError                   a policy file is invalid; carries every problem found

`regauth.http` maps each class to a status code and a body in one table. Messages
are written for the client: they never contain a password, token or header value.
"""

from __future__ import annotations

from dataclasses import dataclass


class RegauthError(Exception):
    """Base class of every error regauth raises on purpose."""


class RequestError(RegauthError):
    """The request is invalid and must not be retried unchanged."""


class InvalidRequestError(RequestError):
    """A request parameter is missing, repeated where it must be single, or malformed."""


class InvalidScopeError(RequestError):
    """A `scope` value does not follow `type:name:actions`."""


class UnknownServiceError(RequestError):
    """The `service` parameter names a service this deployment does not issue tokens for."""


class UnsupportedGrantTypeError(RequestError):
    """The OAuth2 `grant_type` is not one regauth implements."""


class InvalidAuditPayloadError(RequestError):
    """A CloudWatch Logs subscription payload or an audit record cannot be decoded."""


class InvalidAdminRequestError(RequestError):
    """An admin action's payload is invalid. `field` names the payload key at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class AuthenticationError(RegauthError):
    """Presented credentials were rejected.

    `reason` is a short machine-readable code for the audit record. The client sees
    only the generic message, so a caller cannot tell an unknown user from a wrong
    password.
    """

    def __init__(self, message: str, *, reason: str, principal: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.principal = principal


class InvalidCredentialsError(AuthenticationError):
    """The user name, password or Authorization header is wrong."""


class InvalidRefreshTokenError(AuthenticationError):
    """The refresh token is unknown, expired, revoked or bound to something else."""


class InvalidIamProofError(AuthenticationError):
    """A signed GetCallerIdentity proof failed a check, or STS did not confirm it.

    `reason` names the failed check, for example `wrong_server_id` or `sts_status_403`.
    """


class TooManyRequestsError(RegauthError):
    """Too many failed logins for one principal within the lockout window."""

    def __init__(self, message: str, *, retry_after: int, principal: str | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.principal = principal


class UnavailableError(RegauthError):
    """A dependency failed. regauth fails closed and issues nothing."""


class StoreUnavailableError(UnavailableError):
    """DynamoDB could not be read or written."""


class SigningUnavailableError(UnavailableError):
    """KMS could not sign, or its key is not usable for ECDSA P-256 signing."""


class ArchiveUnavailableError(UnavailableError):
    """The audit archive could not be written or read.

    The archiver lets it propagate, so Lambda retries the invocation and finally
    sends the payload to the dead-letter queue instead of dropping events.
    """


class PolicyConflictError(UnavailableError):
    """Another apply or rollback holds the policy lock or changed the active version.

    Nothing was activated by the call that raised it, and retrying is safe.
    """


@dataclass(frozen=True, slots=True)
class PolicyProblem:
    """One problem found in a policy file, with its 1-based position."""

    message: str
    line: int
    column: int
    source: str = "<policy>"

    def __str__(self) -> str:
        return f"{self.source}:{self.line}:{self.column}: {self.message}"


class PolicyError(RegauthError):
    """A policy file is invalid. `problems` lists every problem found, in file order."""

    def __init__(self, problems: list[PolicyProblem]) -> None:
        self.problems = sorted(problems, key=lambda problem: (problem.line, problem.column))
        super().__init__("\n".join(str(problem) for problem in self.problems))
