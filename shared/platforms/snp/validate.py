"""Policy over the fields of a verified SNP report, and the claims a report contributes.

Pure: takes an ``SnpReport`` that ``verify`` already authenticated. ``validate`` returns every
violation at once so an operator can fix a policy or an image in one round.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shared.platforms.base import Violation
from shared.platforms.snp.abi import SnpReport
from shared.platforms.snp.fields import TcbVersion

_TCB_COMPONENTS = ("bootloader", "tee", "snp", "microcode", "fmc")


@dataclass(frozen=True)
class MinimumTcb:
    """Lowest acceptable SVN per TCB component (rollback protection). ``fmc`` applies to Turin only,
    the one product whose TCB has that component."""

    bootloader: int = 0
    tee: int = 0
    snp: int = 0
    microcode: int = 0
    fmc: int = 0


@dataclass(frozen=True)
class SnpPolicy:
    """What a relying party accepts. Defaults are the production-safe choice.

    Tri-state booleans (``bool | None``): ``None`` does not look at the property, a bool pins it.
    ``require_no_smt=True`` wants SMT forbidden by the guest policy and off on the platform;
    ``require_single_socket=True`` wants the guest policy to restrict it to one socket.
    ``allowed_measurements`` empty means any measurement; ``expected_host_data`` and
    ``expected_report_data`` (the full 32 / 64 bytes) are compared exactly when set.
    """

    allow_debug: bool = False
    allow_migration_agent: bool = False
    require_no_smt: bool | None = None
    require_single_socket: bool | None = None
    required_vmpl: int | None = 0
    max_vmpl: int | None = None
    min_abi_major: int = 0
    min_abi_minor: int = 0
    min_guest_svn: int = 0
    min_tcb: MinimumTcb = field(default_factory=MinimumTcb)
    allowed_measurements: frozenset[bytes] = frozenset()
    expected_host_data: bytes | None = None
    expected_report_data: bytes | None = None


def _flag(name: str, got: bool, want: bool) -> Violation | None:
    return None if got == want else Violation(name, str(got).lower(), str(want).lower())


def _min_tcb_violations(tcb: TcbVersion, minimum: MinimumTcb) -> list[Violation]:
    got = tcb.components()
    out: list[Violation] = []
    for name in _TCB_COMPONENTS:
        want = getattr(minimum, name)
        # A component the product does not have (fmc before Turin) cannot be below a minimum.
        if name in got and got[name] < want:
            out.append(Violation(f"reported_tcb.{name}", str(got[name]), f">= {want}"))
    return out


def validate(report: SnpReport, policy: SnpPolicy) -> list[Violation]:
    """All policy violations of ``report`` (empty list = acceptable)."""
    out: list[Violation | None] = []
    gp = report.policy

    # Guest policy fixed at launch.
    if gp.debug and not policy.allow_debug:
        out.append(Violation("policy.debug", "true", "false"))
    if gp.migrate_ma and not policy.allow_migration_agent:
        out.append(Violation("policy.migrate_ma", "true", "false"))
    if policy.require_no_smt is not None:
        out.append(_flag("policy.smt", gp.smt, not policy.require_no_smt))
        if policy.require_no_smt:
            out.append(_flag("platform_info.smt_enabled", report.platform_info.smt_enabled, False))
    if policy.require_single_socket is not None:
        out.append(_flag("policy.single_socket", gp.single_socket, policy.require_single_socket))
    # Bit 17 is defined as always 1 and firmware refuses to launch otherwise; undefined bits may be
    # restrictions or permissions we cannot judge, so both are refused rather than guessed at.
    if not gp.reserved_bit17:
        out.append(Violation("policy.reserved_bit17", "0", "1"))
    if gp.reserved_bits:
        out.append(Violation("policy.reserved_bits", hex(gp.reserved_bits), "0x0"))

    # Where the request came from inside the guest.
    if policy.required_vmpl is not None and report.vmpl != policy.required_vmpl:
        out.append(Violation("vmpl", str(report.vmpl), str(policy.required_vmpl)))
    if policy.max_vmpl is not None and report.vmpl > policy.max_vmpl:
        out.append(Violation("vmpl", str(report.vmpl), f"<= {policy.max_vmpl}"))

    # Firmware and TCB. REPORTED_TCB is the value the signing key is derived from, so it is the one
    # firmware cannot overstate; CURRENT_TCB is never below it.
    fw = report.current_version
    if (fw.major, fw.minor) < (policy.min_abi_major, policy.min_abi_minor):
        out.append(Violation("current_version", str(fw), f">= {policy.min_abi_major}.{policy.min_abi_minor}"))
    out.extend(_min_tcb_violations(report.reported_tcb, policy.min_tcb))
    if report.guest_svn < policy.min_guest_svn:
        out.append(Violation("guest_svn", str(report.guest_svn), f">= {policy.min_guest_svn}"))

    # Identity of the guest and what it bound into the report.
    if policy.allowed_measurements and report.measurement not in policy.allowed_measurements:
        want = ", ".join(sorted(m.hex() for m in policy.allowed_measurements))
        out.append(Violation("measurement", report.measurement.hex(), f"one of: {want}"))
    if policy.expected_host_data is not None and report.host_data != policy.expected_host_data:
        out.append(Violation("host_data", report.host_data.hex(), policy.expected_host_data.hex()))
    if policy.expected_report_data is not None and report.report_data != policy.expected_report_data:
        out.append(Violation("report_data", report.report_data.hex(), policy.expected_report_data.hex()))
    return [v for v in out if v is not None]


def _tcb_claims(prefix: str, tcb: TcbVersion) -> dict[str, object]:
    # Every component key is always present (fmc is None before Turin) so claim names are stable.
    parts = tcb.components()
    return {f"{prefix}.{name}": parts.get(name) for name in _TCB_COMPONENTS}


def claims(report: SnpReport) -> dict[str, object]:
    """Stable claim names for the attestation result; bytes as lowercase hex."""
    gp = report.policy
    pi = report.platform_info
    out: dict[str, object] = {
        "snp.version": report.version,
        "snp.product": report.product.value,
        "snp.signing_key": report.signing_key.name,
        "snp.measurement": report.measurement.hex(),
        "snp.chip_id": report.chip_id.hex(),
        "snp.report_data": report.report_data.hex(),
        "snp.host_data": report.host_data.hex(),
        "snp.family_id": report.family_id.hex(),
        "snp.image_id": report.image_id.hex(),
        "snp.id_key_digest": report.id_key_digest.hex(),
        "snp.author_key_digest": report.author_key_digest.hex(),
        "snp.report_id": report.report_id.hex(),
        "snp.report_id_ma": report.report_id_ma.hex(),
        "snp.vmpl": report.vmpl,
        "snp.guest_svn": report.guest_svn,
        "snp.current_version": str(report.current_version),
        "snp.committed_version": str(report.committed_version),
        "snp.policy.raw": hex(gp.raw),
        "snp.policy.abi_major": gp.abi_major,
        "snp.policy.abi_minor": gp.abi_minor,
        "snp.policy.smt": gp.smt,
        "snp.policy.migrate_ma": gp.migrate_ma,
        "snp.policy.debug": gp.debug,
        "snp.policy.single_socket": gp.single_socket,
        "snp.policy.cxl_allow": gp.cxl_allow,
        "snp.policy.mem_aes_256_xts": gp.mem_aes_256_xts,
        "snp.policy.rapl_dis": gp.rapl_dis,
        "snp.policy.ciphertext_hiding": gp.ciphertext_hiding,
        "snp.policy.page_swap_disable": gp.page_swap_disable,
        "snp.platform_info.raw": hex(pi.raw),
        "snp.platform_info.smt_enabled": pi.smt_enabled,
        "snp.platform_info.tsme_enabled": pi.tsme_enabled,
        "snp.platform_info.ecc_enabled": pi.ecc_enabled,
        "snp.platform_info.rapl_disabled": pi.rapl_disabled,
        "snp.platform_info.ciphertext_hiding_enabled": pi.ciphertext_hiding_enabled,
        "snp.platform_info.alias_check_complete": pi.alias_check_complete,
        "snp.platform_info.tio_enabled": pi.tio_enabled,
        "snp.platform_info.unknown_bits": hex(pi.unknown_bits),
        "snp.signer_info.author_key_en": report.signer_info.author_key_en,
        "snp.signer_info.mask_chip_key": report.signer_info.mask_chip_key,
        "snp.cpuid_fam_id": report.cpuid_fam_id,
        "snp.cpuid_mod_id": report.cpuid_mod_id,
        "snp.cpuid_step": report.cpuid_step,
        "snp.launch_mit_vector": report.launch_mit_vector,
        "snp.current_mit_vector": report.current_mit_vector,
    }
    out.update(_tcb_claims("snp.reported_tcb", report.reported_tcb))
    out.update(_tcb_claims("snp.current_tcb", report.current_tcb))
    out.update(_tcb_claims("snp.committed_tcb", report.committed_tcb))
    out.update(_tcb_claims("snp.launch_tcb", report.launch_tcb))
    return out
