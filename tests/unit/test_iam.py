"""IAM proofs: format, every hardening check (each tried as an attack), STS parsing, cache."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from regauth.errors import AuthenticationError, InvalidCredentialsError, InvalidIamProofError
from regauth.iam import (
    GET_CALLER_IDENTITY_BODY,
    MAX_PROOF_LENGTH,
    SERVER_ID_HEADER,
    IamVerifier,
    RoleMap,
    StsResponse,
    Urllib3StsTransport,
    VerifiedProofCache,
    arn_pattern_matches,
    check_region,
    decode_proof,
    encode_proof,
    parse_sts_response,
    principal_arn,
    sts_host,
    validate_arn_pattern,
)
from tests.iam_fakes import (
    ACCOUNT,
    ROLE_SESSION_ARN,
    SERVER_ID,
    USER_ARN,
    FakeSts,
    identity_xml,
    make_proof,
    role_credentials,
    sign_custom,
    tamper,
    user_credentials,
)

ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/ci-build"


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def sts() -> FakeSts:
    fake = FakeSts()
    fake.add(role_credentials(), ROLE_SESSION_ARN)
    fake.add(user_credentials(), USER_ARN)
    return fake


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def verifier(sts: FakeSts, clock: Clock) -> IamVerifier:
    return IamVerifier(
        server_id=SERVER_ID, regions=("us-east-1", "eu-west-1"), transport=sts, clock=clock
    )


def reason_of(verifier: IamVerifier, password: str) -> str:
    with pytest.raises(InvalidIamProofError) as caught:
        verifier.verify(password)
    return caught.value.reason


# Format and happy paths


def test_proof_round_trip() -> None:
    password = make_proof()
    assert encode_proof(decode_proof(password)) == password


def test_proof_signs_server_id() -> None:
    proof = decode_proof(make_proof())
    authorization = proof.header("authorization") or ""
    assert SERVER_ID_HEADER in authorization.split("SignedHeaders=")[1].split(",")[0].split(";")


def test_proof_fits_basic_password() -> None:
    assert len(make_proof()) < MAX_PROOF_LENGTH


def test_verify_role_session_maps_to_role(verifier: IamVerifier) -> None:
    assert verifier.verify(make_proof()).arn == ROLE_ARN


def test_verify_keeps_caller_arn(verifier: IamVerifier) -> None:
    assert verifier.verify(make_proof()).caller_arn == ROLE_SESSION_ARN


def test_verify_iam_user(verifier: IamVerifier) -> None:
    assert verifier.verify(make_proof(user_credentials())).arn == USER_ARN


def test_verify_other_allowed_region(verifier: IamVerifier, sts: FakeSts) -> None:
    verifier.verify(make_proof(region="eu-west-1"))
    assert sts.calls[0].url == "https://sts.eu-west-1.amazonaws.com/"


def test_verify_sends_to_regional_host(verifier: IamVerifier, sts: FakeSts) -> None:
    verifier.verify(make_proof())
    assert sts.calls[0].url == "https://sts.us-east-1.amazonaws.com/"


def test_verify_sends_exact_body(verifier: IamVerifier, sts: FakeSts) -> None:
    verifier.verify(make_proof())
    assert sts.calls[0].body == b"Action=GetCallerIdentity&Version=2011-06-15"


def test_endpoint_override_keeps_host(sts: FakeSts, clock: Clock) -> None:
    verifier = IamVerifier(
        server_id=SERVER_ID,
        regions=("us-east-1",),
        transport=sts,
        clock=clock,
        endpoint_override="http://127.0.0.1:9/",
    )
    verifier.verify(make_proof())
    assert sts.calls[0].headers["host"] == "sts.us-east-1.amazonaws.com"


def test_authentication_error_subclass() -> None:
    assert issubclass(InvalidIamProofError, AuthenticationError)


# Attacks on the destination


@pytest.mark.parametrize(
    "region",
    [
        "us-west-2",
        "us-east-1.attacker.example",
        "us-east-1\n",
        "attacker.example/us-east-1",
        "US-EAST-1",
        "",
    ],
    ids=["not-allowed", "host-suffix", "trailing-newline", "path", "upper-case", "empty"],
)
def test_verify_region_attack(verifier: IamVerifier, sts: FakeSts, region: str) -> None:
    password = tamper(make_proof(), region=region)
    assert reason_of(verifier, password) == "disallowed_sts_region"
    assert sts.calls == []


def test_check_region_anchored() -> None:
    with pytest.raises(InvalidIamProofError):
        check_region("xus-east-1", ["xus-east-1"])


def test_verify_host_header_attack(verifier: IamVerifier, sts: FakeSts) -> None:
    password = sign_custom(role_credentials(), host="attacker.example", headers=_server_id())
    assert reason_of(verifier, password) == "wrong_sts_host"
    assert sts.calls == []


def test_verify_proof_region_differs_from_scope(verifier: IamVerifier, sts: FakeSts) -> None:
    password = sign_custom(
        role_credentials(),
        region="eu-west-1",
        host="sts.us-east-1.amazonaws.com",
        headers=_server_id(),
        proof_region="us-east-1",
    )
    assert reason_of(verifier, password) == "wrong_credential_scope"


def test_sts_host_china() -> None:
    assert sts_host("cn-north-1") == "sts.cn-north-1.amazonaws.com.cn"


# Attacks on the action


@pytest.mark.parametrize(
    "body",
    [
        "Action=AssumeRole&Version=2011-06-15",
        "Action=GetCallerIdentity&Version=2011-06-15&Extra=1",
        "Version=2011-06-15&Action=GetCallerIdentity",
        "Action=GetCallerIdentity&Version=2011-06-15&Action=GetSessionToken",
        "",
    ],
    ids=["other-action", "extra-param", "reordered", "repeated-action", "empty"],
)
def test_verify_body_attack(verifier: IamVerifier, sts: FakeSts, body: str) -> None:
    password = sign_custom(role_credentials(), body=body, headers=_server_id())
    assert reason_of(verifier, password) == "disallowed_sts_body"
    assert sts.calls == []


def test_verify_get_method_attack(verifier: IamVerifier, sts: FakeSts) -> None:
    password = sign_custom(role_credentials(), method="GET", headers=_server_id())
    assert reason_of(verifier, password) == "disallowed_sts_method"
    assert sts.calls == []


# Attacks on the server identity


def test_verify_server_id_removed(verifier: IamVerifier, sts: FakeSts) -> None:
    password = tamper(make_proof(), drop_headers=(SERVER_ID_HEADER,))
    assert reason_of(verifier, password) == "missing_server_id_header"
    assert sts.calls == []


def test_verify_server_id_for_other_server(verifier: IamVerifier, sts: FakeSts) -> None:
    password = make_proof(server_id="vault.example.com")
    assert reason_of(verifier, password) == "wrong_server_id"
    assert sts.calls == []


def test_verify_server_id_unsigned(verifier: IamVerifier, sts: FakeSts) -> None:
    # Signed without the header, which is then added: the Vault bypass pattern.
    password = tamper(sign_custom(role_credentials()), set_headers={SERVER_ID_HEADER: SERVER_ID})
    assert reason_of(verifier, password) == "server_id_not_signed"
    assert sts.calls == []


def test_verify_server_id_rewritten(verifier: IamVerifier, sts: FakeSts) -> None:
    # A proof made for another server, with the header value changed to ours: every
    # local check passes, and STS rejects the signature.
    password = tamper(
        make_proof(server_id="other.example.com"), set_headers={SERVER_ID_HEADER: SERVER_ID}
    )
    assert reason_of(verifier, password) == "sts_status_403"
    assert len(sts.calls) == 1


# Attacks on headers


def test_verify_extra_header(verifier: IamVerifier, sts: FakeSts) -> None:
    password = tamper(make_proof(), set_headers={"x-forwarded-host": "attacker.example"})
    assert reason_of(verifier, password) == "disallowed_header"
    assert sts.calls == []


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("content-type", "application/x-www-form-urlencoded\r\nX-Injected: 1"),
        ("x-amz-security-token", "token-\u2603"),
        ("content-type", ""),
        ("content-type", "application/x-www-form-urlencoded\tx"),
    ],
    ids=["crlf", "non-latin1", "empty", "tab"],
)
def test_verify_invalid_header_value(
    verifier: IamVerifier, sts: FakeSts, header: str, value: str
) -> None:
    password = tamper(make_proof(), set_headers={header: value})
    assert reason_of(verifier, password) == "invalid_header_value"
    assert sts.calls == []


def test_transport_value_error_is_rejection(monkeypatch: pytest.MonkeyPatch) -> None:
    transport = Urllib3StsTransport()

    def reject_header(*args: object, **kwargs: object) -> None:
        raise ValueError("Invalid header value")

    monkeypatch.setattr(transport._pool, "request", reject_header)
    with pytest.raises(InvalidIamProofError) as caught:
        transport.post("https://sts.us-east-1.amazonaws.com/", {"a": "b"}, b"")
    assert caught.value.reason == "sts_unreachable"


def test_verify_signed_extra_header(verifier: IamVerifier, sts: FakeSts) -> None:
    headers = {**_server_id(), "X-Forwarded-For": "10.0.0.1"}
    password = sign_custom(role_credentials(), headers=headers)
    assert reason_of(verifier, password) == "disallowed_header"


def test_verify_unsigned_allowed_header(verifier: IamVerifier, sts: FakeSts) -> None:
    password = tamper(make_proof(user_credentials()), set_headers={"x-amz-security-token": "x"})
    assert reason_of(verifier, password) == "unsigned_header"
    assert sts.calls == []


def test_verify_repeated_header(verifier: IamVerifier) -> None:
    document = json.loads(_decode_json(make_proof()))
    document["headers"]["X-Regauth-Server-Id"] = SERVER_ID
    assert reason_of(verifier, _encode_json(document)) == "repeated_iam_proof_header"


def test_verify_missing_authorization(verifier: IamVerifier) -> None:
    password = tamper(make_proof(), drop_headers=("authorization",))
    assert reason_of(verifier, password) == "missing_sts_authorization"


@pytest.mark.parametrize(
    "authorization",
    [
        "AWS4-HMAC-SHA256 Credential=ASIAEXAMPLEROLEKEY01/20240101/us-east-1/sts/aws4_request",
        "AWS AKIAEXAMPLE:signature",
        "AWS4-HMAC-SHA256 Credential=ASIAEXAMPLEROLEKEY01/20240101/us-east-1/sts/aws4_request, "
        "SignedHeaders=host;x-amz-date;x-regauth-server-id, Signature=00",
    ],
    ids=["no-signature", "sigv2", "short-signature"],
)
def test_verify_malformed_authorization(verifier: IamVerifier, authorization: str) -> None:
    password = tamper(make_proof(), set_headers={"authorization": authorization})
    assert reason_of(verifier, password) == "malformed_sts_authorization"


def test_verify_wrong_service_scope(verifier: IamVerifier, sts: FakeSts) -> None:
    proof = decode_proof(make_proof())
    authorization = (proof.header("authorization") or "").replace("/sts/", "/iam/")
    password = tamper(make_proof(), set_headers={"authorization": authorization})
    assert reason_of(verifier, password) == "wrong_credential_scope"


# Attacks on time


def test_verify_proof_expires_at_max_age(verifier: IamVerifier, clock: Clock, sts: FakeSts) -> None:
    password = make_proof()
    amz_date = decode_proof(password).header("x-amz-date") or ""
    signed_at = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC).timestamp()
    # Valid for 300 seconds after signing: the second at which it turns 300 is too late.
    clock.now = signed_at + 300
    assert reason_of(verifier, password) == "iam_proof_expired"
    clock.now = signed_at + 299.5
    verifier.verify(password)
    assert len(sts.calls) == 1


def test_verify_expired_proof(verifier: IamVerifier, clock: Clock, sts: FakeSts) -> None:
    password = make_proof()
    clock.now += 301
    assert reason_of(verifier, password) == "iam_proof_expired"
    assert sts.calls == []


def test_verify_future_proof(verifier: IamVerifier, clock: Clock) -> None:
    password = make_proof()
    clock.now -= 400
    assert reason_of(verifier, password) == "iam_proof_not_yet_valid"


def test_verify_malformed_date(verifier: IamVerifier) -> None:
    password = tamper(make_proof(), set_headers={"x-amz-date": "yesterday"})
    assert reason_of(verifier, password) == "malformed_amz_date"


# Malformed passwords


@pytest.mark.parametrize(
    "password",
    ["", "not base64!", "e30", "W10", "eyJ2IjoxfQ", "\u00e9t\u00e9"],
    ids=["empty", "bad-alphabet", "empty-object", "array", "missing-keys", "non-ascii"],
)
def test_decode_malformed(password: str) -> None:
    with pytest.raises(InvalidIamProofError) as caught:
        decode_proof(password)
    assert caught.value.reason == "malformed_iam_proof"


def test_decode_oversized() -> None:
    with pytest.raises(InvalidIamProofError) as caught:
        decode_proof("A" * (MAX_PROOF_LENGTH + 1))
    assert caught.value.reason == "iam_proof_too_large"


def test_decode_other_version() -> None:
    document = json.loads(_decode_json(make_proof()))
    document["v"] = 2
    with pytest.raises(InvalidIamProofError) as caught:
        decode_proof(_encode_json(document))
    assert caught.value.reason == "unsupported_iam_proof_version"


# STS responses


@pytest.mark.parametrize(
    ("response", "reason"),
    [
        (StsResponse(403, b"<ErrorResponse/>"), "sts_status_403"),
        (StsResponse(302, b""), "sts_status_302"),
        (StsResponse(500, b""), "sts_status_500"),
        (StsResponse(200, b"not xml"), "malformed_sts_response"),
        (
            StsResponse(200, identity_xml(ROLE_SESSION_ARN).replace(b"2011-06-15", b"2099-01-01")),
            "malformed_sts_response",
        ),
        (
            StsResponse(
                200,
                identity_xml(ROLE_SESSION_ARN).replace(
                    b"</Arn>", b"</Arn><Arn>arn:aws:iam::999999999999:user/x</Arn>"
                ),
            ),
            "malformed_sts_response",
        ),
        (
            StsResponse(200, identity_xml(ROLE_SESSION_ARN).replace(b"<Arn>", b"<Other>", 1)),
            "malformed_sts_response",
        ),
        (
            StsResponse(200, identity_xml(ROLE_SESSION_ARN, "999999999999")),
            "malformed_sts_response",
        ),
        (
            StsResponse(
                200,
                b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "b">]>'
                + identity_xml(ROLE_SESSION_ARN),
            ),
            "malformed_sts_response",
        ),
        (
            StsResponse(200, identity_xml(f"arn:aws:iam::{ACCOUNT}:root")),
            "unsupported_iam_principal",
        ),
        (StsResponse(200, b" " * 20000), "malformed_sts_response"),
    ],
    ids=[
        "forbidden",
        "redirect",
        "server-error",
        "not-xml",
        "wrong-namespace",
        "two-arns",
        "no-arn",
        "account-mismatch",
        "doctype",
        "root",
        "oversized",
    ],
)
def test_parse_sts_response_rejects(response: StsResponse, reason: str) -> None:
    with pytest.raises(InvalidIamProofError) as caught:
        parse_sts_response(response)
    assert caught.value.reason == reason


@pytest.mark.parametrize(
    ("caller", "expected"),
    [
        (ROLE_SESSION_ARN, ROLE_ARN),
        (USER_ARN, USER_ARN),
        (
            "arn:aws-us-gov:sts::111122223333:assumed-role/ci/s1",
            "arn:aws-us-gov:iam::111122223333:role/ci",
        ),
        (f"arn:aws:iam::{ACCOUNT}:user/robot", f"arn:aws:iam::{ACCOUNT}:user/robot"),
    ],
    ids=["assumed-role", "user-with-path", "gov-partition", "user"],
)
def test_principal_arn(caller: str, expected: str) -> None:
    assert principal_arn(caller) == expected


@pytest.mark.parametrize(
    "caller",
    [
        f"arn:aws:iam::{ACCOUNT}:root",
        f"arn:aws:sts::{ACCOUNT}:federated-user/bob",
        f"arn:aws:iam::{ACCOUNT}:role/ci-build",
        f"arn:aws:sts::{ACCOUNT}:assumed-role/ci-build/s1\n",
        "arn:aws:sts::12345:assumed-role/ci/s1",
    ],
    ids=["root", "federated", "role-arn", "trailing-newline", "short-account"],
)
def test_principal_arn_rejects(caller: str) -> None:
    with pytest.raises(InvalidIamProofError):
        principal_arn(caller)


# The cache


def test_verify_cached_proof_skips_sts(verifier: IamVerifier, sts: FakeSts) -> None:
    password = make_proof()
    verifier.verify(password)
    verifier.verify(password)
    assert len(sts.calls) == 1


def test_verify_cache_never_extends(verifier: IamVerifier, clock: Clock, sts: FakeSts) -> None:
    password = make_proof()
    verifier.verify(password)
    clock.now += 301
    assert reason_of(verifier, password) == "iam_proof_expired"


def test_verify_rejected_proof_not_cached(verifier: IamVerifier, sts: FakeSts) -> None:
    password = tamper(
        make_proof(server_id="other.example.com"), set_headers={SERVER_ID_HEADER: SERVER_ID}
    )
    reason_of(verifier, password)
    reason_of(verifier, password)
    assert len(sts.calls) == 2


def test_cache_entry_expires() -> None:
    cache = VerifiedProofCache()
    identity = parse_sts_response(StsResponse(200, identity_xml(ROLE_SESSION_ARN)))
    cache.put("key", identity, expires_at=1000, now=900)
    assert cache.get("key", 1000) is None


def test_cache_evicts_oldest() -> None:
    cache = VerifiedProofCache(max_entries=2)
    identity = parse_sts_response(StsResponse(200, identity_xml(ROLE_SESSION_ARN)))
    for key in ("a", "b", "c"):
        cache.put(key, identity, expires_at=1000, now=0)
    assert cache.get("a", 0) is None
    assert cache.get("c", 0) == identity


# The urllib3 transport, against servers on 127.0.0.1


class _Recorder(BaseHTTPRequestHandler):
    paths: ClassVar[list[str]] = []
    location = ""

    def do_POST(self) -> None:
        self.paths.append(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", self.location)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = identity_xml(ROLE_SESSION_ARN)
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture
def local_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    base = f"http://127.0.0.1:{server.server_address[1]}"
    _Recorder.paths = []
    _Recorder.location = base + "/followed"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield base
    server.shutdown()
    server.server_close()
    thread.join()


def test_transport_no_redirect(local_server: str) -> None:
    response = Urllib3StsTransport().post(local_server + "/redirect", {}, b"")
    assert response.status == 302
    assert _Recorder.paths == ["/redirect"]


def test_transport_reads_body(local_server: str) -> None:
    response = Urllib3StsTransport().post(local_server + "/", {}, GET_CALLER_IDENTITY_BODY.encode())
    assert parse_sts_response(response).arn == ROLE_ARN


def test_transport_unreachable() -> None:
    with pytest.raises(InvalidIamProofError) as caught:
        # Port 9 (discard) on loopback is closed in test environments, so this fails fast.
        Urllib3StsTransport(connect_timeout=0.5).post("http://127.0.0.1:9/", {}, b"")
    assert caught.value.reason == "sts_unreachable"


def test_verify_redirect_rejected(local_server: str, clock: Clock) -> None:
    verifier = IamVerifier(
        server_id=SERVER_ID,
        regions=("us-east-1",),
        transport=Urllib3StsTransport(),
        clock=clock,
        endpoint_override=local_server + "/redirect",
    )
    assert reason_of(verifier, make_proof()) == "sts_status_302"
    assert _Recorder.paths == ["/redirect"]


def _server_id() -> dict[str, str]:
    return {"X-Regauth-Server-Id": SERVER_ID}


def _decode_json(password: str) -> str:
    import base64

    return base64.urlsafe_b64decode(password + "=" * (-len(password) % 4)).decode()


def _encode_json(document: object) -> str:
    import base64

    raw = json.dumps(document, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


# Role mapping


@pytest.mark.parametrize(
    ("pattern", "arn", "expected"),
    [
        (f"arn:aws:iam::{ACCOUNT}:role/ci-*", ROLE_ARN, True),
        (f"arn:aws:iam::{ACCOUNT}:*", USER_ARN, True),
        (f"arn:aws:iam::{ACCOUNT}:role/ci-*", f"arn:aws:iam::{ACCOUNT}:role/deploy", False),
        (f"arn:aws:iam::{ACCOUNT}:role/ci-*", "arn:aws:iam::999999999999:role/ci-build", False),
        (f"arn:aws:iam::{ACCOUNT}:role/ci.build", f"arn:aws:iam::{ACCOUNT}:role/ciXbuild", False),
        (f"arn:aws:iam::{ACCOUNT}:role/ci", f"arn:aws:iam::{ACCOUNT}:role/ci-build", False),
    ],
    ids=["prefix", "whole-account", "other-role", "other-account", "dot-literal", "anchored"],
)
def test_arn_pattern_matches(pattern: str, arn: str, expected: bool) -> None:
    assert arn_pattern_matches(pattern, arn) is expected


@pytest.mark.parametrize(
    "pattern",
    ["arn:aws:iam::*:role/ci", "*", "arn:aws:iam::1234:role/ci", "arn:aws:s3:::bucket"],
    ids=["any-account", "everything", "short-account", "other-service"],
)
def test_validate_arn_pattern_rejects(pattern: str) -> None:
    assert validate_arn_pattern(pattern) is not None


def test_role_map_resolves() -> None:
    roles = RoleMap((("role:ci", (f"arn:aws:iam::{ACCOUNT}:role/ci-*",)),))
    assert roles.resolve(ROLE_ARN) == "role:ci"


@pytest.mark.parametrize(
    ("roles", "reason"),
    [
        (RoleMap(), "unmapped_iam_principal"),
        (
            RoleMap(
                (
                    ("role:a", (f"arn:aws:iam::{ACCOUNT}:role/ci-*",)),
                    ("role:b", (f"arn:aws:iam::{ACCOUNT}:*",)),
                )
            ),
            "ambiguous_iam_principal",
        ),
    ],
    ids=["unmapped", "ambiguous"],
)
def test_role_map_rejects(roles: RoleMap, reason: str) -> None:
    with pytest.raises(InvalidCredentialsError) as caught:
        roles.resolve(ROLE_ARN)
    assert caught.value.reason == reason
