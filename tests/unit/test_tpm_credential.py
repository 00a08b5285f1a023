"""TPM credential protection (MakeCredential / ActivateCredential), EK certificates, the simulated
TPM's EK, and `remits tpm enrol|activate` up to the admin call."""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import os
import stat
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from hypothesis import given, settings
from hypothesis import strategies as st

from services.cli import build_parser
from services.cli import tpm as tpm_cli
from services.demo.tpm_sim import EkCa, SimulatedTpm
from shared.errors import ParseError, RemitsError, VerificationError
from shared.platforms.tpm import abi, credential

SHA256 = abi.TPM_ALG_SHA256


@pytest.fixture(scope="module")
def sim() -> SimulatedTpm:
    return SimulatedTpm.create("rsa")


@pytest.fixture(scope="module")
def ca() -> EkCa:
    return EkCa.create()


def _kdfa_by_hand(key: bytes, label: bytes, context: bytes, bits: int) -> bytes:
    """SP 800-108 counter-mode KDF written out independently of the module."""
    blocks = b""
    for counter in (1, 2, 3):
        message = counter.to_bytes(4, "big") + label + b"\x00" + context + bits.to_bytes(4, "big")
        blocks += hmac.new(key, message, hashlib.sha256).digest()
    return blocks[: (bits + 7) // 8]


def test_kdfa_matches_an_independent_construction() -> None:
    key, name = bytes(range(32)), b"\x00\x0b" + hashlib.sha256(b"an object").digest()
    assert credential.kdfa(SHA256, key, b"STORAGE", name, b"", 128) == _kdfa_by_hand(
        key, b"STORAGE", name, 128
    )
    # Several blocks, and a label already NUL-terminated is not terminated twice.
    assert credential.kdfa(SHA256, key, b"INTEGRITY\x00", b"", b"", 520) == _kdfa_by_hand(
        key, b"INTEGRITY", b"", 520
    )
    # contextU and contextV are simply concatenated.
    assert credential.kdfa(SHA256, key, b"L", b"ab", b"cd", 256) == _kdfa_by_hand(key, b"L", b"abcd", 256)
    # A bit count that is not a whole number of bytes clears the first byte's unused high bits.
    odd = credential.kdfa(SHA256, key, b"L", b"", b"", 12)
    full = _kdfa_by_hand(key, b"L", b"", 12)
    assert len(odd) == 2 and odd == bytes([full[0] & 0x0F, full[1]])
    with pytest.raises(ValueError):
        credential.kdfa(SHA256, key, b"L", b"", b"", 0)


def test_default_ek_policy_is_the_profiles_value() -> None:
    # TCG EK Credential Profile: the authPolicy of the default EK templates.
    assert credential.default_ek_policy().hex() == (
        "837197674484b3f81a90cc8d46a5d724fd52d76e06520b64f2a1da1b331469aa"
    )


def test_make_credential_is_the_specified_construction(sim: SimulatedTpm) -> None:
    """Undo MakeCredential step by step with the EK's private key, from the spec's formulas."""
    seed = bytes(range(100, 132))
    secret = b"s" * 32
    blob, encrypted = credential.make_credential(
        sim.ek.public_key(), sim.ak_name(), secret, rng=lambda n: seed
    )
    oaep = padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), b"IDENTITY\x00")
    assert int.from_bytes(encrypted[:2], "big") == 256
    assert sim.ek.decrypt(encrypted[2:], oaep) == seed
    assert int.from_bytes(blob[:2], "big") == len(blob) - 2
    assert blob[2:4] == b"\x00\x20"
    integrity, enc_identity = blob[4:36], blob[36:]
    hmac_key = _kdfa_by_hand(seed, b"INTEGRITY", b"", 256)
    assert integrity == hmac.new(hmac_key, enc_identity + sim.ak_name(), hashlib.sha256).digest()
    sym_key = _kdfa_by_hand(seed, b"STORAGE", sim.ak_name(), 128)
    decryptor = Cipher(algorithms.AES(sym_key), credential.CFB(bytes(16))).decryptor()
    assert decryptor.update(enc_identity) + decryptor.finalize() == b"\x00\x20" + secret


def test_round_trip_with_key_and_with_tpmt_public(sim: SimulatedTpm) -> None:
    for ek in (sim.ek.public_key(), abi.parse_public(sim.ek_tpmt_public())):
        secret = os.urandom(32)
        blob, encrypted = credential.make_credential(ek, sim.ak_name(), secret)
        assert sim.activate_credential(blob, encrypted) == secret
        assert credential.activate_credential(sim.ek, sim.ak_name(), blob, encrypted) == secret
    short = b"tiny"
    assert (
        sim.activate_credential(*credential.make_credential(sim.ek.public_key(), sim.ak_name(), short))
        == short
    )


def test_every_flipped_byte_fails(sim: SimulatedTpm) -> None:
    blob, encrypted = credential.make_credential(sim.ek.public_key(), sim.ak_name(), b"k" * 32)
    for i in range(len(blob)):
        changed = bytearray(blob)
        changed[i] ^= 0x01
        with pytest.raises(RemitsError) as caught:
            sim.activate_credential(bytes(changed), encrypted)
        if i >= 4:  # past the two size fields: the integrity HMAC catches it
            assert caught.value.reason == "tpm.credential_integrity"
    for i in range(len(encrypted)):
        changed = bytearray(encrypted)
        changed[i] ^= 0x80
        with pytest.raises(RemitsError):
            sim.activate_credential(blob, bytes(changed))


def test_another_ak_or_another_ek_cannot_activate(sim: SimulatedTpm) -> None:
    other = SimulatedTpm.create("ecc")
    blob, encrypted = credential.make_credential(sim.ek.public_key(), other.ak_name(), b"x" * 32)
    with pytest.raises(VerificationError) as caught:
        sim.activate_credential(blob, encrypted)  # the right EK, but made for another AK
    assert caught.value.reason == "tpm.credential_integrity"
    blob, encrypted = credential.make_credential(sim.ek.public_key(), sim.ak_name(), b"x" * 32)
    with pytest.raises(VerificationError) as caught:
        other.activate_credential(blob, encrypted)  # another TPM (other EK and AK)
    assert caught.value.reason == "tpm.credential_secret"
    with pytest.raises(VerificationError) as caught:  # another EK holding a copy of the Name
        credential.activate_credential(other.ek, sim.ak_name(), blob, encrypted)
    assert caught.value.reason == "tpm.credential_secret"


def test_make_credential_refuses_what_it_cannot_do(sim: SimulatedTpm) -> None:
    with pytest.raises(ValueError):
        credential.make_credential(sim.ek.public_key(), sim.ak_name(), b"x" * 33)
    with pytest.raises(ParseError):
        credential.make_credential(sim.ek.public_key(), b"\x00\x0b" + b"short", b"x")
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(VerificationError) as caught:
        credential.make_credential(small.public_key(), sim.ak_name(), b"x")
    assert caught.value.reason == "tpm.ek_unsupported"
    # A TPMT_PUBLIC that is not a storage-type EK (the AK: no symmetric, a signing key).
    with pytest.raises(VerificationError):
        credential.make_credential(abi.parse_public(sim.ak_tpmt_public()), sim.ak_name(), b"x")


def test_ak_attributes() -> None:
    ak = abi.parse_public(SimulatedTpm.create("ecc").ak_tpmt_public())
    credential.check_ak_attributes(ak)
    key = ak.key
    for attributes in (
        abi.AK_ATTRIBUTES & ~credential.FIXED_TPM,  # a key that can be duplicated out of the TPM
        abi.AK_ATTRIBUTES & ~credential.RESTRICTED,  # signs anything, forged quotes included
        abi.AK_ATTRIBUTES | credential.DECRYPT,
    ):
        with pytest.raises(VerificationError) as caught:
            credential.check_ak_attributes(abi.parse_public(abi.marshal_public(key, attributes=attributes)))
        assert caught.value.reason == "tpm.ak_attributes"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.binary(max_size=300), st.binary(max_size=40))
def test_parsers_and_activation_survive_random_input(blob: bytes, secret: bytes, name: bytes) -> None:
    for parse, data in ((credential.parse_id_object, blob), (credential.parse_encrypted_secret, secret)):
        try:
            parse(data)
        except ParseError:
            pass
    try:
        credential.check_name(name)
    except ParseError:
        pass


_EK = rsa.generate_private_key(public_exponent=65537, key_size=2048)
_NAME = b"\x00\x0b" + bytes(32)


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=300), st.binary(max_size=300))
def test_activation_of_random_blobs_only_refuses(blob: bytes, secret: bytes) -> None:
    with pytest.raises(RemitsError):
        credential.activate_credential(_EK, _NAME, blob, secret)
    # Well-framed but random contents.
    with pytest.raises(RemitsError):
        credential.activate_credential(
            _EK, _NAME, abi.tpm2b(abi.tpm2b(blob[:64]) + blob[64:]), abi.tpm2b(secret or b"x")
        )


def test_ek_certificate_key_and_chain(sim: SimulatedTpm, ca: EkCa) -> None:
    der = sim.ek_certificate(ca)
    assert credential.ek_certificate_key(der).public_numbers() == sim.ek.public_key().public_numbers()
    pem = credential.load_certificate(der).public_bytes(serialization.Encoding.PEM)
    assert credential.ek_certificate_key(pem).public_numbers() == sim.ek.public_key().public_numbers()
    now = time.time()
    assert credential.verify_ek_certificate(der, [EkCa.create("unrelated").cert, ca.cert], now) == ca.cert
    with pytest.raises(VerificationError) as caught:
        credential.verify_ek_certificate(der, [EkCa.create().cert], now)  # same name, another key
    assert caught.value.reason == "tpm.ek_cert_chain"
    with pytest.raises(VerificationError) as caught:
        credential.verify_ek_certificate(der, [], now)
    assert caught.value.reason == "tpm.ek_cert_chain"
    past = datetime.now(UTC) - timedelta(days=30)
    old = sim.ek_certificate(ca, not_before=past, not_after=past + timedelta(days=1))
    with pytest.raises(VerificationError) as caught:
        credential.verify_ek_certificate(old, [ca.cert], now)
    assert caught.value.reason == "tpm.ek_cert_expired"
    with pytest.raises(ParseError):
        credential.ek_certificate_key(b"not a certificate")
    assert len(credential.load_certificates(ca.pem() + EkCa.create().pem())) == 2


# ---------------------------------------------------------------------------------------------
# The CLI


def _run(*argv: str) -> int:
    args = build_parser().parse_args(list(argv))
    return int(args.run(args))


def _node_files(
    tmp_path: Path, tpm: SimulatedTpm, ca: EkCa, *, tpm2b: bool = False
) -> tuple[Path, Path, Path]:
    ek_cert, ak, ca_file = tmp_path / "ek.der", tmp_path / "ak.pub", tmp_path / "ca.pem"
    ek_cert.write_bytes(tpm.ek_certificate(ca))
    public = tpm.ak_tpmt_public()
    ak.write_bytes(abi.tpm2b(public) if tpm2b else public)
    ca_file.write_bytes(ca.pem())
    return ek_cert, ak, ca_file


def test_enrol_writes_a_challenge_the_tpm_answers(
    sim: SimulatedTpm, ca: EkCa, tmp_path: Path, capsys: Any
) -> None:
    ek_cert, ak, ca_file = _node_files(tmp_path, sim, ca, tpm2b=True)
    out = tmp_path / "node-1.json"
    code = _run("tpm", "enrol", "node-1", "--ek-cert", str(ek_cert), "--ak", str(ak), "--ek-ca", str(ca_file),
                "--out", str(out))  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    doc = json.loads(out.read_text())
    sent = json.loads(captured.out)
    assert sent["credential_blob"] == doc["credential_blob"] and sent["challenge"] == str(out)
    assert doc["node"] == "node-1" and doc["ak_sha256"] == sim.ak_fingerprint()
    assert doc["ak_name"] == sim.ak_name().hex()
    assert base64.b64decode(doc["ak_public"]) == sim.ak_tpmt_public()
    assert doc["ek_cert_sha256"] == hashlib.sha256(ek_cert.read_bytes()).hexdigest()
    secret = sim.activate_credential(
        base64.b64decode(sent["credential_blob"]), base64.b64decode(sent["encrypted_secret"])
    )
    assert hashlib.sha256(secret).hexdigest() == doc["secret_sha256"]
    assert secret.hex() not in out.read_text()
    assert tpm_cli.answer_matches(tpm_cli.read_challenge(out), secret.hex())
    assert not tpm_cli.answer_matches(tpm_cli.read_challenge(out), (b"\x00" + secret[1:]).hex())


def test_enrol_refusals_and_usage(sim: SimulatedTpm, ca: EkCa, tmp_path: Path, capsys: Any) -> None:
    ek_cert, ak, _ = _node_files(tmp_path, sim, ca)
    other_ca = tmp_path / "other.pem"
    other_ca.write_bytes(EkCa.create("other vendor").pem())
    out = tmp_path / "c.json"
    base = ("tpm", "enrol", "node-1", "--ek-cert", str(ek_cert), "--out", str(out))
    assert _run(*base, "--ak", str(ak), "--ek-ca", str(other_ca)) == 1
    assert "tpm.ek_cert_chain" in capsys.readouterr().err and not out.exists()
    weak = tmp_path / "weak.pub"
    weak.write_bytes(abi.marshal_public(sim.ak_public, attributes=abi.AK_ATTRIBUTES & ~credential.FIXED_TPM))
    assert _run(*base, "--ak", str(weak)) == 1
    assert "tpm.ak_attributes" in capsys.readouterr().err
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"\x00\x01garbage")
    assert _run(*base, "--ak", str(garbage)) == 2
    assert _run("tpm", "enrol", "Node 1", "--ek-cert", str(ek_cert), "--ak", str(ak)) == 2
    assert _run(*base, "--ak", str(tmp_path / "missing")) == 2
    # Without --ek-ca the challenge is made, with a warning that the issuer was not checked.
    assert _run(*base, "--ak", str(ak)) == 0
    assert "warning" in capsys.readouterr().err


async def test_activate_with_a_wrong_answer_exits_1_and_calls_nothing(
    sim: SimulatedTpm, ca: EkCa, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    ek_cert, ak, _ = _node_files(tmp_path, sim, ca)
    out = tmp_path / "c.json"
    assert _run("tpm", "enrol", "node-1", "--ek-cert", str(ek_cert), "--ak", str(ak), "--out", str(out)) == 0
    calls: list[Any] = []

    class _Session:
        async def __aenter__(self) -> Any:
            async def call(method: str, path: str, body: bytes = b"", query: Any = None) -> tuple[int, Any]:
                calls.append((method, path, json.loads(body)))
                return 200, {"key": "tpm.ak.node-1"}

            return call

        async def __aexit__(self, *exc: object) -> None:
            return None

    monkeypatch.setattr(tpm_cli, "admin_session", lambda args: _Session())

    def args_for(answer: str) -> argparse.Namespace:
        return build_parser().parse_args(["tpm", "activate", str(out), "--answer", answer, "--local"])

    assert await tpm_cli.cmd_activate(args_for("00" * 32)) == 1
    assert "nothing registered" in capsys.readouterr().err and calls == []
    assert await tpm_cli.cmd_activate(args_for("zz")) == 2 and calls == []
    doc = json.loads(out.read_text())
    secret = sim.activate_credential(
        base64.b64decode(doc["credential_blob"]), base64.b64decode(doc["encrypted_secret"])
    )
    # A challenge older than --max-age is refused, even with the right answer.
    stale = tmp_path / "stale.json"
    stale.write_text(json.dumps({**doc, "created_at": doc["created_at"] - 2 * 86400}))
    stale_args = build_parser().parse_args(["tpm", "activate", str(stale), "--answer", secret.hex(), "--local"])
    assert await tpm_cli.cmd_activate(stale_args) == 1
    assert "old" in capsys.readouterr().err and calls == []
    # An edited challenge (another AK's public area under the same secret) is not believed.
    edited = tmp_path / "edited.json"
    edited.write_text(
        json.dumps(
            {**doc, "ak_public": base64.b64encode(SimulatedTpm.create("ecc").ak_tpmt_public()).decode()}
        )
    )
    edited_args = build_parser().parse_args(
        ["tpm", "activate", str(edited), "--answer", secret.hex(), "--local"]
    )
    assert await tpm_cli.cmd_activate(edited_args) == 2 and calls == []
    assert await tpm_cli.cmd_activate(args_for(secret.hex())) == 0
    ((method, path, body),) = calls
    assert (method, path) == ("POST", "reference-values")
    assert body == {
        "tee": "tpm", "name": "ak", "values": [sim.ak_fingerprint()], "id": "node-1",
        "source": "credential-activation",
        "inputs": {"ek_cert.sha256": doc["ek_cert_sha256"], "ak_name": sim.ak_name().hex()},
    }  # fmt: skip
