"""Evidence JSON, the pvattest exchange file, and fuzzing of every SE parser."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.errors import ParseError
from shared.platforms.se.abi import parse_se_header
from shared.platforms.se.arcb import parse_arcb
from shared.platforms.se.evidence import (
    decode_evidence,
    encode_exchange_response,
    parse_exchange_file,
)
from shared.platforms.se.measurement import SeResponse

DATA = Path(__file__).parent / "data" / "se"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _doc(**over: object) -> bytes:
    doc: dict[str, object] = {
        "measurement": _b64(b"\x01" * 64),
        "additional_data": _b64(b"\x02" * 64),
        "user_data": _b64(b"\x03" * 10),
        "cuid": _b64(b"\x04" * 16),
        "encr_measurement_key": _b64(b"ignored"),
        "image_hdr_tags": {"ignored": True},
    }
    doc.update(over)
    return json.dumps({k: v for k, v in doc.items() if v is not ...}).encode()


def test_decode_evidence() -> None:
    response = decode_evidence(_doc())
    assert response == SeResponse(b"\x01" * 64, b"\x02" * 64, b"\x04" * 16, b"\x03" * 10)
    minimal = decode_evidence(_doc(additional_data=..., user_data=None))
    assert minimal.additional_data == b"" and minimal.user_data == b""


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"measurement": _b64(b"\x01" * 63)}, "evidence.measurement"),
        ({"measurement": ...}, "evidence.measurement"),
        ({"measurement": "!!!"}, "evidence.measurement"),
        ({"cuid": _b64(b"\x04" * 15)}, "evidence.cuid"),
        ({"cuid": 7}, "evidence.cuid"),
        ({"user_data": _b64(b"\x03" * 257)}, "evidence.user_data"),
        ({"additional_data": _b64(b"\0" * (32 * 1024 + 1))}, "evidence.additional_data"),
        ({"additional_data": ["x"]}, "evidence.additional_data"),
    ],
)
def test_decode_evidence_rejects(over: dict[str, object], field: str) -> None:
    with pytest.raises(ParseError) as err:
        decode_evidence(_doc(**over))
    assert err.value.field == field
    assert err.value.reason == f"parse.se.{field}"


@pytest.mark.parametrize("raw", [b"", b"[]", b"nope", b'"x"', b"\xff\xfe"])
def test_decode_evidence_rejects_non_objects(raw: bytes) -> None:
    with pytest.raises(ParseError) as err:
        decode_evidence(raw)
    assert err.value.field == "evidence"


def test_exchange_file_vector() -> None:
    ex = parse_exchange_file((DATA / "pvattest_exp_exchange_full.bin").read_bytes())
    assert ex.arcb.data == b"\x11" * 16
    assert ex.measurement.data == b"\x12" * 64
    assert ex.additional_data.data == b"\x13" * 32
    assert ex.user_data.data == b"\x15" * 256
    assert ex.cuid.data == b"\x14" * 16
    response = ex.to_response()
    assert response == SeResponse(b"\x12" * 64, b"\x13" * 32, b"\x14" * 16, b"\x15" * 256)


def test_exchange_file_encode_matches_vector_layout() -> None:
    raw = (DATA / "pvattest_exp_exchange_full.bin").read_bytes()
    response = parse_exchange_file(raw).to_response()
    assert encode_exchange_response(b"\x11" * 16, response) == raw


def test_exchange_request_only_file() -> None:
    # A request file: ARCB data, measurement/additional as sizes for the UV to fill.
    raw = bytearray(encode_exchange_response(b"\x11" * 16, SeResponse(b"", b"", b"", b"")))
    raw[0x20:0x28] = (64).to_bytes(4, "big") + b"\0" * 4
    ex = parse_exchange_file(bytes(raw))
    assert ex.measurement.size == 64 and ex.measurement.data is None
    with pytest.raises(ParseError) as err:
        ex.to_response()
    assert err.value.field == "exchange.measurement"


def test_exchange_rejects() -> None:
    raw = (DATA / "pvattest_exp_exchange_full.bin").read_bytes()
    with pytest.raises(ParseError) as err:
        parse_exchange_file(b"pvattesX" + raw[8:])
    assert err.value.field == "exchange.magic"
    with pytest.raises(ParseError) as err:
        parse_exchange_file(raw[:8] + b"\0\0\2\0" + raw[12:])
    assert err.value.field == "exchange.version"
    with pytest.raises(ParseError) as err:
        parse_exchange_file(raw[:-1])
    assert err.value.field == "exchange.size"
    bad = bytearray(raw)
    bad[0x1C:0x20] = (0x20).to_bytes(4, "big")  # ARCB offset inside the header
    with pytest.raises(ParseError) as err:
        parse_exchange_file(bytes(bad))
    assert err.value.field == "exchange.arcb"


def exchange_response(data: bytes) -> SeResponse:
    return parse_exchange_file(data).to_response()


PARSERS = [decode_evidence, parse_arcb, parse_se_header, parse_exchange_file, exchange_response]


@pytest.mark.parametrize("parse", PARSERS, ids=lambda f: f.__name__)
@settings(max_examples=150, deadline=None)
@given(data=st.binary(max_size=700))
def test_fuzz_random_bytes(parse: object, data: bytes) -> None:
    try:
        parse(data)  # type: ignore[operator]
    except ParseError:
        pass


def _mutations(seed: bytes) -> st.SearchStrategy[bytes]:
    def mutate(positions: list[tuple[int, int]], cut: int) -> bytes:
        out = bytearray(seed)
        for pos, value in positions:
            out[pos % len(out)] = value
        return bytes(out[: max(0, len(out) - cut)])

    return st.builds(
        mutate,
        st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=6),
        st.integers(0, 20) | st.just(0),
    )


@pytest.mark.parametrize(
    ("parse", "seed"),
    [
        (parse_arcb, "pv_exp_arcb.bin"),
        (parse_se_header, "pv_exp_secure_guest.hdr"),
        (parse_exchange_file, "pvattest_exp_exchange_full.bin"),
        (exchange_response, "pvattest_exp_exchange_full.bin"),
    ],
    ids=["arcb", "se_header", "exchange", "exchange_response"],
)
def test_fuzz_mutated_vectors(parse: object, seed: str) -> None:
    strategy = _mutations((DATA / seed).read_bytes())

    @settings(max_examples=200, deadline=None)
    @given(data=strategy)
    def run(data: bytes) -> None:
        try:
            parse(data)  # type: ignore[operator]
        except ParseError:
            pass

    run()


@settings(max_examples=200, deadline=None)
@given(
    doc=st.dictionaries(
        st.sampled_from(["measurement", "additional_data", "user_data", "cuid", "x"]),
        st.none()
        | st.integers()
        | st.text(max_size=120)
        | st.binary(max_size=90).map(_b64)
        | st.lists(st.integers(), max_size=3),
    )
)
def test_fuzz_evidence_json(doc: dict[str, object]) -> None:
    try:
        decode_evidence(json.dumps(doc).encode())
    except ParseError:
        pass
