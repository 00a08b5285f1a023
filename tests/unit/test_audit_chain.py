"""The audit hash chain: what it writes, and what the verifier catches when a line is tampered with."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from services.audit.chain import (
    GENESIS,
    AuditChain,
    AuditChainError,
    AuditSigner,
    AuditTailCorrupt,
    record_hash,
    record_line,
)
from services.audit.verify import format_result, load_keys, verify_file, verify_records

SIGNER = AuditSigner.generate()  # one key for the module: generating is cheap but not free
KEYS = {SIGNER.key_id: SIGNER.verifier}


def decision(n: int, status: str = "affirming") -> dict:
    return {
        "meta": {"request_id": f"req-{n:03d}", "tee": "snp"},
        "status": status,
        "reason": "",
        "decided_at": 1_700_000_000.25 + n,
        "vector": {"hardware": 2, "executables": 2},
    }


def write_trail(chain: AuditChain, first: int, last: int, *, every: int = 10) -> list[bytes]:
    """Events ``first..last`` (every 7th an admin change), a checkpoint after each ``every`` events.
    Stream sequences skip numbers, as refused messages never reach the chain."""
    lines = []
    for n in range(first, last + 1):
        if n % 7 == 0:
            record = chain.append({"bucket": "policies", "key": f"p{n}", "op": "put"}, 3 * n, "admin")
        else:
            record = chain.append(decision(n), 3 * n, "decision")
        lines.append(record_line(record))
        if n % every == 0:
            lines.append(record_line(chain.checkpoint(at=1_700_000_100.0 + n)))
    return lines


@pytest.fixture
def lines() -> list[bytes]:
    # 50 events and 5 checkpoints: event n sits on line n + (n - 1) // 10; checkpoints on 11, 22, ... 55.
    return write_trail(AuditChain(SIGNER), 1, 50)


def save(tmp_path: Path, lines: list[bytes]) -> Path:
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b"".join(lines))
    return path


def rewrite(line: bytes, **changes: object) -> bytes:
    record = json.loads(line)
    record.update(changes)
    return json.dumps(record).encode() + b"\n"  # deliberately not canonical: formatting must not matter


def test_record_format(lines: list[bytes]) -> None:
    first, checkpoint = json.loads(lines[0]), json.loads(lines[10])
    assert set(first) == {"v", "i", "kind", "source_seq", "event", "prev", "hash", "sig", "kid"}
    assert (first["v"], first["i"], first["kind"], first["source_seq"]) == (1, 1, "decision", 3)
    assert first["prev"] == GENESIS and first["hash"] == record_hash(first) and first["kid"] == SIGNER.key_id
    assert first["event"] == decision(1)
    assert len(SIGNER.key_id) == 16 and int(SIGNER.key_id, 16) >= 0
    assert json.loads(lines[6])["kind"] == "admin"
    assert checkpoint["kind"] == "checkpoint" and checkpoint["i"] == 11 and checkpoint["covers"] == 10
    assert checkpoint["source_seq"] == 30 and checkpoint["at"] == 1_700_000_110.0
    assert checkpoint["prev"] == json.loads(lines[9])["hash"]
    assert lines[0] == record_line(first)  # canonical: one record, one byte string


def test_intact_trail_verifies(tmp_path: Path, lines: list[bytes]) -> None:
    result = verify_file(save(tmp_path, lines), KEYS)
    assert (result.ok, result.reason, result.records, result.first_bad) == (True, "audit.ok", 55, None)
    assert (result.last_checkpoint, result.unsealed_tail, result.last_source_seq) == (55, 0, 150)
    # Parsed records, str lines and re-formatted lines are the same trail.
    assert verify_records([json.loads(x) for x in lines], KEYS) == result
    assert verify_records([rewrite(x).decode() for x in lines], KEYS) == result
    assert format_result(result).startswith("Audit trail intact: 55 records verified")


def test_unsealed_tail_is_reported(lines: list[bytes]) -> None:
    result = verify_records(lines[:-4], KEYS)  # the writer stopped (or was cut) three events after line 44
    assert (result.ok, result.records, result.last_checkpoint, result.unsealed_tail) == (True, 51, 44, 7)
    assert "7 records after it are not sealed" in format_result(result)


def test_removed_event_is_a_gap(lines: list[bytes]) -> None:
    del lines[12]  # event 12
    result = verify_records(lines, KEYS)
    assert (result.ok, result.reason, result.first_bad, result.index) == (False, "audit.gap", 13, 14)
    assert result.records == 12 and result.last_checkpoint == 11
    assert "record 13 is missing" in result.detail
    text = format_result(result)
    assert "line 13 (record 14, request id req-013)" in text and "audit.gap" in text


def test_swapped_events_are_reordered(lines: list[bytes]) -> None:
    lines[12], lines[13] = lines[13], lines[12]
    result = verify_records(lines, KEYS)
    assert (result.ok, result.reason, result.first_bad, result.index) == (False, "audit.reordered", 13, 14)
    assert "record 13 comes later, at line 14" in result.detail


def test_repeated_line_is_reordered(lines: list[bytes]) -> None:
    lines.insert(20, lines[19])
    result = verify_records(lines, KEYS)
    assert (result.reason, result.first_bad, result.index) == ("audit.reordered", 21, 20)


def test_altered_event_is_a_hash_mismatch(lines: list[bytes]) -> None:
    record = json.loads(lines[12])
    record["event"]["status"] = "contraindicated"
    lines[12] = json.dumps(record).encode() + b"\n"
    result = verify_records(lines, KEYS)
    assert not result.ok and result.reason == "audit.hash_mismatch"
    assert (result.first_bad, result.index, result.records) == (13, 13, 12)
    assert result.request_id == "req-012" and "request id req-012" in format_result(result)


def test_altered_event_with_recomputed_hash_has_a_bad_signature(lines: list[bytes]) -> None:
    record = json.loads(lines[12])
    record["event"]["status"] = "contraindicated"
    record["hash"] = record_hash(record)
    lines[12] = record_line(record)
    result = verify_records(lines, KEYS)
    assert (result.reason, result.first_bad, result.index) == ("audit.bad_signature", 13, 13)


def test_rechained_tail_without_the_key_is_caught(lines: list[bytes]) -> None:
    # Remove event 12 and rebuild every later record with another key: the chain is whole, the key is not ours.
    forger = AuditChain(AuditSigner.generate(), json.loads(lines[11])["hash"], 12, 33)
    originals = [json.loads(x) for x in lines[13:20]]
    forged = [forger.append(r["event"], r["source_seq"], r["kind"]) for r in originals]
    result = verify_records([*lines[:12], *(record_line(r) for r in forged)], KEYS)
    assert (result.reason, result.first_bad, result.index) == ("audit.unknown_key", 13, 13)


def test_rotated_key_verifies_with_both_public_keys(lines: list[bytes]) -> None:
    last = json.loads(lines[-1])
    successor = AuditSigner.generate()
    tail = write_trail(AuditChain.resume(last, successor), 51, 55, every=5)
    assert verify_records([*lines, *tail], KEYS).reason == "audit.unknown_key"
    both = {**KEYS, successor.key_id: successor.verifier}
    result = verify_records([*lines, *tail], both)
    assert (result.ok, result.records, result.last_checkpoint) == (True, 61, 61)


def test_out_of_order_source_events_are_reordered(lines: list[bytes]) -> None:
    # Only a faulty writer could sign this (e.g. one that chained a redelivered message twice).
    chain = AuditChain(SIGNER, json.loads(lines[-1])["hash"], 55, source_seq=0)
    result = verify_records([*lines, record_line(chain.append(decision(51), 100, "decision"))], KEYS)
    assert (result.reason, result.first_bad, result.index) == ("audit.reordered", 56, 56)
    assert "source_seq 100, not after 150" in result.detail


def test_truncated_last_line_is_malformed(tmp_path: Path, lines: list[bytes]) -> None:
    lines[-1] = lines[-1][:40]
    result = verify_file(save(tmp_path, lines), KEYS)
    assert (result.ok, result.reason, result.first_bad, result.index) == (False, "audit.malformed", 55, None)
    assert result.records == 54 and result.unsealed_tail == 10


def test_other_malformed_lines(lines: list[bytes]) -> None:
    duplicate = lines[4].rstrip(b"}\n") + b',"i":5}\n'
    assert verify_records([*lines[:4], duplicate], KEYS).reason == "audit.malformed"
    assert verify_records([*lines[:4], rewrite(lines[4], extra=1)], KEYS).reason == "audit.malformed"
    assert verify_records([*lines[:4], rewrite(lines[4], i=True)], KEYS).reason == "audit.malformed"
    assert verify_records([*lines[:4], rewrite(lines[4], v=2)], KEYS).reason == "audit.unsupported_version"
    assert verify_records([*lines[:4], b"[]\n"], KEYS).reason == "audit.malformed"


def test_partial_trail(lines: list[bytes]) -> None:
    assert verify_records(lines[11:], KEYS).reason == "audit.gap"
    result = verify_records(lines[11:], KEYS, allow_partial=True)
    assert (result.ok, result.records, result.last_checkpoint) == (True, 44, 55)


def test_resume_continues_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b"".join(write_trail(AuditChain(SIGNER), 1, 23)))  # crash: no checkpoint after 20
    chain = AuditChain.resume_file(path, SIGNER)
    assert (chain.index, chain.source_seq) == (25, 69)
    with pytest.raises(AuditChainError) as redelivered:
        chain.append(decision(23), 69, "decision")  # redelivered after the crash: already on disk
    assert redelivered.value.reason == "audit.source_order" and chain.index == 25
    with path.open("ab") as out:
        out.write(b"".join(write_trail(chain, 24, 35)))
        out.write(record_line(chain.checkpoint(at=1_700_000_200.0)))  # clean stop
    restarted = AuditChain.resume_file(path, SIGNER)  # from a checkpoint: the stream position survives
    assert (restarted.index, restarted.source_seq) == (39, 105)
    result = verify_file(path, KEYS)
    assert (result.ok, result.records, result.last_checkpoint, result.unsealed_tail) == (True, 39, 39, 0)
    assert AuditChain.resume_file(tmp_path / "absent.jsonl", SIGNER).index == 0


def test_resume_refuses_a_corrupt_tail(tmp_path: Path, lines: list[bytes]) -> None:
    altered = json.loads(lines[-2])
    altered["event"]["status"] = "contraindicated"
    forged = dict(altered, hash=record_hash(altered))
    for tail in (lines[-1][:40], lines[-1].rstrip(b"\n"), record_line(altered), record_line(forged), b"\n"):
        path = save(tmp_path, [*lines[:-2], tail])
        with pytest.raises(AuditTailCorrupt) as caught:
            AuditChain.resume_file(path, SIGNER)
        assert caught.value.reason == "audit.tail_corrupt"
    with pytest.raises(AuditTailCorrupt):
        AuditChain.resume(altered, SIGNER)


def test_signer_files(tmp_path: Path) -> None:
    key_path = tmp_path / "keys" / "audit-key.pem"
    signer = AuditSigner.load_or_create(key_path)
    pub_path = tmp_path / "keys" / "audit-key.pub.pem"
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600 and stat.S_IMODE(pub_path.stat().st_mode) == 0o644
    assert key_path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert pub_path.read_bytes() == signer.public_pem()
    assert AuditSigner.load_or_create(key_path).key_id == signer.key_id  # loaded, not replaced
    assert [p.name for p in sorted((tmp_path / "keys").iterdir())] == ["audit-key.pem", "audit-key.pub.pem"]
    keys = load_keys([pub_path])
    assert list(keys) == [signer.key_id] and keys[signer.key_id].verify(signer.sign(b"x"), b"x")
    assert not keys[signer.key_id].verify(signer.sign(b"x"), b"y")


def test_awkward_events_round_trip() -> None:
    chain = AuditChain(SIGNER)
    event = {
        "naïve": "ünïcødé ☃",
        "floats": [1e21, 0.1, -0.0, 5.0],
        "pair": (1, 2),
        "nested": {"b": 1, "a": None},
    }
    record = chain.append(event, 1, "admin")
    event["pair"] = "changed later"  # the record holds its own copy
    assert record["event"]["pair"] == [1, 2] and record["hash"] == record_hash(record)
    assert verify_records([record_line(record)], KEYS).ok
    for unencodable in ({"big": 2**60}, {"nan": float("nan")}, {"raw": b"\x00"}, {1: "key"}):
        with pytest.raises(AuditChainError) as caught:
            chain.append(unencodable, 2, "decision")
        assert caught.value.reason == "audit.unencodable" and (chain.index, chain.source_seq) == (1, 1)
