"""TCG event logs: both layouts, PCR replay (checked against real GCE quotes and an independent walk
of the bytes), StartupLocality, claims, malformed input, and `remits eventlog`."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.cli import main
from shared.errors import ParseError, VerificationError
from shared.platforms.tpm.eventlog import (
    EV_EFI_ACTION,
    EV_EFI_BOOT_SERVICES_APPLICATION,
    EV_EFI_VARIABLE_DRIVER_CONFIG,
    EV_IPL,
    EV_NO_ACTION,
    EV_POST_CODE,
    EV_SEPARATOR,
    EVENTLOG_DATA,
    EVENTLOG_REPLAY,
    TPM_ALG_SHA1,
    TPM_ALG_SHA256,
    TPM_ALG_SHA384,
    claims,
    extended_pcrs,
    parse,
    replay,
    verify_against,
)

DATA = Path(__file__).resolve().parents[1] / "data" / "tpm" / "eventlog"
UBUNTU_PATH = DATA / "ubuntu-2404-amd-sevsnp.bin"
UBUNTU = UBUNTU_PATH.read_bytes()
COS_PB = (DATA / "gce-cos-85-nonce9009.pb").read_bytes()
SIZES = {TPM_ALG_SHA1: 20, TPM_ALG_SHA256: 32, TPM_ALG_SHA384: 48}
HASHES = {TPM_ALG_SHA1: hashlib.sha1, TPM_ALG_SHA256: hashlib.sha256, TPM_ALG_SHA384: hashlib.sha384}
BANK_OF = {4: "sha1", 11: "sha256", 12: "sha384"}  # go-tpm-tools HashAlgo = TPM2 algorithm id


# -- an independent reader for the test's own checks --------------------------------------------


def _protobuf(data: bytes) -> list[tuple[int, int | bytes]]:
    """(field, value) of a protobuf message: varints and length-delimited fields only."""

    def varint(pos: int) -> tuple[int, int]:
        value = shift = 0
        while True:
            byte = data[pos]
            value |= (byte & 0x7F) << shift
            pos, shift = pos + 1, shift + 7
            if byte < 0x80:
                return value, pos

    out: list[tuple[int, int | bytes]] = []
    pos = 0
    while pos < len(data):
        key, pos = varint(pos)
        if key & 7 == 0:
            value, pos = varint(pos)
            out.append((key >> 3, value))
        else:
            assert key & 7 == 2
            size, pos = varint(pos)
            out.append((key >> 3, data[pos : pos + size]))
            pos += size
    return out


def _cos() -> tuple[bytes, dict[str, dict[int, bytes]]]:
    """The COS 85 attestation's event log and the PCR values of its three quotes."""
    fields = _protobuf(COS_PB)
    log = next(v for f, v in fields if f == 3)
    quoted: dict[str, dict[int, bytes]] = {}
    for quote in (v for f, v in fields if f == 2):
        assert isinstance(quote, bytes)
        pcrs = _protobuf(next(v for f, v in _protobuf(quote) if f == 3))  # type: ignore[arg-type]
        bank = BANK_OF[next(v for f, v in pcrs if f == 1)]  # type: ignore[index]
        entries = [dict(_protobuf(v)) for f, v in pcrs if f == 2]  # type: ignore[arg-type]
        quoted[bank] = {int(e.get(1, 0)): bytes(e[2]) for e in entries}  # type: ignore[arg-type]
    assert isinstance(log, bytes)
    return log, quoted


COS, COS_QUOTED = _cos()


def _walk(data: bytes) -> list[tuple[int, int, dict[int, bytes], bytes, int]]:
    """(PCR, type, {alg: digest}, data, offset of the record) of a crypto-agile log, read plainly."""
    size = struct.unpack_from("<I", data, 28)[0]
    count = struct.unpack_from("<I", data, 32 + 24)[0]
    algs = [struct.unpack_from("<H", data, 32 + 28 + 4 * i)[0] for i in range(count)]
    pos, out = 32 + size, []
    while pos < len(data):
        start = pos
        pcr, kind, n = struct.unpack_from("<III", data, pos)
        pos += 12
        digests = {}
        for _ in range(n):
            alg = struct.unpack_from("<H", data, pos)[0]
            digests[alg] = data[pos + 2 : pos + 2 + SIZES[alg]]
            pos += 2 + SIZES[alg]
        length = struct.unpack_from("<I", data, pos)[0]
        out.append((pcr, kind, digests, data[pos + 4 : pos + 4 + length], start))
        pos += 4 + length
    assert sorted(algs) == sorted(SIZES)
    return out


def _hand_replay(data: bytes, alg: int, pcr: int) -> bytes:
    value = bytes(SIZES[alg])
    for index, kind, digests, _data, _off in _walk(data):
        if index == pcr and kind != EV_NO_ACTION:
            value = HASHES[alg](value + digests[alg]).digest()
    return value


# -- synthetic logs ---------------------------------------------------------------------------------


def _spec_id(algs: list[tuple[int, int]], vendor: bytes = b"") -> bytes:
    body = b"Spec ID Event03\x00" + struct.pack("<IBBBBI", 0, 0, 2, 0, 2, len(algs))
    body += b"".join(struct.pack("<HH", alg, size) for alg, size in algs)
    body += bytes([len(vendor)]) + vendor
    return struct.pack("<II20sI", 0, EV_NO_ACTION, bytes(20), len(body)) + body


def _event2(pcr: int, kind: int, digests: list[tuple[int, bytes]], data: bytes) -> bytes:
    out = struct.pack("<III", pcr, kind, len(digests))
    out += b"".join(struct.pack("<H", alg) + digest for alg, digest in digests)
    return out + struct.pack("<I", len(data)) + data


def _legacy(pcr: int, kind: int, digest: bytes, data: bytes) -> bytes:
    return struct.pack("<II20sI", pcr, kind, digest, len(data)) + data


LOCALITY_3 = b"StartupLocality\x00\x03"
AGILE_ALGS = [(TPM_ALG_SHA1, 20), (TPM_ALG_SHA256, 32)]


def _agile_digests(data: bytes) -> list[tuple[int, bytes]]:
    return [(TPM_ALG_SHA1, hashlib.sha1(data).digest()), (TPM_ALG_SHA256, hashlib.sha256(data).digest())]


def _synthetic_agile() -> bytes:
    zero = [(TPM_ALG_SHA1, bytes(20)), (TPM_ALG_SHA256, bytes(32))]
    return (
        _spec_id(AGILE_ALGS)
        + _event2(0, EV_NO_ACTION, zero, LOCALITY_3)
        + _event2(0, EV_POST_CODE, _agile_digests(b"crtm"), b"crtm")
        + _event2(4, EV_EFI_ACTION, _agile_digests(b"boot"), b"boot")
        + _event2(7, EV_SEPARATOR, _agile_digests(bytes(4)), bytes(4))
        + _event2(4, EV_NO_ACTION, _agile_digests(b"ignored"), b"ignored")
    )


# -- the real Ubuntu log ----------------------------------------------------------------------------


def test_ubuntu_log_structure() -> None:
    log = parse(UBUNTU)
    assert log.crypto_agile and log.banks == ("sha1", "sha256", "sha384")
    assert log.algorithms == ((TPM_ALG_SHA1, 20), (TPM_ALG_SHA256, 32), (TPM_ALG_SHA384, 48))
    assert log.spec_id is not None and log.spec_id.spec_version == (2, 0) and log.spec_id.uintn_size == 2
    assert log.startup_locality is None
    assert len(log.events) == 116
    walked = _walk(UBUNTU)
    assert [(e.pcr_index, e.event_type, dict(e.digests), e.data) for e in log.events] == [
        w[:4] for w in walked
    ]
    assert extended_pcrs(log) == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 14]


def test_ubuntu_replay_is_pinned_and_recomputed_by_hand() -> None:
    sha256 = replay(parse(UBUNTU))["sha256"]
    pinned = {
        0: "50597a27846e91d025eef597abbc89f72bff9af849094db97b0684d8bc4c515e",
        4: "abe8b3fa6aecb36c2fd93c6f6edde661c21b353d007410a2739d69bfa7e1b9be",
        7: "33ad69850fb2c7f30b4f8b4bc10ed93fc954dc07fa726e84f50f3d192dc1c140",
        9: "ce08798b283c7a0ddc5e9ad1d602304b945b741fc60c20e254eafa0f4782512b",
    }
    assert {i: sha256[i].hex() for i in pinned} == pinned
    # PCR 7 by hand: SecureBoot, PK, KEK, db, dbx, separator, then shim's SbatLevel authority.
    pcr7 = [w for w in _walk(UBUNTU) if w[0] == 7]
    assert [w[1] for w in pcr7] == [EV_EFI_VARIABLE_DRIVER_CONFIG] * 5 + [EV_SEPARATOR, 0x800000E0]
    value = bytes(32)
    for w in pcr7:
        value = hashlib.sha256(value + w[2][TPM_ALG_SHA256]).digest()
    assert value == sha256[7]
    for alg, bank in ((TPM_ALG_SHA1, "sha1"), (TPM_ALG_SHA256, "sha256"), (TPM_ALG_SHA384, "sha384")):
        replayed = replay(parse(UBUNTU))[bank]
        assert all(replayed[i] == _hand_replay(UBUNTU, alg, i) for i in range(17))
        assert replayed[10] == bytes(SIZES[alg]) and replayed[17] == b"\xff" * SIZES[alg]


def _variable_sha256(event_data: bytes) -> str:
    name_chars, data_size = struct.unpack_from("<QQ", event_data, 16)
    start = 32 + 2 * name_chars
    assert start + data_size == len(event_data)
    return hashlib.sha256(event_data[start:]).hexdigest()


def test_ubuntu_claims() -> None:
    log = parse(UBUNTU)
    found = claims(log)
    walked = _walk(UBUNTU)
    assert found["eventlog.secure_boot"] is False
    assert walked[2][3].endswith(b"S\x00e\x00c\x00u\x00r\x00e\x00B\x00o\x00o\x00t\x00\x00")  # data = 0
    assert found["eventlog.event_count"] == 116 and found["eventlog.bank"] == "sha256"
    # PK, KEK, db, dbx are events 3-6: SHA-256 of the variable data (signature lists).
    for key, index in (("pk", 3), ("kek", 4), ("db", 5), ("dbx", 6)):
        assert found[f"eventlog.{key}"] == _variable_sha256(walked[index][3])
    assert found["eventlog.pk"] == "03f8844e4692b98c3a7ad4d0d183ec029111a2324c0705739229944458f9561c"
    # shim, then grubx64.efi; GRUB loads the kernel itself (PCR 9), so no kernel image event.
    assert found["eventlog.boot_loader_digests"] == [
        walked[24][2][TPM_ALG_SHA256].hex(),
        walked[29][2][TPM_ALG_SHA256].hex(),
    ]
    assert b"\\\x00E\x00F\x00I\x00\\\x00u\x00b\x00u\x00n\x00t\x00u\x00" in walked[29][3]
    assert found["eventlog.kernel_digest"] is None
    assert found["eventlog.kernel_cmdline"] == (
        "/vmlinuz-6.8.0-1010-gcp root=PARTUUID=8270f3c9-b4e4-4345-80ee-5a62db7ebf3f ro console=ttyS0,115200 panic=-1"
    )
    cmds = found["eventlog.grub_cmds"]
    assert len(cmds) == 70
    assert cmds[0] == "search.fs_uuid 94f07b36-6512-4b02-849a-286e93dcebf7 root"
    assert cmds[-1] == "save_env initrdfail" and "insmod bli" in cmds
    assert found["eventlog.separators"] == {str(i): "normal" for i in range(8)}
    json.dumps(found)  # claims are plain JSON values


# -- the real COS log against its real quotes ----------------------------------------------------


def _without_ima(quoted: dict[str, dict[int, bytes]]) -> dict[str, dict[int, bytes]]:
    return {bank: {i: v for i, v in pcrs.items() if i != 10} for bank, pcrs in quoted.items()}


def test_cos_log_replays_to_the_quoted_pcrs() -> None:
    assert sorted(COS_QUOTED) == ["sha1", "sha256", "sha384"]
    assert all(sorted(pcrs) == list(range(24)) for pcrs in COS_QUOTED.values())
    log = parse(COS)
    assert len(log.events) == 44
    replayed = replay(log)
    for bank, pcrs in COS_QUOTED.items():
        assert {i: replayed[bank][i] for i in range(24) if i != 10} == {
            i: v for i, v in pcrs.items() if i != 10
        }
    verify_against(log, _without_ima(COS_QUOTED))
    verify_against(log, {"sha256": {i: COS_QUOTED["sha256"][i] for i in (0, 4, 7, 9)}})
    # PCR 10 is IMA's, extended by the kernel outside this log: a full quote does not replay.
    with pytest.raises(VerificationError) as info:
        verify_against(log, COS_QUOTED)
    assert info.value.check == EVENTLOG_REPLAY and info.value.detail.startswith("sha1 PCR 10: log gives 0000")


@pytest.mark.parametrize("event_pcr", [0, 4, 7, 8, 9])
def test_a_flipped_digest_names_its_pcr(event_pcr: int) -> None:
    walked = _walk(COS)
    offset = next(w[4] for w in walked if w[0] == event_pcr and w[1] != EV_NO_ACTION)
    data = bytearray(COS)
    data[offset + 12 + 2 + 20 + 2 + 5] ^= 0x01  # a byte of the event's SHA-256 digest
    log = parse(bytes(data))
    verify_against(log, {"sha1": _without_ima(COS_QUOTED)["sha1"]})  # the SHA-1 bank is untouched
    with pytest.raises(VerificationError) as info:
        verify_against(log, _without_ima(COS_QUOTED))
    assert info.value.check == EVENTLOG_REPLAY
    assert info.value.detail.startswith(f"sha256 PCR {event_pcr}: log gives ")
    assert info.value.detail.endswith(f"quote has {COS_QUOTED['sha256'][event_pcr].hex()}")


def test_cos_claims() -> None:
    found = claims(parse(COS))
    walked = _walk(COS)
    assert found["eventlog.secure_boot"] is True and found["eventlog.event_count"] == 44
    apps = [
        w[2][TPM_ALG_SHA256].hex() for w in walked if w[0] == 4 and w[1] == EV_EFI_BOOT_SERVICES_APPLICATION
    ]
    assert len(apps) == 3
    assert found["eventlog.boot_loader_digests"] == apps[:2]
    kernel = "6f6afb3caed004e727200a0c310731bd8ab4cd391b2d95cedf67d08e1e8e5e7e"
    assert found["eventlog.kernel_digest"] == apps[2] == kernel
    cmdline = found["eventlog.kernel_cmdline"]
    assert (
        cmdline.startswith("/syslinux/vmlinuz.A init=/usr/lib/systemd/systemd")
        and "dm_verity.error_behavior=3" in cmdline
    )
    assert found["eventlog.grub_cmds"][:2] == ["defaultA=2", "defaultB=3"]
    assert found["eventlog.db"] == _variable_sha256(walked[5][3])
    sha1 = claims(parse(COS), bank="sha1")
    assert (
        sha1["eventlog.bank"] == "sha1"
        and sha1["eventlog.kernel_digest"] == walked[39][2][TPM_ALG_SHA1].hex()
    )


def test_event_data_is_believed_only_when_it_matches_its_digest() -> None:
    # The quote binds digests, not data: SecureBoot=1 rewritten to 0 still replays, claims refuse it.
    walked = _walk(COS)
    pcr, kind, _digests, secure_boot, offset = walked[2]
    assert (pcr, kind, secure_boot[-1]) == (7, EV_EFI_VARIABLE_DRIVER_CONFIG, 1)
    end = offset + 12 + 2 + 20 + 2 + 32 + 2 + 48 + 4 + len(secure_boot)
    edited = bytearray(COS)
    edited[end - 1] = 0
    log = parse(bytes(edited))
    verify_against(log, _without_ima(COS_QUOTED))
    with pytest.raises(VerificationError) as info:
        claims(log)
    assert info.value.check == EVENTLOG_DATA and "PCR 7" in info.value.detail
    # Same for a GRUB command text.
    grub = next(w for w in walked if w[1] == EV_IPL and w[3].startswith(b"grub_cmd: "))
    data_at = COS.index(grub[3], grub[4])
    edited = bytearray(COS)
    edited[data_at + 10] ^= 0x20
    with pytest.raises(VerificationError, match="PCR 8"):
        claims(parse(bytes(edited)))


# -- synthetic logs -----------------------------------------------------------------------------


def test_crypto_agile_log_with_startup_locality_3() -> None:
    log = parse(_synthetic_agile())
    assert log.crypto_agile and log.startup_locality == 3 and len(log.events) == 5
    replayed = replay(log)
    assert sorted(replayed) == ["sha1", "sha256"]
    for bank, fn, size in (("sha1", hashlib.sha1, 20), ("sha256", hashlib.sha256, 32)):
        pcr0 = fn(bytes(size - 1) + b"\x03" + fn(b"crtm").digest()).digest()
        pcr4 = fn(bytes(size) + fn(b"boot").digest()).digest()  # the EV_NO_ACTION in PCR 4 is skipped
        pcr7 = fn(bytes(size) + fn(bytes(4)).digest()).digest()
        assert (replayed[bank][0], replayed[bank][4], replayed[bank][7]) == (pcr0, pcr4, pcr7)
        assert replayed[bank][1] == bytes(size) and replayed[bank][20] == b"\xff" * size
    assert extended_pcrs(log) == [0, 4, 7]
    assert claims(log)["eventlog.separators"] == {"7": "normal"}


def test_digests_in_any_order() -> None:
    digests = _agile_digests(b"x")
    log = parse(_spec_id(AGILE_ALGS) + _event2(3, EV_POST_CODE, digests[::-1], b"x"))
    assert log.events[0].digest(TPM_ALG_SHA256) == hashlib.sha256(b"x").digest()
    assert replay(log)["sha1"][3] == hashlib.sha1(bytes(20) + hashlib.sha1(b"x").digest()).digest()


def test_startup_locality_alone_sets_pcr0() -> None:
    zero = [(TPM_ALG_SHA1, bytes(20)), (TPM_ALG_SHA256, bytes(32))]
    log = parse(_spec_id(AGILE_ALGS) + _event2(0, EV_NO_ACTION, zero, b"StartupLocality\x00\x04"))
    assert replay(log)["sha256"][0] == bytes(31) + b"\x04" and extended_pcrs(log) == [0]


def test_legacy_sha1_log() -> None:
    def sha1(data: bytes) -> bytes:
        return hashlib.sha1(data).digest()

    data = (
        _legacy(0, EV_NO_ACTION, bytes(20), LOCALITY_3)
        + _legacy(0, EV_POST_CODE, sha1(b"bios"), b"bios")
        + _legacy(0, EV_SEPARATOR, sha1(b"\xff" * 4), b"\xff" * 4)
        + _legacy(4, EV_EFI_BOOT_SERVICES_APPLICATION, sha1(b"loader"), b"")
        + _legacy(8, EV_IPL, sha1(b"ro quiet"), b"kernel_cmdline: ro quiet\x00")
    )
    log = parse(data)
    assert not log.crypto_agile and log.spec_id is None and log.banks == ("sha1",)
    assert log.startup_locality == 3 and len(log.events) == 5
    replayed = replay(log)
    assert list(replayed) == ["sha1"]
    pcr0 = sha1(sha1(bytes(19) + b"\x03" + sha1(b"bios")) + sha1(b"\xff" * 4))
    assert replayed["sha1"][0] == pcr0
    assert replayed["sha1"][8] == sha1(bytes(20) + sha1(b"ro quiet"))
    found = claims(log)
    assert found["eventlog.bank"] == "sha1" and found["eventlog.separators"] == {"0": "error"}
    assert found["eventlog.kernel_cmdline"] == "ro quiet"
    assert (
        found["eventlog.boot_loader_digests"] == [sha1(b"loader").hex()]
        and found["eventlog.kernel_digest"] is None
    )
    verify_against(log, {"sha1": {0: pcr0}, "sha256": {0: bytes(32)}})  # sha256: not a bank of the log
    with pytest.raises(VerificationError, match="no PCR in the log's banks"):
        verify_against(log, {"sha256": {0: bytes(32)}})
    with pytest.raises(VerificationError, match="sha1 PCR 0: log gives"):
        verify_against(log, {"sha1": {0: bytes(20)}})
    with pytest.raises(VerificationError, match="PCR 24"):
        verify_against(log, {"sha1": {24: bytes(20)}})
    # The end marker and trailing fill end the log.
    assert len(parse(data + b"\xff" * 40).events) == 5 and len(parse(data + bytes(32)).events) == 5


# -- malformed input ----------------------------------------------------------------------------------


def _malformed() -> list[tuple[bytes, str]]:
    zero = [(TPM_ALG_SHA1, bytes(20)), (TPM_ALG_SHA256, bytes(32))]
    good = _synthetic_agile()
    spec = _spec_id(AGILE_ALGS)
    return [
        (b"", "parse.eventlog.event[0]"),
        (spec[:40], "parse.eventlog.spec_id.data"),
        (b"\x01" + spec[1:], "parse.eventlog.spec_id"),  # Spec ID event outside PCR 0
        (spec[:4] + b"\x00\x00\x00\x00" + spec[8:], "parse.eventlog.spec_id"),  # not EV_NO_ACTION
        (_spec_id([(TPM_ALG_SHA256, 20)]), "parse.eventlog.spec_id.digest_size"),
        (_spec_id([(TPM_ALG_SHA1, 20), (TPM_ALG_SHA1, 20)]), "parse.eventlog.spec_id.algorithm"),
        (_spec_id([]), "parse.eventlog.spec_id.algorithm_count"),
        (spec[:-1] + b"\x05", "parse.eventlog.spec_id.vendor_info"),
        (good[:-3], "parse.eventlog.event[4].data"),
        (spec + _event2(24, EV_POST_CODE, zero, b""), "parse.eventlog.event[0].pcr_index"),
        (spec + _event2(0, EV_POST_CODE, zero[:1], b""), "parse.eventlog.event[0].digest_count"),
        (spec + _event2(0, EV_POST_CODE, [zero[0], zero[0]], b""), "parse.eventlog.event[0].algorithm"),
        (
            spec + _event2(0, EV_POST_CODE, [zero[0], (TPM_ALG_SHA384, bytes(32))], b""),
            "parse.eventlog.event[0].algorithm",
        ),
        (spec + _event2(0, EV_POST_CODE, zero, b"")[:30], "parse.eventlog.event[0].digest"),
        (
            spec + _event2(0, EV_POST_CODE, zero, b"") + _event2(0, EV_NO_ACTION, zero, LOCALITY_3),
            "parse.eventlog.event[1].startup_locality",
        ),
        (
            spec + _event2(0, EV_NO_ACTION, zero, LOCALITY_3 + b"\x00"),
            "parse.eventlog.event[0].startup_locality",
        ),
        (_legacy(24, EV_POST_CODE, bytes(20), b""), "parse.eventlog.event[0].pcr_index"),
        (_legacy(0, EV_POST_CODE, bytes(20), b"abc")[:-1], "parse.eventlog.event[0].data"),
        (UBUNTU[:20000], "parse.eventlog.event[6].data"),
    ]


@pytest.mark.parametrize(("data", "reason"), _malformed())
def test_malformed_logs(data: bytes, reason: str) -> None:
    with pytest.raises(ParseError) as info:
        parse(data)
    assert info.value.reason == reason


def test_a_bad_variable_layout_is_a_parse_error() -> None:
    data = (
        b"\x61\xdf\xe4\x8b\xca\x93\xd2\x11\xaa\x0d\x00\xe0\x98\x03\x2b\x8c" + struct.pack("<QQ", 10, 5) + b"x"
    )
    log = parse(_spec_id(AGILE_ALGS) + _event2(7, EV_EFI_VARIABLE_DRIVER_CONFIG, _agile_digests(data), data))
    with pytest.raises(ParseError) as info:
        claims(log)
    assert info.value.reason == "parse.eventlog.event[0].variable"
    with pytest.raises(VerificationError, match="no sha384 bank"):
        claims(log, bank="sha384")


def test_not_bytes() -> None:
    with pytest.raises(ParseError) as info:
        parse("a log")  # type: ignore[arg-type]
    assert info.value.reason == "parse.eventlog.log"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_only_raise_parse_error(data: bytes) -> None:
    for candidate in (
        data,
        _spec_id(AGILE_ALGS) + data,
        data[:1] + b"\x00\x00\x00\x03\x00\x00\x00" + data[8:],
    ):
        try:
            parse(candidate)
        except ParseError:
            pass


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(min_value=0, max_value=len(COS) - 1), st.integers(min_value=0, max_value=255))
def test_mutated_real_log_raises_only_typed_errors(position: int, value: int) -> None:
    data = bytearray(COS)
    data[position] = value
    try:
        log = parse(bytes(data))
        verify_against(log, _without_ima(COS_QUOTED))
        claims(log)
    except (ParseError, VerificationError):
        pass


# -- the command ----------------------------------------------------------------------------------


def test_cli_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eventlog", str(UBUNTU_PATH), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert sorted(out) == ["claims", "pcrs"]
    assert sorted(out["pcrs"]) == ["sha1", "sha256", "sha384"]
    assert list(out["pcrs"]["sha256"]) == ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "14"]
    assert out["pcrs"]["sha256"]["7"] == "33ad69850fb2c7f30b4f8b4bc10ed93fc954dc07fa726e84f50f3d192dc1c140"
    assert out["claims"] == claims(parse(UBUNTU))
    assert out["claims"]["eventlog.secure_boot"] is False


def test_cli_json_startup_locality(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "log.bin"
    path.write_bytes(_synthetic_agile())
    assert main(["eventlog", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    pcr0 = hashlib.sha256(bytes(31) + b"\x03" + hashlib.sha256(b"crtm").digest()).hexdigest()
    assert list(out["pcrs"]["sha256"]) == list(out["pcrs"]["sha1"]) == ["0", "4", "7"]
    assert out["pcrs"]["sha256"]["0"] == pcr0


def test_cli_table_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eventlog", str(UBUNTU_PATH)]) == 0
    text = capsys.readouterr().out
    assert "116 events" in text and "sha256 PCRs" in text
    assert "   7  33ad69850fb2c7f30b4f8b4bc10ed93fc954dc07fa726e84f50f3d192dc1c140" in text
    assert "eventlog.kernel_cmdline" in text and "panic=-1" in text
    bad = tmp_path / "bad.bin"
    bad.write_bytes(UBUNTU[:20000])
    assert main(["eventlog", str(bad), "--json"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and "parse.eventlog.event[6].data" in captured.err
    assert main(["eventlog", str(tmp_path / "missing.bin")]) == 1
    assert "cannot read" in capsys.readouterr().err
