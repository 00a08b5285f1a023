"""Enrolling a TPM node by credential activation, end to end: `remits tpm enrol` makes the
challenge from the node's EK certificate and AK, the (simulated) TPM answers it with
ActivateCredential, `remits tpm activate --local` registers the AK, and the node then attests
through the gateway. Nodes that were never activated, or whose challenge another TPM tried to
answer, stay refused."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import pytest

from services.demo.tpm_sim import EkCa, SimulatedTpm
from shared.ear import load_or_create_signing_key, submod_status, verify_ear
from shared.errors import RemitsError
from tests.conftest import RESOURCE, SECRET, RunningStack, start_stack
from tests.integration.test_admin_cli import local, remits
from tests.integration.test_tpm_e2e import attest

pytestmark = pytest.mark.integration


@pytest.fixture
async def rs(infra, tmp_path):  # type: ignore[no-untyped-def]
    running = await start_stack(infra, tmp_path / "data")
    yield running
    await running.stack.stop()
    await running.kds.stop()


@pytest.fixture(scope="module")
def vendor() -> EkCa:
    return EkCa.create("Simulated TPM vendor EK CA")


def node(tmp_path: Path, name: str, vendor: EkCa) -> tuple[SimulatedTpm, Path, Path, Path]:
    """A booted simulated TPM and its files as an operator receives them: EK certificate, AK
    public area (TPM2B_PUBLIC), and the vendor's EK CA."""
    tpm = SimulatedTpm.create("rsa")
    tpm.boot()
    folder = tmp_path / name
    folder.mkdir()
    (folder / "ek.der").write_bytes(tpm.ek_certificate(vendor))
    public = tpm.ak_tpmt_public()
    (folder / "ak.pub").write_bytes(len(public).to_bytes(2, "big") + public)
    (folder / "ca.pem").write_bytes(vendor.pem())
    return tpm, folder / "ek.der", folder / "ak.pub", folder / "ca.pem"


async def enrol(
    monkeypatch: Any, capsys: Any, name: str, ek: Path, ak: Path, ca: Path
) -> tuple[Path, dict[str, Any]]:
    challenge = ek.parent / "challenge.json"
    code, out, err = await remits(
        monkeypatch, capsys, "tpm", "enrol", name, "--ek-cert", str(ek), "--ak", str(ak), "--ek-ca", str(ca),
        "--out", str(challenge),
    )  # fmt: skip
    assert code == 0, err
    return challenge, json.loads(out)


def answer(tpm: SimulatedTpm, sent: dict[str, Any]) -> bytes:
    """What the node does: TPM2_ActivateCredential with its EK and AK."""
    return tpm.activate_credential(
        base64.b64decode(sent["credential_blob"]), base64.b64decode(sent["encrypted_secret"])
    )


async def tpm_ak_records(monkeypatch: Any, capsys: Any, rs: RunningStack) -> list[dict[str, Any]]:
    code, out, err = await remits(
        monkeypatch, capsys, "refval", "list", "--tee", "tpm", "--name", "ak", *local(rs)
    )
    assert code == 0, err
    return list(json.loads(out))


async def test_enrolled_node_attests_and_gets_the_secret(rs, vendor, monkeypatch, capsys, tmp_path) -> None:  # type: ignore[no-untyped-def]
    tpm, ek, ak, ca = node(tmp_path, "node-1", vendor)
    challenge, sent = await enrol(monkeypatch, capsys, "node-1", ek, ak, ca)
    # Before activation nothing is registered: the node is refused.
    client, result = await attest(rs.url, tpm)
    await client.close()
    assert result.status == 401 and result.reason == "tpm.ak_not_registered", result.body

    secret = answer(tpm, sent)
    code, _, err = await remits(
        monkeypatch, capsys, "tpm", "activate", str(challenge), "--answer", secret.hex(), *local(rs)
    )
    assert code == 0, err
    (record,) = await tpm_ak_records(monkeypatch, capsys, rs)
    assert record["key"] == "tpm.ak.node-1" and record["values"] == [tpm.ak_fingerprint()]
    provenance = record["provenance"]
    assert provenance["source"] == "credential-activation"
    assert provenance["inputs"]["ak_name"] == tpm.ak_name().hex()
    assert provenance["inputs"]["ek_cert.sha256"] == json.loads(challenge.read_text())["ek_cert_sha256"]
    # The AK says which machine; affirming also needs an approved boot (a PCR reference value).
    code, _, err = await remits(
        monkeypatch,
        capsys,
        "refval",
        "add",
        "tpm",
        "pcr4",
        tpm.pcrs[4].hex(),
        "--id",
        "approved-boot",
        *local(rs),
    )
    assert code == 0, err

    await rs.stack.trust_synced()
    client, result = await attest(rs.url, tpm)
    try:
        assert result.status == 200, result.body
        key = load_or_create_signing_key(rs.settings.signing_key_path)
        claims = verify_ear(result.body["token"], key.public_key(), now=int(time.time()))
        assert submod_status(claims) == "affirming"
        evidence = claims["submods"]["cpu0"]["ear.veraison.annotated-evidence"]["tpm"]
        assert evidence["tpm.ak.sha256"] == tpm.ak_fingerprint()
        fetched = await client.resource(RESOURCE)
        assert fetched.status == 200 and client.decrypt(fetched.body) == SECRET
    finally:
        await client.close()


async def test_node_never_activated_is_refused(rs, vendor, monkeypatch, capsys, tmp_path) -> None:  # type: ignore[no-untyped-def]
    enrolled, ek, ak, ca = node(tmp_path, "node-1", vendor)
    challenge, sent = await enrol(monkeypatch, capsys, "node-1", ek, ak, ca)
    code, _, err = await remits(
        monkeypatch,
        capsys,
        "tpm",
        "activate",
        str(challenge),
        "--answer",
        answer(enrolled, sent).hex(),
        *local(rs),
    )
    assert code == 0, err
    # A second node was enrolled (challenge made) but never answered.
    pending, ek2, ak2, ca2 = node(tmp_path, "node-2", vendor)
    await enrol(monkeypatch, capsys, "node-2", ek2, ak2, ca2)
    await rs.stack.trust_synced()
    client, result = await attest(rs.url, pending)
    await client.close()
    assert result.status == 401 and result.reason == "tpm.ak_not_registered", result.body
    client, result = await attest(rs.url, enrolled)
    await client.close()
    assert result.status == 200, result.body


async def test_challenge_answered_by_another_tpm_registers_nothing(
    rs, vendor, monkeypatch, capsys, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    victim, ek, ak, ca = node(tmp_path, "node-1", vendor)
    challenge, sent = await enrol(monkeypatch, capsys, "node-1", ek, ak, ca)
    impostor = SimulatedTpm.create("rsa")  # another EK (and AK): it cannot open the credential
    impostor.boot()
    with pytest.raises(RemitsError):
        answer(impostor, sent)
    # Whatever it answers instead is refused, and nothing is registered.
    for guess in (
        impostor.ek_tpmt_public()[-32:],
        bytes(32),
        base64.b64decode(sent["encrypted_secret"])[2:34],
    ):
        code, _, err = await remits(
            monkeypatch, capsys, "tpm", "activate", str(challenge), "--answer", guess.hex(), *local(rs)
        )
        assert code == 1 and "nothing registered" in err
    assert await tpm_ak_records(monkeypatch, capsys, rs) == []
    await rs.stack.trust_synced()
    for tpm in (victim, impostor):
        client, result = await attest(rs.url, tpm)
        await client.close()
        assert result.status == 401 and result.reason == "tpm.ak_not_registered", result.body
