"""Pure verification of one SNP attestation report against its VEK.

``verify_report`` = ``verify_vek_chain`` (cacheable, see ``chain``) + ``verify_report_with_vek``
(per report: bindings, then the one ECDSA verify that can never be cached). Bindings run before
the signature because they are cheap comparisons and each names its own failure:

1. VEK chain valid at ``now`` (``snp.cert_validity``);
2. report parses, its product is the VEK's (``snp.product_mismatch``);
3. SIGNER_INFO.SIGNING_KEY matches the certificate kind (``snp.signing_key_mismatch``);
4. REPORTED_TCB equals the VEK SPLs (``snp.tcb_binding``);
5. CHIP_ID equals the VCEK hwID (``snp.chip_id_binding``; not for VLEKs, which have none);
6. ECDSA P-384/SHA-384 over bytes 0x000-0x29F with little-endian R, S (``snp.report_signature``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from shared.errors import VerificationError
from shared.platforms.snp import checks
from shared.platforms.snp.abi import (
    SIGNATURE_COMPONENT_SIZE,
    SIGNED_REGION_END,
    SnpReport,
    parse_report,
    signed_region,
)
from shared.platforms.snp.certs import HWID_SIZE, TURIN_HWID_SIZE, AmdRoots, VekExtensions, VekKind
from shared.platforms.snp.chain import VerifiedVek, verify_vek_chain
from shared.platforms.snp.fields import Product, SigningKey, TcbVersion

__all__ = [
    "VerifiedReport",
    "VerifiedVek",
    "check_chip_id_binding",
    "check_signing_key",
    "check_tcb_binding",
    "verify_report",
    "verify_report_signature",
    "verify_report_with_vek",
    "verify_vek_chain",
]

# Order of the P-384 group: R and S outside [1, n-1] are invalid whatever the key.
_P384_ORDER = (
    0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973
)
_SIG_R = SIGNED_REGION_END
_SIG_S = _SIG_R + SIGNATURE_COMPONENT_SIZE
_ECDSA_SHA384 = ec.ECDSA(hashes.SHA384())

_KIND_OF_KEY = {SigningKey.VCEK: VekKind.VCEK, SigningKey.VLEK: VekKind.VLEK}


@dataclass(frozen=True, slots=True)
class VerifiedReport:
    """A report whose signature, TCB and chip bindings verified under ``vek``. Policy is separate
    (``validate``): verified means authentic, not acceptable."""

    report: SnpReport
    vek: VerifiedVek


def check_signing_key(signing_key: SigningKey, kind: VekKind) -> None:
    """The report says which key type signed it; it must be the certificate's type."""
    if _KIND_OF_KEY.get(signing_key) is not kind:
        raise VerificationError(
            checks.SIGNING_KEY_MISMATCH, f"report signed by {signing_key.name}, certificate is a {kind.value}"
        )


def check_tcb_binding(reported_tcb: TcbVersion, extensions: VekExtensions) -> None:
    """REPORTED_TCB components equal the VEK SPLs (fmc included on Turin, where both must have it)."""
    got = reported_tcb.components()
    want = extensions.spls()
    if got != want:
        diffs = ", ".join(
            f"{name} report={got.get(name)} vek={want.get(name)}"
            for name in sorted(set(got) | set(want))
            if got.get(name) != want.get(name)
        )
        raise VerificationError(checks.TCB_BINDING, f"REPORTED_TCB does not match the VEK: {diffs}")


def check_chip_id_binding(chip_id: bytes, extensions: VekExtensions, product: Product) -> None:
    """CHIP_ID equals the VCEK hwID; on Turin the hwID is 8 bytes and CHIP_ID's tail is zero.

    A masked (all-zero) CHIP_ID fails: a VCEK cannot be tied to a chip the report will not name.
    """
    hw_id = extensions.hw_id
    if hw_id is None:
        raise VerificationError(checks.CHIP_ID_BINDING, "VCEK has no hwID extension")
    size = TURIN_HWID_SIZE if product.has_fmc else HWID_SIZE
    if len(hw_id) != size:
        raise VerificationError(checks.CHIP_ID_BINDING, f"{product.value} hwID must be {size} bytes")
    if chip_id[:size] != hw_id or any(chip_id[size:]):
        raise VerificationError(
            checks.CHIP_ID_BINDING, f"CHIP_ID {chip_id.hex()} is not the VCEK hwID {hw_id.hex()}"
        )


def verify_report_signature(raw: bytes, vek_public_key: ec.EllipticCurvePublicKey) -> None:
    """ECDSA P-384/SHA-384 over bytes 0x000-0x29F; R and S are 72-byte little-endian integers."""
    region = signed_region(raw)  # ParseError for anything but a 1184-byte buffer
    data = bytes(raw)
    if not isinstance(vek_public_key, ec.EllipticCurvePublicKey) or not isinstance(
        vek_public_key.curve, ec.SECP384R1
    ):
        raise VerificationError(checks.KEY_TYPE, "VEK key is not EC P-384")
    r = int.from_bytes(data[_SIG_R:_SIG_S], "little")
    s = int.from_bytes(data[_SIG_S : _SIG_S + SIGNATURE_COMPONENT_SIZE], "little")
    if not (0 < r < _P384_ORDER and 0 < s < _P384_ORDER):
        raise VerificationError(checks.REPORT_SIGNATURE, "R or S outside [1, n-1] (unsigned or corrupt)")
    try:
        vek_public_key.verify(encode_dss_signature(r, s), region, _ECDSA_SHA384)
    except InvalidSignature:
        raise VerificationError(checks.REPORT_SIGNATURE, "report signature does not verify") from None


def verify_report_with_vek(raw: bytes, vek: VerifiedVek, now: datetime) -> VerifiedReport:
    """Per-report checks against an already verified (typically cached) VEK chain."""
    vek.check_valid_at(now)
    report = parse_report(raw, vek.product)
    if report.product is not vek.product:
        raise VerificationError(
            checks.PRODUCT_MISMATCH, f"report CPUID says {report.product.value}, VEK is {vek.product.value}"
        )
    check_signing_key(report.signing_key, vek.kind)
    check_tcb_binding(report.reported_tcb, vek.extensions)
    if vek.kind is VekKind.VCEK:
        check_chip_id_binding(report.chip_id, vek.extensions, vek.product)
    if report.signer_info.mask_chip_key:
        raise VerificationError(checks.REPORT_SIGNATURE, "MASK_CHIP_KEY is set: the firmware did not sign")
    verify_report_signature(raw, vek.public_key)
    return VerifiedReport(report=report, vek=vek)


def verify_report(
    raw: bytes,
    vek_der: bytes,
    roots: AmdRoots | Mapping[Product, AmdRoots],
    now: datetime,
    *,
    crl: x509.CertificateRevocationList | None = None,
    product: Product | None = None,
    pinned: Mapping[Product, AmdRoots] | None = None,
) -> VerifiedReport:
    """Full verification of ``raw`` signed by the VEK ``vek_der`` under ``roots`` at ``now``.

    Raises ``ParseError`` for malformed input and ``VerificationError`` (names in ``checks``) for a
    failed check. ``product`` is only needed when neither the roots nor the VEK issuer decide it.
    """
    vek = verify_vek_chain(vek_der, roots, now, crl=crl, product=product, pinned=pinned)
    return verify_report_with_vek(raw, vek, now)
