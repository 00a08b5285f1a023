"""The plain TPM 2.0 platform: evidence parsing, quote and event-log verification, appraisal
against the AK registry and PCR reference values, the default policy, and `remits verify tpm`."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from services.cli import main as cli_main
from services.demo.tpm_sim import SimulatedTpm
from shared.errors import ParseError, RemitsError, VerificationError
from shared.platforms.tpm.evidence import ak_fingerprint, decode_evidence
from shared.platforms.tpm.platform import TpmPlatform
from shared.policy import default_policy
from shared.trust.appraisal import COMPARED_CLAIMS

DATA = Path(__file__).resolve().parents[1] / "data" / "tpm" / "core"
TRUSTEE = DATA / "trustee-tpm-evidence.json"
NOW = datetime(2025, 6, 1, tzinfo=UTC)
BINDING = bytes(range(64))


@pytest.fixture(scope="module")
def platform() -> TpmPlatform:
    return TpmPlatform("tpm")


@pytest.fixture(scope="module")
def trustee_raw() -> bytes:
    return TRUSTEE.read_bytes()


@pytest.fixture(scope="module")
def trustee_fp(trustee_raw: bytes) -> str:
    return ak_fingerprint(base64.b64decode(json.loads(trustee_raw)["ak_public"]))


@pytest.fixture(scope="module")
def sim() -> SimulatedTpm:
    tpm = SimulatedTpm.create("rsa")
    tpm.boot()
    tpm.extend(10, b"\x0a" * 32, logged=False)  # IMA: not in the firmware log
    return tpm


def _verify(platform: TpmPlatform, raw: bytes) -> tuple[bytes, dict[str, Any]]:
    info = platform.parse_evidence(raw)
    return info.evidence, platform.verify_identity(info.evidence, [], NOW)


def _mutate(raw: bytes, change: Any) -> bytes:
    doc = json.loads(raw)
    change(doc)
    return json.dumps(doc).encode()


# -- the real Trustee evidence -------------------------------------------------------------------


def test_platform_shape(platform: TpmPlatform) -> None:
    assert platform.tee == "tpm"
    assert set(COMPARED_CLAIMS["tpm"]) <= set(platform.reference_names)
    assert platform.endorsement_requests(b"", ()) == []
    assert platform.assemble_endorsement([], ()) == []


def test_trustee_evidence_parses_and_verifies(
    platform: TpmPlatform, trustee_raw: bytes, trustee_fp: str
) -> None:
    info = platform.parse_evidence(trustee_raw)
    extra = decode_evidence(trustee_raw).attest.extra_data
    assert len(extra) == 64 and info.report_data == extra
    assert info.endorsement_key == f"tpm-ak:{trustee_fp}"
    claims = platform.verify_identity(info.evidence, [], NOW)
    assert claims["tpm.ak.sha256"] == trustee_fp
    assert claims["tpm.nonce"] == extra.hex()
    assert claims["tpm.reset_count"] == 2 and claims["tpm.restart_count"] == 0
    assert claims["tpm.pcr.sha256.0"] == "00" * 32
    assert claims["tpm.pcr.sha256.17"] == "ff" * 32
    assert not any(k.startswith("eventlog.") for k in claims)
    json.dumps(claims)  # claims are JSON values
    # The canonical form re-parses to itself.
    assert platform.parse_evidence(info.evidence).evidence == info.evidence


def test_trustee_appraisal_with_registered_ak(
    platform: TpmPlatform, trustee_raw: bytes, trustee_fp: str
) -> None:
    evidence, claims = _verify(platform, trustee_raw)
    refs = {"ak": frozenset({trustee_fp, "00" * 32})}
    appraisal = platform.appraise(evidence, claims, refs)
    assert appraisal.violations == []
    assert appraisal.vector["hardware"] == 2 and appraisal.vector["executables"] == 33
    assert "runtime-opaque" not in appraisal.vector
    assert "measurement.no_reference_values" in appraisal.notes
    refs["pcr0"] = frozenset({"00" * 32})
    refs["pcr17"] = frozenset({"ff" * 32})
    appraisal = platform.appraise(evidence, claims, refs)
    assert appraisal.violations == [] and appraisal.vector["executables"] == 2


@pytest.mark.parametrize("registry", [None, frozenset(), frozenset({"ab" * 32})])
def test_trustee_appraisal_without_registered_ak(
    platform: TpmPlatform, trustee_raw: bytes, registry: frozenset[str] | None
) -> None:
    evidence, claims = _verify(platform, trustee_raw)
    refs = {} if registry is None else {"ak": registry}
    appraisal = platform.appraise(evidence, claims, refs)
    assert [v.field for v in appraisal.violations] == ["ak"]
    assert appraisal.vector["hardware"] == 97


def test_trustee_appraisal_pcr_mismatch(platform: TpmPlatform, trustee_raw: bytes, trustee_fp: str) -> None:
    evidence, claims = _verify(platform, trustee_raw)
    refs = {"ak": frozenset({trustee_fp}), "pcr0": frozenset({"11" * 32}), "pcr7": frozenset({"00" * 32})}
    appraisal = platform.appraise(evidence, claims, refs)
    assert [(v.field, v.got) for v in appraisal.violations] == [("pcr0", "00" * 32)]
    # No event log: a kernel or secure-boot reference cannot be met.
    refs = {
        "ak": frozenset({trustee_fp}),
        "kernel_digest": frozenset({"aa" * 32}),
        "secure_boot": frozenset({"true"}),
    }
    fields = {(v.field, v.got) for v in platform.appraise(evidence, claims, refs).violations}
    assert fields == {("kernel_digest", "absent"), ("secure_boot", "absent")}


def test_tampered_trustee_evidence(platform: TpmPlatform, trustee_raw: bytes) -> None:
    def flip_signature(doc: dict[str, Any]) -> None:
        sig = bytearray(base64.b64decode(doc["tpm_quote"]["signature"]))
        sig[-1] ^= 1
        doc["tpm_quote"]["signature"] = base64.b64encode(bytes(sig)).decode()

    def alter_pcr(doc: dict[str, Any]) -> None:
        doc["tpm_quote"]["pcrs"][3] = "01" * 32

    def other_ak(doc: dict[str, Any]) -> None:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
        der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        doc["ak_public"] = base64.b64encode(der).decode()

    for change, check in (
        (flip_signature, "tpm.signature_invalid"),
        (alter_pcr, "tpm.pcr_digest_mismatch"),
        (other_ak, "tpm.signature_invalid"),
    ):
        with pytest.raises(VerificationError) as info:
            _verify(platform, _mutate(trustee_raw, change))
        assert info.value.check == check


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda d: d.pop("ak_public"), "parse.tpm.evidence.ak_public"),
        (lambda d: d.update(extra=1), "parse.tpm.evidence.extra"),
        (
            lambda d: d["tpm_quote"].update(pcrs=d["tpm_quote"]["pcrs"][:23]),
            "parse.tpm.evidence.tpm_quote.pcrs",
        ),
        (lambda d: d["tpm_quote"]["pcrs"].__setitem__(5, "zz" * 32), "parse.tpm.evidence.tpm_quote.pcrs[5]"),
        (lambda d: d["tpm_quote"].update(signature="***"), "parse.tpm.evidence.tpm_quote.signature"),
        (lambda d: d["tpm_quote"].pop("message"), "parse.tpm.evidence.tpm_quote.message"),
        (
            lambda d: d.update(ak_public=base64.b64encode(b"\x30\x03junk").decode()),
            "parse.tpm.evidence.ak_public",
        ),
        (lambda d: d.update(tpm_quote=[]), "parse.tpm.evidence.tpm_quote"),
        (lambda d: d.update(eventlog=5), "parse.tpm.evidence.eventlog"),
    ],
)
def test_malformed_evidence_names_the_field(
    platform: TpmPlatform, trustee_raw: bytes, change: Any, reason: str
) -> None:
    with pytest.raises(ParseError) as info:
        platform.parse_evidence(_mutate(trustee_raw, change))
    assert info.value.reason == reason


def test_not_json_and_wrong_type(platform: TpmPlatform) -> None:
    for raw in (b"not json", b"[]", b"3"):
        with pytest.raises(ParseError):
            platform.parse_evidence(raw)


def test_hex_message_and_string_wrapped_evidence(platform: TpmPlatform, trustee_raw: bytes) -> None:
    def to_hex(doc: dict[str, Any]) -> None:
        doc["tpm_quote"]["message"] = base64.b64decode(doc["tpm_quote"]["message"]).hex()

    hexed = _mutate(trustee_raw, to_hex)
    wrapped = json.dumps(trustee_raw.decode()).encode()
    canonical = platform.parse_evidence(trustee_raw).evidence
    assert platform.parse_evidence(hexed).evidence == canonical
    assert platform.parse_evidence(wrapped).evidence == canonical


# -- the simulator -------------------------------------------------------------------------------


@pytest.mark.parametrize("key_type", ["rsa", "ecc"])
def test_simulator_evidence_with_eventlog(platform: TpmPlatform, key_type: str) -> None:
    tpm = SimulatedTpm.create(key_type)  # type: ignore[arg-type]
    tpm.boot(kernel=b"kernel v1")
    tpm.extend(10, b"\x0a" * 32, logged=False)
    info = platform.parse_evidence(tpm.evidence(BINDING))
    assert info.report_data == BINDING
    claims = platform.verify_identity(info.evidence, [], NOW)
    assert claims["tpm.ak.sha256"] == tpm.ak_fingerprint() == ak_fingerprint(tpm.ak_tpmt_public())
    assert claims["eventlog.secure_boot"] is True
    assert claims["eventlog.kernel_digest"] == hashlib.sha256(b"kernel v1").hexdigest()
    assert 10 not in claims["eventlog.pcrs"] and 4 in claims["eventlog.pcrs"]
    json.dumps(claims)
    refs = {
        "ak": frozenset({tpm.ak_fingerprint()}),
        "pcr4": frozenset({claims["tpm.pcr.sha256.4"]}),
        "kernel_digest": frozenset({claims["eventlog.kernel_digest"]}),
        "secure_boot": frozenset({"true"}),
    }
    appraisal = platform.appraise(info.evidence, claims, refs)
    assert appraisal.violations == [] and appraisal.vector["executables"] == 2


def test_simulator_short_binding_is_padded_and_long_refused(platform: TpmPlatform) -> None:
    tpm = SimulatedTpm.create("ecc")
    assert platform.parse_evidence(tpm.evidence(b"\x05" * 48)).report_data == b"\x05" * 48 + bytes(16)
    with pytest.raises(ParseError) as info:
        platform.parse_evidence(tpm.evidence(b"\x05" * 65))
    assert info.value.reason == "parse.tpm.evidence.tpm_quote.message.extra_data"


def test_simulator_eventlog_that_does_not_replay(platform: TpmPlatform, sim: SimulatedTpm) -> None:
    doc = sim.evidence_doc(BINDING)
    other = SimulatedTpm.create("rsa")
    other.boot(kernel=b"another kernel")
    doc["eventlog"] = base64.b64encode(other.eventlog()).decode()
    info = platform.parse_evidence(json.dumps(doc).encode())
    with pytest.raises(VerificationError) as err:
        platform.verify_identity(info.evidence, [], NOW)
    assert err.value.check == "tpm.eventlog_replay"


def test_simulator_clock_moves_forward(sim: SimulatedTpm, platform: TpmPlatform) -> None:
    from shared.platforms.tpm.validate import ClockState, check_clock

    first = _verify(platform, sim.evidence(BINDING))[1]
    second = _verify(platform, sim.evidence(BINDING))[1]
    state = [
        ClockState(c["tpm.clock"], c["tpm.reset_count"], c["tpm.restart_count"]) for c in (first, second)
    ]
    check_clock(state[0], state[1])
    with pytest.raises(VerificationError, match=r"tpm\.clock_regressed"):
        check_clock(state[1], state[0])


def test_endorsement_is_refused(platform: TpmPlatform, sim: SimulatedTpm) -> None:
    info = platform.parse_evidence(sim.evidence(BINDING))
    with pytest.raises(RemitsError):
        platform.verify_identity(info.evidence, [b"x"], NOW)


# -- the default policy --------------------------------------------------------------------------


def _policy_input(
    platform: TpmPlatform, raw: bytes, refs: dict[str, frozenset[str]], revocations: list[Any] | None = None
) -> dict[str, Any]:
    evidence, claims = _verify(platform, raw)
    appraisal = platform.appraise(evidence, claims, refs)
    return {
        "tee": "tpm",
        "claims": claims,
        "platform_vector": appraisal.vector,
        "violations": [{"field": v.field, "got": v.got, "want": v.want} for v in appraisal.violations],
        "reference": {name: {"status": "matched", "record": f"{name}@1"} for name in refs},
        "revocations": revocations or [],
        "notes": list(appraisal.notes),
    }


def test_default_policy(platform: TpmPlatform, trustee_raw: bytes, trustee_fp: str) -> None:
    policy = default_policy("attestation.tpm")
    registered = {"ak": frozenset({trustee_fp}), "pcr0": frozenset({"00" * 32})}
    result = policy.evaluate(_policy_input(platform, trustee_raw, registered))
    assert (
        "reject" not in result and result["vector"]["hardware"] == 2 and result["vector"]["executables"] == 2
    )

    result = policy.evaluate(_policy_input(platform, trustee_raw, {"pcr0": frozenset({"11" * 32})}))
    assert result["reject"] == "tpm.ak_not_registered"  # before the PCR mismatch

    wrong_pcr = {"ak": frozenset({trustee_fp}), "pcr0": frozenset({"11" * 32})}
    result = policy.evaluate(_policy_input(platform, trustee_raw, wrong_pcr))
    assert result["reject"] == "measurement.not_in_reference_values"

    wrong_boot = {"ak": frozenset({trustee_fp}), "secure_boot": frozenset({"true"})}
    assert policy.evaluate(_policy_input(platform, trustee_raw, wrong_boot))["reject"] == "policy.secure_boot"

    revoked = [{"kind": "chip_id", "value": trustee_fp, "reason": "key compromise", "revoked_at": 1}]
    result = policy.evaluate(_policy_input(platform, trustee_raw, registered, revoked))
    assert "reject" not in result and result["vector"]["hardware"] == 96
    assert "revoked.chip_id: key compromise" in result["notes"]

    expired = _policy_input(platform, trustee_raw, registered)
    expired["reference"]["pcr0"] = {"status": "expired", "record": "pcr0@1"}
    assert policy.evaluate(expired)["reject"] == "measurement.reference_expired"

    other = _policy_input(platform, trustee_raw, registered)
    other["tee"] = "snp"
    assert policy.evaluate(other)["reject"] == "policy.wrong_tee"


# -- `remits verify tpm` -------------------------------------------------------------------------


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any]:
    code = cli_main(["verify", "tpm", *argv])
    out = capsys.readouterr().out
    return code, json.loads(out) if out.strip().startswith("{") else out


def test_cli_verifies_the_trustee_vector(
    capsys: pytest.CaptureFixture[str], trustee_fp: str, tmp_path: Path
) -> None:
    code, out = _run(capsys, str(TRUSTEE), "--json")
    assert code == 0 and out["verified"] is True and out["ak_pinned"] is False
    claims = out["claims"]
    extra = decode_evidence(TRUSTEE.read_bytes()).attest.extra_data
    assert claims["nonce"] == extra.hex()
    assert claims["pcrs"]["sha256"]["0"] == "00" * 32 and claims["pcrs"]["sha256"]["17"] == "ff" * 32
    assert claims["tpm.ak.sha256"] == trustee_fp
    # Pinned with the right key, in PEM, and with the right nonce.
    der = base64.b64decode(json.loads(TRUSTEE.read_bytes())["ak_public"])
    pem = serialization.load_der_public_key(der).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / "ak.pem").write_bytes(pem)
    code, out = _run(capsys, str(TRUSTEE), "--json", "--ak", str(tmp_path / "ak.pem"), "--nonce", extra.hex())
    assert code == 0 and out["ak_pinned"] is True and out["nonce_checked"] is True
    code, out = _run(capsys, str(TRUSTEE))
    assert code == 0 and "NOT pinned" in out


def test_cli_failures(capsys: pytest.CaptureFixture[str], tmp_path: Path, sim: SimulatedTpm) -> None:
    (tmp_path / "other.tpmt").write_bytes(sim.ak_tpmt_public())
    code, out = _run(capsys, str(TRUSTEE), "--json", "--ak", str(tmp_path / "other.tpmt"))
    assert code == 1 and out == {"verified": False, "check": "tpm.ak_mismatch", "detail": out["detail"]}
    code, out = _run(capsys, str(TRUSTEE), "--json", "--nonce", "00" * 64)
    assert code == 1 and out["check"] == "tpm.nonce_mismatch"
    assert cli_main(["verify", "tpm", str(tmp_path / "missing.json")]) == 2
    assert cli_main(["verify", "tpm", str(TRUSTEE), "--nonce", "xyz"]) == 2
    capsys.readouterr()


def test_cli_with_simulator_eventlog(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, sim: SimulatedTpm
) -> None:
    doc = sim.evidence_doc(BINDING, with_eventlog=False)
    (tmp_path / "evidence.json").write_text(json.dumps(doc))
    (tmp_path / "log.bin").write_bytes(sim.eventlog())
    (tmp_path / "ak.pem").write_bytes(sim.ak_pem())
    code, out = _run(
        capsys,
        str(tmp_path / "evidence.json"),
        "--json",
        "--ak",
        str(tmp_path / "ak.pem"),
        "--eventlog",
        str(tmp_path / "log.bin"),
        "--nonce",
        BINDING.hex(),
    )
    assert code == 0 and out["eventlog_checked"] is True
    assert out["claims"]["eventlog.secure_boot"] is True
    bad = copy.deepcopy(doc)
    bad["tpm_quote"]["pcrs"][4] = "00" * 32
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    code, out = _run(capsys, str(tmp_path / "bad.json"), "--json")
    assert code == 1 and out["check"] == "tpm.pcr_digest_mismatch"
