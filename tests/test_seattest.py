"""The identity stage's SE steps that need no bus: the request derived from identity's key and the
request id (the same on redelivery), its state sealed to the session, the challenge's parameters,
and the operator's host key documents verified (and refused) from a directory."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import pytest

from services import seattest
from services.demo.se_fleet import DEMO_TAGS, write_se_dir
from services.demo.se_sim import SimulatedHost, SimulatedUltravisor
from shared.errors import VerificationError
from shared.platforms.se import measurement
from shared.platforms.se.arcb import parse_arcb
from shared.platforms.se.platform import SePlatform

KEY = bytes(range(32))


@pytest.fixture(scope="module")
def host() -> SimulatedHost:
    return SimulatedHost()


def test_request_is_derived_from_key_and_request_id(host: SimulatedHost) -> None:
    first, state = seattest.build_request(KEY, "req-1", [host.public_key])
    again, state_again = seattest.build_request(KEY, "req-1", [host.public_key])
    other, other_state = seattest.build_request(KEY, "req-2", [host.public_key])
    assert first == again and state == state_again  # a redelivered challenge request: the same ARCB
    assert other != first and other_state.measurement_key != state.measurement_key
    assert seattest.build_request(bytes(32), "req-1", [host.public_key])[1].measurement_key != state.measurement_key
    assert parse_arcb(first).host_key_hashes == (host.host_key_hash,)


def test_the_simulated_ultravisor_answers_the_derived_request(host: SimulatedHost) -> None:
    request, state = seattest.build_request(KEY, "req-3", [host.public_key])
    answer = SimulatedUltravisor(host, DEMO_TAGS).perform(request, b"\x07" * 64)
    verified = measurement.verify_response(state, answer, [DEMO_TAGS])
    assert verified.tags == DEMO_TAGS and verified.attestation_phkh == host.host_key_hash


def test_sealed_state_opens_only_for_its_session_and_key(host: SimulatedHost) -> None:
    _, state = seattest.build_request(KEY, "req-4", [host.public_key])
    sealed = seattest.seal_state(KEY, "session-a", state)
    assert seattest.open_state(KEY, "session-a", sealed) == state
    for key, session, blob in (
        (KEY, "session-b", sealed),
        (bytes(32), "session-a", sealed),
        (KEY, "session-a", sealed[:-1] + bytes([sealed[-1] ^ 1])),
        (KEY, "session-a", b"short"),
    ):
        with pytest.raises(VerificationError) as err:
            seattest.open_state(key, session, blob)
        assert err.value.reason == "se.session_state"


def test_challenge_parameters(host: SimulatedHost) -> None:
    request, state = seattest.build_request(KEY, "req-5", [host.public_key])
    params = json.loads(seattest.challenge_params(request, state))
    assert params == {
        "selected-hash-algorithm": "sha512",
        "request_blob": base64.b64encode(request).decode(),
        "measurement_size": 64,
        "additional_size": 64,  # image and attestation host key hashes
    }


def test_host_keys_from_the_operator_directory(tmp_path, host: SimulatedHost) -> None:  # type: ignore[no-untyped-def]
    now = datetime.now(UTC)
    with pytest.raises(VerificationError) as err:
        seattest.load_host_keys(None, now)
    assert err.value.reason == "se.unavailable"
    with pytest.raises(VerificationError) as err:
        seattest.load_host_keys(tmp_path / "empty", now)
    assert err.value.reason == "se.unavailable"
    se_dir = write_se_dir(tmp_path / "se", [host])
    keys = seattest.load_host_keys(se_dir, now)
    assert [k.public_numbers() for k in keys] == [host.public_key.public_numbers()]
    assert seattest.load_host_keys(se_dir, now) is keys  # verified once, then kept
    (se_dir / "hkds" / "impostor.crt").write_bytes(SimulatedHost().hkd_pem)  # another (fake) IBM
    with pytest.raises(VerificationError) as err:
        seattest.load_host_keys(se_dir, now)
    assert err.value.reason.startswith("se.hkd.")


def test_a_kept_host_key_verdict_ends_with_its_first_expiring_document(tmp_path, host: SimulatedHost) -> None:  # type: ignore[no-untyped-def]
    """Kept for at most an hour, and never past a certificate's expiry or a CRL's next update."""
    from shared.platforms.se import hkd

    se_dir = write_se_dir(tmp_path / "se", [host])
    documents = {
        "hkds": [p.read_bytes() for p in sorted((se_dir / "hkds").iterdir())],
        "intermediates": [p.read_bytes() for p in sorted((se_dir / "ca").iterdir())],
        "roots": [p.read_bytes() for p in sorted((se_dir / "roots").iterdir())],
        "crls": [p.read_bytes() for p in sorted((se_dir / "crls").iterdir())],
    }
    first_end = hkd.documents_valid_until(documents.pop("hkds"), **documents)
    before = first_end - timedelta(minutes=10)
    keys = seattest.load_host_keys(se_dir, before)
    assert seattest.load_host_keys(se_dir, first_end - timedelta(seconds=1)) is keys
    with pytest.raises(VerificationError) as err:  # within the hour, past the first end: checked again
        seattest.load_host_keys(se_dir, first_end + timedelta(seconds=1))
    assert err.value.reason.startswith("se.hkd.")


def test_platform_binding_and_appraisal() -> None:
    from shared.platforms.se.evidence import encode_evidence

    answer = measurement.SeResponse(measurement=b"\x01" * 64, additional_data=b"", cuid=b"\x02" * 16, user_data=b"\x03" * 80)
    info = SePlatform().parse_evidence(encode_evidence(answer))
    assert info.report_data == b"\x03" * 64
    claims = {"se.image_phkh": "aa" * 32, "se.attestation_phkh": "bb" * 32}
    ok = SePlatform().appraise(b"", claims, {"host_key_hash": frozenset({"aa" * 32, "bb" * 32})})
    assert ok.violations == [] and ok.vector["executables"] == 2
    bad = SePlatform().appraise(b"", claims, {"host_key_hash": frozenset({"aa" * 32})})
    assert [(v.field, v.got) for v in bad.violations] == [("attestation_phkh", "bb" * 32)]
    assert SePlatform().appraise(b"", claims, {}).notes == ["se.host_key_hash.not_provisioned"]
