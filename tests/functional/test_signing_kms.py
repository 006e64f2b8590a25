"""Functional tests of regauth.signing against moto's KMS, checked with independent verifiers.

`cryptography`'s RFC 5280 path validator and PyJWT check what a registry checks: the
x5c leaf chains to the root in the bundle, the dates hold, and the ES256 signature is
the raw `r || s` form.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import boto3
import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, SignatureAlgorithmOID
from moto import mock_aws

from regauth.config import Settings
from regauth.errors import SigningUnavailableError
from regauth.signing import SigningKeyManager, certificate_bundle_pem, der_to_raw_ecdsa

REGION = "us-east-1"
ISSUER = "regauth"
SERVICE = "registry.example.test"
# X.509 times have whole seconds, so the clock starts on a whole second.
START = float(int(time.time()))


class FakeClock:
    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class MemoryRootStore:
    def __init__(self) -> None:
        self.roots: dict[str, bytes] = {}

    def get_root_certificate(self, key_id: str) -> bytes | None:
        return self.roots.get(key_id)

    def put_root_certificate(self, key_id: str, pem: bytes) -> bytes:
        return self.roots.setdefault(key_id, pem)


@pytest.fixture
def kms() -> Iterator[Any]:
    with mock_aws():
        yield boto3.client("kms", region_name=REGION)


@pytest.fixture
def key_id(kms: Any) -> str:
    return create_key(kms)


@pytest.fixture
def settings(key_id: str) -> Settings:
    return Settings(table_name="regauth", key_id=key_id, services=(SERVICE,), issuer=ISSUER)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store() -> MemoryRootStore:
    return MemoryRootStore()


@pytest.fixture
def manager(
    kms: Any, key_id: str, store: MemoryRootStore, settings: Settings, clock: FakeClock
) -> SigningKeyManager:
    return SigningKeyManager(kms, key_id, store, settings, clock)


@pytest.fixture
def cold_instance(
    kms: Any, key_id: str, store: MemoryRootStore, settings: Settings, clock: FakeClock
) -> SigningKeyManager:
    """Return a second instance that shares the root store with `manager`."""
    return SigningKeyManager(kms, key_id, store, settings, clock)


def create_key(kms: Any, key_spec: str = "ECC_NIST_P256") -> str:
    metadata = kms.create_key(KeySpec=key_spec, KeyUsage="SIGN_VERIFY")["KeyMetadata"]
    return str(metadata["KeyId"])


def record_kms_calls(kms: Any) -> list[str]:
    """Return a list that collects the name of every KMS operation the client sends."""
    calls: list[str] = []

    def record(model: Any, **_: Any) -> None:
        calls.append(model.name)

    kms.meta.events.register("before-call.kms.*", record)
    return calls


def reject_kms_calls(kms: Any, code: str) -> None:
    """Make every KMS call fail with error `code`, as KMS does for a disabled or missing key."""

    def reject(**_: Any) -> tuple[Any, dict[str, Any]]:
        response = type("Response", (), {"status_code": 400, "headers": {}})()
        parsed = {"Error": {"Code": code, "Message": "rejected by the test"}}
        return response, parsed

    kms.meta.events.register("before-call.kms.*", reject)


def kms_public_key(kms: Any, key_id: str) -> ec.EllipticCurvePublicKey:
    der = kms.get_public_key(KeyId=key_id)["PublicKey"]
    public_key = serialization.load_der_public_key(der)
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    return public_key


def validate_chain(
    leaf: x509.Certificate, root: x509.Certificate, at: datetime
) -> list[x509.Certificate]:
    """Validate `leaf` to `root` by RFC 5280 path validation, as the registry does.

    The CA rules are the Web PKI ones. The leaf rules permit everything, because the
    Web PKI leaf rules require a subjectAltName that a JWS signer does not need and
    that distribution does not check.
    """
    policies = {
        "ca_policy": verification.ExtensionPolicy.webpki_defaults_ca(),
        "ee_policy": verification.ExtensionPolicy.permit_all(),
    }
    verifier = (
        verification.PolicyBuilder()
        .store(verification.Store([root]))
        .time(at)
        .extension_policies(**policies)
        .build_client_verifier()
    )
    return verifier.verify(leaf, []).chain


def tbs_names(certificate: x509.Certificate) -> tuple[bytes, bytes]:
    """Return the raw DER issuer and subject Names from a certificate's TBSCertificate.

    Go looks up an issuer by comparing these exact bytes, so the test reads them from
    the encoding rather than comparing parsed Name objects.
    """
    tbs = certificate.tbs_certificate_bytes
    _, offset, _ = read_der_header(tbs, 0)
    fields: list[bytes] = []
    while offset < len(tbs):
        tag, _, end = read_der_header(tbs, offset)
        # Skip the explicit [0] version, then collect serialNumber, signature, issuer,
        # validity and subject in that order (RFC 5280 section 4.1).
        if tag != 0xA0:
            fields.append(tbs[offset:end])
        offset = end
    return fields[2], fields[4]


def read_der_header(data: bytes, offset: int) -> tuple[int, int, int]:
    """Return the tag, content start and end of the DER element at `offset`."""
    tag = data[offset]
    length = data[offset + 1]
    start = offset + 2
    if length >= 0x80:
        count = length & 0x7F
        length = int.from_bytes(data[start : start + count], "big")
        start += count
    return tag, start, start + length


def test_root_is_self_signed(manager: SigningKeyManager) -> None:
    root = manager.root_certificate()

    root.verify_directly_issued_by(root)
    assert root.issuer == root.subject


def test_root_subject_names(manager: SigningKeyManager) -> None:
    subject = manager.root_certificate().subject

    assert subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "regauth root CA"
    assert subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "regauth"


def test_root_contains_kms_public_key(manager: SigningKeyManager, kms: Any, key_id: str) -> None:
    root = manager.root_certificate()

    assert root.public_key() == kms_public_key(kms, key_id)


def test_root_signature_algorithm(manager: SigningKeyManager) -> None:
    root = manager.root_certificate()

    assert root.signature_algorithm_oid == SignatureAlgorithmOID.ECDSA_WITH_SHA256


def test_root_basic_constraints(manager: SigningKeyManager) -> None:
    extension = manager.root_certificate().extensions.get_extension_for_class(x509.BasicConstraints)

    assert extension.critical
    assert extension.value.ca
    assert extension.value.path_length == 0


def test_root_key_usage(manager: SigningKeyManager) -> None:
    extension = manager.root_certificate().extensions.get_extension_for_class(x509.KeyUsage)

    assert extension.critical
    assert extension.value.key_cert_sign
    assert extension.value.crl_sign
    assert not extension.value.digital_signature


def test_root_subject_key_identifier(manager: SigningKeyManager) -> None:
    root = manager.root_certificate()
    extension = root.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)

    assert extension.value == x509.SubjectKeyIdentifier.from_public_key(root.public_key())


def test_root_validity(manager: SigningKeyManager, settings: Settings) -> None:
    root = manager.root_certificate()

    assert root.not_valid_before_utc.timestamp() == START - 300
    assert root.not_valid_after_utc.timestamp() == START + settings.root_cert_days * 86400


def test_root_serials_differ(kms: Any, key_id: str, settings: Settings, clock: FakeClock) -> None:
    first = SigningKeyManager(kms, key_id, MemoryRootStore(), settings, clock)
    second = SigningKeyManager(kms, key_id, MemoryRootStore(), settings, clock)

    assert first.root_certificate().serial_number != second.root_certificate().serial_number


def test_leaf_chains_to_root(manager: SigningKeyManager) -> None:
    leaf = manager.current().certificate
    root = manager.root_certificate()

    chain = validate_chain(leaf, root, datetime.fromtimestamp(START, tz=UTC))

    assert chain == [leaf, root]


def test_leaf_issuer_bytes_match_root(manager: SigningKeyManager) -> None:
    leaf_issuer, _ = tbs_names(manager.current().certificate)
    _, root_subject = tbs_names(manager.root_certificate())

    assert leaf_issuer == root_subject


def test_leaf_basic_constraints(manager: SigningKeyManager) -> None:
    extension = manager.current().certificate.extensions.get_extension_for_class(
        x509.BasicConstraints
    )

    assert extension.critical
    assert not extension.value.ca


def test_leaf_key_usage(manager: SigningKeyManager) -> None:
    extension = manager.current().certificate.extensions.get_extension_for_class(x509.KeyUsage)

    assert extension.critical
    assert extension.value.digital_signature
    assert not extension.value.key_cert_sign
    assert not extension.value.crl_sign


def test_leaf_authority_key_identifier(manager: SigningKeyManager) -> None:
    leaf = manager.current().certificate
    root_identifier = manager.root_certificate().extensions.get_extension_for_class(
        x509.SubjectKeyIdentifier
    )

    extension = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)

    assert extension.value.key_identifier == root_identifier.value.digest


def test_leaf_subject_key_identifier(manager: SigningKeyManager) -> None:
    signing_key = manager.current()

    extension = signing_key.certificate.extensions.get_extension_for_class(
        x509.SubjectKeyIdentifier
    )

    expected = x509.SubjectKeyIdentifier.from_public_key(signing_key.private_key.public_key())
    assert extension.value == expected


def test_leaf_has_no_extended_key_usage(manager: SigningKeyManager) -> None:
    extensions = manager.current().certificate.extensions

    with pytest.raises(x509.ExtensionNotFound):
        extensions.get_extension_for_oid(ExtendedKeyUsageOID.SERVER_AUTH)
    with pytest.raises(x509.ExtensionNotFound):
        extensions.get_extension_for_class(x509.ExtendedKeyUsage)


def test_leaf_validity(manager: SigningKeyManager, settings: Settings) -> None:
    signing_key = manager.current()
    leaf = signing_key.certificate

    assert leaf.not_valid_before_utc.timestamp() == START - 300
    assert leaf.not_valid_after_utc.timestamp() == START + settings.cert_ttl
    assert signing_key.not_after == START + settings.cert_ttl


@pytest.mark.parametrize(
    "offset",
    [-299, 0, 3599],
    ids=["skewed-verifier", "issue-time", "last-second"],
)
def test_leaf_valid_within_window(manager: SigningKeyManager, offset: int) -> None:
    at = datetime.fromtimestamp(START + offset, tz=UTC)

    chain = validate_chain(manager.current().certificate, manager.root_certificate(), at)

    assert len(chain) == 2


@pytest.mark.parametrize("offset", [-301, 3601], ids=["before-start", "after-end"])
def test_leaf_invalid_outside_window(manager: SigningKeyManager, offset: int) -> None:
    at = datetime.fromtimestamp(START + offset, tz=UTC)

    with pytest.raises(verification.VerificationError):
        validate_chain(manager.current().certificate, manager.root_certificate(), at)


def test_jwt_verifies_through_x5c(manager: SigningKeyManager) -> None:
    signing_key = manager.current()
    claims = {"iss": ISSUER, "aud": SERVICE, "sub": "alice", "exp": int(START) + 300}
    token = jwt.encode(
        claims, signing_key.private_key, algorithm="ES256", headers={"x5c": signing_key.x5c}
    )
    bundle = x509.load_pem_x509_certificates(certificate_bundle_pem([manager.root_certificate()]))

    # Verify as a registry does: decode the leaf from x5c, chain it to the bundle, and
    # only then trust its key for the JWS signature.
    header = jwt.get_unverified_header(token)
    leaf = x509.load_der_x509_certificate(base64.b64decode(header["x5c"][0], validate=True))
    validate_chain(leaf, bundle[0], datetime.fromtimestamp(START, tz=UTC))
    decoded = jwt.decode(
        token,
        leaf.public_key(),  # type: ignore[arg-type]
        algorithms=["ES256"],
        audience=SERVICE,
        issuer=ISSUER,
        options={"verify_exp": False},
    )

    assert decoded == claims


def test_jwt_x5c_contains_leaf_only(manager: SigningKeyManager) -> None:
    signing_key = manager.current()
    token = jwt.encode(
        {"sub": "alice"},
        signing_key.private_key,
        algorithm="ES256",
        headers={"x5c": signing_key.x5c},
    )

    x5c = jwt.get_unverified_header(token)["x5c"]

    leaf_der = signing_key.certificate.public_bytes(serialization.Encoding.DER)
    assert x5c == [base64.standard_b64encode(leaf_der).decode("ascii")]


def test_jwt_signature_is_raw(manager: SigningKeyManager) -> None:
    signing_key = manager.current()
    token = jwt.encode(
        {"sub": "alice"},
        signing_key.private_key,
        algorithm="ES256",
        headers={"x5c": signing_key.x5c},
    )

    signature = base64.urlsafe_b64decode(token.split(".")[2] + "==")

    assert len(signature) == 64


def test_jwt_signed_directly_by_kms(kms: Any, key_id: str) -> None:
    header = {"alg": "ES256", "typ": "JWT"}
    claims = {"iss": ISSUER, "aud": SERVICE, "sub": "alice"}
    signing_input = ".".join(
        base64.urlsafe_b64encode(json.dumps(part).encode()).rstrip(b"=").decode("ascii")
        for part in (header, claims)
    )
    response = kms.sign(
        KeyId=key_id,
        Message=signing_input.encode("ascii"),
        MessageType="RAW",
        SigningAlgorithm="ECDSA_SHA_256",
    )

    raw = der_to_raw_ecdsa(response["Signature"])
    token = signing_input + "." + base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")

    decoded = jwt.decode(token, kms_public_key(kms, key_id), algorithms=["ES256"], audience=SERVICE)
    assert decoded == claims


def test_current_cold_costs_three_calls(manager: SigningKeyManager, kms: Any) -> None:
    calls = record_kms_calls(kms)

    manager.current()

    assert calls == ["GetPublicKey", "Sign", "Sign"]


def test_current_warm_costs_nothing(manager: SigningKeyManager, kms: Any) -> None:
    first = manager.current()
    calls = record_kms_calls(kms)

    second = manager.current()

    assert second is first
    assert calls == []


def test_current_stored_root_costs_one_sign(
    manager: SigningKeyManager, kms: Any, cold_instance: SigningKeyManager
) -> None:
    manager.current()
    calls = record_kms_calls(kms)

    cold_instance.current()

    assert calls == ["Sign"]


def test_current_renewal_costs_one_sign(
    manager: SigningKeyManager, kms: Any, clock: FakeClock, settings: Settings
) -> None:
    first = manager.current()
    clock.now = first.not_after - settings.cert_renew_margin + 1
    calls = record_kms_calls(kms)

    renewed = manager.current()

    assert calls == ["Sign"]
    assert renewed.certificate.serial_number != first.certificate.serial_number


def test_root_pem_costs_no_call_when_stored(
    manager: SigningKeyManager,
    kms: Any,
    key_id: str,
    store: MemoryRootStore,
    cold_instance: SigningKeyManager,
) -> None:
    manager.current()
    calls = record_kms_calls(kms)

    pem = cold_instance.root_certificate_pem()

    assert pem == store.roots[key_id]
    assert calls == []


def test_root_race_stored_wins(kms: Any, key_id: str, settings: Settings, clock: FakeClock) -> None:
    winner_pem = SigningKeyManager(
        kms, key_id, MemoryRootStore(), settings, clock
    ).root_certificate_pem()

    class RacingStore(MemoryRootStore):
        """Report no root on read, as if the winner wrote between the read and the put."""

        def get_root_certificate(self, key_id: str) -> bytes | None:
            return None

    racing_store = RacingStore()
    racing_store.roots[key_id] = winner_pem
    loser = SigningKeyManager(kms, key_id, racing_store, settings, clock)

    leaf = loser.current().certificate

    assert loser.root_certificate_pem() == winner_pem
    assert validate_chain(
        leaf, x509.load_pem_x509_certificate(winner_pem), datetime.fromtimestamp(START, tz=UTC)
    ) == [leaf, x509.load_pem_x509_certificate(winner_pem)]


def test_current_rejects_root_of_other_key(
    kms: Any, key_id: str, store: MemoryRootStore, settings: Settings, clock: FakeClock
) -> None:
    other_key_id = create_key(kms)
    other_root = SigningKeyManager(kms, other_key_id, MemoryRootStore(), settings, clock)
    store.roots[key_id] = other_root.root_certificate_pem()

    with pytest.raises(SigningUnavailableError, match="another KMS key"):
        SigningKeyManager(kms, key_id, store, settings, clock).current()


@pytest.mark.parametrize("key_spec", ["ECC_NIST_P384", "RSA_2048"], ids=["p384", "rsa"])
def test_current_rejects_key_spec(
    kms: Any, key_spec: str, settings: Settings, clock: FakeClock
) -> None:
    key_id = create_key(kms, key_spec)
    manager = SigningKeyManager(kms, key_id, MemoryRootStore(), settings, clock)

    with pytest.raises(SigningUnavailableError, match=f"KeySpec {key_spec}"):
        manager.current()


def test_current_unknown_key(kms: Any, settings: Settings, clock: FakeClock) -> None:
    manager = SigningKeyManager(kms, "alias/missing", MemoryRootStore(), settings, clock)

    with pytest.raises(SigningUnavailableError) as caught:
        manager.current()

    assert str(caught.value) == "KMS GetPublicKey failed with NotFoundException"


def test_current_disabled_key(
    manager: SigningKeyManager, kms: Any, key_id: str, cold_instance: SigningKeyManager
) -> None:
    manager.root_certificate()
    kms.disable_key(KeyId=key_id)
    # KMS rejects Sign on a disabled key with DisabledException. moto 5.2 signs with a
    # disabled key anyway, so the test returns the error that KMS sends.
    reject_kms_calls(kms, "DisabledException")

    with pytest.raises(SigningUnavailableError) as caught:
        cold_instance.current()

    assert str(caught.value) == "KMS Sign failed with DisabledException"
