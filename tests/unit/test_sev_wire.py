"""The SEV key-broker JSON (kbs-types and the sev crate's serde shapes), against kbs-types' own
test data: a real Milan chain in a request, and a challenge fixture."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.errors import ParseError
from shared.platforms.sev import wire

DATA = Path(__file__).resolve().parents[1] / "data" / "sev"


def _request() -> dict:  # type: ignore[type-arg]
    return json.loads((DATA / "kbs-types_sev_request.json").read_text())


def test_the_kbs_types_request_decodes_with_its_chain() -> None:
    body = _request()
    assert body["tee"] == "sev" and body["version"] == "0.0.0"
    request = wire.decode_sev_request(body["extra-params"])
    assert request.workload_id == "fakeid"
    assert (request.build.version.major, request.build.version.minor, request.build.build) == (1, 49, 6)
    certs = request.chain.certificates()
    assert {name: len(data) for name, data in certs.items()} == {
        "ark": 1600, "ask": 1600, "pdh": 2084, "pek": 2084, "oca": 2084, "cek": 2084,
    }  # fmt: skip
    # Milan's ARK and ASK key ids (CA certificate offset 4, 16 bytes) as the MANIFEST gives them.
    assert certs["ark"][4:8].hex() == "94c38e41" and certs["ask"][4:8].hex() == "73478c05"
    # Older clients send extra-params as a string holding the same JSON.
    again = wire.decode_sev_request(json.dumps(body["extra-params"]))
    assert again == request


@pytest.mark.parametrize(
    "change, field",
    [
        (lambda r: r.pop("workload_id"), "workload_id"),
        (lambda r: r.update(workload_id="../etc"), "workload_id"),
        (lambda r: r["build"]["version"].update(major=256), "major"),
        (lambda r: r["chain"]["sev"]["pdh"].__setitem__(0, 300), "pdh"),
        (lambda r: r["chain"]["ca"].update(ark=[0] * 5000), "ark"),
        (lambda r: r.update(surprise=1), "surprise"),
    ],
)
def test_a_malformed_request_names_its_field(change, field: str) -> None:  # type: ignore[no-untyped-def]
    params = _request()["extra-params"]
    change(params)
    with pytest.raises(ParseError) as err:
        wire.decode_sev_request(params)
    assert err.value.reason == "sev.request" and field in err.value.detail


def test_the_challenge_fixture_round_trips() -> None:
    fixture = json.loads((DATA / "kbs-types_sev_challenge.json").read_text())
    challenge = wire.decode_challenge_params(fixture["extra-params"])
    assert challenge.id == "fakeid" and challenge.start.policy.to_u32() == 0
    assert len(challenge.start.cert) == 2084 and len(challenge.start.session.blob()) == 128
    # What REMITS sends decodes to the same values (as a string, as the reference clients read it).
    params = wire.challenge_params(
        challenge.id, challenge.start.policy.to_u32(), bytes(challenge.start.cert), challenge.start.session.blob()
    )
    assert isinstance(params, str) and wire.decode_challenge_params(params) == challenge
    assert json.loads(params) == fixture["extra-params"]


@given(st.integers(0, 0xFFFFFFFF))
def test_policy_u32_round_trips(policy: int) -> None:
    assert wire.WirePolicy.from_u32(policy).to_u32() == policy


def test_policy_fields() -> None:
    policy = wire.WirePolicy.from_u32(0x0F0E_0005)
    assert policy.flags.bits == 0x0005 and (policy.minfw.major, policy.minfw.minor) == (0x0E, 0x0F)


def test_measurement_and_secret_bodies() -> None:
    evidence = json.dumps({"measure": list(range(32)), "mnonce": list(range(16))})
    assert wire.decode_measurement(evidence) == (bytes(range(32)), bytes(range(16)))
    assert wire.decode_measurement(json.loads(evidence)) == (bytes(range(32)), bytes(range(16)))
    with pytest.raises(ParseError, match=r"sev\.measurement"):
        wire.decode_measurement(json.dumps({"measure": list(range(31)), "mnonce": list(range(16))}))
    body = wire.secret_body(0, bytes(16), bytes(range(32)), b"\x01\x02")
    assert json.loads(body) == {"header": {"flags": {"bits": 0}, "iv": [0] * 16, "mac": list(range(32))}, "ciphertext": [1, 2]}
    assert wire.decode_secret(body) == (0, bytes(16), bytes(range(32)), b"\x01\x02")


@given(st.binary(max_size=300))
def test_random_bytes_are_a_named_parse_error(data: bytes) -> None:
    for call in (wire.decode_sev_request, wire.decode_measurement, wire.decode_challenge_params):
        try:
            call(data.decode("latin-1"))
        except ParseError as exc:
            assert exc.reason.startswith("sev.")
    try:
        wire.decode_secret(data)
    except ParseError as exc:
        assert exc.reason == "sev.secret"
    assert msgspec  # decoding never raises anything else
