from __future__ import annotations

import threading
from typing import Any

import pytest

from shared.ear import status_of
from shared.policy import (
    EVALUATION_FAILED,
    INVALID,
    PolicyCache,
    PolicyError,
    compile_policy,
    default_policy,
    default_policy_source,
    explain,
)
from shared.policy.paths import input_paths, prune

AFFIRMING = {"instance-identity": 2, "hardware": 2, "configuration": 2, "executables": 2, "runtime-opaque": 2}
# The measurement field each TEE's platform reports, and its reference-value name.
MEASUREMENT_FIELDS = {
    "sample": ["measurement"],
    "snp": ["measurement"],
    "tdx": ["tdx.quote.body.mr_td", "mr_td"],
    "sgx": ["sgx.quote.body.mr_enclave", "mr_enclave"],
}
TEES = list(MEASUREMENT_FIELDS)


def attestation(tee: str, **changes: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "tee": tee,
        "claims": {f"{tee}.measurement": "ab" * 48, f"{tee}.report_data": "00" * 64},
        "platform_vector": dict(AFFIRMING),
        "violations": [],
        "reference": {"measurement": {"status": "matched", "record": f"{tee}/measurement@3"}},
        "revocations": [],
        "notes": [],
    }
    document.update(changes)
    return document


def resource_request(**changes: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "token": {
            "status": "affirming",
            "tee": "snp",
            "iat": 1_700_000_000,
            "exp": 1_700_003_600,
            "jti": "0f" * 16,
            "measurement": "ab" * 48,
            "claims": {},
        },
        "resource": {
            "path": "repo/type/tag",
            "binding": {"tees": ["snp"], "measurements": ["ab" * 48], "allow_sample": False},
        },
        "revocations": [],
        "now": 1_700_000_500,
    }
    document.update(changes)
    return document


def token(**changes: Any) -> dict[str, Any]:
    return {**resource_request()["token"], **changes}


def binding(**changes: Any) -> dict[str, Any]:
    return {"path": "repo/type/tag", "binding": {**resource_request()["resource"]["binding"], **changes}}


# --- default attestation policies ---------------------------------------------------------------


@pytest.mark.parametrize("tee", TEES)
def test_affirming_keeps_the_platform_vector(tee: str) -> None:
    result = default_policy(f"attestation.{tee}").evaluate(attestation(tee))
    assert result == {"vector": AFFIRMING, "notes": []}
    assert status_of(result["vector"]) == "affirming"


@pytest.mark.parametrize("tee", TEES)
def test_warning_tiers_come_from_the_platform(tee: str) -> None:
    vector = {**AFFIRMING, "executables": 33, "hardware": 32}
    notes = ["measurement.no_reference_values", "tcb_status.OutOfDate"]
    result = default_policy(f"attestation.{tee}").evaluate(
        attestation(tee, platform_vector=vector, notes=notes)
    )
    assert result == {"vector": vector, "notes": notes}
    assert status_of(result["vector"]) == "warning"


@pytest.mark.parametrize("tee", TEES)
def test_revocations_contraindicate_the_claim_they_discredit(tee: str) -> None:
    policy = default_policy(f"attestation.{tee}")
    image = [{"kind": "measurement", "value": "ab" * 48, "reason": "CVE-2025-1"}]
    result = policy.evaluate(attestation(tee, revocations=image, notes=["n"]))
    assert result == {
        "vector": {**AFFIRMING, "executables": 96},
        "notes": ["n", "revoked.measurement: CVE-2025-1"],
    }
    assert status_of(result["vector"]) == "contraindicated"
    platform = [
        {"kind": "chip_id", "value": "cd" * 64, "reason": "key leaked"},
        {"kind": "fmspc", "value": "00906ed50000", "reason": "vulnerable family"},
    ]
    result = policy.evaluate(attestation(tee, revocations=platform))
    assert result["vector"] == {**AFFIRMING, "hardware": 96}
    assert result["notes"] == ["revoked.chip_id: key leaked", "revoked.fmspc: vulnerable family"]


@pytest.mark.parametrize(
    ("tee", "field"), [(tee, field) for tee, fields in MEASUREMENT_FIELDS.items() for field in fields]
)
def test_measurement_violation_rejects_as_not_in_reference_values(tee: str, field: str) -> None:
    violations = [
        {"field": "svn", "got": "1", "want": ">= 2"},
        {"field": field, "got": "ab" * 48, "want": 'one of: "cd"'},
    ]
    result = default_policy(f"attestation.{tee}").evaluate(attestation(tee, violations=violations))
    assert result["reject"] == "measurement.not_in_reference_values"
    # The detail lists every violation (as JSON, quotes escaped), for the operator to fix at once.
    assert result["detail"] == (
        '[{"field":"svn","got":"1","want":">= 2"},'
        f'{{"field":"{field}","got":"{"ab" * 48}","want":"one of: \\"cd\\""}}]'
    )
    assert result["vector"] == AFFIRMING


@pytest.mark.parametrize("tee", TEES)
def test_other_violations_reject_with_the_first_field(tee: str) -> None:
    violations = [
        {"field": "policy.debug", "got": "true", "want": "false"},
        {"field": "vmpl", "got": "1", "want": "0"},
    ]
    result = default_policy(f"attestation.{tee}").evaluate(attestation(tee, violations=violations))
    assert result["reject"] == "policy.policy.debug"


@pytest.mark.parametrize("tee", TEES)
def test_expired_reference_values_reject(tee: str) -> None:
    reference = {
        "measurement": {"status": "expired", "record": f"{tee}/measurement@2"},
        "host_data": {"status": "expired", "record": f"{tee}/host_data@1"},
        "min_svn": {"status": "matched", "record": f"{tee}/min_svn@1"},
    }
    result = default_policy(f"attestation.{tee}").evaluate(attestation(tee, reference=reference))
    assert result["reject"] == "measurement.reference_expired"
    assert result["detail"] == "host_data, measurement"


@pytest.mark.parametrize("tee", TEES)
def test_evidence_from_another_tee_is_refused(tee: str) -> None:
    other = "snp" if tee != "snp" else "tdx"
    result = default_policy(f"attestation.{tee}").evaluate(attestation(other))
    assert result["reject"] == "policy.wrong_tee"
    assert result["detail"] == f"this policy is for {tee} evidence, not {other}"


def test_expiry_is_reported_before_the_failed_check_it_causes() -> None:
    # A measurement only an expired record vouches for also fails the check against the live
    # records; the operator needs to read "expired", not "unknown image".
    policy = default_policy("attestation.snp")
    expired = {"measurement": {"status": "expired", "record": "snp/measurement@2"}}
    violations = [{"field": "measurement", "got": "aa", "want": "bb"}]
    both = attestation("snp", violations=violations, reference=expired)
    result = policy.evaluate(both)
    assert result["reject"] == "measurement.reference_expired"
    assert result["detail"] == "measurement"
    assert policy.evaluate(attestation("snp", violations=violations))["reject"] == (
        "measurement.not_in_reference_values"
    )
    assert policy.evaluate({**both, "tee": "sample"})["reject"] == "policy.wrong_tee"


# --- default resource policy --------------------------------------------------------------------


def test_resource_allows_an_affirming_bound_token() -> None:
    assert default_policy("resource").evaluate(resource_request()) == {"allow": True, "reason": "ok"}


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"token": token(status="warning")}, "token.not_affirming"),
        ({"token": token(status="contraindicated")}, "token.not_affirming"),
        ({"now": 1_700_003_600}, "token.expired"),
        (
            {"revocations": [{"kind": "token_id", "value": "0f" * 16, "reason": "lost", "revoked_at": 1}]},
            "token.revoked",
        ),
        ({"resource": binding(tees=["tdx"])}, "resource.tee_not_bound"),
        ({"resource": binding(measurements=["cd" * 48])}, "resource.measurement_not_bound"),
        ({"token": token(tee="sample"), "resource": binding(tees=[])}, "resource.sample_tee_not_enabled"),
        (
            {"token": token(tee="sample"), "resource": {"path": "p", "binding": {}}},
            "resource.sample_tee_not_enabled",
        ),
        # The workload's init-data digest: a token with none, or another, is not that workload.
        ({"token": token(init_data=""), "resource": binding(init_data=["aa" * 32])}, "resource.init_data_not_bound"),
        ({"token": token(init_data="bb" * 32), "resource": binding(init_data=["aa" * 32])}, "resource.init_data_not_bound"),
        ({"resource": binding(init_data=["aa" * 32])}, "resource.init_data_not_bound"),  # no init_data at all
        ({"token": token(tenant="team-a"), "resource": binding(tenants=["team-b"])}, "resource.tenant_not_bound"),
        ({"resource": binding(tenants=["team-b"])}, "resource.tenant_not_bound"),  # a token naming no tenant
        # Missing or malformed parts of the token deny; they never skip a check.
        ({"token": {"tee": "snp", "measurement": "", "claims": {}}}, "token.not_affirming"),
        ({"token": token(exp=None)}, "token.expired"),
    ],
)
def test_resource_denials(changes: dict[str, Any], reason: str) -> None:
    result = default_policy("resource").evaluate(resource_request(**changes))
    assert result == {"allow": False, "reason": reason}


def test_resource_bound_to_init_data_and_tenant_goes_to_that_workload() -> None:
    request = resource_request(
        token=token(init_data="aa" * 32, tenant="team-a"),
        resource=binding(init_data=["cc" * 32, "aa" * 32], tenants=["team-a"]),
    )
    assert default_policy("resource").evaluate(request) == {"allow": True, "reason": "ok"}


@pytest.mark.parametrize(
    "resource",
    [
        {"path": "p", "binding": {}},
        {"path": "p", "binding": {"tees": [], "measurements": None}},
        {"path": "p"},
    ],
)
def test_resource_unset_bindings_place_no_constraint(resource: dict[str, Any]) -> None:
    assert default_policy("resource").evaluate(resource_request(resource=resource))["allow"] is True


def test_resource_sample_tee_needs_the_opt_in() -> None:
    request = resource_request(
        token=token(tee="sample"), resource=binding(tees=["sample"], allow_sample=True)
    )
    assert default_policy("resource").evaluate(request) == {"allow": True, "reason": "ok"}


# --- compiling ----------------------------------------------------------------------------------


def test_syntax_errors_are_refused_with_their_position() -> None:
    with pytest.raises(PolicyError) as err:
        compile_policy("attestation.x", "attestation", "package remits.attestation\n\nresult := {\n")
    assert err.value.field == "rego" and err.value.reason == INVALID
    assert "3:11" in err.value.detail


@pytest.mark.parametrize(
    ("rego", "field", "detail"),
    [
        ("package remits.attestation\n\nfoo := 1\n", "result", "no `result` rule"),
        ("package remits.attestation\nimport rego.v1\nresult := {} if input.never\n", "result", "undefined"),
        ("package remits.resource\nresult := 1\n", "package", "remits.attestation"),
        ("# no package\nresult := 1\n", "package", "found none"),
        (
            'package remits.attestation\nresult := {"vector": {"executable": 2}, "notes": []}\n',
            "result.vector",
            "executable",
        ),
        (
            'package remits.attestation\nresult := {"vector": {}, "notes": [], "rejected": "x"}\n',
            "result",
            "rejected",
        ),
        ("package remits.attestation\nresult := 1\nresult := 2\n", "result", "multiple outputs"),
        ("package remits.attestation\nresult := nosuch(1)\n", "result", "Function not found: nosuch"),
        ("package remits.attestation\nresult := 1 / count(input.notes)\n", "result", "divide by zero"),
    ],
)
def test_unusable_policies_are_refused_at_compile_time(rego: str, field: str, detail: str) -> None:
    with pytest.raises(PolicyError) as err:
        compile_policy("attestation.x", "attestation", rego)
    assert (err.value.field, err.value.reason) == (field, INVALID)
    assert detail in err.value.detail


def test_compiled_policy_carries_its_version() -> None:
    rego = default_policy_source("attestation.snp")
    policy = compile_policy("attestation.snp", "attestation", rego, revision=7)
    assert (policy.id, policy.kind, policy.revision) == ("attestation.snp", "attestation", 7)
    assert len(policy.digest) == 64 and policy.rego == rego
    with pytest.raises(PolicyError) as err:
        compile_policy("x", "decision", rego)
    assert err.value.field == "kind"


def test_evaluation_failures_are_errors_not_results() -> None:
    rego = (
        "package remits.attestation\nimport rego.v1\n"
        'result := {"vector": {}, "notes": []} if input.tee == "snp"\n'
        'result := {"vector": {}, "notes": ["other"]} if input.notes == ["x"]\n'
        'result := {"vector": {}, "notes": []} if input.tee == "x"\n'
    )
    policy = compile_policy("attestation.x", "attestation", rego)
    with pytest.raises(PolicyError) as err:
        policy.evaluate(attestation("tdx"))
    assert (err.value.field, err.value.reason) == ("result", EVALUATION_FAILED)
    with pytest.raises(PolicyError, match="multiple outputs") as err:
        policy.evaluate(attestation("snp", notes=["x"]))
    assert err.value.reason == EVALUATION_FAILED
    with pytest.raises(PolicyError) as err:
        policy.evaluate({"tee": "snp"})
    assert err.value.field == "input"


# --- custom policies ----------------------------------------------------------------------------

STRICT = """
package remits.attestation

import rego.v1

# Debug guests are refused (a single claim: only that one is handed to the engine)...
result := {"vector": input.platform_vector, "notes": input.notes, "reject": "policy.debug"} if {
	input.claims["snp.policy.debug"] == true
} else := {"vector": vector, "notes": input.notes}

# ...and unknown images are not a warning here: no reference values means no trust.
vector := object.union(input.platform_vector, {"executables": 96}) if {
	input.platform_vector.executables == 33
} else := input.platform_vector
"""


def test_a_custom_policy_can_be_stricter() -> None:
    policy = compile_policy("attestation.snp", "attestation", STRICT)
    unknown = attestation("snp", platform_vector={**AFFIRMING, "executables": 33})
    assert policy.evaluate(unknown)["vector"] == {**AFFIRMING, "executables": 96}
    assert status_of(policy.evaluate(unknown)["vector"]) == "contraindicated"
    assert policy.evaluate(attestation("snp")) == {"vector": AFFIRMING, "notes": []}
    debug = attestation("snp", claims={"snp.policy.debug": True, "snp.vmpl": 0})
    assert policy.evaluate(debug)["reject"] == "policy.debug"


EXACT = """
package remits.attestation

import rego.v1

result := {"vector": {}, "notes": input.notes, "detail": detail}

detail := "exact" if {
	input.notes == ["a\\"b\\\\c\\nd é"]
} else := json.marshal(input.claims)
"""


def test_values_reach_the_policy_exactly() -> None:
    policy = compile_policy("attestation.x", "attestation", EXACT)
    # Quotes, backslashes, control characters and non-ASCII text.
    notes = ['a"b\\c\nd é']
    assert policy.evaluate(attestation("x", notes=notes)) == {"vector": {}, "notes": notes, "detail": "exact"}
    # Floats and integers beyond 64 bits.
    claims = {"f": 0.1234567891, "i": 2**63 + 1}
    detail = policy.evaluate(attestation("x", claims=claims))["detail"]
    assert detail == '{"f":0.1234567891,"i":9223372036854775809}'


def test_json_marshal_of_an_input_array() -> None:
    # rego-cpp cannot marshal arrays from its input builder; the engine redoes such an evaluation
    # through the parser, so operators can marshal input arrays as they would anywhere else.
    rego = (
        "package remits.attestation\nimport rego.v1\n"
        'result := {"vector": {}, "notes": [], "detail": json.marshal(input.violations)}\n'
    )
    policy = compile_policy("attestation.x", "attestation", rego)
    violations = [{"field": "svn", "got": "1", "want": "2"}]
    assert (
        policy.evaluate(attestation("x", violations=violations))["detail"]
        == '[{"field":"svn","got":"1","want":"2"}]'
    )


def test_interleaved_inputs_are_not_mixed_up() -> None:
    # The engine keeps recent native inputs; alternating inputs must still each get their answer.
    policy = default_policy("attestation.sample")
    inputs = [attestation("sample", notes=[str(i)]) for i in range(12)]
    for _ in range(3):
        for i, document in enumerate(inputs):
            assert policy.evaluate(document)["notes"] == [str(i)]


def test_concurrent_evaluations() -> None:
    policy = default_policy("attestation.snp")
    failures: list[str] = []

    def worker(n: int) -> None:
        for i in range(100):
            revoked = [{"kind": "measurement", "value": "x", "reason": f"{n}-{i}"}] if i % 2 else []
            result = policy.evaluate(attestation("snp", revocations=revoked))
            expected = 96 if i % 2 else 2
            if result["vector"]["executables"] != expected or (
                i % 2 and result["notes"] != [f"revoked.measurement: {n}-{i}"]
            ):
                failures.append(f"{n}-{i}: {result}")

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


# --- input pruning ------------------------------------------------------------------------------


def test_only_the_input_a_policy_names_reaches_it() -> None:
    rego = (
        "# input.everything in a comment does not count\n"
        "package remits.attestation\nimport rego.v1\n"
        'x := input.claims["snp.measurement"]\ny := input.claims.tdx_x\nz := input.platform_vector\n'
        's := "#"; t := input["tee"]\n'
    )
    paths = input_paths(rego)
    assert paths == {"claims": {"snp.measurement", "tdx_x"}, "platform_vector": None, "tee": None}
    document = attestation("snp", claims={"snp.measurement": "m", "snp.chip_id": "c"})
    assert prune(document, paths) == {
        "claims": {"snp.measurement": "m"},
        "platform_vector": AFFIRMING,
        "tee": "snp",
    }
    # Anything but a literal path keeps the whole input (or the whole field).
    assert input_paths("package p\nresult := walk(input)\n") is None
    assert input_paths("package p\nresult := input[k]\n") is None
    assert input_paths('package p\nresult := input.claims[k]\nx := input.claims["a"]\n') == {"claims": None}
    assert input_paths('package p\nx := "input"\n') is None


# --- cache --------------------------------------------------------------------------------------


def test_cache_compiles_each_version_once() -> None:
    cache = PolicyCache(max_entries=2)
    snp, sample = default_policy_source("attestation.snp"), default_policy_source("attestation.sample")
    first = cache.get_or_compile("attestation.snp", "attestation", snp, revision=1)
    assert cache.get_or_compile("attestation.snp", "attestation", snp, revision=1) is first
    assert cache.compilations == 1
    # The same text stored again at a new revision is the same version: no recompilation.
    again = cache.get_or_compile("attestation.snp", "attestation", snp, revision=2)
    assert (again.revision, again.digest, cache.compilations) == (2, first.digest, 1)
    assert again.evaluate(attestation("snp")) == first.evaluate(attestation("snp"))
    edited = snp.replace("contraindicated := 96", "contraindicated := 97")
    assert cache.get_or_compile("attestation.snp", "attestation", edited).digest != first.digest
    assert cache.compilations == 2
    # Bounded: a third version evicts the least recently used one.
    cache.get_or_compile("attestation.sample", "attestation", sample)
    cache.get_or_compile("attestation.snp", "attestation", snp, revision=2)
    assert cache.compilations == 4


def test_cache_size_is_an_operator_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.config import Settings

    monkeypatch.delenv("REMITS_POLICY_CACHE_ENTRIES", raising=False)
    assert Settings.from_env().policy_cache_entries == 64
    monkeypatch.setenv("REMITS_POLICY_CACHE_ENTRIES", "300")
    assert Settings.from_env().policy_cache_entries == 300


def test_cache_remembers_broken_versions() -> None:
    cache = PolicyCache()
    for _ in range(2):
        with pytest.raises(PolicyError) as err:
            cache.get_or_compile("attestation.x", "attestation", "package remits.attestation\nresult := {\n")
        assert err.value.field == "rego"
    assert cache.compilations == 1


def test_defaults() -> None:
    assert default_policy("resource") is default_policy("resource")
    assert default_policy("attestation.tdx").kind == "attestation"
    assert "package remits.resource" in default_policy_source("resource")
    with pytest.raises(PolicyError) as err:
        default_policy_source("attestation.nitro")
    assert err.value.field == "id"


# --- explain ------------------------------------------------------------------------------------


def test_explain() -> None:
    policy = default_policy("attestation.snp")
    document = attestation(
        "snp", platform_vector={**AFFIRMING, "executables": 33}, notes=["measurement.no_reference_values"]
    )
    lines = explain(policy, document, policy.evaluate(document))
    assert lines[1:] == [
        "tee: snp",
        "status: warning",
        "vector:",
        "  instance-identity: 2 (affirming)",
        "  configuration: 2 (affirming)",
        "  executables: 33 (warning)",
        "  hardware: 2 (affirming)",
        "  runtime-opaque: 2 (affirming)",
        "notes:",
        "  - measurement.no_reference_values",
    ]
    assert lines[0].startswith(f"policy: attestation.snp (revision 0, sha256 {policy.digest[:12]}")
    rejected = attestation("snp", violations=[{"field": "vmpl", "got": "1", "want": "0"}])
    lines = explain(policy, rejected, policy.evaluate(rejected))
    assert lines[2:4] == ["status: rejected (policy.vmpl)", 'detail: [{"field":"vmpl","got":"1","want":"0"}]']
    resource = default_policy("resource")
    lines = explain(resource, resource_request(), resource.evaluate(resource_request()))
    assert lines[1:] == ["resource: repo/type/tag", "decision: allow (ok)"]


# --- answers kept per input ---------------------------------------------------------------------


def test_a_pure_policy_answers_a_repeated_input_from_memory() -> None:
    policy = compile_policy("attestation.sample", "attestation", default_policy_source("attestation.sample"))
    program = policy._program
    kept = len(program._results)  # type: ignore[arg-type]  # the compile-time probe's answer
    first = policy.evaluate(attestation("sample"))
    assert len(program._results) == kept + 1  # type: ignore[arg-type]
    assert policy.evaluate(attestation("sample")) == first
    assert len(program._results) == kept + 1  # type: ignore[arg-type]
    # A different input is evaluated, not confused with the first.
    revoked = attestation("sample", revocations=[{"kind": "measurement", "value": "aa", "reason": "r", "revoked_at": 1}])
    assert policy.evaluate(revoked)["vector"]["executables"] == 96
    assert len(program._results) == kept + 2  # type: ignore[arg-type]


def test_a_policy_reading_the_clock_is_evaluated_every_time() -> None:
    source = """package remits.resource
import rego.v1

result := {"allow": time.now_ns() > 0, "reason": "ok"}
"""
    policy = compile_policy("resource", "resource", source)
    assert policy._program._results is None
    assert policy.evaluate(resource_request()) == {"allow": True, "reason": "ok"}
