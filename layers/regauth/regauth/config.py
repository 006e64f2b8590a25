"""Deployment settings, read from the environment once by `load_settings`."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

# Docker's client treats a missing or shorter `expires_in` as 60 seconds, so a token
# that lives less than that would be reused after it expired.
MIN_TOKEN_TTL = 60
# Registries accept tokens up to 60 seconds past `exp`, and distribution checks the
# x5c chain at verification time, so a leaf must outlive every token it signed by this.
REGISTRY_LEEWAY = 60
# The only form the local-only STS endpoint override may take: a loopback port.
LOCAL_STS_ENDPOINT = re.compile(r"http://127\.0\.0\.1:[0-9]{1,5}/")


class SettingsError(ValueError):
    """An environment variable is missing or invalid."""


@dataclass(frozen=True, slots=True)
class Settings:
    """Settings of one deployment.

    Environment variables, with defaults:

    - `REGAUTH_TABLE`: DynamoDB table name (required).
    - `REGAUTH_KEY_ID`: KMS key id, ARN or alias of the root signing key (required).
    - `REGAUTH_SERVICES`: comma-separated `service` names accepted (required).
    - `REGAUTH_ISSUER`: the JWT `iss` claim (required).
    - `REGAUTH_TOKEN_TTL`: access token lifetime in seconds (300, at least 60).
    - `REGAUTH_REFRESH_TTL`: refresh token lifetime in seconds (2592000, 30 days).
    - `REGAUTH_CERT_TTL`: signing certificate lifetime in seconds (3600).
    - `REGAUTH_ROOT_CERT_DAYS`: root certificate lifetime in days (3650).
    - `REGAUTH_REALM`: the Basic realm named in 401 challenges (`regauth`).
    - `REGAUTH_MAX_FAILED_LOGINS`: failed logins per principal before 429 (10).
    - `REGAUTH_LOCKOUT_SECONDS`: window and lockout duration in seconds (300).
    - `REGAUTH_IAM_SERVER_ID`: the value IAM proofs must sign in `X-Regauth-Server-Id`,
      usually the registry host name (empty: IAM sign-in is off).
    - `REGAUTH_IAM_REGIONS`: comma-separated STS regions proofs may name (`us-east-1`).
    - `REGAUTH_IAM_STS_ENDPOINT`: local-only STS base URL. `regauth serve` sets it to its
      moto server. It must be an `http://127.0.0.1` URL and is rejected when
      `AWS_LAMBDA_FUNCTION_NAME` is set, so a deployed stack always calls real STS.
    """

    table_name: str
    key_id: str
    services: tuple[str, ...]
    issuer: str
    token_ttl: int = 300
    refresh_ttl: int = 30 * 24 * 3600
    cert_ttl: int = 3600
    root_cert_days: int = 3650
    realm: str = "regauth"
    max_failed_logins: int = 10
    lockout_seconds: int = 300
    iam_server_id: str = ""
    iam_regions: tuple[str, ...] = ("us-east-1",)
    iam_sts_endpoint: str | None = None

    @property
    def cert_renew_margin(self) -> int:
        """Seconds before a leaf's expiry at which it is replaced.

        A token signed just before renewal lives `token_ttl` more seconds and the
        registry accepts it `REGISTRY_LEEWAY` past that, and the extra minute covers
        clock skew between regauth and the registry.
        """
        return self.token_ttl + REGISTRY_LEEWAY + 60


def _required(environ: Mapping[str, str], name: str) -> str:
    value = environ.get(name, "").strip()
    if not value:
        raise SettingsError(f"environment variable {name} is missing or empty")
    return value


def _integer(environ: Mapping[str, str], name: str, default: int, minimum: int) -> int:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name} must be at least {minimum}, got {value}")
    return value


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read settings from `environ` (default `os.environ`) and check them together."""
    env = os.environ if environ is None else environ
    services = tuple(part.strip() for part in _required(env, "REGAUTH_SERVICES").split(","))
    if not all(services):
        raise SettingsError("REGAUTH_SERVICES contains an empty service name")

    settings = Settings(
        table_name=_required(env, "REGAUTH_TABLE"),
        key_id=_required(env, "REGAUTH_KEY_ID"),
        services=services,
        issuer=_required(env, "REGAUTH_ISSUER"),
        token_ttl=_integer(env, "REGAUTH_TOKEN_TTL", 300, MIN_TOKEN_TTL),
        refresh_ttl=_integer(env, "REGAUTH_REFRESH_TTL", 30 * 24 * 3600, 60),
        cert_ttl=_integer(env, "REGAUTH_CERT_TTL", 3600, 300),
        root_cert_days=_integer(env, "REGAUTH_ROOT_CERT_DAYS", 3650, 1),
        realm=env.get("REGAUTH_REALM", "").strip() or "regauth",
        max_failed_logins=_integer(env, "REGAUTH_MAX_FAILED_LOGINS", 10, 1),
        lockout_seconds=_integer(env, "REGAUTH_LOCKOUT_SECONDS", 300, 1),
        iam_server_id=_iam_server_id(env),
        iam_regions=_iam_regions(env),
        iam_sts_endpoint=_iam_sts_endpoint(env),
    )
    # A leaf has to outlive the renewal margin by a useful amount, or every token
    # request would sign a new certificate with KMS.
    if settings.cert_ttl < 2 * settings.cert_renew_margin:
        raise SettingsError(
            f"REGAUTH_CERT_TTL ({settings.cert_ttl}) must be at least twice "
            f"REGAUTH_TOKEN_TTL + 120 ({settings.cert_renew_margin}) so that a "
            "certificate is not renewed on every request"
        )
    return settings


def _iam_server_id(environ: Mapping[str, str]) -> str:
    from regauth.iam import check_server_id

    value = environ.get("REGAUTH_IAM_SERVER_ID", "").strip()
    if not value:
        return ""
    try:
        return check_server_id(value)
    except ValueError as exc:
        raise SettingsError(f"REGAUTH_IAM_SERVER_ID: {exc}") from None


def _iam_regions(environ: Mapping[str, str]) -> tuple[str, ...]:
    from regauth.iam import REGION_PATTERN

    raw = environ.get("REGAUTH_IAM_REGIONS", "").strip() or "us-east-1"
    regions = tuple(part.strip() for part in raw.split(","))
    for region in regions:
        if not REGION_PATTERN.fullmatch(region):
            raise SettingsError(
                f"REGAUTH_IAM_REGIONS contains {region!r}, which is not a region name "
                "such as us-east-1"
            )
    return regions


def _iam_sts_endpoint(environ: Mapping[str, str]) -> str | None:
    value = environ.get("REGAUTH_IAM_STS_ENDPOINT", "").strip()
    if not value:
        return None
    # Lambda sets AWS_LAMBDA_FUNCTION_NAME in every function's environment, so a
    # deployed stack fails to start rather than send partner proofs to another host.
    if environ.get("AWS_LAMBDA_FUNCTION_NAME"):
        raise SettingsError(
            "REGAUTH_IAM_STS_ENDPOINT is for `regauth serve` only and must not be set in Lambda"
        )
    if not LOCAL_STS_ENDPOINT.fullmatch(value):
        raise SettingsError(
            f"REGAUTH_IAM_STS_ENDPOINT must be http://127.0.0.1:PORT/, got {value!r}"
        )
    return value
