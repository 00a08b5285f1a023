"""Pure pieces of the pipeline: bus messages, the decision function, the demo's fleet plan."""

from __future__ import annotations

import time

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from services.decide.worker import decide
from services.demo.fleet import BAD_KINDS, percentile, plan_fleet
from shared import schemas
from shared.config import Settings
from shared.ear import EarSigner, submod_status, verify_ear

META = schemas.RequestMeta(request_id="r1", tee="sample", reply_to="remits.outcome.g", submitted_at=1.0, session_id="s")


def test_every_stage_message_round_trips_through_the_one_decoder() -> None:
    messages = [
        schemas.AttestRequest(meta=META, tee_pubkey={"kty": "EC"}, primary_evidence=b"{}"),
        schemas.ParsedEvidence(meta=META, runtime_data_claims={}, evidence=b"x", endorsement_key="ab"),
        schemas.EndorsedEvidence(
            meta=META, runtime_data_claims={}, evidence=b"x", endorsement_key="ab", endorsement=[b"c"], endorsement_source="cache"
        ),
        schemas.VerifiedEvidence(meta=META, runtime_data_claims={}, claims={"a": 1}, evidence=b"x"),
        schemas.AppraisedEvidence(meta=META, runtime_data_claims={}, claims={}, vector={"hardware": 2}),
        schemas.Rejection(meta=META, stage="intake", reason="nonce.replayed"),
        schemas.Decision(meta=META, status="affirming", decided_at=2.0, token="t"),
        schemas.ResourceRequest(meta=META, token="t", resource_path="a/b/c"),
    ]
    for message in messages:
        assert schemas.decode_stage(schemas.encode(message)) == message


def test_unknown_kind_and_garbage_fail_with_a_path() -> None:
    bad = msgspec.msgpack.encode({"kind": "launch_missiles", "meta": {}})
    with pytest.raises(msgspec.ValidationError, match="kind"):
        schemas.decode_stage(bad)
    with pytest.raises(msgspec.DecodeError):
        schemas.decode_stage(b"\xc1")
    with pytest.raises(msgspec.ValidationError):
        schemas.decode_decision(schemas.encode(schemas.Rejection(meta=META, stage="x", reason="y")))


def test_subjects() -> None:
    assert schemas.stage_subject("identity") == "remits.stage.identity"
    assert schemas.decision_subject("default", "sample", "affirming") == "remits.decision.default.sample.affirming"
    assert schemas.dlq_subject("measure") == "remits.dlq.measure"


KEY = ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
def signer() -> EarSigner:
    return EarSigner(KEY)


def test_decide_turns_a_rejection_into_a_rejected_decision_without_token(signer: EarSigner) -> None:
    decision = decide(schemas.Rejection(meta=META, stage="identity", reason="evidence.signature_invalid", detail="bad"), signer, 10.0, 300)
    assert decision.status == "rejected"
    assert decision.reason == "evidence.signature_invalid"
    assert decision.detail == "identity: bad"
    assert decision.token == ""


def test_decide_signs_an_ear_whose_status_follows_the_vector(signer: EarSigner) -> None:
    now = time.time()
    appraised = schemas.AppraisedEvidence(
        meta=META,
        runtime_data_claims={"nonce": "n", "tee-pubkey": {"kty": "EC"}},
        claims={"sample.svn": 1},
        vector={"instance-identity": 2, "hardware": 2, "executables": 33, "configuration": 2},
    )
    decision = decide(appraised, signer, now, 300)
    assert decision.status == "warning"  # 33 (unrecognized runtime) is in the warning tier
    claims = verify_ear(decision.token, KEY.public_key(), now=int(now))
    assert submod_status(claims) == "warning"
    assert claims["submods"]["cpu0"]["ear.veraison.annotated-evidence"]["sample"] == {"sample.svn": 1}
    assert claims["exp"] - claims["iat"] == 300


def test_decide_refuses_an_empty_vector(signer: EarSigner) -> None:
    appraised = schemas.AppraisedEvidence(meta=META, runtime_data_claims={}, claims={}, vector={})
    decision = decide(appraised, signer, 1.0, 300)
    assert decision.status == "rejected" and decision.reason == "policy.no_claims" and decision.token == ""


def test_fleet_plan_mixes_every_bad_kind() -> None:
    kinds = plan_fleet(200, 20)
    assert len(kinds) == 200
    assert kinds.count("good") == 180
    for kind in BAD_KINDS:
        assert kinds.count(kind) == 5
    assert plan_fleet(3, 0) == ["good"] * 3
    assert plan_fleet(4, 4) == list(BAD_KINDS)


def test_percentile_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile([], 99) == 0.0
    assert percentile([7.0], 99) == 7.0


def test_settings_from_env_and_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REMITS_NONCE_TTL_S", "12.5")
    monkeypatch.setenv("REMITS_NATS_URL", "nats://example:4222")
    settings = Settings.from_env(redis_url="redis://r:1/0", nats_url=None, data_dir="/tmp/x")
    assert settings.nonce_ttl_s == 12.5
    assert settings.nats_url == "nats://example:4222"
    assert settings.redis_url == "redis://r:1/0"
    assert str(settings.signing_key_path) == "/tmp/x/ear-signing-key.pem"
