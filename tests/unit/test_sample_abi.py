"""Sample report layout: round trips, every ParseError field, and fuzzing that only ParseError escapes."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.errors import ParseError
from shared.platforms.sample import abi, kds
from shared.platforms.sample.abi import (
    REPORT_SIZE,
    SIGNED_REGION_END,
    SampleReport,
    encode_report,
    parse_report,
    signed_region,
)
from shared.platforms.sample.pki import SimulatedDevice

MEASUREMENT = bytes(range(48))
DEVICE = SimulatedDevice.create(MEASUREMENT, svn=7, debug=True)
NONCE = b"nonce-0123456789"
RAW = DEVICE.make_report(NONCE)


def _patched(raw: bytes, offset: int, value: bytes) -> bytes:
    return raw[:offset] + value + raw[offset + len(value) :]


def _report(**overrides: object) -> SampleReport:
    fields: dict[str, object] = {
        "version": 1,
        "flags": 0,
        "device_id": b"\x11" * 16,
        "measurement": b"\x22" * 48,
        "svn": 3,
        "report_data": b"\x33" * 64,
        "signature": b"\x44" * 96,
    }
    fields.update(overrides)
    return SampleReport(**fields)  # type: ignore[arg-type]


def test_layout_constants() -> None:
    assert SIGNED_REGION_END == 0xB0
    assert REPORT_SIZE == 0x110
    assert len(RAW) == REPORT_SIZE


def test_parse_device_report_fields() -> None:
    report = parse_report(RAW)
    assert report.version == 1
    assert report.flags == abi.FLAG_DEBUG
    assert report.debug is True
    assert report.device_id == DEVICE.device_id
    assert report.measurement == MEASUREMENT
    assert report.svn == 7
    assert report.report_data == NONCE + bytes(64 - len(NONCE))
    assert report.signature == RAW[0xB0:]
    assert RAW[:4] == b"RMSE"
    assert RAW[0x48:0x4C] == (7).to_bytes(4, "big")


def test_round_trip_both_directions() -> None:
    assert encode_report(parse_report(RAW)) == RAW
    report = _report(flags=0, svn=0xFFFFFFFF)
    raw = encode_report(report)
    assert len(raw) == REPORT_SIZE
    assert parse_report(raw) == report
    assert parse_report(raw).debug is False


@pytest.mark.parametrize("buf", [bytearray(RAW), memoryview(RAW)])
def test_parse_accepts_bytes_like(buf: bytearray | memoryview) -> None:
    assert parse_report(buf) == parse_report(RAW)


def test_signed_region() -> None:
    assert signed_region(RAW) == RAW[:0xB0]
    with pytest.raises(ParseError) as info:
        signed_region(RAW[:-1])
    assert info.value.reason == "parse.report.size"


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b"", "report.size"),
        (RAW[:-1], "report.size"),
        (RAW + b"\x00", "report.size"),
        (_patched(RAW, 0, b"RMSF"), "report.magic"),
        (_patched(RAW, 4, struct.pack(">H", 0)), "report.version"),
        (_patched(RAW, 4, struct.pack(">H", 2)), "report.version"),
        (_patched(RAW, 6, struct.pack(">H", 0x0002)), "report.flags"),
        (_patched(RAW, 6, struct.pack(">H", 0x8001)), "report.flags"),
        (_patched(RAW, 0x4C, b"\x00\x00\x00\x01"), "report.reserved"),
        (_patched(RAW, 0x90, b"\x80"), "report.reserved"),
        (_patched(RAW, 0xAF, b"\x01"), "report.reserved"),
    ],
)
def test_parse_error_fields(raw: bytes, field: str) -> None:
    with pytest.raises(ParseError) as info:
        parse_report(raw)
    assert info.value.field == field
    assert info.value.reason == f"parse.{field}"


@pytest.mark.parametrize("value", [None, 0, 272, "RMSE" * 68, [0] * 272, 1.5, object()])
def test_parse_rejects_non_bytes(value: object) -> None:
    with pytest.raises(ParseError) as info:
        parse_report(value)  # type: ignore[arg-type]
    assert info.value.reason == "parse.report.type"


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"device_id": b"\x00" * 15}, "report.device_id"),
        ({"measurement": b"\x00" * 49}, "report.measurement"),
        ({"report_data": b""}, "report.report_data"),
        ({"signature": b"\x00" * 95}, "report.signature"),
        ({"version": 2}, "report.version"),
        ({"flags": 2}, "report.flags"),
        ({"svn": -1}, "report.svn"),
        ({"svn": 1 << 32}, "report.svn"),
    ],
)
def test_encode_rejects_unrepresentable(overrides: dict[str, object], field: str) -> None:
    with pytest.raises(ParseError) as info:
        encode_report(_report(**overrides))
    assert info.value.field == field


@settings(max_examples=500)
@given(st.binary(max_size=2 * REPORT_SIZE))
def test_random_bytes_only_raise_parse_error(data: bytes) -> None:
    try:
        report = parse_report(data)
    except ParseError as exc:
        assert exc.reason.startswith("parse.report.")
    else:
        assert encode_report(report) == data


@given(st.integers(min_value=0, max_value=REPORT_SIZE - 1))
def test_truncations_raise_size_error(length: int) -> None:
    with pytest.raises(ParseError) as info:
        parse_report(RAW[:length])
    assert info.value.reason == "parse.report.size"


@settings(max_examples=300)
@given(st.integers(min_value=0, max_value=REPORT_SIZE - 1), st.binary(min_size=1, max_size=8))
def test_mutations_parse_or_raise_parse_error(offset: int, patch: bytes) -> None:
    mutated = _patched(RAW, offset, patch)[:REPORT_SIZE]
    try:
        report = parse_report(mutated)
    except ParseError as exc:
        assert exc.reason.startswith("parse.report.")
    else:
        # Strict parsing means an accepted mutation re-encodes to exactly the mutated bytes.
        assert encode_report(report) == mutated


@given(st.one_of(st.none(), st.integers(), st.text(), st.lists(st.integers()), st.floats()))
def test_arbitrary_objects_raise_parse_error(value: object) -> None:
    with pytest.raises(ParseError):
        parse_report(value)  # type: ignore[arg-type]


# The KDS URL scheme is part of the platform's wire contract, so it is pinned here too.


def test_kds_urls() -> None:
    device_id = bytes.fromhex("00112233445566778899aabbccddeeff")
    url = kds.device_cert_url("http://kds.example:8080/", device_id)
    assert url == "http://kds.example:8080/sample/v1/device/00112233445566778899aabbccddeeff"
    assert kds.cert_chain_url("http://kds.example//") == "http://kds.example/sample/v1/cert_chain"
    assert kds.parse_device_cert_url(url) == device_id
    prefixed = kds.device_cert_url("https://vendor.example/kds", device_id)
    assert prefixed == "https://vendor.example/kds/sample/v1/device/00112233445566778899aabbccddeeff"
    assert kds.parse_device_cert_url(prefixed) == device_id
    assert kds.parse_device_cert_url("/sample/v1/device/" + device_id.hex()) == device_id


@pytest.mark.parametrize(
    "url",
    [
        "http://kds.example/sample/v1/device/0011",
        "http://kds.example/sample/v1/device/00112233445566778899AABBCCDDEEFF",
        "http://kds.example/sample/v1/device/00112233445566778899aabbccddeeff/x",
        "http://kds.example/sample/v1/cert_chain",
        "http://kds.example/sample/v1/device/zz112233445566778899aabbccddeeff",
        "http://[::1",
    ],
)
def test_kds_parse_rejects(url: str) -> None:
    with pytest.raises(ParseError) as info:
        kds.parse_device_cert_url(url)
    assert info.value.reason == "parse.kds.url"


def test_kds_rejects_bad_device_id() -> None:
    with pytest.raises(ParseError) as info:
        kds.device_cert_url("http://kds.example", b"\x00" * 15)
    assert info.value.reason == "parse.kds.device_id"
    with pytest.raises(ParseError):
        kds.parse_device_cert_url(None)  # type: ignore[arg-type]
