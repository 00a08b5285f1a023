"""SNP verification against the real AMD vectors, the negative vectors check by check, bit flips,
mixed-up endorsements, and a synthetic AMD-shaped PKI for the checks real data cannot reach
(revocation, TCB/chip mismatch under a valid signature, key and CA rules)."""

from __future__ import annotations

import json
import random
import re
import warnings
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import NameOID

from shared.errors import ParseError, VerificationError
from shared.platforms.snp import checks
from shared.platforms.snp.abi import SIGNED_REGION_END, parse_report, read_chip_id, read_reported_tcb
from shared.platforms.snp.certs import (
    AmdRoots,
    VekKind,
    load_certificate,
    load_crl,
    parse_vek_extensions,
    pinned_roots,
)
from shared.platforms.snp.chain import check_issued_by, check_validity
from shared.platforms.snp.fields import Product
from shared.platforms.snp.verify import (
    check_chip_id_binding,
    check_tcb_binding,
    verify_report,
    verify_report_signature,
    verify_report_with_vek,
    verify_vek_chain,
)

DATA = Path(__file__).parents[1] / "data/snp"
NEG_DIR = DATA / "negative"
CASES = sorted(p.name for p in (DATA / "reports").iterdir())
EXPECTED: dict[str, dict[str, Any]] = {
    n: json.loads((DATA / "reports" / n / "expected.json").read_text()) for n in CASES
}
RAW = {n: (DATA / "reports" / n / "report.bin").read_bytes() for n in CASES}
VEK = {n: (DATA / "reports" / n / "vek.der").read_bytes() for n in CASES}
NEGATIVE: dict[str, Any] = json.loads((NEG_DIR / "expected.json").read_text())
ROOTS = pinned_roots()


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _at(name: str) -> datetime:
    return _time(EXPECTED[name]["verify_at"])


def _reason(exc: BaseException) -> str:
    assert isinstance(exc, (ParseError, VerificationError)), exc
    return exc.reason


def _fails_with(check: str, call: Any, *args: Any, **kwargs: Any) -> None:
    with pytest.raises((ParseError, VerificationError)) as info:
        call(*args, **kwargs)
    assert _reason(info.value) == check, info.value


def _flip(raw: bytes, bit: int) -> bytes:
    data = bytearray(raw)
    data[bit // 8] ^= 1 << (bit % 8)
    return bytes(data)


def _rs_big_endian(raw: bytes) -> bytes:
    """The report with R and S byte-reversed: reading it little-endian = reading the original
    big-endian, the known mistake the vectors guard against."""
    r, s = raw[0x2A0:0x2E8], raw[0x2E8:0x330]
    return raw[:0x2A0] + r[::-1] + s[::-1] + raw[0x330:]


# ---- positive cases --------------------------------------------------------------------------


@pytest.mark.parametrize("name", CASES)
def test_real_case_verifies_at_verify_at(name: str) -> None:
    exp = EXPECTED[name]
    result = verify_report(RAW[name], VEK[name], ROOTS, _at(name))
    assert result.vek.product.value == exp["product"]
    assert result.vek.kind.value == exp["signer"]
    assert result.report.measurement.hex() == exp["report"]["measurement"]
    assert result.vek.not_before == _time(exp["valid_window"]["not_before"])
    assert result.vek.not_after == _time(exp["valid_window"]["not_after"])
    # The same with the product's own roots, and with an explicit product.
    product = Product(exp["product"])
    verify_report(RAW[name], VEK[name], ROOTS[product], _at(name))
    verify_report(RAW[name], VEK[name], ROOTS, _at(name), product=product)


@pytest.mark.parametrize("name", CASES)
def test_real_case_fails_outside_its_window(name: str) -> None:
    window = EXPECTED[name]["valid_window"]
    start, end = _time(window["not_before"]), _time(window["not_after"])
    verify_report(RAW[name], VEK[name], ROOTS, start)
    verify_report(RAW[name], VEK[name], ROOTS, end)
    for at in (start - timedelta(seconds=1), end + timedelta(seconds=1)):
        _fails_with(checks.CERT_VALIDITY, verify_report, RAW[name], VEK[name], ROOTS, at)


def test_naive_time_is_utc() -> None:
    name = "milan_v3_vlek_aws_trustee"
    end = _time(EXPECTED[name]["valid_window"]["not_after"]).replace(tzinfo=None)
    verify_report(RAW[name], VEK[name], ROOTS, end)
    _fails_with(checks.CERT_VALIDITY, verify_report, RAW[name], VEK[name], ROOTS, end + timedelta(seconds=1))


def test_cached_chain_is_rechecked_against_time() -> None:
    name = "milan_v3_vlek_aws_trustee"
    vek = verify_vek_chain(VEK[name], ROOTS, _at(name))
    assert verify_report_with_vek(RAW[name], vek, _at(name)).report.vmpl == 1
    _fails_with(checks.CERT_VALIDITY, verify_report_with_vek, RAW[name], vek, _time("2026-01-01T00:00:00Z"))


@pytest.mark.parametrize("name", ["genoa_oak_oc", "milan_v2_gosevguest", "milan_v3_vlek_aws_trustee"])
def test_real_vek_with_serial_zero_loads(name: str) -> None:
    # cryptography says serial 0 will be refused in a future release; this fails the day it is.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ours = load_certificate(VEK[name])  # our loader keeps the deprecation warning to itself
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        cert = x509.load_der_x509_certificate(VEK[name])
        assert cert.serial_number == 0
        assert ours.serial_number == 0


# ---- negative vectors, check by check --------------------------------------------------------

# Vector checks that are parse failures here, and the one that is a way of calling another.
_PARSE_REASON = {"report_version": "parse.report.version", "vek_parses": "parse.vek"}
_ALIAS = {"report_signature_with_big_endian_rs": "report_signature"}
_CASE_RE = re.compile(r"reports/([a-z0-9_]+)/")


def _our_reason(check: str) -> str:
    return _PARSE_REASON.get(check) or f"snp.{_ALIAS.get(check, check)}"


def _vector_time(vec: dict[str, Any]) -> datetime | None:
    inputs = vec["inputs"]
    if "verify_at" in inputs:
        return _time(inputs["verify_at"])
    for source in (vec.get("derived_from"), inputs.get("report"), inputs.get("vek")):
        match = _CASE_RE.search(source or "")
        if match:
            return _at(match.group(1))
    return None


def _run_check(check: str, vec: dict[str, Any]) -> bool:
    """Run one vector check in isolation; True = it passes. A failure must carry our name for it."""
    inputs = vec["inputs"]
    product = Product(inputs["product"])
    vek_bytes = (NEG_DIR / inputs["vek"]).read_bytes()
    raw = (NEG_DIR / inputs["report"]).read_bytes() if "report" in inputs else b""
    try:
        vek = load_certificate(vek_bytes, "vek")
        issuer = load_certificate((NEG_DIR / inputs["issuer"]).read_bytes())
        ark = load_certificate((NEG_DIR / inputs["ark"]).read_bytes())
        if check == "vek_parses":
            pass
        elif check == "vek_signed_by_ask":
            check_issued_by(vek, issuer, checks.VEK_SIGNED_BY_ASK)
        elif check == "report_version":
            parse_report(raw, product)
        elif check in ("report_signature", "report_signature_with_big_endian_rs"):
            key = vek.public_key()
            assert isinstance(key, ec.EllipticCurvePublicKey)
            verify_report_signature(_rs_big_endian(raw) if check != "report_signature" else raw, key)
        elif check == "tcb_binding":
            check_tcb_binding(read_reported_tcb(raw, product), parse_vek_extensions(vek))
        elif check == "chip_id_binding":
            if parse_vek_extensions(vek).hw_id is None:
                return True  # a VLEK has no hwID: not applicable, as the vectors record it
            check_chip_id_binding(read_chip_id(raw), parse_vek_extensions(vek), product)
        elif check == "cert_validity":
            at = _vector_time(vec)
            assert at is not None
            check_validity((ark, issuer, vek), at)
        else:
            raise AssertionError(f"unknown vector check {check}")
    except (ParseError, VerificationError) as exc:
        assert exc.reason == _our_reason(check), exc
        return False
    return True


VECTOR_IDS = [v["id"] for v in NEGATIVE["vectors"]]


def test_vector_check_names_are_ours() -> None:
    for name in NEGATIVE["check_names"]:
        reason = _our_reason(name)
        assert reason in checks.ALL or reason in _PARSE_REASON.values()


@pytest.mark.parametrize("vec", NEGATIVE["vectors"], ids=VECTOR_IDS)
def test_negative_vector_checks(vec: dict[str, Any]) -> None:
    for check in vec["must_fail"]:
        assert _run_check(check, vec) is False, check
    for check in vec["must_pass"]:
        assert _run_check(check, vec) is True, check
    for check, observed in vec["observed_by_our_tools"].items():
        if check == "report_version" and "report" not in vec["inputs"]:
            continue
        assert _run_check(check, vec) is observed, check


def _vector_roots(vec: dict[str, Any]) -> AmdRoots:
    """The vector's ARK and intermediate as roots. The intermediate fills both roles so that a
    procedure giving the 'wrong' one (ASVK for a VCEK) is honoured; the product is the ARK's."""
    inputs = vec["inputs"]
    ark_product = Product(Path(inputs["ark"]).parent.name.capitalize())
    issuer = load_certificate((NEG_DIR / inputs["issuer"]).read_bytes())
    ark = load_certificate((NEG_DIR / inputs["ark"]).read_bytes())
    return AmdRoots(product=ark_product, ark=ark, ask=issuer, asvk=issuer)


@pytest.mark.parametrize("vec", NEGATIVE["vectors"], ids=VECTOR_IDS)
def test_negative_vector_end_to_end(vec: dict[str, Any]) -> None:
    inputs = vec["inputs"]
    vek_bytes = (NEG_DIR / inputs["vek"]).read_bytes()
    roots = _vector_roots(vec)
    at = _vector_time(vec) or load_certificate(vek_bytes).not_valid_before_utc + timedelta(days=1)
    allowed = {_our_reason(c) for c in vec["must_fail"]}
    with pytest.raises((ParseError, VerificationError)) as info:
        if "report" in inputs:
            raw = (NEG_DIR / inputs["report"]).read_bytes()
            if inputs.get("big_endian_rs"):
                verify_report(raw, vek_bytes, roots, at)  # read correctly, the original verifies
                raw = _rs_big_endian(raw)
            verify_report(raw, vek_bytes, roots, at)
        else:
            verify_vek_chain(vek_bytes, roots, at)
    assert _reason(info.value) in allowed


@pytest.mark.parametrize("name", CASES)
def test_positive_case_checks_each_pass(name: str) -> None:
    exp = EXPECTED[name]
    product = Product(exp["product"])
    vek = load_certificate(VEK[name])
    ext = parse_vek_extensions(vek)
    kind = VekKind(exp["signer"])
    roots = ROOTS[product]
    assert set(exp["expected"]["checks"]) == {
        "ark_self_signed",
        "ask_signed_by_ark",
        "vek_signed_by_ask",
        "report_signature",
        "tcb_binding",
        "chip_id_binding",
    }
    check_issued_by(roots.ark, roots.ark, checks.ARK_SELF_SIGNED)
    check_issued_by(roots.intermediate(kind), roots.ark, checks.ASK_SIGNED_BY_ARK)
    check_issued_by(vek, roots.intermediate(kind), checks.VEK_SIGNED_BY_ASK)
    key = vek.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    verify_report_signature(RAW[name], key)
    check_tcb_binding(read_reported_tcb(RAW[name], product), ext)
    if kind is VekKind.VCEK:
        check_chip_id_binding(read_chip_id(RAW[name]), ext, product)
    else:
        assert exp["expected"]["checks"]["chip_id_binding"].startswith("not applicable")


# ---- bit flips -------------------------------------------------------------------------------

FLIPS_PER_REPORT = 200


@pytest.mark.parametrize("name", CASES)
def test_signed_region_bit_flips_rejected(name: str) -> None:
    at = _at(name)
    vek = verify_vek_chain(VEK[name], ROOTS, at)
    rng = random.Random(f"signed-{name}")
    bits = rng.sample(range(SIGNED_REGION_END * 8), FLIPS_PER_REPORT)
    for bit in bits:
        flipped = _flip(RAW[name], bit)
        # The signature covers every one of these bits ...
        _fails_with(checks.REPORT_SIGNATURE, verify_report_signature, flipped, vek.public_key)
        # ... and the full check rejects the report, possibly earlier (parse, binding) under its own name.
        with pytest.raises((ParseError, VerificationError)):
            verify_report_with_vek(flipped, vek, at)


@pytest.mark.parametrize("name", CASES)
def test_signature_and_tail_bit_flips_rejected(name: str) -> None:
    at = _at(name)
    vek = verify_vek_chain(VEK[name], ROOTS, at)
    rng = random.Random(f"sig-{name}")
    for bit in rng.sample(range(0x2A0 * 8, 0x330 * 8), 100):  # R and S, including their zero tails
        _fails_with(checks.REPORT_SIGNATURE, verify_report_with_vek, _flip(RAW[name], bit), vek, at)
    for bit in rng.sample(range(0x330 * 8, 0x4A0 * 8), 20):  # unsigned reserved tail: parse rejects
        _fails_with(
            "parse.report.reserved.0x330-0x49f", verify_report_with_vek, _flip(RAW[name], bit), vek, at
        )


def test_zero_signature_rejected() -> None:
    name = "genoa_oak_oc"
    vek = verify_vek_chain(VEK[name], ROOTS, _at(name))
    unsigned = RAW[name][:0x2A0] + bytes(144) + RAW[name][0x330:]
    _fails_with(checks.REPORT_SIGNATURE, verify_report_signature, unsigned, vek.public_key)


# ---- mixed-up endorsements with real data ----------------------------------------------------


def test_wrong_vcek_same_tcb_other_chip() -> None:
    # milan_v3_azure_v2 is another chip at the very same TCB as milan_v3_azure_v0.
    report, other = "milan_v3_azure_v0", "milan_v3_azure_v2"
    assert EXPECTED[report]["report"]["reported_tcb"] == EXPECTED[other]["report"]["reported_tcb"]
    _fails_with(checks.CHIP_ID_BINDING, verify_report, RAW[report], VEK[other], ROOTS, _at(other))
    _fails_with(
        checks.CHIP_ID_BINDING,
        verify_report,
        RAW["milan_v2_trustee"],
        VEK["milan_v2_virtee"],
        ROOTS,
        _at("milan_v2_virtee"),
    )


def test_vcek_of_another_tcb() -> None:
    at = _time("2025-06-01T00:00:00Z")
    _fails_with(
        checks.TCB_BINDING, verify_report, RAW["milan_oak_oc_release"], VEK["milan_v2_gosevguest"], ROOTS, at
    )
    _fails_with(
        checks.TCB_BINDING,
        verify_report,
        RAW["genoa_v3_azure"],
        VEK["genoa_oak_oc"],
        ROOTS,
        _at("genoa_oak_oc"),
    )


def test_vlek_report_with_a_vcek_and_back() -> None:
    at = _time("2025-02-01T00:00:00Z")  # inside both the AWS VLEK's and the Azure VCEK's validity
    vlek, vcek = "milan_v3_vlek_aws_trustee", "milan_v3_azure_v0"
    _fails_with(checks.SIGNING_KEY_MISMATCH, verify_report, RAW[vlek], VEK[vcek], ROOTS, at)
    _fails_with(checks.SIGNING_KEY_MISMATCH, verify_report, RAW[vcek], VEK[vlek], ROOTS, at)


def test_vcek_of_another_product() -> None:
    # Turin VCEK offered with Genoa roots: its issuer is not the Genoa ASK.
    _fails_with(
        checks.VEK_SIGNED_BY_ASK,
        verify_report,
        RAW["turin_oak_oc"],
        VEK["turin_oak_oc"],
        ROOTS[Product.GENOA],
        _at("turin_oak_oc"),
    )
    # Genoa report with a real Milan VCEK: both verify on their own, the products disagree.
    _fails_with(
        checks.PRODUCT_MISMATCH,
        verify_report,
        RAW["genoa_v3_azure"],
        VEK["milan_v3_azure_v0"],
        ROOTS,
        _at("milan_v3_azure_v0"),
    )
    _fails_with(
        checks.PRODUCT_MISMATCH,
        verify_report,
        RAW["turin_oak_oc"],
        VEK["turin_oak_oc"],
        ROOTS[Product.TURIN],
        _at("turin_oak_oc"),
        product=Product.GENOA,
    )


def test_unreadable_vek() -> None:
    _fails_with(
        "parse.vek", verify_report, RAW["genoa_oak_oc"], b"not a certificate", ROOTS, _at("genoa_oak_oc")
    )


def test_unknown_product_roots() -> None:
    only_milan = {Product.MILAN: ROOTS[Product.MILAN]}
    _fails_with(
        checks.PRODUCT_UNKNOWN,
        verify_report,
        RAW["genoa_oak_oc"],
        VEK["genoa_oak_oc"],
        only_milan,
        _at("genoa_oak_oc"),
    )


def test_ark_not_self_signed_and_asvk_as_ark() -> None:
    real = ROOTS[Product.MILAN]
    name = "milan_v2_trustee"
    swapped = replace(real, ark=real.ask)  # an intermediate posing as root: not self-issued
    _fails_with(checks.ARK_SELF_SIGNED, verify_report, RAW[name], VEK[name], swapped, _at(name))


def test_report_signature_needs_a_p384_key() -> None:
    rsa_key: Any = rsa.generate_private_key(65537, 2048).public_key()
    _fails_with(checks.KEY_TYPE, verify_report_signature, RAW["genoa_oak_oc"], rsa_key)
    p256 = ec.generate_private_key(ec.SECP256R1()).public_key()
    _fails_with(checks.KEY_TYPE, verify_report_signature, RAW["genoa_oak_oc"], p256)
    real_key = load_certificate(VEK["genoa_oak_oc"]).public_key()
    _fails_with("parse.report.size", verify_report_signature, RAW["genoa_oak_oc"][:0x300], real_key)
    _fails_with("parse.report.type", verify_report_signature, "report", real_key)


# ---- a synthetic AMD-shaped PKI ----------------------------------------------------------------

PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
AMD_OID = "1.3.6.1.4.1.3704.1"
NOW = datetime(2025, 6, 1, tzinfo=UTC)
FAR_PAST = datetime(2020, 1, 1, tzinfo=UTC)
FAR_FUTURE = datetime(2040, 1, 1, tzinfo=UTC)


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Engineering"),
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Advanced Micro Devices"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _der_int(value: int) -> bytes:
    body = value.to_bytes(max(1, (value.bit_length() + 8) // 8), "big")
    return bytes([0x02, len(body)]) + body


def _ca(
    subject: str,
    key: rsa.RSAPrivateKey,
    issuer: str,
    signer: rsa.RSAPrivateKey,
    serial: int,
    *,
    ca: bool = True,
) -> x509.Certificate:
    usage = x509.KeyUsage(False, False, False, False, False, True, True, False, False)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(FAR_PAST)
        .not_valid_after(FAR_FUTURE)
        .add_extension(
            x509.BasicConstraints(ca=ca, path_length=None if subject.startswith("ARK") or not ca else 0), True
        )
        .add_extension(usage, True)
        .sign(signer, hashes.SHA384(), rsa_padding=PSS)
    )


@dataclass
class FakeAmd:
    """ARK/ASK/ASVK shaped like AMD's (names, RSA-4096, RSASSA-PSS SHA-384 salt 48). Certificates
    built by cryptography lack AMD's explicit PSS trailer field; the real chain is tested above."""

    product: Product
    ark_key: rsa.RSAPrivateKey
    ask_key: rsa.RSAPrivateKey
    roots: AmdRoots

    @property
    def pinned(self) -> dict[Product, AmdRoots]:
        return {self.product: self.roots}

    def issue_vek(
        self,
        *,
        kind: VekKind = VekKind.VCEK,
        hw_id: bytes | None,
        spls: dict[str, int],
        key: Any = None,
        not_before: datetime = FAR_PAST,
        not_after: datetime = FAR_FUTURE,
        cn: str | None = None,
        ca: bool = False,
    ) -> tuple[bytes, Any]:
        key = key or ec.generate_private_key(ec.SECP384R1())
        issuer = self.roots.intermediate(kind)
        oids = {"bl": "3.1", "tee": "3.2", "snp": "3.3", "ucode": "3.8", "fmc": "3.9"}
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn or f"SEV-{kind.value}"))
            .issuer_name(issuer.subject)
            .public_key(key.public_key())
            .serial_number(1)  # real VEKs have 0, which the builder refuses
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(
                x509.UnrecognizedExtension(x509.ObjectIdentifier(f"{AMD_OID}.1"), _der_int(0)), False
            )
            .add_extension(
                x509.UnrecognizedExtension(
                    x509.ObjectIdentifier(f"{AMD_OID}.2"),
                    b"\x16" + bytes([len(self.product.value)]) + self.product.value.encode(),
                ),
                False,
            )
        )
        for name, value in spls.items():
            oid = x509.ObjectIdentifier(f"{AMD_OID}.{oids[name]}")
            builder = builder.add_extension(x509.UnrecognizedExtension(oid, _der_int(value)), False)
        if hw_id is not None:
            builder = builder.add_extension(
                x509.UnrecognizedExtension(x509.ObjectIdentifier(f"{AMD_OID}.4"), hw_id), False
            )
        if ca:
            builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        signer = self.ask_key  # ASK and ASVK share a key in this fake PKI
        cert = builder.sign(signer, hashes.SHA384(), rsa_padding=PSS)
        return cert.public_bytes(serialization.Encoding.DER), key

    def crl(
        self,
        revoked: list[int],
        *,
        signer: rsa.RSAPrivateKey | None = None,
        issuer: x509.Name | None = None,
        last: datetime = FAR_PAST,
        next_: datetime = FAR_FUTURE,
    ) -> x509.CertificateRevocationList:
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(issuer or self.roots.ark.subject)
            .last_update(last)
            .next_update(next_)
        )
        for serial in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(FAR_PAST).build()
            )
        # KDS CRLs are RSASSA-PSS like the rest of AMD's PKI.
        return builder.sign(signer or self.ark_key, hashes.SHA384(), rsa_padding=PSS)


def _fake_amd(product: Product) -> FakeAmd:
    ark_key = rsa.generate_private_key(65537, 4096)
    ask_key = rsa.generate_private_key(65537, 4096)
    p = product.value
    ark = _ca(f"ARK-{p}", ark_key, f"ARK-{p}", ark_key, 0x10000)
    ask = _ca(f"SEV-{p}", ask_key, f"ARK-{p}", ark_key, 0x10001)
    asvk = _ca(f"SEV-VLEK-{p}", ask_key, f"ARK-{p}", ark_key, 0x10101)
    return FakeAmd(product, ark_key, ask_key, AmdRoots(product, ark, ask, asvk))


@pytest.fixture(scope="module")
def fake() -> FakeAmd:
    return _fake_amd(Product.MILAN)


def _signed(template: bytes, key: ec.EllipticCurvePrivateKey, **patches: bytes | int) -> bytes:
    """``template`` with fields patched (offset -> bytes) and re-signed by ``key``, R/S little-endian."""
    raw = bytearray(template)
    offsets = {"signer_info": 0x48, "reported_tcb": 0x180, "chip_id": 0x1A0, "cpuid": 0x188}
    for field, value in patches.items():
        data = value if isinstance(value, bytes) else value.to_bytes(4, "little")
        raw[offsets[field] : offsets[field] + len(data)] = data
    r, s = decode_dss_signature(key.sign(bytes(raw[:0x2A0]), ec.ECDSA(hashes.SHA384())))
    raw[0x2A0:0x330] = r.to_bytes(72, "little") + s.to_bytes(72, "little")
    return bytes(raw)


MILAN_TEMPLATE = RAW["milan_v3_azure_v0"]  # v3, Milan, VCEK, TCB bl 4 tee 0 snp 24 ucode 219
MILAN_SPLS = {"bl": 4, "tee": 0, "snp": 24, "ucode": 219}
MILAN_CHIP = MILAN_TEMPLATE[0x1A0:0x1E0]


def test_synthetic_device_verifies(fake: FakeAmd) -> None:
    vek_der, key = fake.issue_vek(hw_id=MILAN_CHIP, spls=MILAN_SPLS)
    raw = _signed(MILAN_TEMPLATE, key)
    result = verify_report(raw, vek_der, fake.roots, NOW, pinned=fake.pinned, crl=fake.crl([]))
    assert result.report.chip_id == MILAN_CHIP
    # The same evidence under the real pins: the fake ARK is not AMD's.
    _fails_with(checks.ARK_NOT_PINNED, verify_report, raw, vek_der, fake.roots, NOW)


def test_unpinned_ark_with_real_intermediates(fake: FakeAmd) -> None:
    name = "milan_v2_trustee"
    roots = replace(ROOTS[Product.MILAN], ark=fake.roots.ark)
    _fails_with(checks.ARK_NOT_PINNED, verify_report, RAW[name], VEK[name], roots, _at(name))


def test_same_chip_other_tcb_under_a_valid_signature(fake: FakeAmd) -> None:
    vek_der, key = fake.issue_vek(hw_id=MILAN_CHIP, spls={**MILAN_SPLS, "ucode": 220})
    raw = _signed(MILAN_TEMPLATE, key)
    verify_report_signature(raw, load_certificate(vek_der).public_key())  # type: ignore[arg-type]
    _fails_with(checks.TCB_BINDING, verify_report, raw, vek_der, fake.roots, NOW, pinned=fake.pinned)


def test_other_chip_under_a_valid_signature(fake: FakeAmd) -> None:
    vek_der, key = fake.issue_vek(hw_id=bytes(reversed(MILAN_CHIP)), spls=MILAN_SPLS)
    _fails_with(
        checks.CHIP_ID_BINDING,
        verify_report,
        _signed(MILAN_TEMPLATE, key),
        vek_der,
        fake.roots,
        NOW,
        pinned=fake.pinned,
    )
    # A masked CHIP_ID cannot be bound to a VCEK.
    vek_der, key = fake.issue_vek(hw_id=MILAN_CHIP, spls=MILAN_SPLS)
    _fails_with(
        checks.CHIP_ID_BINDING,
        verify_report,
        _signed(MILAN_TEMPLATE, key, chip_id=bytes(64)),
        vek_der,
        fake.roots,
        NOW,
        pinned=fake.pinned,
    )
    # A VCEK without hwID.
    vek_der, key = fake.issue_vek(hw_id=None, spls=MILAN_SPLS)
    _fails_with(
        checks.CHIP_ID_BINDING,
        verify_report,
        _signed(MILAN_TEMPLATE, key),
        vek_der,
        fake.roots,
        NOW,
        pinned=fake.pinned,
    )


def test_vlek_skips_chip_binding_keeps_tcb(fake: FakeAmd) -> None:
    vek_der, key = fake.issue_vek(kind=VekKind.VLEK, hw_id=None, spls=MILAN_SPLS)
    raw = _signed(MILAN_TEMPLATE, key, signer_info=0x04, chip_id=bytes(64))
    assert verify_report(raw, vek_der, fake.roots, NOW, pinned=fake.pinned).vek.kind is VekKind.VLEK
    vek_der, key = fake.issue_vek(kind=VekKind.VLEK, hw_id=None, spls={**MILAN_SPLS, "snp": 23})
    _fails_with(
        checks.TCB_BINDING,
        verify_report,
        _signed(MILAN_TEMPLATE, key, signer_info=0x04),
        vek_der,
        fake.roots,
        NOW,
        pinned=fake.pinned,
    )


@pytest.mark.parametrize(
    ("signer_info", "check"), [(0x1C, checks.SIGNING_KEY_MISMATCH), (0x02, checks.REPORT_SIGNATURE)]
)
def test_unsigned_reports(fake: FakeAmd, signer_info: int, check: str) -> None:
    # SIGNING_KEY "none" (7) and MASK_CHIP_KEY: the firmware did not sign with a VEK.
    vek_der, key = fake.issue_vek(hw_id=MILAN_CHIP, spls=MILAN_SPLS)
    _fails_with(
        check,
        verify_report,
        _signed(MILAN_TEMPLATE, key, signer_info=signer_info),
        vek_der,
        fake.roots,
        NOW,
        pinned=fake.pinned,
    )


def test_turin_cpuid_report_under_milan_vek(fake: FakeAmd) -> None:
    vek_der, key = fake.issue_vek(hw_id=MILAN_CHIP, spls=MILAN_SPLS)
    raw = _signed(MILAN_TEMPLATE, key, cpuid=bytes([0x1A, 0x02]))
    _fails_with(checks.PRODUCT_MISMATCH, verify_report, raw, vek_der, fake.roots, NOW, pinned=fake.pinned)


def test_vek_key_kind_and_ca_rules(fake: FakeAmd) -> None:
    raw_key = ec.generate_private_key(ec.SECP384R1())
    raw = _signed(MILAN_TEMPLATE, raw_key)
    cases = [
        (
            fake.issue_vek(hw_id=MILAN_CHIP, spls=MILAN_SPLS, key=ec.generate_private_key(ec.SECP256R1()))[0],
            checks.KEY_TYPE,
        ),
        (fake.issue_vek(hw_id=MILAN_CHIP, spls=MILAN_SPLS, key=raw_key, ca=True)[0], checks.CA_CONSTRAINTS),
        (fake.issue_vek(hw_id=MILAN_CHIP, spls=MILAN_SPLS, key=raw_key, cn="SEV-ASK")[0], checks.VEK_KIND),
        (
            fake.issue_vek(hw_id=MILAN_CHIP, spls=MILAN_SPLS, key=raw_key, not_after=NOW - timedelta(days=1))[
                0
            ],
            checks.CERT_VALIDITY,
        ),
        (
            fake.issue_vek(
                hw_id=MILAN_CHIP, spls=MILAN_SPLS, key=raw_key, not_before=NOW + timedelta(days=1)
            )[0],
            checks.CERT_VALIDITY,
        ),
    ]
    for vek_der, check in cases:
        _fails_with(check, verify_report, raw, vek_der, fake.roots, NOW, pinned=fake.pinned)


def test_vek_extension_errors(fake: FakeAmd) -> None:
    raw_key = ec.generate_private_key(ec.SECP384R1())
    raw = _signed(MILAN_TEMPLATE, raw_key)
    missing = {k: v for k, v in MILAN_SPLS.items() if k != "snp"}
    vek_der, _ = fake.issue_vek(hw_id=MILAN_CHIP, spls=missing, key=raw_key)
    _fails_with("parse.vek.ext.snpSPL", verify_report, raw, vek_der, fake.roots, NOW, pinned=fake.pinned)
    vek_der, _ = fake.issue_vek(hw_id=MILAN_CHIP, spls={**MILAN_SPLS, "ucode": 256}, key=raw_key)
    _fails_with("parse.vek.ext.ucodeSPL", verify_report, raw, vek_der, fake.roots, NOW, pinned=fake.pinned)
    vek_der, _ = fake.issue_vek(hw_id=MILAN_CHIP[:63], spls=MILAN_SPLS, key=raw_key)
    _fails_with("parse.vek.ext.hwID", verify_report, raw, vek_der, fake.roots, NOW, pinned=fake.pinned)
    # A Milan VEK that carries an fmcSPL does not match a Milan TCB, which has no FMC.
    vek_der, _ = fake.issue_vek(hw_id=MILAN_CHIP, spls={**MILAN_SPLS, "fmc": 0}, key=raw_key)
    _fails_with(checks.TCB_BINDING, verify_report, raw, vek_der, fake.roots, NOW, pinned=fake.pinned)


def test_intermediate_rules(fake: FakeAmd) -> None:
    vek_der, key = fake.issue_vek(hw_id=MILAN_CHIP, spls=MILAN_SPLS)
    raw = _signed(MILAN_TEMPLATE, key)
    not_ca = _ca("SEV-Milan", fake.ask_key, "ARK-Milan", fake.ark_key, 0x10001, ca=False)
    _fails_with(
        checks.CA_CONSTRAINTS,
        verify_report,
        raw,
        vek_der,
        replace(fake.roots, ask=not_ca),
        NOW,
        pinned=fake.pinned,
    )
    small = rsa.generate_private_key(65537, 2048)
    weak = _ca("SEV-Milan", small, "ARK-Milan", fake.ark_key, 0x10001)
    _fails_with(
        checks.KEY_TYPE, verify_report, raw, vek_der, replace(fake.roots, ask=weak), NOW, pinned=fake.pinned
    )
    stranger = _ca("SEV-Milan", fake.ask_key, "ARK-Milan", small, 0x10001)  # right name, wrong signer
    _fails_with(
        checks.ASK_SIGNED_BY_ARK,
        verify_report,
        raw,
        vek_der,
        replace(fake.roots, ask=stranger),
        NOW,
        pinned=fake.pinned,
    )


def test_crl(fake: FakeAmd) -> None:
    vek_der, key = fake.issue_vek(hw_id=MILAN_CHIP, spls=MILAN_SPLS)
    raw = _signed(MILAN_TEMPLATE, key)
    ask_serial = fake.roots.ask.serial_number

    def run(crl: x509.CertificateRevocationList) -> None:
        verify_report(raw, vek_der, fake.roots, NOW, pinned=fake.pinned, crl=crl)

    run(fake.crl([]))
    run(fake.crl([fake.roots.asvk.serial_number]))  # a revoked ASVK does not affect VCEKs
    run(load_crl(fake.crl([]).public_bytes(serialization.Encoding.DER)))
    _fails_with(checks.REVOKED, run, fake.crl([ask_serial]))
    _fails_with(
        checks.REVOKED, run, load_crl(fake.crl([ask_serial]).public_bytes(serialization.Encoding.PEM))
    )
    _fails_with(checks.CRL_SIGNATURE, run, fake.crl([], signer=fake.ask_key))
    _fails_with(checks.CRL_SIGNATURE, run, fake.crl([], issuer=fake.roots.ask.subject))
    _fails_with(checks.CRL_VALIDITY, run, fake.crl([], next_=NOW - timedelta(days=1)))
    _fails_with(checks.CRL_VALIDITY, run, fake.crl([], last=NOW + timedelta(days=1)))


def test_crl_for_real_chain_must_be_from_the_real_ark(fake: FakeAmd) -> None:
    name = "milan_v2_trustee"
    forged = fake.crl([], issuer=ROOTS[Product.MILAN].ark.subject)  # AMD's name, not AMD's key
    _fails_with(checks.CRL_SIGNATURE, verify_report, RAW[name], VEK[name], ROOTS, _at(name), crl=forged)


def test_turin_synthetic_short_hwid() -> None:
    fake_turin = _fake_amd(Product.TURIN)
    template = RAW["turin_oak_oc"]
    chip = template[0x1A0:0x1A8]
    spls = {"fmc": 0, "bl": 1, "tee": 0, "snp": 2, "ucode": 71}
    vek_der, key = fake_turin.issue_vek(hw_id=chip, spls=spls)
    verify_report(_signed(template, key), vek_der, fake_turin.roots, NOW, pinned=fake_turin.pinned)
    # CHIP_ID with a non-zero tail is not that chip.
    tail = chip + b"\x01" + bytes(55)
    _fails_with(
        checks.CHIP_ID_BINDING,
        verify_report,
        _signed(template, key, chip_id=tail),
        vek_der,
        fake_turin.roots,
        NOW,
        pinned=fake_turin.pinned,
    )
    # The FMC SPL is bound too, and must be present.
    vek_der, key = fake_turin.issue_vek(hw_id=chip, spls={**spls, "fmc": 1})
    _fails_with(
        checks.TCB_BINDING,
        verify_report,
        _signed(template, key),
        vek_der,
        fake_turin.roots,
        NOW,
        pinned=fake_turin.pinned,
    )
    vek_der, key = fake_turin.issue_vek(hw_id=chip, spls={k: v for k, v in spls.items() if k != "fmc"})
    _fails_with(
        checks.TCB_BINDING,
        verify_report,
        _signed(template, key),
        vek_der,
        fake_turin.roots,
        NOW,
        pinned=fake_turin.pinned,
    )
