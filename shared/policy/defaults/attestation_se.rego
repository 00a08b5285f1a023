# REMITS default attestation policy for IBM Secure Execution guests.
#
# Copy this file to write your own. REMITS evaluates `data.remits.attestation.result` once per
# attestation, after the Ultravisor's measurement (HMAC-SHA512 under the request's own key) was
# recomputed for an approved SE image (reference values image_tags), and expects
#
#   {"vector": {AR4SI claim: int}, "notes": [string], "reject": string?, "detail": string?}
#
# What the policy reads:
#   input.tee             "se"
#   input.claims          "se.tag", "se.pld", "se.ald", "se.tld" (the image that matched), "se.cuid",
#                         "se.image_phkh", "se.attestation_phkh", "se.user_data", "se.version"
#   input.reference       per reference name ("image_tags", "host_key_hash")
#   input.platform_vector the AR4SI vector the platform computed
#   input.violations      [{"field", "got", "want"}]: "image_phkh", "attestation_phkh" (a host key
#                         not among host_key_hash)
#   input.revocations     [{"kind", "value", "reason"}]: "measurement" (the image tag), "chip_id" (the
#                         attestation host key hash)
#   input.notes           the platform's notes
#
# Claim values: 2..31 affirming, 32..95 warning, 96 and up contraindicated. REMITS derives the
# overall status (the worst tier in the vector); `reject` refuses the attestation outright.
package remits.attestation

import rego.v1

# The TEE this policy judges: evidence from any other TEE is refused, not judged by the wrong rules.
tee := "se"

# Failed checks on these fields mean "this is not an approved workload": the SE image's header tags (only when a
# policy adds such checks: the image is already matched when its measurement is recomputed).
measurement_fields := {"image_tags"}

# The claim a revocation discredits. For SE the "chip" is the attestation host key hash (revocation kind chip_id):
# a revoked machine taints the hardware. Other kinds are noted only.
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
	violation.field in measurement_fields
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
