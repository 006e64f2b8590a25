"""The KMS signing edge: a KMS-held root CA, short-lived leaf certificates, JWS key material.

The registry verifies a token through its `x5c` header: the leaf certificate must chain to
a certificate in the registry's `rootcertbundle`. The root CA key is an ECC_NIST_P256 KMS
key whose private half never leaves KMS. `cryptography` cannot sign with a remote key, so
each certificate is built in three steps:

1. `CertificateBuilder` signs the certificate with a throwaway P-256 key. Only its
   TBSCertificate is kept, because that already carries the ecdsa-with-SHA256
   AlgorithmIdentifier that a KMS ECDSA_SHA_256 signature needs.
2. KMS signs the TBSCertificate bytes and returns a DER ECDSA signature.
3. `assemble_certificate_der` wraps both into the Certificate SEQUENCE of RFC 5280
   section 4.1, and the result is parsed and verified before anyone uses it.

Each function instance keeps its own in-memory P-256 key and a leaf certificate for it,
so KMS signs once per instance per leaf lifetime, never once per token.
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Final, Protocol

from botocore.exceptions import BotoCoreError, ClientError
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from regauth.errors import SigningUnavailableError

if TYPE_CHECKING:
    from mypy_boto3_kms import KMSClient

    from regauth.config import Settings

ROOT_COMMON_NAME = "regauth root CA"
LEAF_COMMON_NAME = "regauth token signer"
ORGANIZATION = "regauth"

KMS_KEY_SPEC = "ECC_NIST_P256"
KMS_KEY_USAGE = "SIGN_VERIFY"
KMS_SIGNING_ALGORITHM: Final = "ECDSA_SHA_256"

# Both certificates start five minutes in the past, so a verifier whose clock runs behind
# regauth's still accepts a certificate issued a moment ago.
CLOCK_SKEW = timedelta(minutes=5)

# DER tags (X.690 section 8) used to assemble a Certificate.
DER_SEQUENCE = 0x30
DER_BIT_STRING = 0x03

# AlgorithmIdentifier for ecdsa-with-SHA256 (OID 1.2.840.10045.4.3.2). RFC 5758 section
# 3.2 requires the parameters field to be absent, so the SEQUENCE contains only the OID.
ECDSA_WITH_SHA256_ALGORITHM = bytes.fromhex("300a06082a8648ce3d040302")

# A function that signs a message with ECDSA P-256 over SHA-256 and returns the DER signature.
type SignFunction = Callable[[bytes], bytes]


class RootCertificateStore(Protocol):
    """Durable storage for the root certificate of each KMS key, as PEM.

    The root is stored rather than rebuilt on every cold start, so a cold start makes
    one KMS call (Sign, for its leaf) instead of three, and all instances share one root.
    """

    def get_root_certificate(self, key_id: str) -> bytes | None:
        """Return the stored PEM root certificate for `key_id`, or None if absent."""
        ...

    def put_root_certificate(self, key_id: str, pem: bytes) -> bytes:
        """Store `pem` only if no root exists for `key_id`, and return the PEM stored.

        When another instance stored a root first, that root is returned, so every
        instance signs leaves under the same root certificate.
        """
        ...


@dataclass(frozen=True, slots=True)
class SigningKey:
    """An in-memory ES256 key with its leaf certificate, ready for JWS headers.

    `x5c` is the JWS `x5c` header value (RFC 7515 section 4.1.6): the standard base64
    DER of the leaf only, because registries already have the root in their `rootcertbundle`.
    `not_after` is the leaf's expiry as Unix seconds.
    """

    private_key: ec.EllipticCurvePrivateKey = field(repr=False)
    certificate: x509.Certificate
    x5c: tuple[str, ...]
    not_after: int


def der_tlv(tag: int, content: bytes) -> bytes:
    """Encode one DER element: the tag, the definite length (X.690 section 8.1.3), `content`."""
    length = len(content)
    if length < 0x80:
        return bytes([tag, length]) + content

    length_bytes = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(length_bytes)]) + length_bytes + content


def assemble_certificate_der(tbs_certificate: bytes, signature: bytes) -> bytes:
    """Assemble a Certificate (RFC 5280 section 4.1) from a TBSCertificate and its signature.

    `signature` is the DER ECDSA signature over `tbs_certificate` with SHA-256. The
    TBSCertificate must name ecdsa-with-SHA256 as its signature algorithm, as one built
    by `CertificateBuilder` with a P-256 key and SHA-256 does.
    """
    # The signature is a BIT STRING whose first content octet counts the unused bits
    # of the last octet, which is always zero for a whole-octet signature.
    signature_bits = der_tlv(DER_BIT_STRING, b"\x00" + signature)
    return der_tlv(DER_SEQUENCE, tbs_certificate + ECDSA_WITH_SHA256_ALGORITHM + signature_bits)


def der_to_raw_ecdsa(signature: bytes, size: int = 32) -> bytes:
    """Convert a DER ECDSA signature (RFC 3279 section 2.2.3) to the JWS form `r || s`.

    JWS (RFC 7518 section 3.4) writes r and s as big-endian integers of `size` bytes
    each, 32 for ES256, with no sign byte. Raises ValueError when `signature` is not a
    DER ECDSA signature or r or s is not a positive integer of at most `size` bytes.
    """
    if size < 1:
        raise ValueError(f"size must be at least 1 byte, got {size}")

    r, s = decode_dss_signature(signature)
    for name, value in (("r", r), ("s", s)):
        if value < 1:
            raise ValueError(f"ECDSA signature value {name} is not a positive integer")
        if value.bit_length() > size * 8:
            raise ValueError(
                f"ECDSA signature value {name} does not fit in {size} bytes, so the signature "
                "was made with a larger curve than the one expected"
            )

    return r.to_bytes(size, "big") + s.to_bytes(size, "big")


def certificate_bundle_pem(certificates: Iterable[x509.Certificate]) -> bytes:
    """Concatenate certificates as PEM, the format of a registry's `rootcertbundle`."""
    return b"".join(
        certificate.public_bytes(serialization.Encoding.PEM) for certificate in certificates
    )


def x5c_value(certificate: x509.Certificate) -> str:
    """Encode a certificate for a JWS `x5c` header: standard base64, not base64url, of DER."""
    der = certificate.public_bytes(serialization.Encoding.DER)
    return base64.standard_b64encode(der).decode("ascii")


def _sign_with(builder: x509.CertificateBuilder, sign: SignFunction) -> x509.Certificate:
    """Sign the certificate in `builder` with `sign` and parse the assembled result."""
    throwaway_key = ec.generate_private_key(ec.SECP256R1())
    tbs_certificate = builder.sign(throwaway_key, hashes.SHA256()).tbs_certificate_bytes

    der = assemble_certificate_der(tbs_certificate, sign(tbs_certificate))
    try:
        return x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise SigningUnavailableError(
            "the certificate assembled from the KMS signature could not be parsed"
        ) from exc


def build_root_certificate(
    public_key: ec.EllipticCurvePublicKey,
    sign: SignFunction,
    *,
    now: datetime,
    days: int,
) -> x509.Certificate:
    """Build the self-signed root CA certificate for the key behind `sign`.

    `public_key` must be the public half of the key that `sign` uses. The root is
    verified against itself before it is returned, so a mismatch raises
    SigningUnavailableError.
    """
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, ROOT_COMMON_NAME),
        ]
    )
    key_usage = x509.KeyUsage(
        digital_signature=False,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + timedelta(days=days))
        # path_length=0 lets the root sign leaves only, never another CA.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(key_usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )

    root = _sign_with(builder, sign)
    try:
        root.verify_directly_issued_by(root)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise SigningUnavailableError(
            "the root certificate signed by KMS does not verify with the KMS public key"
        ) from exc
    return root


def build_leaf_certificate(
    root: x509.Certificate,
    public_key: ec.EllipticCurvePublicKey,
    sign: SignFunction,
    *,
    now: datetime,
    ttl: timedelta,
) -> x509.Certificate:
    """Build a leaf certificate for `public_key`, issued by `root` and signed by `sign`.

    The leaf ends at `now + ttl` or at the root's expiry, whichever comes first, because
    a verifier rejects a chain once any certificate in it has expired. It has no
    ExtendedKeyUsage extension: Go's `x509.Verify`, which distribution uses for `x5c`,
    checks for ServerAuth when the caller asks for no usage, and accepts a leaf without
    the extension. The leaf is verified against `root` before it is returned, which
    catches a stored root that belongs to another KMS key.
    """
    key_usage = x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
                    x509.NameAttribute(NameOID.COMMON_NAME, LEAF_COMMON_NAME),
                ]
            )
        )
        # Go looks up the issuer by the exact DER bytes of this name, so it is copied
        # from the root instead of being built again.
        .issuer_name(root.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(min(now + ttl, root.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(key_usage, critical=True)
        .add_extension(_authority_key_identifier(root), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )

    leaf = _sign_with(builder, sign)
    try:
        leaf.verify_directly_issued_by(root)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise SigningUnavailableError(
            "the leaf certificate signed by KMS does not verify against the stored root "
            "certificate, most likely because the stored root was made for another KMS key. "
            "Delete the stored root so that a new one is built, and update the registries' "
            "rootcertbundle"
        ) from exc
    return leaf


def _authority_key_identifier(root: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    """Point at the root's SubjectKeyIdentifier, or compute one if the root lacks it."""
    try:
        subject_key_identifier = root.extensions.get_extension_for_class(
            x509.SubjectKeyIdentifier
        ).value
    except x509.ExtensionNotFound:
        root_public_key = root.public_key()
        if not isinstance(root_public_key, ec.EllipticCurvePublicKey):
            raise SigningUnavailableError(
                "the stored root certificate does not contain an EC public key"
            ) from None
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(root_public_key)

    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(subject_key_identifier)


class KmsRootKey:
    """The KMS root CA key: its public key and RAW ECDSA_SHA_256 signing.

    Every botocore error becomes SigningUnavailableError, with a message that names the
    KMS operation and error code but no key material.
    """

    def __init__(self, kms_client: KMSClient, key_id: str) -> None:
        self._kms = kms_client
        self._key_id = key_id

    def public_key(self) -> ec.EllipticCurvePublicKey:
        """Fetch the public key with GetPublicKey and check that it is a P-256 signing key."""
        with _translate_kms_errors("GetPublicKey"):
            response = self._kms.get_public_key(KeyId=self._key_id)

        # KMS returns the same value in KeySpec and in the deprecated CustomerMasterKeySpec.
        # moto 5.2 returns only the deprecated field, so both are read.
        key_spec = response.get("KeySpec") or response.get("CustomerMasterKeySpec")
        key_usage = response.get("KeyUsage")
        if key_spec != KMS_KEY_SPEC or key_usage != KMS_KEY_USAGE:
            raise SigningUnavailableError(
                f"the KMS key has KeySpec {key_spec} and KeyUsage {key_usage}, but regauth "
                f"needs a {KMS_KEY_SPEC} key with KeyUsage {KMS_KEY_USAGE}"
            )

        public_key = serialization.load_der_public_key(response["PublicKey"])
        if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(
            public_key.curve, ec.SECP256R1
        ):
            raise SigningUnavailableError("the KMS GetPublicKey response is not a P-256 key")
        return public_key

    def sign(self, message: bytes) -> bytes:
        """Sign `message` with Sign (RAW, ECDSA_SHA_256) and return the DER signature.

        With MessageType RAW, KMS hashes the message itself and accepts at most 4096
        bytes, which is well above the size of a TBSCertificate.
        """
        with _translate_kms_errors("Sign"):
            response = self._kms.sign(
                KeyId=self._key_id,
                Message=message,
                MessageType="RAW",
                SigningAlgorithm=KMS_SIGNING_ALGORITHM,
            )
        return response["Signature"]


@contextmanager
def _translate_kms_errors(operation: str) -> Iterator[None]:
    try:
        yield
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "Unknown")
        raise SigningUnavailableError(f"KMS {operation} failed with {code}") from exc
    except BotoCoreError as exc:
        raise SigningUnavailableError(f"KMS {operation} failed with {type(exc).__name__}") from exc


class SigningKeyManager:
    """Provide the current signing key of this function instance, renewing it when due.

    Nothing runs in `__init__`. The first `current()` loads the root certificate from
    `store`, or builds it with KMS and stores it, then signs a leaf for a new in-memory
    key. Later calls make no AWS call until fewer than `settings.cert_renew_margin`
    seconds of the leaf remain, so a token never outlives the certificate that signed
    it. Thread-safe, so one manager can serve a threaded local server.
    `on_certificate_issued` is called with each new leaf, for the audit trail.
    """

    def __init__(
        self,
        kms_client: KMSClient,
        key_id: str,
        store: RootCertificateStore,
        settings: Settings,
        clock: Callable[[], float] = time.time,
        *,
        on_certificate_issued: Callable[[x509.Certificate], None] | None = None,
    ) -> None:
        self._root_key = KmsRootKey(kms_client, key_id)
        self._on_certificate_issued = on_certificate_issued
        self._key_id = key_id
        self._store = store
        self._settings = settings
        self._clock = clock
        self._lock = threading.Lock()
        self._root: x509.Certificate | None = None
        self._current: SigningKey | None = None

    def current(self) -> SigningKey:
        """Return the signing key, signing a new leaf with KMS when the old one is due."""
        with self._lock:
            now = self._clock()
            signing_key = self._current
            if (
                signing_key is None
                or signing_key.not_after - now < self._settings.cert_renew_margin
            ):
                signing_key = self._issue_signing_key(now)
                self._current = signing_key
            return signing_key

    def root_certificate(self) -> x509.Certificate:
        """Return the root certificate, loading it from the store or building it first."""
        with self._lock:
            return self._load_root()

    def root_certificate_pem(self) -> bytes:
        """Return the root certificate as PEM, for a registry's `rootcertbundle`."""
        return self.root_certificate().public_bytes(serialization.Encoding.PEM)

    def _load_root(self) -> x509.Certificate:
        if self._root is not None:
            return self._root

        pem = self._store.get_root_certificate(self._key_id)
        if pem is None:
            root = build_root_certificate(
                self._root_key.public_key(),
                self._root_key.sign,
                now=_to_datetime(self._clock()),
                days=self._settings.root_cert_days,
            )
            # Another instance may have stored its root between the read and this write.
            # The store keeps the first one, and every instance adopts it.
            pem = self._store.put_root_certificate(
                self._key_id, root.public_bytes(serialization.Encoding.PEM)
            )

        try:
            self._root = x509.load_pem_x509_certificate(pem)
        except ValueError as exc:
            raise SigningUnavailableError(
                "the stored root certificate is not a valid PEM certificate. Delete it so "
                "that a new root is built"
            ) from exc
        return self._root

    def _issue_signing_key(self, now: float) -> SigningKey:
        root = self._load_root()
        margin = self._settings.cert_renew_margin
        root_expiry = root.not_valid_after_utc.timestamp()
        # A leaf cannot outlive the root, so near the root's expiry every call would sign
        # a new leaf whose life is shorter than the renewal margin.
        if root_expiry - now < margin:
            raise SigningUnavailableError(
                f"the root certificate expires at {root.not_valid_after_utc.isoformat()}, "
                f"less than {margin} seconds from now. Replace it in the store and in the "
                "registries' rootcertbundle"
            )

        private_key = ec.generate_private_key(ec.SECP256R1())
        leaf = build_leaf_certificate(
            root,
            private_key.public_key(),
            self._root_key.sign,
            now=_to_datetime(now),
            ttl=timedelta(seconds=self._settings.cert_ttl),
        )
        if self._on_certificate_issued is not None:
            self._on_certificate_issued(leaf)
        return SigningKey(
            private_key=private_key,
            certificate=leaf,
            x5c=(x5c_value(leaf),),
            not_after=int(leaf.not_valid_after_utc.timestamp()),
        )


def _to_datetime(timestamp: float) -> datetime:
    # X.509 times have whole seconds, so fractions are dropped here rather than by the
    # encoder, and `not_after` equals the Unix time the caller computed.
    return datetime.fromtimestamp(int(timestamp), tz=UTC)
