# REMITS default attestation policy for Arm CCA realms.
#
# Copy this file to write your own. REMITS evaluates `data.remits.attestation.result` once per
# attestation, after the token's platform signature (CPAK from the trust-anchor store), realm
# signature (RAK), RAK binding, lifecycle and challenge were verified, and expects
#
#   {"vector": {AR4SI claim: int}, "notes": [string], "reject": string?, "detail": string?}
#
# What the policy reads:
#   input.tee             "cca"
#   input.claims          "cca.realm.rim", "cca.realm.rem0".."cca.realm.rem3", "cca.realm.rpv",
#                         "cca.realm.profile", "cca.realm.hash_alg", "cca.platform.implementation_id",
#                         "cca.platform.instance_id", "cca.platform.lifecycle",
#                         "cca.platform.sw_components" [{type, measurement, version, signer_id}], ...
#   input.reference       per reference name ("rim", "rem0".., "rpv", "sw_component",
#                         "platform_config"): {"status": matched|expired|different|absent|configured}
#   input.platform_vector the AR4SI vector the platform computed (executables 33 when no RIM is
#                         provisioned)
#   input.violations      [{"field", "got", "want"}]: every claim that is not among its reference values,
#                         named by its claim ("cca.realm.rim", "cca.platform.sw_components[3]", ...)
#   input.revocations     [{"kind", "value", "reason"}]: "measurement" (the RIM), "chip_id" (instance id)
#   input.notes           the platform's notes
#
# Claim values: 2..31 affirming, 32..95 warning, 96 and up contraindicated. REMITS derives the
# overall status (the worst tier in the vector); `reject` refuses the attestation outright.
package remits.attestation

import rego.v1

# The TEE this policy judges: evidence from any other TEE is refused, not judged by the wrong rules.
tee := "cca"

# Failed checks on these fields mean "this is not an approved workload": the realm's initial and extensible measurements and the platform's
# software components.
measurement_fields := {"cca.realm.rim", "cca.realm.rem0", "cca.realm.rem1", "cca.realm.rem2", "cca.realm.rem3"}

measurement_field(field) if field in measurement_fields

measurement_field(field) if startswith(field, "cca.platform.sw_components[")

# The claim a revocation discredits. For CCA the "chip" is the platform's instance id (revocation kind chip_id):
# a revoked platform taints the hardware. Other kinds are noted only.
revoked_claim := {
	"measurement": "executables",
	"chip_id": "hardware",
}

contraindicated := 96

# The decision, first match wins: wrong TEE, expired reference values, failed checks, else the platform's vector with revocations applied. Every branch is
# defined for a well-formed input: REMITS treats an undefined `result` as an error and refuses.
# (The violations are copied by a comprehension before json.marshal: rego-cpp 1.5 cannot marshal
# an input array as such, and REMITS would then redo the evaluation the slow way.)
result := refuse("policy.wrong_tee", sprintf("this policy is for %s evidence, not %v", [tee, input.tee])) if {
	input.tee != tee
} else := refuse("measurement.reference_expired", concat(", ", expired_references)) if {
	count(expired_references) > 0
} else := refuse(violation_reason, json.marshal([v | some v in input.violations])) if {
	count(input.violations) > 0
} else := {"vector": vector, "notes": notes}

# A refusal keeps the platform's vector and notes so the decision log still shows what it saw.
refuse(reason, detail) := {
	"vector": input.platform_vector,
	"notes": input.notes,
	"reject": reason,
	"detail": detail,
}

violation_reason := "measurement.not_in_reference_values" if {
	some violation in input.violations
	measurement_field(violation.field)
} else := concat(".", ["policy", input.violations[0].field])

# An expired reference value never matches, and the appraisal says so rather than "absent".
# It is checked first: a value that only an expired record vouches for also fails the platform's
# check against the live records, and the
# expiry is the reason to report.
expired_references := sort([name |
	some name
	input.reference[name].status == "expired"
])

# Each revocation contraindicates the claim it discredits, and is noted with its reason.
vector := object.union(input.platform_vector, {claim: contraindicated |
	some revocation in input.revocations
	claim := revoked_claim[revocation.kind]
})

notes := array.concat(input.notes, [note |
	some revocation in input.revocations
	note := sprintf("revoked.%s: %s", [revocation.kind, revocation.reason])
])
