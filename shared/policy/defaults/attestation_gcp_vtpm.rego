# REMITS default attestation policy for Google Cloud vTPM evidence (go-tpm-tools attestations of a
# GCE Shielded VM).
#
# Copy this file to write your own. REMITS evaluates `data.remits.attestation.result` once per
# attestation, after the AK certificate chain, the quote signatures and the event-log replay were
# verified, and expects
#
#   {"vector": {AR4SI claim: int}, "notes": [string], "reject": string?, "detail": string?}
#
# What the policy reads:
#   input.tee             "gcp-vtpm"
#   input.claims          the platform's claims, a flat object with dotted keys: "gcp.project_id",
#                         "gcp.zone", "gcp.instance_name" (from Google's AK certificate),
#                         "tpm.pcr.sha256.0".."tpm.pcr.sha256.23", "tpm.nonce", "tpm.ak.sha256",
#                         "eventlog.secure_boot", "eventlog.kernel_digest", ...
#   input.platform_vector the AR4SI vector the platform computed; warning tiers such as
#                         executables 33 ("no reference values") are already in it. It has no
#                         runtime-opaque claim: a Shielded VM's memory is open to the host.
#   input.violations      [{"field", "got", "want"}]: the platform's checks against reference values
#                         (fields "pcr0".."pcr23", "kernel_digest", "secure_boot", "project_id")
#   input.reference       {name: {"status": "matched"|"absent"|"expired"|"different"|"configured",
#                         "record": "<key>@<revision>"}}
#   input.revocations     [{"kind", "value", "reason"}]: the revocations that match this evidence
#                         (kind "chip_id" names an attestation key by its "tpm.ak.sha256")
#   input.notes           the platform's notes
#
# Claim values: 2..31 affirming, 32..95 warning, 96 and up contraindicated. REMITS derives the
# overall status (the worst tier in the vector); `reject` refuses the attestation outright.
#
# Performance: REMITS only hands the policy the parts of the input it names (`input.claims` as a
# whole, or single claims such as `input.claims["gcp.project_id"]`), so prefer literal paths to
# iterating over the whole input document.
package remits.attestation

import rego.v1

# The TEE this policy judges: evidence from any other TEE is refused, not judged by the wrong rules.
tee := "gcp-vtpm"

# Failed checks on these fields mean "this is not an approved image": the PCRs of the SHA-256
# bank and the kernel the replayed event log names. A mismatch of any other field (the project,
# Secure Boot) is reported as "policy.<field>".
measurement_fields := {
	"pcr0", "pcr1", "pcr2", "pcr3", "pcr4", "pcr5", "pcr6", "pcr7",
	"pcr8", "pcr9", "pcr10", "pcr11", "pcr12", "pcr13", "pcr14", "pcr15",
	"pcr16", "pcr17", "pcr18", "pcr19", "pcr20", "pcr21", "pcr22", "pcr23",
	"kernel_digest",
}

# The claim a revocation discredits. A revoked attestation key ("chip_id") is a vTPM no longer
# trusted, and the vTPM is this platform's root of trust: it taints the hardware claim. Other
# kinds are noted but change no claim.
revoked_claim := {
	"measurement": "executables",
	"chip_id": "hardware",
}

contraindicated := 96

# The decision, first match wins: wrong TEE, expired reference values, failed checks, else the
# platform's vector with revocations applied. Every branch is defined for a well-formed input:
# REMITS treats an undefined `result` as an error and refuses.
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

# Any failed PCR or kernel check makes the refusal a measurement one, whatever else failed.
violation_reason := "measurement.not_in_reference_values" if {
	some violation in input.violations
	violation.field in measurement_fields
} else := concat(".", ["policy", input.violations[0].field])

# An expired reference value never matches, and the appraisal says so rather than "absent".
# It is checked before the failed checks: a value that only an expired record vouches for also
# fails the platform's check against the live records, and the expiry is the reason to report.
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
