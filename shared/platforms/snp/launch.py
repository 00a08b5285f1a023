"""The expected SEV-SNP launch MEASUREMENT of a guest, computed with the ``sev-snp-measure`` library.

The MEASUREMENT in an SNP report is the launch digest the AMD secure processor accumulates while the
VMM loads the firmware, the SEV metadata pages and one VMSA per vCPU. Reproducing it from the same
inputs turns "this OVMF, this kernel and command line, N vCPUs of this type" into a reference value.
The hash chain itself is the library's (``sevsnpmeasure.guest.calc_launch_digest``, what its command
line runs): a private re-implementation could drift from the tool operators cross-check against.

What this module adds: every input is checked first, with a ``LaunchInputError`` naming it, because the
library fails with bare asserts and RuntimeErrors or, worse, returns a digest for firmware no SNP guest
can launch; and the result records the SHA-256 of exactly the bytes that were measured.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import tempfile
from dataclasses import dataclass
from pathlib import Path

from sevsnpmeasure import guest, vcpu_types
from sevsnpmeasure.ovmf import OVMF, SectionType
from sevsnpmeasure.sev_mode import SevMode
from sevsnpmeasure.vmm_types import VMMType

from shared.errors import ParseError

MEASUREMENT_SIZE = 48  # SHA-384: the MEASUREMENT field of the attestation report
TOOL = "sev-snp-measure"
_PAGE = 4096
_CHUNK = 1 << 20
# how the library fails on firmware it cannot parse or measure (it checks sizes with plain asserts)
_LIBRARY_ERRORS = (RuntimeError, ValueError, AssertionError, KeyError, IndexError, TypeError)


class LaunchInputError(ParseError):
    """An input the launch digest cannot be computed from; ``field`` names it (``ovmf``, ``kernel``,
    ``initrd``, ``append``, ``vcpus``, ``vcpu_type``, ``vmm_type``, ``guest_features``)."""

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(field, detail, prefix="snp_launch")


@dataclass(frozen=True)
class LaunchInputs:
    ovmf: Path
    kernel: Path | None
    initrd: Path | None
    append: str | None
    vcpus: int
    vcpu_type: str  # a QEMU CPU model known to sev-snp-measure, e.g. "EPYC-v4", "EPYC-Milan"
    vmm_type: str = "QEMU"  # QEMU, ec2 or gce: the cloud VMMs measure metadata pages differently
    guest_features: int = 0x1  # VMSA SEV_FEATURES; 0x1 (SNPActive) is the tool's default


@dataclass(frozen=True)
class LaunchDigest:
    measurement: str  # 96 lowercase hex digits, as the report's MEASUREMENT
    inputs: dict[str, str]  # what was measured: file SHA-256s, parameters, tool version


def expected_launch_digest(inputs: LaunchInputs) -> LaunchDigest:
    """The launch digest of an SNP guest booted from ``inputs``, or ``LaunchInputError``."""
    _check_kernel_args(inputs)
    _check_vcpus(inputs.vcpus)
    vcpu_sig = _vcpu_sig(inputs.vcpu_type)
    vmm = _vmm_type(inputs.vmm_type)
    features = _check_guest_features(inputs.guest_features)
    files = {"ovmf": inputs.ovmf, "kernel": inputs.kernel, "initrd": inputs.initrd}

    with tempfile.TemporaryDirectory(prefix="remits-snp-measure-") as tmp:
        # The library opens the files by name itself. It measures private copies, so that the hashes
        # recorded below describe exactly the bytes measured even if an input is replaced meanwhile.
        copies: dict[str, str] = {}
        described: dict[str, str] = {}
        for name, path in files.items():
            if path is not None:
                copies[name] = str(Path(tmp) / name)
                described[f"{name}.sha256"] = _copy_and_hash(name, Path(path), Path(copies[name]))
        _check_ovmf(copies["ovmf"], inputs.ovmf, wants_kernel_hashes=inputs.kernel is not None)
        try:
            digest = guest.calc_launch_digest(
                mode=SevMode.SEV_SNP,
                vcpus=inputs.vcpus,
                vcpu_sig=vcpu_sig,
                ovmf_file=copies["ovmf"],
                kernel=copies.get("kernel", ""),  # the library tests "if kernel:", so absent is ""
                initrd=copies.get("initrd", ""),
                append=inputs.append or "",
                guest_features=features,
                snp_ovmf_hash_str="",  # never a precomputed OVMF hash: the digest must cover the file hashed
                vmm_type=vmm,
            )
        except _LIBRARY_ERRORS as exc:
            raise LaunchInputError(
                "ovmf", f"{TOOL} cannot measure {inputs.ovmf}: {exc or type(exc).__name__}"
            ) from exc
    if not isinstance(digest, bytes) or len(digest) != MEASUREMENT_SIZE:
        # a library bug, not a bad input: no field to name
        raise RuntimeError(f"{TOOL} returned no {MEASUREMENT_SIZE}-byte digest")

    if inputs.kernel is not None:
        # measured even when not given: the hashes table then holds the hash of an empty command line
        described["append"] = inputs.append or ""
    described |= {
        "vcpus": str(inputs.vcpus),
        "vcpu_type": inputs.vcpu_type,
        "vmm_type": vmm.name,
        "guest_features": hex(features),
        "tool": f"{TOOL} {tool_version()}",
    }
    return LaunchDigest(measurement=digest.hex(), inputs=described)


def tool_version() -> str:
    try:
        return importlib.metadata.version(TOOL)
    except importlib.metadata.PackageNotFoundError:  # imported from a source tree, not installed
        return "unknown"


def vcpu_type_names() -> list[str]:
    """The vCPU types the installed library knows (QEMU CPU model names)."""
    return list(vcpu_types.CPU_SIGS)


# --- checks ---------------------------------------------------------------------------------------


def _check_kernel_args(inputs: LaunchInputs) -> None:
    # QEMU only fills the SEV hashes table (kernel, initrd, command line) when it loads the kernel itself
    if inputs.kernel is None and inputs.initrd is not None:
        raise LaunchInputError("initrd", "is only measured together with a kernel")
    if inputs.kernel is None and inputs.append is not None:
        raise LaunchInputError("append", "is only measured together with a kernel")
    if inputs.append is not None and (not isinstance(inputs.append, str) or "\x00" in inputs.append):
        # the table hashes the command line NUL-terminated; an embedded NUL would end it early in the guest
        raise LaunchInputError("append", "must be a string without NUL characters")


def _check_vcpus(vcpus: object) -> None:
    if type(vcpus) is not int or vcpus < 1:
        raise LaunchInputError("vcpus", f"must be an integer of at least 1, got {vcpus!r}")


def _vcpu_sig(vcpu_type: object) -> int:
    if not isinstance(vcpu_type, str) or vcpu_type not in vcpu_types.CPU_SIGS:
        accepted = ", ".join(vcpu_type_names())
        raise LaunchInputError("vcpu_type", f"unknown vCPU type {vcpu_type!r}; accepted: {accepted}")
    return int(vcpu_types.CPU_SIGS[vcpu_type])


def _vmm_type(vmm_type: object) -> VMMType:
    # the library spells its members QEMU, ec2, gce; accept any case
    for member in VMMType:
        if isinstance(vmm_type, str) and member.name.lower() == vmm_type.lower():
            return member
    accepted = ", ".join(member.name for member in VMMType)
    raise LaunchInputError("vmm_type", f"unknown VMM type {vmm_type!r}; accepted: {accepted}")


def _check_guest_features(guest_features: object) -> int:
    if type(guest_features) is not int or not 0 <= guest_features < 1 << 64:
        raise LaunchInputError("guest_features", f"must be a 64-bit unsigned integer, got {guest_features!r}")
    return guest_features


def _check_ovmf(path: str, shown: Path, *, wants_kernel_hashes: bool) -> None:
    """Check the copy at ``path``; messages name the operator's file, ``shown``."""
    try:
        ovmf = OVMF(path)
        if ovmf.size() == 0 or ovmf.size() % _PAGE:
            raise LaunchInputError(
                "ovmf", f"{shown}: size {ovmf.size()} is not a whole number of 4 KiB pages"
            )
        # without SEV metadata the library still returns a digest, but no SNP guest launches from such
        # firmware (no secrets or CPUID page): that value must never become a reference value
        if not ovmf.metadata_items():
            raise LaunchInputError(
                "ovmf", f"{shown} has no SEV metadata: not a firmware an SNP guest can launch"
            )
        ovmf.sev_es_reset_eip()  # every VMSA but the first starts there
        if wants_kernel_hashes and not (
            ovmf.has_metadata_section(SectionType.SNP_KERNEL_HASHES) and ovmf.is_sev_hashes_table_supported()
        ):
            raise LaunchInputError(
                "ovmf",
                f"{shown} has no SEV hashes table (SNP_KERNEL_HASHES), so it cannot measure "
                "--kernel/--initrd/--append; use an AmdSev build (OvmfPkg/AmdSev/AmdSevX64.dsc)",
            )
    except _LIBRARY_ERRORS as exc:
        raise LaunchInputError(
            "ovmf", f"{shown} is not an OVMF image {TOOL} can read: {exc or type(exc).__name__}"
        ) from exc


def _copy_and_hash(field: str, source: Path, target: Path) -> str:
    digest = hashlib.sha256()
    try:
        with source.open("rb") as src, target.open("wb") as dst:
            while chunk := src.read(_CHUNK):
                digest.update(chunk)
                dst.write(chunk)
    except FileNotFoundError:
        raise LaunchInputError(field, f"{source} does not exist") from None
    except IsADirectoryError:
        raise LaunchInputError(field, f"{source} is a directory, not a file") from None
    except OSError as exc:
        raise LaunchInputError(field, f"cannot read {source}: {exc.strerror}") from None
    return digest.hexdigest()
