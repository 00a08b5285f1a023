"""Expected SNP launch digests (shared.platforms.snp.launch).

The oracle is sev-snp-measure's own command line, run as a separate process on the same files: the
module must give exactly what an operator would get from the tool. Firmware: a synthetic OVMF image
built here from the documented layout (footer GUID table, SEV metadata), so the tests run everywhere,
and a real OVMF from the machine when one is installed (Debian/Ubuntu: ``apt-get install ovmf``).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import struct
import subprocess
import sys
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from shared.errors import ParseError
from shared.platforms.snp.launch import (
    LaunchDigest,
    LaunchInputError,
    LaunchInputs,
    expected_launch_digest,
    vcpu_type_names,
)

# --- a synthetic OVMF ------------------------------------------------------------------------------
# edk2 (OvmfPkg/ResetVector) ends the image with a GUIDed table read backwards from 32 bytes before the
# end: each entry is its data, a u16 size (data + 18) and a GUID; the last one is the footer, whose size
# covers the whole table. The SEV metadata entry points (as an offset from the end) at an "ASEV" header
# with (gpa, size, type) items.
_FOOTER_GUID = "96b582de-1fb2-45f7-baea-a366c55a082d"
_RESET_BLOCK_GUID = "00f771de-1a7e-4fcb-890e-68c77e2fb44e"
_SEV_METADATA_GUID = "dc886566-984a-4798-a75e-5585a7bf67cc"
_HASH_TABLE_GUID = "7255371f-3a3b-4b04-927b-1da6efa8d454"
_SNP_SEC_MEM, _SNP_SECRETS, _CPUID, _SNP_KERNEL_HASHES = 1, 2, 3, 0x10


def _entry(guid: str, data: bytes) -> bytes:
    return data + struct.pack("<H", len(data) + 18) + uuid.UUID(guid).bytes_le


def synthetic_ovmf(*, kernel_hashes: bool = True, metadata: bool = True, pages: int = 16) -> bytes:
    size = pages * 4096
    sections = [
        (0x800000, 0x2000, _SNP_SEC_MEM),
        (0x802000, 0x1000, _SNP_SECRETS),
        (0x803000, 0x1000, _CPUID),
    ]
    if kernel_hashes:
        sections.append((0x804000, 0x1000, _SNP_KERNEL_HASHES))
    header = b"ASEV" + struct.pack("<III", 16 + 12 * len(sections), 1, len(sections))
    items = b"".join(struct.pack("<III", *section) for section in sections)
    entries = _entry(_RESET_BLOCK_GUID, struct.pack("<I", 0x80B004))
    if metadata:
        entries += _entry(_SEV_METADATA_GUID, struct.pack("<I", size - 4096))  # header at offset 4096
    if kernel_hashes:
        entries += _entry(_HASH_TABLE_GUID, struct.pack("<II", 0x804C00, 0x400))
    table = entries + struct.pack("<H", len(entries) + 18) + uuid.UUID(_FOOTER_GUID).bytes_le
    image = bytearray(b"\x90" * size)
    image[4096 : 4096 + len(header + items)] = header + items
    image[size - 32 - len(table) : size - 32] = table
    return bytes(image)


# What sev-snp-measure 0.0.13 printed for 2 vCPUs of EPYC-Milan on synthetic_ovmf(kernel_hashes=False)
# ("no kernel") and on synthetic_ovmf() with kernel b"k\n", initrd b"i\n", --append console=ttyS0
# ("kernel"). Guards against a change of the builder or of the library's results, which the live oracle
# alone would not notice.
PINNED_SYNTHETIC = {
    "no kernel": "cb22809c661efa1d5cdfdfd2965c127683095107bb0518fd56e37b532bf9175ffb5fdcb4e3074c7ed9f7cb8fafeb0fdd",
    "kernel": "1df0aced9067ce7fd7a514469a023cbb9e9c04b6a744ad7110e14584231f44f0745649570e8ee76f5c1156528faf3c8c",
}
# Debian bookworm, package ovmf 2022.11-6+deb12u2, /usr/share/ovmf/OVMF.fd: 4 vCPUs of EPYC-v4
DEBIAN_OVMF_SHA256 = "7b456907dd0786d415999e801a1ac4637b8ed4d7cf5378cfc6edbe5e574dd773"
DEBIAN_OVMF_4_EPYC_V4 = (
    "32ac9d7a17d28f7cd4404a4516d2f00519668c40ada2062351c36767e908eb3f090d66c33ab10f80150e00a4385b6d0f"
)


def cli_digest(
    ovmf: Path,
    vcpus: int,
    vcpu_type: str,
    *,
    kernel: Path | None = None,
    initrd: Path | None = None,
    append: str | None = None,
    vmm_type: str = "QEMU",
    guest_features: int = 0x1,
) -> str:
    """The oracle: sev-snp-measure's command line in a separate process."""
    args = [sys.executable, "-m", "sevsnpmeasure.cli", "--mode", "snp", "--ovmf", str(ovmf)]
    args += ["--vcpus", str(vcpus), "--vcpu-type", vcpu_type, "--vmm-type", vmm_type]
    args += ["--guest-features", hex(guest_features)]
    for flag, value in (("--kernel", kernel), ("--initrd", initrd), ("--append", append)):
        if value is not None:
            args += [flag, str(value)]
    out = subprocess.run(args, capture_output=True, text=True, check=True, timeout=60)
    return out.stdout.strip()


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    paths = {
        "ovmf": tmp_path / "OVMF.amdsev.fd",
        "plain_ovmf": tmp_path / "OVMF.fd",
        "kernel": tmp_path / "vmlinuz",
        "initrd": tmp_path / "initrd.img",
    }
    paths["ovmf"].write_bytes(synthetic_ovmf())
    paths["plain_ovmf"].write_bytes(synthetic_ovmf(kernel_hashes=False))
    paths["kernel"].write_bytes(b"MZ fake kernel\n" * 100)
    paths["initrd"].write_bytes(b"070701 fake initrd\n" * 100)
    return paths


def _inputs(ovmf: Path, **changes: object) -> LaunchInputs:
    base = LaunchInputs(ovmf=ovmf, kernel=None, initrd=None, append=None, vcpus=2, vcpu_type="EPYC-Milan")
    return replace(base, **changes)  # type: ignore[arg-type]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- digests against the tool ---------------------------------------------------------------------


def test_synthetic_without_kernel_matches_the_tool(files: dict[str, Path]) -> None:
    got = expected_launch_digest(_inputs(files["plain_ovmf"]))
    assert isinstance(got, LaunchDigest)
    assert (
        got.measurement == cli_digest(files["plain_ovmf"], 2, "EPYC-Milan") == PINNED_SYNTHETIC["no kernel"]
    )
    assert len(got.measurement) == 96 and got.measurement == got.measurement.lower()


def test_synthetic_with_kernel_matches_the_tool(files: dict[str, Path]) -> None:
    ovmf, kernel, initrd = files["ovmf"], files["kernel"], files["initrd"]
    kernel_file = ovmf.parent / "k"
    initrd_file = ovmf.parent / "i"
    kernel_file.write_bytes(b"k\n")
    initrd_file.write_bytes(b"i\n")
    pinned = expected_launch_digest(
        _inputs(ovmf, kernel=kernel_file, initrd=initrd_file, append="console=ttyS0")
    )
    assert pinned.measurement == PINNED_SYNTHETIC["kernel"]

    got = expected_launch_digest(_inputs(ovmf, kernel=kernel, initrd=initrd, append="console=ttyS0 quiet"))
    assert got.measurement == cli_digest(
        ovmf, 2, "EPYC-Milan", kernel=kernel, initrd=initrd, append="console=ttyS0 quiet"
    )


@pytest.mark.parametrize(
    "changes",
    [
        {"vcpus": 1},
        {"vcpus": 8, "vcpu_type": "EPYC-Genoa"},
        {"vcpu_type": "EPYC-v4"},
        {"vmm_type": "ec2"},
        {"vmm_type": "gce"},
        {"guest_features": 0x21},
    ],
)
def test_parameters_match_the_tool(files: dict[str, Path], changes: dict[str, object]) -> None:
    inputs = _inputs(files["plain_ovmf"], **changes)
    got = expected_launch_digest(inputs)
    assert got.measurement == cli_digest(
        inputs.ovmf,
        inputs.vcpus,
        inputs.vcpu_type,
        vmm_type=inputs.vmm_type,
        guest_features=inputs.guest_features,
    )
    assert got.measurement != PINNED_SYNTHETIC["no kernel"]


def test_every_kernel_input_reaches_the_digest(files: dict[str, Path], tmp_path: Path) -> None:
    base = _inputs(files["ovmf"], kernel=files["kernel"], initrd=files["initrd"], append="ro")
    other_kernel = tmp_path / "vmlinuz2"
    other_kernel.write_bytes(files["kernel"].read_bytes() + b"!")
    variants = [
        base,
        replace(base, kernel=other_kernel),
        replace(base, initrd=None),
        replace(base, append="rw"),
        replace(base, append=None),
        replace(base, vcpus=3),
    ]
    digests = [expected_launch_digest(v).measurement for v in variants]
    assert len(set(digests)) == len(digests)
    # QEMU hashes an absent command line as an empty one
    assert expected_launch_digest(replace(base, append="")).measurement == digests[4]


# --- a real OVMF: Debian's, checked in (tests/data/snp/launch/README.md) -----------------------------

LAUNCH_DATA = Path(__file__).resolve().parents[1] / "data" / "snp" / "launch"
REAL_OVMF = LAUNCH_DATA / "OVMF.fd"

# sev-snp-measure 0.0.13's command line on REAL_OVMF (the README's table).
REAL_OVMF_DIGESTS = [
    (1, "EPYC-v4", {}, "11570979c77a0adb515761a702527c8b9e11554e730552621d950988613a3a75c6ff1703f540bd22a9beede8fe7a97e3"),
    (4, "EPYC-v4", {}, DEBIAN_OVMF_4_EPYC_V4),
    (1, "EPYC-Milan", {}, "80479ca85a2b182c026f6a3a2f2b180ab968d84b17540dd30de39039e70b8c0c33ead2cae6d34e37750035fcff60bfc8"),
    (2, "EPYC-Genoa", {}, "143c7e1f11948ce6cbc700b16c3acff0797146df54b0b3d6c5899dc30dc8e31c34a2217d162a219bbbf7a2a1aedd104a"),
    (1, "EPYC-v4", {"guest_features": 0x21}, "c32245cb607f82791b60757bf0b344d9030e5b5a107342e69c09e668ff28aca5af9ca1dc41ce74f5a4e81aeaeb5e7b54"),
    (1, "EPYC-v4", {"vmm_type": "ec2"}, "0aaa035d47b06741a745a62cb88eade395f648a7383d71cc322fab9df33859ca3c188a0578534c01526f1b4c0f0b0eb6"),
]


@pytest.mark.parametrize(("vcpus", "vcpu_type", "changes", "expected"), REAL_OVMF_DIGESTS)
def test_real_ovmf_digests_are_the_tools(vcpus: int, vcpu_type: str, changes: dict[str, object], expected: str) -> None:
    assert _sha256(REAL_OVMF) == DEBIAN_OVMF_SHA256
    got = expected_launch_digest(_inputs(REAL_OVMF, vcpus=vcpus, vcpu_type=vcpu_type, **changes))
    assert got.measurement == expected
    assert got.inputs["ovmf.sha256"] == DEBIAN_OVMF_SHA256


def test_real_ovmf_matches_the_tool_run_live() -> None:
    got = expected_launch_digest(_inputs(REAL_OVMF, vcpus=4, vcpu_type="EPYC-v4"))
    assert got.measurement == cli_digest(REAL_OVMF, 4, "EPYC-v4") == DEBIAN_OVMF_4_EPYC_V4


def test_real_ovmf_without_hashes_table_refuses_a_kernel(files: dict[str, Path]) -> None:
    # Debian's OvmfPkgX64 build has no SNP_KERNEL_HASHES section: a kernel could not be measured.
    with pytest.raises(LaunchInputError) as err:
        expected_launch_digest(_inputs(REAL_OVMF, kernel=files["kernel"]))
    assert err.value.field == "ovmf" and "SEV hashes table" in err.value.detail


def test_firmware_without_snp_metadata_is_refused() -> None:
    # A real pre-SNP OVMF.amdsev.fd tail: the tool would compute a digest no SNP guest can have.
    with pytest.raises(LaunchInputError) as err:
        expected_launch_digest(_inputs(LAUNCH_DATA / "OVMF.amdsev.fd_trimmed"))
    assert err.value.field == "ovmf"


# --- what was measured -----------------------------------------------------------------------------


def test_inputs_record_the_files_sha256_and_parameters(files: dict[str, Path]) -> None:
    got = expected_launch_digest(
        _inputs(
            files["ovmf"], kernel=files["kernel"], initrd=files["initrd"], append="console=ttyS0", vcpus=4
        )
    )
    assert got.inputs == {
        "ovmf.sha256": _sha256(files["ovmf"]),
        "kernel.sha256": _sha256(files["kernel"]),
        "initrd.sha256": _sha256(files["initrd"]),
        "append": "console=ttyS0",
        "vcpus": "4",
        "vcpu_type": "EPYC-Milan",
        "vmm_type": "QEMU",
        "guest_features": "0x1",
        "tool": f"sev-snp-measure {importlib.metadata.version('sev-snp-measure')}",
    }
    plain = expected_launch_digest(_inputs(files["plain_ovmf"], vmm_type="EC2"))
    assert set(plain.inputs) == {"ovmf.sha256", "vcpus", "vcpu_type", "vmm_type", "guest_features", "tool"}
    assert plain.inputs["vmm_type"] == "ec2"  # the library's spelling, whatever the caller's case


# --- refusals --------------------------------------------------------------------------------------


@pytest.mark.parametrize("vcpus", [0, -1, True, "4", 2.0])
def test_vcpus_must_be_a_positive_integer(files: dict[str, Path], vcpus: object) -> None:
    with pytest.raises(LaunchInputError) as err:
        expected_launch_digest(_inputs(files["ovmf"], vcpus=vcpus))
    assert err.value.field == "vcpus" and err.value.reason == "snp_launch.vcpus"
    assert isinstance(err.value, ParseError)


def test_unknown_vcpu_type_lists_the_accepted_ones(files: dict[str, Path]) -> None:
    with pytest.raises(LaunchInputError) as err:
        expected_launch_digest(_inputs(files["ovmf"], vcpu_type="EPYC-Zen9"))
    assert err.value.field == "vcpu_type"
    assert "EPYC-Zen9" in err.value.detail
    for name in ("EPYC-v4", "EPYC-Milan", "EPYC-Genoa"):
        assert name in vcpu_type_names() and name in err.value.detail


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"vmm_type": "kvm"}, "vmm_type"),
        ({"guest_features": -1}, "guest_features"),
        ({"guest_features": 1 << 64}, "guest_features"),
        ({"guest_features": True}, "guest_features"),
        ({"append": "console=ttyS0"}, "append"),  # no kernel
        ({"initrd": Path("initrd.img")}, "initrd"),  # no kernel
    ],
)
def test_bad_parameters_are_named(files: dict[str, Path], changes: dict[str, object], field: str) -> None:
    with pytest.raises(LaunchInputError) as err:
        expected_launch_digest(_inputs(files["ovmf"], **changes))
    assert err.value.field == field


def test_append_with_nul_is_refused(files: dict[str, Path]) -> None:
    with pytest.raises(LaunchInputError) as err:
        expected_launch_digest(_inputs(files["ovmf"], kernel=files["kernel"], append="a\x00b"))
    assert err.value.field == "append"


@pytest.mark.parametrize("field", ["ovmf", "kernel", "initrd"])
def test_missing_files_are_named(files: dict[str, Path], tmp_path: Path, field: str) -> None:
    missing = tmp_path / f"no-such-{field}"
    inputs = replace(
        _inputs(files["ovmf"], kernel=files["kernel"], initrd=files["initrd"]), **{field: missing}
    )
    with pytest.raises(LaunchInputError) as err:
        expected_launch_digest(inputs)
    assert err.value.field == field and str(missing) in err.value.detail
    with pytest.raises(LaunchInputError) as err:
        expected_launch_digest(replace(inputs, **{field: tmp_path}))
    assert err.value.field == field and "directory" in err.value.detail


def test_a_kernel_needs_an_ovmf_with_a_hashes_table(files: dict[str, Path]) -> None:
    with pytest.raises(LaunchInputError) as err:
        expected_launch_digest(_inputs(files["plain_ovmf"], kernel=files["kernel"]))
    assert err.value.field == "ovmf" and "SNP_KERNEL_HASHES" in err.value.detail


@pytest.mark.parametrize(
    "image",
    [
        pytest.param(synthetic_ovmf(metadata=False), id="no SEV metadata"),  # the library would measure it
        pytest.param(os.urandom(8192), id="random bytes"),
        pytest.param(b"", id="empty"),
        pytest.param(b"\x00" * 10, id="ten bytes"),
        pytest.param(synthetic_ovmf()[100:], id="not whole pages"),
    ],
)
def test_unusable_firmware_is_refused(tmp_path: Path, image: bytes) -> None:
    path = tmp_path / "bad.fd"
    path.write_bytes(image)
    with pytest.raises(LaunchInputError) as err:
        expected_launch_digest(_inputs(path))
    assert err.value.field == "ovmf"


def test_the_measured_bytes_are_the_hashed_bytes(
    files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An input replaced while the library runs does not desynchronise digest and recorded hashes."""
    from shared.platforms.snp import launch

    real = launch.guest.calc_launch_digest
    ovmf = files["plain_ovmf"]
    original = ovmf.read_bytes()

    def swap_then_measure(**kwargs: object) -> bytes:
        ovmf.write_bytes(synthetic_ovmf(kernel_hashes=False, pages=32))
        return real(**kwargs)  # type: ignore[no-any-return]

    monkeypatch.setattr(launch.guest, "calc_launch_digest", swap_then_measure)
    got = expected_launch_digest(_inputs(ovmf))
    assert got.inputs["ovmf.sha256"] == hashlib.sha256(original).hexdigest()
    assert got.measurement == PINNED_SYNTHETIC["no kernel"]
