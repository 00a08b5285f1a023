"""A simulated Intel for TDX (and the SGX collateral beside it), for demos, benchmarks and tests.

Everything is in Intel's real formats so that the real DCAP verification path runs unchanged:

* a P-256 PKI named like Intel's -- "Intel SGX Root CA" (self-signed), "Intel SGX PCK Platform CA",
  "Intel SGX TCB Signing" -- with the extensions Intel puts in them (key usage, basic constraints,
  key identifiers, CRL distribution points), and PCK leaves carrying the SGX extension
  (OID 1.2.840.113741.1.13.1: PPID, TCB component SVNs, PCESVN, CPUSVN, PCE-ID, FMSPC, SGX type,
  platform instance and configuration);
* the Root CA CRL and the PCK Platform CA CRL (cRLNumber, authority key identifier, reasons);
* PCS v4 bodies: TDX TCB Info v3 (tdxModule, tdxModuleIdentities, tcbLevels with SGX and TDX
  components), SGX TCB Info v3, TD QE / SGX QE Identity v2, each signed by the TCB Signing key
  over the exact bytes of the inner object, signature as raw r || s in hex;
* ``SimulatedTdxPlatform``: one machine (PCK key, attestation key, TD QE) producing v4 (TD 1.0) or
  v5 (TD 1.5) quotes with type-6 certification data wrapping a type-5 PEM PCK chain.

Only the trust anchor differs: a generated root that a verifier must be told to trust explicitly.
Signatures are deterministic (RFC 6979), so re-rendering a document with the same inputs gives the
same bytes -- a local PCS can render per request and still serve stable, cacheable bodies.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from shared.platforms.tdx import pcs
from shared.platforms.tdx.abi import (
    ATT_KEY_ECDSA_P256,
    INTEL_QE_VENDOR_ID,
    TD_ATTR_DEBUG,
    TD_ATTR_SEPT_VE_DISABLE,
    TEE_TYPE_TDX,
    CertificationDataType,
)
from shared.platforms.tdx.collateral import Collateral, load_collateral
from shared.platforms.tdx.eventlog import EV_NO_ACTION, SHA384_SIZE, TPM_ALG_SHA384
from shared.platforms.tdx.pck import SGX_EXTENSION_OID

ROOT_CA_CN = "Intel SGX Root CA"
PCK_PLATFORM_CA_CN = "Intel SGX PCK Platform CA"
TCB_SIGNING_CN = "Intel SGX TCB Signing"
PCK_CN = "Intel SGX PCK Certificate"

# A made-up FMSPC, so simulated collateral can never be mistaken for a real platform's.
DEFAULT_FMSPC = bytes.fromhex("30806f040000")
DEFAULT_PCE_ID = b"\x00\x00"
SGX_TYPE_STANDARD = 0
SGX_TYPE_SCALABLE = 1

# Intel's production quoting enclaves sign with these MRSIGNERs; the QE Identity must name them.
TD_QE_MRSIGNER = bytes.fromhex("dc9e2a7c6f948f17474e34a7fc43ed030f7c1563f1babddf6340c82e0e54a8c5")
SGX_QE_MRSIGNER = bytes.fromhex("8c4f5775d796503e96137f77c68a829a0056ac8ded70140b081b094490c57bff")
TD_QE_PROD_ID = 2
SGX_QE_PROD_ID = 1
# QE ATTRIBUTES as real QEs report them (INIT | MODE64BIT | PROVISIONKEY, XFRM x87|SSE|AVX...);
# the identity masks out DEBUG-insensitive bits the way PCS does.
QE_ATTRIBUTES = bytes.fromhex("1500000000000000e700000000000000")
QE_IDENTITY_ATTRIBUTES = bytes.fromhex("11000000000000000000000000000000")
QE_IDENTITY_ATTRIBUTES_MASK = bytes.fromhex("fbffffffffffffff0000000000000000")
QE_MR_ENCLAVE = hashlib.sha256(b"remits simulated TD quoting enclave").digest()

# The TDX module the simulated platforms run: Intel modules have a zero MRSIGNERSEAM.
SIM_MR_SEAM = hashlib.sha384(b"remits simulated TDX module 1.5").digest()
DEFAULT_XFAM = bytes.fromhex("e702060000000000")
QE_AUTH_DATA = bytes(range(32))  # what Intel's QE puts there; only its hash binding matters

_EV_IPL = 0x0000000D
_CERT_DATA_HEADER = struct.Struct("<HI")
_COMPONENTS = 16
_COORD = 32


# -- TCB descriptions --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PlatformTcb:
    """What a platform's TCB is made of: the PCK's 16 SGX component SVNs and PCESVN (fixed when
    the PCK is issued) and the TDX module's TEE_TCB_SVN (byte 0 module SVN, byte 1 module major
    version, byte 2 late microcode...), reported in every quote."""

    sgx_components: tuple[int, ...]
    pce_svn: int
    tee_tcb_svn: bytes

    def __post_init__(self) -> None:
        if len(self.sgx_components) != _COMPONENTS or not all(0 <= c <= 255 for c in self.sgx_components):
            raise ValueError("sgx_components must be 16 values in 0..255")
        if len(self.tee_tcb_svn) != _COMPONENTS:
            raise ValueError("tee_tcb_svn must be 16 bytes")
        if not 0 <= self.pce_svn <= 0xFFFF:
            raise ValueError("pce_svn must fit a u16")

    @property
    def cpu_svn(self) -> bytes:
        # On the platforms Intel ships, CPUSVN bytes are the SGX component SVNs in order.
        return bytes(self.sgx_components)


LATEST_TCB = PlatformTcb(
    sgx_components=(7, 7, 2, 2, 3, 1, 0, 3) + (0,) * 8,
    pce_svn=11,
    tee_tcb_svn=bytes([5, 1, 7]) + bytes(13),
)
PREVIOUS_TCB = PlatformTcb(
    sgx_components=(6, 6, 2, 2, 3, 1, 0, 3) + (0,) * 8,
    pce_svn=11,
    tee_tcb_svn=bytes([3, 1, 6]) + bytes(13),
)
LATEST_QE_SVN = 4
PREVIOUS_QE_SVN = 2


@dataclass(frozen=True, slots=True)
class TcbLevelSpec:
    """One entry of TCB Info ``tcbLevels``: the TCB it names, its status and advisories."""

    tcb: PlatformTcb
    status: str
    tcb_date: datetime
    advisory_ids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class EnclaveLevelSpec:
    """One entry of QE Identity (or TDX module identity) ``tcbLevels``."""

    isv_svn: int
    status: str
    tcb_date: datetime
    advisory_ids: tuple[str, ...] = ()


_LATEST_DATE = datetime(2024, 3, 13, tzinfo=UTC)
_PREVIOUS_DATE = datetime(2023, 8, 9, tzinfo=UTC)

DEFAULT_TCB_LEVELS = (
    TcbLevelSpec(LATEST_TCB, "UpToDate", _LATEST_DATE),
    TcbLevelSpec(PREVIOUS_TCB, "OutOfDate", _PREVIOUS_DATE, ("INTEL-SA-00960", "INTEL-SA-00982")),
)
DEFAULT_QE_LEVELS = (
    EnclaveLevelSpec(LATEST_QE_SVN, "UpToDate", _LATEST_DATE),
    EnclaveLevelSpec(PREVIOUS_QE_SVN, "OutOfDate", _PREVIOUS_DATE, ("INTEL-SA-00615",)),
)

# Labels PCS attaches to some components; informational only, but real bodies carry them.
_SGX_COMPONENT_LABELS: dict[int, dict[str, str]] = {
    0: {"category": "BIOS", "type": "Early Microcode Update"},
    1: {"category": "OS/VMM", "type": "SGX Late Microcode Update"},
    2: {"category": "OS/VMM", "type": "TXT SINIT"},
    3: {"category": "BIOS"},
    4: {"category": "BIOS"},
    5: {"category": "BIOS"},
    7: {"category": "OS/VMM", "type": "SEAMLDR ACM"},
}
_TDX_COMPONENT_LABELS: dict[int, dict[str, str]] = {
    0: {"category": "OS/VMM", "type": "TDX Module"},
    1: {"category": "OS/VMM", "type": "TDX Module"},
    2: {"category": "OS/VMM", "type": "TDX Late Microcode Update"},
}


# -- DER for the SGX extension -----------------------------------------------------------------


def _der(tag: int, content: bytes) -> bytes:
    size = len(content)
    if size < 0x80:
        return bytes([tag, size]) + content
    length = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(length)]) + length + content


def _der_oid(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    out = bytearray([40 * arcs[0] + arcs[1]])
    for arc in arcs[2:]:
        groups = [arc & 0x7F]
        arc >>= 7
        while arc:
            groups.append(0x80 | (arc & 0x7F))
            arc >>= 7
        out += bytes(reversed(groups))
    return _der(0x06, bytes(out))


def _der_uint(value: int, tag: int = 0x02) -> bytes:
    # Minimal two's complement: one extra byte whenever the top bit would read as a sign.
    return _der(tag, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def _der_bool(value: bool) -> bytes:
    return _der(0x01, b"\xff" if value else b"\x00")


def _sgx_pair(suffix: str, value: bytes) -> bytes:
    return _der(0x30, _der_oid(f"{SGX_EXTENSION_OID.dotted_string}.{suffix}") + value)


def sgx_extension_der(
    *,
    ppid: bytes,
    sgx_components: Sequence[int],
    pce_svn: int,
    cpu_svn: bytes,
    pce_id: bytes,
    fmspc: bytes,
    sgx_type: int = SGX_TYPE_SCALABLE,
    platform_instance_id: bytes | None = None,
    dynamic_platform: bool = True,
    cached_keys: bool = False,
    smt_enabled: bool = True,
) -> bytes:
    """The value of Intel's SGX extension, in the member order PCK certificates use. Platform
    instance and configuration are present only for Platform-CA leaves (``platform_instance_id``)."""
    if len(ppid) != 16 or len(cpu_svn) != 16 or len(pce_id) != 2 or len(fmspc) != 6:
        raise ValueError("PPID and CPUSVN are 16 bytes, PCE-ID 2, FMSPC 6")
    if len(sgx_components) != _COMPONENTS:
        raise ValueError("16 SGX TCB components")
    tcb = b"".join(_sgx_pair(f"2.{i + 1}", _der_uint(svn)) for i, svn in enumerate(sgx_components))
    tcb += _sgx_pair("2.17", _der_uint(pce_svn)) + _sgx_pair("2.18", _der(0x04, cpu_svn))
    members = [
        _sgx_pair("1", _der(0x04, ppid)),
        _sgx_pair("2", _der(0x30, tcb)),
        _sgx_pair("3", _der(0x04, pce_id)),
        _sgx_pair("4", _der(0x04, fmspc)),
        _sgx_pair("5", _der_uint(sgx_type, tag=0x0A)),
    ]
    if platform_instance_id is not None:
        if len(platform_instance_id) != 16:
            raise ValueError("the platform instance ID is 16 bytes")
        configuration = (
            _sgx_pair("7.1", _der_bool(dynamic_platform))
            + _sgx_pair("7.2", _der_bool(cached_keys))
            + _sgx_pair("7.3", _der_bool(smt_enabled))
        )
        members += [_sgx_pair("6", _der(0x04, platform_instance_id)), _sgx_pair("7", _der(0x30, configuration))]
    return _der(0x30, b"".join(members))


# -- small helpers -----------------------------------------------------------------------------


def _intel_name(cn: str) -> x509.Name:
    # Intel's RDN order (CN first), which is also what their issuer/subject bytes compare on.
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Intel Corporation"),
            x509.NameAttribute(NameOID.LOCALITY_NAME, "Santa Clara"),
            x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "CA"),
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
        ]
    )


def _second(moment: datetime) -> datetime:
    # PCS dates and X.509 times have second precision: keep one value for both.
    aware = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    return aware.astimezone(UTC).replace(microsecond=0)


def pcs_date(moment: datetime) -> str:
    """PCS's date form, e.g. ``2025-10-19T17:48:50Z``."""
    return _second(moment).strftime("%Y-%m-%dT%H:%M:%SZ")


def raw_sign(key: ec.EllipticCurvePrivateKey, message: bytes) -> bytes:
    """ECDSA P-256/SHA-256 as raw r || s, the form of quotes and PCS documents."""
    der = key.sign(message, ec.ECDSA(hashes.SHA256(), deterministic_signing=True))
    r, s = decode_dss_signature(der)
    return r.to_bytes(_COORD, "big") + s.to_bytes(_COORD, "big")


def raw_public_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    """x || y without the SEC1 prefix, as quotes carry the attestation key."""
    point = key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    return point[1:]


def _pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def _tee(tee: pcs.Tee | str) -> pcs.Tee:
    return pcs.Tee(tee)


def _ski(key: ec.EllipticCurvePrivateKey) -> x509.SubjectKeyIdentifier:
    return x509.SubjectKeyIdentifier.from_public_key(key.public_key())


def _aki(issuer_key: ec.EllipticCurvePrivateKey) -> x509.AuthorityKeyIdentifier:
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(_ski(issuer_key))


def _crl_dp(url: str) -> x509.CRLDistributionPoints:
    return x509.CRLDistributionPoints(
        [x509.DistributionPoint([x509.UniformResourceIdentifier(url)], None, None, None)]
    )


_CA_USAGE = x509.KeyUsage(
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
_SIGNER_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=True,  # Intel sets "Non Repudiation" on TCB Signing and PCK certificates
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=False,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)


def _certificate(
    *,
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    not_before: datetime,
    not_after: datetime,
    ca_path_length: int | None,
    crl_url: str,
    extra: Sequence[x509.ExtensionType] = (),
) -> x509.Certificate:
    """An Intel-profile certificate; ``ca_path_length`` None means an end-entity signer."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_second(not_before))
        .not_valid_after(_second(not_after))
        .add_extension(_aki(issuer_key), critical=False)
        .add_extension(_crl_dp(crl_url), critical=False)
        .add_extension(_ski(key), critical=False)
        .add_extension(_CA_USAGE if ca_path_length is not None else _SIGNER_USAGE, critical=True)
        .add_extension(
            x509.BasicConstraints(ca=ca_path_length is not None, path_length=ca_path_length), critical=True
        )
    )
    for ext in extra:
        builder = builder.add_extension(ext, critical=False)
    return builder.sign(issuer_key, hashes.SHA256(), ecdsa_deterministic=True)


def _component_list(svns: Sequence[int], labels: dict[int, dict[str, str]]) -> list[dict[str, Any]]:
    return [{"svn": svn, **labels.get(i, {})} for i, svn in enumerate(svns)]


def _compact(value: Any) -> str:
    # PCS serves compact JSON; the signature covers these exact bytes, so the form is fixed here.
    return json.dumps(value, separators=(",", ":"), ensure_ascii=True)


def _signed_document(key_name: str, inner: dict[str, Any], signing_key: ec.EllipticCurvePrivateKey) -> bytes:
    text = _compact(inner)
    signature = raw_sign(signing_key, text.encode("utf-8")).hex()
    return f'{{"{key_name}":{text},"signature":"{signature}"}}'.encode()


# -- the vendor --------------------------------------------------------------------------------


@dataclass
class SimulatedIntel:
    """A test Intel: root, PCK Platform CA and TCB Signing keys, revocation lists and the signed
    PCS documents. ``now`` is the issue time every document defaults to."""

    now: datetime
    root_key: ec.EllipticCurvePrivateKey
    root: x509.Certificate
    pck_ca_key: ec.EllipticCurvePrivateKey
    pck_ca: x509.Certificate
    tcb_signing_key: ec.EllipticCurvePrivateKey
    tcb_signing: x509.Certificate
    revoked_by_root: dict[int, datetime] = field(default_factory=dict)  # serial -> revocation time
    revoked_by_pck_ca: dict[int, datetime] = field(default_factory=dict)

    @classmethod
    def generate(cls, now: datetime | None = None) -> SimulatedIntel:
        now = _second(now or datetime.now(UTC))
        start = now - timedelta(days=1)
        root_key = ec.generate_private_key(ec.SECP256R1())
        pck_ca_key = ec.generate_private_key(ec.SECP256R1())
        tcb_key = ec.generate_private_key(ec.SECP256R1())
        root_name = _intel_name(ROOT_CA_CN)
        root_crl = pcs.root_ca_crl_url()
        # Lifetimes follow Intel's: root ~30 years, PCK CA 15, TCB Signing 7.
        root = _certificate(
            subject=root_name,
            key=root_key,
            issuer=root_name,
            issuer_key=root_key,
            not_before=start,
            not_after=now + timedelta(days=30 * 365),
            ca_path_length=1,
            crl_url=root_crl,
        )
        pck_ca = _certificate(
            subject=_intel_name(PCK_PLATFORM_CA_CN),
            key=pck_ca_key,
            issuer=root_name,
            issuer_key=root_key,
            not_before=start,
            not_after=now + timedelta(days=15 * 365),
            ca_path_length=0,
            crl_url=root_crl,
        )
        tcb_signing = _certificate(
            subject=_intel_name(TCB_SIGNING_CN),
            key=tcb_key,
            issuer=root_name,
            issuer_key=root_key,
            not_before=start,
            not_after=now + timedelta(days=7 * 365),
            ca_path_length=None,
            crl_url=root_crl,
        )
        return cls(now, root_key, root, pck_ca_key, pck_ca, tcb_key, tcb_signing)

    # -- certificates --

    @property
    def root_der(self) -> bytes:
        return self.root.public_bytes(serialization.Encoding.DER)

    @property
    def root_pem(self) -> bytes:
        return _pem(self.root)

    @property
    def tcb_info_issuer_chain_pem(self) -> bytes:
        """What PCS sends in ``TCB-Info-Issuer-Chain`` / ``SGX-Enclave-Identity-Issuer-Chain``."""
        return _pem(self.tcb_signing, self.root)

    @property
    def pck_crl_issuer_chain_pem(self) -> bytes:
        """What PCS sends in ``SGX-PCK-CRL-Issuer-Chain``."""
        return _pem(self.pck_ca, self.root)

    def issue_pck(
        self,
        fmspc: bytes,
        public_key: ec.EllipticCurvePublicKey,
        *,
        sgx_components: Sequence[int] = LATEST_TCB.sgx_components,
        pce_svn: int = LATEST_TCB.pce_svn,
        pce_id: bytes = DEFAULT_PCE_ID,
        ppid: bytes | None = None,
        cpu_svn: bytes | None = None,
        sgx_type: int = SGX_TYPE_SCALABLE,
        platform_instance_id: bytes | None = None,
        not_before: datetime | None = None,
    ) -> x509.Certificate:
        """A PCK leaf for one platform at one TCB, issued by the PCK Platform CA (7 years)."""
        start = _second(not_before) if not_before is not None else self.now - timedelta(days=1)
        extension = sgx_extension_der(
            ppid=ppid if ppid is not None else os.urandom(16),
            sgx_components=tuple(sgx_components),
            pce_svn=pce_svn,
            cpu_svn=cpu_svn if cpu_svn is not None else bytes(sgx_components),
            pce_id=pce_id,
            fmspc=fmspc,
            sgx_type=sgx_type,
            platform_instance_id=platform_instance_id if platform_instance_id is not None else os.urandom(16),
        )
        builder = (
            x509.CertificateBuilder()
            .subject_name(_intel_name(PCK_CN))
            .issuer_name(self.pck_ca.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + timedelta(days=7 * 365))
            .add_extension(_aki(self.pck_ca_key), critical=False)
            .add_extension(_crl_dp(pcs.pck_crl_url(pcs.PckCa.PLATFORM)), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(_SIGNER_USAGE, critical=True)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.UnrecognizedExtension(SGX_EXTENSION_OID, extension), critical=False)
        )
        return builder.sign(self.pck_ca_key, hashes.SHA256(), ecdsa_deterministic=True)

    # -- revocation --

    def revoke(self, cert: x509.Certificate, at: datetime | None = None) -> None:
        """Put ``cert`` on the CRL of whichever simulated CA issued it."""
        when = _second(at or self.now)
        if cert.issuer == self.pck_ca.subject:
            self.revoked_by_pck_ca[cert.serial_number] = when
        elif cert.issuer == self.root.subject:
            self.revoked_by_root[cert.serial_number] = when
        else:
            raise ValueError(f"{cert.issuer.rfc4514_string()} is not a simulated CA")

    def _crl(
        self,
        issuer: x509.Certificate,
        key: ec.EllipticCurvePrivateKey,
        revoked: dict[int, datetime],
        this_update: datetime | None,
        lifetime: timedelta,
    ) -> bytes:
        start = _second(this_update) if this_update is not None else self.now - timedelta(hours=1)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(issuer.subject)
            .last_update(start)
            .next_update(start + lifetime)
            # The number only has to grow as entries are added; PCS numbers are opaque too.
            .add_extension(x509.CRLNumber(len(revoked) + 1), critical=False)
            .add_extension(_aki(key), critical=False)
        )
        for serial, when in sorted(revoked.items()):
            entry = (
                x509.RevokedCertificateBuilder()
                .serial_number(serial)
                .revocation_date(when)
                .add_extension(x509.CRLReason(x509.ReasonFlags.key_compromise), critical=False)
                .build()
            )
            builder = builder.add_revoked_certificate(entry)
        crl = builder.sign(key, hashes.SHA256(), ecdsa_deterministic=True)
        return crl.public_bytes(serialization.Encoding.DER)

    def pck_crl_der(self, this_update: datetime | None = None) -> bytes:
        """The PCK Platform CA CRL (30 days, as PCS publishes it)."""
        return self._crl(self.pck_ca, self.pck_ca_key, self.revoked_by_pck_ca, this_update, timedelta(days=30))

    def root_ca_crl_der(self, this_update: datetime | None = None) -> bytes:
        """The Root CA CRL (about a year, like Intel's)."""
        return self._crl(self.root, self.root_key, self.revoked_by_root, this_update, timedelta(days=380))

    # -- PCS documents --

    def _window(self, issue_date: datetime | None, next_update: datetime | None) -> tuple[str, str]:
        issued = _second(issue_date) if issue_date is not None else self.now - timedelta(hours=1)
        until = _second(next_update) if next_update is not None else issued + timedelta(days=30)
        return pcs_date(issued), pcs_date(until)

    def tcb_info_json(
        self,
        fmspc: bytes,
        *,
        tee: pcs.Tee | str = pcs.Tee.TDX,
        levels: Sequence[TcbLevelSpec] = DEFAULT_TCB_LEVELS,
        pce_id: bytes = DEFAULT_PCE_ID,
        issue_date: datetime | None = None,
        next_update: datetime | None = None,
        tcb_evaluation_data_number: int = 17,
        module_mrsigner: bytes = bytes(48),
        signing_key: ec.EllipticCurvePrivateKey | None = None,
    ) -> bytes:
        """A PCS v4 ``/tcb`` body: TCB Info v3 for TDX (module, module identities, levels with
        both component lists) or SGX. The module identities ``TDX_%02X`` are derived from the
        levels' TEE_TCB_SVN major versions: the newest module SVN UpToDate, older ones OutOfDate."""
        kind = _tee(tee)
        issued, until = self._window(issue_date, next_update)
        info: dict[str, Any] = {
            "id": kind.value.upper(),
            "version": 3,
            "issueDate": issued,
            "nextUpdate": until,
            "fmspc": fmspc.hex().upper(),
            "pceId": pce_id.hex().upper(),
            "tcbType": 0,
            "tcbEvaluationDataNumber": tcb_evaluation_data_number,
        }
        if kind is pcs.Tee.TDX:
            module = {
                "mrsigner": module_mrsigner.hex().upper(),
                "attributes": "0000000000000000",
                "attributesMask": "FFFFFFFFFFFFFFFF",
            }
            info["tdxModule"] = module
            info["tdxModuleIdentities"] = _module_identities(levels, module)
        info["tcbLevels"] = [_tcb_level(level, kind) for level in levels]
        return _signed_document("tcbInfo", info, signing_key or self.tcb_signing_key)

    def qe_identity_json(
        self,
        *,
        tee: pcs.Tee | str = pcs.Tee.TDX,
        levels: Sequence[EnclaveLevelSpec] = DEFAULT_QE_LEVELS,
        issue_date: datetime | None = None,
        next_update: datetime | None = None,
        tcb_evaluation_data_number: int = 17,
        signing_key: ec.EllipticCurvePrivateKey | None = None,
    ) -> bytes:
        """A PCS v4 ``/qe/identity`` body: the TD QE (tdx) or SGX QE (sgx) Identity v2."""
        kind = _tee(tee)
        issued, until = self._window(issue_date, next_update)
        tdx = kind is pcs.Tee.TDX
        identity = {
            "id": "TD_QE" if tdx else "QE",
            "version": 2,
            "issueDate": issued,
            "nextUpdate": until,
            "tcbEvaluationDataNumber": tcb_evaluation_data_number,
            "miscselect": "00000000",
            "miscselectMask": "FFFFFFFF",
            "attributes": QE_IDENTITY_ATTRIBUTES.hex().upper(),
            "attributesMask": QE_IDENTITY_ATTRIBUTES_MASK.hex().upper(),
            "mrsigner": (TD_QE_MRSIGNER if tdx else SGX_QE_MRSIGNER).hex().upper(),
            "isvprodid": TD_QE_PROD_ID if tdx else SGX_QE_PROD_ID,
            "tcbLevels": [_enclave_level(level) for level in levels],
        }
        return _signed_document("enclaveIdentity", identity, signing_key or self.tcb_signing_key)

    def collateral_files(self, fmspc: bytes, tee: pcs.Tee | str = pcs.Tee.TDX) -> dict[str, bytes]:
        """The collateral of one FMSPC in the test-vector directory layout (file name -> bytes)."""
        chain = self.tcb_info_issuer_chain_pem
        return {
            "tcb_info.json": self.tcb_info_json(fmspc, tee=tee),
            "tcb_info_issuer_chain.pem": chain,
            "qe_identity.json": self.qe_identity_json(tee=tee),
            "qe_identity_issuer_chain.pem": chain,
            "pck_crl.der": self.pck_crl_der(),
            "pck_crl_issuer_chain.pem": self.pck_crl_issuer_chain_pem,
            "root_ca_crl.der": self.root_ca_crl_der(),
        }

    def write_collateral_dir(self, directory: Path, fmspc: bytes, tee: pcs.Tee | str = pcs.Tee.TDX) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        for name, data in self.collateral_files(fmspc, tee).items():
            (directory / name).write_bytes(data)
        return directory

    def collateral(self, fmspc: bytes, tee: pcs.Tee | str = pcs.Tee.TDX) -> Collateral:
        """The parsed collateral ``verify_quote`` takes, for one FMSPC at the default TCB."""
        files = self.collateral_files(fmspc, tee)
        return load_collateral(
            tcb_info=files["tcb_info.json"],
            tcb_info_issuer_chain=files["tcb_info_issuer_chain.pem"],
            qe_identity=files["qe_identity.json"],
            qe_identity_issuer_chain=files["qe_identity_issuer_chain.pem"],
            pck_crl=files["pck_crl.der"],
            pck_crl_issuer_chain=files["pck_crl_issuer_chain.pem"],
            root_ca_crl=files["root_ca_crl.der"],
        )


def _tcb_level(level: TcbLevelSpec, tee: pcs.Tee) -> dict[str, Any]:
    tcb: dict[str, Any] = {
        "sgxtcbcomponents": _component_list(level.tcb.sgx_components, _SGX_COMPONENT_LABELS),
        "pcesvn": level.tcb.pce_svn,
    }
    if tee is pcs.Tee.TDX:
        svn = bytearray(level.tcb.tee_tcb_svn)
        # Intel leaves the module major version at 0 in levels: the module identity judges it.
        svn[1] = 0
        tcb["tdxtcbcomponents"] = _component_list(svn, _TDX_COMPONENT_LABELS)
    out: dict[str, Any] = {"tcb": tcb, "tcbDate": pcs_date(level.tcb_date), "tcbStatus": level.status}
    if level.advisory_ids:
        out["advisoryIDs"] = list(level.advisory_ids)
    return out


def _enclave_level(level: EnclaveLevelSpec) -> dict[str, Any]:
    out: dict[str, Any] = {
        "tcb": {"isvsvn": level.isv_svn},
        "tcbDate": pcs_date(level.tcb_date),
        "tcbStatus": level.status,
    }
    if level.advisory_ids:
        out["advisoryIDs"] = list(level.advisory_ids)
    return out


def _module_identities(levels: Sequence[TcbLevelSpec], module: dict[str, str]) -> list[dict[str, Any]]:
    by_major: dict[int, list[TcbLevelSpec]] = {}
    for level in levels:
        major = level.tcb.tee_tcb_svn[1]
        if major > 0:
            by_major.setdefault(major, []).append(level)
    identities = []
    for major in sorted(by_major, reverse=True):
        seen: dict[int, TcbLevelSpec] = {}
        for level in by_major[major]:
            seen.setdefault(level.tcb.tee_tcb_svn[0], level)
        ordered = sorted(seen.items(), reverse=True)  # Intel reads these in document order
        identities.append(
            {
                "id": f"TDX_{major:02X}",
                **module,
                "tcbLevels": [
                    {
                        "tcb": {"isvsvn": svn},
                        "tcbDate": pcs_date(level.tcb_date),
                        "tcbStatus": "UpToDate" if i == 0 else "OutOfDate",
                    }
                    for i, (svn, level) in enumerate(ordered)
                ],
            }
        )
    return identities


# -- the platform ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SimEvent:
    """One measured event for ``ccel_event_log``: ``rtmr`` 0-3, digest = SHA-384(data)."""

    rtmr: int
    data: bytes
    event_type: int = _EV_IPL


def ccel_event_log(events: Sequence[SimEvent]) -> tuple[bytes, tuple[bytes, bytes, bytes, bytes]]:
    """A TCG2 crypto-agile CCEL log (SHA-384 only) and the RTMR0-3 it replays to."""
    spec_id = (
        b"Spec ID Event03\x00"
        + struct.pack("<IBBBB", 0, 0, 2, 0, 2)  # platform class, spec 2.0 errata 0, uintn = u64
        + struct.pack("<I", 1)
        + struct.pack("<HH", TPM_ALG_SHA384, SHA384_SIZE)
        + b"\x00"  # no vendor info
    )
    log = bytearray(struct.pack("<II20sI", 0, EV_NO_ACTION, bytes(20), len(spec_id)) + spec_id)
    rtmrs = [bytes(SHA384_SIZE)] * 4
    for event in events:
        if event.rtmr not in range(4):
            raise ValueError(f"no RTMR {event.rtmr}")
        digest = hashlib.sha384(event.data).digest()
        rtmrs[event.rtmr] = hashlib.sha384(rtmrs[event.rtmr] + digest).digest()
        # CCEL numbers MRTD 0 and RTMR0-3 as 1-4.
        log += struct.pack("<IIIH", event.rtmr + 1, event.event_type, 1, TPM_ALG_SHA384) + digest
        log += struct.pack("<I", len(event.data)) + event.data
    return bytes(log), (rtmrs[0], rtmrs[1], rtmrs[2], rtmrs[3])


@dataclass
class SimulatedTdxPlatform:
    """One TDX machine: its PCK (key and certificate at its TCB), the TD QE's attestation key and
    the TDX module it runs. ``make_quote`` produces what the QGS would return to a TD."""

    intel: SimulatedIntel
    fmspc: bytes
    tcb: PlatformTcb
    pck_key: ec.EllipticCurvePrivateKey
    pck_cert: x509.Certificate
    attestation_key: ec.EllipticCurvePrivateKey
    qe_svn: int = LATEST_QE_SVN
    header_user_data: bytes = bytes(20)
    mr_seam: bytes = SIM_MR_SEAM

    @classmethod
    def create(
        cls,
        intel: SimulatedIntel,
        *,
        fmspc: bytes = DEFAULT_FMSPC,
        tcb: PlatformTcb = LATEST_TCB,
        qe_svn: int = LATEST_QE_SVN,
        pce_id: bytes = DEFAULT_PCE_ID,
    ) -> SimulatedTdxPlatform:
        pck_key = ec.generate_private_key(ec.SECP256R1())
        pck_cert = intel.issue_pck(
            fmspc, pck_key.public_key(), sgx_components=tcb.sgx_components, pce_svn=tcb.pce_svn, pce_id=pce_id
        )
        # The QE puts an identifier of its attestation key in the header's first 16 bytes.
        user_data = os.urandom(16) + bytes(4)
        return cls(
            intel=intel,
            fmspc=fmspc,
            tcb=tcb,
            pck_key=pck_key,
            pck_cert=pck_cert,
            attestation_key=ec.generate_private_key(ec.SECP256R1()),
            qe_svn=qe_svn,
            header_user_data=user_data,
        )

    @property
    def pck_chain_pem(self) -> bytes:
        return _pem(self.pck_cert, self.intel.pck_ca, self.intel.root)

    def qe_report(self, auth_data: bytes = QE_AUTH_DATA) -> bytes:
        """The TD QE's 384-byte report, binding the attestation key: REPORTDATA[0:32] =
        SHA-256(attestation key || QE auth data), the rest zero."""
        report = bytearray(384)
        report[0:16] = self.tcb.cpu_svn
        report[48:64] = QE_ATTRIBUTES
        report[64:96] = QE_MR_ENCLAVE
        report[128:160] = TD_QE_MRSIGNER
        struct.pack_into("<HH", report, 256, TD_QE_PROD_ID, self.qe_svn)
        report[320:352] = hashlib.sha256(raw_public_key(self.attestation_key) + auth_data).digest()
        return bytes(report)

    def td_report_body(
        self,
        report_data: bytes,
        *,
        mr_td: bytes,
        rtmrs: Sequence[bytes],
        mr_config_id: bytes = bytes(48),
        td_attributes: int = TD_ATTR_SEPT_VE_DISABLE,
        debug: bool = False,
        xfam: bytes = DEFAULT_XFAM,
        mr_owner: bytes = bytes(48),
        mr_owner_config: bytes = bytes(48),
        td15: bool = False,
    ) -> bytes:
        """The TD quote body (584 bytes, or 648 for TDX 1.5 with TEE_TCB_SVN_2 and MRSERVICETD)."""
        if len(report_data) > 64:
            raise ValueError("report_data is at most 64 bytes")
        if len(rtmrs) != 4 or any(len(r) != 48 for r in rtmrs):
            raise ValueError("four 48-byte RTMRs")
        for name, value in (("mr_td", mr_td), ("mr_config_id", mr_config_id), ("mr_owner", mr_owner)):
            if len(value) != 48:
                raise ValueError(f"{name} is 48 bytes")
        if len(mr_owner_config) != 48 or len(xfam) != 8:
            raise ValueError("mr_owner_config is 48 bytes, xfam 8")
        attributes = td_attributes | (TD_ATTR_DEBUG if debug else 0)
        body = (
            self.tcb.tee_tcb_svn
            + self.mr_seam
            + bytes(48)  # MRSIGNERSEAM: zero for Intel's module
            + bytes(8)  # SEAM attributes
            + attributes.to_bytes(8, "little")
            + xfam
            + mr_td
            + mr_config_id
            + mr_owner
            + mr_owner_config
            + b"".join(rtmrs)
            + report_data.ljust(64, b"\x00")
        )
        if td15:
            # No TD-preserving update happened: the module's previous SVN is the current one.
            body += self.tcb.tee_tcb_svn + bytes(48)
        return body

    def make_quote(
        self,
        report_data: bytes,
        *,
        mr_td: bytes,
        rtmrs: Sequence[bytes],
        mr_config_id: bytes = bytes(48),
        td_attributes: int = TD_ATTR_SEPT_VE_DISABLE,
        debug: bool = False,
        xfam: bytes = DEFAULT_XFAM,
        mr_owner: bytes = bytes(48),
        mr_owner_config: bytes = bytes(48),
        version: int = 4,
    ) -> bytes:
        """A DCAP quote over a TD report: v4 (TD 1.0 body) or v5 (typed TD 1.5 body).
        ``report_data`` (up to 64 bytes) is zero-padded to 64."""
        if version not in (4, 5):
            raise ValueError("TDX quotes are version 4 or 5")
        body = self.td_report_body(
            report_data,
            mr_td=mr_td,
            rtmrs=rtmrs,
            mr_config_id=mr_config_id,
            td_attributes=td_attributes,
            debug=debug,
            xfam=xfam,
            mr_owner=mr_owner,
            mr_owner_config=mr_owner_config,
            td15=version == 5,
        )
        header = struct.pack(
            "<HHIHH16s20s",
            version,
            ATT_KEY_ECDSA_P256,
            TEE_TYPE_TDX,
            0,  # reserved in TDX quotes
            0,
            INTEL_QE_VENDOR_ID,
            self.header_user_data,
        )
        descriptor = struct.pack("<HI", 3, len(body)) if version == 5 else b""
        signed = header + descriptor + body
        return signed + self.signature_data(signed)

    def signature_data(self, signed: bytes, auth_data: bytes = QE_AUTH_DATA) -> bytes:
        """u32 length || quote signature || attestation key || type-6 certification data (QE
        report, its PCK signature, auth data, nested type-5 PCK chain)."""
        qe_report = self.qe_report(auth_data)
        chain = self.pck_chain_pem + b"\x00"  # quotes NUL-terminate the PEM, counted in the size
        qe_data = (
            qe_report
            + raw_sign(self.pck_key, qe_report)
            + struct.pack("<H", len(auth_data))
            + auth_data
            + _CERT_DATA_HEADER.pack(CertificationDataType.PCK_CHAIN, len(chain))
            + chain
        )
        data = (
            raw_sign(self.attestation_key, signed)
            + raw_public_key(self.attestation_key)
            + _CERT_DATA_HEADER.pack(CertificationDataType.QE_REPORT, len(qe_data))
            + qe_data
        )
        return struct.pack("<I", len(data)) + data

    def evidence(self, quote: bytes, event_log: bytes | None = None) -> dict[str, str | None]:
        """Confidential Containers' TDX evidence: ``{"cc_eventlog": b64 | null, "quote": b64}``."""
        return {
            "cc_eventlog": base64.b64encode(event_log).decode() if event_log is not None else None,
            "quote": base64.b64encode(quote).decode(),
        }


__all__ = [
    "DEFAULT_FMSPC",
    "DEFAULT_QE_LEVELS",
    "DEFAULT_TCB_LEVELS",
    "LATEST_TCB",
    "PREVIOUS_TCB",
    "EnclaveLevelSpec",
    "PlatformTcb",
    "SimEvent",
    "SimulatedIntel",
    "SimulatedTdxPlatform",
    "TcbLevelSpec",
    "ccel_event_log",
    "sgx_extension_der",
]
