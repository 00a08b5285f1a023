"""End to end against the simulated Ultravisor: verify HKD, build ARCB, perform, verify response."""

from __future__ import annotations

import pytest

from services.demo.se_sim import SIM_NOW, SimulatedHost, SimulatedUltravisor, random_image_tags
from shared.errors import VerificationError
from shared.platforms.se import abi
from shared.platforms.se.arcb import build_arcb
from shared.platforms.se.evidence import decode_evidence, encode_evidence
from shared.platforms.se.hkd import verify_host_key_documents
from shared.platforms.se.measurement import claims, verify_response

IMAGE = random_image_tags(b"good image")
OTHER_IMAGE = random_image_tags(b"other image")
USER = b"\x5a" * 64


@pytest.fixture(scope="module")
def host() -> SimulatedHost:
    return SimulatedHost()


def test_end_to_end(host: SimulatedHost) -> None:
    keys = verify_host_key_documents([host.hkd_pem], now=SIM_NOW, **host.chain())
    arcb, state = build_arcb(keys)
    uv = SimulatedUltravisor(host, IMAGE, cuid=b"\xc0" * 16)
    response = uv.perform(arcb, USER)
    # Through the wire format and back.
    response = decode_evidence(encode_evidence(response))
    verified = verify_response(state, response, [OTHER_IMAGE, IMAGE])
    assert verified.tags == IMAGE
    assert verified.cuid == b"\xc0" * 16
    assert verified.user_data == USER
    assert verified.image_phkh == host.host_key_hash
    assert verified.attestation_phkh == host.host_key_hash
    out = claims(verified)
    assert out["se.tag"] == IMAGE.tag.hex()
    assert out["se.attestation_phkh"] == host.host_key_hash.hex()
    assert out["se.user_data"] == USER.hex()
    assert out["se.version"] == 256


def test_all_additional_fields(host: SimulatedHost) -> None:
    flags = abi.FLAG_IMAGE_PHKH | abi.FLAG_ATTEST_PHKH | abi.FLAG_SECRET_STORE_HASH | abi.FLAG_FIRMWARE_STATE
    arcb, state = build_arcb([host.public_key], flags=flags)
    response = SimulatedUltravisor(host, IMAGE).perform(arcb)
    assert len(response.additional_data) == 32 + 32 + 64 + 320
    assert verify_response(state, response, [IMAGE]).attestation_phkh == host.host_key_hash


def test_wrong_image(host: SimulatedHost) -> None:
    arcb, state = build_arcb([host.public_key])
    response = SimulatedUltravisor(host, OTHER_IMAGE).perform(arcb, USER)
    with pytest.raises(VerificationError) as err:
        verify_response(state, response, [IMAGE])
    assert err.value.check == "se.measurement"


def test_foreign_host_cannot_open(host: SimulatedHost) -> None:
    other = SimulatedHost(host.pki)
    arcb, _ = build_arcb([host.public_key])
    with pytest.raises(VerificationError) as err:
        SimulatedUltravisor(other, IMAGE).perform(arcb, USER)
    assert err.value.check == "se.arcb.no_slot"


def test_tampered_measurement(host: SimulatedHost) -> None:
    arcb, state = build_arcb([host.public_key])
    response = SimulatedUltravisor(host, IMAGE, tamper_measurement=True).perform(arcb, USER)
    with pytest.raises(VerificationError) as err:
        verify_response(state, response, [IMAGE])
    assert err.value.check == "se.measurement"


def test_replayed_response_fails_for_new_request(host: SimulatedHost) -> None:
    arcb1, _ = build_arcb([host.public_key])
    _, state2 = build_arcb([host.public_key])
    response = SimulatedUltravisor(host, IMAGE).perform(arcb1, USER)
    with pytest.raises(VerificationError) as err:
        verify_response(state2, response, [IMAGE])
    assert err.value.check == "se.measurement"


def test_tampered_user_data(host: SimulatedHost) -> None:
    from dataclasses import replace

    arcb, state = build_arcb([host.public_key])
    response = SimulatedUltravisor(host, IMAGE).perform(arcb, USER)
    with pytest.raises(VerificationError) as err:
        verify_response(state, replace(response, user_data=b"\x00" * 64), [IMAGE])
    assert err.value.check == "se.measurement"


def test_additional_data_wrong_size(host: SimulatedHost) -> None:
    arcb, state = build_arcb([host.public_key])
    uv = SimulatedUltravisor(host, IMAGE, additional_data=host.host_key_hash)  # one phkh, two asked for
    with pytest.raises(VerificationError) as err:
        verify_response(state, uv.perform(arcb, USER), [IMAGE])
    assert err.value.check == "se.additional_data"


def test_image_for_unknown_host(host: SimulatedHost) -> None:
    arcb, state = build_arcb([host.public_key])
    uv = SimulatedUltravisor(host, IMAGE, image_phkh=b"\x77" * 32)
    with pytest.raises(VerificationError) as err:
        verify_response(state, uv.perform(arcb, USER), [IMAGE])
    assert err.value.check == "se.host_key"
