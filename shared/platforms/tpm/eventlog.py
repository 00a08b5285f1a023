"""Measured-boot event logs in the TCG formats, their replay into PCR values, and what they say.

Two layouts exist (TCG PC Client Platform Firmware Profile, "PFP"):

* the legacy SHA-1-only log: a sequence of ``TCG_PCClientPCREvent`` records (PCR index, event
  type, one 20-byte SHA-1 digest, event data size, event data);
* the crypto-agile log: a first record in the legacy layout whose data is the
  ``TCG_EfiSpecIDEvent`` ("Spec ID Event03"), listing the hash algorithms and their digest
  sizes, followed by ``TCG_PCR_EVENT2`` records (PCR index, event type, a count of
  ``TPMT_HA`` digests — one per listed algorithm — event data size, event data).

This module is the one implementation of both; the TDX CCEL log (``shared.platforms.tdx.eventlog``)
is the crypto-agile layout with CC MR indices and uses :func:`parse_crypto_agile` directly.

A log proves nothing by itself. It becomes evidence when its replay reproduces the PCRs of a
verified quote (:func:`verify_against`); only then may :func:`claims` read its events, and even
then only the digests are bound by the quote: event data is believed only where it hashes to the
event's digest, as the PFP prescribes for that event type.

Parsing raises only ``ParseError`` (``parse.eventlog.*``); a log that does not replay to the
quoted PCRs raises ``VerificationError`` (``tpm.eventlog_replay``).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from shared.errors import ParseError, VerificationError

PREFIX = "parse.eventlog"
EVENTLOG_REPLAY = "tpm.eventlog_replay"
EVENTLOG_DATA = "tpm.eventlog_data"

# -- event types (PFP, "Event Types") ------------------------------------------------------------
EV_PREBOOT_CERT = 0x00000000
EV_POST_CODE = 0x00000001
EV_UNUSED = 0x00000002
EV_NO_ACTION = 0x00000003
EV_SEPARATOR = 0x00000004
EV_ACTION = 0x00000005
EV_EVENT_TAG = 0x00000006
EV_S_CRTM_CONTENTS = 0x00000007
EV_S_CRTM_VERSION = 0x00000008
EV_CPU_MICROCODE = 0x00000009
EV_PLATFORM_CONFIG_FLAGS = 0x0000000A
EV_TABLE_OF_DEVICES = 0x0000000B
EV_COMPACT_HASH = 0x0000000C
EV_IPL = 0x0000000D
EV_IPL_PARTITION_DATA = 0x0000000E
EV_NONHOST_CODE = 0x0000000F
EV_NONHOST_CONFIG = 0x00000010
EV_NONHOST_INFO = 0x00000011
EV_OMIT_BOOT_DEVICE_EVENTS = 0x00000012
EV_POST_CODE2 = 0x00000013
EV_EFI_EVENT_BASE = 0x80000000
EV_EFI_VARIABLE_DRIVER_CONFIG = 0x80000001
EV_EFI_VARIABLE_BOOT = 0x80000002
EV_EFI_BOOT_SERVICES_APPLICATION = 0x80000003
EV_EFI_BOOT_SERVICES_DRIVER = 0x80000004
EV_EFI_RUNTIME_SERVICES_DRIVER = 0x80000005
EV_EFI_GPT_EVENT = 0x80000006
EV_EFI_ACTION = 0x80000007
EV_EFI_PLATFORM_FIRMWARE_BLOB = 0x80000008
EV_EFI_HANDOFF_TABLES = 0x80000009
EV_EFI_PLATFORM_FIRMWARE_BLOB2 = 0x8000000A
EV_EFI_HANDOFF_TABLES2 = 0x8000000B
EV_EFI_VARIABLE_BOOT2 = 0x8000000C
EV_EFI_HCRTM_EVENT = 0x80000010
EV_EFI_VARIABLE_AUTHORITY = 0x800000E0
EV_EFI_SPDM_FIRMWARE_BLOB = 0x800000E1
EV_EFI_SPDM_FIRMWARE_CONFIG = 0x800000E2

EVENT_TYPE_NAMES: dict[int, str] = {
    value: name for name, value in globals().items() if name.startswith("EV_") and isinstance(value, int)
}

# -- algorithms (TCG Algorithm Registry) --------------------------------------------------------
TPM_ALG_SHA1 = 0x0004
TPM_ALG_SHA256 = 0x000B
TPM_ALG_SHA384 = 0x000C
TPM_ALG_SHA512 = 0x000D
BANKS: dict[int, str] = {
    TPM_ALG_SHA1: "sha1",
    TPM_ALG_SHA256: "sha256",
    TPM_ALG_SHA384: "sha384",
    TPM_ALG_SHA512: "sha512",
}
DIGEST_SIZES: dict[int, int] = {TPM_ALG_SHA1: 20, TPM_ALG_SHA256: 32, TPM_ALG_SHA384: 48, TPM_ALG_SHA512: 64}
_HASHES: dict[int, Callable[[bytes], Any]] = {
    TPM_ALG_SHA1: hashlib.sha1,
    TPM_ALG_SHA256: hashlib.sha256,
    TPM_ALG_SHA384: hashlib.sha384,
    TPM_ALG_SHA512: hashlib.sha512,
}

PCR_COUNT = 24
# PCRs 17-22 are the DRTM PCRs: TPM2_Startup sets them to all ones (PC Client Platform TPM
# Profile); only a locality-4 dynamic launch resets them, and that launch has its own log.
DRTM_PCRS = range(17, 23)

SPEC_ID_SIGNATURE = b"Spec ID Event03\x00"
STARTUP_LOCALITY_SIGNATURE = b"StartupLocality\x00"
SEPARATOR_NORMAL = b"\x00\x00\x00\x00"
SEPARATOR_ERROR = b"\xff\xff\xff\xff"

# EFI_GLOBAL_VARIABLE and EFI_IMAGE_SECURITY_DATABASE_GUID in their on-disk (mixed-endian) form.
EFI_GLOBAL_VARIABLE = bytes.fromhex("61dfe48bca93d211aa0d00e098032b8c")
EFI_IMAGE_SECURITY_DATABASE = bytes.fromhex("cbb219d73a3d9645a3bcdad00e67656f")

_END_OF_LOG = 0xFFFFFFFF
_MAX_ALGORITHMS = 16  # a TCG log lists a handful; more means we are reading garbage
_MAX_DIGEST_SIZE = 64

_U8 = struct.Struct("<B")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_LEGACY_HEADER = struct.Struct("<II20sI")  # TCG_PCClientPCREvent without its data
_EVENT2_HEADER = struct.Struct("<III")  # TCG_PCR_EVENT2: index, type, digest count
_SPEC_ID_BODY = struct.Struct("<IBBBBI")  # platform class, minor, major, errata, uintn size, count
_VARIABLE_HEADER = struct.Struct("<16sQQ")  # UEFI_VARIABLE_DATA: GUID, name length, data length


@dataclass(frozen=True, slots=True)
class Event:
    pcr_index: int
    event_type: int
    digests: tuple[tuple[int, bytes], ...]  # (TPM_ALG_ID, digest), one per algorithm of the log
    data: bytes

    def digest(self, algorithm: int) -> bytes | None:
        for alg, value in self.digests:
            if alg == algorithm:
                return value
        return None

    @property
    def type_name(self) -> str:
        return EVENT_TYPE_NAMES.get(self.event_type, f"{self.event_type:#010x}")


@dataclass(frozen=True, slots=True)
class SpecIdEvent:
    """The ``TCG_EfiSpecIDEvent`` that opens a crypto-agile log."""

    platform_class: int
    spec_version: tuple[int, int]  # (major, minor)
    spec_errata: int
    uintn_size: int
    algorithms: tuple[tuple[int, int], ...]  # (TPM_ALG_ID, digest size)
    vendor_info: bytes


@dataclass(frozen=True, slots=True)
class EventLog:
    crypto_agile: bool
    algorithms: tuple[tuple[int, int], ...]  # ((TPM_ALG_SHA1, 20),) for a legacy log
    events: tuple[Event, ...]  # a crypto-agile log's Spec ID event is not among them
    spec_id: SpecIdEvent | None = None
    startup_locality: int | None = None  # from the StartupLocality EV_NO_ACTION event, if any

    @property
    def banks(self) -> tuple[str, ...]:
        return tuple(BANKS[alg] for alg, _ in self.algorithms if alg in BANKS)


E = TypeVar("E")


def _fail(prefix: str, field: str, size: int, pos: int, total: int) -> ParseError:
    return ParseError(
        field, f"needs {size} bytes at offset {pos:#x}, {max(total - pos, 0)} left", prefix=prefix
    )


def _parse_spec_id(data: bytes, prefix: str) -> SpecIdEvent:
    total = len(data)
    if data[: len(SPEC_ID_SIGNATURE)] != SPEC_ID_SIGNATURE:
        raise ParseError("spec_id.signature", "the first event is not a TCG2 Spec ID Event03", prefix=prefix)
    pos = len(SPEC_ID_SIGNATURE)
    if pos + _SPEC_ID_BODY.size > total:
        raise _fail(prefix, "spec_id.header", _SPEC_ID_BODY.size, pos, total)
    platform_class, minor, major, errata, uintn_size, count = _SPEC_ID_BODY.unpack_from(data, pos)
    pos += _SPEC_ID_BODY.size
    if not 0 < count <= _MAX_ALGORITHMS:
        raise ParseError("spec_id.algorithm_count", f"implausible algorithm count {count}", prefix=prefix)
    if pos + 4 * count > total:
        raise _fail(prefix, "spec_id.algorithm", 4 * count, pos, total)
    algorithms = []
    for _ in range(count):
        alg, size = struct.unpack_from("<HH", data, pos)
        pos += 4
        expected = DIGEST_SIZES.get(alg)
        if (expected is not None and size != expected) or not 0 < size <= _MAX_DIGEST_SIZE:
            raise ParseError(
                "spec_id.digest_size", f"algorithm {alg:#06x} with digest size {size}", prefix=prefix
            )
        algorithms.append((alg, size))
    if len({alg for alg, _ in algorithms}) != count:
        raise ParseError("spec_id.algorithm", "an algorithm is listed twice", prefix=prefix)
    if pos + 1 > total:
        raise _fail(prefix, "spec_id.vendor_info_size", 1, pos, total)
    vendor_size = data[pos]
    pos += 1
    if pos + vendor_size != total:
        raise ParseError(
            "spec_id.vendor_info",
            f"{vendor_size} bytes of vendor info, {total - pos} in the event",
            prefix=prefix,
        )
    return SpecIdEvent(platform_class, (major, minor), errata, uintn_size, tuple(algorithms), data[pos:])


def _digests(
    view: memoryview, pos: int, count: int, sizes: dict[int, int], field: str, prefix: str
) -> tuple[tuple[tuple[int, bytes], ...], int]:
    """A record's ``TPMT_HA`` list in any order: each algorithm of the Spec ID event exactly once."""
    total = len(view)
    digests = []
    for _ in range(count):
        if pos + 2 > total:
            raise _fail(prefix, f"{field}.algorithm", 2, pos, total)
        alg = _U16.unpack_from(view, pos)[0]
        pos += 2
        digest_size = sizes.get(alg)
        if digest_size is None:
            raise ParseError(
                f"{field}.algorithm", f"algorithm {alg:#06x} is not in the Spec ID event", prefix=prefix
            )
        if pos + digest_size > total:
            raise _fail(prefix, f"{field}.digest", digest_size, pos, total)
        digests.append((alg, bytes(view[pos : pos + digest_size])))
        pos += digest_size
    if len({alg for alg, _ in digests}) != count:
        raise ParseError(f"{field}.algorithm", "an algorithm has two digests", prefix=prefix)
    return tuple(digests), pos


def parse_crypto_agile(
    data: bytes,
    *,
    prefix: str,
    max_index: int,
    index_field: str,
    index_error: Callable[[int], str],
    make_event: Callable[[int, int, tuple[tuple[int, bytes], ...], bytes], E],
) -> tuple[SpecIdEvent, list[E]]:
    """The crypto-agile layout: the legacy-format Spec ID event, then ``TCG_PCR_EVENT2`` records up to
    an 0xFFFFFFFF index, an all-zero record header or the end of the buffer (a log area's fill).

    Each record must carry exactly one digest for every algorithm of the Spec ID event. An index above
    ``max_index`` raises ``ParseError`` (``<prefix>.event[i].<index_field>``, ``index_error(index)``
    as detail); other error reasons are
    ``<prefix>.spec_id*`` and ``<prefix>.event[i].*``. ``make_event(index, type, digests, data)``
    builds each event (TPM PCR events here, CC MR events for TDX).
    """
    view = memoryview(data)
    total = len(view)
    if _LEGACY_HEADER.size > total:
        raise _fail(prefix, "spec_id", _LEGACY_HEADER.size, 0, total)
    _index, event_type, digest, size = _LEGACY_HEADER.unpack_from(view, 0)  # CCEL puts 1 there
    if event_type != EV_NO_ACTION or digest != bytes(20):
        raise ParseError(
            "spec_id", "the log does not start with an EV_NO_ACTION Spec ID event", prefix=prefix
        )
    pos = _LEGACY_HEADER.size
    if pos + size > total:
        raise _fail(prefix, "spec_id.data", size, pos, total)
    spec_id = _parse_spec_id(bytes(view[pos : pos + size]), prefix)
    pos += size
    algorithms = spec_id.algorithms
    count_expected = len(algorithms)
    sizes = dict(algorithms)
    events: list[E] = []
    header = _EVENT2_HEADER
    # The usual record lists the digests in the Spec ID order: one fixed-size block, checked at once.
    alg_ids = struct.Struct("<" + "".join(f"H{size}x" for _, size in algorithms))  # ids, digests skipped
    block = alg_ids.size
    layout = []
    offset = 0
    for alg, size in algorithms:
        layout.append((alg, offset + 2, offset + 2 + size))
        offset += 2 + size
    expected_ids = tuple(alg for alg, _ in algorithms)
    while pos + header.size <= total:
        index, event_type, count = header.unpack_from(view, pos)
        if index == _END_OF_LOG or (index == 0 and event_type == 0 and count == 0):
            break
        pos += header.size
        if index > max_index:
            raise ParseError(f"event[{len(events)}].{index_field}", index_error(index), prefix=prefix)
        if count != count_expected:
            raise ParseError(
                f"event[{len(events)}].digest_count",
                f"{count} digests for {count_expected} algorithms",
                prefix=prefix,
            )
        if pos + block <= total and alg_ids.unpack_from(view, pos) == expected_ids:
            digests = tuple((alg, bytes(view[pos + a : pos + b])) for alg, a, b in layout)
            pos += block
        else:
            digests, pos = _digests(view, pos, count, sizes, f"event[{len(events)}]", prefix)
        if pos + 4 > total:
            raise _fail(prefix, f"event[{len(events)}].size", 4, pos, total)
        event_size = _U32.unpack_from(view, pos)[0]
        pos += 4
        if pos + event_size > total:
            raise _fail(prefix, f"event[{len(events)}].data", event_size, pos, total)
        events.append(make_event(index, event_type, digests, bytes(view[pos : pos + event_size])))
        pos += event_size
    return spec_id, events


def _parse_legacy(data: bytes, prefix: str, max_index: int) -> list[Event]:
    """The SHA-1-only layout: ``TCG_PCClientPCREvent`` records to the end (same end rules)."""
    view = memoryview(data)
    total = len(view)
    header = _LEGACY_HEADER
    if total < header.size:
        raise _fail(prefix, "event[0]", header.size, 0, total)
    events: list[Event] = []
    pos = 0
    while pos + header.size <= total:
        index, event_type, digest, size = header.unpack_from(view, pos)
        if index == _END_OF_LOG or (index == 0 and event_type == 0 and size == 0 and digest == bytes(20)):
            break
        field = f"event[{len(events)}]"
        if index > max_index:
            raise ParseError(f"{field}.pcr_index", f"PCR index {index} is not 0-{max_index}", prefix=prefix)
        pos += header.size
        if pos + size > total:
            raise _fail(prefix, f"{field}.data", size, pos, total)
        events.append(Event(index, event_type, ((TPM_ALG_SHA1, digest),), bytes(view[pos : pos + size])))
        pos += size
    return events


def _startup_locality(events: tuple[Event, ...], prefix: str) -> int | None:
    """The StartupLocality event (PFP): EV_NO_ACTION in PCR 0, before any PCR 0 extend."""
    locality = None
    extended = False
    for i, event in enumerate(events):
        if event.event_type != EV_NO_ACTION:
            extended = extended or event.pcr_index == 0
            continue
        if not event.data.startswith(STARTUP_LOCALITY_SIGNATURE):
            continue
        field = f"event[{i}].startup_locality"
        if len(event.data) != len(STARTUP_LOCALITY_SIGNATURE) + 1:
            raise ParseError(field, f"{len(event.data)} bytes, expected 17", prefix=prefix)
        if event.pcr_index != 0 or extended or locality is not None:
            raise ParseError(field, "not a single PCR 0 event before PCR 0 is extended", prefix=prefix)
        locality = event.data[-1]
    return locality


def parse(data: bytes) -> EventLog:
    """A TCG event log in either layout: crypto-agile if the first record is a Spec ID Event03,
    otherwise the legacy SHA-1-only layout."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ParseError("log", f"expected bytes, got {type(data).__name__}", prefix=PREFIX)
    raw = bytes(data)
    max_index = PCR_COUNT - 1
    first_size = _U32.unpack_from(raw, 28)[0] if len(raw) >= _LEGACY_HEADER.size else 0
    first_data = raw[_LEGACY_HEADER.size : _LEGACY_HEADER.size + len(SPEC_ID_SIGNATURE)]
    if first_size >= len(SPEC_ID_SIGNATURE) and SPEC_ID_SIGNATURE.startswith(first_data):
        # A Spec ID event, or one cut short inside its signature.
        if _U32.unpack_from(raw, 0)[0] != 0:
            raise ParseError("spec_id", "the Spec ID event is not logged in PCR 0", prefix=PREFIX)
        spec_id, agile_events = parse_crypto_agile(
            raw,
            prefix=PREFIX,
            max_index=max_index,
            index_field="pcr_index",
            index_error=lambda index: f"PCR index {index} is not 0-{max_index}",
            make_event=Event,
        )
        events = tuple(agile_events)
        return EventLog(True, spec_id.algorithms, events, spec_id, _startup_locality(events, PREFIX))
    events = tuple(_parse_legacy(raw, PREFIX, max_index))
    return EventLog(False, ((TPM_ALG_SHA1, 20),), events, None, _startup_locality(events, PREFIX))


# -- replay ----------------------------------------------------------------------------------------


def _initial(index: int, size: int, locality: int | None) -> bytes:
    if index in DRTM_PCRS:
        return b"\xff" * size
    if index == 0 and locality is not None:
        return bytes(size - 1) + bytes((locality,))
    return bytes(size)


def replay(log: EventLog) -> dict[str, dict[int, bytes]]:
    """PCR 0-23 per bank ("sha1", "sha256", "sha384", "sha512"; only those the log carries) as the
    log claims them: each PCR starts at zero (PCR 0 at 00..00 || locality after a StartupLocality
    event; the DRTM PCRs 17-22 at all ones) and every event but EV_NO_ACTION extends
    PCR = H(PCR || digest)."""
    out: dict[str, dict[int, bytes]] = {}
    extending = [e for e in log.events if e.event_type != EV_NO_ACTION]
    for alg, size in log.algorithms:
        name = BANKS.get(alg)
        if name is None:
            continue
        hash_fn = _HASHES[alg]
        pcrs = [_initial(i, size, log.startup_locality) for i in range(PCR_COUNT)]
        for event in extending:
            digest = event.digest(alg)
            if digest is None:  # only a hand-built log can lack one: the parser demands every bank
                raise ParseError("event.digest", f"an event has no {name} digest", prefix=PREFIX)
            index = event.pcr_index
            pcrs[index] = hash_fn(pcrs[index] + digest).digest()
        out[name] = dict(enumerate(pcrs))
    return out


def extended_pcrs(log: EventLog) -> list[int]:
    """The PCRs some event extends, plus PCR 0 when a StartupLocality event set it, in order."""
    pcrs = {e.pcr_index for e in log.events if e.event_type != EV_NO_ACTION}
    if log.startup_locality is not None:
        pcrs.add(0)
    return sorted(pcrs)


def verify_against(log: EventLog, quoted: Mapping[str, Mapping[int, bytes]]) -> None:
    """Accept ``log`` only if, for every quoted PCR of every bank the log carries, its replay gives
    the quoted value. Banks the log does not carry are skipped; a quote sharing no bank with the log
    is refused (nothing would be checked). The first differing PCR (log bank order, then index) is
    named. Pass only the PCRs the log should explain: PCR 10 (IMA) for one is measured elsewhere."""
    replayed = replay(log)
    checked = 0
    for bank, pcrs in replayed.items():
        wanted = quoted.get(bank)
        if not wanted:
            continue
        for index in sorted(wanted):
            value = bytes(wanted[index])
            got = pcrs.get(index)
            if got is None:
                raise VerificationError(EVENTLOG_REPLAY, f"{bank} PCR {index}: not a PCR the log can give")
            if got != value:
                raise VerificationError(
                    EVENTLOG_REPLAY, f"{bank} PCR {index}: log gives {got.hex()}, quote has {value.hex()}"
                )
            checked += 1
    if not checked:
        raise VerificationError(
            EVENTLOG_REPLAY, f"the quote has no PCR in the log's banks ({', '.join(replayed) or 'none'})"
        )


# -- claims ----------------------------------------------------------------------------------------

GRUB_CMD_PREFIX = b"grub_cmd: "
GRUB_CMDLINE_PREFIX = b"kernel_cmdline: "
_BOOT_LOADER_PCRS = (8, 9)  # where GRUB measures its commands, command line and files
_SECURE_BOOT_VARIABLES = (
    (EFI_GLOBAL_VARIABLE, "PK", "eventlog.pk"),
    (EFI_GLOBAL_VARIABLE, "KEK", "eventlog.kek"),
    (EFI_IMAGE_SECURITY_DATABASE, "db", "eventlog.db"),
    (EFI_IMAGE_SECURITY_DATABASE, "dbx", "eventlog.dbx"),
)


def _checked(event: Event, index: int, alg: int, measured: bytes) -> None:
    """The quote binds digests, not event data: believe ``event.data`` only if ``measured`` (the
    part of it the PFP or the boot loader says was hashed) hashes to the event's digest."""
    digest = event.digest(alg)
    if digest is None or _HASHES[alg](measured).digest() != digest:
        raise VerificationError(
            EVENTLOG_DATA,
            f"event {index} ({event.type_name}, PCR {event.pcr_index}): its data does not match its {BANKS[alg]} digest",
        )


def _variable(data: bytes, index: int) -> tuple[bytes, str, bytes]:
    """``UEFI_VARIABLE_DATA``: (vendor GUID, name, variable data), every length accounted for."""
    if len(data) < _VARIABLE_HEADER.size:
        raise ParseError(
            f"event[{index}].variable", f"{len(data)} bytes, shorter than its header", prefix=PREFIX
        )
    guid, name_chars, data_size = _VARIABLE_HEADER.unpack_from(data, 0)
    start = _VARIABLE_HEADER.size + 2 * name_chars
    if start + data_size != len(data):
        raise ParseError(
            f"event[{index}].variable",
            f"name and data lengths do not add up to {len(data)} bytes",
            prefix=PREFIX,
        )
    name = data[_VARIABLE_HEADER.size : start].decode("utf-16-le", errors="replace")
    return guid, name, data[start:]


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")


def claims(log: EventLog, bank: str | None = None) -> dict[str, Any]:
    """What the events say. Read them only after ``verify_against`` accepted the log for ``bank``
    (default: "sha256" if the log carries it, else its first bank): the replay binds the digests of
    that bank, and event data is used only where it hashes to its digest there (else
    ``VerificationError`` ``tpm.eventlog_data``).

    * ``eventlog.secure_boot``: the SecureBoot variable (EFI global variable GUID) measured by an
      EV_EFI_VARIABLE_DRIVER_CONFIG event in PCR 7 holds 1; False when it is 0, empty or absent.
    * ``eventlog.pk``, ``.kek``, ``.db``, ``.dbx``: SHA-256 of the *variable data* (the signature
      lists, without the UEFI_VARIABLE_DATA wrapper) of the first such event for each variable,
      hex; None when not measured. The whole event data is first checked against its digest.
    * ``eventlog.boot_loader_digests`` and ``eventlog.kernel_digest``: digests (hex, in ``bank``) of
      the EV_EFI_BOOT_SERVICES_APPLICATION events in PCR 4. The kernel is the last such image
      started after the boot loader's first EV_IPL event in PCR 8/9 (an EFI-stub kernel or UKI
      started through LoadImage); when the log has no such PCR 8/9 event, the last of two or more
      images. Every other image is the boot-loader chain (shim, GRUB, ...), in log order. When GRUB
      loads the kernel itself (it then measures the file into PCR 9 only), kernel_digest is None.
    * ``eventlog.kernel_cmdline``: the last "kernel_cmdline: " EV_IPL text in PCR 8/9 (GRUB; its
      digest covers the text after the prefix, without the NUL), else None.
    * ``eventlog.grub_cmds``: the "grub_cmd: " texts in PCR 8/9, in order, each checked likewise.
    * ``eventlog.separators``: {PCR (as a string): "normal" | "error" | data hex} for every
      EV_SEPARATOR: "normal" for 00000000, "error" for FFFFFFFF.
    * ``eventlog.event_count``: events after the Spec ID event; ``eventlog.bank``: the bank used.
    """
    names = {BANKS[alg]: alg for alg, _ in log.algorithms if alg in BANKS}
    if bank is None:
        bank = "sha256" if "sha256" in names else next(iter(names), None)
    if bank not in names:
        raise VerificationError(EVENTLOG_DATA, f"the log has no {bank} bank to read claims from")
    alg = names[bank]
    secure_boot = False
    variables: dict[str, str | None] = {key: None for _, _, key in _SECURE_BOOT_VARIABLES}
    apps: list[tuple[int, bytes]] = []
    handoff: int | None = None
    cmdline: str | None = None
    grub_cmds: list[str] = []
    separators: dict[str, str] = {}
    seen: set[str] = set()
    for i, event in enumerate(log.events):
        kind, pcr, data = event.event_type, event.pcr_index, event.data
        if kind == EV_EFI_VARIABLE_DRIVER_CONFIG and pcr == 7:
            _checked(event, i, alg, data)
            guid, name, value = _variable(data, i)
            if guid == EFI_GLOBAL_VARIABLE and name == "SecureBoot" and "SecureBoot" not in seen:
                seen.add("SecureBoot")
                secure_boot = value == b"\x01"
            for want_guid, want_name, key in _SECURE_BOOT_VARIABLES:
                if guid == want_guid and name == want_name and key not in seen:
                    seen.add(key)
                    variables[key] = hashlib.sha256(value).hexdigest()
        elif kind == EV_EFI_BOOT_SERVICES_APPLICATION and pcr == 4:
            digest = event.digest(alg)
            if digest is not None:
                apps.append((i, digest))
        elif kind == EV_IPL and pcr in _BOOT_LOADER_PCRS:
            if handoff is None:
                handoff = i
            for prefix in (GRUB_CMD_PREFIX, GRUB_CMDLINE_PREFIX):
                if data.startswith(prefix):
                    text = data[len(prefix) :]
                    text = text[:-1] if text.endswith(b"\x00") else text
                    _checked(event, i, alg, text)
                    if prefix is GRUB_CMD_PREFIX:
                        grub_cmds.append(_text(text))
                    else:
                        cmdline = _text(text)
        elif kind == EV_SEPARATOR:
            _checked(event, i, alg, data)
            state = {SEPARATOR_NORMAL: "normal", SEPARATOR_ERROR: "error"}.get(data, data.hex())
            separators.setdefault(str(pcr), state)
    kernel: tuple[int, bytes] | None = None
    if handoff is not None:
        kernel = next((app for app in reversed(apps) if app[0] > handoff), None)
    elif len(apps) >= 2:
        kernel = apps[-1]
    out: dict[str, Any] = {
        "eventlog.bank": bank,
        "eventlog.secure_boot": secure_boot,
        **variables,
        "eventlog.boot_loader_digests": [app[1].hex() for app in apps if app is not kernel],
        "eventlog.kernel_digest": kernel[1].hex() if kernel is not None else None,
        "eventlog.kernel_cmdline": cmdline,
        "eventlog.grub_cmds": grub_cmds,
        "eventlog.separators": dict(sorted(separators.items(), key=lambda item: int(item[0]))),
        "eventlog.event_count": len(log.events),
    }
    return out
