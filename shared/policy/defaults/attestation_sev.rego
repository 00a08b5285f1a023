# REMITS default attestation policy for AMD SEV / SEV-ES launches (pre-attestation: the guest
# owner checks the launch before the guest runs; the host's VMM is the client).
#
# Copy this file to write your own. REMITS evaluates `data.remits.attestation.result` once per
# launch, after the firmware's MEASURE was verified under the launch's TIK against the launch
# digests registered for the workload (reference values launch_digest.<workload>), and expects
#
#   {"vector": {AR4SI claim: int}, "notes": [string], "reject": string?, "detail": string?}
#
# What the policy reads:
#   input.tee             "sev"
#   input.claims          "sev.workload_id", "sev.launch_digest" (the registered digest that
#                         matched), "sev.measure", "sev.mnonce", "sev.policy" (u32) and its bits
#                         "sev.policy.nodbg", "sev.policy.noks", "sev.policy.es",
#                         "sev.api_version", "sev.build", "sev.generation" (Naples, Rome, Milan)
#   input.platform_vector the AR4SI vector the platform computed (runtime-opaque 32 without ES)
#   input.violations      [{"field", "got", "want"}]: "policy.nodbg" (debugging allowed),
#                         "policy.noks" (key sharing allowed), "firmware.api_version"
#   input.revocations     [{"kind", "value", "reason"}]: revocations that match this launch
#   input.notes           the platform's notes
#
# Claim values: 2..31 affirming, 32..95 warning, 96 and up contraindicated. REMITS derives the
# overall status (the worst tier in the vector); `reject` refuses the attestation outright.
package remits.attestation

import rego.v1

tee := "sev"

contraindicated := 96

revoked_claim := {
	"measurement": "executables",
	"chip_id": "hardware",
}

result := refuse("policy.wrong_tee", sprintf("this policy is for %s evidence, not %v", [tee, input.tee])) if {
	input.tee != tee
} else := refuse(concat(".", ["sev", input.violations[0].field]), json.marshal([v | some v in input.violations])) if {
	count(input.violations) > 0
} else := {"vector": vector, "notes": notes}

refuse(reason, detail) := {
	"vector": input.platform_vector,
	"notes": input.notes,
	"reject": reason,
	"detail": detail,
}

vector := object.union(input.platform_vector, {claim: contraindicated |
	some revocation in input.revocations
	claim := revoked_claim[revocation.kind]
})

notes := array.concat(input.notes, [note |
	some revocation in input.revocations
	note := sprintf("revoked.%s: %s", [revocation.kind, revocation.reason])
])
