"""The SNP pipeline adapter on the real vectors: evidence shapes, endorsement plan, identity,
appraisal. Pure: no NATS, no Redis; time is each case's verify_at."""

from __future__ import annotations

import base64
import json
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from shared.errors import ParseError, VerificationError
from shared.platforms.snp.certs import pinned_roots
from shared.platforms.snp.platform import SnpPlatform, policy_from_references

DATA = Path(__file__).resolve().parents[1] / "data"
REPORTS = DATA / "snp" / "reports"
CASES = sorted(p.name for p in REPORTS.iterdir() if (p / "expected.json").exists())


def load(case: str) -> tuple[bytes, bytes, dict]:
    folder = REPORTS / case
    return (folder / "report.bin").read_bytes(), (folder / "vek.der").read_bytes(), json.loads((folder / "expected.json").read_text())


def at(expected: dict) -> datetime:
    return datetime.fromisoformat(expected["verify_at"].replace("Z", "+00:00"))


@pytest.fixture(scope="module")
def platform() -> SnpPlatform:
    return SnpPlatform(pinned_roots(), "https://kds.example")


def test_trustee_attester_evidence_is_reserialised_byte_for_byte(platform: SnpPlatform) -> None:
    info = platform.parse_evidence((DATA / "kbs" / "snp-e2e-evidence.json").read_bytes())
    report, vek, expected = load("genoa_v3_trustee_e2e")
    assert info.evidence == report
    assert info.carried_endorsement == (vek,)
    assert info.report_data.hex() == expected["report"]["report_data"]
    assert info.init_data_binding == bytes.fromhex(expected["report"]["host_data"])


@pytest.mark.parametrize("case", CASES)
def test_raw_report_shapes_and_identity(platform: SnpPlatform, case: str) -> None:
    report, vek, expected = load(case)
    b64 = base64.b64encode(report).decode()
    for shape in (json.dumps(b64), json.dumps({"report": b64})):
        assert platform.parse_evidence(shape.encode()).evidence == report
    claims = platform.verify_identity(report, [vek, b""], at(expected))
    assert claims["snp.measurement"] == expected["report"]["measurement"]
    assert claims["snp.chip_id"] == expected["report"]["chip_id"]
    assert claims["snp.signing_key"] == expected["signer"]
    assert claims["snp.crl_checked"] is False
    # Outside the window the (cached) chain verdict does not help: it is re-checked at each use.
    after = datetime.fromisoformat(expected["valid_window"]["not_after"].replace("Z", "+00:00")) + timedelta(seconds=1)
    with pytest.raises(VerificationError) as err:
        platform.verify_identity(report, [vek, b""], after)
    assert err.value.check == "snp.cert_validity"


@pytest.mark.parametrize("case", [c for c in CASES if load(c)[2]["signer"] == "VCEK" and load(c)[2].get("kds_vcek_url")])
def test_endorsement_plan_asks_kds_for_the_vcek_and_the_crl(case: str) -> None:
    report, vek, expected = load(case)
    platform = SnpPlatform(pinned_roots())  # the real KDS base
    plan = platform.endorsement_requests(report, ())
    assert plan[0].url == expected["kds_vcek_url"]
    assert plan[0].cache_key.startswith("vcek:")
    assert plan[1].optional and plan[1].url.endswith("/crl")
    # A VCEK the guest carried replaces the fetch; the CRL is still asked for.
    carried = platform.endorsement_requests(report, (vek,))
    assert [r.optional for r in carried] == [True]
    assert platform.assemble_endorsement([None], (vek,)) == [vek, b""]


def test_vlek_is_never_fetched_from_kds(platform: SnpPlatform) -> None:
    report, _, _ = load("milan_v3_vlek_aws_trustee")
    plan = platform.endorsement_requests(report, ())
    assert plan[0].url == "" and plan[0].cache_key.startswith("vlek:")


def test_wrong_vek_is_rejected_with_its_check(platform: SnpPlatform) -> None:
    report, _, expected = load("genoa_v3_trustee_e2e")
    _, other_vek, _ = load("genoa_v3_azure")
    with pytest.raises(VerificationError) as err:
        platform.verify_identity(report, [other_vek, b""], at(expected))
    assert err.value.check in {"snp.tcb_binding", "snp.chip_id_binding"}


def test_document_ttl_follows_certificate_validity(platform: SnpPlatform) -> None:
    report, vek, expected = load("genoa_v3_trustee_e2e")
    request = platform.endorsement_requests(report, ())[0]
    ttl = platform.document_ttl(request, vek, at(expected))
    assert ttl is not None and 0 < ttl < 8 * 365 * 86400


def test_appraisal_and_policy_from_reference_values(platform: SnpPlatform) -> None:
    report, _, expected = load("genoa_v3_trustee_e2e")
    measurement = expected["report"]["measurement"]
    ok = platform.appraise(report, {}, {"measurement": frozenset({measurement})})
    assert ok.violations == [] and ok.vector["executables"] == 2 and ok.vector["runtime-opaque"] == 2
    unknown = platform.appraise(report, {}, {})
    assert unknown.violations == [] and unknown.vector["executables"] == 33
    bad = platform.appraise(
        report,
        {},
        {"measurement": frozenset({"00" * 48}), "min_tcb.snp": frozenset({"200"}), "host_data": frozenset({"11" * 32})},
    )
    assert {v.field for v in bad.violations} == {"measurement", "reported_tcb.snp", "host_data"}
    policy = policy_from_references({"min_tcb.microcode": frozenset({"0x20", "12"}), "allow_debug": frozenset({"true"})})
    assert policy.min_tcb.microcode == 32 and policy.allow_debug
    with pytest.raises(ParseError):
        policy_from_references({"measurement": frozenset({"zz"})})


@pytest.mark.parametrize("evidence", [b"", b"[]", b'{"report": 5}', b'"!!!"', b'{"attestation_report": {}}', b"{" * 5000])
def test_malformed_evidence_is_a_parse_error(platform: SnpPlatform, evidence: bytes) -> None:
    with pytest.raises(ParseError):
        platform.parse_evidence(evidence)


def _table(entries: list[tuple[bytes, bytes]]) -> bytes:
    import struct

    header_size = 24 * (len(entries) + 1)
    header, blobs, offset = b"", b"", header_size
    for guid, blob in entries:
        header += struct.pack("<16sII", guid, offset, len(blob))
        blobs += blob
        offset += len(blob)
    return header + bytes(24) + blobs


def test_extended_report_certificate_table_carries_the_vcek(platform: SnpPlatform) -> None:
    import uuid

    from shared.platforms.snp.evidence import parse_cert_table

    report, vek, _ = load("genoa_v3_trustee_e2e")
    vcek_guid = uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd").bytes
    unknown = uuid.UUID("00000000-0000-0000-0000-000000000001").bytes
    table = _table([(unknown, b"ignored"), (vcek_guid, vek)])
    assert parse_cert_table(table) == (("VCEK", vek),)
    doc = {"report": base64.b64encode(report).decode(), "cert_table": base64.b64encode(table).decode()}
    assert platform.parse_evidence(json.dumps(doc).encode()).carried_endorsement == (vek,)
    broken = bytearray(table)
    broken[24 + 16 : 24 + 20] = (10_000).to_bytes(4, "little")  # offset past the end
    with pytest.raises(ParseError):
        parse_cert_table(bytes(broken))
    with pytest.raises(ParseError):
        parse_cert_table(table[:30])  # no terminating entry


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=2048), st.recursive(st.none() | st.integers() | st.text(max_size=20), lambda c: st.lists(c, max_size=5) | st.dictionaries(st.sampled_from(["report", "attestation_report", "cert_chain", "cert_table", "signature", "r"]), c, max_size=4)).map(lambda v: json.dumps(v).encode())))
def test_any_evidence_bytes_only_raise_parse_error(evidence: bytes) -> None:
    platform = SnpPlatform(pinned_roots())
    try:
        platform.parse_evidence(evidence)
    except ParseError:
        pass


def test_a_carried_certificate_of_the_wrong_kind_is_not_used(platform: SnpPlatform) -> None:
    report, vek, _ = load("genoa_v3_trustee_e2e")  # a VCEK-signed report
    doc = {"report": base64.b64encode(report).decode(), "cert_chain": [{"cert_type": "VLEK", "data": list(vek)}]}
    info = platform.parse_evidence(json.dumps(doc).encode())
    assert info.carried_endorsement == ()
    assert platform.endorsement_requests(report, info.carried_endorsement)[0].cache_key.startswith("vcek:")
