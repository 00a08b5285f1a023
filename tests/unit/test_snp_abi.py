"""SNP report layout: every real report decodes to its expected.json values, every reserved range
and undefined value is rejected by name, and fuzzed input only ever raises ParseError."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.errors import ParseError
from shared.platforms.snp.abi import (
    REPORT_SIZE,
    SIGNED_REGION_END,
    SnpReport,
    parse_report,
    read_chip_id,
    read_reported_tcb,
    signed_region,
)
from shared.platforms.snp.fields import (
    GuestPolicy,
    PlatformInfo,
    Product,
    SigningKey,
    TcbVersion,
    product_from_cpuid,
)

DATA = Path(__file__).parents[1] / "data/snp"
CASES = sorted(p.name for p in (DATA / "reports").iterdir())


def _case(name: str) -> tuple[bytes, dict[str, Any]]:
    folder = DATA / "reports" / name
    return (folder / "report.bin").read_bytes(), json.loads((folder / "expected.json").read_text())


RAW = {name: _case(name)[0] for name in CASES}
EXPECTED = {name: _case(name)[1] for name in CASES}
V2 = next(n for n in CASES if EXPECTED[n]["report_version"] == 2)
V3 = next(n for n in CASES if EXPECTED[n]["report_version"] == 3)
V5 = next(n for n in CASES if EXPECTED[n]["report_version"] == 5)
TURIN = "turin_oak_oc"


def _parse(name: str) -> SnpReport:
    return parse_report(RAW[name], Product(EXPECTED[name]["product"]))


def _patched(raw: bytes, offset: int, value: bytes) -> bytes:
    return raw[:offset] + value + raw[offset + len(value) :]


# ---- expected.json -> our decoding -------------------------------------------------------------


def _tcb_view(tcb: TcbVersion) -> dict[str, Any]:
    return {**tcb.components(), "raw_hex": tcb.raw.hex(), "u64": hex(tcb.u64)}


def _policy_view(p: GuestPolicy) -> dict[str, Any]:
    return {
        "raw": hex(p.raw),
        "abi_minor": p.abi_minor,
        "abi_major": p.abi_major,
        "smt": p.smt,
        "reserved_bit17_must_be_1": p.reserved_bit17,
        "migrate_ma": p.migrate_ma,
        "debug": p.debug,
        "single_socket": p.single_socket,
        "cxl_allow": p.cxl_allow,
        "mem_aes_256_xts": p.mem_aes_256_xts,
        "rapl_dis": p.rapl_dis,
        "ciphertext_hiding": p.ciphertext_hiding,
        "page_swap_disable": p.page_swap_disable,
        "reserved_63_26_nonzero": p.reserved_bits != 0,
    }


def _platform_view(p: PlatformInfo) -> dict[str, Any]:
    return {
        "raw": hex(p.raw),
        "smt_en": p.smt_enabled,
        "tsme_en": p.tsme_enabled,
        "ecc_en": p.ecc_enabled,
        "rapl_dis": p.rapl_disabled,
        "ciphertext_hiding_en": p.ciphertext_hiding_enabled,
        "alias_check_complete": p.alias_check_complete,
        "tio_en": p.tio_enabled,
    }


def _view(r: SnpReport) -> dict[str, Any]:
    """Our decoding, keyed like expected.json ``report``. Fields a version lacks are left out."""
    view: dict[str, Any] = {
        "version": r.version,
        "guest_svn": r.guest_svn,
        "policy": _policy_view(r.policy),
        "family_id": r.family_id.hex(),
        "image_id": r.image_id.hex(),
        "vmpl": r.vmpl,
        "signature_algo": r.signature_algo,
        "platform_info": _platform_view(r.platform_info),
        "signer_info": {
            "raw": hex(r.signer_info.raw),
            "author_key_en": int(r.signer_info.author_key_en),
            "mask_chip_key": int(r.signer_info.mask_chip_key),
            "signing_key": r.signer_info.signing_key.name,
        },
        "report_data": r.report_data.hex(),
        "measurement": r.measurement.hex(),
        "host_data": r.host_data.hex(),
        "id_key_digest": r.id_key_digest.hex(),
        "author_key_digest": r.author_key_digest.hex(),
        "report_id": r.report_id.hex(),
        "report_id_ma": r.report_id_ma.hex(),
        "chip_id": r.chip_id.hex(),
        "product_guess": r.product.value,
        "current_tcb": _tcb_view(r.current_tcb),
        "reported_tcb": _tcb_view(r.reported_tcb),
        "committed_tcb": _tcb_view(r.committed_tcb),
        "launch_tcb": _tcb_view(r.launch_tcb),
        "current_version": str(r.current_version),
        "committed_version": str(r.committed_version),
        "sig_r_le": r.signature_r.hex(),
        "sig_s_le": r.signature_s.hex(),
        "sig_tail_zero": not any(r.signature_r[48:]) and not any(r.signature_s[48:]),
        "reserved_nonzero": [],  # parse_report rejects any non-zero reserved byte
    }
    if r.cpuid_fam_id is not None:
        view.update(cpuid_fam_id=r.cpuid_fam_id, cpuid_mod_id=r.cpuid_mod_id, cpuid_step=r.cpuid_step)
    if r.launch_mit_vector is not None:
        view.update(
            launch_mit_vector=hex(r.launch_mit_vector), current_mit_vector=hex(r.current_mit_vector or 0)
        )
    return view


@pytest.mark.parametrize("name", CASES)
def test_real_report_decodes_to_expected(name: str) -> None:
    expected = EXPECTED[name]["report"]
    got = _view(_parse(name))
    # Same key set both ways: nothing in expected.json goes unchecked, and we decode nothing a
    # version does not have (cpuid before v3, mitigation vectors before v5).
    assert set(got) == set(expected)
    for key, want in expected.items():
        if isinstance(want, dict):
            assert set(got[key]) == set(want), key
        assert got[key] == want, key


@pytest.mark.parametrize("name", CASES)
def test_case_identity(name: str) -> None:
    report = _parse(name)
    exp = EXPECTED[name]
    assert report.version == exp["report_version"]
    assert report.product.value == exp["product"]
    assert report.signing_key.name == exp["signer"]
    assert signed_region(RAW[name]) == RAW[name][:SIGNED_REGION_END]
    assert read_reported_tcb(RAW[name], report.product) == report.reported_tcb
    assert read_chip_id(RAW[name]) == report.chip_id


@pytest.mark.parametrize("name", [n for n in CASES if EXPECTED[n]["report_version"] >= 3])
def test_v3_product_comes_from_cpuid(name: str) -> None:
    assert parse_report(RAW[name]) == _parse(name)
    # The report's own CPUID wins over a caller's hint; verify compares it with the VEK.
    other = Product.GENOA if EXPECTED[name]["product"] != "Genoa" else Product.MILAN
    assert parse_report(RAW[name], other).product.value == EXPECTED[name]["product"]


def test_v2_needs_a_product() -> None:
    with pytest.raises(ParseError) as info:
        parse_report(RAW[V2])
    assert info.value.reason == "parse.report.product"
    assert parse_report(RAW[V2], Product.GENOA).product is Product.GENOA


def test_version_4_reads_like_version_3() -> None:
    v4 = _patched(RAW[V3], 0, struct.pack("<I", 4))
    report = parse_report(v4)
    assert report.version == 4
    assert report.cpuid_fam_id == parse_report(RAW[V3]).cpuid_fam_id
    assert report.launch_mit_vector is None
    # The bytes v5 assigned stay reserved for v4: an unknown meaning fails closed.
    with pytest.raises(ParseError) as info:
        parse_report(_patched(v4, 0x1F8, b"\x01"))
    assert info.value.field == "report.reserved.0x1f8-0x29f"


@pytest.mark.parametrize("version", [0, 1, 6, 0xFFFFFFFF])
def test_undefined_versions(version: int) -> None:
    with pytest.raises(ParseError) as info:
        parse_report(_patched(RAW[V5], 0, struct.pack("<I", version)), Product.GENOA)
    assert info.value.reason == "parse.report.version"


@pytest.mark.parametrize(
    ("name", "offset", "field"),
    [
        (V5, 0x04C, "report.reserved.0x04c-0x04f"),
        (V5, 0x04F, "report.reserved.0x04c-0x04f"),
        (V2, 0x188, "report.reserved.0x188-0x19f"),  # CPUID bytes are reserved in v2
        (V2, 0x19F, "report.reserved.0x188-0x19f"),
        (V3, 0x18B, "report.reserved.0x18b-0x19f"),
        (V3, 0x19F, "report.reserved.0x18b-0x19f"),
        (V5, 0x1EB, "report.reserved.0x1eb-0x1eb"),
        (V5, 0x1EF, "report.reserved.0x1ef-0x1ef"),
        (V3, 0x1F8, "report.reserved.0x1f8-0x29f"),  # mitigation vectors are reserved before v5
        (V3, 0x29F, "report.reserved.0x1f8-0x29f"),
        (V5, 0x208, "report.reserved.0x208-0x29f"),
        (V5, 0x29F, "report.reserved.0x208-0x29f"),
        (V5, 0x330, "report.reserved.0x330-0x49f"),
        (V5, 0x49F, "report.reserved.0x330-0x49f"),
    ],
)
def test_reserved_ranges_must_be_zero(name: str, offset: int, field: str) -> None:
    with pytest.raises(ParseError) as info:
        parse_report(_patched(RAW[name], offset, b"\x80"), Product(EXPECTED[name]["product"]))
    assert info.value.field == field
    assert info.value.reason == f"parse.{field}"


def test_v5_mitigation_vectors_decode() -> None:
    raw = _patched(RAW[V5], 0x1F8, struct.pack("<QQ", 0x5, 0x1_0000_0003))
    report = parse_report(raw)
    assert (report.launch_mit_vector, report.current_mit_vector) == (5, 0x1_0000_0003)


@pytest.mark.parametrize("algo", [0, 2, 0x100])
def test_signature_algo_must_be_ecdsa_p384(algo: int) -> None:
    with pytest.raises(ParseError) as info:
        parse_report(_patched(RAW[V5], 0x34, struct.pack("<I", algo)))
    assert info.value.reason == "parse.report.signature_algo"


@pytest.mark.parametrize(
    ("signer_info", "expected"),
    [
        (0x00, (SigningKey.VCEK, False, False)),
        (0x04, (SigningKey.VLEK, False, False)),
        (0x1C, (SigningKey.NONE, False, False)),
        (0x03, (SigningKey.VCEK, True, True)),
        (0x05, (SigningKey.VLEK, True, False)),
    ],
)
def test_signer_info_decodes(signer_info: int, expected: tuple[SigningKey, bool, bool]) -> None:
    info = parse_report(_patched(RAW[V5], 0x48, struct.pack("<I", signer_info))).signer_info
    assert (info.signing_key, info.author_key_en, info.mask_chip_key) == expected


@pytest.mark.parametrize(
    ("signer_info", "field"),
    [
        (2 << 2, "report.signer_info.signing_key"),
        (6 << 2, "report.signer_info.signing_key"),
        (1 << 5, "report.signer_info.reserved"),
        (1 << 31, "report.signer_info.reserved"),
    ],
)
def test_signer_info_rejects_undefined(signer_info: int, field: str) -> None:
    with pytest.raises(ParseError) as info:
        parse_report(_patched(RAW[V5], 0x48, struct.pack("<I", signer_info)))
    assert info.value.field == field


def test_platform_info_unknown_bits_are_reported_not_rejected() -> None:
    turin = parse_report(RAW[TURIN])
    assert turin.platform_info.raw == 0x67
    assert turin.platform_info.unknown_bits == 0x40  # bit 6: set on real Turin, name unconfirmed
    raw = _patched(RAW[TURIN], 0x40, struct.pack("<Q", 0x67 | 1 << 40 | 1 << 63))
    info = parse_report(raw).platform_info
    assert info.unknown_bits == 0x40 | 1 << 40 | 1 << 63
    assert info.smt_enabled and info.tsme_enabled and info.ecc_enabled and info.alias_check_complete


def test_policy_bits() -> None:
    p = GuestPolicy.decode(0xB0000 | 0x0102)
    assert (p.abi_major, p.abi_minor, p.smt, p.reserved_bit17, p.debug, p.migrate_ma) == (
        1,
        2,
        True,
        True,
        True,
        False,
    )
    every = GuestPolicy.decode((1 << 26) - 1)
    assert all(
        (
            every.migrate_ma,
            every.single_socket,
            every.cxl_allow,
            every.mem_aes_256_xts,
            every.rapl_dis,
            every.ciphertext_hiding,
            every.page_swap_disable,
        )
    )
    assert every.reserved_bits == 0
    assert GuestPolicy.decode(1 << 26 | 1 << 63).reserved_bits == 1 << 26 | 1 << 63
    # Undefined policy bits parse; policy (validate) decides what to do with them.
    raw = _patched(RAW[V5], 0x08, struct.pack("<Q", 0x30000 | 1 << 40))
    assert parse_report(raw).policy.reserved_bits == 1 << 40


@pytest.mark.parametrize(
    ("raw_hex", "product", "components"),
    [
        ("0400000000001bde", Product.MILAN, {"bootloader": 4, "tee": 0, "snp": 27, "microcode": 222}),
        ("0a00000000001954", Product.GENOA, {"bootloader": 10, "tee": 0, "snp": 25, "microcode": 84}),
        (
            "0001000200000047",
            Product.TURIN,
            {"fmc": 0, "bootloader": 1, "tee": 0, "snp": 2, "microcode": 71},
        ),
        ("0301020400000047", Product.TURIN, {"fmc": 3, "bootloader": 1, "tee": 2, "snp": 4, "microcode": 71}),
    ],
)
def test_tcb_layouts(raw_hex: str, product: Product, components: dict[str, int]) -> None:
    tcb = TcbVersion.decode(bytes.fromhex(raw_hex), product)
    assert tcb.components() == components
    assert list(tcb.components()) == list(components)  # KDS parameter order
    assert tcb.raw.hex() == raw_hex


@pytest.mark.parametrize(
    ("family", "model", "product"),
    [
        (0x19, 0x01, Product.MILAN),
        (0x19, 0x00, Product.MILAN),
        (0x19, 0x0F, Product.MILAN),
        (0x19, 0x11, Product.GENOA),
        (0x19, 0x10, Product.GENOA),
        (0x19, 0xA0, Product.GENOA),  # Zen 4c (Bergamo/Siena) uses Genoa's KDS path and roots
        (0x19, 0xAF, Product.GENOA),
        (0x1A, 0x02, Product.TURIN),
        (0x1A, 0x11, Product.TURIN),
        (0x19, 0x21, None),
        (0x1A, 0x12, None),
        (0x17, 0x31, None),
        (0x00, 0x00, None),
    ],
)
def test_product_from_cpuid(family: int, model: int, product: Product | None) -> None:
    assert product_from_cpuid(family, model) is product


def test_unknown_cpuid_needs_a_product() -> None:
    raw = _patched(RAW[V5], 0x188, bytes([0x1B, 0x00]))
    with pytest.raises(ParseError) as info:
        parse_report(raw)
    assert info.value.reason == "parse.report.cpuid"
    assert parse_report(raw, Product.TURIN).product is Product.TURIN


def test_turin_report_fields() -> None:
    report = parse_report(RAW[TURIN])
    assert report.product is Product.TURIN
    assert report.reported_tcb.fmc == 0
    assert report.chip_id[:8].hex() == "3b42092f69c656d3" and not any(report.chip_id[8:])


@pytest.mark.parametrize("buf", [bytearray, memoryview])
def test_bytes_like_input(buf: type) -> None:
    assert parse_report(buf(RAW[V5])) == parse_report(RAW[V5])


@pytest.mark.parametrize("value", [None, 0, 1184, "x" * 1184, [0] * 1184, object()])
def test_non_bytes_rejected(value: object) -> None:
    with pytest.raises(ParseError) as info:
        parse_report(value)  # type: ignore[arg-type]
    assert info.value.reason == "parse.report.type"


@pytest.mark.parametrize("size", [0, 1, SIGNED_REGION_END, REPORT_SIZE - 1, REPORT_SIZE + 1, 2 * REPORT_SIZE])
def test_wrong_sizes(size: int) -> None:
    data = (RAW[V5] * 2)[:size]
    for call in (parse_report, signed_region):
        with pytest.raises(ParseError) as info:
            call(data)
        assert info.value.reason == "parse.report.size"


def test_product_hint_type_checked() -> None:
    with pytest.raises(ParseError) as info:
        parse_report(RAW[V2], "Milan")  # type: ignore[arg-type]
    assert info.value.reason == "parse.report.product"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2 * REPORT_SIZE))
def test_random_bytes_only_raise_parse_error(data: bytes) -> None:
    try:
        parse_report(data)
    except ParseError as exc:
        assert exc.reason.startswith("parse.report.")


@settings(max_examples=500, deadline=None)
@given(
    st.sampled_from(CASES),
    st.lists(st.tuples(st.integers(0, REPORT_SIZE - 1), st.integers(0, 255)), min_size=1, max_size=8),
    st.sampled_from([None, *Product]),
)
def test_mutated_reports_only_raise_parse_error(
    name: str, edits: list[tuple[int, int]], hint: Product | None
) -> None:
    raw = bytearray(RAW[name])
    for offset, value in edits:
        raw[offset] = value
    try:
        report = parse_report(bytes(raw), hint)
    except ParseError as exc:
        assert exc.reason.startswith("parse.report.")
    else:
        assert report.signature_r == bytes(raw[0x2A0:0x2E8])


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(CASES), st.integers(0, REPORT_SIZE - 1))
def test_truncations_raise_size_error(name: str, length: int) -> None:
    with pytest.raises(ParseError) as info:
        parse_report(RAW[name][:length], Product.MILAN)
    assert info.value.reason == "parse.report.size"
