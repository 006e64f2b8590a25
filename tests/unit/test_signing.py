"""Unit tests of regauth.signing: DER helpers and leaf renewal, with a local fake of KMS."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from regauth.config import Settings
from regauth.errors import SigningUnavailableError
from regauth.signing import (
    ECDSA_WITH_SHA256_ALGORITHM,
    SigningKeyManager,
    assemble_certificate_der,
    certificate_bundle_pem,
    der_tlv,
    der_to_raw_ecdsa,
)

KEY_ID = "alias/regauth-test"
START = 1_750_000_000.0

# RFC 6979 appendix A.2.5: P-256 public key and the SHA-256 signature of "sample".
# Both r and s have the high bit set, so their DER INTEGERs carry a leading zero byte.
RFC6979_PUBLIC_X = 0x60FED4BA255A9D31C961EB74C6356D68C049B8923B61FA6CE669622E60F29FB6
RFC6979_PUBLIC_Y = 0x7903FE1008B8BC99A41AE9E95628BC64F2F1B20C2D7E9F5177A3C294D4462299
RFC6979_R = "efd48b2aacb6a8fd1140dd9cd45e81d69d2c877b56aaf991c34d0ea84eaf3716"
RFC6979_S = "f7cb1c942d657c41d436c7a1b6e29f65f3e900dbb9aff4064dc4ab2f843acda8"
RFC6979_DER = bytes.fromhex(f"3046022100{RFC6979_R}022100{RFC6979_S}")


class FakeKms:
    """A local P-256 key behind the two KMS client methods that regauth.signing calls."""

    def __init__(self, key_spec: str = "ECC_NIST_P256", key_usage: str = "SIGN_VERIFY") -> None:
        self.private_key = ec.generate_private_key(ec.SECP256R1())
        self.key_spec = key_spec
        self.key_usage = key_usage
        self.calls: list[str] = []
        self.sign_requests: list[dict[str, object]] = []
        self.error: Exception | None = None

    def get_public_key(self, **params: object) -> dict[str, object]:
        self.calls.append("GetPublicKey")
        if self.error is not None:
            raise self.error
        public_der = self.private_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return {
            "KeyId": params["KeyId"],
            "PublicKey": public_der,
            "KeySpec": self.key_spec,
            "KeyUsage": self.key_usage,
            "SigningAlgorithms": ["ECDSA_SHA_256"],
        }

    def sign(self, **params: object) -> dict[str, object]:
        self.calls.append("Sign")
        self.sign_requests.append(params)
        if self.error is not None:
            raise self.error
        message = params["Message"]
        assert isinstance(message, bytes)
        signature = self.private_key.sign(message, ec.ECDSA(hashes.SHA256()))
        return {"KeyId": params["KeyId"], "Signature": signature}


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
def settings() -> Settings:
    return Settings(table_name="regauth", key_id=KEY_ID, services=("registry",), issuer="regauth")


@pytest.fixture
def kms() -> FakeKms:
    return FakeKms()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store() -> MemoryRootStore:
    return MemoryRootStore()


def make_manager(
    kms: FakeKms, store: MemoryRootStore, settings: Settings, clock: FakeClock
) -> SigningKeyManager:
    return SigningKeyManager(kms, KEY_ID, store, settings, clock)  # type: ignore[arg-type]


@pytest.fixture
def manager(
    kms: FakeKms, store: MemoryRootStore, settings: Settings, clock: FakeClock
) -> SigningKeyManager:
    return make_manager(kms, store, settings, clock)


def self_signed_certificate(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "unit test")])
    now = datetime.fromtimestamp(START, tz=UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )


@pytest.mark.parametrize(
    ("length", "header"),
    [
        (0, "0400"),
        (127, "047f"),
        (128, "048180"),
        (255, "0481ff"),
        (256, "04820100"),
        (65535, "0482ffff"),
        (65536, "0483010000"),
    ],
    ids=[
        "empty",
        "short-max",
        "long-one-byte",
        "one-byte-max",
        "two-bytes",
        "two-bytes-max",
        "three-bytes",
    ],
)
def test_der_tlv_length_forms(length: int, header: str) -> None:
    content = b"\x00" * length

    encoded = der_tlv(0x04, content)

    assert encoded == bytes.fromhex(header) + content


def test_algorithm_identifier_matches_cryptography() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    certificate_der = self_signed_certificate(key).public_bytes(serialization.Encoding.DER)

    # The outer signatureAlgorithm follows the TBSCertificate, and both are the same DER.
    assert certificate_der.count(ECDSA_WITH_SHA256_ALGORITHM) == 2


def test_assemble_certificate_equals_cryptography_der() -> None:
    certificate = self_signed_certificate(ec.generate_private_key(ec.SECP256R1()))

    assembled = assemble_certificate_der(certificate.tbs_certificate_bytes, certificate.signature)

    assert assembled == certificate.public_bytes(serialization.Encoding.DER)


def test_assemble_certificate_parses_and_verifies() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    tbs = self_signed_certificate(key).tbs_certificate_bytes
    signature = key.sign(tbs, ec.ECDSA(hashes.SHA256()))

    certificate = x509.load_der_x509_certificate(assemble_certificate_der(tbs, signature))

    certificate.verify_directly_issued_by(certificate)
    assert certificate.signature == signature


def test_der_to_raw_ecdsa_rfc6979_vector() -> None:
    public_key = ec.EllipticCurvePublicNumbers(
        RFC6979_PUBLIC_X, RFC6979_PUBLIC_Y, ec.SECP256R1()
    ).public_key()
    # The vector must be a valid signature, or the expected value below proves nothing.
    public_key.verify(RFC6979_DER, b"sample", ec.ECDSA(hashes.SHA256()))

    raw = der_to_raw_ecdsa(RFC6979_DER)

    assert raw == bytes.fromhex(RFC6979_R + RFC6979_S)


@pytest.mark.parametrize(
    ("der", "raw"),
    [
        ("3006020101020102", "00" * 31 + "01" + "00" * 31 + "02"),
        (
            "3025" + "020101" + "0220" + "7f" + "ff" * 31,
            "00" * 31 + "01" + "7f" + "ff" * 31,
        ),
        (
            "3024" + "021f" + "01" * 31 + "020101",
            "00" + "01" * 31 + "00" * 31 + "01",
        ),
        (
            "3026" + "022100" + "80" + "00" * 31 + "020101",
            "80" + "00" * 31 + "00" * 31 + "01",
        ),
    ],
    ids=["small-r-and-s", "s-without-high-bit", "r-with-leading-zero-byte", "r-with-high-bit"],
)
def test_der_to_raw_ecdsa_pads_values(der: str, raw: str) -> None:
    converted = der_to_raw_ecdsa(bytes.fromhex(der))

    assert converted == bytes.fromhex(raw)


def test_der_to_raw_ecdsa_length() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    der = key.sign(b"message", ec.ECDSA(hashes.SHA256()))

    assert len(der_to_raw_ecdsa(der)) == 64


def test_der_to_raw_ecdsa_p384_size() -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    der = key.sign(b"message", ec.ECDSA(hashes.SHA384()))

    assert len(der_to_raw_ecdsa(der, size=48)) == 96


@pytest.mark.parametrize(
    "der",
    [
        "3026" + "0221" + "01" * 33 + "020101",
        "3026" + "020101" + "0221" + "01" * 33,
    ],
    ids=["r-too-long", "s-too-long"],
)
def test_der_to_raw_ecdsa_rejects_long(der: str) -> None:
    with pytest.raises(ValueError, match="does not fit in 32 bytes"):
        der_to_raw_ecdsa(bytes.fromhex(der))


@pytest.mark.parametrize("der", ["3006020100020101", "3006020101020100"], ids=["r-zero", "s-zero"])
def test_der_to_raw_ecdsa_rejects_zero(der: str) -> None:
    with pytest.raises(ValueError, match="is not a positive integer"):
        der_to_raw_ecdsa(bytes.fromhex(der))


@pytest.mark.parametrize(
    "der",
    [
        "30060201ff020101",
        "3026022100" + "01" * 32 + "020101",
        "3006020101",
        b"not der".hex(),
    ],
    ids=["r-negative", "r-non-minimal", "truncated", "not-der"],
)
def test_der_to_raw_ecdsa_rejects_malformed(der: str) -> None:
    with pytest.raises(ValueError, match="error parsing asn1 value"):
        der_to_raw_ecdsa(bytes.fromhex(der))


def test_der_to_raw_ecdsa_p384_at_p256_size() -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    der = key.sign(b"message", ec.ECDSA(hashes.SHA384()))

    # A P-384 signature has 48-byte values, which do not fit in 32 bytes almost surely:
    # both would have to be below 2**256, a chance of about 2**-256.
    with pytest.raises(ValueError, match="does not fit in 32 bytes"):
        der_to_raw_ecdsa(der)


def test_der_to_raw_ecdsa_rejects_zero_size() -> None:
    with pytest.raises(ValueError, match="size"):
        der_to_raw_ecdsa(bytes.fromhex("3006020101020101"), size=0)


def test_certificate_bundle_pem_concatenates() -> None:
    first = self_signed_certificate(ec.generate_private_key(ec.SECP256R1()))
    second = self_signed_certificate(ec.generate_private_key(ec.SECP256R1()))

    bundle = certificate_bundle_pem([first, second])

    assert x509.load_pem_x509_certificates(bundle) == [first, second]


def test_manager_init_is_lazy(
    kms: FakeKms, store: MemoryRootStore, manager: SigningKeyManager
) -> None:
    assert kms.calls == []
    assert store.roots == {}


def test_current_first_call_builds_root(kms: FakeKms, manager: SigningKeyManager) -> None:
    manager.current()

    assert kms.calls == ["GetPublicKey", "Sign", "Sign"]


def test_current_signs_raw_ecdsa_sha256(kms: FakeKms, manager: SigningKeyManager) -> None:
    manager.current()

    for request in kms.sign_requests:
        assert request["KeyId"] == KEY_ID
        assert request["MessageType"] == "RAW"
        assert request["SigningAlgorithm"] == "ECDSA_SHA_256"


def test_current_stores_root(
    kms: FakeKms, store: MemoryRootStore, manager: SigningKeyManager
) -> None:
    manager.current()

    assert store.roots[KEY_ID] == manager.root_certificate_pem()


def test_current_warm_call_reuses_key(kms: FakeKms, manager: SigningKeyManager) -> None:
    first = manager.current()
    kms.calls.clear()

    second = manager.current()

    assert second is first
    assert kms.calls == []


def test_current_not_after_is_cert_ttl(manager: SigningKeyManager, settings: Settings) -> None:
    signing_key = manager.current()

    assert signing_key.not_after == int(START) + settings.cert_ttl


def test_current_not_after_matches_leaf(manager: SigningKeyManager) -> None:
    signing_key = manager.current()

    assert signing_key.not_after == signing_key.certificate.not_valid_after_utc.timestamp()


def test_current_key_matches_leaf(manager: SigningKeyManager) -> None:
    signing_key = manager.current()

    assert signing_key.certificate.public_key() == signing_key.private_key.public_key()


def test_current_keeps_leaf_at_margin(
    kms: FakeKms, clock: FakeClock, manager: SigningKeyManager, settings: Settings
) -> None:
    first = manager.current()
    clock.now = first.not_after - settings.cert_renew_margin
    kms.calls.clear()

    assert manager.current() is first
    assert kms.calls == []


def test_current_renews_inside_margin(
    kms: FakeKms, clock: FakeClock, manager: SigningKeyManager, settings: Settings
) -> None:
    first = manager.current()
    clock.now = first.not_after - settings.cert_renew_margin + 1
    kms.calls.clear()

    renewed = manager.current()

    assert kms.calls == ["Sign"]
    assert renewed.not_after == int(clock.now) + settings.cert_ttl
    assert renewed.private_key is not first.private_key


def test_current_never_within_margin(
    kms: FakeKms, clock: FakeClock, manager: SigningKeyManager, settings: Settings
) -> None:
    # Walk three leaf lifetimes in uneven steps and check every key handed out.
    end = START + 3 * settings.cert_ttl
    while clock.now < end:
        signing_key = manager.current()
        assert signing_key.not_after - clock.now >= settings.cert_renew_margin
        clock.now += 97.5

    # A leaf serves about cert_ttl - margin seconds (3180 by default), so 10800 seconds
    # need four leaves, and the root needs one more Sign.
    assert kms.calls.count("Sign") == 1 + 4


def test_current_cold_instance_reuses_stored_root(
    kms: FakeKms, store: MemoryRootStore, settings: Settings, clock: FakeClock
) -> None:
    make_manager(kms, store, settings, clock).current()
    kms.calls.clear()

    signing_key = make_manager(kms, store, settings, clock).current()

    assert kms.calls == ["Sign"]
    assert (
        signing_key.certificate.issuer
        == x509.load_pem_x509_certificate(store.roots[KEY_ID]).subject
    )


def test_root_race_adopts_stored_root(kms: FakeKms, settings: Settings, clock: FakeClock) -> None:
    winner_store = MemoryRootStore()
    winner_pem = make_manager(kms, winner_store, settings, clock).root_certificate_pem()

    class RacingStore(MemoryRootStore):
        """Report no root on read, as if the winner wrote just after the read."""

        def get_root_certificate(self, key_id: str) -> bytes | None:
            return None

    racing_store = RacingStore()
    racing_store.roots[KEY_ID] = winner_pem
    loser = make_manager(kms, racing_store, settings, clock)

    assert loser.root_certificate_pem() == winner_pem
    loser.current().certificate.verify_directly_issued_by(loser.root_certificate())


def test_current_rejects_root_of_other_key(
    store: MemoryRootStore, settings: Settings, clock: FakeClock
) -> None:
    make_manager(FakeKms(), store, settings, clock).root_certificate()

    with pytest.raises(SigningUnavailableError, match="another KMS key"):
        make_manager(FakeKms(), store, settings, clock).current()


def test_current_rejects_invalid_stored_root(
    kms: FakeKms, store: MemoryRootStore, manager: SigningKeyManager
) -> None:
    store.roots[KEY_ID] = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"

    with pytest.raises(SigningUnavailableError, match="not a valid PEM certificate"):
        manager.current()


def test_root_rejects_wrong_public_key(
    kms: FakeKms, store: MemoryRootStore, manager: SigningKeyManager
) -> None:
    # KMS signs with a different key from the one GetPublicKey returns.
    signer = FakeKms()
    kms.sign = signer.sign  # type: ignore[method-assign]

    with pytest.raises(SigningUnavailableError, match="does not verify with the KMS public key"):
        manager.current()
    assert store.roots == {}


@pytest.mark.parametrize(
    ("key_spec", "key_usage"),
    [
        ("ECC_NIST_P384", "SIGN_VERIFY"),
        ("ECC_SECG_P256K1", "SIGN_VERIFY"),
        ("RSA_2048", "SIGN_VERIFY"),
        ("ECC_NIST_P256", "KEY_AGREEMENT"),
    ],
    ids=["p384", "secp256k1", "rsa", "key-agreement"],
)
def test_root_rejects_key_spec(
    key_spec: str, key_usage: str, store: MemoryRootStore, settings: Settings, clock: FakeClock
) -> None:
    kms = FakeKms(key_spec=key_spec, key_usage=key_usage)

    with pytest.raises(SigningUnavailableError, match="ECC_NIST_P256"):
        make_manager(kms, store, settings, clock).current()
    assert kms.calls == ["GetPublicKey"]


def test_root_rejects_non_p256_public_key(
    store: MemoryRootStore, settings: Settings, clock: FakeClock
) -> None:
    kms = FakeKms()
    # The response claims ECC_NIST_P256 but carries a P-384 key.
    kms.private_key = ec.generate_private_key(ec.SECP384R1())

    with pytest.raises(SigningUnavailableError, match="not a P-256 key"):
        make_manager(kms, store, settings, clock).current()


def test_client_error_names_operation(kms: FakeKms, manager: SigningKeyManager) -> None:
    error = {"Error": {"Code": "DisabledException", "Message": "key is disabled"}}
    kms.error = ClientError(error, "GetPublicKey")  # type: ignore[arg-type]

    with pytest.raises(SigningUnavailableError) as caught:
        manager.current()

    assert str(caught.value) == "KMS GetPublicKey failed with DisabledException"
    assert caught.value.__cause__ is kms.error


def test_botocore_error_names_operation(
    kms: FakeKms,
    store: MemoryRootStore,
    manager: SigningKeyManager,
    settings: Settings,
    clock: FakeClock,
) -> None:
    make_manager(kms, store, settings, clock).root_certificate()
    kms.error = EndpointConnectionError(endpoint_url="https://kms.invalid")

    with pytest.raises(SigningUnavailableError) as caught:
        manager.current()

    assert str(caught.value) == "KMS Sign failed with EndpointConnectionError"
    assert caught.value.__cause__ is kms.error


def test_current_retries_after_failure(kms: FakeKms, manager: SigningKeyManager) -> None:
    error = {"Error": {"Code": "ThrottlingException", "Message": "rate exceeded"}}
    kms.error = ClientError(error, "Sign")  # type: ignore[arg-type]
    with pytest.raises(SigningUnavailableError):
        manager.current()
    kms.error = None

    signing_key = manager.current()

    assert signing_key.not_after > START


def test_leaf_ends_with_root(kms: FakeKms, store: MemoryRootStore, clock: FakeClock) -> None:
    # A one-day root: after most of the day, the leaf must stop at the root's end.
    settings = Settings(
        table_name="regauth",
        key_id=KEY_ID,
        services=("registry",),
        issuer="regauth",
        root_cert_days=1,
    )
    manager = make_manager(kms, store, settings, clock)
    root_end = manager.root_certificate().not_valid_after_utc.timestamp()
    clock.now = root_end - settings.cert_ttl / 2

    signing_key = manager.current()

    assert signing_key.not_after == root_end


def test_current_rejects_expiring_root(
    kms: FakeKms, store: MemoryRootStore, clock: FakeClock, settings: Settings
) -> None:
    manager = make_manager(kms, store, settings, clock)
    root_end = manager.root_certificate().not_valid_after_utc.timestamp()
    clock.now = root_end - settings.cert_renew_margin + 1
    kms.calls.clear()

    with pytest.raises(SigningUnavailableError, match="root certificate expires"):
        manager.current()
    assert kms.calls == []
