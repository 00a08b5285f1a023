"""Attested TLS: certificates bound to sample-TEE evidence or to REMITS tokens, verified after real
TLS 1.3 handshakes on localhost, and every refusal with its reason."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from shared.atls import AttestedTlsError, oids
from shared.atls.cert import (
    evidence_binding,
    issuer_pem,
    make_evidence_certificate,
    make_token_certificate,
    read_attestation,
    spki_der,
    tee_pubkey_jwk,
)
from shared.atls.offline import APPRAISAL_CLAIM, OfflineEvidenceVerifier
from shared.atls.tls import AttestedIdentity, client_context, open_connection, start_server
from shared.atls.verify import AnyPeerVerifier, EvidencePeerVerifier, PeerIdentity, TokenPeerVerifier
from shared.ear import EarSigner, EarVerifier, build_ear_claims
from shared.errors import VerificationError
from shared.kbs.binding import canonical_json
from shared.platforms.base import EndorsementRequest, Platform
from shared.platforms.sample import kds
from shared.platforms.sample.pki import SimulatedDevice, VendorPKI
from shared.platforms.sample.platform import SamplePlatform
from shared.platforms.snp.certs import pinned_roots
from shared.platforms.snp.platform import SnpPlatform

KDS = "https://kds.invalid"
MEASUREMENT = bytes(range(48))
# OpenSSL checks certificate validity against the real clock, so handshaking certificates are
# made now; time-travel cases call the verifiers directly with their own clock.
NOW = datetime.now(UTC)
SNP_CASE = Path(__file__).resolve().parent / "data" / "snp" / "reports" / "genoa_oak_oc"


# --- a small simulated fleet ----------------------------------------------------------------------


@dataclass
class Fleet:
    pki: VendorPKI
    platform: SamplePlatform
    documents: dict[str, bytes]
    ear_signer: EarSigner

    def device(self, *, debug: bool = False) -> SimulatedDevice:
        device = SimulatedDevice.create(MEASUREMENT, debug=debug)
        # Served from the vendor PKI by URL, as the sample KDS would, without HTTP.
        self.documents[kds.device_cert_url(KDS, device.device_id)] = self.pki.issue_device_cert(
            device.device_id, device.public_key, NOW - timedelta(days=1)
        )
        return device

    def endorsements(self, platform: Platform, request: EndorsementRequest) -> bytes | None:
        return self.documents.get(request.url)

    def evidence_verifier(self, **kwargs: Any) -> OfflineEvidenceVerifier:
        return OfflineEvidenceVerifier(
            {"sample": self.platform},
            self.endorsements,
            {"sample": {"measurement": frozenset({MEASUREMENT.hex()})}},
            **kwargs,
        )

    def verify_token(self, token: str) -> dict[str, Any]:
        return EarVerifier(self.ear_signer.public_jwk()).verify(token, int(time.time()))


@pytest.fixture(scope="module")
def fleet() -> Fleet:
    pki = VendorPKI.generate(NOW - timedelta(days=2))
    documents = {kds.cert_chain_url(KDS): pki.chain_pem()}
    return Fleet(pki, SamplePlatform(pki.root_cert, KDS), documents, EarSigner(ec.generate_private_key(ec.SECP256R1())))


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def evidence_identity(
    device: SimulatedDevice, *, key: ec.EllipticCurvePrivateKey | None = None, bound_to: Any = None
) -> AttestedIdentity:
    """A node whose device reports the binding of ``bound_to`` (default: its own key)."""
    key = key or new_key()
    nonce = os.urandom(16)
    report = device.make_report(evidence_binding(spki_der((bound_to or key).public_key()), nonce))
    evidence = {"report": base64.b64encode(report).decode()}
    return AttestedIdentity(make_evidence_certificate(key, tee="sample", evidence=evidence, nonce=nonce, now=NOW), key)


def ear(signer: EarSigner, tee_key: ec.EllipticCurvePrivateKey, *, issued_at: int, lifetime_s: int = 300) -> str:
    annotated = {
        "sample": {"sample.measurement": MEASUREMENT.hex(), "sample.debug": False},
        "runtime_data_claims": {"nonce": "challenge", "tee-pubkey": tee_pubkey_jwk(tee_key.public_key())},
    }
    claims = build_ear_claims(
        tee="sample",
        vector={"instance-identity": 2, "hardware": 2, "configuration": 2, "executables": 2},
        annotated_evidence=annotated,
        policy_id="test",
        issued_at=issued_at,
        lifetime_s=lifetime_s,
        verifier_build="test",
    )
    return signer.sign(claims)


def token_identity(
    signer: EarSigner, *, bound_to: ec.EllipticCurvePrivateKey | None = None, issued_at: int | None = None
) -> AttestedIdentity:
    key = new_key()
    token = ear(signer, bound_to or key, issued_at=int(time.time()) if issued_at is None else issued_at)
    return AttestedIdentity(make_token_certificate(key, token=token, now=NOW), key)


def der(identity: AttestedIdentity) -> bytes:
    return x509.load_pem_x509_certificate(identity.cert_pem).public_bytes(serialization.Encoding.DER)


# --- a server and a client ------------------------------------------------------------------------


@dataclass
class Served:
    port: int
    peers: list[PeerIdentity | None]
    refused: list[tuple[str, str]]


async def serve(identity: AttestedIdentity, verifier: Any) -> tuple[asyncio.Server, Served]:
    served = Served(0, [], [])

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: PeerIdentity | None) -> None:
        served.peers.append(peer)
        line = await reader.readline()
        writer.write(b"echo " + line)
        await writer.drain()

    server = await start_server(
        echo, "127.0.0.1", 0, identity=identity, verifier=verifier, on_refused=lambda r, d: served.refused.append((r, d))
    )
    served.port = server.sockets[0].getsockname()[1]
    return server, served


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes) -> bytes:
    """Send a line and read the answer; a peer that hung up answers b""."""
    try:
        writer.write(data)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 5)
    except (ConnectionError, ssl.SSLError):
        answer = b""
    writer.close()
    return answer


async def with_server(
    identity: AttestedIdentity, verifier: Any, body: Callable[[Served], Awaitable[None]]
) -> Served:
    server, served = await serve(identity, verifier)
    async with server:
        await body(served)
    return served


# --- certificates ---------------------------------------------------------------------------------


def test_oids_are_uuid_arcs_and_distinct() -> None:
    for oid in (oids.EVIDENCE, oids.TOKEN):
        arc, value = oid.dotted_string.rsplit(".", 1)
        assert arc == "2.25" and 0 < int(value) < 2**128
    assert oids.EVIDENCE != oids.TOKEN


def test_evidence_binding_is_sha384_of_spki_and_nonce_padded() -> None:
    binding = evidence_binding(b"spki", b"nonce")
    assert len(binding) == 64
    assert binding == hashlib.sha384(b"spkinonce").digest() + bytes(16)


def test_evidence_certificate_round_trip(fleet: Fleet) -> None:
    device = fleet.device()
    identity = evidence_identity(device)
    cert = x509.load_pem_x509_certificate(identity.cert_pem)
    assert cert.issuer == x509.load_pem_x509_certificate(issuer_pem()).subject
    raw = cert.extensions.get_extension_for_oid(oids.EVIDENCE)
    assert raw.critical is False
    value = raw.value.value  # type: ignore[attr-defined]
    assert value[0] == 0x04  # DER OCTET STRING around the canonical JSON
    doc = json.loads(value[value.index(b"{") :])
    assert set(doc) == {"v", "tee", "nonce", "evidence"} and doc["v"] == 1 and doc["tee"] == "sample"

    attestation = read_attestation(der(identity))
    assert attestation.kind == "evidence" and attestation.tee == "sample"
    assert attestation.nonce == base64.b64decode(doc["nonce"])
    assert attestation.evidence == canonical_json(doc["evidence"])
    assert attestation.spki == spki_der(identity.key.public_key())
    assert attestation.not_after - attestation.not_before == timedelta(hours=1)
    assert attestation.token is None


def test_token_certificate_round_trip(fleet: Fleet) -> None:
    identity = token_identity(fleet.ear_signer)
    attestation = read_attestation(der(identity))
    assert attestation.kind == "token" and attestation.tee is None and attestation.evidence is None
    assert attestation.token is not None and attestation.token.count(".") == 2


def _plain_certificate(key: ec.EllipticCurvePrivateKey, *, extension: x509.UnrecognizedExtension | None = None) -> bytes:
    """A certificate under the no-trust issuer (anyone can make one) with no or a hand-made extension."""
    issuer_key = serialization.load_pem_private_key(
        (Path(__file__).resolve().parents[1] / "shared" / "atls" / "issuer-key.pem").read_bytes(), None
    )
    issuer = x509.load_pem_x509_certificate(issuer_pem())
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "plain")]))
        .issuer_name(issuer.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW.replace(microsecond=0))
        .not_valid_after(NOW + timedelta(hours=1))
    )
    if extension is not None:
        builder = builder.add_extension(extension, critical=False)
    return builder.sign(issuer_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)  # type: ignore[arg-type]


def _octets(payload: bytes) -> bytes:
    assert len(payload) < 0x80
    return b"\x04" + bytes([len(payload)]) + payload


@pytest.mark.parametrize(
    ("value", "detail"),
    [
        (b"\x04\x02{}", "must be"),
        (b"\x0c\x02{}", "OCTET STRING"),
        (b"\x04\x81\x02{}", "minimal"),
        (_octets(b'{"evidence":{},"nonce":"AAAAAAAAAAA=","tee":"sample", "v":1}'), "canonical"),
        (_octets(b'{"evidence":{},"nonce":"AAAAAAAAAAA=","tee":"sample","v":2}'), "version"),
        (_octets(b'{"evidence":{},"nonce":"AAAA","tee":"sample","v":1}'), "nonce must be"),
        (_octets(b'{"evidence":{},"nonce":"AAAAAAAAAAA=","tee":"sample","v":1}') + b"\x00", "does not match"),
    ],
)
def test_malformed_extensions_are_refused(value: bytes, detail: str) -> None:
    key = new_key()
    pem = _plain_certificate(key, extension=x509.UnrecognizedExtension(oids.EVIDENCE, value))
    with pytest.raises(AttestedTlsError) as err:
        read_attestation(x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER))
    assert err.value.reason == "atls.certificate"
    assert detail in err.value.detail


# --- mutual handshakes ----------------------------------------------------------------------------


async def test_mutual_evidence_handshake_exchanges_data(fleet: Fleet) -> None:
    server_node, client_node = evidence_identity(fleet.device()), evidence_identity(fleet.device())
    verifier = EvidencePeerVerifier(fleet.evidence_verifier())

    async def body(served: Served) -> None:
        reader, writer, peer = await open_connection(
            "127.0.0.1", served.port, identity=client_node, verifier=verifier
        )
        assert peer.kind == "evidence" and peer.tee == "sample"
        assert peer.public_key.public_numbers() == server_node.key.public_key().public_numbers()
        assert peer.claims["sample.measurement"] == MEASUREMENT.hex()
        assert peer.claims[APPRAISAL_CLAIM]["status"] == "affirming"
        assert await exchange(reader, writer, b"hello\n") == b"echo hello\n"

    served = await with_server(server_node, verifier, body)
    assert served.refused == []
    [client_peer] = served.peers
    assert client_peer is not None and client_peer.kind == "evidence"
    assert client_peer.spki_sha256 == hashlib.sha256(spki_der(client_node.key.public_key())).hexdigest()
    assert client_peer.public_key.public_numbers() == client_node.key.public_key().public_numbers()


async def test_mutual_token_handshake_exchanges_data(fleet: Fleet) -> None:
    server_node, client_node = token_identity(fleet.ear_signer), token_identity(fleet.ear_signer)
    verifier = TokenPeerVerifier(fleet.verify_token)

    async def body(served: Served) -> None:
        reader, writer, peer = await open_connection(
            "127.0.0.1", served.port, identity=client_node, verifier=verifier
        )
        assert peer.kind == "token" and peer.tee == "sample"
        assert peer.token == read_attestation(der(server_node)).token
        assert peer.claims["iss"] == "remits"
        assert await exchange(reader, writer, b"ping\n") == b"echo ping\n"

    served = await with_server(server_node, verifier, body)
    assert served.refused == []
    [client_peer] = served.peers
    assert client_peer is not None and client_peer.kind == "token"
    assert client_peer.public_key.public_numbers() == client_node.key.public_key().public_numbers()


async def test_any_verifier_accepts_either_kind_in_one_connection(fleet: Fleet) -> None:
    server_node, client_node = evidence_identity(fleet.device()), token_identity(fleet.ear_signer)
    verifier = AnyPeerVerifier(
        evidence=EvidencePeerVerifier(fleet.evidence_verifier()), token=TokenPeerVerifier(fleet.verify_token)
    )

    async def body(served: Served) -> None:
        reader, writer, peer = await open_connection("127.0.0.1", served.port, identity=client_node, verifier=verifier)
        assert peer.kind == "evidence"
        assert await exchange(reader, writer, b"x\n") == b"echo x\n"

    served = await with_server(server_node, verifier, body)
    assert [p.kind for p in served.peers if p is not None] == ["token"]


async def test_server_without_verifier_serves_unauthenticated_clients(fleet: Fleet) -> None:
    server_node = evidence_identity(fleet.device())
    verifier = EvidencePeerVerifier(fleet.evidence_verifier())

    async def body(served: Served) -> None:
        reader, writer, _ = await open_connection("127.0.0.1", served.port, identity=None, verifier=verifier)
        assert await exchange(reader, writer, b"anon\n") == b"echo anon\n"

    served = await with_server(server_node, None, body)
    assert served.peers == [None]


# --- refusals over the wire -----------------------------------------------------------------------


async def client_refuses_server(fleet: Fleet, server_node: AttestedIdentity, verifier: Any) -> Exception:
    """The client's error; the server must never have run its handler."""
    client_node = evidence_identity(fleet.device())
    caught: list[Exception] = []

    async def body(served: Served) -> None:
        with pytest.raises((AttestedTlsError, VerificationError)) as err:
            await open_connection("127.0.0.1", served.port, identity=client_node, verifier=verifier)
        caught.append(err.value)

    served = await with_server(server_node, None, body)
    assert served.peers in ([], [None])  # the server may have accepted; the client sent nothing
    return caught[0]


async def server_refuses_client(server_node: AttestedIdentity, server_verifier: Any, client_node: AttestedIdentity) -> tuple[str, str]:
    """The server's refusal; the client gets no application data back."""

    async def body(served: Served) -> None:
        # A plain TLS client: what it thinks of the server does not matter here.
        reader, writer = await asyncio.open_connection("127.0.0.1", served.port, ssl=client_context(client_node))
        assert await exchange(reader, writer, b"let me in\n") == b""

    served = await with_server(server_node, server_verifier, body)
    assert served.peers == []
    [refusal] = served.refused
    return refusal


async def test_client_refuses_evidence_bound_to_another_key(fleet: Fleet) -> None:
    server_node = evidence_identity(fleet.device(), bound_to=new_key())
    err = await client_refuses_server(fleet, server_node, EvidencePeerVerifier(fleet.evidence_verifier()))
    assert isinstance(err, AttestedTlsError) and err.reason == "atls.unbound_key"


async def test_server_refuses_token_naming_another_key(fleet: Fleet) -> None:
    server_node = token_identity(fleet.ear_signer)
    client_node = token_identity(fleet.ear_signer, bound_to=new_key())
    reason, detail = await server_refuses_client(server_node, TokenPeerVerifier(fleet.verify_token), client_node)
    assert reason == "atls.unbound_key"
    assert "not the certificate key" in detail


async def test_server_refuses_expired_token(fleet: Fleet) -> None:
    server_node = token_identity(fleet.ear_signer)
    client_node = token_identity(fleet.ear_signer, issued_at=int(time.time()) - 3600)
    reason, _ = await server_refuses_client(server_node, TokenPeerVerifier(fleet.verify_token), client_node)
    assert reason == "token.expired"


async def test_server_refuses_debug_tee(fleet: Fleet) -> None:
    server_node = evidence_identity(fleet.device())
    client_node = evidence_identity(fleet.device(debug=True))
    reason, detail = await server_refuses_client(
        server_node, EvidencePeerVerifier(fleet.evidence_verifier()), client_node
    )
    assert reason == "atls.policy.debug"
    assert detail == "debug: got true, want false"


async def test_client_refuses_token_from_a_foreign_issuer(fleet: Fleet) -> None:
    server_node = token_identity(EarSigner(new_key()))
    err = await client_refuses_server(fleet, server_node, TokenPeerVerifier(fleet.verify_token))
    assert isinstance(err, VerificationError) and err.reason == "token.signature_invalid"


async def test_certificates_without_attestation_are_refused(fleet: Fleet) -> None:
    key = new_key()
    plain = AttestedIdentity(_plain_certificate(key), key)
    err = await client_refuses_server(fleet, plain, EvidencePeerVerifier(fleet.evidence_verifier()))
    assert err.reason == "atls.no_evidence"  # type: ignore[attr-defined]
    err = await client_refuses_server(fleet, plain, TokenPeerVerifier(fleet.verify_token))
    assert err.reason == "atls.no_token"  # type: ignore[attr-defined]
    server_node = evidence_identity(fleet.device())
    any_verifier = AnyPeerVerifier(evidence=EvidencePeerVerifier(fleet.evidence_verifier()))
    reason, _ = await server_refuses_client(server_node, any_verifier, plain)
    assert reason == "atls.no_attestation"
    # A token certificate where only evidence is accepted names the kind, not a missing extension.
    reason, _ = await server_refuses_client(server_node, any_verifier, token_identity(fleet.ear_signer))
    assert reason == "atls.kind_not_accepted"


async def test_certificate_from_another_ca_fails_the_handshake(fleet: Fleet) -> None:
    key = new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "self-signed")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(minutes=1))
        .not_valid_after(NOW + timedelta(hours=1))
        .sign(key, hashes.SHA256())
    )
    stranger = AttestedIdentity(cert.public_bytes(serialization.Encoding.PEM), key)
    err = await client_refuses_server(fleet, stranger, EvidencePeerVerifier(fleet.evidence_verifier()))
    assert err.reason == "atls.handshake"  # type: ignore[attr-defined]


# --- verifier checks without a handshake ----------------------------------------------------------


def test_evidence_verifier_time_and_nonce_checks(fleet: Fleet) -> None:
    cert = der(evidence_identity(fleet.device()))
    nonce = read_attestation(cert).nonce
    offline = fleet.evidence_verifier()
    now = time.time()
    cases = [
        (EvidencePeerVerifier(offline, clock=lambda: now + 7200), "atls.certificate_expired"),
        (EvidencePeerVerifier(offline, clock=lambda: now - 7200), "atls.certificate_not_yet_valid"),
        (EvidencePeerVerifier(offline, clock=lambda: now + 120, max_age_s=60), "atls.stale"),
        (EvidencePeerVerifier(offline, expected_nonce=b"another-challenge"), "atls.nonce"),
    ]
    for verifier, reason in cases:
        with pytest.raises(AttestedTlsError) as err:
            verifier.verify(cert)
        assert err.value.reason == reason
    assert EvidencePeerVerifier(offline, expected_nonce=nonce).verify(cert).tee == "sample"


def test_offline_verifier_needs_every_required_endorsement(fleet: Fleet) -> None:
    device = SimulatedDevice.create(MEASUREMENT)  # never registered with the fleet's KDS documents
    cert = der(evidence_identity(device))
    with pytest.raises(VerificationError) as err:
        EvidencePeerVerifier(fleet.evidence_verifier()).verify(cert)
    assert err.value.reason == "endorsement.not_found"


def test_offline_verifier_reports_every_violation(fleet: Fleet) -> None:
    device = fleet.device(debug=True)
    verify = OfflineEvidenceVerifier(
        {"sample": fleet.platform}, fleet.endorsements, {"sample": {"measurement": frozenset({"00" * 48})}}
    )
    identity = read_attestation(der(evidence_identity(device)))
    assert identity.evidence is not None
    with pytest.raises(VerificationError) as err:
        verify("sample", identity.evidence)
    assert err.value.reason == "atls.policy.measurement"
    assert "measurement: got" in err.value.detail and "debug: got true, want false" in err.value.detail
    with pytest.raises(VerificationError) as err:
        verify("tdx", identity.evidence)
    assert err.value.reason == "atls.unsupported_tee"


def test_offline_verifier_refuses_a_tee_without_reference_values(fleet: Fleet) -> None:
    # A misspelt references key leaves the sample TEE with no reference values: warning, not affirming.
    references = {"smaple": {"measurement": frozenset({MEASUREMENT.hex()})}}
    cert = der(evidence_identity(fleet.device()))
    strict = OfflineEvidenceVerifier({"sample": fleet.platform}, fleet.endorsements, references)
    with pytest.raises(VerificationError) as err:
        EvidencePeerVerifier(strict).verify(cert)
    assert err.value.reason == "atls.policy.status"
    assert "'warning'" in err.value.detail and "'affirming'" in err.value.detail
    assert "measurement.no_reference_values" in err.value.detail and "executables=33" in err.value.detail
    # The same refusal through AnyPeerVerifier, which hands the parsed attestation on.
    with pytest.raises(VerificationError) as err:
        AnyPeerVerifier(evidence=EvidencePeerVerifier(strict)).verify(cert)
    assert err.value.reason == "atls.policy.status"

    # Only a relying party that lowers the minimum on purpose accepts the warning-tier peer.
    lenient = OfflineEvidenceVerifier(
        {"sample": fleet.platform}, fleet.endorsements, references, min_status="warning"
    )
    peer = EvidencePeerVerifier(lenient).verify(cert)
    assert peer.tee == "sample"
    assert peer.claims[APPRAISAL_CLAIM]["status"] == "warning"
    assert peer.claims[APPRAISAL_CLAIM]["notes"] == ["measurement.no_reference_values"]


def test_offline_verifier_refuses_warning_configuration_by_default(fleet: Fleet) -> None:
    # A debug device allowed by the references is no violation, but its configuration is warning-tier.
    references = {"sample": {"measurement": frozenset({MEASUREMENT.hex()}), "allow_debug": frozenset({"true"})}}
    cert = der(evidence_identity(fleet.device(debug=True)))
    strict = OfflineEvidenceVerifier({"sample": fleet.platform}, fleet.endorsements, references)
    with pytest.raises(VerificationError) as err:
        EvidencePeerVerifier(strict).verify(cert)
    assert err.value.reason == "atls.policy.status" and "configuration=32" in err.value.detail
    lenient = OfflineEvidenceVerifier(
        {"sample": fleet.platform}, fleet.endorsements, references, min_status="warning"
    )
    assert EvidencePeerVerifier(lenient).verify(cert).claims[APPRAISAL_CLAIM]["status"] == "warning"


async def test_warning_tier_peer_refused_in_the_handshake(fleet: Fleet) -> None:
    strict = OfflineEvidenceVerifier({"sample": fleet.platform}, fleet.endorsements, {})
    err = await client_refuses_server(fleet, evidence_identity(fleet.device()), EvidencePeerVerifier(strict))
    assert isinstance(err, VerificationError) and err.reason == "atls.policy.status"


def test_offline_verifier_min_status_is_checked(fleet: Fleet) -> None:
    for bad in ("none", "contraindicated", "Affirming"):
        with pytest.raises(ValueError):
            OfflineEvidenceVerifier({"sample": fleet.platform}, fleet.endorsements, {}, min_status=bad)


def test_any_verifier_reads_the_certificate_once(fleet: Fleet, monkeypatch: pytest.MonkeyPatch) -> None:
    import shared.atls.verify as verify_module

    calls: list[bytes] = []
    real = verify_module.read_attestation

    def counting(cert_der: bytes) -> Any:
        calls.append(cert_der)
        return real(cert_der)

    monkeypatch.setattr(verify_module, "read_attestation", counting)
    verifier = AnyPeerVerifier(
        evidence=EvidencePeerVerifier(fleet.evidence_verifier()), token=TokenPeerVerifier(fleet.verify_token)
    )
    assert verifier.verify(der(evidence_identity(fleet.device()))).kind == "evidence"
    assert verifier.verify(der(token_identity(fleet.ear_signer))).kind == "token"
    assert len(calls) == 2


# --- a real SNP report ----------------------------------------------------------------------------


def _snp_verifier() -> tuple[OfflineEvidenceVerifier, dict[str, Any], bytes]:
    report = (SNP_CASE / "report.bin").read_bytes()
    vek = (SNP_CASE / "vek.der").read_bytes()
    expected = json.loads((SNP_CASE / "expected.json").read_text())
    valid_at = datetime.fromisoformat(expected["verify_at"].replace("Z", "+00:00")).timestamp()

    def endorsements(platform: Platform, request: EndorsementRequest) -> bytes | None:
        return None if request.optional else vek  # the VCEK; no CRL offline

    # The report's own measurement provisioned: without reference values the appraisal is only
    # warning-tier, which an offline verifier refuses by default (atls.policy.status).
    references = {"snp": {"measurement": frozenset({expected["report"]["measurement"]})}}
    verify = OfflineEvidenceVerifier(
        {"snp": SnpPlatform(pinned_roots(), KDS)}, endorsements, references, clock=lambda: valid_at
    )
    return verify, expected, report


async def test_real_snp_evidence_verifies_but_cannot_bind_a_fresh_key(fleet: Fleet) -> None:
    verify, expected, report = _snp_verifier()
    evidence = {"report": base64.b64encode(report).decode()}
    # The signature chain (ARK -> ASK -> VCEK -> report) verifies at the vector's time...
    report_data, claims = verify("snp", canonical_json(evidence))
    assert report_data.hex() == expected["report"]["report_data"]
    assert claims["snp.measurement"] == expected["report"]["measurement"]
    assert claims["snp.chip_id"] == expected["report"]["chip_id"]

    # ...but its report_data was fixed long ago, so it binds no key of ours.
    key = new_key()
    cert = make_evidence_certificate(key, tee="snp", evidence=evidence, nonce=os.urandom(16), now=NOW)
    err = await client_refuses_server(fleet, AttestedIdentity(cert, key), EvidencePeerVerifier(verify))
    assert isinstance(err, AttestedTlsError) and err.reason == "atls.unbound_key"
