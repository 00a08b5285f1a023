# REMITS default attestation policy for plain TPM 2.0 evidence (a TPM quote, optionally with a
# measured-boot event log).
#
# Copy this file to write your own. REMITS evaluates `data.remits.attestation.result` once per
# attestation, after the quote's signature (under the attestation key, AK, the evidence carries)
# and, when a log was sent, its replay against the quoted PCRs were verified, and expects
#
#   {"vector": {AR4SI claim: int}, "notes": [string], "reject": string?, "detail": string?}
#
# What the policy reads:
#   input.tee             "tpm"
#   input.claims          the platform's claims, a flat object with dotted keys: "tpm.ak.sha256"
#                         (the AK's fingerprint), "tpm.pcr.sha256.<N>", "tpm.clock", ... and,
#                         with an event log, "eventlog.kernel_digest", "eventlog.secure_boot", ...
#   input.platform_vector the AR4SI vector the platform computed; executables 33 when no PCR or
#                         kernel reference value is provisioned, hardware 97 for an unknown AK,
#                         no runtime-opaque (a plain TPM does not encrypt memory)
#   input.violations      [{"field", "got", "want"}]: "ak" (the AK is not in the registry),
#                         "pcr0".."pcr23", "kernel_digest", "secure_boot"
#   input.reference       {name: {"status": "matched"|"absent"|"expired"|"different"|"configured",
#                         "record": "<key>@<revision>"}}
#   input.revocations     [{"kind", "value", "reason"}]: the revocations that match this evidence
#   input.notes           the platform's notes
#
# A plain TPM has no vendor vouching for its key: the AK registry (reference values named "ak",
# the SHA-256 of each enrolled AK's SubjectPublicKeyInfo) is the only reason to believe the quote
# comes from a machine the operator knows. An AK outside it is refused, whatever else holds.
#
# Claim values: 2..31 affirming, 32..95 warning, 96 and up contraindicated. REMITS derives the
# overall status (the worst tier in the vector); `reject` refuses the attestation outright.
#
# Performance: REMITS only hands the policy the parts of the input it names, so prefer literal
# paths to iterating over the whole input document.
package remits.attestation

import rego.v1

# The TEE this policy judges: evidence from any other TEE is refused, not judged by the wrong rules.
tee := "tpm"

# Failed checks on these fields mean "this is not an approved boot chain": the PCRs of the
# SHA-256 bank and the kernel image the event log names.
measurement_fields := {name | some i in numbers.range(0, 23); name := sprintf("pcr%d", [i])} | {"kernel_digest"}

# The claim a revocation discredits. For a TPM the "chip" is its AK (revocation kind chip_id,
# value = the AK fingerprint): a revoked AK taints the hardware. Other kinds are noted only.
revoked_claim := {
	"measurement": "executables",
	"chip_id": "hardware",
}

contraindicated := 96

# The decision, first match wins: wrong TEE, expired reference values, an AK that is not
# registered, failed checks, else the platform's vector with revocations applied. Every branch is
# defined for a well-formed input: REMITS treats an undefined `result` as an error and refuses.
# (The violations are copied by a comprehension before json.marshal: rego-cpp 1.5 cannot marshal
# an input array as such, and REMITS would then redo the evaluation the slow way.)
result := refuse("policy.wrong_tee", sprintf("this policy is for %s evidence, not %v", [tee, input.tee])) if {
	input.tee != tee
} else := refuse("measurement.reference_expired", concat(", ", expired_references)) if {
	count(expired_references) > 0
} else := refuse("tpm.ak_not_registered", json.marshal([v | some v in input.violations; v.field == "ak"])) if {
	ak_not_registered
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

default ak_not_registered := false

ak_not_registered if {
	some violation in input.violations
	violation.field == "ak"
}

violation_reason := "measurement.not_in_reference_values" if {
	some violation in input.violations
	violation.field in measurement_fields
} else := concat(".", ["policy", input.violations[0].field])

# An expired reference value never matches, and the appraisal says so rather than "absent".
# It is checked first: a value that only an expired record vouches for also fails the platform's
# check against the live records (an AK whose registration expired looks unregistered), and the
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
