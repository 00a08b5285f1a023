"""The TDX CCEL event log: the ACPI CCEL table, the TCG2 crypto-agile log it points to, and the
replay of RTMR0-3.

A log proves nothing by itself: it is only a claim about what was measured. It becomes evidence
when replaying its digests reproduces the RTMRs of a verified quote (``verify_rtmrs``); only then
may its events be read as facts. Replay: each RTMR starts at 48 zero bytes and every event with
CC MR index 1-4 extends RTMR[index - 1] = SHA-384(RTMR || SHA-384 digest of the event).
EV_NO_ACTION events are informational and never extended; index 0 (MRTD) is not extendable.

Parsing raises ``ParseError`` (``parse.ccel.*``); a log that does not replay raises
``VerificationError`` (``tdx.rtmr_replay``).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from shared.errors import ParseError, VerificationError
from shared.platforms.tdx.checks import RTMR_REPLAY

CCEL_SIGNATURE = b"CCEL"
CCEL_TABLE_SIZE = 56
CC_TYPE_TDX = 2

EV_NO_ACTION = 0x00000003
TPM_ALG_SHA384 = 0x000C
SHA384_SIZE = 48
RTMR_COUNT = 4
_END_OF_LOG = 0xFFFFFFFF
_SPEC_ID_SIGNATURE = b"Spec ID Event03\x00"
_MAX_ALGORITHMS = 16  # a TCG log lists a handful; more means we are reading garbage

_ACPI_HEADER = struct.Struct("<4sIBB6s8sI4sI")
_CCEL_BODY = struct.Struct("<BBHQQ")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_LEGACY_HEADER = struct.Struct("<II20sI")
_EVENT_HEADER = struct.Struct("<III")


@dataclass(frozen=True, slots=True)
class CcelTable:
    revision: int
    oem_id: bytes
    oem_table_id: bytes
    cc_type: int
    cc_subtype: int
    log_area_minimum_length: int  # LAML
    log_area_start_address: int  # LASA


@dataclass(frozen=True, slots=True)
class Event:
    mr_index: int  # CC MR index: 0 MRTD, 1-4 RTMR0-3
    event_type: int
    digests: tuple[tuple[int, bytes], ...]  # (TPM_ALG_ID, digest)
    data: bytes

    def digest(self, algorithm: int) -> bytes | None:
        return next((d for alg, d in self.digests if alg == algorithm), None)


@dataclass(frozen=True, slots=True)
class EventLog:
    algorithms: tuple[tuple[int, int], ...]  # (TPM_ALG_ID, digest size) from the Spec ID event
    events: tuple[Event, ...]  # after the Spec ID event


def parse_ccel_table(data: bytes) -> CcelTable:
    """The 56-byte ACPI CCEL table (header, CC type/subtype, LAML, LASA), checksum verified."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ParseError("ccel.table", f"expected bytes, got {type(data).__name__}")
    raw = bytes(data)
    if len(raw) < CCEL_TABLE_SIZE:
        raise ParseError("ccel.table", f"needs {CCEL_TABLE_SIZE} bytes, got {len(raw)}")
    signature, length, revision, _checksum, oem_id, oem_table_id, _oem_rev, _creator, _creator_rev = (
        _ACPI_HEADER.unpack_from(raw, 0)
    )
    if signature != CCEL_SIGNATURE:
        raise ParseError("ccel.table.signature", f"expected {CCEL_SIGNATURE!r}, got {signature!r}")
    if length != CCEL_TABLE_SIZE or len(raw) != length:
        raise ParseError("ccel.table.length", f"table says {length} bytes, {len(raw)} given")
    if sum(raw) % 256 != 0:
        raise ParseError("ccel.table.checksum", "ACPI checksum does not sum to zero")
    cc_type, cc_subtype, _reserved, laml, lasa = _CCEL_BODY.unpack_from(raw, _ACPI_HEADER.size)
    if cc_type != CC_TYPE_TDX:
        raise ParseError("ccel.table.cc_type", f"expected {CC_TYPE_TDX} (TDX), got {cc_type}")
    return CcelTable(revision, oem_id, oem_table_id, cc_type, cc_subtype, laml, lasa)


class _Cursor:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, size: int, field: str) -> bytes:
        if size < 0 or self.pos + size > len(self.data):
            raise ParseError(
                field, f"needs {size} bytes at offset {self.pos:#x}, {len(self.data) - self.pos} left"
            )
        chunk = self.data[self.pos : self.pos + size]
        self.pos += size
        return chunk

    def u16(self, field: str) -> int:
        return int(_U16.unpack(self.take(2, field))[0])

    def u32(self, field: str) -> int:
        return int(_U32.unpack(self.take(4, field))[0])


def _spec_id_algorithms(event_data: bytes) -> tuple[tuple[int, int], ...]:
    cur = _Cursor(event_data)
    if cur.take(len(_SPEC_ID_SIGNATURE), "ccel.spec_id.signature") != _SPEC_ID_SIGNATURE:
        raise ParseError("ccel.spec_id.signature", "the first event is not a TCG2 Spec ID Event03")
    cur.take(4 + 1 + 1 + 1 + 1, "ccel.spec_id.header")  # platform class, version, errata, uintn size
    count = cur.u32("ccel.spec_id.algorithm_count")
    if not 0 < count <= _MAX_ALGORITHMS:
        raise ParseError("ccel.spec_id.algorithm_count", f"implausible algorithm count {count}")
    algorithms = tuple(
        (cur.u16("ccel.spec_id.algorithm"), cur.u16("ccel.spec_id.digest_size")) for _ in range(count)
    )
    if len({alg for alg, _ in algorithms}) != count:
        raise ParseError("ccel.spec_id.algorithm", "an algorithm is listed twice")
    return algorithms


def parse_event_log(data: bytes) -> EventLog:
    """A TCG2 crypto-agile log: the legacy-format Spec ID event, then TCG_PCR_EVENT2 records up
    to an 0xFFFFFFFF index, an all-zero header or the end of the buffer (the log area's fill)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ParseError("ccel.log", f"expected bytes, got {type(data).__name__}")
    cur = _Cursor(bytes(data))
    _index, event_type, digest, size = _LEGACY_HEADER.unpack(cur.take(_LEGACY_HEADER.size, "ccel.spec_id"))
    if event_type != EV_NO_ACTION or digest != bytes(20):
        raise ParseError("ccel.spec_id", "the log does not start with an EV_NO_ACTION Spec ID event")
    algorithms = _spec_id_algorithms(cur.take(size, "ccel.spec_id.data"))
    sizes = dict(algorithms)
    events: list[Event] = []
    while cur.pos + _EVENT_HEADER.size <= len(cur.data):
        mr_index, event_type, count = _EVENT_HEADER.unpack_from(cur.data, cur.pos)
        if mr_index == _END_OF_LOG or (mr_index == 0 and event_type == 0 and count == 0):
            break
        field = f"ccel.event[{len(events)}]"
        cur.pos += _EVENT_HEADER.size
        if mr_index > RTMR_COUNT:
            raise ParseError(f"{field}.mr_index", f"CC MR index {mr_index} is not MRTD or an RTMR")
        if not 0 < count <= len(sizes):
            raise ParseError(f"{field}.digest_count", f"{count} digests for {len(sizes)} algorithms")
        digests = []
        for _ in range(count):
            alg = cur.u16(f"{field}.algorithm")
            if alg not in sizes:
                raise ParseError(f"{field}.algorithm", f"algorithm {alg:#06x} is not in the Spec ID event")
            digests.append((alg, cur.take(sizes[alg], f"{field}.digest")))
        event_size = cur.u32(f"{field}.size")
        events.append(Event(mr_index, event_type, tuple(digests), cur.take(event_size, f"{field}.data")))
    return EventLog(algorithms, tuple(events))


def replay_rtmrs(log: EventLog) -> tuple[bytes, bytes, bytes, bytes]:
    """RTMR0-3 as the log claims them; every extending event must carry a SHA-384 digest."""
    rtmrs = [bytes(SHA384_SIZE)] * RTMR_COUNT
    for i, event in enumerate(log.events):
        if event.event_type == EV_NO_ACTION or event.mr_index == 0:
            continue
        digest = event.digest(TPM_ALG_SHA384)
        if digest is None or len(digest) != SHA384_SIZE:
            raise ParseError(f"ccel.event[{i}].digest", "no SHA-384 digest to extend with")
        slot = event.mr_index - 1
        rtmrs[slot] = hashlib.sha384(rtmrs[slot] + digest).digest()
    return rtmrs[0], rtmrs[1], rtmrs[2], rtmrs[3]


def verify_rtmrs(log: EventLog, quoted: Sequence[bytes]) -> None:
    """Accept ``log`` only if its replay equals the quote's RTMR0-3 exactly."""
    if len(quoted) != RTMR_COUNT:
        raise VerificationError(RTMR_REPLAY, f"expected {RTMR_COUNT} RTMRs, got {len(quoted)}")
    replayed = replay_rtmrs(log)
    bad = [i for i in range(RTMR_COUNT) if replayed[i] != bytes(quoted[i])]
    if bad:
        detail = "; ".join(f"RTMR{i}: log {replayed[i].hex()} != quote {bytes(quoted[i]).hex()}" for i in bad)
        raise VerificationError(RTMR_REPLAY, detail)
