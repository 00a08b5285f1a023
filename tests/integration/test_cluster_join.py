"""Confidential clusters end to end: nodes join over attested TLS through the join service (the
pipeline decides, purpose "join"), bad nodes never get join material, a revoked member is evicted
at its next re-attestation (announced on remits.cluster.<name>.evicted) and its credential is
refused from then on, a member that misses re-attestation is evicted, and a user's check of the
cluster (GET /cluster/<name>/attestation, `remits cluster verify`) catches altered or expired
member tokens."""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from services.demo.cluster import CLUSTER, SimulatedNode, _exchange, join
from services.join import signing
from services.join.statement import verify_cluster
from services.runtime import COMPONENTS
from shared import schemas
from shared.busauth import MAC_HEADER
from shared.passport import JwksSource, RelyingPartyPolicy
from shared.trust import buckets
from tests.conftest import GOOD_MEASUREMENT, start_stack

pytestmark = pytest.mark.integration
SECRETS = {"cluster-demo/disk/key": b"\x11" * 32, "cluster-demo/join/token": b"join-token-0123"}


@pytest.fixture
async def cluster(infra, tmp_path: Path):  # type: ignore[no-untyped-def]
    config = tmp_path / "clusters.json"
    config.write_text(json.dumps({"clusters": {CLUSTER: {"secrets": sorted(SECRETS), "tees": ["sample"]}}}))
    rs = await start_stack(
        infra, tmp_path / "data", components=(*COMPONENTS, "join"), join_port=0, join_clusters_path=config,
        join_reattest_s=60.0,
    )  # fmt: skip
    await rs.stack.js.purge_stream(buckets.CLUSTERS.stream)  # each test starts with an empty cluster
    admin = rs.stack.trust_admin
    assert admin is not None
    for path, value in SECRETS.items():
        await admin.put_resource(path, value, "tests", {"tees": ["sample"], "allow_sample": True})
    await rs.stack.trust_synced()
    yield rs
    await rs.stack.stop()
    await rs.kds.stop()


def node(rs: Any, name: str, kind: str = "good", measurement: bytes = GOOD_MEASUREMENT) -> SimulatedNode:
    device = rs.enroll(measurement, debug=kind == "debug")
    evidence = lambda report_data: {"report": base64.b64encode(device.make_report(report_data)).decode()}  # noqa: E731
    n = SimulatedNode(name, kind, "sample", evidence)
    n.device = device  # type: ignore[attr-defined]
    return n


async def jwks_of(rs: Any) -> JwksSource:
    jwks = JwksSource.from_issuer(rs.url)
    await jwks.prefetch()
    return jwks


async def test_good_node_joins_and_gets_its_material(cluster) -> None:  # type: ignore[no-untyped-def]
    member = node(cluster, "node-a")
    answer = await join(member, "127.0.0.1", cluster.stack.join.port)
    assert answer["status"] == "joined", answer
    assert member.secrets == SECRETS  # each wrapped to the node's own key, opened with it
    jwks = await jwks_of(cluster)
    claims = signing.verify(member.credential, jwks.key(signing.header_kid(member.credential, "credential")), int(time.time()), "credential")
    assert claims["sub"] == "node-a" and claims["cluster"] == CLUSTER
    stored = await cluster.stack.join.store.get(CLUSTER, "node-a")
    assert stored.status == "member" and stored.tee == "sample" and stored.tcb  # sample.svn
    check = await _exchange("127.0.0.1", cluster.stack.join.port, {"op": "check", "cluster": CLUSTER, "credential": member.credential}, None)
    assert check["status"] == "valid", check


@pytest.mark.parametrize("kind", ["wrong_measurement", "debug", "replayed", "no_evidence"])
async def test_bad_nodes_never_receive_join_material(cluster, kind) -> None:  # type: ignore[no-untyped-def]
    port = cluster.stack.join.port
    if kind == "replayed":
        donor = node(cluster, "donor")
        assert (await join(donor, "127.0.0.1", port))["status"] == "joined"
        bad = node(cluster, "thief")
        answer = await join(bad, "127.0.0.1", port, replay_of=donor)
        assert answer["reason"] == "nonce.replayed", answer
    elif kind == "no_evidence":
        challenge = await _exchange("127.0.0.1", port, {"op": "challenge", "cluster": CLUSTER, "tee": "sample"}, None)
        answer = await _exchange("127.0.0.1", port, {"op": "join", "cluster": CLUSTER, "node": "bare", "session": challenge["session"]}, None)
        assert answer["reason"] == "atls.no_evidence", answer
        bad = None
    else:
        bad = node(cluster, "bad", kind, measurement=b"\x00" * 48 if kind == "wrong_measurement" else GOOD_MEASUREMENT)
        answer = await join(bad, "127.0.0.1", port)
        expected = "measurement.not_in_reference_values" if kind == "wrong_measurement" else "policy.debug"
        assert answer["reason"] == expected, answer
    assert answer["status"] == "rejected"
    assert "secrets" not in answer and "credential" not in answer and "token" not in answer
    if bad is not None:
        assert not bad.secrets and not bad.credential
        assert await cluster.stack.join.store.get(CLUSTER, bad.name) is None


async def test_revoked_member_is_evicted_at_once_and_its_credential_refused(cluster) -> None:  # type: ignore[no-untyped-def]
    port = cluster.stack.join.port
    member = node(cluster, "node-r")
    assert (await join(member, "127.0.0.1", port))["status"] == "joined"
    events: asyncio.Queue[Any] = asyncio.Queue()
    sub = await cluster.stack.nc.subscribe(schemas.cluster_subject(CLUSTER, "evicted"), cb=events.put)
    admin = cluster.stack.trust_admin
    await admin.revoke("chip_id", member.device.device_id.hex(), "key compromised", "tests")  # type: ignore[attr-defined]
    # No re-attestation needed: the join service watches the revocations.
    msg = await asyncio.wait_for(events.get(), 10)
    event = msgspec.json.decode(msg.data, type=schemas.ClusterEvent)
    assert (event.cluster, event.node, event.event, event.reason) == (CLUSTER, "node-r", "evicted", "revoked.chip_id")
    assert MAC_HEADER in (msg.headers or {})  # signed by the join service
    await sub.unsubscribe()
    stored = await cluster.stack.join.store.get(CLUSTER, "node-r")
    assert stored.status == "evicted" and stored.reason == "revoked.chip_id"
    check = await _exchange("127.0.0.1", port, {"op": "check", "cluster": CLUSTER, "credential": member.credential}, None)
    assert check["status"] == "rejected" and check["reason"] == "credential.evicted", check
    again = await join(member, "127.0.0.1", port, op="reattest")
    assert again["reason"] == "join.not_a_member", again
    # An evicted node is no longer in the cluster's statement.
    statement = await cluster.stack.join.statement(CLUSTER)
    verdict = verify_cluster(statement, await jwks_of(cluster), now=int(time.time()))
    assert [m.node for m in verdict.members] == []


async def test_failed_reattestation_evicts(cluster) -> None:  # type: ignore[no-untyped-def]
    port = cluster.stack.join.port
    member = node(cluster, "node-f")
    assert (await join(member, "127.0.0.1", port))["status"] == "joined"
    events: asyncio.Queue[Any] = asyncio.Queue()
    sub = await cluster.stack.nc.subscribe(schemas.cluster_subject(CLUSTER, "evicted"), cb=events.put)
    # The node now runs an image nobody approved, and says so at its next re-attestation.
    other = cluster.enroll(b"\x01" * 48)
    member.make_evidence = lambda report_data: {"report": base64.b64encode(other.make_report(report_data)).decode()}
    answer = await join(member, "127.0.0.1", port, op="reattest")
    assert answer["status"] == "rejected" and answer["reason"] == "measurement.not_in_reference_values", answer
    event = msgspec.json.decode((await asyncio.wait_for(events.get(), 10)).data, type=schemas.ClusterEvent)
    assert (event.node, event.reason) == ("node-f", "measurement.not_in_reference_values")
    await sub.unsubscribe()
    assert (await cluster.stack.join.store.get(CLUSTER, "node-f")).status == "evicted"


async def test_a_join_under_another_key_neither_evicts_nor_takes_over_a_member(cluster) -> None:  # type: ignore[no-untyped-def]
    """A member's name is bound to its key: anyone reaching the join port who names it, with junk
    or with a genuinely affirming TEE of their own, is refused and the member stays as it was."""
    port = cluster.stack.join.port
    member = node(cluster, "node-v")
    assert (await join(member, "127.0.0.1", port))["status"] == "joined"
    before = await cluster.stack.join.store.get(CLUSTER, "node-v")
    events: asyncio.Queue[Any] = asyncio.Queue()
    sub = await cluster.stack.nc.subscribe(schemas.cluster_subject(CLUSTER, "evicted"), cb=events.put)
    try:
        # Junk: evidence from a device nobody approved, under the attacker's own key.
        attacker = node(cluster, "node-v", measurement=b"\x02" * 48)
        for op in ("join", "reattest"):
            answer = await join(attacker, "127.0.0.1", port, op=op)
            assert answer["status"] == "rejected" and answer["reason"] == "join.name_taken", answer
        # An affirming TEE under another key: refused too, no material handed out.
        usurper = node(cluster, "node-v")
        answer = await join(usurper, "127.0.0.1", port)
        assert answer["status"] == "rejected" and answer["reason"] == "join.name_taken", answer
        assert "secrets" not in answer and "credential" not in answer and not usurper.secrets
        await asyncio.sleep(0.3)
        assert events.empty()  # nobody evicted
    finally:
        await sub.unsubscribe()
    after = await cluster.stack.join.store.get(CLUSTER, "node-v")
    assert after == before and after.status == "member"
    check = await _exchange("127.0.0.1", port, {"op": "check", "cluster": CLUSTER, "credential": member.credential}, None)
    assert check["status"] == "valid", check
    # The member itself still re-attests.
    assert (await join(member, "127.0.0.1", port, op="reattest"))["status"] == "joined"


@pytest.mark.parametrize("reason", ["pipeline.timeout", "pipeline.unavailable"])
async def test_a_pipeline_outage_does_not_evict(cluster, monkeypatch, reason) -> None:  # type: ignore[no-untyped-def]
    port = cluster.stack.join.port
    member = node(cluster, "node-o")
    assert (await join(member, "127.0.0.1", port))["status"] == "joined"

    async def no_decision(*_: Any) -> schemas.Outcome:
        return schemas.Outcome("x", "rejected", reason, "no decision")

    monkeypatch.setattr(cluster.stack.join, "_appraise", no_decision)
    answer = await join(member, "127.0.0.1", port, op="reattest")
    assert answer["status"] == "rejected" and answer["reason"] == reason, answer
    assert (await cluster.stack.join.store.get(CLUSTER, "node-o")).status == "member"


async def test_an_eviction_while_a_join_is_decided_is_not_overwritten(cluster, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The join writes at the revision it read: a sweep that evicted the node meanwhile wins, and
    the node gets no material."""
    service = cluster.stack.join
    port = service.port
    member = node(cluster, "node-c")
    assert (await join(member, "127.0.0.1", port))["status"] == "joined"
    appraise = service._appraise

    async def evicted_meanwhile(*args: Any) -> schemas.Outcome:
        outcome = await appraise(*args)
        assert await service.sweep(now=time.time() + 121) == ["node-c"]
        return outcome

    monkeypatch.setattr(service, "_appraise", evicted_meanwhile)
    answer = await join(member, "127.0.0.1", port, op="reattest")
    assert answer["status"] == "rejected" and answer["reason"] == "credential.evicted", answer
    assert "secrets" not in answer and "credential" not in answer
    stored = await service.store.get(CLUSTER, "node-c")
    assert stored.status == "evicted" and stored.reason == "reattest.missed"


async def test_secrets_unavailable_leave_the_membership_as_it_was(cluster, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Secrets are fetched once the membership is written; when they cannot be had, the write is
    undone: a new node is not recorded, a member keeps its record (and its credential)."""
    from services.join.service import Refused

    service = cluster.stack.join
    port = service.port
    member = node(cluster, "node-s")
    assert (await join(member, "127.0.0.1", port))["status"] == "joined"
    before = await service.store.get(CLUSTER, "node-s")

    async def unavailable(*_: Any) -> dict[str, Any]:
        raise Refused("join.secret_unavailable", "release down")

    monkeypatch.setattr(service, "_secrets", unavailable)
    answer = await join(member, "127.0.0.1", port, op="reattest")
    assert answer["reason"] == "join.secret_unavailable", answer
    assert await service.store.get(CLUSTER, "node-s") == before
    newcomer = node(cluster, "node-n")
    assert (await join(newcomer, "127.0.0.1", port))["reason"] == "join.secret_unavailable"
    assert await service.store.get(CLUSTER, "node-n") is None
    monkeypatch.undo()
    assert (await join(newcomer, "127.0.0.1", port))["status"] == "joined"  # a deleted record is no obstacle


async def test_missed_reattestation_is_evicted(cluster) -> None:  # type: ignore[no-untyped-def]
    member = node(cluster, "node-m")
    assert (await join(member, "127.0.0.1", cluster.stack.join.port))["status"] == "joined"
    assert await cluster.stack.join.sweep(now=time.time() + 30) == []
    assert await cluster.stack.join.sweep(now=time.time() + 121) == ["node-m"]
    assert (await cluster.stack.join.store.get(CLUSTER, "node-m")).reason == "reattest.missed"


async def test_two_replicas_sweeping_at_once_evict_a_node_once(cluster) -> None:  # type: ignore[no-untyped-def]
    """Each join replica sweeps: an eviction is a compare-and-set on the member's record, so one
    wins, one event is announced, and a sweep that read a record before the node attested again
    leaves the new attestation alone."""
    from services.join.service import JoinService

    first, second = cluster.stack.join, JoinService(cluster.stack.join.ctx)
    events: asyncio.Queue[Any] = asyncio.Queue()
    sub = await cluster.stack.nc.subscribe(schemas.cluster_subject(CLUSTER, "evicted"), cb=events.put)
    try:
        member = node(cluster, "node-2r")
        assert (await join(member, "127.0.0.1", first.port))["status"] == "joined"
        later = time.time() + 121
        evicted = await asyncio.gather(first.sweep(now=later), second.sweep(now=later))
        assert sorted(evicted, key=len) == [[], ["node-2r"]]
        event = msgspec.json.decode((await asyncio.wait_for(events.get(), 5)).data, type=schemas.ClusterEvent)
        assert (event.node, event.reason) == ("node-2r", "reattest.missed")
        await asyncio.sleep(0.3)
        assert events.empty()  # announced once

        # A stale read: the node attests again after a sweep read its record.
        fresh = node(cluster, "node-stale")
        assert (await join(fresh, "127.0.0.1", first.port))["status"] == "joined"
        ((read, revision),) = [e for e in await second.store.entries(CLUSTER) if e[0].node == "node-stale"]
        await first.store.put(msgspec.structs.replace(read, last_attested=time.time()))  # re-attested
        assert await second._evict(read, revision, "reattest.missed") is False
        assert (await first.store.get(CLUSTER, "node-stale")).status == "member"
    finally:
        await sub.unsubscribe()


async def test_user_check_of_the_cluster_detects_altered_and_expired_tokens(cluster, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    port = cluster.stack.join.port
    for name in ("node-1", "node-2"):
        assert (await join(node(cluster, name), "127.0.0.1", port))["status"] == "joined"
    jwks = await jwks_of(cluster)
    fetched = await asyncio.to_thread(_get, f"{cluster.url}/cluster/{CLUSTER}/attestation")
    statement = fetched["statement"]
    verdict = verify_cluster(statement, jwks, now=int(time.time()), policy=RelyingPartyPolicy(min_status="affirming"))
    assert verdict.verified and sorted(m.node for m in verdict.members) == ["node-1", "node-2"]
    # The CLI, as a user runs it, against the gateway's JWKS.
    jwks_file = tmp_path / "jwks.json"
    jwks_file.write_text(json.dumps(await asyncio.to_thread(_get, f"{cluster.url}/.well-known/jwks.json")))
    stmt_file = tmp_path / "statement.json"
    stmt_file.write_text(json.dumps(fetched))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.cli", "cluster", "verify", str(stmt_file), "--jwks", str(jwks_file), "--json",
        stdout=asyncio.subprocess.PIPE, cwd=Path(__file__).resolve().parents[2],
    )  # fmt: skip
    out, _ = await proc.communicate()
    assert proc.returncode == 0 and json.loads(out)["verified"] is True
    # The statement is checked against the cluster the user means: from the URL, or --cluster.
    assert verify_cluster(statement, jwks, now=int(time.time()), expected_cluster=CLUSTER).verified
    with pytest.raises(Exception) as wrong:
        verify_cluster(statement, jwks, now=int(time.time()), expected_cluster="prod")
    assert getattr(wrong.value, "reason", "") == "cluster.wrong_cluster"
    for location, extra, code in (
        (f"{cluster.url}/cluster/{CLUSTER}/attestation", [], 0),
        (str(stmt_file), ["--cluster", "prod"], 1),
        (f"{cluster.url}/cluster/{CLUSTER}/attestation", ["--cluster", "prod"], 1),
    ):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.cli", "cluster", "verify", location, "--jwks", str(jwks_file), "--json", *extra,
            stdout=asyncio.subprocess.PIPE, cwd=Path(__file__).resolve().parents[2],
        )  # fmt: skip
        out, _ = await proc.communicate()
        assert proc.returncode == code, (location, extra, out)
        if code:
            assert json.loads(out)["check"] == "cluster.wrong_cluster"
    # Expired member tokens (5 min lifetime) with a statement still fresh: each member refused.
    later = int(time.time()) + 301
    join_key = jwks.key(signing.header_kid(statement, "statement"))
    claims = signing.verify(statement, join_key, int(time.time()), "statement")
    resigned = cluster.stack.join.signer.sign({**claims, "iat": later - 10, "exp": later + 100})
    expired = verify_cluster(resigned, jwks, now=later)
    assert not expired.verified and {m.check for m in expired.members} == {"token.expired"}
    # A member's token altered in a statement the service signed: its digest no longer matches.
    altered = dict(claims)
    altered["members"] = [dict(m) for m in claims["members"]]
    ear = altered["members"][0]["ear"]
    altered["members"][0]["ear"] = ear[:-4] + ("AAAA" if not ear.endswith("AAAA") else "BBBB")
    tampered = verify_cluster(cluster.stack.join.signer.sign(altered), jwks, now=int(time.time()))
    assert not tampered.verified and tampered.members[0].check == "member.ear_digest"
    # ... and with the digest recomputed, the token itself fails its signature.
    import hashlib

    altered["members"][0]["ear_sha256"] = hashlib.sha256(altered["members"][0]["ear"].encode()).hexdigest()
    forged = verify_cluster(cluster.stack.join.signer.sign(altered), jwks, now=int(time.time()))
    assert forged.members[0].check == "token.signature_invalid"
    # A statement not signed by a key of the JWKS is refused as a whole.
    from cryptography.hazmat.primitives.asymmetric import ec

    from shared.ear import EarSigner

    with pytest.raises(Exception) as err:
        verify_cluster(EarSigner(ec.generate_private_key(ec.SECP256R1())).sign(claims), jwks, now=int(time.time()))
    assert getattr(err.value, "reason", "") == "token.unknown_kid"


async def test_unknown_cluster(cluster) -> None:  # type: ignore[no-untyped-def]
    import urllib.error

    with pytest.raises(urllib.error.HTTPError) as err:
        await asyncio.to_thread(_get, f"{cluster.url}/cluster/nope/attestation")
    assert err.value.code == 404
    answer = await _exchange("127.0.0.1", cluster.stack.join.port, {"op": "challenge", "cluster": "nope", "tee": "sample"}, None)
    assert answer["reason"] == "join.unknown_cluster"


def _get(url: str) -> Any:
    import urllib.request

    with urllib.request.urlopen(url, timeout=30) as resp:
        return json.loads(resp.read())


async def test_cluster_demo_json() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.cli", "demo", "--cluster", "6", "--bad", "3", "--json",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, cwd=Path(__file__).resolve().parents[2],
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 240)
    summary = json.loads(out.decode().strip().splitlines()[-1])
    assert proc.returncode == 0, summary
    assert (summary["joined"], summary["rejected"], summary["bad_joined"]) == (3, 3, 0)
    assert summary["secrets_released"] == 3
    assert summary["peer_connections_ok"] == 3  # every pair of members, mutually
    assert summary["peer_connections_refused"] == 9  # every outsider at every member
    assert summary["cluster_verified"] is True
    assert summary["rejection_reasons"] == {
        "debug:policy.debug": 1, "replayed:nonce.replayed": 1, "wrong_measurement:measurement.not_in_reference_values": 1,
    }  # fmt: skip
