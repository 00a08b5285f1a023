"""Arm CCA: the simulator, the platform as the pipeline drives it, and reference-value appraisal."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

import cbor2
import pytest
from pycose.keys import EC2Key
from pycose.keys.curves import P384
from pycose.messages import Sign1Message

from services.demo.cca_sim import SimulatedCcaPlatform, SimulatedComponent
from shared.errors import ParseError, VerificationError
from shared.platforms.base import Violation
from shared.platforms.cca.abi import PROFILE_PLATFORM, PROFILE_REALM, decode_token
from shared.platforms.cca.platform import CcaPlatform
from shared.platforms.cca.tastore import encode_anchor, load_ta_store
from shared.platforms.cca.validate import claims, references_from_named, validate
from shared.platforms.cca.verify import verify_token, verify_token_with_store

DATA = Path(__file__).parent / "data" / "cca"
NOW = datetime(2026, 1, 1, tzinfo=UTC)
RIM = hashlib.sha256(b"realm image").digest()
REMS = tuple(hashlib.sha256(bytes([i])).digest() for i in range(4))
RPV = b"personalization".ljust(64, b"\x00")
NONCE = hashlib.sha512(b"verifier nonce").digest()


@pytest.fixture(scope="module")
def sim() -> SimulatedCcaPlatform:
    return SimulatedCcaPlatform()


def pycose_verifies(raw: bytes, key: object) -> bool:
    protected, unprotected, payload, signature = cbor2.loads(raw).value
    msg = Sign1Message.from_cose_obj([protected, dict(unprotected), payload, signature], True)
    n = key.public_numbers()  # type: ignore[attr-defined]
    msg.key = EC2Key(crv=P384, x=n.x.to_bytes(48, "big"), y=n.y.to_bytes(48, "big"))
    return bool(msg.verify_signature())


@pytest.mark.parametrize("form", ["legacy", "cmw"])
@pytest.mark.parametrize("rak_form", ["raw", "cose_key"])
@pytest.mark.parametrize("rak_hash_alg", ["sha-256", "sha-384", "sha-512"])
def test_simulated_tokens_verify(
    sim: SimulatedCcaPlatform, form: str, rak_form: str, rak_hash_alg: str
) -> None:
    realm = sim.realm(RIM, REMS, RPV, rak_form=rak_form, rak_hash_alg=rak_hash_alg)
    raw = realm.token(NONCE, form=form)
    token = verify_token_with_store(raw, [sim.trust_anchor()], NONCE)
    assert token.form == form
    assert token.realm_claims.rim == RIM and token.realm_claims.rems == REMS
    assert token.realm_claims.personalization_value == RPV
    assert token.realm_claims.profile == PROFILE_REALM and token.platform_claims.profile == PROFILE_PLATFORM
    assert token.realm_claims.rak_claim == realm.rak_claim()
    assert len(token.realm_claims.rak_claim) == (97 if rak_form == "raw" else 107)
    assert (
        token.platform_claims.challenge
        == hashlib.new(rak_hash_alg.replace("-", ""), realm.rak_claim()).digest()
    )
    # pycose agrees on both signatures.
    outer = cbor2.loads(raw).value
    platform_bytes, realm_bytes = (outer[k] if form == "legacy" else outer[k][1] for k in (44234, 44241))
    assert pycose_verifies(platform_bytes, sim.cpak.public_key())
    assert pycose_verifies(realm_bytes, realm.rak.public_key())


def test_store_entry_round_trips(sim: SimulatedCcaPlatform) -> None:
    (anchor,) = load_ta_store(json.dumps([sim.ta_entry()]).encode())
    assert (
        anchor == sim.trust_anchor()
        or anchor.public_key.public_numbers() == sim.cpak.public_key().public_numbers()
    )
    assert anchor.implementation_id == sim.implementation_id and anchor.instance_id == sim.instance_id


def test_bare_cose_key_map_is_hashed_as_encoded(sim: SimulatedCcaPlatform) -> None:
    # A RAK COSE_Key put directly in the claims map (not bstr-wrapped): the binding covers the
    # map's encoded bytes. Built by hand since the RMM itself wraps it.
    from shared.platforms.cca.cose import sign1

    realm = sim.realm(RIM, REMS, RPV, rak_form="cose_key")
    key_map = cbor2.loads(realm.rak_claim())
    claims_map = {
        10: NONCE,
        44235: RPV,
        44236: "sha-256",
        44237: key_map,
        44238: RIM,
        44239: list(REMS),
        44240: "sha-256",
    }
    platform_token = sim.platform_token(hashlib.sha256(cbor2.dumps(key_map)).digest())
    raw = cbor2.dumps(
        cbor2.CBORTag(399, {44234: platform_token, 44241: sign1(cbor2.dumps(claims_map), realm.rak, -35)})
    )
    token = verify_token_with_store(raw, [sim.trust_anchor()], NONCE)
    assert token.realm_claims.rak_claim == cbor2.dumps(key_map)
    assert token.realm_claims.profile is None


def test_broken_binding(sim: SimulatedCcaPlatform) -> None:
    raw = sim.realm(RIM, REMS, RPV).token(NONCE, break_binding=True)
    with pytest.raises(VerificationError) as err:
        verify_token_with_store(raw, [sim.trust_anchor()], NONCE)
    assert err.value.check == "cca.realm.binding"


def test_unknown_rak_hash_alg_fails_the_binding(sim: SimulatedCcaPlatform) -> None:
    realm = sim.realm(RIM, REMS, RPV)
    token = decode_token(realm.token(NONCE))
    import dataclasses

    odd = dataclasses.replace(token, realm_claims=dataclasses.replace(token.realm_claims, rak_hash_alg="md5"))
    with pytest.raises(VerificationError) as err:
        verify_token(odd, sim.trust_anchor())
    assert err.value.check == "cca.realm.binding"


@pytest.mark.parametrize("lifecycle", [0x0000, 0x1000, 0x2FFF, 0x3100, 0x5000, 0x6000])
def test_unsecured_lifecycle(lifecycle: int) -> None:
    sim = SimulatedCcaPlatform(lifecycle=lifecycle)
    with pytest.raises(VerificationError) as err:
        verify_token_with_store(sim.realm(RIM).token(NONCE), [sim.trust_anchor()])
    assert err.value.check == "cca.platform.lifecycle"


@pytest.mark.parametrize("lifecycle", [0x3000, 0x3003, 0x30FF])
def test_secured_lifecycle(lifecycle: int) -> None:
    sim = SimulatedCcaPlatform(lifecycle=lifecycle)
    token = verify_token_with_store(sim.realm(RIM).token(NONCE), [sim.trust_anchor()])
    assert claims(token)["cca.platform.lifecycle_secured"] is True


def test_check_order(sim: SimulatedCcaPlatform) -> None:
    """anchor ids, then platform signature, then realm signature, binding, lifecycle, challenge."""
    other = SimulatedCcaPlatform(
        implementation_id=sim.implementation_id, instance_id=sim.instance_id, lifecycle=0x1000
    )
    raw = other.realm(RIM).token(NONCE, break_binding=True)
    token = decode_token(raw)
    stranger = SimulatedCcaPlatform()
    with pytest.raises(VerificationError, match=r"^cca\.platform\.anchor_mismatch(:|$)"):
        verify_token(token, stranger.trust_anchor())
    with pytest.raises(VerificationError, match=r"^cca\.platform\.signature(:|$)"):
        verify_token(token, sim.trust_anchor())  # same ids, another CPAK
    with pytest.raises(VerificationError, match=r"^cca\.realm\.binding(:|$)"):
        verify_token(token, other.trust_anchor(), expected_challenge=b"wrong")
    raw = other.realm(RIM).token(NONCE)
    with pytest.raises(VerificationError, match=r"^cca\.platform\.lifecycle(:|$)"):
        verify_token(decode_token(raw), other.trust_anchor(), expected_challenge=b"wrong")


def test_realm_signed_by_another_key(sim: SimulatedCcaPlatform) -> None:
    realm = sim.realm(RIM)
    impostor = sim.realm(RIM)
    realm.rak, key = impostor.rak, realm.rak
    raw = realm.token(NONCE)  # claims name the impostor's RAK...
    outer = cbor2.loads(raw).value
    from shared.platforms.cca.cose import sign1

    payload = cbor2.loads(cbor2.loads(outer[44241]).value[2])
    forged = cbor2.dumps(
        cbor2.CBORTag(399, {44234: outer[44234], 44241: sign1(cbor2.dumps(payload), key, -35)})
    )
    with pytest.raises(VerificationError) as err:  # ...but another key signed them
        verify_token_with_store(forged, [sim.trust_anchor()])
    assert err.value.check == "cca.realm.signature"


def test_missing_and_mistyped_claims(sim: SimulatedCcaPlatform) -> None:
    from shared.platforms.cca.cose import sign1

    realm = sim.realm(RIM, REMS, RPV)
    base = {
        265: PROFILE_REALM,
        10: NONCE,
        44235: RPV,
        44236: "sha-256",
        44237: realm.rak_claim(),
        44238: RIM,
        44239: list(REMS),
        44240: "sha-256",
    }
    cases = {
        44238: (None, "parse.cca.realm.rim"),
        10: (b"short", "parse.cca.realm.challenge"),
        44239: ([RIM] * 3, "parse.cca.realm.rems"),
        44240: (5, "parse.cca.realm.rak_hash_alg"),
        44237: (b"\x04" + bytes(96), "parse.cca.realm.rak"),
        44235: ("text", "parse.cca.realm.rpv"),
    }
    platform_token = sim.platform_token(bytes(32))
    for key, (value, reason) in cases.items():
        claims_map = dict(base)
        if value is None:
            del claims_map[key]
        else:
            claims_map[key] = value
        raw = cbor2.dumps(
            cbor2.CBORTag(399, {44234: platform_token, 44241: sign1(cbor2.dumps(claims_map), realm.rak, -35)})
        )
        with pytest.raises(ParseError) as err:
            decode_token(raw)
        assert err.value.reason == reason, key


def test_unknown_claims_are_kept(sim: SimulatedCcaPlatform) -> None:
    from shared.platforms.cca.cose import sign1

    realm = sim.realm(RIM, REMS, RPV)
    claims_map = {
        10: NONCE,
        44235: RPV,
        44236: "sha-256",
        44237: realm.rak_claim(),
        44238: RIM,
        44239: list(REMS),
        44240: "sha-256",
        99999: "future",
    }
    platform_token = sim.platform_token(hashlib.sha256(realm.rak_claim()).digest())
    raw = cbor2.dumps(
        cbor2.CBORTag(399, {44234: platform_token, 44241: sign1(cbor2.dumps(claims_map), realm.rak, -35)})
    )
    token = verify_token_with_store(raw, [sim.trust_anchor()])
    assert token.realm_claims.extra == {99999: "future"}
    assert "99999" not in json.dumps(claims(token))


def test_collection_shapes(sim: SimulatedCcaPlatform) -> None:
    raw = sim.realm(RIM).token(NONCE, form="cmw")
    outer = cbor2.loads(raw).value
    tagged = {k: cbor2.CBORTag(1668546817 + 10, v[1]) for k, v in outer.items()}
    assert decode_token(cbor2.dumps(cbor2.CBORTag(399, tagged))).form == "cmw"
    legacy = cbor2.loads(sim.realm(RIM).token(NONCE)).value
    bad = {
        "mixed": {44234: outer[44234], 44241: legacy[44241]},
        "extra": {**legacy, 1: b""},
        "missing": {44234: legacy[44234]},
        "cmw_type": {k: [-1, v[1]] if k == 44234 else v for k, v in outer.items()},
        "cmw_value": {k: [10, "x"] for k in outer},
    }
    for name, collection in bad.items():
        with pytest.raises(ParseError, match=r"^parse\.cca\.token"):
            decode_token(cbor2.dumps(cbor2.CBORTag(399, collection)))
            pytest.fail(name)
    # A CMW may name its type with a media type instead of a content format.
    media = {k: ["application/eat+cwt", v[1]] for k, v in outer.items()}
    assert decode_token(cbor2.dumps(cbor2.CBORTag(399, media))).form == "cmw"
    with pytest.raises(ParseError, match="tag 399"):
        decode_token(cbor2.dumps(legacy))


# -- appraisal -------------------------------------------------------------------------------


def test_claims_flat_names(sim: SimulatedCcaPlatform) -> None:
    token = decode_token(sim.realm(RIM, REMS, RPV).token(NONCE, form="cmw"))
    out = claims(token)
    assert out["cca.form"] == "cmw"
    assert out["cca.realm.rim"] == RIM.hex() and out["cca.realm.rem3"] == REMS[3].hex()
    assert out["cca.realm.rpv"] == RPV.hex() and out["cca.realm.challenge"] == NONCE.hex()
    assert out["cca.platform.implementation_id"] == sim.implementation_id.hex()  # type: ignore[union-attr]
    assert out["cca.platform.lifecycle"] == 0x3003 and out["cca.platform.lifecycle_secured"] is True
    assert out["cca.platform.sw_components"][0]["type"] == "RSE_BL1_2"
    assert all(v == v.lower() for v in out.values() if isinstance(v, str) and v.startswith(("0", "f")))
    json.dumps(out)


def test_validate_reports_every_violation(sim: SimulatedCcaPlatform) -> None:
    token = decode_token(sim.realm(RIM, REMS, RPV).token(NONCE))
    components = sim.sw_components or ()
    good = {
        "rim": frozenset({RIM.hex()}),
        **{f"rem{i}": frozenset({REMS[i].hex()}) for i in range(4)},
        "rpv": frozenset({RPV.hex()}),
        "platform_config": frozenset({"cfcfcfcf"}),
        "sw_component": frozenset(f"{c.type}:{c.measurement.hex()}" for c in components),
    }
    assert validate(token, references_from_named(good)) == []
    # Bare measurements match a component of any type.
    bare = {**good, "sw_component": frozenset(c.measurement.hex() for c in components)}
    assert validate(token, references_from_named(bare)) == []
    # Nothing provisioned: nothing to violate.
    assert validate(token, references_from_named({})) == []
    bad = {
        **good,
        "rim": frozenset({"00" * 32}),
        "rem2": frozenset({"11" * 32, "22" * 32}),
        "rpv": frozenset({"33" * 64}),
        "platform_config": frozenset({"00"}),
        # Right measurement of RMM pinned to the wrong type, and one component left out.
        "sw_component": frozenset(
            f"{'AP_BL1' if c.type == 'RMM' else c.type}:{c.measurement.hex()}" for c in components[1:]
        ),
    }
    found = validate(token, references_from_named(bad))
    assert [v.field for v in found] == [
        "cca.realm.rim",
        "cca.realm.rem2",
        "cca.realm.rpv",
        "cca.platform.config",
        "cca.platform.sw_components[0]",
        f"cca.platform.sw_components[{len(components) - 1}]",
    ]
    assert found[0] == Violation("cca.realm.rim", RIM.hex(), "one of: " + "00" * 32)
    assert found[1].want == f"one of: {'11' * 32}, {'22' * 32}"
    assert found[-1].got == f"RMM:{components[-1].measurement.hex()}"


def test_bad_reference_values() -> None:
    with pytest.raises(ParseError) as err:
        references_from_named({"rim": frozenset({"zz"})})
    assert err.value.reason == "config.reference_values.rim"
    with pytest.raises(ParseError):
        references_from_named({"sw_component": frozenset({"BL:xyz"})})


def test_rv_store_sw_components_match_the_trustee_token() -> None:
    rv = json.loads((DATA / "cca_conf_rvstore.json").read_text())
    token = decode_token((DATA / "cca_misc_cca-example-token.cbor").read_bytes())
    refs = {
        "sw_component": frozenset(
            f"{c['component-type']}:{c['measurement-value']}" for c in rv["platform"][0]["sw-components"]
        ),
        "platform_config": frozenset({rv["platform"][0]["platform-configuration"]}),
        "rim": frozenset({rv["realm"][0]["initial-measurement"]}),
        "rpv": frozenset({rv["realm"][0]["personalization-value"]}),
        **{f"rem{i}": frozenset({m}) for i, m in enumerate(rv["realm"][0]["extensible-measurements"])},
    }
    assert validate(token, references_from_named(refs)) == []


# -- the pipeline's view ---------------------------------------------------------------------


def test_platform_pipeline(sim: SimulatedCcaPlatform) -> None:
    platform = CcaPlatform(ta_url="https://ta.example/cca/")
    assert platform.tee == "cca"
    assert platform.reference_names == (
        "rim",
        "rem0",
        "rem1",
        "rem2",
        "rem3",
        "rpv",
        "sw_component",
        "platform_config",
    )
    raw = sim.realm(RIM, REMS, RPV).token(NONCE)
    info = platform.parse_evidence(json.dumps({"token": list(raw)}).encode())
    assert info.evidence == raw and info.report_data == NONCE and info.init_data_binding == RPV
    impl, inst = sim.implementation_id.hex(), sim.instance_id.hex()  # type: ignore[union-attr]
    assert info.endorsement_key == f"cca-ta:{impl}:{inst}"
    (request,) = platform.endorsement_requests(info.evidence, ())
    assert request.cache_key == info.endorsement_key
    assert request.url == f"https://ta.example/cca/{impl}/{inst}"
    assert CcaPlatform().endorsement_requests(raw, ())[0].url == ""
    document = encode_anchor(sim.trust_anchor())
    assert platform.assemble_endorsement([document], ()) == [document]
    with pytest.raises(VerificationError, match=r"^endorsement\.not_found(:|$)"):
        platform.assemble_endorsement([None], ())
    assert platform.document_ttl(request, document, NOW) is None
    out = platform.verify_identity(raw, [document], NOW)
    assert out["cca.realm.rim"] == RIM.hex()
    assert platform.verify_identity(raw, [document], NOW) == out  # cached verdict, same claims
    assert len(platform._verdicts) == 1

    appraisal = platform.appraise(raw, out, {"rim": frozenset({RIM.hex()})})
    assert appraisal.vector["executables"] == 2 and appraisal.violations == [] and appraisal.notes == []
    appraisal = platform.appraise(raw, out, {})
    assert appraisal.vector["executables"] == 33 and appraisal.notes == ["measurement.no_reference_values"]
    appraisal = platform.appraise(raw, out, {"rim": frozenset({"00" * 32}), "rpv": frozenset({"00" * 64})})
    assert [v.field for v in appraisal.violations] == ["cca.realm.rim", "cca.realm.rpv"]


def test_platform_rejects_and_does_not_cache_failures(sim: SimulatedCcaPlatform) -> None:
    platform = CcaPlatform()
    raw = sim.realm(RIM).token(NONCE, break_binding=True)
    document = encode_anchor(sim.trust_anchor())
    for _ in range(2):
        with pytest.raises(VerificationError, match=r"^cca\.realm\.binding(:|$)"):
            platform.verify_identity(raw, [document], NOW)
    assert not platform._verdicts
    stranger = encode_anchor(SimulatedCcaPlatform().trust_anchor())
    with pytest.raises(VerificationError, match=r"^cca\.platform\.anchor_mismatch(:|$)"):
        platform.verify_identity(sim.realm(RIM).token(NONCE), [stranger], NOW)
    with pytest.raises(VerificationError, match=r"^endorsement\.chain_invalid(:|$)"):
        platform.verify_identity(raw, [], NOW)
    with pytest.raises(ParseError):
        platform.parse_evidence(b'{"token": "AAAA"}')


def test_platform_verifies_the_fvp_vector() -> None:
    platform = CcaPlatform()
    raw = (DATA / "cca-token-draft-ffm-00.cbor").read_bytes()
    (anchor,) = load_ta_store((DATA / "cca_conf_tastore.json").read_bytes())
    info = platform.parse_evidence(raw)
    assert info.endorsement_key == f"cca-ta:{anchor.implementation_id.hex()}:{anchor.instance_id.hex()}"
    out = platform.verify_identity(raw, [encode_anchor(anchor)], NOW)
    assert out["cca.realm.rim"] == "311314ab73620350cf758834ae5c65d9e8c2dc7febe6e7d9654bbe864e300d49"
    assert out["cca.platform.profile"] == PROFILE_PLATFORM


def test_custom_components() -> None:
    sim = SimulatedCcaPlatform(sw_components=(SimulatedComponent("BL", bytes(48)),))
    token = verify_token_with_store(sim.realm(RIM).token(NONCE), [sim.trust_anchor()])
    assert [(c.type, c.measurement) for c in token.platform_claims.sw_components] == [("BL", bytes(48))]


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        (2396, None, "parse.cca.platform.implementation_id"),
        (256, b"\x01" * 32, "parse.cca.platform.instance_id"),
        (2395, "secured", "parse.cca.platform.lifecycle"),
        (2395, 0x10000, "parse.cca.platform.lifecycle"),
        (265, None, "parse.cca.platform.profile"),
        (2402, None, "parse.cca.platform.hash_alg"),
        (2401, None, "parse.cca.platform.config"),
        (2399, {}, "parse.cca.platform.sw_components"),
        (2399, [{1: "BL", 5: bytes(32)}], "parse.cca.platform.sw_components[0].measurement"),
        (2399, [{2: bytes(32)}], "parse.cca.platform.sw_components[0].signer_id"),
        (2399, [{1: 7, 2: bytes(32), 5: bytes(32)}], "parse.cca.platform.sw_components[0].type"),
        (2400, b"url", "parse.cca.platform.verification_service"),
    ],
)
def test_platform_claim_errors(sim: SimulatedCcaPlatform, key: int, value: object, reason: str) -> None:
    from shared.platforms.cca.abi import decode_platform_claims

    payload = cbor2.loads(cbor2.loads(sim.platform_token(bytes(32))).value[2])
    claims_map = dict(payload)
    if value is None:
        del claims_map[key]
    else:
        claims_map[key] = value
    with pytest.raises(ParseError) as err:
        decode_platform_claims(cbor2.dumps(claims_map))
    assert err.value.reason == reason


def test_platform_token_verified_once_realm_token_always(sim: SimulatedCcaPlatform) -> None:
    """A realm's platform token repeats (the RMM fetches it once per RAK): its CPAK signature is
    checked once per anchor; the realm signature, binding and lifecycle are checked every time."""
    platform = CcaPlatform()
    anchor = encode_anchor(sim.trust_anchor())
    now = datetime.now(UTC)
    realm = sim.realm(b"\x11" * 32)
    first, second = realm.token(b"\x01" * 64), realm.token(b"\x02" * 64)
    assert decode_token(first).platform == decode_token(second).platform  # the same bytes, reused
    assert platform.verify_identity(first, [anchor], now)["cca.realm.challenge"] == "01" * 64
    assert platform.verify_identity(second, [anchor], now)["cca.realm.challenge"] == "02" * 64
    tampered = bytearray(second)
    tampered[-3] ^= 0x01  # the realm signature (the realm token is the collection's last entry)
    with pytest.raises(VerificationError) as err:
        platform.verify_identity(bytes(tampered), [anchor], now)
    assert err.value.reason == "cca.realm.signature"
    # The same platform token under another anchor is a new verdict, and fails.
    other = encode_anchor(SimulatedCcaPlatform(implementation_id=sim.implementation_id, instance_id=sim.instance_id).trust_anchor())
    with pytest.raises(VerificationError) as err:
        platform.verify_identity(second, [other], now)
    assert err.value.reason == "cca.platform.signature"
