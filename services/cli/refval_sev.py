"""`remits refval sev-measure`: the expected SEV / SEV-ES launch digest (GCTX.LD) of a QEMU + OVMF guest.

The digest is computed with the ``sev-snp-measure`` library (``--mode sev`` / ``--mode seves``), the tool
operators cross-check against. It is what the firmware's MEASURE is verified for
(``shared.platforms.sev.measure.check_measurement``); store it with
``remits refval add sev launch_digest.<workload> <hex>`` (``--json --workload W`` prints that record's
body); the workload's guest policy is ``remits refval add sev policy.<workload> 0x7``.

SEV-ES note: the VMSA pages the library generates depend on the vCPU signature (``--vcpu-type`` or
``--vcpu-sig``, placed in RDX) and follow recent QEMU (MXCSR 0x1f80, x87 FCW 0x37f); a VMM that leaves
those at zero (older QEMU) measures different VMSAs.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import sys
from pathlib import Path

TOOL = "sev-snp-measure"
REFVAL_TEE = "sev"
REFVAL_NAME = "launch_digest"
# how the library fails on inputs it cannot measure (plain asserts, RuntimeErrors)
_LIBRARY_ERRORS = (RuntimeError, ValueError, AssertionError, KeyError, IndexError, TypeError)


class SevMeasureError(Exception):
    """An input the digest cannot be computed from; ``field`` names it."""

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(f"{field}: {detail}")
        self.field = field


def register(actions: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``sev-measure`` to the ``remits refval`` subcommands."""
    measure = actions.add_parser(
        "sev-measure", help="compute an SEV / SEV-ES launch digest (sev-snp-measure); prints it"
    )
    measure.add_argument("--mode", required=True, choices=("sev", "seves"))
    measure.add_argument("--ovmf", required=True, type=Path)
    measure.add_argument("--kernel", type=Path)
    measure.add_argument("--initrd", type=Path)
    measure.add_argument("--append")
    measure.add_argument("--vcpus", type=int, help="SEV-ES: number of vCPUs (one VMSA each)")
    measure.add_argument("--vcpu-type", help="SEV-ES: QEMU CPU model, e.g. EPYC-v4, EPYC-Milan")
    measure.add_argument("--vcpu-sig", type=lambda v: int(v, 0), help="SEV-ES: CPUID signature instead")
    measure.add_argument("--vmm-type", default="QEMU", help="SEV-ES: QEMU or ec2")
    measure.add_argument("--json", action="store_true", help="print a `refval add` record body")
    measure.add_argument("--workload", help="the workload id the digest is registered for (launch_digest.<workload>)")
    measure.set_defaults(run=cmd_sev_measure)


def sev_launch_digest(
    mode: str,
    ovmf: Path,
    *,
    kernel: Path | None = None,
    initrd: Path | None = None,
    append: str | None = None,
    vcpus: int | None = None,
    vcpu_type: str | None = None,
    vcpu_sig: int | None = None,
    vmm_type: str = "QEMU",
) -> tuple[str, dict[str, str]]:
    """(digest hex, inputs described) or ``SevMeasureError``."""
    from sevsnpmeasure import guest, vcpu_types
    from sevsnpmeasure.sev_mode import SevMode
    from sevsnpmeasure.vmm_types import VMMType

    if mode not in ("sev", "seves"):
        raise SevMeasureError("mode", f"must be sev or seves, got {mode!r}")
    if kernel is None and (initrd is not None or append is not None):
        raise SevMeasureError("kernel", "--initrd and --append are only measured with --kernel")
    if append is not None and "\x00" in append:
        raise SevMeasureError("append", "must not contain NUL characters")
    described: dict[str, str] = {"mode": mode}
    for name, path in (("ovmf", ovmf), ("kernel", kernel), ("initrd", initrd)):
        if path is not None:
            try:
                described[f"{name}.sha256"] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
            except OSError as exc:
                raise SevMeasureError(name, f"cannot read {path}: {exc.strerror or exc}") from None
    if kernel is not None:
        described["append"] = append or ""
    sig = 0
    vmm = VMMType.QEMU
    if mode == "seves":
        if type(vcpus) is not int or vcpus < 1:
            raise SevMeasureError("vcpus", f"SEV-ES needs --vcpus of at least 1, got {vcpus!r}")
        if (vcpu_type is None) == (vcpu_sig is None):
            raise SevMeasureError("vcpu_type", "SEV-ES needs exactly one of --vcpu-type and --vcpu-sig")
        if vcpu_type is not None:
            if vcpu_type not in vcpu_types.CPU_SIGS:
                known = ", ".join(vcpu_types.CPU_SIGS)
                raise SevMeasureError("vcpu_type", f"unknown vCPU type {vcpu_type!r}; accepted: {known}")
            sig = int(vcpu_types.CPU_SIGS[vcpu_type])
            described["vcpu_type"] = vcpu_type
        else:
            sig = int(vcpu_sig)  # type: ignore[arg-type]
        matches = [m for m in VMMType if m.name.lower() == vmm_type.lower()]
        if not matches:
            raise SevMeasureError("vmm_type", f"unknown VMM type {vmm_type!r}")
        vmm = matches[0]
        described |= {"vcpus": str(vcpus), "vcpu_sig": hex(sig), "vmm_type": vmm.name}
    elif vcpus is not None or vcpu_type is not None or vcpu_sig is not None:
        raise SevMeasureError("mode", "--vcpus/--vcpu-type/--vcpu-sig only apply to --mode seves")
    try:
        digest = guest.calc_launch_digest(
            mode=SevMode.SEV if mode == "sev" else SevMode.SEV_ES,
            vcpus=vcpus or 0,
            vcpu_sig=sig,
            ovmf_file=str(ovmf),
            kernel=str(kernel) if kernel is not None else "",
            initrd=str(initrd) if initrd is not None else "",
            append=append or "",
            guest_features=0,
            vmm_type=vmm,
        )
    except _LIBRARY_ERRORS as exc:
        raise SevMeasureError("ovmf", f"{TOOL} cannot measure {ovmf}: {exc or type(exc).__name__}") from exc
    if not isinstance(digest, bytes) or len(digest) != 32:
        raise RuntimeError(f"{TOOL} returned no 32-byte digest")
    described["tool"] = f"{TOOL} {_tool_version()}"
    return digest.hex(), described


def _tool_version() -> str:
    try:
        return importlib.metadata.version(TOOL)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def cmd_sev_measure(args: argparse.Namespace) -> int:
    try:
        digest, inputs = sev_launch_digest(
            args.mode, args.ovmf, kernel=args.kernel, initrd=args.initrd, append=args.append,
            vcpus=args.vcpus, vcpu_type=args.vcpu_type, vcpu_sig=args.vcpu_sig, vmm_type=args.vmm_type,
        )  # fmt: skip
    except SevMeasureError as exc:
        print(f"remits refval sev-measure: {exc}", file=sys.stderr)
        return 2
    if args.json:
        record = {
            "tee": REFVAL_TEE, "name": f"{REFVAL_NAME}.{args.workload}" if args.workload else REFVAL_NAME,
            "values": [digest],
            "source": inputs["tool"], "inputs": inputs,
        }  # fmt: skip
        print(json.dumps(record, indent=2, sort_keys=True))
    else:
        print(digest)
    return 0
