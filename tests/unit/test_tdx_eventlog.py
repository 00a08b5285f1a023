"""CCEL: the ACPI table, the TCG2 crypto-agile log, and RTMR replay against real quotes -- the
cos113 log replays exactly; trustee's logs and any edited log do not."""

from __future__ import annotations

import hashlib
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.errors import ParseError, VerificationError
from shared.platforms.tdx import checks
from shared.platforms.tdx.abi import parse_quote
from shared.platforms.tdx.eventlog import (
    EV_NO_ACTION,
    TPM_ALG_SHA384,
    parse_ccel_table,
    parse_event_log,
    replay_rtmrs,
    verify_rtmrs,
)
from shared.platforms.tdx.verify import verify_quote
from tests.unit.test_tdx_vectors import (
    NEG_DIR,
    NEGATIVE,
    QUOTES,
    ROOT_DER,
    at,
    collateral,
    expected,
    raw_quote,
)

CCEL = QUOTES / "gotdx_cos113_ccel" / "ccel"
TABLE = (CCEL / "ccel_table.dat").read_bytes()
LOG = (CCEL / "ccel_data.dat").read_bytes()


def _rtmrs(case: str) -> tuple[bytes, bytes, bytes, bytes]:
    return parse_quote(raw_quote(case)).td_report.rtmrs


def test_ccel_table() -> None:
    table = parse_ccel_table(TABLE)
    assert table.cc_type == 2 and table.revision == 1 and table.oem_id == b"INTEL "
    assert table.log_area_minimum_length == len(LOG) == 262144


@pytest.mark.parametrize(
    ("offset", "value", "reason"),
    [
        (0, b"XCEL", "parse.ccel.table.signature"),
        (4, b"\x39", "parse.ccel.table.length"),
        (36, b"\x01", "parse.ccel.table.checksum"),
    ],
)
def test_ccel_table_is_checked(offset: int, value: bytes, reason: str) -> None:
    data = bytearray(TABLE)
    data[offset : offset + len(value)] = value
    with pytest.raises(ParseError) as info:
        parse_ccel_table(bytes(data))
    assert info.value.reason == reason


def test_log_matches_the_manifest() -> None:
    log = parse_event_log(LOG)
    assert log.algorithms == ((TPM_ALG_SHA384, 48),)
    assert len(log.events) == 43
    extending = [e for e in log.events if e.event_type != EV_NO_ACTION]
    assert [sum(e.mr_index == i + 1 for e in extending) for i in range(4)] == [16, 7, 20, 0]


def test_cos113_log_replays_to_the_verified_quote() -> None:
    case = "gotdx_cos113_ccel"
    verified = verify_quote(raw_quote(case), collateral(case), ROOT_DER, at(expected(case)["verify_at"]))
    rtmrs = verified.quote.td_report.rtmrs
    log = parse_event_log(LOG)
    assert replay_rtmrs(log) == rtmrs
    verify_rtmrs(log, rtmrs)
    assert verified.quote.td_report.report_data == (CCEL / "nonce.dat").read_bytes()


def test_replay_is_sha384_extend_from_zero() -> None:
    log = parse_event_log(LOG)
    rtmr = bytes(48)
    for event in log.events:
        if event.mr_index == 2 and event.event_type != EV_NO_ACTION:
            digest = event.digest(TPM_ALG_SHA384)
            assert digest is not None
            rtmr = hashlib.sha384(rtmr + digest).digest()
    assert rtmr == replay_rtmrs(log)[1]


@pytest.mark.parametrize("vector_id", [v["id"] for v in NEGATIVE["vectors"] if v["kind"] == "event_log"])
def test_unbound_logs_fail_replay(vector_id: str) -> None:
    vector = next(v for v in NEGATIVE["vectors"] if v["id"] == vector_id)
    quote_case = "trustee_tdx_quote_4"
    assert vector["inputs"]["quote"] == f"../quotes/{quote_case}/quote.bin"
    log = parse_event_log((NEG_DIR / vector["inputs"]["event_log"]).read_bytes())
    # must_pass: the quote itself is genuine.
    verify_quote(
        raw_quote(quote_case), collateral(quote_case), ROOT_DER, at(expected(quote_case)["verify_at"])
    )
    with pytest.raises(VerificationError) as info:
        verify_rtmrs(log, _rtmrs(quote_case))
    assert info.value.check == checks.RTMR_REPLAY == "tdx." + vector["must_fail"][0]


def test_the_good_log_does_not_match_another_quote() -> None:
    with pytest.raises(VerificationError):
        verify_rtmrs(parse_event_log(LOG), _rtmrs("trustee_tdx_quote_4"))


def _event_offsets(data: bytes) -> list[int]:
    """Offsets of each event's first digest byte (all digests are SHA-384 here)."""
    spec_size = struct.unpack_from("<I", data, 28)[0]
    pos = 32 + spec_size
    out = []
    while struct.unpack_from("<I", data, pos)[0] != 0xFFFFFFFF:
        out.append(pos + 12 + 2)
        size = struct.unpack_from("<I", data, pos + 14 + 48)[0]
        pos += 14 + 48 + 4 + size
    return out


def test_edited_digests_types_or_truncation_fail() -> None:
    rtmrs = _rtmrs("gotdx_cos113_ccel")
    log = parse_event_log(LOG)
    offsets = _event_offsets(LOG)
    assert len(offsets) == len(log.events)
    extending = [i for i, e in enumerate(log.events) if e.event_type != EV_NO_ACTION]
    for index in extending[:: max(1, len(extending) // 8)]:
        data = bytearray(LOG)
        data[offsets[index]] ^= 0x01
        with pytest.raises(VerificationError):
            verify_rtmrs(parse_event_log(bytes(data)), rtmrs)
    # Relabelling an extending event as EV_NO_ACTION takes it out of the replay.
    data = bytearray(LOG)
    type_offset = offsets[extending[3]] - 14 + 4
    data[type_offset : type_offset + 4] = struct.pack("<I", EV_NO_ACTION)
    relabelled = parse_event_log(bytes(data))
    assert relabelled.events[extending[3]].event_type == EV_NO_ACTION
    with pytest.raises(VerificationError):
        verify_rtmrs(relabelled, rtmrs)
    # Truncating the log after an extending event changes the replay.
    last = extending[-1]
    truncated = LOG[: offsets[last] - 14] + b"\xff" * 16
    with pytest.raises(VerificationError):
        verify_rtmrs(parse_event_log(truncated), rtmrs)


def test_rtmr_count_is_checked() -> None:
    with pytest.raises(VerificationError):
        verify_rtmrs(parse_event_log(LOG), _rtmrs("gotdx_cos113_ccel")[:3])


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "parse.ccel.spec_id"),
        (LOG[:40], "parse.ccel.spec_id.data"),
        (b"\x00" * 8 + LOG[8:], "parse.ccel.spec_id"),  # not EV_NO_ACTION
        (LOG[:32] + b"Spec ID Event02\x00" + LOG[48:], "parse.ccel.spec_id.signature"),
    ],
)
def test_malformed_logs(data: bytes, reason: str) -> None:
    with pytest.raises(ParseError) as info:
        parse_event_log(data)
    assert info.value.reason == reason


def test_bad_mr_index_and_algorithm() -> None:
    first = _event_offsets(LOG)[0] - 14
    data = bytearray(LOG)
    data[first : first + 4] = struct.pack("<I", 5)
    with pytest.raises(ParseError, match="CC MR index"):
        parse_event_log(bytes(data))
    data = bytearray(LOG)
    data[first + 12 : first + 14] = struct.pack("<H", 0x000B)  # SHA-256, not in the Spec ID event
    with pytest.raises(ParseError, match="not in the Spec ID event"):
        parse_event_log(bytes(data))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(min_value=0, max_value=18200), st.integers(min_value=0, max_value=255))
def test_mutated_logs_only_raise_parse_or_verification_errors(position: int, value: int) -> None:
    data = bytearray(LOG[:18200] + b"\xff" * 64)
    data[position] = value
    try:
        verify_rtmrs(parse_event_log(bytes(data)), _rtmrs("gotdx_cos113_ccel"))
    except (ParseError, VerificationError):
        pass


@settings(max_examples=200)
@given(st.binary(max_size=400))
def test_random_bytes_only_raise_parse_error(data: bytes) -> None:
    for parse in (parse_event_log, parse_ccel_table):
        try:
            parse(data)
        except ParseError:
            pass
