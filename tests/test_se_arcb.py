"""ARCB construction against the s390-tools vector, parsing, and the request state format."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from shared.errors import ParseError, VerificationError
from shared.platforms.se import abi
from shared.platforms.se.arcb import (
    DEFAULT_FLAGS,
    SeRequestState,
    build_arcb,
    derive_slot_key,
    open_arcb,
    parse_arcb,
)

DATA = Path(__file__).parent / "data" / "se"


def _vector_keys() -> tuple[ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey]:
    scalar = int.from_bytes((DATA / "pv_keys_private_cust.bin").read_bytes(), "big")
    customer = ec.derive_private_key(scalar, ec.SECP521R1())
    host = x509.load_pem_x509_certificate((DATA / "pv_keys_host.pem.crt").read_bytes()).public_key()
    assert isinstance(host, ec.EllipticCurvePublicKey)
    return customer, host


def _vector_arcb() -> tuple[bytes, SeRequestState]:
    customer, host = _vector_keys()
    return build_arcb(
        [host],
        flags=abi.FLAG_IMAGE_PHKH | abi.FLAG_ATTEST_PHKH,
        arpk=b"\x17" * 32,
        iv=b"\x55" * 12,
        measurement_key=b"\x77" * 64,
        nonce=b"\xab" * 16,
        customer_key=customer,
    )


def test_customer_key_matches_public_vector() -> None:
    customer, _ = _vector_keys()
    assert abi.ecdh_coordinates(customer.public_key()) == (DATA / "pv_keys_public_cust.bin").read_bytes()


def test_slot_key_matches_s390_tools_derive_vector() -> None:
    # rust/pv/src/crypto.rs test derive_aes256_gcm_key: same customer/host pair.
    customer, host = _vector_keys()
    assert derive_slot_key(customer, host).hex() == (
        "753277558f3b6003419ef249ae3c4b55aad77d09d97fdd1fc88fd8f0cf22f149"
    )


def test_build_arcb_reproduces_vector_byte_for_byte() -> None:
    raw, state = _vector_arcb()
    expected = (DATA / "pv_exp_arcb.bin").read_bytes()
    assert len(raw) == 400
    assert raw == expected
    _, host = _vector_keys()
    assert state.measurement_key == b"\x77" * 64
    assert state.nonce == b"\xab" * 16
    assert state.flags == 0x7000_0000_0000_0000  # nonce + image phkh + attestation phkh
    assert state.mai == 1
    assert state.host_key_hashes == (abi.host_key_hash(host).hex(),)
    assert state.arcb_sha256 == hashlib.sha256(expected).hexdigest()


def test_parse_arcb_vector_fields() -> None:
    raw = (DATA / "pv_exp_arcb.bin").read_bytes()
    arcb = parse_arcb(raw)
    _, host = _vector_keys()
    customer, _ = _vector_keys()
    assert arcb.version == 0x100
    assert arcb.length == 400
    assert arcb.iv == b"\x55" * 12
    assert arcb.flags == abi.FLAG_NONCE | abi.FLAG_IMAGE_PHKH | abi.FLAG_ATTEST_PHKH
    assert arcb.mai == abi.MAI_HMAC_SHA512
    assert arcb.customer_public_key == abi.ecdh_coordinates(customer.public_key())
    assert arcb.host_key_hashes == (abi.host_key_hash(host),)
    assert len(arcb.encrypted) == 80
    assert arcb.tag == raw[-16:]
    assert arcb.aad == raw[:0x130]
    # Re-assembling the parsed parts gives the same bytes.
    slots = b"".join(s.to_bytes() for s in arcb.key_slots)
    assert raw[:0x40] + arcb.customer_public_key + slots + arcb.encrypted + arcb.tag == raw


def test_parse_arcb_round_trip_many_slots() -> None:
    hosts = [ec.generate_private_key(ec.SECP521R1()) for _ in range(3)]
    raw, state = build_arcb([h.public_key() for h in hosts])
    arcb = parse_arcb(raw)
    assert len(arcb.key_slots) == 3
    assert [s.phkh.hex() for s in arcb.key_slots] == list(state.host_key_hashes)
    assert arcb.flags == DEFAULT_FLAGS
    assert arcb.length == 48 + 16 + 160 + 3 * 80 + 80 + 16
    # Each host opens its own slot and recovers the same secrets.
    for host in hosts:
        opened = open_arcb(raw, host)
        assert opened.measurement_key == state.measurement_key
        assert opened.nonce == state.nonce
        assert opened.phkh == abi.host_key_hash(host.public_key())


def test_nonce_flag_is_always_set() -> None:
    host = ec.generate_private_key(ec.SECP521R1())
    _, state = build_arcb([host.public_key()], flags=0)
    assert state.flags == abi.FLAG_NONCE


def test_open_arcb_rejects_foreign_host_and_tampering() -> None:
    host, other = (ec.generate_private_key(ec.SECP521R1()) for _ in range(2))
    raw, _ = build_arcb([host.public_key()])
    with pytest.raises(VerificationError) as err:
        open_arcb(raw, other)
    assert err.value.check == "se.arcb.no_slot"
    tampered = bytearray(raw)
    tampered[0x3C] ^= 1  # reserved word inside the authenticated data
    with pytest.raises(VerificationError) as err:
        open_arcb(bytes(tampered), host)
    assert err.value.check == "se.arcb.tag"


@pytest.mark.parametrize(
    ("offset", "value", "field"),
    [
        (0, 0x11, "arcb.magic"),
        (0x0B, 0x01, "arcb.version"),
        (0x3B, 0x11, "arcb.mai"),
        (0x27, 0, "arcb.key_slots"),
    ],
)
def test_parse_arcb_rejects(offset: int, value: int, field: str) -> None:
    raw = bytearray((DATA / "pv_exp_arcb.bin").read_bytes())
    raw[offset] = value
    with pytest.raises(ParseError) as err:
        parse_arcb(bytes(raw))
    assert err.value.field == field
    assert err.value.reason == f"parse.se.{field}"


def test_parse_arcb_rejects_truncation() -> None:
    raw = (DATA / "pv_exp_arcb.bin").read_bytes()
    for cut in (0, 47, 48, 399):
        with pytest.raises(ParseError):
            parse_arcb(raw[:cut])


def test_request_state_json_round_trip() -> None:
    _, state = _vector_arcb()
    doc = state.to_json()
    assert doc["measurement_key"] == "77" * 64
    assert doc["nonce"] == "ab" * 16
    assert doc["flags"] == 0x7000_0000_0000_0000
    assert SeRequestState.from_json(doc) == state


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"measurement_key": "00"}, "request_state.measurement_key"),
        ({"nonce": "zz"}, "request_state.nonce"),
        ({"flags": -1}, "request_state.flags"),
        ({"mai": 2}, "request_state.mai"),
        ({"host_key_hashes": []}, "request_state.host_key_hashes"),
        ({"host_key_hashes": ["ab"]}, "request_state.host_key_hashes"),
        ({"arcb_sha256": 5}, "request_state.arcb_sha256"),
    ],
)
def test_request_state_rejects(change: dict[str, object], field: str) -> None:
    _, state = _vector_arcb()
    with pytest.raises(ParseError) as err:
        SeRequestState.from_json({**state.to_json(), **change})
    assert err.value.field == field


def test_build_arcb_argument_checks() -> None:
    host = ec.generate_private_key(ec.SECP521R1()).public_key()
    with pytest.raises(ValueError):
        build_arcb([])
    with pytest.raises(ValueError):
        build_arcb([host], arpk=b"\0" * 16)
    with pytest.raises(ValueError):
        build_arcb([ec.generate_private_key(ec.SECP384R1()).public_key()])
