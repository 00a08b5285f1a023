"""AMD SEV / SEV-ES LAUNCH_MEASURE: checking the firmware's launch measurement, and the guest policy.

The firmware hashes every LAUNCH_UPDATE_DATA region (then, for SEV-ES, every VMSA) into the launch
digest GCTX.LD and returns MEASURE[32] || MNONCE[16] (QEMU ``query-sev-launch-measure`` and libvirt
give the base64 of these 48 bytes), where::

    MEASURE = HMAC-SHA256(TIK, 0x04 || API_MAJOR || API_MINOR || BUILD || POLICY (u32 LE) || GCTX.LD || MNONCE)

Only the guest owner and the firmware know the TIK (``session.py``), so a MEASURE that verifies for a
reference launch digest proves that this firmware launched that image with that policy. API_MAJOR,
API_MINOR and BUILD are what the host reported (PLATFORM_STATUS): a lie only makes the check fail.

Pure: the reference digests come from reference values (``remits refval sev-measure``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from shared.errors import VerificationError
from shared.platforms.base import Violation
from shared.platforms.sev.session import KEY_SIZE, SevParseError, SevPolicy, need_bytes, policy_value

MEASUREMENT_MISMATCH = "sev.measurement_mismatch"  # check name (VerificationError.check)

MEASURE_SIZE = 32
MNONCE_SIZE = 16
DIGEST_SIZE = 32  # GCTX.LD, SHA-256
MEASURE_CONTEXT = 0x04


def _byte(field: str, value: object) -> bytes:
    if type(value) is not int or not 0 <= value <= 0xFF:
        raise SevParseError(field, f"must be 0..255, got {value!r}")
    return bytes((value,))


def launch_measure(
    tik: bytes,
    api_major: int,
    api_minor: int,
    build: int,
    policy: SevPolicy | int,
    digest: bytes,
    mnonce: bytes,
) -> bytes:
    """MEASURE as the firmware computes it (32 bytes)."""
    message = (
        bytes((MEASURE_CONTEXT,))
        + _byte("api_major", api_major)
        + _byte("api_minor", api_minor)
        + _byte("build", build)
        + policy_value(policy).to_bytes(4, "little")
        + need_bytes("launch_digest", digest, DIGEST_SIZE)
        + need_bytes("mnonce", mnonce, MNONCE_SIZE)
    )
    return hmac.digest(need_bytes("tik", tik, KEY_SIZE), message, hashlib.sha256)


@dataclass(frozen=True)
class LaunchMeasurement:
    """The 48 bytes LAUNCH_MEASURE returns."""

    measure: bytes
    mnonce: bytes

    def to_bytes(self) -> bytes:
        return self.measure + self.mnonce

    def to_base64(self) -> str:
        return base64.b64encode(self.to_bytes()).decode()

    @classmethod
    def parse(cls, blob: bytes | str) -> LaunchMeasurement:
        """From the 48 raw bytes, or their base64 (what QEMU and libvirt print)."""
        if isinstance(blob, str):
            try:
                blob = base64.b64decode(blob.strip(), validate=True)
            except (binascii.Error, ValueError) as exc:
                raise SevParseError("measurement", f"not base64: {exc}") from None
        data = need_bytes("measurement", blob, MEASURE_SIZE + MNONCE_SIZE)
        return cls(data[:MEASURE_SIZE], data[MEASURE_SIZE:])


def check_measurement(
    measurement: LaunchMeasurement | bytes | str,
    tik: bytes,
    *,
    api_major: int,
    api_minor: int,
    build: int,
    policy: SevPolicy | int,
    launch_digests: Iterable[bytes | str],
) -> bytes:
    """The reference launch digest that ``measurement`` (MEASURE || MNONCE) verifies for, or
    ``VerificationError`` ``sev.measurement_mismatch``. Every candidate is computed and compared in
    constant time (``hmac.compare_digest``); the first match is returned. ``launch_digests`` holds
    32-byte digests or their hex (as reference values store them)."""
    got = measurement if isinstance(measurement, LaunchMeasurement) else LaunchMeasurement.parse(measurement)
    candidates = [_digest_bytes(d) for d in launch_digests]
    matched: bytes | None = None
    for digest in candidates:
        want = launch_measure(tik, api_major, api_minor, build, policy, digest, got.mnonce)
        if hmac.compare_digest(want, got.measure) and matched is None:
            matched = digest
    if matched is None:
        detail = (
            "no reference launch digest configured"
            if not candidates
            else f"MEASURE matches none of {len(candidates)} reference launch digest(s) for api "
            f"{api_major}.{api_minor} build {build}, policy {policy_value(policy):#010x}"
        )
        raise VerificationError(MEASUREMENT_MISMATCH, detail)
    return matched


def _digest_bytes(value: bytes | str) -> bytes:
    if isinstance(value, str):
        try:
            value = bytes.fromhex(value)
        except ValueError:
            raise SevParseError("launch_digests", f"not hex: {value!r}") from None
    return need_bytes("launch_digests", value, DIGEST_SIZE)


# --- guest policy ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class FirmwareVersion:
    """What PLATFORM_STATUS reported (and the MEASURE authenticated)."""

    api_major: int
    api_minor: int
    build: int


@dataclass(frozen=True)
class PolicyRequirements:
    """What the guest owner accepts. Defaults are the production-safe choice except ``require_es``
    (plain SEV guests exist; set it to refuse them)."""

    allow_debug: bool = False
    allow_key_sharing: bool = False
    require_es: bool = False
    require_nosend: bool = False
    min_api_major: int = 0
    min_api_minor: int = 0
    min_build: int = 0


def _flag(name: str, got: bool, want: bool) -> Violation | None:
    return None if got == want else Violation(name, str(got).lower(), str(want).lower())


def validate_policy(
    policy: SevPolicy | int,
    requirements: PolicyRequirements,
    firmware: FirmwareVersion | None = None,
) -> list[Violation]:
    """Every violation of ``requirements`` by the guest ``policy`` (and, when given, by the platform
    ``firmware``); an empty list means acceptable.

    The minimum firmware version is checked on the reported firmware when given (API version, then
    build within the same version: ``(major, minor, build)`` ordered lexicographically), and on the
    policy's own API minimum otherwise."""
    p = policy if isinstance(policy, SevPolicy) else SevPolicy.decode(policy)
    out: list[Violation | None] = []
    if not requirements.allow_debug:
        out.append(_flag("policy.nodbg", p.nodbg, True))
    if not requirements.allow_key_sharing:
        out.append(_flag("policy.noks", p.noks, True))
    if requirements.require_es:
        out.append(_flag("policy.es", p.es, True))
    if requirements.require_nosend:
        out.append(_flag("policy.nosend", p.nosend, True))
    want_api = (requirements.min_api_major, requirements.min_api_minor)
    if firmware is None:
        if (p.api_major, p.api_minor) < want_api:
            want_text = f">= {want_api[0]}.{want_api[1]}"
            out.append(Violation("policy.api_version", f"{p.api_major}.{p.api_minor}", want_text))
    else:
        got = (firmware.api_major, firmware.api_minor, firmware.build)
        want = (*want_api, requirements.min_build)
        if got < want:
            out.append(
                Violation(
                    "firmware.version", "{}.{} build {}".format(*got), ">= {}.{} build {}".format(*want)
                )
            )
        if (firmware.api_major, firmware.api_minor) < (p.api_major, p.api_minor):
            # the firmware refuses LAUNCH_START for such a policy: a report claiming it ran is false
            out.append(
                Violation(
                    "firmware.api_version",
                    f"{firmware.api_major}.{firmware.api_minor}",
                    f">= {p.api_major}.{p.api_minor} (the policy's minimum)",
                )
            )
    return [v for v in out if v is not None]


# --- launch digest (GCTX.LD) of a QEMU + OVMF guest -----------------------------------------------

SEV_HASH_TABLE_GUID = "9438d606-4f22-4cc9-b479-a793d411fd21"
SEV_CMDLINE_GUID = "97d02dd8-bd20-4c94-aa78-e7714d36ab2a"
SEV_INITRD_GUID = "44baf731-3a2f-4bd7-9af1-41e29169781d"
SEV_KERNEL_GUID = "4de79437-abd2-427f-b835-d5b172d2045b"
_HASH_ENTRY_SIZE = 16 + 2 + 32


def sev_hashes_table(kernel: bytes, initrd: bytes = b"", append: str | None = None) -> bytes:
    """The SEV hashes table QEMU places in OVMF for direct kernel boot (padded to 16 bytes): GUID,
    u16 table length, then {GUID, u16 length 50, SHA-256} for the command line (hashed with its
    trailing NUL; an absent command line is hashed as a lone NUL), the initrd and the kernel."""
    cmdline = (append or "").encode() + b"\x00"
    entries = b"".join(
        _guid_le(guid) + _HASH_ENTRY_SIZE.to_bytes(2, "little") + hashlib.sha256(data).digest()
        for guid, data in ((SEV_CMDLINE_GUID, cmdline), (SEV_INITRD_GUID, initrd), (SEV_KERNEL_GUID, kernel))
    )
    table = _guid_le(SEV_HASH_TABLE_GUID) + (16 + 2 + len(entries)).to_bytes(2, "little") + entries
    return table + bytes(-len(table) % 16)


def launch_digest(
    ovmf: bytes,
    *,
    kernel: bytes | None = None,
    initrd: bytes | None = None,
    append: str | None = None,
    vmsas: Iterable[bytes] = (),
) -> bytes:
    """GCTX.LD = SHA-256(OVMF [|| SEV hashes table when a kernel is given] [|| VMSA pages (SEV-ES),
    vCPU 0 first])."""
    digest = hashlib.sha256(bytes(ovmf))
    if kernel is not None:
        digest.update(sev_hashes_table(kernel, initrd or b"", append))
    elif initrd is not None or append is not None:
        raise SevParseError("kernel", "initrd and command line are only measured with a kernel")
    for index, page in enumerate(vmsas):
        digest.update(need_bytes(f"vmsas[{index}]", page, 4096))
    return digest.digest()


def _guid_le(text: str) -> bytes:
    return uuid.UUID(text).bytes_le
