"""`remits demo --cluster N --bad K`: simulated confidential nodes join a cluster over attested TLS,
then every pair of members opens a mutual attested-TLS connection (token-in-certificate, each
side checking the other's EAR as a passport), and a user checks the whole cluster.

A node's evidence binds its TLS key and the join service's nonce (shared.atls): the pipeline
appraises it (purpose "join"). Bad nodes, in turn: a wrong measurement, a debug TEE, and a replay
of a good node's evidence under the attacker's own key and the good node's (spent) session."""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from shared.atls import cert as atls_cert
from shared.atls import tls as atls_tls
from shared.atls.verify import TokenPeerVerifier
from shared.jwe import unwrap_secret
from shared.passport import JwksSource, RelyingPartyPolicy, verify_passport

BAD_KINDS = ("wrong_measurement", "debug", "replayed")
CLUSTER = "demo"


@dataclass
class Evidence:
    """Simulated platforms of one TEE kind: ``for_node(kind)`` gives a node its own platform, as a
    function from report_data to primary evidence (a JSON value)."""

    tee: str
    for_node: Any  # (kind) -> ((report_data) -> evidence)


@dataclass
class SimulatedNode:
    name: str
    kind: str  # good | wrong_measurement | debug | replayed
    tee: str
    make_evidence: Any
    key: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))
    token: str = ""
    credential: str = ""
    secrets: dict[str, bytes] = field(default_factory=dict)
    reason: str = ""
    # What a good node sent (session, nonce, evidence): an attacker's material to replay.
    sent: tuple[str, bytes, Any] | None = None

    def jwk(self) -> dict[str, str]:
        return atls_cert.tee_pubkey_jwk(self.key.public_key())


async def _exchange(host: str, port: int, request: dict[str, Any], identity: atls_tls.AttestedIdentity | None) -> dict[str, Any]:
    """One JSON line to the join service over TLS (with our certificate when given), one back."""
    ctx = atls_tls.client_context(identity)
    reader, writer = await asyncio.open_connection(host, port, ssl=ctx)
    try:
        writer.write(json.dumps(request).encode() + b"\n")
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), 60)
    finally:
        writer.close()
    if not line:
        return {"status": "rejected", "reason": "join.closed"}
    answer: dict[str, Any] = json.loads(line)
    return answer


async def join(node: SimulatedNode, host: str, port: int, *, replay_of: SimulatedNode | None = None, op: str = "join") -> dict[str, Any]:
    """Challenge, evidence bound to this node's key and the nonce, join over attested TLS."""
    challenge = await _exchange(host, port, {"op": "challenge", "cluster": CLUSTER, "tee": node.tee}, None)
    if "nonce" not in challenge:
        return challenge
    session, nonce = challenge["session"], base64.b64decode(challenge["nonce"])
    if replay_of is not None and replay_of.sent is not None:
        session, nonce, evidence = replay_of.sent  # captured from a node that joined
    else:
        binding = atls_cert.evidence_binding(atls_cert.spki_der(node.key.public_key()), nonce)
        evidence = node.make_evidence(binding)
    pem = atls_cert.make_evidence_certificate(node.key, tee=node.tee, evidence=evidence, nonce=nonce, now=datetime.now(UTC))
    identity = atls_tls.AttestedIdentity(cert_pem=pem, key=node.key)
    answer = await _exchange(host, port, {"op": op, "cluster": CLUSTER, "node": node.name, "session": session}, identity)
    if answer.get("status") == "joined":
        node.token, node.credential = answer["token"], answer["credential"]
        node.secrets = {path: unwrap_secret(jwe, node.key) for path, jwe in answer.get("secrets", {}).items()}
        node.sent = (session, nonce, evidence)
    else:
        node.reason = str(answer.get("reason", ""))
    return answer


async def peer_mesh(members: list[SimulatedNode], outsiders: list[SimulatedNode], jwks: JwksSource) -> tuple[int, int, Counter[str]]:
    """Every pair of members connects mutually; every outsider tries every member. (ok, refused, reasons)."""
    policy = RelyingPartyPolicy(min_status="affirming")

    def passport(token: str) -> dict[str, Any]:
        return verify_passport(token, jwks, now=int(time.time()), policy=policy).claims

    verifier = TokenPeerVerifier(passport)
    refusals: Counter[str] = Counter()

    def refused(reason: str, detail: str) -> None:
        refusals[reason] += 1

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: Any) -> None:
        data = await reader.readline()
        writer.write(data)
        await writer.drain()

    now = datetime.now(UTC)
    identities = {
        m.name: atls_tls.AttestedIdentity(atls_cert.make_token_certificate(m.key, token=m.token, now=now), m.key) for m in members
    }
    servers = {
        m.name: await atls_tls.start_server(echo, "127.0.0.1", 0, identity=identities[m.name], verifier=verifier, on_refused=refused)
        for m in members
    }
    ok = bad = 0

    async def connect(identity: atls_tls.AttestedIdentity, server: asyncio.Server) -> bool:
        port = server.sockets[0].getsockname()[1]
        try:
            reader, writer, _ = await atls_tls.open_connection("127.0.0.1", port, identity=identity, verifier=verifier)
        except Exception as exc:
            refusals[getattr(exc, "reason", type(exc).__name__)] += 1
            return False
        try:
            writer.write(b"hello\n")
            await writer.drain()
            echoed = await asyncio.wait_for(reader.readline(), 10)
        except (ConnectionError, ssl.SSLError, TimeoutError):
            echoed = b""
        finally:
            writer.close()
        return echoed == b"hello\n"

    try:
        pairs = [(a, b) for i, a in enumerate(members) for b in members[i + 1 :]]
        results = await asyncio.gather(*(connect(identities[a.name], servers[b.name]) for a, b in pairs))
        ok += sum(results)
        bad += len(results) - sum(results)
        now = datetime.now(UTC)
        for outsider in outsiders:
            # An outsider has no token: it shows what it has, its own evidence certificate.
            pem = atls_cert.make_evidence_certificate(
                outsider.key, tee=outsider.tee, evidence={"none": True}, nonce=b"\x00" * 32, now=now
            )
            own = atls_tls.AttestedIdentity(pem, outsider.key)
            tries = await asyncio.gather(*(connect(own, servers[m.name]) for m in members))
            ok += sum(tries)
            bad += len(tries) - sum(tries)
    finally:
        for server in servers.values():
            server.close()
    return ok, bad, refusals


def plan(size: int, bad: int) -> list[str]:
    kinds = ["good"] * size
    if bad:
        step = size / bad
        for i in range(bad):
            kinds[int(i * step)] = BAD_KINDS[i % len(BAD_KINDS)]
    return kinds


async def run_cluster(
    gateway_url: str, join_host: str, join_port: int, make_evidence: Evidence, size: int, bad: int, secrets: dict[str, bytes]
) -> dict[str, Any]:
    from services.join.statement import verify_cluster

    started = time.perf_counter()
    kinds = plan(size, bad)
    nodes = [SimulatedNode(f"node-{i}", kind, make_evidence.tee, make_evidence.for_node(kind)) for i, kind in enumerate(kinds)]
    # Good nodes first: a replayer needs something to replay.
    good = [n for n in nodes if n.kind == "good"]
    others = [n for n in nodes if n.kind != "good"]
    await asyncio.gather(*(join(n, join_host, join_port) for n in good))
    donors = [n for n in good if n.sent is not None] or good
    await asyncio.gather(*(
        join(n, join_host, join_port, replay_of=donors[i % len(donors)] if n.kind == "replayed" and donors else None)
        for i, n in enumerate(others)
    ))  # fmt: skip
    members = [n for n in nodes if n.token]
    outsiders = [n for n in nodes if not n.token]
    jwks = JwksSource.from_issuer(gateway_url)
    await jwks.prefetch()  # the gateway runs in this event loop: never fetch from inside it
    ok, refused, refusals = await peer_mesh(members, outsiders, jwks)
    statement = await asyncio.to_thread(_fetch_statement, gateway_url)
    verdict = verify_cluster(statement, jwks, now=int(time.time()), policy=RelyingPartyPolicy(min_status="affirming"))
    secrets_ok = sum(1 for n in members if n.secrets == secrets)
    return {
        "nodes": size,
        "joined": len(members),
        "rejected": len(outsiders),
        "bad_joined": sum(1 for n in members if n.kind != "good"),
        "secrets_released": secrets_ok,
        "peer_connections_ok": ok,
        "peer_connections_refused": refused,
        "cluster_verified": verdict.verified,
        "cluster_members_verified": sum(1 for m in verdict.members if m.verified),
        "cluster_failures": {m.node: f"{m.check}: {m.detail}" for m in verdict.members if not m.verified},
        "rejection_reasons": dict(sorted(Counter(f"{n.kind}:{n.reason}" for n in outsiders).items())),
        "peer_refusal_reasons": dict(sorted(refusals.items())),
        "elapsed_s": round(time.perf_counter() - started, 3),
    }


def _fetch_statement(gateway_url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(f"{gateway_url}/cluster/{CLUSTER}/attestation", timeout=30) as resp:
        return str(json.loads(resp.read())["statement"])


def evidence_for(fleet: Any) -> Evidence:
    """Node platforms from the demo's simulated vendor (sample, snp or tdx)."""
    from services.demo.fleet import DEMO_IMAGE_MEASUREMENT, OTHER_IMAGE_MEASUREMENT

    def measurement(kind: str) -> bytes:
        return OTHER_IMAGE_MEASUREMENT if kind == "wrong_measurement" else DEMO_IMAGE_MEASUREMENT

    b64 = base64.b64encode
    if fleet.tee == "sample":
        from shared.platforms.sample.pki import SimulatedDevice

        def sample_node(kind: str) -> Any:
            device = SimulatedDevice.create(measurement(kind), debug=kind == "debug")
            fleet.kds.add_device(device.device_id, fleet.pki.issue_device_cert(device.device_id, device.public_key, datetime.now(UTC)))
            return lambda report_data: {"report": b64(device.make_report(report_data)).decode()}

        return Evidence("sample", sample_node)
    if fleet.tee == "snp":
        from services.demo.snp_sim import SimulatedSnpGuest

        def snp_node(kind: str) -> Any:
            guest = SimulatedSnpGuest.create(measurement(kind), product=fleet.kds.vendor.product, debug=kind == "debug")
            fleet.kds.enroll(guest)
            return lambda report_data: {"report": b64(guest.make_report(report_data)).decode()}

        return Evidence("snp", snp_node)
    if fleet.tee == "tdx":
        from services.demo.tdx_sim import SimulatedTdxPlatform

        machine = SimulatedTdxPlatform.create(fleet.intel)

        def tdx_node(kind: str) -> Any:
            def quote(report_data: bytes) -> dict[str, Any]:
                raw = machine.make_quote(report_data, mr_td=measurement(kind), rtmrs=[bytes(48)] * 4, debug=kind == "debug")
                return {"cc_eventlog": None, "quote": b64(raw).decode()}

            return quote

        return Evidence("tdx", tdx_node)
    raise ValueError(f"the cluster demo runs on sample, snp or tdx, not {fleet.tee}")
