"""gcp-vtpm in the pipeline: the platform adapter (parse -> identity -> appraisal), its default
policy and `remits verify gcp-vtpm`, on the two real GCE vectors and on the simulated vTPM."""

from __future__ import annotations

import base64
import dataclasses
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from services.cli import main as cli_main
from services.demo.gcp_sim import Instance, SimulatedGceVm, SimulatedGoogleCa, gcp_vtpm_evidence, pb_bytes
from shared.errors import ParseError, RemitsError, VerificationError
from shared.kbs.binding import expected_report_data
from shared.platforms.gcp.attestation import parse_attestation
from shared.platforms.gcp.platform import GcpVtpmPlatform
from shared.platforms.tpm import eventlog
from shared.policy.engine import default_policy

DATA = Path(__file__).parents[1] / "data/gcp"
NONCE_PB = (DATA / "gce-cos-85-nonce9009.pb").read_bytes()
NO_NONCE_PB = (DATA / "gce-cos-85-no-nonce.pb").read_bytes()
NOW = datetime(2026, 6, 1, tzinfo=UTC)
AFTER_EXPIRY = datetime(2052, 1, 1, tzinfo=UTC)
COS_PCR0 = "0f35c214608d93c7a6e68ae7359b4a8be5a0e99eea9107ece427c4dea4e439cf"
COS_KERNEL = "6f6afb3caed004e727200a0c310731bd8ab4cd391b2d95cedf67d08e1e8e5e7e"
COS_PROJECT = "google.com:wuale-gcp-testing"
COS_AK = "6a114d75ad6e7b75f7da33dead50f2e29bf509108646ced2e588bebc35f0d5b6"
_DER = Encoding.DER
TEE_PUBKEY = {"kty": "EC", "crv": "P-256", "alg": "ES256", "x": "AA", "y": "AA"}

pytestmark = pytest.mark.filterwarnings("ignore:Attribute's length:UserWarning")


def _kbs(raw: bytes, shape: str = "string") -> bytes:
    text = base64.b64encode(raw).decode()
    return json.dumps(text if shape == "string" else {"attestation": text}).encode()


@pytest.fixture(scope="module")
def google() -> GcpVtpmPlatform:
    return GcpVtpmPlatform("gcp-vtpm", None)


@pytest.fixture(scope="module")
def ca() -> SimulatedGoogleCa:
    return SimulatedGoogleCa.generate()


@pytest.fixture(scope="module")
def vm(ca: SimulatedGoogleCa) -> SimulatedGceVm:
    return SimulatedGceVm.create(ca)


@pytest.fixture(scope="module")
def roots_file(tmp_path_factory: pytest.TempPathFactory, ca: SimulatedGoogleCa) -> Path:
    path = tmp_path_factory.mktemp("gcp") / "roots.pem"
    path.write_bytes(ca.roots_pem())
    return path


@pytest.fixture(scope="module")
def sim_platform(roots_file: Path) -> GcpVtpmPlatform:
    return GcpVtpmPlatform("gcp-vtpm", roots_file)


# -- the real vectors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "shape", "nonce"),
    [(NONCE_PB, "string", "9009"), (NO_NONCE_PB, "object", "")],
    ids=["nonce9009", "no-nonce"],
)
def test_real_vectors_through_the_platform(
    google: GcpVtpmPlatform, raw: bytes, shape: str, nonce: str
) -> None:
    info = google.parse_evidence(_kbs(raw, shape))
    assert info.evidence == raw
    assert info.report_data == bytes.fromhex(nonce).ljust(64, b"\x00")
    assert info.endorsement_key == f"gcp-ak:{COS_AK}"
    assert info.carried_endorsement == () and info.init_data_binding is None
    assert google.endorsement_requests(info.evidence, ()) == []
    assert google.assemble_endorsement([], ()) == []

    claims = google.verify_identity(info.evidence, [], NOW)
    assert claims["gcp.zone"] == "us-central1-a"
    assert claims["gcp.project_id"] == COS_PROJECT
    assert claims["gcp.project_number"] == 117478743145
    assert claims["gcp.instance_name"] == "cos-test"
    assert claims["gcp.instance_id"] == "6797026933021542085"
    assert claims["tpm.nonce"] == nonce
    assert claims["tpm.pcr.sha256.0"] == COS_PCR0
    assert len(claims["tpm.pcr.sha1.0"]) == 40 and len(claims["tpm.pcr.sha384.23"]) == 96
    assert claims["tpm.quote_banks"] == ["sha1", "sha256", "sha384"]
    assert claims["tpm.ak.sha256"] == COS_AK
    assert claims["eventlog.secure_boot"] is True
    assert claims["eventlog.kernel_digest"] == COS_KERNEL
    assert claims["eventlog.separators"]["7"] == "normal"
    json.dumps(claims)  # the claims go into a JSON token

    bare = google.appraise(info.evidence, claims, {})
    assert bare.vector == {"instance-identity": 2, "hardware": 2, "configuration": 2, "executables": 33}
    assert "runtime-opaque" not in bare.vector
    assert bare.notes == ["measurement.no_reference_values"] and bare.violations == []

    refs = {
        "pcr0": frozenset({COS_PCR0.upper()}),
        "kernel_digest": frozenset({COS_KERNEL}),
        "project_id": frozenset({COS_PROJECT}),
        "secure_boot": frozenset({"true"}),
    }
    good = google.appraise(info.evidence, claims, refs)
    assert good.vector["executables"] == 2 and good.violations == [] and good.notes == []


def test_appraisal_names_every_failed_reference(google: GcpVtpmPlatform) -> None:
    claims = google.verify_identity(NONCE_PB, [], NOW)
    refs = {
        "pcr0": frozenset({"00" * 32}),
        "pcr7": frozenset({claims["tpm.pcr.sha256.7"]}),
        "kernel_digest": frozenset({"11" * 32}),
        "secure_boot": frozenset({"false"}),
        "project_id": frozenset({"another-project"}),
    }
    appraisal = google.appraise(NONCE_PB, claims, refs)
    found = {v.field: (v.got, v.want) for v in appraisal.violations}
    assert found == {
        "pcr0": (COS_PCR0, "00" * 32),
        "kernel_digest": (COS_KERNEL, "11" * 32),
        "secure_boot": ("true", "false"),
        "project_id": (COS_PROJECT, "another-project"),
    }


# -- tampering ---------------------------------------------------------------------------------------


def _flip(raw: bytes, needle: bytes, offset: int = -1) -> bytes:
    at = raw.index(needle) + (len(needle) + offset if offset < 0 else offset)
    return raw[:at] + bytes([raw[at] ^ 0x01]) + raw[at + 1 :]


def test_flipped_quote_signature(google: GcpVtpmPlatform) -> None:
    sha256 = next(q for q in parse_attestation(NONCE_PB).quotes if q.hash_name == "sha256")
    with pytest.raises(VerificationError) as info:
        google.verify_identity(_flip(NONCE_PB, sha256.signature), [], NOW)
    assert info.value.reason == "tpm.signature_invalid"


def test_altered_pcr_value(google: GcpVtpmPlatform) -> None:
    sha256 = next(q for q in parse_attestation(NONCE_PB).quotes if q.hash_name == "sha256")
    with pytest.raises(VerificationError) as info:
        google.verify_identity(_flip(NONCE_PB, sha256.pcrs[0]), [], NOW)
    assert info.value.reason == "tpm.pcr_digest_mismatch"


def test_altered_event_log_digest_names_the_pcr(google: GcpVtpmPlatform) -> None:
    log = eventlog.parse(parse_attestation(NONCE_PB).event_log)
    app = next(
        e
        for e in log.events
        if e.pcr_index == 4 and e.event_type == eventlog.EV_EFI_BOOT_SERVICES_APPLICATION
    )
    digest = app.digest(0x000B)
    assert digest is not None and NONCE_PB.count(digest) == 1
    with pytest.raises(VerificationError) as info:
        google.verify_identity(_flip(NONCE_PB, digest), [], NOW)
    assert info.value.reason == "tpm.eventlog_replay"
    assert info.value.detail.startswith("sha256 PCR 4:")


def test_ak_certificate_expired_later(google: GcpVtpmPlatform) -> None:
    with pytest.raises(VerificationError) as info:
        google.verify_identity(NO_NONCE_PB, [], AFTER_EXPIRY)
    assert info.value.reason == "gcp.ak_cert_expired"


def test_google_evidence_against_foreign_roots(sim_platform: GcpVtpmPlatform) -> None:
    with pytest.raises(VerificationError) as info:
        sim_platform.verify_identity(NONCE_PB, [], NOW)
    assert info.value.reason == "gcp.ak_cert_chain"


def test_endorsement_must_be_empty(google: GcpVtpmPlatform) -> None:
    with pytest.raises(VerificationError) as info:
        google.verify_identity(NONCE_PB, [b"x"], NOW)
    assert info.value.reason == "endorsement.chain_invalid"


@pytest.mark.parametrize(
    ("evidence", "reason"),
    [
        (b"not json", "parse.gcp.evidence"),
        (b"42", "parse.gcp.evidence"),
        (b'{"quote": "AA=="}', "parse.gcp.evidence.attestation"),
        (b'"!!"', "parse.gcp.evidence"),
        (b'""', "parse.gcp.evidence"),
        (json.dumps(base64.b64encode(b"\x0a\x00").decode()).encode(), "parse.gcp.attestation.ak_pub"),
    ],
)
def test_malformed_evidence(google: GcpVtpmPlatform, evidence: bytes, reason: str) -> None:
    with pytest.raises(ParseError) as info:
        google.parse_evidence(evidence)
    assert info.value.reason == reason


# -- the simulated vTPM ---------------------------------------------------------------------------------


def test_simulated_vm_binds_the_kbs_challenge(vm: SimulatedGceVm, sim_platform: GcpVtpmPlatform) -> None:
    raw = gcp_vtpm_evidence(vm, "nonce-1", TEE_PUBKEY)
    info = sim_platform.parse_evidence(_kbs(raw))
    assert info.report_data == expected_report_data("nonce-1", TEE_PUBKEY)
    claims = sim_platform.verify_identity(info.evidence, [], datetime.now(UTC))
    assert claims["gcp.project_id"] == "remits-demo"
    assert claims["gcp.ak_cert.root"].endswith("CN=EK/AK CA Root")
    assert claims["tpm.pcr.sha256.0"] == vm.pcr(0).hex()
    assert claims["eventlog.secure_boot"] is True
    refs = {"pcr0": frozenset({vm.pcr(0).hex()}), "project_id": frozenset({"remits-demo"})}
    appraisal = sim_platform.appraise(info.evidence, claims, refs)
    assert appraisal.vector == {"instance-identity": 2, "hardware": 2, "configuration": 2, "executables": 2}
    assert appraisal.violations == []
    # Google's pinned roots do not know the test CA.
    with pytest.raises(VerificationError) as err:
        GcpVtpmPlatform().verify_identity(raw, [], datetime.now(UTC))
    assert err.value.reason == "gcp.ak_cert_chain"


def test_quotes_with_different_extra_data_are_refused(
    vm: SimulatedGceVm, sim_platform: GcpVtpmPlatform
) -> None:
    raw = pb_bytes(1, vm.ak_pub()) + pb_bytes(2, vm.quote(0x000B, b"a")) + pb_bytes(2, vm.quote(0x0004, b"b"))
    raw += pb_bytes(6, vm.ak_cert_der) + pb_bytes(7, vm.ca.intermediate.public_bytes(_DER))
    with pytest.raises(ParseError) as info:
        sim_platform.parse_evidence(_kbs(raw))
    assert info.value.reason == "parse.gcp.attestation.quotes.extra_data"
    with pytest.raises(VerificationError) as err:
        sim_platform.verify_identity(raw, [], datetime.now(UTC))
    assert err.value.reason == "gcp.quote_nonce_mismatch"


def test_extra_data_longer_than_64_bytes(vm: SimulatedGceVm, sim_platform: GcpVtpmPlatform) -> None:
    with pytest.raises(ParseError) as info:
        sim_platform.parse_evidence(_kbs(vm.attestation(b"\x01" * 65)))
    assert info.value.reason == "parse.gcp.attestation.quotes.extra_data"


def test_no_sha256_quote(vm: SimulatedGceVm, sim_platform: GcpVtpmPlatform) -> None:
    raw = pb_bytes(1, vm.ak_pub()) + pb_bytes(2, vm.quote(0x000C, b"n")) + pb_bytes(6, vm.ak_cert_der)
    raw += pb_bytes(7, vm.ca.intermediate.public_bytes(_DER))
    with pytest.raises(VerificationError) as info:
        sim_platform.verify_identity(raw, [], datetime.now(UTC))
    assert info.value.reason == "gcp.no_sha256_quote"


def test_ak_certificate_for_another_key(
    ca: SimulatedGoogleCa, vm: SimulatedGceVm, sim_platform: GcpVtpmPlatform
) -> None:
    other = SimulatedGceVm.create(ca, Instance(instance_name="other"))
    raw = dataclasses.replace(vm, ak_cert_der=other.ak_cert_der).attestation(b"n")
    with pytest.raises(VerificationError) as info:
        sim_platform.verify_identity(raw, [], datetime.now(UTC))
    assert info.value.reason == "gcp.ak_cert_key_mismatch"


def test_without_event_log_secure_boot_is_unknown(
    ca: SimulatedGoogleCa, sim_platform: GcpVtpmPlatform
) -> None:
    bare = SimulatedGceVm.create(ca, include_log=False)
    raw = bare.attestation(b"n")
    claims = sim_platform.verify_identity(raw, [], datetime.now(UTC))
    assert not any(name.startswith("eventlog.") for name in claims)
    appraisal = sim_platform.appraise(raw, claims, {"pcr0": frozenset({bare.pcr(0).hex()})})
    assert appraisal.vector["configuration"] == 32 and appraisal.vector["executables"] == 2
    assert appraisal.notes == ["eventlog.absent", "configuration.secure_boot_not_enabled"]
    missing = sim_platform.appraise(raw, claims, {"kernel_digest": frozenset({"aa" * 32})})
    assert [(v.field, v.got) for v in missing.violations] == [("kernel_digest", "absent")]


def test_secure_boot_off_is_a_warning_unless_provisioned(
    ca: SimulatedGoogleCa, sim_platform: GcpVtpmPlatform
) -> None:
    off = SimulatedGceVm.create(ca, secure_boot=False)
    raw = off.attestation(b"n")
    claims = sim_platform.verify_identity(raw, [], datetime.now(UTC))
    assert claims["eventlog.secure_boot"] is False
    assert sim_platform.appraise(raw, claims, {}).vector["configuration"] == 32
    accepted = sim_platform.appraise(raw, claims, {"secure_boot": frozenset({"false"})})
    assert accepted.vector["configuration"] == 2 and accepted.violations == []


def test_roots_file_must_load(tmp_path: Path) -> None:
    with pytest.raises(RemitsError) as info:
        GcpVtpmPlatform("gcp-vtpm", tmp_path / "missing.pem")
    assert info.value.reason == "config.gcp_ak_roots_path"


# -- default policy -----------------------------------------------------------------------------------------

VECTOR = {"instance-identity": 2, "hardware": 2, "configuration": 2, "executables": 2}


def _policy_input(**changes: object) -> dict[str, object]:
    base: dict[str, object] = {
        "tee": "gcp-vtpm",
        "claims": {"gcp.project_id": "p"},
        "platform_vector": VECTOR,
        "violations": [],
        "reference": {"pcr0": {"status": "matched", "record": "gcp-vtpm.pcr0@1"}},
        "revocations": [],
        "notes": [],
    }
    return {**base, **changes}


@pytest.mark.parametrize(
    ("changes", "reject"),
    [
        ({}, None),
        ({"tee": "snp"}, "policy.wrong_tee"),
        ({"reference": {"pcr0": {"status": "expired", "record": "r@1"}}}, "measurement.reference_expired"),
        (
            {
                "reference": {"pcr4": {"status": "expired", "record": "r@1"}},
                "violations": [{"field": "pcr4", "got": "a", "want": "b"}],
            },
            "measurement.reference_expired",
        ),
        ({"violations": [{"field": "pcr0", "got": "a", "want": "b"}]}, "measurement.not_in_reference_values"),
        (
            {"violations": [{"field": "kernel_digest", "got": "a", "want": "b"}]},
            "measurement.not_in_reference_values",
        ),
        (
            {
                "violations": [
                    {"field": "project_id", "got": "a", "want": "b"},
                    {"field": "pcr9", "got": "a", "want": "b"},
                ]
            },
            "measurement.not_in_reference_values",
        ),
        ({"violations": [{"field": "project_id", "got": "a", "want": "b"}]}, "policy.project_id"),
        ({"violations": [{"field": "secure_boot", "got": "false", "want": "true"}]}, "policy.secure_boot"),
    ],
)
def test_default_policy_decisions(changes: dict[str, object], reject: str | None) -> None:
    result = default_policy("attestation.gcp-vtpm").evaluate(_policy_input(**changes))
    assert result.get("reject") == reject
    if reject is None:
        assert result == {"vector": VECTOR, "notes": []}


def test_default_policy_applies_revocations() -> None:
    revoked = [{"kind": "chip_id", "value": COS_AK, "reason": "key leaked", "revoked_at": 1}]
    result = default_policy("attestation.gcp-vtpm").evaluate(
        _policy_input(revocations=revoked, notes=["measurement.no_reference_values"])
    )
    assert "reject" not in result
    assert result["vector"] == {**VECTOR, "hardware": 96}
    assert result["notes"] == ["measurement.no_reference_values", "revoked.chip_id: key leaked"]


# -- remits verify gcp-vtpm -------------------------------------------------------------------------------


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli_main(["verify", "gcp-vtpm", *argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("name", "nonce"), [("gce-cos-85-nonce9009.pb", "9009"), ("gce-cos-85-no-nonce.pb", "")]
)
def test_cli_verifies_the_real_vectors(capsys: pytest.CaptureFixture[str], name: str, nonce: str) -> None:
    code, out, _ = _cli(capsys, str(DATA / name), "--nonce", nonce, "--at", "2026-06-01T00:00:00Z", "--json")
    assert code == 0
    result = json.loads(out)
    assert result["verified"] is True
    claims = result["claims"]
    assert claims["nonce"] == nonce
    assert claims["gcp.project_id"] == COS_PROJECT and claims["gcp.instance_name"] == "cos-test"
    assert claims["pcrs"]["sha256"]["0"] == COS_PCR0
    assert sorted(claims["pcrs"]) == ["sha1", "sha256", "sha384"] and len(claims["pcrs"]["sha1"]) == 24
    assert not any(key.startswith("tpm.pcr.") for key in claims)


def test_cli_human_output_and_kbs_json(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "evidence.json"
    path.write_bytes(_kbs(NONCE_PB, "object"))
    code, out, _ = _cli(capsys, str(path), "--at", "2026-06-01")
    assert code == 0
    assert out.startswith("verified: GCE instance cos-test") and COS_PCR0 in out


@pytest.mark.parametrize(
    ("argv", "check"),
    [
        (["--nonce", "9009"], "tpm.nonce_mismatch"),
        (["--at", "2052-01-01T00:00:00Z"], "gcp.ak_cert_expired"),
    ],
)
def test_cli_reports_the_failed_check(
    capsys: pytest.CaptureFixture[str], argv: list[str], check: str
) -> None:
    code, out, _ = _cli(capsys, str(DATA / "gce-cos-85-no-nonce.pb"), "--at", "2026-06-01", *argv)
    assert code == 1
    assert json.loads(out)["verified"] is False and json.loads(out)["check"] == check


def test_cli_foreign_roots_and_tampering(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, roots_file: Path
) -> None:
    code, out, _ = _cli(
        capsys, str(DATA / "gce-cos-85-nonce9009.pb"), "--at", "2026-06-01", "--roots", str(roots_file)
    )
    assert code == 1 and json.loads(out)["check"] == "gcp.ak_cert_chain"
    sha256 = next(q for q in parse_attestation(NONCE_PB).quotes if q.hash_name == "sha256")
    bad = tmp_path / "bad.pb"
    bad.write_bytes(_flip(NONCE_PB, sha256.signature))
    code, out, _ = _cli(capsys, str(bad), "--at", "2026-06-01")
    assert code == 1 and json.loads(out)["check"] == "tpm.signature_invalid"


def test_cli_verifies_the_simulated_vm_with_its_roots(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, vm: SimulatedGceVm, roots_file: Path
) -> None:
    path = tmp_path / "sim.pb"
    path.write_bytes(vm.attestation(b"\xab\xcd"))
    code, out, _ = _cli(capsys, str(path), "--nonce", "abcd", "--roots", str(roots_file), "--json")
    assert code == 0
    assert json.loads(out)["claims"]["pcrs"]["sha256"]["0"] == vm.pcr(0).hex()


@pytest.mark.parametrize(
    "argv",
    [
        ["/nonexistent/evidence.pb"],
        [str(DATA / "gce-cos-85-nonce9009.pb"), "--nonce", "xyz"],
        [str(DATA / "gce-cos-85-nonce9009.pb"), "--at", "yesterday"],
        [str(DATA / "gce-cos-85-nonce9009.pb"), "--roots", "/nonexistent/roots.pem"],
    ],
)
def test_cli_usage_errors(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    code, out, err = _cli(capsys, *argv)
    assert code == 2 and out == "" and "error" in json.loads(err)


def test_cli_missing_argument_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli_main(["verify", "gcp-vtpm"])
    assert info.value.code == 2
    capsys.readouterr()


def test_cli_eventlog_replaces_the_attestations_log(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    # The same VM's own log verifies; another machine's log (the Ubuntu one) does not replay.
    own = tmp_path / "own.bin"
    own.write_bytes(parse_attestation(NONCE_PB).event_log)
    code, out, _ = _cli(capsys, str(DATA / "gce-cos-85-nonce9009.pb"), "--at", "2026-06-01", "--eventlog", str(own), "--json")
    assert code == 0 and json.loads(out)["claims"]["eventlog.secure_boot"] is True
    other = Path(__file__).resolve().parents[1] / "data" / "tpm" / "eventlog" / "ubuntu-2404-amd-sevsnp.bin"
    code, out, _ = _cli(capsys, str(DATA / "gce-cos-85-nonce9009.pb"), "--at", "2026-06-01", "--eventlog", str(other))
    assert code == 1 and json.loads(out)["check"] == "tpm.eventlog_replay"
    code, _, _ = _cli(capsys, str(DATA / "gce-cos-85-nonce9009.pb"), "--eventlog", str(tmp_path / "missing"))
    assert code == 2
