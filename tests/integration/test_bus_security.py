"""The bus is closed: real servers with REMITS's users refuse anonymous clients, give each component
exactly its rights, and a forged message yields neither a decision nor a secret, even from a
client holding some component's credentials."""

from __future__ import annotations

import asyncio
import os
import time
import uuid

import nats
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from services.demo.client import GuestClient, p256_jwk
from shared import credentials, schemas
from shared.bus import ROUTE_HEADER, Publish, connect, route_header
from shared.busauth import MAC_HEADER, BusAuth
from shared.ear import EarSigner, build_ear_claims, load_or_create_signing_key
from shared.embedded import EmbeddedInfra
from shared.resp import RedisError, RespClient
from shared.trust import buckets
from tests.conftest import RESOURCE, RunningStack, decisions_on_stream, publisher_as

pytestmark = pytest.mark.integration

APPRAISAL, REJECTION = schemas.APPRAISAL_SUBJECT, schemas.REJECTION_SUBJECT
DECISION = "remits.decision.default.sample.affirming"
PROBES = (
    "remits.stage.intake", "remits.stage.endorse", "remits.stage.identity", "remits.stage.measure", APPRAISAL,
    REJECTION, DECISION, "remits.outcome.somegateway", schemas.RESOURCE_SUBJECT, "remits.dlq.intake",
    "$JS.API.STREAM.DELETE.REMITS_PIPELINE", "$JS.API.STREAM.UPDATE.REMITS_DECISIONS",
    "$JS.API.CONSUMER.DELETE.REMITS_PIPELINE.intake", "$JS.API.CONSUMER.CREATE.REMITS_DECISIONS",
)  # fmt: skip
MAY_PUBLISH = {
    "gateway": {"remits.stage.intake", schemas.RESOURCE_SUBJECT},
    "intake": {"remits.stage.endorse", REJECTION, "remits.dlq.intake"},
    "endorse": {"remits.stage.identity", REJECTION},
    # Identity answers a SEV launch request with its challenge, straight to the gateway.
    "identity": {"remits.stage.measure", REJECTION, "remits.outcome.somegateway"},
    "measure": {APPRAISAL, REJECTION},
    "decide": {DECISION, REJECTION},
    "release": {"remits.outcome.somegateway"},
    "audit": set(),
}


async def test_anonymous_clients_are_refused(infra: EmbeddedInfra) -> None:
    with pytest.raises(PermissionError, match="Authorization Violation"):
        await connect(infra.nats_url, "anonymous")
    with pytest.raises(RedisError, match="NOAUTH"):
        await RespClient.from_url(infra.redis_base_url).execute("GET", "remits:resource:" + RESOURCE)
    wrong_password = infra.redis_base_url.replace("redis://", "redis://gateway:not-the-password@")
    with pytest.raises(RedisError, match="WRONGPASS"):
        await RespClient.from_url(wrong_password).execute("PING")


async def _denied_publishes(infra: EmbeddedInfra, component: str) -> set[str]:
    creds = credentials.load(infra.credentials_dir, component)
    denied: set[str] = set()

    async def on_error(error: Exception) -> None:
        text = str(error)
        if "permissions violation for publish to" in text.lower():
            denied.add(text.split('"')[1])

    nc = await nats.connect(
        infra.nats_url, nkeys_seed=str(creds.nats_seed_path), inbox_prefix=credentials.inbox_prefix(component),
        error_cb=on_error, max_reconnect_attempts=0,
    )  # fmt: skip
    try:
        for subject in PROBES:
            # Headers without a tag: whatever does get through is dropped by its receiver.
            await nc.publish(subject, b"probe", headers={ROUTE_HEADER: route_header("probe")})
        await nc.flush(timeout=5)
        await asyncio.sleep(0.3)
    finally:
        await nc.close()
    return denied


@pytest.mark.parametrize("component", sorted(MAY_PUBLISH))
async def test_each_component_publishes_only_where_it_must(infra: EmbeddedInfra, component: str) -> None:
    denied = await _denied_publishes(infra, component)  # nats-py reports subjects lower-cased
    assert denied == {subject.lower() for subject in set(PROBES) - MAY_PUBLISH[component]}


async def test_components_cannot_read_each_others_replies_or_outcomes(infra: EmbeddedInfra) -> None:
    for component, subject in (("gateway", "_INBOX_intake.>"), ("intake", "remits.outcome.*"), ("audit", "_INBOX_admin.>")):
        creds = credentials.load(infra.credentials_dir, component)
        errors: list[str] = []

        async def on_error(error: Exception, errors: list[str] = errors) -> None:
            errors.append(str(error))

        nc = await nats.connect(
            infra.nats_url, nkeys_seed=str(creds.nats_seed_path), inbox_prefix=credentials.inbox_prefix(component),
            error_cb=on_error, max_reconnect_attempts=0,
        )  # fmt: skip
        await nc.subscribe(subject)
        await nc.flush(timeout=5)
        await asyncio.sleep(0.3)
        await nc.close()
        assert any("permissions violation for subscription" in e.lower() for e in errors), (component, errors)


REDIS_REFUSED = {
    "gateway": [("GET", "remits:resource:default/key/test"), ("SET", "remits:resource:x", "y"), ("SMEMBERS", "remits:refval:sample:measurement")],
    "intake": [("SMEMBERS", "remits:refval:sample:measurement"), ("HGETALL", "remits:session:x"), ("GET", "remits:resource:x")],
    "endorse": [("GET", "remits:resource:x"), ("SET", "remits:decision:x", "y")],
    "identity": [("GET", "remits:endorsement:x"), ("GET", "remits:resource:x"), ("SET", "remits:session:x", "y"), ("DEL", "remits:tpm-clock:x")],
    # Reference values, policies and secrets live in JetStream now: measure and release need
    # nothing of Redis beyond sessions and outcomes, and provision nothing at all.
    "measure": [("SADD", "remits:refval:sample:measurement", "ff"), ("SMEMBERS", "remits:refval:sample:measurement"), ("GET", "remits:resource:x")],
    "decide": [("HGETALL", "remits:session:x"), ("GET", "remits:resource:x")],
    "release": [("GET", "remits:resource:x"), ("SET", "remits:resource:default/key/test", "attacker's"), ("SET", "remits:outcome:x", "y"), ("SMEMBERS", "remits:refval:x")],
    "provision": [("GET", "remits:resource:x"), ("HGETALL", "remits:session:x"), ("SET", "remits:x", "y")],
    "audit": [("GET", "remits:resource:x"), ("PING",)],
}  # fmt: skip
REDIS_ALLOWED = {
    "gateway": [("HGETALL", "remits:session:x"), ("HGET", "remits:outcome:x", "v")],
    "intake": [("GET", "remits:nonce:x")],
    "endorse": [("GET", "remits:endorsement:x"), ("PTTL", "remits:lock:x")],
    "identity": [("GET", "remits:tpm-clock:x")],  # a TPM's last clock state, nothing else
    "measure": [("PING",)],
    "decide": [("GET", "remits:decision:x")],
    "release": [("HGETALL", "remits:session:x"), ("HGET", "remits:outcome:x", "v")],
    "provision": [("PING",)],
}


@pytest.mark.parametrize("component", sorted(REDIS_REFUSED))
async def test_each_component_has_only_its_redis_rights(infra: EmbeddedInfra, component: str) -> None:
    client = RespClient.from_url(credentials.load(infra.credentials_dir, component).redis_url(infra.redis_base_url))
    try:
        for command in REDIS_ALLOWED.get(component, []):
            await client.execute(*command)  # no error
        # Every user may ask ROLE: behind Sentinel, a client checks it reached the master.
        assert (await client.execute("ROLE"))[0] == b"master"
        for command in REDIS_REFUSED[component]:
            if command == ("PING",):
                continue  # every user may PING
            with pytest.raises(RedisError, match="NOPERM"):
                await client.execute(*command)
    finally:
        await client.close()


# -- the attack of the issue ----------------------------------------------------------------------


def forged_appraisal(session_id: str, nonce: str, tee_jwk: dict[str, str], request_id: str) -> schemas.AppraisedEvidence:
    meta = schemas.RequestMeta(request_id=request_id, tee="sample", reply_to="", submitted_at=time.time(),
                               session_id=session_id, nonce=nonce)  # fmt: skip
    vector = {"instance-identity": 2, "hardware": 2, "configuration": 2, "executables": 2}
    return schemas.AppraisedEvidence(meta=meta, runtime_data_claims={"nonce": nonce, "tee-pubkey": tee_jwk}, claims={}, vector=vector)


async def _no_decision_for(rs: RunningStack, request_id: str) -> None:
    for decision in await decisions_on_stream(rs.stack.js):
        assert decision.meta.request_id != request_id, decision  # type: ignore[attr-defined]


async def _session_and_cookie(rs: RunningStack) -> tuple[GuestClient, str, str]:
    client = GuestClient.new(rs.url)
    nonce = (await client.auth()).body["nonce"]
    session_id = next(c.value for c in client.http.cookie_jar if c.key == "kbs-session-id")
    return client, session_id, nonce


@pytest.mark.parametrize("stolen", ["gateway", "intake"])
async def test_a_forged_appraisal_yields_no_decision_and_no_secret(running: RunningStack, stolen: str) -> None:
    """An attacker with a session cookie and ALL of one component's credentials (NATS nkey and its
    message key) hand-makes an affirming appraisal for its own TEE key."""
    client, session_id, nonce = await _session_and_cookie(running)
    attacker_key = ec.generate_private_key(ec.SECP256R1())
    request_id = f"forged-{uuid.uuid4().hex[:8]}"
    appraisal = forged_appraisal(session_id, nonce, p256_jwk(attacker_key), request_id)
    nc, publisher = await publisher_as(running.infra, stolen)
    dlq = await running.stack.js.subscribe("remits.dlq.decide", ordered_consumer=True, deliver_policy=nats.js.api.DeliverPolicy.NEW)
    try:
        # Straight to the appraisal subject: NATS refuses anyone but the measure stage (the
        # message is dropped, so no stream ever acknowledges it).
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(publisher.send(Publish(APPRAISAL, appraisal, f"{request_id}:measure"), request_id), 2)
        if stolen == "intake":
            # Intake may send rejections to decide, tagged with its key: the same appraisal there
            # is refused by decide (appraisals come from measure only) and dead-lettered.
            await publisher.send(Publish(REJECTION, appraisal, f"{request_id}:intake"), request_id)
            letter = schemas.decode_dead_letter((await dlq.next_msg(timeout=10)).data)
            assert letter.reason == "bus.unauthenticated" and letter.request_id == request_id
        await asyncio.sleep(0.5)
        await _no_decision_for(running, request_id)
        client.tee_key = attacker_key
        fetched = await client.resource(RESOURCE)
        assert fetched.status == 401 and fetched.body["type"].endswith("/TokenNotFound"), fetched.body
        session = await running.stack.store.get_session(session_id)  # type: ignore[union-attr]
        assert session is not None and session.state == "pending" and session.token == ""
    finally:
        await dlq.unsubscribe()
        await publisher.stop()
        await nc.close()
        await client.close()


def _token(running: RunningStack, signer: EarSigner, nonce: str, tee_jwk: dict[str, str]) -> str:
    claims = build_ear_claims(
        tee="sample", vector={"instance-identity": 2, "hardware": 2, "configuration": 2, "executables": 2},
        annotated_evidence={"sample": {}, "runtime_data_claims": {"nonce": nonce, "tee-pubkey": tee_jwk}},
        policy_id="remits-default", issued_at=int(time.time()), verifier_build="forged", eat_nonce=nonce,
    )  # fmt: skip
    return signer.sign(claims)


async def _decide_publish(running: RunningStack, decision: schemas.Decision, auth: BusAuth | None) -> None:
    """Publish a decision with the decide stage's NATS identity, tagged with ``auth``'s key."""
    nc, _ = await running.infra.connect("decide")
    data = schemas.encode(decision)
    headers = {"Nats-Msg-Id": f"{decision.meta.request_id}:decision", ROUTE_HEADER: route_header(decision.meta.request_id)}
    if auth is not None:
        headers[MAC_HEADER] = auth.sign(DECISION, data, headers["Nats-Msg-Id"])
    await nc.jetstream().publish(DECISION, data, headers=headers)
    await nc.close()


@pytest.mark.parametrize("forgery", ["gateway_identity", "no_decide_key", "foreign_signer", "other_sessions_token"])
async def test_a_forged_decision_attests_no_session(running: RunningStack, forgery: str) -> None:
    client, session_id, nonce = await _session_and_cookie(running)
    attacker_key = ec.generate_private_key(ec.SECP256R1())
    service_signer = EarSigner(load_or_create_signing_key(running.settings.signing_key_path))
    decide_creds = credentials.load(running.infra.credentials_dir, "decide")
    decide_auth = BusAuth("decide", decide_creds.bus_key, {})
    token_nonce, signer, auth = nonce, service_signer, decide_auth
    if forgery == "no_decide_key":
        auth = BusAuth("decide", os.urandom(32), {})  # the decide nkey without decide's message key
    elif forgery == "foreign_signer":
        signer = EarSigner(ec.generate_private_key(ec.SECP256R1()))
    elif forgery == "other_sessions_token":
        _, _, token_nonce = await _session_and_cookie(running)  # a genuine token of another session
    token = _token(running, signer, token_nonce, p256_jwk(attacker_key))
    meta = schemas.RequestMeta(request_id=f"forged-{uuid.uuid4().hex[:8]}", tee="sample", reply_to="",
                               submitted_at=time.time(), session_id=session_id, nonce=nonce)  # fmt: skip
    decision = schemas.Decision(meta=meta, status="affirming", decided_at=time.time(), token=token)
    try:
        if forgery == "gateway_identity":
            nc, _ = await running.infra.connect("gateway")
            with pytest.raises((TimeoutError, nats.errors.TimeoutError)):  # refused: nothing stores it
                await nc.jetstream(timeout=2).publish(DECISION, schemas.encode(decision))
            await nc.close()
        else:
            await _decide_publish(running, decision, auth)
        await asyncio.sleep(1.0)
        session = await running.stack.store.get_session(session_id)  # type: ignore[union-attr]
        assert session is not None and session.state == "pending" and session.token == ""
        client.tee_key = attacker_key
        fetched = await client.resource(RESOURCE)
        assert fetched.status == 401, fetched.body
    finally:
        await client.close()


async def test_the_real_flow_still_attests_and_releases(running: RunningStack) -> None:
    """The same stack, used as intended, with authentication on everywhere."""
    from tests.integration.test_reliability import attest

    _, status, body = await attest(running, running.enroll())
    assert status == 200, body
    admin = running.stack.trust_admin
    assert admin is not None
    assert RESOURCE in [key for key, _, _ in await admin.entries(buckets.RESOURCES)]
