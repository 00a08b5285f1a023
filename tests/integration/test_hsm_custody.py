"""Key custody end to end: a stack whose EAR signing key and key-encryption key live in a SoftHSM
token (PKCS#11). A guest's token is signed inside the HSM and verifies with the published JWKS;
its secret, sealed by provision under the HSM KEK, is unwrapped inside the HSM by release. A
signing key rotated out stays in the JWKS, and its tokens keep opening resources, until the last
token it signed has expired."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from services import custody
from services.demo.client import GuestClient, sample_evidence
from shared.custody.kek import generate_pkcs11_kek, pkcs11_kek_id
from shared.custody.signer import generate_pkcs11_es256_key
from shared.ear import verify_ear
from shared.passport import JwksSource, verify_passport
from shared.trust import buckets
from tests.conftest import GOOD_MEASUREMENT, RESOURCE, SECRET, put_resource, start_stack
from tests.softhsm import softhsm_token

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def hsm(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    with softhsm_token(tmp_path_factory.mktemp("softhsm")) as config:
        generate_pkcs11_es256_key(config, "ear-1")
        generate_pkcs11_es256_key(config, "ear-2")
        generate_pkcs11_kek(config, "kek-1")
        yield config


def _hsm_settings(config: Any, signing_label: str) -> dict[str, Any]:
    return {
        "pkcs11_module": config.module, "pkcs11_token": config.token_label, "pkcs11_pin": config.pin,
        "pkcs11_signing_key": signing_label, "pkcs11_kek": "kek-1",
    }  # fmt: skip


async def _attest(rs: Any) -> tuple[GuestClient, Any]:
    device = rs.enroll(GOOD_MEASUREMENT)
    client = GuestClient.new(rs.url)
    nonce = (await client.auth("sample")).body["nonce"]
    result = await client.attest(client.attestation_body(nonce, sample_evidence(device, nonce, client.tee_pubkey)))
    return client, result


async def _jwks(rs: Any) -> JwksSource:
    jwks = JwksSource.from_issuer(rs.url)
    await jwks.prefetch()
    return jwks


async def test_tokens_signed_and_secrets_unwrapped_inside_the_hsm(infra, tmp_path: Path, hsm) -> None:  # type: ignore[no-untyped-def]
    rs = await start_stack(infra, tmp_path / "data", **_hsm_settings(hsm, "ear-1"))
    try:
        # Sealed by the operator's side under the HSM KEK; release unwraps inside the HSM.
        await put_resource(rs.stack, "default/key/hsm", SECRET + b"-hsm")
        client, result = await _attest(rs)
        assert result.status == 200, result.body
        token = result.body["token"]
        jwks = await _jwks(rs)
        passport = verify_passport(token, jwks, now=int(time.time()))
        assert passport.status == "affirming"
        hsm_key = custody.signing_backend(rs.settings).public_key()
        verify_ear(token, hsm_key, now=int(time.time()))  # the HSM's key, and no file key, signed it
        assert not (tmp_path / "data" / "signing-key.pem").exists() or not _is_key_of(
            tmp_path / "data" / "signing-key.pem", hsm_key
        )
        for path, secret in (("default/key/hsm", SECRET + b"-hsm"), (RESOURCE, SECRET)):
            fetched = await client.resource(path)
            assert fetched.status == 200 and client.decrypt(fetched.body) == secret, fetched.body
        # Every record's data key is wrapped under the HSM KEK (the operator's writes included).
        kids = {}
        for path in ("default/key/hsm", RESOURCE):
            _, record = await rs.stack.trust_admin.entry(buckets.RESOURCES, buckets.resource_key(path))
            kids[path] = record.sealed["kid"]
        assert set(kids.values()) == {pkcs11_kek_id("kek-1")}
        await client.close()
    finally:
        await rs.stack.stop()
        await rs.kds.stop()


def _is_key_of(path: Path, public_key: Any) -> bool:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(path.read_bytes(), None)
    return key.public_key().public_numbers() == public_key.public_numbers()  # type: ignore[union-attr]


async def test_rotated_signing_key_stays_published_until_its_tokens_expire(infra, tmp_path: Path, hsm) -> None:  # type: ignore[no-untyped-def]
    data = tmp_path / "data"
    rs = await start_stack(infra, data, **_hsm_settings(hsm, "ear-1"))
    try:
        client, result = await _attest(rs)
        assert result.status == 200
        old_token = result.body["token"]
        first_key = client.tee_key
        await client.close()
    finally:
        await rs.stack.stop()
        await rs.kds.stop()
    # The operator rotates: the same data directory, the HSM's second key.
    rs = await start_stack(infra, data, fresh=False, **_hsm_settings(hsm, "ear-2"))
    try:
        jwks_doc = custody.published_keys(rs.settings)
        assert len(jwks_doc) == 2  # the new key and the old one, whose tokens are still valid
        jwks = await _jwks(rs)
        assert verify_passport(old_token, jwks, now=int(time.time())).status == "affirming"
        # The old token still opens the guest's resource (bearer), checked by release by its kid.
        await client.close()
        client = GuestClient.new(rs.url)
        client.tee_key = first_key  # the guest of the old token, at the restarted service
        bearer = await client.resource(RESOURCE, token=old_token)
        assert bearer.status == 200 and client.decrypt(bearer.body) == SECRET
        new_client, new_result = await _attest(rs)
        assert new_result.status == 200
        assert _kid(new_result.body["token"]) != _kid(old_token)
        # Once the old key's last token has expired, the key is gone from the JWKS and refused.
        later = time.time() + rs.settings.token_lifetime_s + 1
        assert [k["kid"] for k in custody.published_keys(rs.settings, now=later)] == [_kid(new_result.body["token"])]
        verifier = custody.KeySetVerifier(rs.settings, custody.signing_backend(rs.settings).public_key())
        with pytest.raises(Exception) as err:
            verifier.verify(old_token, now=int(later))
        assert getattr(err.value, "reason", "") in ("token.unknown_kid", "token.expired")
        await new_client.close()
        await client.close()
    finally:
        await rs.stack.stop()
        await rs.kds.stop()


def _kid(token: str) -> str:
    from services.join.signing import header_kid

    return header_kid(token, "token")



async def test_each_tenants_tokens_are_signed_by_its_own_hsm_key(infra, tmp_path: Path, hsm) -> None:  # type: ignore[no-untyped-def]
    """A tenant's EAR key is the HSM key labelled <signing key>.<tenant>; a tenant whose key the
    operator has not created in the HSM gets named refusals, never a token signed by another key."""
    from shared.custody.signer import Pkcs11Es256Key

    generate_pkcs11_es256_key(hsm, "ear-1.team-h")
    rs = await start_stack(infra, tmp_path / "data", **_hsm_settings(hsm, "ear-1"))
    try:
        admin = rs.stack.trust_admin
        for name in ("team-h", "team-nokey"):
            await admin.put_tenant(name, "tests")
            await admin.for_tenant(name).put_reference_value("sample", "measurement", [GOOD_MEASUREMENT.hex()], "tests")
        await rs.stack.trust_synced()
        device = rs.enroll(GOOD_MEASUREMENT)
        results = {}
        for name in ("team-h", "team-nokey"):
            client = GuestClient.new(f"{rs.url}/t/{name}")
            nonce = (await client.auth("sample")).body["nonce"]
            results[name] = await client.attest(client.attestation_body(nonce, sample_evidence(device, nonce, client.tee_pubkey)))
            await client.close()
        assert results["team-h"].status == 200, results["team-h"].body
        tenant_key = Pkcs11Es256Key(hsm, "ear-1.team-h").public_key()
        claims = verify_ear(results["team-h"].body["token"], tenant_key, now=int(time.time()))
        assert claims["iss"] == "remits/t/team-h"
        jwks = JwksSource.from_issuer(f"{rs.url}/t/team-h")
        await jwks.prefetch()
        assert verify_passport(results["team-h"].body["token"], jwks, now=int(time.time())).status == "affirming"
        assert results["team-nokey"].status == 401
        assert results["team-nokey"].reason.startswith("custody."), results["team-nokey"].body
    finally:
        await rs.stack.stop()
        await rs.kds.stop()
