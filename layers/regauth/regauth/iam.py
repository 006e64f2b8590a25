"""IAM proofs: a signed `sts:GetCallerIdentity` request that names its signer.

A client signs a GetCallerIdentity request with its own AWS credentials and sends it,
encoded by `encode_proof`, as the password of the user `aws-iam`. regauth checks the
request, sends it to STS itself and reads the caller's ARN from the response. STS
validates the SigV4 signature, so no secret is shared between the partner and us.

Vault's `aws` auth method and Conjur's `authn-iam` use the same technique and have
both had bypasses. `IamVerifier` therefore checks, before anything is sent:

- the STS URL is built here from a region that must be on an allow-list and match an
  anchored pattern, so the client's URL or Host header is never followed;
- the method is POST and the body is exactly `Action=GetCallerIdentity&Version=2011-06-15`;
- the server-identity header is present, has this deployment's value, and is listed
  in SignedHeaders, so a proof made for another server cannot be replayed here;
- only allow-listed headers are present, and each of them is signed;
- `X-Amz-Date` is within `max_age` seconds of now.

The STS response must be HTTP 200 with the 2011-06-15 namespace and exactly one ARN,
redirects are never followed, and every failure is an `InvalidIamProofError` (401).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol
from xml.etree import ElementTree

import urllib3

from regauth.errors import InvalidCredentialsError, InvalidIamProofError

IAM_USERNAME = "aws-iam"
SERVER_ID_HEADER = "x-regauth-server-id"
GET_CALLER_IDENTITY_BODY = "Action=GetCallerIdentity&Version=2011-06-15"
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded; charset=utf-8"
STS_NAMESPACE = "https://sts.amazonaws.com/doc/2011-06-15/"
PROOF_VERSION = 1

# A proof carries a session token of up to about 2 KB for assumed roles. The limit
# keeps it well inside the 8 KiB Authorization header regauth accepts.
MAX_PROOF_LENGTH = 6 * 1024
# STS responses to GetCallerIdentity are well under 1 KiB.
MAX_STS_RESPONSE_BYTES = 16 * 1024
# SigV4 requests stay valid at AWS for 15 minutes. regauth accepts a proof only this
# many seconds either side of its X-Amz-Date, which also bounds its replay window.
DEFAULT_MAX_AGE = 300

# Region names such as `us-east-1`, `eu-central-2`, `us-gov-west-1` or `cn-north-1`.
# `fullmatch` anchors both ends, so `us-east-1.attacker.example` or a trailing
# newline never passes.
REGION_PATTERN = re.compile(r"[a-z]{2}(?:-gov)?-[a-z]+-[0-9]{1,2}")

# Headers a proof may contain. `authorization` is the signature itself, and every
# other one must be listed in SignedHeaders.
ALLOWED_HEADERS = frozenset(
    {
        "authorization",
        "content-type",
        "host",
        "x-amz-date",
        "x-amz-security-token",
        SERVER_ID_HEADER,
    }
)
REQUIRED_SIGNED_HEADERS = frozenset({"host", "x-amz-date", SERVER_ID_HEADER})

_AMZ_DATE_FORMAT = "%Y%m%dT%H%M%SZ"
_AUTHORIZATION = re.compile(
    r"AWS4-HMAC-SHA256 "
    r"Credential=(?P<key>[A-Z0-9]{16,128})/(?P<date>[0-9]{8})/(?P<region>[a-z0-9-]{1,32})"
    r"/(?P<service>[a-z0-9-]{1,32})/aws4_request, "
    r"SignedHeaders=(?P<signed>[a-z0-9-]+(?:;[a-z0-9-]+)*), "
    r"Signature=(?P<signature>[0-9a-f]{64})"
)
_SERVER_ID = re.compile(r"[A-Za-z0-9.:_-]{1,253}")

# IAM name characters, from the IAM User Guide's "IAM identifiers" page.
_NAME = r"[\w+=,.@-]{1,64}"
_PARTITION = r"aws|aws-cn|aws-us-gov"
_ASSUMED_ROLE_ARN = re.compile(
    rf"arn:(?P<partition>{_PARTITION}):sts::(?P<account>[0-9]{{12}}):"
    rf"assumed-role/(?P<role>{_NAME})/(?P<session>[\w+=,.@-]{{2,64}})",
    re.ASCII,
)
_USER_ARN = re.compile(
    rf"arn:(?P<partition>{_PARTITION}):iam::(?P<account>[0-9]{{12}}):"
    rf"user/(?:[\x21-\x7e]{{1,510}}/)?{_NAME}",
    re.ASCII,
)


# Printable ASCII, bounded. SigV4 headers (dates, tokens, signatures) never need more.
_HEADER_VALUE = re.compile(r"[\x20-\x7e]{1,4096}")


def _reject(reason: str, message: str = "invalid IAM proof") -> InvalidIamProofError:
    return InvalidIamProofError(message, reason=reason)


def sts_host(region: str) -> str:
    """Return the regional STS host name. China regions use the `amazonaws.com.cn` domain."""
    suffix = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
    return f"sts.{region}.{suffix}"


def check_region(region: str, allowed: Iterable[str]) -> str:
    """Return `region` if it is a well-formed region name on the allow-list, else raise."""
    if not REGION_PATTERN.fullmatch(region) or region not in set(allowed):
        raise _reject("disallowed_sts_region")
    return region


def check_server_id(value: str) -> str:
    """Return `value` if it can be a server-identity header value (a host name and port)."""
    if not _SERVER_ID.fullmatch(value):
        raise ValueError(
            f"server id {value!r} is invalid: use a host name such as registry.example.com, "
            "optionally with :port"
        )
    return value


# The proof -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IamProof:
    """A signed GetCallerIdentity request as the client made it.

    `headers` has lower-case names in the order the client sent them.
    """

    region: str
    method: str
    headers: tuple[tuple[str, str], ...]
    body: str

    def header(self, name: str) -> str | None:
        """Return the value of header `name` (lower case), or None if it is absent."""
        for key, value in self.headers:
            if key == name:
                return value
        return None


def encode_proof(proof: IamProof) -> str:
    """Encode a proof as unpadded base64url JSON, which fits in a Basic-auth password."""
    document = {
        "v": PROOF_VERSION,
        "region": proof.region,
        "method": proof.method,
        "headers": dict(proof.headers),
        "body": proof.body,
    }
    raw = json.dumps(document, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_proof(password: str) -> IamProof:
    """Decode a password made by `encode_proof`, or raise `InvalidIamProofError`."""
    if len(password) > MAX_PROOF_LENGTH:
        raise _reject("iam_proof_too_large")
    try:
        padded = password + "=" * (-len(password) % 4)
        # validate=True rejects characters outside the alphabet instead of skipping them.
        raw = base64.b64decode(padded.encode("ascii"), altchars=b"-_", validate=True)
        document = json.loads(raw.decode("utf-8"))
    except (binascii.Error, UnicodeError, ValueError):
        raise _reject("malformed_iam_proof") from None

    if not isinstance(document, dict) or set(document) != {
        "v",
        "region",
        "method",
        "headers",
        "body",
    }:
        raise _reject("malformed_iam_proof")
    if document["v"] != PROOF_VERSION:
        raise _reject("unsupported_iam_proof_version")
    headers = document["headers"]
    fields = (document["region"], document["method"], document["body"])
    if not isinstance(headers, dict) or not all(isinstance(item, str) for item in fields):
        raise _reject("malformed_iam_proof")
    if not all(isinstance(key, str) and isinstance(value, str) for key, value in headers.items()):
        raise _reject("malformed_iam_proof")

    lowered = tuple((key.lower(), value) for key, value in headers.items())
    if len({key for key, _ in lowered}) != len(lowered):
        raise _reject("repeated_iam_proof_header")
    return IamProof(
        region=document["region"], method=document["method"], headers=lowered, body=document["body"]
    )


def create_proof(
    credentials: Any,
    *,
    server_id: str,
    region: str,
) -> str:
    """Sign a GetCallerIdentity request with `credentials` and return the encoded proof.

    `credentials` are botocore credentials, for example from
    `boto3.Session().get_credentials()`. The server-identity header is added before
    signing, so SigV4 lists it in SignedHeaders.
    """
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest

    check_server_id(server_id)
    if not REGION_PATTERN.fullmatch(region):
        raise ValueError(f"region {region!r} is not an AWS region name such as us-east-1")
    host = sts_host(region)
    request = AWSRequest(
        method="POST",
        url=f"https://{host}/",
        data=GET_CALLER_IDENTITY_BODY.encode("ascii"),
        headers={
            "Host": host,
            "Content-Type": FORM_CONTENT_TYPE,
            "X-Regauth-Server-Id": server_id,
        },
    )
    SigV4Auth(credentials.get_frozen_credentials(), "sts", region).add_auth(request)
    headers = tuple((name.lower(), str(value)) for name, value in request.headers.items())
    return encode_proof(
        IamProof(region=region, method="POST", headers=headers, body=GET_CALLER_IDENTITY_BODY)
    )


# Checks before anything is sent ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class SignatureFields:
    """The parts of a SigV4 Authorization header that regauth checks."""

    access_key_id: str
    date: str
    region: str
    service: str
    signed_headers: tuple[str, ...]
    signature: str


def parse_authorization(value: str) -> SignatureFields:
    """Parse a SigV4 `Authorization` header strictly, or raise `InvalidIamProofError`."""
    match = _AUTHORIZATION.fullmatch(value)
    if match is None:
        raise _reject("malformed_sts_authorization")
    return SignatureFields(
        access_key_id=match["key"],
        date=match["date"],
        region=match["region"],
        service=match["service"],
        signed_headers=tuple(match["signed"].split(";")),
        signature=match["signature"],
    )


def check_proof(
    proof: IamProof, *, server_id: str, regions: Iterable[str], now: float, max_age: int
) -> tuple[SignatureFields, int]:
    """Apply every check that needs no network; return the signature and its expiry time."""
    check_region(proof.region, regions)
    if proof.method != "POST":
        raise _reject("disallowed_sts_method")
    if proof.body != GET_CALLER_IDENTITY_BODY:
        raise _reject("disallowed_sts_body")

    names = {name for name, _ in proof.headers}
    if not names <= ALLOWED_HEADERS:
        raise _reject("disallowed_header")
    # Header values are forwarded to STS, so they must be what HTTP allows on the
    # wire. http.client raises on CR, LF or non-Latin-1 text, which would otherwise
    # surface as an unexpected error instead of a rejected proof.
    if not all(_HEADER_VALUE.fullmatch(value) for _, value in proof.headers):
        raise _reject("invalid_header_value")
    if proof.header("host") != sts_host(proof.region):
        raise _reject("wrong_sts_host")

    authorization = proof.header("authorization")
    if authorization is None:
        raise _reject("missing_sts_authorization")
    fields = parse_authorization(authorization)
    if fields.service != "sts" or fields.region != proof.region:
        raise _reject("wrong_credential_scope")

    signed = set(fields.signed_headers)
    if proof.header(SERVER_ID_HEADER) is None:
        raise _reject("missing_server_id_header")
    if not signed >= REQUIRED_SIGNED_HEADERS:
        raise _reject(
            "server_id_not_signed" if SERVER_ID_HEADER not in signed else "unsigned_header"
        )
    # Requiring every header to be signed, and every signed header to be present,
    # means no part of the forwarded request can change without changing the signature.
    if signed != names - {"authorization"}:
        raise _reject("unsigned_header")
    if proof.header(SERVER_ID_HEADER) != server_id:
        raise _reject("wrong_server_id")

    expires_at = _check_date(proof.header("x-amz-date") or "", fields.date, now, max_age)
    return fields, expires_at


def _check_date(amz_date: str, scope_date: str, now: float, max_age: int) -> int:
    try:
        signed_at = datetime.strptime(amz_date, _AMZ_DATE_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        raise _reject("malformed_amz_date") from None
    if signed_at.strftime("%Y%m%d") != scope_date:
        raise _reject("wrong_credential_scope")

    timestamp = int(signed_at.timestamp())
    if timestamp > now + max_age:
        raise _reject("iam_proof_not_yet_valid")
    if timestamp + max_age <= now:
        raise _reject("iam_proof_expired")
    return timestamp + max_age


# STS -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StsResponse:
    """Status and body of STS's reply, the body cut at `MAX_STS_RESPONSE_BYTES` + 1."""

    status: int
    body: bytes


class StsTransport(Protocol):
    """Sends the checked request to STS. It must not follow redirects."""

    def post(self, url: str, headers: Mapping[str, str], body: bytes) -> StsResponse: ...


class Urllib3StsTransport:
    """An `StsTransport` over a urllib3 pool, with redirects and retries disabled.

    A retry would send the same signed request twice, and a redirect would send it to
    a host regauth did not choose. Any connection failure raises `InvalidIamProofError`.
    """

    def __init__(self, *, connect_timeout: float = 2.0, read_timeout: float = 5.0) -> None:
        self._pool = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
            retries=urllib3.Retry(total=0, redirect=0, raise_on_redirect=False),
        )

    def post(self, url: str, headers: Mapping[str, str], body: bytes) -> StsResponse:
        try:
            response = self._pool.request(
                "POST",
                url,
                body=body,
                headers=dict(headers),
                redirect=False,
                preload_content=False,
            )
            try:
                payload = response.read(MAX_STS_RESPONSE_BYTES + 1)
            finally:
                response.release_conn()
        except (urllib3.exceptions.HTTPError, ValueError):
            # ValueError covers http.client's checks of header names and values,
            # which `check_proof` should already have made unreachable.
            raise _reject("sts_unreachable") from None
        return StsResponse(status=response.status, body=payload)


@dataclass(frozen=True, slots=True)
class IamIdentity:
    """The verified signer of a proof.

    `arn` is what policies match: the IAM user ARN, or for an assumed-role session the
    role ARN `arn:aws:iam::ACCOUNT:role/NAME`. `caller_arn` is the ARN STS returned.
    """

    arn: str
    caller_arn: str
    account: str
    user_id: str


def parse_sts_response(response: StsResponse) -> IamIdentity:
    """Read the caller from a GetCallerIdentity response, or raise `InvalidIamProofError`."""
    if response.status != 200:
        # STS returns 403 for a bad signature or expired token; 3xx is never followed.
        raise _reject(f"sts_status_{response.status}")
    if len(response.body) > MAX_STS_RESPONSE_BYTES:
        raise _reject("malformed_sts_response")
    # STS never sends a DOCTYPE. Refusing one rules out entity expansion in the parser.
    if b"<!DOCTYPE" in response.body.upper() or b"<!ENTITY" in response.body.upper():
        raise _reject("malformed_sts_response")
    try:
        root = ElementTree.fromstring(response.body)  # noqa: S314 - no DTD, checked above
    except ElementTree.ParseError:
        raise _reject("malformed_sts_response") from None

    ns = f"{{{STS_NAMESPACE}}}"
    if root.tag != f"{ns}GetCallerIdentityResponse":
        raise _reject("malformed_sts_response")
    results = root.findall(f"{ns}GetCallerIdentityResult")
    if len(results) != 1:
        raise _reject("malformed_sts_response")
    arns = results[0].findall(f"{ns}Arn")
    accounts = results[0].findall(f"{ns}Account")
    user_ids = results[0].findall(f"{ns}UserId")
    if len(arns) != 1 or len(accounts) != 1 or len(user_ids) > 1:
        raise _reject("malformed_sts_response")

    caller_arn = (arns[0].text or "").strip()
    account = (accounts[0].text or "").strip()
    user_id = (user_ids[0].text or "").strip() if user_ids else ""
    arn = principal_arn(caller_arn)
    if arn.split(":")[4] != account:
        raise _reject("malformed_sts_response")
    return IamIdentity(arn=arn, caller_arn=caller_arn, account=account, user_id=user_id)


def principal_arn(caller_arn: str) -> str:
    """Map an STS caller ARN to the ARN policies match.

    An assumed-role session `arn:aws:sts::ACCOUNT:assumed-role/ROLE/SESSION` maps to
    `arn:aws:iam::ACCOUNT:role/ROLE`. The session ARN does not contain the role's
    path, so the result never has one. IAM user ARNs are returned unchanged. Root,
    federated-user and other ARNs raise, because no policy can name them.
    """
    assumed = _ASSUMED_ROLE_ARN.fullmatch(caller_arn)
    if assumed is not None:
        return f"arn:{assumed['partition']}:iam::{assumed['account']}:role/{assumed['role']}"
    if _USER_ARN.fullmatch(caller_arn) is not None:
        return caller_arn
    raise _reject("unsupported_iam_principal")


# Verification with a cache ---------------------------------------------------------


class VerifiedProofCache:
    """Identities of proofs STS has confirmed, each kept until the proof itself expires.

    Keys are the signature plus a digest of the whole proof, so a proof changed after
    verification misses. An entry never outlives the proof's own expiry time.
    """

    def __init__(self, *, max_entries: int = 1024) -> None:
        self._entries: OrderedDict[str, tuple[IamIdentity, int]] = OrderedDict()
        self._max_entries = max_entries
        self._lock = threading.Lock()

    def get(self, key: str, now: float) -> IamIdentity | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            identity, expires_at = entry
            if expires_at <= now:
                del self._entries[key]
                return None
            return identity

    def put(self, key: str, identity: IamIdentity, expires_at: int, now: float) -> None:
        with self._lock:
            if expires_at <= now:
                return
            self._entries[key] = (identity, expires_at)
            self._entries.move_to_end(key)
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


class IamVerifier:
    """Verify encoded proofs: local checks, then STS once per proof, then the cache.

    `endpoint_override` sends requests to another base URL (a local moto server) while
    the Host header and the signature stay those of the real regional STS host. Only
    `regauth serve` sets it, and `regauth.config` refuses it inside Lambda.
    """

    def __init__(
        self,
        *,
        server_id: str,
        regions: Iterable[str],
        transport: StsTransport,
        clock: Callable[[], float] = time.time,
        max_age: int = DEFAULT_MAX_AGE,
        endpoint_override: str | None = None,
        cache: VerifiedProofCache | None = None,
    ) -> None:
        self._server_id = check_server_id(server_id)
        self._regions = frozenset(regions)
        self._transport = transport
        self._clock = clock
        self._max_age = max_age
        self._endpoint_override = endpoint_override
        self._cache = cache if cache is not None else VerifiedProofCache()

    @property
    def cache(self) -> VerifiedProofCache:
        return self._cache

    def verify(self, password: str) -> IamIdentity:
        """Return the identity that signed `password`, or raise `InvalidIamProofError`."""
        proof = decode_proof(password)
        now = self._clock()
        fields, expires_at = check_proof(
            proof, server_id=self._server_id, regions=self._regions, now=now, max_age=self._max_age
        )
        key = fields.signature + ":" + hashlib.sha256(password.encode("ascii")).hexdigest()
        cached = self._cache.get(key, now)
        if cached is not None:
            return cached

        identity = parse_sts_response(self._send(proof))
        self._cache.put(key, identity, expires_at, now)
        return identity

    def _send(self, proof: IamProof) -> StsResponse:
        host = sts_host(proof.region)
        url = self._endpoint_override or f"https://{host}/"
        # Only allow-listed headers exist in a checked proof, and Host is the one
        # regauth built for the region, so nothing else from the client is forwarded.
        headers = {name: value for name, value in proof.headers if name in ALLOWED_HEADERS}
        headers["host"] = host
        return self._transport.post(url, headers, proof.body.encode("ascii"))


# Mapping ARNs to policy principals -------------------------------------------------

ROLE_PREFIX = "role:"
# An ARN pattern names one account literally, so a stray `*` can never admit every
# AWS account. `*` matches any run of characters, including `/`.
_ARN_PATTERN = re.compile(
    rf"arn:(?:{_PARTITION}):iam::[0-9]{{12}}:(?:\*|(?:role|user)/[\x21-\x7e]{{1,512}})", re.ASCII
)


def validate_arn_pattern(pattern: str) -> str | None:
    """Return why `pattern` is not a valid IAM ARN pattern, or None if it is valid."""
    if not _ARN_PATTERN.fullmatch(pattern):
        return (
            f"invalid ARN pattern {pattern!r}: use arn:aws:iam::ACCOUNT:role/NAME, "
            "arn:aws:iam::ACCOUNT:user/NAME or arn:aws:iam::ACCOUNT:* with a 12-digit account"
        )
    return None


def arn_pattern_matches(pattern: str, arn: str) -> bool:
    """Return whether `arn` matches `pattern` as a whole; `*` matches any characters."""
    regex = ".*".join(re.escape(part) for part in pattern.split("*"))
    return re.fullmatch(regex, arn, re.ASCII | re.DOTALL) is not None


@dataclass(frozen=True, slots=True)
class RoleMap:
    """Policy roles: each principal name `role:NAME` with the ARN patterns it admits."""

    roles: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def resolve(self, arn: str) -> str:
        """Return the one principal whose patterns match `arn`.

        No match, or matches in more than one role, raises: an ARN never gets the
        union of several roles, because no grant in the policy states that.
        """
        matches = [name for name, patterns in self.roles if _any_matches(patterns, arn)]
        if not matches:
            raise InvalidCredentialsError(
                "invalid username or password", reason="unmapped_iam_principal", principal=arn
            )
        if len(matches) > 1:
            raise InvalidCredentialsError(
                "invalid username or password", reason="ambiguous_iam_principal", principal=arn
            )
        return matches[0]


def _any_matches(patterns: Iterable[str], arn: str) -> bool:
    return any(arn_pattern_matches(pattern, arn) for pattern in patterns)
