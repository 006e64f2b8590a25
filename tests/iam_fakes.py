"""A fake STS that checks SigV4 signatures, and helpers that build and tamper with proofs.

moto's STS does not check signatures, so unit tests use `FakeSts`: it recomputes the
signature with botocore from the secret key it was given and replies as STS does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from regauth.iam import (
    GET_CALLER_IDENTITY_BODY,
    SERVER_ID_HEADER,
    IamProof,
    StsResponse,
    create_proof,
    decode_proof,
    encode_proof,
    parse_authorization,
)

ACCOUNT = "111122223333"
ROLE_KEY_ID = "ASIAEXAMPLEROLEKEY01"
USER_KEY_ID = "AKIAEXAMPLEUSERKEY01"
ROLE_SESSION_ARN = f"arn:aws:sts::{ACCOUNT}:assumed-role/ci-build/build-42"
USER_ARN = f"arn:aws:iam::{ACCOUNT}:user/deploy/robot"
SERVER_ID = "registry.test"


def identity_xml(arn: str, account: str = ACCOUNT) -> bytes:
    return (
        '<GetCallerIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">'
        f"<GetCallerIdentityResult><Arn>{arn}</Arn><UserId>AIDAEXAMPLE</UserId>"
        f"<Account>{account}</Account></GetCallerIdentityResult>"
        "<ResponseMetadata><RequestId>0</RequestId></ResponseMetadata>"
        "</GetCallerIdentityResponse>"
    ).encode()


@dataclass
class Call:
    url: str
    headers: dict[str, str]
    body: bytes


@dataclass
class FakeSts:
    """An `StsTransport` that verifies SigV4 like STS and records every call."""

    secrets: dict[str, tuple[str, str, str | None]] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)

    def add(self, credentials: Credentials, arn: str) -> None:
        self.secrets[credentials.access_key] = (credentials.secret_key, arn, credentials.token)

    def post(self, url: str, headers: Mapping[str, str], body: bytes) -> StsResponse:
        self.calls.append(Call(url, dict(headers), body))
        fields = parse_authorization(headers["authorization"])
        known = self.secrets.get(fields.access_key_id)
        if known is None:
            return StsResponse(403, b"<ErrorResponse>InvalidClientTokenId</ErrorResponse>")
        secret, arn, token = known

        signed = {name: headers[name] for name in fields.signed_headers if name in headers}
        request = AWSRequest(method="POST", url=url, data=body, headers=signed)
        request.context["timestamp"] = headers["x-amz-date"]
        signer = SigV4Auth(Credentials(fields.access_key_id, secret, token), "sts", fields.region)
        # botocore signs every header it is given, so the request holds only the signed ones.
        canonical = signer.canonical_request(request)
        expected = signer.signature(signer.string_to_sign(request, canonical), request)
        if expected != fields.signature or body != GET_CALLER_IDENTITY_BODY.encode():
            return StsResponse(403, b"<ErrorResponse>SignatureDoesNotMatch</ErrorResponse>")
        return StsResponse(200, identity_xml(arn))


def role_credentials() -> Credentials:
    return Credentials(ROLE_KEY_ID, "role-secret-key-for-tests", "session-token-for-tests")


def user_credentials() -> Credentials:
    return Credentials(USER_KEY_ID, "user-secret-key-for-tests")


def make_proof(
    credentials: Credentials | None = None,
    *,
    server_id: str = SERVER_ID,
    region: str = "us-east-1",
) -> str:
    return create_proof(credentials or role_credentials(), server_id=server_id, region=region)


def sign_custom(
    credentials: Credentials,
    *,
    region: str = "us-east-1",
    host: str | None = None,
    method: str = "POST",
    body: str = GET_CALLER_IDENTITY_BODY,
    headers: Mapping[str, str] | None = None,
    proof_region: str | None = None,
) -> str:
    """Sign an arbitrary request as an attacker holding valid credentials could."""
    host = host or f"sts.{region}.amazonaws.com"
    request = AWSRequest(
        method=method,
        url=f"https://{host}/",
        data=body.encode(),
        headers={"Host": host, **(headers or {})},
    )
    SigV4Auth(credentials, "sts", region).add_auth(request)
    pairs = tuple((name.lower(), str(value)) for name, value in request.headers.items())
    return encode_proof(
        IamProof(region=proof_region or region, method=method, headers=pairs, body=body)
    )


def tamper(
    password: str,
    *,
    set_headers: Mapping[str, str] | None = None,
    drop_headers: tuple[str, ...] = (),
    **changes: str,
) -> str:
    """Change a proof after signing, as a man in the middle or a replaying server could."""
    proof = decode_proof(password)
    headers = [(name, value) for name, value in proof.headers if name not in drop_headers]
    for name, value in (set_headers or {}).items():
        headers = [(key, val) for key, val in headers if key != name] + [(name, value)]
    return encode_proof(replace(proof, headers=tuple(headers), **changes))


__all__ = ["SERVER_ID_HEADER"]
