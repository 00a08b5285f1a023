"""SNP policy: every violation is reported at once as a base.Violation, defaults are production-safe,
and claims have stable names and lowercase hex across all report versions and products."""

from __future__ import annotations

import json
import struct
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from shared.platforms.base import Violation
from shared.platforms.snp.abi import SnpReport, parse_report
from shared.platforms.snp.fields import Product
from shared.platforms.snp.validate import MinimumTcb, SnpPolicy, claims, validate

DATA = Path(__file__).parents[1] / "data/snp/reports"
CASES = sorted(p.name for p in DATA.iterdir())
EXPECTED: dict[str, dict[str, Any]] = {n: json.loads((DATA / n / "expected.json").read_text()) for n in CASES}
RAW = {n: (DATA / n / "report.bin").read_bytes() for n in CASES}


def _report(name: str, **patches: tuple[int, bytes]) -> SnpReport:
    """Parse ``name`` with bytes patched in (offset, value). Validation does not look at the
    signature, so patched reports are fine here."""
    raw = bytearray(RAW[name])
    for offset, value in patches.values():
        raw[offset : offset + len(value)] = value
    return parse_report(bytes(raw), Product(EXPECTED[name]["product"]))


def _fields(violations: list[Violation]) -> list[str]:
    return [v.field for v in violations]


# Default policy over the real cases: only the debug guest and the VMPL-1 guest are refused.
DEFAULT_VIOLATIONS = {
    "milan_v2_gosevguest": [Violation("policy.debug", "true", "false")],
    "milan_v3_vlek_aws_trustee": [Violation("vmpl", "1", "0")],
}


@pytest.mark.parametrize("name", CASES)
def test_default_policy_on_real_reports(name: str) -> None:
    assert validate(_report(name), SnpPolicy()) == DEFAULT_VIOLATIONS.get(name, [])


def test_violations_are_base_violations() -> None:
    (v,) = validate(_report("milan_v2_gosevguest"), SnpPolicy())
    assert type(v) is Violation


def test_all_violations_together() -> None:
    name = "milan_v3_azure_v0"  # Milan v3: policy 0x3001f, vmpl 0, TCB 4/0/24/219, firmware 1.55
    report = _report(
        name,
        policy=(0x08, struct.pack("<Q", 0x3001F | 1 << 18 | 1 << 19 | 1 << 30)),
        vmpl=(0x30, struct.pack("<I", 2)),
        guest_svn=(0x04, struct.pack("<I", 1)),
    )
    policy = SnpPolicy(
        required_vmpl=0,
        max_vmpl=1,
        min_abi_major=1,
        min_abi_minor=56,
        min_guest_svn=2,
        min_tcb=MinimumTcb(bootloader=5, tee=1, snp=24, microcode=220, fmc=9),
        allowed_measurements=frozenset({b"\x01" * 48}),
        expected_host_data=b"\x02" * 32,
        expected_report_data=b"\x03" * 64,
    )
    assert _fields(validate(report, policy)) == [
        "policy.debug",
        "policy.migrate_ma",
        "policy.reserved_bits",
        "vmpl",
        "vmpl",
        "current_version",
        "reported_tcb.bootloader",
        "reported_tcb.tee",
        "reported_tcb.microcode",  # snp 24 >= 24 passes; fmc does not exist on Milan
        "guest_svn",
        "measurement",
        "host_data",
        "report_data",
    ]
    got = {v.field: v for v in validate(report, policy)}
    assert got["current_version"] == Violation("current_version", "1.55.29", ">= 1.56")
    assert got["reported_tcb.microcode"] == Violation("reported_tcb.microcode", "219", ">= 220")
    assert got["policy.reserved_bits"] == Violation("policy.reserved_bits", hex(1 << 30), "0x0")
    assert got["measurement"].got == report.measurement.hex()
    assert got["measurement"].want == "one of: " + "01" * 48


def test_everything_matching_passes() -> None:
    name = "genoa_oak_oc"
    report = _report(name)
    policy = SnpPolicy(
        min_abi_major=1,
        min_abi_minor=55,
        min_tcb=MinimumTcb(bootloader=10, tee=0, snp=25, microcode=84, fmc=200),  # fmc: not on Genoa
        allowed_measurements=frozenset({report.measurement, b"\x00" * 48}),
        expected_host_data=bytes(32),
        expected_report_data=report.report_data,
    )
    assert validate(report, policy) == []


def test_turin_fmc_minimum() -> None:
    report = _report("turin_oak_oc")  # fmc 0
    assert validate(report, SnpPolicy(min_tcb=MinimumTcb(fmc=0))) == []
    assert validate(report, SnpPolicy(min_tcb=MinimumTcb(fmc=1))) == [
        Violation("reported_tcb.fmc", "0", ">= 1")
    ]


def test_rollback_uses_reported_tcb() -> None:
    report = _report("milan_v2_trustee")  # REPORTED ucode 115, CURRENT 206
    assert _fields(validate(report, SnpPolicy(min_tcb=MinimumTcb(microcode=116)))) == [
        "reported_tcb.microcode"
    ]


def test_debug_and_migration_agent_allowed_when_configured() -> None:
    report = _report("milan_v2_gosevguest", policy=(0x08, struct.pack("<Q", 0xB0000 | 1 << 18)))
    assert _fields(validate(report, SnpPolicy())) == ["policy.debug", "policy.migrate_ma"]
    assert validate(report, SnpPolicy(allow_debug=True, allow_migration_agent=True)) == []


@pytest.mark.parametrize(
    ("policy_bits", "platform_bits", "require", "fields"),
    [
        (0x30000, 0x25, None, []),
        (0x30000, 0x25, True, ["policy.smt", "platform_info.smt_enabled"]),
        (0x20000, 0x24, True, []),
        (0x20000, 0x25, True, ["platform_info.smt_enabled"]),
        (0x30000, 0x25, False, []),
        (0x20000, 0x24, False, ["policy.smt"]),
    ],
)
def test_require_no_smt(
    policy_bits: int, platform_bits: int, require: bool | None, fields: list[str]
) -> None:
    report = _report(
        "genoa_oak_oc",
        policy=(0x08, struct.pack("<Q", policy_bits)),
        platform=(0x40, struct.pack("<Q", platform_bits)),
    )
    assert _fields(validate(report, SnpPolicy(require_no_smt=require))) == fields


@pytest.mark.parametrize(
    ("single", "require", "fields"),
    [
        (False, None, []),
        (True, None, []),
        (False, True, ["policy.single_socket"]),
        (True, True, []),
        (True, False, ["policy.single_socket"]),
    ],
)
def test_require_single_socket(single: bool, require: bool | None, fields: list[str]) -> None:
    bits = 0x30000 | (1 << 20 if single else 0)
    report = _report("genoa_oak_oc", policy=(0x08, struct.pack("<Q", bits)))
    assert _fields(validate(report, SnpPolicy(require_single_socket=require))) == fields


def test_vmpl_rules() -> None:
    report = _report("milan_v3_vlek_aws_trustee")  # VMPL 1
    assert validate(report, SnpPolicy(required_vmpl=1)) == []
    assert validate(report, SnpPolicy(required_vmpl=None, max_vmpl=1)) == []
    assert validate(report, SnpPolicy(required_vmpl=None, max_vmpl=0)) == [Violation("vmpl", "1", "<= 0")]
    assert validate(report, SnpPolicy(required_vmpl=None)) == []


def test_policy_bit17_clear_is_refused() -> None:
    report = _report("genoa_oak_oc", policy=(0x08, struct.pack("<Q", 0x10000)))
    assert validate(report, SnpPolicy()) == [Violation("policy.reserved_bit17", "0", "1")]


def test_exact_bytes_comparisons() -> None:
    report = _report("genoa_oak_oc")
    # A 32-byte nonce is not the 64-byte REPORT_DATA, even when it is its prefix.
    short = SnpPolicy(expected_report_data=report.report_data[:32])
    assert _fields(validate(report, short)) == ["report_data"]
    assert _fields(validate(report, SnpPolicy(expected_host_data=b"\x00" * 31))) == ["host_data"]
    assert validate(report, SnpPolicy(allowed_measurements=frozenset())) == []


def test_policy_is_frozen() -> None:
    policy = SnpPolicy()
    with pytest.raises(AttributeError):
        policy.allow_debug = True  # type: ignore[misc]
    assert replace(policy, allow_debug=True).allow_debug


# ---- claims ------------------------------------------------------------------------------------

CLAIM_KEYS = {
    "snp.version",
    "snp.product",
    "snp.signing_key",
    "snp.measurement",
    "snp.chip_id",
    "snp.report_data",
    "snp.host_data",
    "snp.family_id",
    "snp.image_id",
    "snp.id_key_digest",
    "snp.author_key_digest",
    "snp.report_id",
    "snp.report_id_ma",
    "snp.vmpl",
    "snp.guest_svn",
    "snp.current_version",
    "snp.committed_version",
    "snp.policy.raw",
    "snp.policy.abi_major",
    "snp.policy.abi_minor",
    "snp.policy.smt",
    "snp.policy.migrate_ma",
    "snp.policy.debug",
    "snp.policy.single_socket",
    "snp.policy.cxl_allow",
    "snp.policy.mem_aes_256_xts",
    "snp.policy.rapl_dis",
    "snp.policy.ciphertext_hiding",
    "snp.policy.page_swap_disable",
    "snp.platform_info.raw",
    "snp.platform_info.smt_enabled",
    "snp.platform_info.tsme_enabled",
    "snp.platform_info.ecc_enabled",
    "snp.platform_info.rapl_disabled",
    "snp.platform_info.ciphertext_hiding_enabled",
    "snp.platform_info.alias_check_complete",
    "snp.platform_info.tio_enabled",
    "snp.platform_info.unknown_bits",
    "snp.signer_info.author_key_en",
    "snp.signer_info.mask_chip_key",
    "snp.cpuid_fam_id",
    "snp.cpuid_mod_id",
    "snp.cpuid_step",
    "snp.launch_mit_vector",
    "snp.current_mit_vector",
} | {
    f"snp.{tcb}.{part}"
    for tcb in ("reported_tcb", "current_tcb", "committed_tcb", "launch_tcb")
    for part in ("bootloader", "tee", "snp", "microcode", "fmc")
}


@pytest.mark.parametrize("name", CASES)
def test_claims_match_expected(name: str) -> None:
    exp = EXPECTED[name]
    rep = exp["report"]
    got = claims(_report(name))
    assert set(got) == CLAIM_KEYS  # the same names for every version and product
    for key in (
        "measurement",
        "chip_id",
        "report_data",
        "host_data",
        "family_id",
        "image_id",
        "report_id",
        "report_id_ma",
        "id_key_digest",
        "author_key_digest",
    ):
        assert got[f"snp.{key}"] == rep[key]
        assert got[f"snp.{key}"] == str(got[f"snp.{key}"]).lower()
    assert got["snp.version"] == rep["version"]
    assert got["snp.vmpl"] == rep["vmpl"]
    assert got["snp.guest_svn"] == rep["guest_svn"]
    assert got["snp.product"] == exp["product"]
    assert got["snp.signing_key"] == exp["signer"]
    assert got["snp.current_version"] == rep["current_version"]
    assert got["snp.policy.raw"] == rep["policy"]["raw"]
    assert got["snp.policy.debug"] == rep["policy"]["debug"]
    assert got["snp.platform_info.smt_enabled"] == rep["platform_info"]["smt_en"]
    for tcb in ("reported_tcb", "current_tcb", "committed_tcb", "launch_tcb"):
        for part in ("bootloader", "tee", "snp", "microcode", "fmc"):
            assert got[f"snp.{tcb}.{part}"] == rep[tcb].get(part)
    assert got["snp.cpuid_fam_id"] == rep.get("cpuid_fam_id")
    mit = rep.get("launch_mit_vector")
    assert got["snp.launch_mit_vector"] == (None if mit is None else int(mit, 16))


def test_claims_are_json_ready() -> None:
    for name in CASES:
        json.dumps(claims(_report(name)))
