"""SE header tags and the HMAC-SHA512 measurement vectors of s390-tools (attest.rs tests)."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.errors import ParseError, VerificationError
from shared.platforms.se import abi
from shared.platforms.se.abi import BootHdrTags, parse_se_header
from shared.platforms.se.arcb import SeRequestState
from shared.platforms.se.measurement import SeResponse, claims, compute_measurement, verify_response

DATA = Path(__file__).parent / "data" / "se"

KEY = b"\x41" * 64
TAGS = BootHdrTags(b"\x01" * 64, b"\x02" * 64, b"\x03" * 64, b"\x04" * 16)
CUID = b"\x05" * 16
USER = b"\x07" * 256
NONCE = b"\x08" * 16
ADDITIONAL = b"\x09" * 128

EXP_PLD = (
    "be94b5eab3c1b118c757d7db7ea0f65d9b64823a8dc55bf8a8725b58072d9d42"
    "58c53e8a5da82dfb2192d91d07bc1c39b95d6321d3ba16a751a6e3e32f3e0161"
)
EXP_ALD = (
    "2858c3368b2a0af0c5ea0fde7905eb15af9cd1dd737165933cdaa2b850b6a8e2"
    "f0f42c7b36dd5381096288dc092daa8a6facec2534137bc94ca80bda4fcb9328"
)
EXP_TLD = (
    "4860ebcf7b9d24eb909a795356ad32c936b62165988a9ffcd66170dbc590c230"
    "10d7952fa882d1bb79558f9be0a549d8d7a94ae720e5c0760a825d479fe67af5"
)
EXP_TAG = "92309d4589b9a85b427f8753171d1520"


@pytest.mark.parametrize(
    ("user", "nonce", "additional", "expected"),
    [
        (
            USER,
            NONCE,
            ADDITIONAL,
            "88794c62cce7bcf26216deb3f48f13fea6374b6d7e35bcc5c2ce68121db6f45d"
            "fc8c171856463549408bf8e7d1aca11efad0a878af97dc9e21a1fc2a32f3a675",
        ),
        (
            USER,
            None,
            ADDITIONAL,
            "fbd4f738a390edd947cd4f11af3a2f3bab2fdf8bf89bf81beb495117f4382cf4"
            "2f0730c8c7d9e3ca27fb25adfceb21224f57fdb398dcf41a83c146e6a23db760",
        ),
        (
            b"",
            None,
            ADDITIONAL,
            "63671fbf295036eb1023ea71f7182e7d6343dc7b2da584e824d0a7d198ab9cde"
            "d756c93b39050ffb764555b01f88cb82017a6a15c7e0bafc6005f1e4f78aa124",
        ),
        (
            b"",
            None,
            None,
            "c5c34c93835d1ec23f5c2d778dfa20129b11b305601742cb2f38e0ed9894dcdb"
            "73fc8695ab6a8dbad0744073ddc81a5eaafa52e4a15af8deb8d761091922847f",
        ),
    ],
    ids=["all", "user_additional", "additional", "minimal"],
)
def test_measurement_vectors(
    user: bytes, nonce: bytes | None, additional: bytes | None, expected: str
) -> None:
    assert compute_measurement(KEY, TAGS, CUID, user, nonce, additional).hex() == expected


def test_se_header_tags() -> None:
    raw = (DATA / "pv_exp_secure_guest.hdr").read_bytes()
    tags = parse_se_header(raw)
    assert tags.pld.hex() == EXP_PLD
    assert tags.ald.hex() == EXP_ALD
    assert tags.tld.hex() == EXP_TLD
    assert tags.tag.hex() == EXP_TAG
    assert tags.to_bytes() == raw[0xE0:0x1A0] + raw[-16:]
    assert len(tags.to_bytes()) == 0xD0
    assert BootHdrTags.from_bytes(tags.to_bytes()) == tags
    assert BootHdrTags.from_hex(tags.hex()) == tags
    assert tags.hex() == EXP_PLD + EXP_ALD + EXP_TLD + EXP_TAG


def test_se_header_rejects() -> None:
    raw = (DATA / "pv_exp_secure_guest.hdr").read_bytes()
    swapped = bytes([raw[1], raw[0]]) + raw[2:]
    with pytest.raises(ParseError) as err:
        parse_se_header(swapped)
    assert err.value.field == "se_header.magic"
    with pytest.raises(ParseError) as err:
        parse_se_header(raw[:-1])  # header says 0x280 bytes
    assert err.value.field == "se_header.size"
    with pytest.raises(ParseError) as err:
        parse_se_header(raw[:0x100])
    assert err.value.field == "se_header"
    with pytest.raises(ParseError):
        BootHdrTags.from_bytes(b"\0" * 0xCF)
    with pytest.raises(ParseError):
        BootHdrTags.from_hex("zz")


def _state(flags: int, phkhs: tuple[bytes, ...] = (b"\x21" * 32,)) -> SeRequestState:
    return SeRequestState(
        measurement_key=KEY,
        nonce=NONCE,
        flags=flags,
        mai=1,
        host_key_hashes=tuple(p.hex() for p in phkhs),
        arcb_sha256="00" * 32,
    )


def _respond(state: SeRequestState, tags: BootHdrTags, additional: bytes, user: bytes = b"u") -> SeResponse:
    nonce = state.nonce if state.flags & abi.FLAG_NONCE else None
    return SeResponse(compute_measurement(KEY, tags, CUID, user, nonce, additional), additional, CUID, user)


def test_verify_response_picks_matching_candidate_and_claims() -> None:
    flags = abi.FLAG_NONCE | abi.FLAG_IMAGE_PHKH | abi.FLAG_ATTEST_PHKH
    image_phkh, att_phkh = b"\x21" * 32, b"\x22" * 32
    state = _state(flags, (image_phkh, att_phkh))
    other = BootHdrTags(b"\x0a" * 64, b"\x0b" * 64, b"\x0c" * 64, b"\x0d" * 16)
    verified = verify_response(state, _respond(state, TAGS, image_phkh + att_phkh), [other, TAGS])
    assert verified.tags == TAGS
    assert verified.image_phkh == image_phkh
    assert verified.attestation_phkh == att_phkh
    assert claims(verified) == {
        "se.version": 256,
        "se.cuid": "05" * 16,
        "se.tag": "04" * 16,
        "se.image_phkh": "21" * 32,
        "se.attestation_phkh": "22" * 32,
        "se.user_data": "75",
        "se.pld": "01" * 64,
        "se.ald": "02" * 64,
        "se.tld": "03" * 64,
    }


def test_verify_response_without_phkh_flags() -> None:
    state = _state(abi.FLAG_NONCE)
    verified = verify_response(state, _respond(state, TAGS, b""), [TAGS])
    assert verified.image_phkh is None and verified.attestation_phkh is None
    assert claims(verified)["se.image_phkh"] == ""


def test_verify_response_failures() -> None:
    flags = abi.FLAG_NONCE | abi.FLAG_ATTEST_PHKH
    state = _state(flags)
    good = _respond(state, TAGS, b"\x21" * 32)
    other = BootHdrTags(b"\x0a" * 64, b"\x0b" * 64, b"\x0c" * 64, b"\x0d" * 16)
    with pytest.raises(VerificationError) as err:
        verify_response(state, good, [other])
    assert err.value.check == "se.measurement"
    with pytest.raises(VerificationError) as err:
        verify_response(state, _respond(state, TAGS, b"\x21" * 31), [TAGS])
    assert err.value.check == "se.additional_data"
    with pytest.raises(VerificationError) as err:
        verify_response(state, _respond(state, TAGS, b"\x99" * 32), [TAGS])
    assert err.value.check == "se.host_key"
    with pytest.raises(VerificationError) as err:
        verify_response(state, good, [])
    assert err.value.check == "se.measurement"
