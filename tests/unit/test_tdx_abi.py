"""Quote parsing: the negative parse vectors, structural edge cases, and fuzzing -- whatever the
bytes, ``parse_quote`` either returns a ``Quote`` or raises ``ParseError`` naming a field."""

from __future__ import annotations

import struct
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.errors import ParseError
from shared.platforms.tdx.abi import HEADER_SIZE, TD10_REPORT_SIZE, parse_quote
from tests.unit.test_tdx_vectors import CASES, NEG_DIR, negative, raw_quote

V4 = raw_quote("gotdx_spr_e4_v4")
V5 = raw_quote("gotdx_quote_v5_sample")
V3 = raw_quote("dcapqvl_sgx_quote")
SIG_LEN_OFFSET_V4 = HEADER_SIZE + TD10_REPORT_SIZE  # 0x278


def _reason(data: object) -> str:
    with pytest.raises(ParseError) as info:
        parse_quote(data)  # type: ignore[arg-type]
    assert info.value.reason.startswith("parse.quote")
    return info.value.reason


@pytest.mark.parametrize(
    "vector_id",
    ["gotdx_SPR_E4_version_byte_changed_at_0x0", "gotdx_SPR_E4_signed_data_size_byte_changed_at_0x278"],
)
def test_negative_parse_vectors(vector_id: str) -> None:
    vector = negative(vector_id)
    assert vector["must_fail"] == ["parse"]
    _reason((NEG_DIR / vector["inputs"]["quote"]).read_bytes())


def test_version_3_must_be_sgx() -> None:
    data = bytearray(V4)
    data[0] = 3
    assert _reason(bytes(data)) == "parse.quote.header.tee_type"


@pytest.mark.parametrize(
    ("offset", "value", "reason"),
    [
        (0, b"\x06\x00", "parse.quote.header.version"),
        (2, b"\x03\x00", "parse.quote.header.att_key_type"),
        (4, b"\x7f\x00\x00\x00", "parse.quote.header.tee_type"),
    ],
)
def test_header_fields(offset: int, value: bytes, reason: str) -> None:
    data = bytearray(V4)
    data[offset : offset + len(value)] = value
    assert _reason(bytes(data)) == reason


def test_v5_body_descriptor() -> None:
    for body_type, reason in (
        (4, "parse.quote.body_type"),
        (1, "parse.quote.body_size"),
        (0, "parse.quote.body_type"),
    ):
        data = bytearray(V5)
        data[HEADER_SIZE : HEADER_SIZE + 2] = struct.pack("<H", body_type)
        assert _reason(bytes(data)) == reason
    data = bytearray(V5)
    data[HEADER_SIZE + 2 : HEADER_SIZE + 6] = struct.pack("<I", 584)  # TD 1.5 body claiming 1.0 size
    assert _reason(bytes(data)) == "parse.quote.body_size"


def test_signature_data_length_must_fit_exactly() -> None:
    (length,) = struct.unpack_from("<I", V4, SIG_LEN_OFFSET_V4)
    for wrong in (length - 1, length + 1, len(V4)):
        data = bytearray(V4)
        data[SIG_LEN_OFFSET_V4 : SIG_LEN_OFFSET_V4 + 4] = struct.pack("<I", wrong)
        _reason(bytes(data))


def test_outer_certification_type_must_be_6() -> None:
    offset = SIG_LEN_OFFSET_V4 + 4 + 128
    data = bytearray(V4)
    data[offset : offset + 2] = struct.pack("<H", 5)
    assert _reason(bytes(data)) == "parse.quote.certification_data.type"


@pytest.mark.parametrize("case", CASES)
def test_trailing_bytes_are_ignored_and_outside_the_quote(case: str) -> None:
    raw = raw_quote(case)
    quote = parse_quote(raw)
    end = len(raw) - quote.trailing
    assert replace(parse_quote(raw[:end]), trailing=quote.trailing) == quote
    assert parse_quote(raw[:end] + b"\xff" * 100).trailing == 100
    with pytest.raises(ParseError):
        parse_quote(raw[: end - 1])


def test_non_bytes_are_parse_errors() -> None:
    for value in (None, "quote", 42, [1, 2]):
        assert _reason(value) == "parse.quote.type"
    assert parse_quote(bytearray(V4)) == parse_quote(memoryview(V4)) == parse_quote(V4)


def test_every_truncation_is_a_parse_error() -> None:
    for quote in (V3, V4, V5):
        end = len(quote) - parse_quote(quote).trailing
        for cut in range(end):
            with pytest.raises(ParseError):
                parse_quote(quote[:cut])


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=6000))
def test_random_bytes_only_raise_parse_error(data: bytes) -> None:
    try:
        parse_quote(data)
    except ParseError:
        pass


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from([V3, V4, V5]),
    st.lists(
        st.tuples(st.integers(min_value=0, max_value=0x600), st.integers(min_value=0, max_value=255)),
        max_size=4,
    ),
)
def test_mutated_headers_and_lengths_only_raise_parse_error(
    base: bytes, edits: list[tuple[int, int]]
) -> None:
    # Mutations concentrated on the header, body descriptor and length fields, where parsing branches.
    data = bytearray(base)
    for offset, value in edits:
        data[offset] = value
    try:
        parse_quote(bytes(data))
    except ParseError:
        pass
