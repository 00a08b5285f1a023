"""The Azure vTPM platform (az-snp-vtpm, az-tdx-vtpm) on the real Trustee vectors in
tests/data/azure (see the README there), its default policies, and `remits verify az-*-vtpm`."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from services.cli import main as cli_main
from shared.errors import RemitsError
from shared.platforms.azure.evidence import parse_azure_evidence
from shared.platforms.azure.platform import AzureVtpmPlatform, canonical_evidence, verify_vtpm_layer
from shared.platforms.base import Violation
from shared.platforms.snp.certs import pinned_roots
from shared.platforms.snp.platform import SnpPlatform
from shared.platforms.tdx import pinned_root_der
from shared.platforms.tdx.platform import DcapPlatform
from shared.policy.engine import default_policy

DATA = Path(__file__).parents[1] / "data"
SNP_DIR = DATA / "azure/az-snp-vtpm"
TDX_DIR = DATA / "azure/az-tdx-vtpm"
TDX_COLLATERAL = DATA / "tdx/quotes/trustee_az_tdx_vtpm_td_quote/collateral"
EVENTLOG = DATA / "tpm/eventlog/ubuntu-2404-amd-sevsnp.bin"  # a real measured-boot log (not Azure's)
# Every VCEK of the vectors is valid from January 2025 for seven years.
NOW = datetime(2025, 6, 1, tzinfo=UTC)
CHALLENGE = b"challenge".hex()
V2_NONCE = "982f5c6e45df0ed3f10b6f60b02f0c8390e281300f3805e2279c16168cd6ae9aa398f647caa2338748cd0fd9f5f819ef"
# SNP launch measurements of the vectors (the paravisor image), read from their signed reports.
MEASUREMENTS = {
    "evidence-v0.json": "6a063be9dd79f6371c842e480f8dc3b5c725961344e57130e88c5adf49e8f7f6c79b75a5eb77fc769959f4aeb2f9401e",
    "evidence-v1.json": "6a063be9dd79f6371c842e480f8dc3b5c725961344e57130e88c5adf49e8f7f6c79b75a5eb77fc769959f4aeb2f9401e",
    "evidence-v2.json": "5b0ce64ad1c1f6375dbda5f760b98526ca1bcf91b8195091afc28e7b024251d68fe32e05af34048d6607678cd23283ff",
    "evidence-genoa.json": "f57dc09a507c6ecd82369bffb600f0003792f4d99bc26e985ec0c266fc34faf3706faf814c9e61065768a6ff917c89ae",
}
VECTOR = {"instance-identity": 2, "hardware": 2, "configuration": 2, "executables": 2, "runtime-opaque": 2}


@cache
def values(tee_dir: Path) -> dict[str, Any]:
    return json.loads((tee_dir / "expected.json").read_text())["values"]


@cache
def platforms() -> tuple[AzureVtpmPlatform, AzureVtpmPlatform]:
    snp = SnpPlatform(pinned_roots())
    dcap = DcapPlatform("tdx", pinned_root_der())
    return AzureVtpmPlatform("az-snp-vtpm", snp, dcap), AzureVtpmPlatform("az-tdx-vtpm", snp, dcap)


def snp_platform() -> AzureVtpmPlatform:
    return platforms()[0]


def tdx_platform() -> AzureVtpmPlatform:
    return platforms()[1]


def identity(platform: AzureVtpmPlatform, primary: bytes, now: datetime = NOW) -> dict[str, Any]:
    """What intake, endorse and identity do with one evidence: the carried VCEK, no CRL."""
    info = platform.parse_evidence(primary)
    requests = platform.endorsement_requests(info.evidence, info.carried_endorsement)
    documents: list[bytes | None] = [None] * len(requests)
    endorsement = platform.assemble_endorsement(documents, info.carried_endorsement)
    return platform.verify_identity(info.evidence, endorsement, now)


# -- the real SNP vectors ----------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(MEASUREMENTS))
def test_real_snp_evidence_verifies_in_both_layers(name: str) -> None:
    primary = (SNP_DIR / name).read_bytes()
    platform = snp_platform()
    info = platform.parse_evidence(primary)
    want = values(SNP_DIR)[name]
    nonce = bytes.fromhex(want["tpm_quote_extra_data_hex"])
    assert info.report_data == nonce.ljust(64, b"\x00")
    assert info.endorsement_key.startswith(("vcek:Milan:", "vcek:Genoa:"))
    assert info.init_data_binding is None
    # The VCEK travels with the evidence: the plan asks the vendor for the CRL only.
    requests = platform.endorsement_requests(info.evidence, info.carried_endorsement)
    assert [r.cache_key.split(":")[0] for r in requests] == ["crl"] and requests[0].optional
    assert platform.assemble_endorsement([None], info.carried_endorsement) == [
        info.carried_endorsement[0],
        b"",
    ]

    claims = identity(platform, primary)
    assert claims["snp.measurement"] == MEASUREMENTS[name]
    assert claims["tpm.pcr.sha256.0"] == want["pcr00"]
    assert claims["tpm.nonce"] == want["tpm_quote_extra_data_hex"]
    assert claims["azure.var_data.sha256"] == want["var_data_sha256"]
    assert claims["snp.report_data"][:64] == want["var_data_sha256"]
    assert claims["azure.user_data"] == want["var_data_user_data"].lower()
    assert claims["azure.secure_boot"] is True and claims["azure.tpm_enabled"] is True
    assert claims["azure.hcl.report_type"] == "snp"
    assert len(claims["tpm.ak.sha256"]) == 64
    assert sum(1 for k in claims if k.startswith("tpm.pcr.sha256.")) == 24


def test_stored_evidence_is_canonical_and_reparses_the_same() -> None:
    platform = snp_platform()
    v0 = platform.parse_evidence((SNP_DIR / "evidence-v0.json").read_bytes()).evidence
    again = parse_azure_evidence("az-snp-vtpm", v0)
    original = parse_azure_evidence("az-snp-vtpm", (SNP_DIR / "evidence-v0.json").read_bytes())
    assert again.version == 1 and original.version == 0
    assert (again.quote_message, again.pcrs, again.hcl.raw, again.vcek_der) == (
        original.quote_message,
        original.pcrs,
        original.hcl.raw,
        original.vcek_der,
    )
    assert canonical_evidence(again) == v0
    v2 = platform.parse_evidence((SNP_DIR / "evidence-v2.json").read_bytes()).evidence
    assert parse_azure_evidence("az-snp-vtpm", v2).version == 2  # the user-data rule stays


def test_vcek_expired_at_the_given_time_is_refused() -> None:
    with pytest.raises(RemitsError) as err:
        identity(
            snp_platform(), (SNP_DIR / "evidence-v1.json").read_bytes(), datetime(2040, 1, 1, tzinfo=UTC)
        )
    assert err.value.reason.startswith(("snp.", "endorsement."))


# -- tampering ---------------------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _hcl(doc: dict[str, Any]) -> bytearray:
    text = doc["hcl_report"]
    return bytearray(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))


def flip_var_data(doc: dict[str, Any]) -> None:
    # One hex digit of vmUniqueId: still valid JSON, another var data than the report commits to.
    hcl = _hcl(doc)
    at = hcl.index(b"26F8BC30")
    hcl[at] = ord("3")
    doc["hcl_report"] = _b64url(bytes(hcl))


def flip_quote_signature(doc: dict[str, Any]) -> None:
    sig = bytearray(bytes.fromhex(doc["tpm_quote"]["signature"]))
    sig[10] ^= 0x01
    doc["tpm_quote"]["signature"] = sig.hex()


def flip_pcr(doc: dict[str, Any]) -> None:
    pcr = bytearray(bytes.fromhex(doc["tpm_quote"]["pcrs"][7]))
    pcr[0] ^= 0x01
    doc["tpm_quote"]["pcrs"][7] = pcr.hex()


def flip_snp_report(doc: dict[str, Any]) -> None:
    hcl = _hcl(doc)
    hcl[0x20 + 0x90] ^= 0x01  # one bit of MEASUREMENT, inside the signed part of the SNP report
    doc["hcl_report"] = _b64url(bytes(hcl))


def flip_quote_message(doc: dict[str, Any]) -> None:
    message = bytearray(bytes.fromhex(doc["tpm_quote"]["message"]))
    message[-1] ^= 0x01  # the last byte of pcrDigest
    doc["tpm_quote"]["message"] = message.hex()


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        (flip_var_data, "azure.var_data_binding"),
        (flip_quote_signature, "tpm.signature_invalid"),
        (flip_pcr, "tpm.pcr_digest_mismatch"),
        (flip_snp_report, "snp.report_signature"),
        (flip_quote_message, "tpm.signature_invalid"),
    ],
)
def test_tampered_snp_evidence_is_refused_by_name(
    tamper: Callable[[dict[str, Any]], None], reason: str
) -> None:
    doc = json.loads((SNP_DIR / "evidence-v1.json").read_text())
    tamper(doc)
    with pytest.raises(RemitsError) as err:
        identity(snp_platform(), json.dumps(doc).encode())
    assert err.value.reason == reason


def test_v2_user_data_must_carry_the_quote_nonce() -> None:
    doc = json.loads((SNP_DIR / "evidence-v2.json").read_text())
    hcl = _hcl(doc)
    at = hcl.index(V2_NONCE.upper().encode())
    hcl[at] = ord("0")
    doc["hcl_report"] = _b64url(bytes(hcl))
    with pytest.raises(RemitsError) as err:
        snp_platform().parse_evidence(json.dumps(doc).encode())
    assert err.value.reason == "azure.user_data_mismatch"


def test_evidence_of_the_other_tee_is_refused() -> None:
    with pytest.raises(RemitsError) as err:
        tdx_platform().parse_evidence((SNP_DIR / "evidence-v1.json").read_bytes())
    assert err.value.reason in ("azure.report_type", "parse.azure.evidence.td_quote")


def test_unparseable_evidence_is_a_parse_error() -> None:
    with pytest.raises(RemitsError) as err:
        snp_platform().parse_evidence(b'{"version": 1}')
    assert err.value.reason.startswith("parse.azure.")


# -- the real TDX vector -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["evidence-v0.json", "evidence-v1.json"])
def test_real_tdx_evidence_vtpm_layer_verifies_and_hardware_needs_collateral(name: str) -> None:
    platform = tdx_platform()
    info = platform.parse_evidence((TDX_DIR / name).read_bytes())
    assert info.report_data == b"challenge".ljust(64, b"\x00")
    assert info.endorsement_key == "tdx:00806f050000:platform"
    assert info.carried_endorsement == ()
    ev = parse_azure_evidence("az-tdx-vtpm", info.evidence)
    quote, _ = verify_vtpm_layer(ev, b"challenge")
    assert quote.pcrs["sha256"][0] == values(TDX_DIR)[name]["pcr00"]
    # The DCAP plan: TCB info and QE identity by FMSPC, the CRLs. None of them was collected.
    requests = platform.endorsement_requests(info.evidence, ())
    assert [r.cache_key.split(":")[0] for r in requests] == ["tcbinfo", "qeidentity", "pckcrl", "rootcacrl"]
    assert "fmspc=00806f050000" in requests[0].url
    with pytest.raises(RemitsError) as err:
        platform.assemble_endorsement([None] * 4, ())
    assert err.value.reason == "endorsement.not_found"


def test_tdx_vtpm_layer_refuses_a_foreign_nonce() -> None:
    ev = parse_azure_evidence("az-tdx-vtpm", (TDX_DIR / "evidence-v1.json").read_bytes())
    with pytest.raises(RemitsError) as err:
        verify_vtpm_layer(ev, b"other")
    assert err.value.reason == "tpm.nonce_mismatch"


# -- appraisal ---------------------------------------------------------------------------------


@cache
def v1_claims() -> dict[str, Any]:
    return identity(snp_platform(), (SNP_DIR / "evidence-v1.json").read_bytes())


def appraise(references: dict[str, frozenset[str]]) -> Any:
    platform = snp_platform()
    evidence = platform.parse_evidence((SNP_DIR / "evidence-v1.json").read_bytes()).evidence
    return platform.appraise(evidence, v1_claims(), references)


def test_appraisal_with_measurement_and_pcr0_provisioned_is_clean() -> None:
    pcr0 = values(SNP_DIR)["evidence-v1.json"]["pcr00"]
    result = appraise(
        {"measurement": frozenset({MEASUREMENTS["evidence-v1.json"]}), "pcr0": frozenset({pcr0})}
    )
    assert result.violations == [] and result.vector == VECTOR and result.notes == []


def test_appraisal_names_a_pcr_mismatch() -> None:
    result = appraise(
        {"measurement": frozenset({MEASUREMENTS["evidence-v1.json"]}), "pcr4": frozenset({"00" * 32})}
    )
    assert result.violations == [Violation("pcr4", v1_claims()["tpm.pcr.sha256.4"], "00" * 32)]


def test_appraisal_without_references_is_unrecognized_runtime() -> None:
    result = appraise({})
    assert result.vector["executables"] == 33
    assert (
        "measurement.no_reference_values" in result.notes and "azure.pcrs.no_reference_values" in result.notes
    )


def test_pcrs_alone_recognize_the_runtime_and_measurement_mismatch_is_named() -> None:
    pcr0 = values(SNP_DIR)["evidence-v1.json"]["pcr00"]
    assert appraise({"pcr0": frozenset({pcr0})}).vector["executables"] == 2
    wrong = appraise({"measurement": frozenset({"00" * 48}), "pcr0": frozenset({pcr0})})
    assert [v.field for v in wrong.violations] == ["measurement"]


def test_event_log_references_cannot_be_met_without_a_log() -> None:
    result = appraise({"kernel_digest": frozenset({"ab" * 32})})
    assert [v.field for v in result.violations] == ["kernel_digest"]


def test_reference_names_cover_the_hardware_and_the_pcrs() -> None:
    snp, tdx = platforms()
    assert {"measurement", "host_data", "pcr0", "pcr23", "kernel_digest"} <= set(snp.reference_names)
    assert {"mr_td", "accepted_tcb_status", "pcr0", "pcr23"} <= set(tdx.reference_names)


# -- default policies --------------------------------------------------------------------------


def policy_input(tee: str, **overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "tee": tee,
        "claims": {"snp.measurement": "aa", "tpm.pcr.sha256.0": "bb"},
        "platform_vector": dict(VECTOR),
        "violations": [],
        "reference": {"pcr0": {"status": "matched", "record": "pcr0@1"}},
        "revocations": [],
        "notes": [],
    }
    doc.update(overrides)
    return doc


@pytest.mark.parametrize("tee", ["az-snp-vtpm", "az-tdx-vtpm"])
def test_default_policy_affirms_a_clean_appraisal(tee: str) -> None:
    result = default_policy(f"attestation.{tee}").evaluate(policy_input(tee))
    assert "reject" not in result and result["vector"] == VECTOR


@pytest.mark.parametrize("tee", ["az-snp-vtpm", "az-tdx-vtpm"])
def test_default_policy_refuses_a_pcr_mismatch_as_a_measurement(tee: str) -> None:
    violations = [{"field": "pcr0", "got": "bb", "want": "cc"}]
    result = default_policy(f"attestation.{tee}").evaluate(policy_input(tee, violations=violations))
    assert result["reject"] == "measurement.not_in_reference_values"
    assert json.loads(result["detail"]) == violations


@pytest.mark.parametrize(("tee", "field"), [("az-snp-vtpm", "measurement"), ("az-tdx-vtpm", "mr_td")])
def test_default_policy_hardware_measurement_is_a_measurement(tee: str, field: str) -> None:
    violations = [{"field": field, "got": "aa", "want": "cc"}]
    result = default_policy(f"attestation.{tee}").evaluate(policy_input(tee, violations=violations))
    assert result["reject"] == "measurement.not_in_reference_values"


@pytest.mark.parametrize("tee", ["az-snp-vtpm", "az-tdx-vtpm"])
def test_default_policy_other_failures_are_policy_fields(tee: str) -> None:
    violations = [{"field": "secure_boot", "got": "", "want": "true"}]
    result = default_policy(f"attestation.{tee}").evaluate(policy_input(tee, violations=violations))
    assert result["reject"] == "policy.secure_boot"


@pytest.mark.parametrize("tee", ["az-snp-vtpm", "az-tdx-vtpm"])
def test_default_policy_reports_expired_references_first(tee: str) -> None:
    result = default_policy(f"attestation.{tee}").evaluate(
        policy_input(
            tee,
            reference={"pcr0": {"status": "expired", "record": "pcr0@1"}},
            violations=[{"field": "pcr0", "got": "bb", "want": ""}],
        )
    )
    assert result["reject"] == "measurement.reference_expired" and result["detail"] == "pcr0"


@pytest.mark.parametrize(
    ("tee", "kind", "claim"),
    [("az-snp-vtpm", "chip_id", "hardware"), ("az-tdx-vtpm", "measurement", "executables")],
)
def test_default_policy_applies_revocations(tee: str, kind: str, claim: str) -> None:
    revocations = [{"kind": kind, "value": "aa", "reason": "compromised", "revoked_at": 1}]
    result = default_policy(f"attestation.{tee}").evaluate(policy_input(tee, revocations=revocations))
    assert "reject" not in result and result["vector"][claim] == 96
    assert result["notes"] == [f"revoked.{kind}: compromised"]


@pytest.mark.parametrize("tee", ["az-snp-vtpm", "az-tdx-vtpm"])
def test_default_policy_refuses_the_wrong_tee(tee: str) -> None:
    result = default_policy(f"attestation.{tee}").evaluate(policy_input("snp"))
    assert result["reject"] == "policy.wrong_tee"


# -- remits verify az-snp-vtpm / az-tdx-vtpm ---------------------------------------------------


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any, str]:
    code = cli_main(["verify", *argv])
    captured = capsys.readouterr()
    out = json.loads(captured.out) if captured.out.strip().startswith("{") else captured.out
    return code, out, captured.err


@pytest.mark.parametrize(
    ("name", "nonce"),
    [("evidence-v0.json", CHALLENGE), ("evidence-v1.json", CHALLENGE), ("evidence-v2.json", V2_NONCE)],
)
def test_cli_verifies_real_snp_evidence_offline(
    capsys: pytest.CaptureFixture[str], name: str, nonce: str
) -> None:
    code, out, _ = run_cli(
        capsys, "az-snp-vtpm", str(SNP_DIR / name), "--at", "2025-06-01T00:00:00Z", "--nonce", nonce, "--json"
    )
    assert code == 0, out
    claims = out["claims"]
    assert out["verified"] is True
    assert claims["nonce"] == nonce and claims["nonce_checked"] is True
    assert claims["pcrs"]["sha256"]["0"] == values(SNP_DIR)[name]["pcr00"]
    assert claims["snp.measurement"] == MEASUREMENTS[name]
    assert claims["snp.product"] == "Milan"


def test_cli_verifies_genoa_and_prints_a_summary(capsys: pytest.CaptureFixture[str]) -> None:
    nonce = values(SNP_DIR)["evidence-genoa.json"]["tpm_quote_extra_data_hex"]
    code, out, _ = run_cli(
        capsys, "az-snp-vtpm", str(SNP_DIR / "evidence-genoa.json"), "--at", "2025-06-01", "--nonce", nonce
    )
    assert code == 0
    assert "SNP Genoa" in out and MEASUREMENTS["evidence-genoa.json"] in out


def test_cli_refuses_a_wrong_nonce(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(
        capsys,
        "az-snp-vtpm",
        str(SNP_DIR / "evidence-v1.json"),
        "--at",
        "2025-06-01",
        "--nonce",
        "00ff",
        "--json",
    )
    assert code == 1
    assert out["verified"] is False and out["check"] == "tpm.nonce_mismatch" and out["layer"] == "vtpm"


def test_cli_refuses_a_wrong_nonce_in_v2_user_data(capsys: pytest.CaptureFixture[str]) -> None:
    # The quote check comes first: a v2 nonce that is not the quote's fails there already.
    code, out, _ = run_cli(
        capsys, "az-snp-vtpm", str(SNP_DIR / "evidence-v2.json"), "--at", "2025-06-01", "--nonce", CHALLENGE
    )
    assert code == 1 and out["check"] == "tpm.nonce_mismatch"


def test_cli_refuses_tampered_var_data_in_the_binding_layer(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    doc = json.loads((SNP_DIR / "evidence-v1.json").read_text())
    flip_var_data(doc)
    path = tmp_path / "evidence.json"
    path.write_text(json.dumps(doc))
    code, out, _ = run_cli(capsys, "az-snp-vtpm", str(path), "--at", "2025-06-01")
    assert code == 1
    assert (out["layer"], out["check"]) == ("binding", "azure.var_data_binding")
    assert out["layers"] == {"vtpm": "verified", "binding": "failed", "hardware": "not checked"}


def test_cli_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run_cli(capsys, "az-snp-vtpm", str(tmp_path / "missing.json"))
    assert code == 2 and "cannot read" in err
    code, _, err = run_cli(capsys, "az-snp-vtpm", str(SNP_DIR / "evidence-v1.json"), "--nonce", "xyz")
    assert code == 2 and "--nonce" in err
    code, _, err = run_cli(capsys, "az-snp-vtpm", str(SNP_DIR / "evidence-v1.json"), "--at", "yesterday")
    assert code == 2 and "--at" in err


def test_cli_tdx_without_collateral_fails_in_the_hardware_layer(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(
        capsys, "az-tdx-vtpm", str(TDX_DIR / "evidence-v1.json"), "--nonce", CHALLENGE, "--json"
    )
    assert code == 1
    assert out["layer"] == "hardware" and out["check"] == "endorsement.not_found"
    assert out["layers"] == {"vtpm": "verified", "binding": "verified", "hardware": "failed"}
    assert out["claims"]["pcrs"]["sha256"]["0"] == values(TDX_DIR)["evidence-v1.json"]["pcr00"]
    assert out["claims"]["azure.hcl.report_type"] == "tdx"


def test_cli_tdx_with_collateral_verifies(capsys: pytest.CaptureFixture[str]) -> None:
    # Collateral of the same FMSPC collected separately (tests/data/tdx/quotes/.../expected.json).
    code, out, _ = run_cli(
        capsys,
        "az-tdx-vtpm",
        str(TDX_DIR / "evidence-v0.json"),
        "--nonce",
        CHALLENGE,
        "--collateral",
        str(TDX_COLLATERAL),
        "--at",
        "2025-11-01T00:00:00Z",
        "--json",
    )
    assert code == 0, out
    claims = out["claims"]
    assert claims["tdx.quote.body.mr_td"].startswith("024a32b0")
    assert claims["tdx.tcb_status"] == "OutOfDate"
    assert claims["pcrs"]["sha256"]["0"] == values(TDX_DIR)["evidence-v0.json"]["pcr00"]


def test_cli_refuses_an_event_log_of_another_boot(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(
        capsys,
        "az-snp-vtpm",
        str(SNP_DIR / "evidence-v1.json"),
        "--at",
        "2025-06-01",
        "--eventlog",
        str(EVENTLOG),
        "--json",
    )
    assert code == 1 and (out["layer"], out["check"]) == ("vtpm", "tpm.eventlog_replay")


def test_cli_replays_a_matching_event_log(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    # A simulated CVM whose PCRs are what the (real) log replays to, under a test AMD root.
    from cryptography.hazmat.primitives import serialization

    from services.demo.azure_sim import SimulatedAzureCvm
    from services.demo.snp_sim import SimulatedAmd
    from shared.platforms.tpm import eventlog

    amd = SimulatedAmd.generate("Milan")
    roots = tmp_path / "roots" / "milan"
    roots.mkdir(parents=True)
    for name, cert in (("ark", amd.ark), ("ask", amd.ask), ("asvk", amd.ask)):
        (roots / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    cvm = SimulatedAzureCvm.create(amd, b"\x01" * 48)
    for index, value in eventlog.replay(eventlog.parse(EVENTLOG.read_bytes()))["sha256"].items():
        cvm.pcrs[index] = value
    path = tmp_path / "evidence.json"
    path.write_text(json.dumps(cvm.evidence(b"n" * 48)))
    code, out, _ = run_cli(
        capsys,
        "az-snp-vtpm",
        str(path),
        "--roots-dir",
        str(roots.parent),
        "--nonce",
        (b"n" * 48).hex(),
        "--eventlog",
        str(EVENTLOG),
        "--json",
    )
    assert code == 0, out
    claims = out["claims"]
    assert claims["eventlog.replayed"] is True and claims["snp.measurement"] == "01" * 48
    assert "eventlog.secure_boot" in claims and claims["pcrs"]["sha256"]["0"] == cvm.pcrs[0].hex()
