"""Each tenant's EAR signing key: derived from the service's key (every replica that holds it has
the tenant's without sharing a file), recorded in the tenant's own durable key set, and used by
decide for that tenant's tokens alone."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from services.custody import (
    KeySetVerifier,
    derive_tenant_key,
    published_keys,
    tenant_public_key,
    tenant_signing_backend,
)
from services.decide.worker import TenantSigners
from shared import tenants
from shared.config import Settings
from shared.ear import EarSigner, EarVerifier, build_ear_claims, load_or_create_signing_key, token_kid
from shared.errors import VerificationError


def _numbers(key: ec.EllipticCurvePrivateKey) -> int:
    return key.private_numbers().private_value


def test_derivation_is_deterministic_distinct_per_tenant_and_not_the_root() -> None:
    root = ec.generate_private_key(ec.SECP256R1())
    a1, a2, b = derive_tenant_key(root, "team-a"), derive_tenant_key(root, "team-a"), derive_tenant_key(root, "team-b")
    assert _numbers(a1) == _numbers(a2)
    assert len({_numbers(a1), _numbers(b), _numbers(root)}) == 3
    other_root = ec.generate_private_key(ec.SECP256R1())
    assert _numbers(derive_tenant_key(other_root, "team-a")) != _numbers(a1)
    with pytest.raises(tenants.BadTenant):
        derive_tenant_key(root, "Team.A")


def _settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path)


def _token(signer: EarSigner, tenant: str) -> str:
    claims = build_ear_claims(
        tee="sample", vector={"instance-identity": 2}, annotated_evidence={"sample": {}}, policy_id="p",
        issued_at=int(time.time()), verifier_build="t", issuer=tenants.issuer(tenant),
    )  # fmt: skip
    return signer.sign(claims)


def test_a_tenants_tokens_verify_with_its_key_set_only(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    root = load_or_create_signing_key(settings.signing_key_path)
    signers = TenantSigners(settings, EarSigner(root), lambda s, t: tenant_signing_backend(s, t, root=root))
    signers.prepare(["team-a", "team-b"])
    token_a = _token(signers.get("team-a"), "team-a")
    # The key set decide recorded is what the JWKS publishes, before any token.
    assert [k["kid"] for k in published_keys(settings, tenant="team-a")] == [token_kid(token_a)]
    assert published_keys(settings, tenant="team-b")[0]["kid"] != token_kid(token_a)
    # Another process (release) derives the same key from the service key alone.
    verifier_a = KeySetVerifier(settings, tenant_public_key(settings, "team-a"), "team-a")
    assert verifier_a.verify(token_a, now=int(time.time()))["iss"] == "remits/t/team-a"
    verifier_b = KeySetVerifier(settings, tenant_public_key(settings, "team-b"), "team-b")
    with pytest.raises(VerificationError) as refused:
        verifier_b.verify(token_a, now=int(time.time()))
    assert refused.value.reason == "token.unknown_kid"
    # The default tenant's key is the service's own, and signs no tenant's token.
    assert signers.get(tenants.DEFAULT) is not signers.get("team-a")
    with pytest.raises(VerificationError):
        EarVerifier(root.public_key()).verify(token_a, now=int(time.time()))


def test_a_tenant_whose_key_cannot_be_had_is_reported_not_signed(tmp_path: Path) -> None:
    def no_key(settings: Settings, tenant: str) -> object:
        raise RuntimeError("no such HSM object")

    signers = TenantSigners(_settings(tmp_path), EarSigner(ec.generate_private_key(ec.SECP256R1())), no_key)
    signers.prepare(["team-a"])  # logged, not raised
    with pytest.raises(RuntimeError):
        signers.get("team-a")
