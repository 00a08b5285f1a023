"""The GCE vTPM attestation-key certificate: chain to a pinned Google root, and the instance it names.

Why signatures and validity are checked here link by link instead of by an X.509 path validator: the
AK certificate has an empty subject and a *critical* subjectAltName (TCG TPM manufacturer/model/
version), which strict validators refuse as an unhandled critical extension. We verify each link
ourselves (RSA PKCS#1 v1.5 or ECDSA over SHA-256/384/512, validity at the caller's ``now``,
basicConstraints CA and keyCertSign on issuers) and refuse any other critical extension we do not
handle.

Trust anchors are only the two pinned Google roots. Google's published intermediates are shipped
too (``roots/``), because GCE evidence usually carries only the AK certificate (the real COS 85
vectors have no ``intermediate_certs``) and fetching the issuer from pki.goog would be I/O this pure
core must not do. Intermediates found in the evidence are used as well; that is safe because any
intermediate, pinned or not, is accepted only if its signature chains to a pinned root.

Instance-information extension 1.3.6.1.4.1.11129.2.1.21, layout read from the real AK certificate::

    SEQUENCE {
      zone            UTF8String        -- "us-central1-a"
      projectNumber   INTEGER           -- 117478743145
      projectId       UTF8String        -- "google.com:wuale-gcp-testing"
      instanceId      INTEGER           -- 6797026933021542085
      instanceName    UTF8String        -- "cos-test"
      securityProperties [0] EXPLICIT SEQUENCE {   -- optional (added later by Google)
        securityVersion              [0] EXPLICIT INTEGER OPTIONAL  -- 0
        isProduction                 [1] EXPLICIT BOOLEAN OPTIONAL  -- TRUE
        tpmDataAlwaysEncrypted       [2] EXPLICIT BOOLEAN OPTIONAL  -- FALSE
        suspendResumeAlwaysDisabled  [3] EXPLICIT BOOLEAN OPTIONAL  -- FALSE
        vmtdAlwaysDisabled           [4] EXPLICIT BOOLEAN OPTIONAL  -- FALSE
        alwaysInYarn                 [5] EXPLICIT BOOLEAN OPTIONAL  -- FALSE
      } OPTIONAL
    }

The names of [2]..[5] are Google's; the bytes only show that they are explicitly tagged booleans.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from importlib import resources

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtensionOID

from shared.errors import ParseError, VerificationError

PREFIX = "parse.gcp"

CHECK_CHAIN = "gcp.ak_cert_chain"
CHECK_EXPIRED = "gcp.ak_cert_expired"
CHECK_KEY_MISMATCH = "gcp.ak_cert_key_mismatch"
CHECK_UNSUPPORTED_EXTENSION = "gcp.ak_cert_unsupported_extension"

INSTANCE_INFO_OID = x509.ObjectIdentifier("1.3.6.1.4.1.11129.2.1.21")

# File name -> SHA-256 of the certificate's DER, so a damaged or swapped roots/ file cannot load silently.
PINNED_ROOTS: dict[str, str] = {
    # CN=tpm_ek_v1_cloud_host_root-signer-0-2018-04-06..., 2018-04-06 .. 2118-04-06
    "tpm_ek_root_1.pem": "9bd5285f8fb18502a7947e621ffd470266f49fcd3b73e19a190f690ad32a7caf",
    # CN=EK/AK CA Root, OU=Google Cloud, 2022-07-08 .. 2122-07-08
    "gcp_ek_ak_ca_root.pem": "594759594b9b61524f6c8ef668f7177f7b9066bc0674f2f49fe9e052be78beb2",
}
PINNED_INTERMEDIATES: dict[str, str] = {
    # CN=tpm_ek_v1_cloud_host-signer-0-2020-10-22..., issuer of the COS 85 vectors' AK certificate
    "tpm_ek_intermediate_2.pem": "5d8dbcf8c8053dd8ffad711b6219355032b7122c34cac0f90ccb49def69ec504",
    # CN=tpm_ek_v1_cloud_host-signer-0-2021-10-12...
    "tpm_ek_intermediate_3.pem": "7132b6ea71101f6c51bb58f98c3798c19b65be510eca0344318900510b593178",
    # CN=EK/AK CA Intermediate, OU=Google Cloud
    "gcp_ek_ak_ca_intermediate_v3.pem": "c84de8116dfaf5a908f21e810487791f5437e206d00ad8025050cca6bd2ff627",
}

_MAX_CHAIN_DEPTH = 5  # leaf + intermediates + root; Google's chains are three long
_MAX_EVIDENCE_INTERMEDIATES = 8  # bounds the work an attacker-supplied list can cause
_ALLOWED_HASHES = (hashes.SHA256, hashes.SHA384, hashes.SHA512)
_MIN_RSA_BITS = 2048

# Critical extensions whose meaning we enforce (or, for the SAN, knowingly accept: it only names the
# TPM's manufacturer/model and constrains nothing).
_HANDLED_CRITICAL = frozenset(
    {
        ExtensionOID.BASIC_CONSTRAINTS,
        ExtensionOID.KEY_USAGE,
        ExtensionOID.SUBJECT_ALTERNATIVE_NAME,
        INSTANCE_INFO_OID,
    }
)


def _parse_error(name: str, detail: str) -> ParseError:
    return ParseError(name, detail, prefix=PREFIX)


class _QuietLongNames(warnings.catch_warnings):
    """Google's CNs exceed X.520's 64-character bound; cryptography warns each time it builds them."""

    def __enter__(self) -> None:
        super().__enter__()
        warnings.filterwarnings("ignore", message="Attribute's length", category=UserWarning)


def load_der_certificate(der: bytes, name: str) -> x509.Certificate:
    """A DER certificate, or ``ParseError`` naming ``name``."""
    if not isinstance(der, bytes | bytearray | memoryview) or not der:
        raise _parse_error(name, "missing certificate")
    try:
        with _QuietLongNames():
            cert = x509.load_der_x509_certificate(bytes(der))
            # Touch the lazily decoded parts now so malformed extensions fail here, not later.
            _ = cert.extensions, cert.subject, cert.issuer, cert.not_valid_after_utc
    except (
        ValueError,
        TypeError,  # e.g. a Name attribute whose string type does not fit its OID
        UnsupportedAlgorithm,
        x509.InvalidVersion,
        x509.DuplicateExtension,
        x509.UnsupportedGeneralNameType,
    ) as exc:
        raise _parse_error(name, f"not a DER X.509 certificate: {exc}") from None
    return cert


def _load_packaged(files: dict[str, str]) -> tuple[x509.Certificate, ...]:
    out = []
    for name, fingerprint in files.items():
        pem = resources.files(__package__).joinpath(f"roots/{name}").read_bytes()
        cert = x509.load_pem_x509_certificate(pem)
        der = cert.public_bytes(serialization.Encoding.DER)
        if hashlib.sha256(der).hexdigest() != fingerprint:
            raise RuntimeError(f"roots/{name} is not the pinned Google certificate")
        out.append(cert)
    return tuple(out)


@cache
def pinned_roots() -> tuple[x509.Certificate, ...]:
    """Google's AK/EK roots shipped with the package (the only trust anchors)."""
    return _load_packaged(PINNED_ROOTS)


@cache
def pinned_intermediates() -> tuple[x509.Certificate, ...]:
    """Google's published intermediates shipped with the package (candidates, not anchors)."""
    return _load_packaged(PINNED_INTERMEDIATES)


# ---------------------------------------------------------------------------------------------
# Instance information (a minimal strict DER reader for the few types it uses)

_TAG_BOOLEAN = 0x01
_TAG_INTEGER = 0x02
_TAG_UTF8 = 0x0C
_TAG_SEQUENCE = 0x30
_CONTEXT_CONSTRUCTED = 0xA0
_INT64_MAX = (1 << 63) - 1


class _Der:
    """Sequential reader over DER TLVs with single-byte tags and minimal definite lengths."""

    def __init__(self, data: bytes, name: str) -> None:
        self.data = data
        self.offset = 0
        self.name = name

    def at_end(self) -> bool:
        return self.offset >= len(self.data)

    def peek_tag(self) -> int | None:
        return None if self.at_end() else self.data[self.offset]

    def read(self, tag: int, name: str) -> bytes:
        where = f"{self.name}.{name}"
        data, pos = self.data, self.offset
        if len(data) - pos < 2:
            raise _parse_error(where, "truncated DER")
        if data[pos] != tag:
            raise _parse_error(where, f"expected tag {tag:#04x}, got {data[pos]:#04x}")
        first = data[pos + 1]
        pos += 2
        if first < 0x80:
            length = first
        else:
            count = first & 0x7F
            if count == 0 or count > 2 or len(data) - pos < count:
                raise _parse_error(where, "bad DER length")
            length = int.from_bytes(data[pos : pos + count], "big")
            if data[pos] == 0 or length < 0x80:
                raise _parse_error(where, "non-minimal DER length")
            pos += count
        if length > len(data) - pos:
            raise _parse_error(where, f"DER length {length} exceeds the {len(data) - pos} bytes left")
        self.offset = pos + length
        return data[pos : pos + length]

    def finish(self) -> None:
        if not self.at_end():
            raise _parse_error(self.name, f"{len(self.data) - self.offset} trailing bytes")

    def utf8(self, name: str) -> str:
        raw = self.read(_TAG_UTF8, name)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _parse_error(f"{self.name}.{name}", "invalid UTF-8") from None

    def integer(self, name: str, *, non_negative: bool = True) -> int:
        raw = self.read(_TAG_INTEGER, name)
        where = f"{self.name}.{name}"
        if not raw:
            raise _parse_error(where, "empty INTEGER")
        if len(raw) > 1 and ((raw[0] == 0x00 and raw[1] < 0x80) or (raw[0] == 0xFF and raw[1] >= 0x80)):
            raise _parse_error(where, "non-minimal INTEGER")
        value = int.from_bytes(raw, "big", signed=True)
        # Google encodes these as int64; anything wider or negative is not a GCE identifier.
        if non_negative and not 0 <= value <= _INT64_MAX:
            raise _parse_error(where, f"{value} is outside 0..2^63-1")
        return value

    def boolean(self, name: str) -> bool:
        raw = self.read(_TAG_BOOLEAN, name)
        if raw not in (b"\x00", b"\xff"):
            raise _parse_error(f"{self.name}.{name}", "BOOLEAN must be a single 0x00 or 0xFF byte")
        return raw == b"\xff"


@dataclass(frozen=True)
class SecurityProperties:
    """GCE's statement about the vTPM's host; absent tags take Google's defaults (0 / false)."""

    security_version: int = 0
    is_production: bool = False
    tpm_data_always_encrypted: bool = False
    suspend_resume_always_disabled: bool = False
    vmtd_always_disabled: bool = False
    always_in_yarn: bool = False


_SECURITY_BOOLEANS = {
    1: "is_production",
    2: "tpm_data_always_encrypted",
    3: "suspend_resume_always_disabled",
    4: "vmtd_always_disabled",
    5: "always_in_yarn",
}


@dataclass(frozen=True)
class InstanceInfo:
    zone: str
    project_number: int
    project_id: str
    instance_id: int
    instance_name: str
    security: SecurityProperties


def _parse_security(reader: _Der) -> SecurityProperties:
    values: dict[str, int | bool] = {}
    last_tag = -1
    while not reader.at_end():
        tag = reader.peek_tag()
        assert tag is not None
        number = tag - _CONTEXT_CONSTRUCTED
        if not 0 <= number <= 30 or number <= last_tag:
            raise _parse_error(f"{reader.name}.tag", f"unexpected or out-of-order tag {tag:#04x}")
        last_tag = number
        inner = _Der(reader.read(tag, f"[{number}]"), f"{reader.name}[{number}]")
        if number == 0:
            values["security_version"] = inner.integer("value")
        elif number in _SECURITY_BOOLEANS:
            values[_SECURITY_BOOLEANS[number]] = inner.boolean("value")
        else:
            # A property newer than this reader: its tag was well formed, its value is not claimed.
            continue
        inner.finish()
    return SecurityProperties(**values)  # type: ignore[arg-type]


def parse_instance_info(value: bytes) -> InstanceInfo:
    """Decode the extnValue of 1.3.6.1.4.1.11129.2.1.21."""
    outer = _Der(value, "ak_cert.instance_info")
    body = _Der(outer.read(_TAG_SEQUENCE, "sequence"), "ak_cert.instance_info")
    outer.finish()
    zone = body.utf8("zone")
    project_number = body.integer("project_number")
    project_id = body.utf8("project_id")
    instance_id = body.integer("instance_id")
    instance_name = body.utf8("instance_name")
    security = SecurityProperties()
    if not body.at_end():
        wrapper = _Der(body.read(_CONTEXT_CONSTRUCTED, "security_properties"), "ak_cert.instance_info")
        props = _Der(wrapper.read(_TAG_SEQUENCE, "security_properties"), "ak_cert.instance_info.security")
        wrapper.finish()
        security = _parse_security(props)
    body.finish()
    return InstanceInfo(zone, project_number, project_id, instance_id, instance_name, security)


# ---------------------------------------------------------------------------------------------
# Chain


def _subject(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or "<empty subject>"


@dataclass(frozen=True)
class AkCertificate:
    """A verified AK certificate: ``chain`` runs from the AK certificate to the pinned root."""

    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    instance: InstanceInfo | None
    subjects: tuple[str, ...]  # RFC 4514, leaf first; computed once, Google's long CNs make cryptography warn

    def public_key(self) -> CertificatePublicKeyTypes:
        return self.certificate.public_key()

    def claims(self) -> dict[str, object]:
        """Stable claim names; the instance facts only when the certificate carries them."""
        leaf = self.certificate
        out: dict[str, object] = {
            "gcp.ak_cert.serial": format(leaf.serial_number, "x"),
            "gcp.ak_cert.issuer": self.subjects[1],
            "gcp.ak_cert.root": self.subjects[-1],
            "gcp.ak_cert.not_after": leaf.not_valid_after_utc.isoformat(),
        }
        info = self.instance
        if info is not None:
            sec = info.security
            out.update(
                {
                    "gcp.zone": info.zone,
                    "gcp.project_id": info.project_id,
                    "gcp.project_number": info.project_number,
                    # A string: real instance ids exceed 2**53, beyond what JSON consumers hold exactly.
                    "gcp.instance_id": str(info.instance_id),
                    "gcp.instance_name": info.instance_name,
                    "gcp.security.version": sec.security_version,
                    "gcp.security.is_production": sec.is_production,
                    "gcp.security.tpm_data_always_encrypted": sec.tpm_data_always_encrypted,
                    "gcp.security.suspend_resume_always_disabled": sec.suspend_resume_always_disabled,
                    "gcp.security.vmtd_always_disabled": sec.vmtd_always_disabled,
                    "gcp.security.always_in_yarn": sec.always_in_yarn,
                }
            )
        return out


def utc(now: datetime) -> datetime:
    if not isinstance(now, datetime):
        raise TypeError(f"now must be a datetime, got {type(now).__name__}")
    return now if now.tzinfo is not None else now.replace(tzinfo=UTC)


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Whether ``issuer``'s key made ``cert``'s signature with an algorithm we accept."""
    if cert.issuer != issuer.subject:
        return False
    try:
        algorithm = cert.signature_hash_algorithm
        params = cert.signature_algorithm_parameters
    except UnsupportedAlgorithm:
        return False
    if not isinstance(algorithm, _ALLOWED_HASHES):
        return False
    try:
        key = issuer.public_key()
    except (ValueError, UnsupportedAlgorithm):  # an evidence-supplied issuer with an exotic key
        return False
    try:
        if isinstance(key, rsa.RSAPublicKey):
            if not isinstance(params, padding.PKCS1v15) or key.key_size < _MIN_RSA_BITS:
                return False
            key.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), algorithm)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            if not isinstance(params, ec.ECDSA):
                return False
            key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(algorithm))
        else:
            return False
    except InvalidSignature:
        return False
    return True


def _check_extensions(cert: x509.Certificate, role: str) -> None:
    for ext in cert.extensions:
        if ext.critical and ext.oid not in _HANDLED_CRITICAL:
            raise VerificationError(
                CHECK_UNSUPPORTED_EXTENSION,
                f"{role} has unhandled critical extension {ext.oid.dotted_string}",
            )


def _check_issuer_role(issuer: x509.Certificate, below: int) -> None:
    """``issuer`` may sign certificates and, with ``below`` CA certificates under it, its path length holds."""
    name = _subject(issuer)
    try:
        bc = issuer.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        raise VerificationError(CHECK_CHAIN, f"issuer {name} has no basicConstraints") from None
    if not bc.ca:
        raise VerificationError(CHECK_CHAIN, f"issuer {name} is not a CA")
    if bc.path_length is not None and below > bc.path_length:
        raise VerificationError(CHECK_CHAIN, f"issuer {name} path length {bc.path_length} exceeded")
    try:
        ku = issuer.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return
    if not ku.key_cert_sign:
        raise VerificationError(CHECK_CHAIN, f"issuer {name} lacks keyCertSign")


def _check_leaf_role(cert: x509.Certificate) -> None:
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        if bc.ca:
            raise VerificationError(CHECK_CHAIN, "the AK certificate is a CA certificate")
    except x509.ExtensionNotFound:
        pass
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return
    if not ku.digital_signature:
        raise VerificationError(CHECK_CHAIN, "the AK certificate lacks digitalSignature")


def _check_validity(chain: Sequence[x509.Certificate], now: datetime) -> None:
    for i, cert in enumerate(chain):
        role = "AK certificate" if i == 0 else f"issuer {_subject(cert)}"
        if now < cert.not_valid_before_utc:
            raise VerificationError(
                CHECK_EXPIRED, f"{role} is not valid before {cert.not_valid_before_utc.isoformat()}"
            )
        if now > cert.not_valid_after_utc:
            raise VerificationError(
                CHECK_EXPIRED, f"{role} expired at {cert.not_valid_after_utc.isoformat()}"
            )


def _build_chain(
    leaf: x509.Certificate, candidates: Sequence[x509.Certificate], roots: Sequence[x509.Certificate]
) -> tuple[x509.Certificate, ...]:
    chain = [leaf]
    current = leaf
    for _ in range(_MAX_CHAIN_DEPTH):
        for root in roots:
            if _signed_by(current, root):
                chain.append(root)
                return tuple(chain)
        issuer = next((c for c in candidates if c not in chain and _signed_by(current, c)), None)
        if issuer is None:
            break
        chain.append(issuer)
        current = issuer
    raise VerificationError(
        CHECK_CHAIN, f"no signature path from {_subject(current)} to a pinned Google root"
    )


def _instance_info(leaf: x509.Certificate) -> InstanceInfo | None:
    try:
        ext = leaf.extensions.get_extension_for_oid(INSTANCE_INFO_OID)
    except x509.ExtensionNotFound:
        return None
    if not isinstance(ext.value, x509.UnrecognizedExtension):
        raise _parse_error("ak_cert.instance_info", "unexpected extension type")
    return parse_instance_info(ext.value.value)


def verify_ak_cert(
    ak_cert_der: bytes,
    intermediates_der: Sequence[bytes],
    now: datetime,
    *,
    roots: Sequence[x509.Certificate] | None = None,
    known_intermediates: Sequence[x509.Certificate] | None = None,
) -> AkCertificate:
    """Chain the AK certificate to a pinned Google root (``roots`` overrides the pinned set, e.g. in tests;
    ``known_intermediates`` likewise the shipped intermediates) and decode its instance information."""
    with _QuietLongNames():
        return _verify_ak_cert(ak_cert_der, intermediates_der, now, roots, known_intermediates)


def _verify_ak_cert(
    ak_cert_der: bytes,
    intermediates_der: Sequence[bytes],
    now: datetime,
    roots: Sequence[x509.Certificate] | None,
    known_intermediates: Sequence[x509.Certificate] | None,
) -> AkCertificate:
    at = utc(now)
    leaf = load_der_certificate(ak_cert_der, "ak_cert")
    if len(intermediates_der) > _MAX_EVIDENCE_INTERMEDIATES:
        raise _parse_error(
            "intermediate_certs",
            f"{len(intermediates_der)} certificates, at most {_MAX_EVIDENCE_INTERMEDIATES}",
        )
    evidence = [
        load_der_certificate(der, f"intermediate_certs[{i}]") for i, der in enumerate(intermediates_der)
    ]
    anchors = tuple(pinned_roots() if roots is None else roots)
    candidates = [
        *evidence,
        *(pinned_intermediates() if known_intermediates is None else known_intermediates),
    ]

    chain = _build_chain(leaf, candidates, anchors)
    _check_leaf_role(leaf)
    for below, issuer in enumerate(chain[1:]):
        _check_issuer_role(issuer, below)
    for i, cert in enumerate(chain):
        _check_extensions(cert, "the AK certificate" if i == 0 else f"issuer {_subject(cert)}")
    _check_validity(chain, at)
    # Decoded only once Google's signature covers it: before that its contents are anyone's.
    return AkCertificate(
        certificate=leaf,
        chain=chain,
        instance=_instance_info(leaf),
        subjects=tuple(c.subject.rfc4514_string() for c in chain),
    )


def check_ak_matches(cert: AkCertificate, ak_public_key: CertificatePublicKeyTypes) -> None:
    """The certificate certifies the evidence's AK: same key type and public numbers."""
    try:
        cert_key = cert.public_key()
    except (ValueError, UnsupportedAlgorithm):
        raise VerificationError(
            CHECK_KEY_MISMATCH, "the AK certificate's key type is not supported"
        ) from None
    if isinstance(cert_key, rsa.RSAPublicKey) and isinstance(ak_public_key, rsa.RSAPublicKey):
        if cert_key.public_numbers() == ak_public_key.public_numbers():
            return
    elif isinstance(cert_key, ec.EllipticCurvePublicKey) and isinstance(
        ak_public_key, ec.EllipticCurvePublicKey
    ):
        a, b = cert_key.public_numbers(), ak_public_key.public_numbers()
        if (a.curve.name, a.x, a.y) == (b.curve.name, b.x, b.y):
            return
    raise VerificationError(
        CHECK_KEY_MISMATCH, "the AK certificate's public key is not the evidence's ak_pub"
    )
