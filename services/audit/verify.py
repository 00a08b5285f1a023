"""Checking an audit trail written with ``services.audit.chain``, offline: the file plus public keys.

Detected: a removed, repeated, reordered or edited record anywhere, a record re-chained or forged by
someone without the audit key, a line that is not a whole record, and source events out of stream order.
Not detected from the file alone: records cut off the end. A trail that a clean stop sealed ends with a
checkpoint, so records after the last checkpoint are reported as ``unsealed_tail``; a cut exactly at a
checkpoint needs an outside reference (the stream's last sequence, or a checkpoint hash kept elsewhere).
Whoever holds the audit private key can rewrite everything; the signatures only prove the trail came
from that key.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from services.audit.chain import (
    CHECKPOINT,
    GENESIS,
    VERSION,
    AuditChainError,
    AuditVerifierKey,
    is_int,
    parse_line,
    record_hash,
    record_problem,
    signature_valid,
)

OK: Final = "audit.ok"
MALFORMED: Final = "audit.malformed"
UNSUPPORTED_VERSION: Final = "audit.unsupported_version"
GAP: Final = "audit.gap"
REORDERED: Final = "audit.reordered"
PREV_MISMATCH: Final = "audit.prev_mismatch"
HASH_MISMATCH: Final = "audit.hash_mismatch"
UNKNOWN_KEY: Final = "audit.unknown_key"
BAD_SIGNATURE: Final = "audit.bad_signature"
BAD_CHECKPOINT: Final = "audit.bad_checkpoint"


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    records: int  # records that verified (all of them, or those before the first bad one)
    first_bad: int | None  # 1-based line (position in the input) of the first bad record
    index: int | None  # the ``i`` that bad record carries, if it has a readable one
    reason: str  # stable dotted name, "audit.ok" when intact
    detail: str
    last_checkpoint: int | None  # ``i`` of the last verified checkpoint
    unsealed_tail: int  # verified records after that checkpoint (all of them if there is none)
    request_id: str | None = None  # of the bad record's event, to look it up elsewhere
    last_source_seq: int | None = None  # stream sequence reached: compare with the stream for a cut end


class _Bad(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


class _Walk:
    """What the records so far establish; ``None`` means not known yet (a partial trail's start)."""

    def __init__(self, keys: Mapping[str, AuditVerifierKey], partial: bool) -> None:
        self.keys = keys
        self.next_i: int | None = None if partial else 1
        self.head: str | None = None if partial else GENESIS
        self.source_seq: int | None = None if partial else 0
        self.records = 0
        self.last_checkpoint: int | None = None
        self.unsealed = 0

    def check(self, record: Mapping[str, Any]) -> None:
        """Raise ``_Bad`` for the first thing wrong with ``record``, in the documented order."""
        if "v" not in record:
            raise _Bad(MALFORMED, "no version member 'v'")
        if not is_int(record["v"]) or record["v"] != VERSION:
            raise _Bad(UNSUPPORTED_VERSION, f"version {record['v']!r}, this verifier reads {VERSION}")
        problem = record_problem(record)
        if problem:
            raise _Bad(MALFORMED, problem)
        i = record["i"]
        expected = i if self.next_i is None else self.next_i
        if i > expected:
            raise _Bad(GAP, f"expected record {expected}, found record {i}")
        if i < expected:
            raise _Bad(REORDERED, f"record {i} appears again after record {expected - 1}")
        if self.head is not None and record["prev"] != self.head:
            raise _Bad(PREV_MISMATCH, f"record {i} does not follow record {i - 1} (prev differs)")
        try:
            digest = record_hash(record)
        except AuditChainError as exc:
            raise _Bad(MALFORMED, f"record {i} cannot be canonicalised: {exc.detail}") from exc
        if digest != record["hash"]:
            raise _Bad(HASH_MISMATCH, f"record {i} was altered: its content does not match its hash")
        key = self.keys.get(record["kid"])
        if key is None:
            raise _Bad(UNKNOWN_KEY, f"record {i} is signed by unknown key {record['kid']!r}")
        if not signature_valid(record, key):
            raise _Bad(BAD_SIGNATURE, f"record {i} signature does not verify under key {record['kid']!r}")
        self._check_source(record)

    def _check_source(self, record: Mapping[str, Any]) -> None:
        i, seq = record["i"], record["source_seq"]
        if record["kind"] == CHECKPOINT:
            if record["covers"] != i - 1:
                raise _Bad(BAD_CHECKPOINT, f"checkpoint {i} covers {record['covers']}, not {i - 1}")
            if self.source_seq is not None and seq != self.source_seq:
                raise _Bad(BAD_CHECKPOINT, f"checkpoint {i} states source_seq {seq}, not {self.source_seq}")
        elif self.source_seq is not None and seq <= self.source_seq:
            # Only the key holder could sign this, so it is a writer fault (e.g. a redelivery chained twice).
            raise _Bad(REORDERED, f"record {i} has source_seq {seq}, not after {self.source_seq}")

    def advance(self, record: Mapping[str, Any]) -> None:
        self.next_i, self.head, self.source_seq = record["i"] + 1, record["hash"], record["source_seq"]
        self.records += 1
        if record["kind"] == CHECKPOINT:
            self.last_checkpoint, self.unsealed = record["i"], 0
        else:
            self.unsealed += 1


def verify_records(
    records: Iterable[Mapping[str, Any] | bytes | str],
    keys: Mapping[str, AuditVerifierKey],
    *,
    allow_partial: bool = False,
) -> VerifyResult:
    """Check records (parsed, or JSON lines) in trail order; stop at the first bad one.

    A whole trail starts at record 1 after the genesis hash. With ``allow_partial`` (an excerpt), it
    starts at whatever the first record is; that record's ``prev`` and ``source_seq`` are then taken
    on trust, everything from there on is checked."""
    walk = _Walk(keys, allow_partial)
    items = iter(records)
    for line, item in enumerate(items, start=1):
        record: Any = None
        try:
            record = _as_record(item)
            walk.check(record)
        except _Bad as bad:
            if bad.reason == GAP:
                bad = _gap_or_reordered(bad, walk.next_i, items, line)
            index = record.get("i") if isinstance(record, Mapping) and is_int(record.get("i")) else None
            return _result(walk, False, line, index, bad.reason, bad.detail, request_id_of(record))
        walk.advance(record)
    return _result(walk, True, None, None, OK, f"{walk.records} records verified", None)


def verify_file(
    path: Path, keys: Mapping[str, AuditVerifierKey], *, allow_partial: bool = False
) -> VerifyResult:
    """``verify_records`` over a JSON-lines file, streamed, lines numbered from 1."""
    with open(path, "rb") as fh:
        return verify_records(fh, keys, allow_partial=allow_partial)


def load_keys(paths: Sequence[Path]) -> dict[str, AuditVerifierKey]:
    """Public keys (PEM) by key id: every key the trail may have been signed with, rotations included."""
    keys = [AuditVerifierKey.from_pem(Path(p).read_bytes()) for p in paths]
    return {key.key_id: key for key in keys}


def format_result(result: VerifyResult) -> str:
    """A paragraph for the operator running ``remits audit verify``."""
    if not result.ok:
        return _format_broken(result)
    if result.records == 0:
        return "Audit trail is empty: there is nothing to verify."
    if result.last_checkpoint is None:
        sealed = f"there is no checkpoint, so none of the {result.unsealed_tail} verified records is sealed"
    elif result.unsealed_tail:
        sealed = (
            f"the last checkpoint is record {result.last_checkpoint} and the {result.unsealed_tail} records"
            " after it are not sealed (the writer is still running, stopped without a checkpoint, or the"
            " end of the file was cut off)"
        )
    else:
        sealed = f"it ends with checkpoint record {result.last_checkpoint}, which seals it"
    reached = "" if result.last_source_seq is None else f" up to stream sequence {result.last_source_seq}"
    return f"Audit trail intact: {result.records} records verified{reached}; {sealed}."


def _format_broken(result: VerifyResult) -> str:
    what = [] if result.index is None else [f"record {result.index}"]
    if result.request_id:
        what.append(f"request id {result.request_id}")
    named = f" ({', '.join(what)})" if what else ""
    last = "none" if result.last_checkpoint is None else f"record {result.last_checkpoint}"
    return (
        f"Audit trail BROKEN at line {result.first_bad}{named}: {result.reason}: {result.detail}."
        f" The {result.records} records before it verify (last checkpoint among them: {last}); nothing"
        " from this line on can be trusted."
    )


def request_id_of(record: Any) -> str | None:
    """The request id of a record's event, for decisions (``meta.request_id`` or ``request_id``)."""
    event = record.get("event") if isinstance(record, Mapping) else None
    if not isinstance(event, Mapping):
        return None
    meta = event.get("meta")
    found = meta.get("request_id") if isinstance(meta, Mapping) else None
    found = found if found is not None else event.get("request_id")
    return found if isinstance(found, str) and found else None


def _as_record(item: Mapping[str, Any] | bytes | str) -> Mapping[str, Any]:
    if isinstance(item, bytes | str):
        try:
            item = parse_line(item)
        except (UnicodeDecodeError, ValueError) as exc:
            raise _Bad(MALFORMED, f"not a JSON line ({exc})") from exc
    if not isinstance(item, Mapping):
        raise _Bad(MALFORMED, "not a JSON object")
    return item


def _gap_or_reordered(bad: _Bad, wanted: int | None, rest: Iterator[Any], line: int) -> _Bad:
    """A later record may be the one missing here, which makes this a reordering, not a loss. Reading
    on only happens once the trail has failed, so an intact trail is still checked in one pass."""
    for later, item in enumerate(rest, start=line + 1):
        try:
            record = _as_record(item)
        except _Bad:
            continue
        if wanted is not None and record.get("i") == wanted and is_int(record.get("i")):
            return _Bad(REORDERED, f"{bad.detail}; record {wanted} comes later, at line {later}")
    return _Bad(GAP, f"{bad.detail}; record {wanted} is missing")


def _result(
    walk: _Walk,
    ok: bool,
    line: int | None,
    index: int | None,
    reason: str,
    detail: str,
    request_id: str | None,
) -> VerifyResult:
    return VerifyResult(
        ok=ok,
        records=walk.records,
        first_bad=line,
        index=index,
        reason=reason,
        detail=detail,
        last_checkpoint=walk.last_checkpoint,
        unsealed_tail=walk.unsealed,
        request_id=request_id,
        last_source_seq=walk.source_seq,
    )
