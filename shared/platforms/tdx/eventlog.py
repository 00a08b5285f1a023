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
from shared.platforms.tpm.eventlog import EV_NO_ACTION, TPM_ALG_SHA384, parse_crypto_agile

CCEL_SIGNATURE = b"CCEL"
CCEL_TABLE_SIZE = 56
CC_TYPE_TDX = 2

SHA384_SIZE = 48
RTMR_COUNT = 4

_ACPI_HEADER = struct.Struct("<4sIBB6s8sI4sI")
_CCEL_BODY = struct.Struct("<BBHQQ")


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


def parse_event_log(data: bytes) -> EventLog:
    """A TCG2 crypto-agile log: the legacy-format Spec ID event, then TCG_PCR_EVENT2 records up to
    an 0xFFFFFFFF index, an all-zero header or the end of the buffer (the log area's fill). The
    layout is parsed by the one TCG implementation, ``shared.platforms.tpm.eventlog``."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ParseError("ccel.log", f"expected bytes, got {type(data).__name__}")
    spec_id, events = parse_crypto_agile(
        bytes(data),
        prefix="parse.ccel",
        max_index=RTMR_COUNT,
        index_field="mr_index",
        index_error=lambda index: f"CC MR index {index} is not MRTD or an RTMR",
        make_event=Event,
    )
    return EventLog(spec_id.algorithms, tuple(events))


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
