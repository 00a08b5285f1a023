"""Arm CCA: damaged and random input is rejected with a named ParseError or VerificationError,
never another exception and never accepted."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.errors import ParseError, VerificationError
from shared.platforms.cca import abi, cbor
from shared.platforms.cca.abi import decode_evidence, decode_token
from shared.platforms.cca.tastore import load_ta_store
from shared.platforms.cca.verify import verify_token_with_store

DATA = Path(__file__).parent / "data" / "cca"
TOKENS = {
    "realm_tf-rmm_cca_token.cbor": "cca_conf_tastore.json",
    "cca-token-02.cbor": "ta-02-ok.json",
    "cca-token-draft-ffm-00.cbor": "cca_conf_tastore.json",
    "cca_misc_cca-example-token.cbor": "cca_conf_tastore.json",
}
ALL_ANCHORS = [a for store in set(TOKENS.values()) for a in load_ta_store((DATA / store).read_bytes())]
RAW = {name: (DATA / name).read_bytes() for name in TOKENS}


CHALLENGES = {name: decode_token(raw).realm_claims.challenge for name, raw in RAW.items()}


def rejected(raw: bytes, challenge: bytes) -> str:
    """The dotted reason a damaged token is rejected with; fails the test if it is accepted."""
    try:
        verify_token_with_store(decode_evidence(raw), ALL_ANCHORS, challenge)
    except (ParseError, VerificationError) as err:
        assert err.reason.startswith(("parse.cca.", "cca.")), err.reason
        return err.reason
    raise AssertionError("a damaged token was accepted")


@pytest.mark.parametrize("name", sorted(TOKENS))
def test_bit_flips_are_rejected(name: str) -> None:
    raw = RAW[name]
    challenge = CHALLENGES[name]
    verify_token_with_store(raw, ALL_ANCHORS, challenge)
    positions = sorted({*range(48), *range(0, len(raw), 5), *range(len(raw) - 200, len(raw))})
    reasons: set[str] = set()
    for pos in positions:
        damaged = bytearray(raw)
        damaged[pos] ^= 1 << (pos % 8)
        reasons.add(rejected(bytes(damaged), challenge))
    # Flips land in both signed payloads and both signatures.
    assert {"cca.platform.signature", "cca.realm.signature"} <= reasons


def test_truncations_are_parse_errors() -> None:
    raw = RAW["cca-token-draft-ffm-00.cbor"]
    for cut in range(0, len(raw), 37):
        with pytest.raises(ParseError):
            decode_token(raw[:cut])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=512))
def test_random_bytes(data: bytes) -> None:
    with pytest.raises(ParseError):
        decode_token(data)
    try:
        decode_evidence(data)
    except ParseError:
        pass


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=64).map(lambda b: b"\xd9\x01\x8f" + b))
def test_random_bytes_after_the_token_tag(data: bytes) -> None:
    with pytest.raises(ParseError):
        decode_token(data)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(sorted(TOKENS)),
    st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), min_size=1, max_size=6),
    st.integers(0, 1 << 20),
    st.binary(max_size=8),
)
def test_mutated_vectors(name: str, edits: list[tuple[int, int]], cut: int, insert: bytes) -> None:
    raw = bytearray(RAW[name])
    for pos, value in edits:
        raw[pos % len(raw)] = value
    at = cut % len(raw)
    mutated = bytes(raw[:at] + insert + raw[at:]) if cut % 2 else bytes(raw[: at + 1])
    if mutated == RAW[name]:
        return
    rejected(mutated, CHALLENGES[name])


@settings(max_examples=150, deadline=None)
@given(
    st.one_of(
        st.lists(st.integers(-5, 300), max_size=40),
        st.text(max_size=60),
        st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
        st.integers(),
        st.none(),
    )
)
def test_random_json_evidence(token: object) -> None:
    with pytest.raises(ParseError):
        decode_token(decode_evidence(json.dumps({"token": token}).encode()))


def test_json_evidence_forms() -> None:
    raw = RAW["cca-token-02.cbor"]
    assert decode_evidence(raw) == raw
    assert decode_evidence(json.dumps({"token": list(raw)}).encode()) == raw
    assert decode_evidence(json.dumps({"token": base64.b64encode(raw).decode()}).encode()) == raw
    url = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    assert decode_evidence(json.dumps({"token": url}).encode()) == raw
    for bad in (
        b"",
        b"[]",
        b'{"tok": []}',
        b'{"token": [256]}',
        b'{"token": "!!"}',
        b'{"token": [1, 2]}',
        b"\xff\xfe",
    ):
        with pytest.raises(ParseError) as err:
            decode_evidence(bad)
        assert err.value.reason.startswith("parse.cca.evidence")


def _sign1(protected: object) -> bytes:
    return cbor2.dumps(cbor2.CBORTag(18, [cbor2.dumps(protected), {}, b"payload", b"\x00" * 96]))


@pytest.mark.parametrize("alg", [[1], {1: -35}, -35.0, "ES384", True])
def test_an_algorithm_of_another_type_is_a_parse_error(alg: object) -> None:
    """An array or map is unhashable: a membership test on it raised TypeError, which crashed the
    intake handler (redelivered until dead-lettered) instead of naming the field."""
    token = cbor2.dumps(cbor2.CBORTag(399, {44234: _sign1({1: alg}), 44241: _sign1({1: alg})}))
    with pytest.raises(ParseError) as err:
        decode_token(token)
    assert err.value.reason == "parse.cca.platform.sign1.alg"


@pytest.mark.parametrize("crv", [[2], {1: 2}, True, "P-384"])
def test_a_rak_curve_of_another_type_is_a_parse_error(crv: object) -> None:
    key = {1: 2, -1: crv, -2: b"\x01" * 48, -3: b"\x02" * 48}
    for value in (key, cbor2.dumps(key)):
        with pytest.raises(ParseError) as err:
            abi._rak(value, cbor2.dumps(value))
        assert err.value.reason == "parse.cca.realm.rak"


def test_true_is_not_the_map_key_1() -> None:
    with pytest.raises(ParseError):
        cbor.decode(bytes.fromhex("a1f52e"), "field")  # {true: -15}
