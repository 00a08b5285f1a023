# REMITS default attestation policy for Azure confidential VMs on Intel TDX with a paravisor vTPM.
#
# The evidence was verified in two layers before this policy runs: the TD quote (Intel DCAP
# collateral) commits to the paravisor's variable data, whose attestation key signed the vTPM
# quote over PCR0-23 and the KBS nonce. MRTD measures the paravisor's initial image; the guest's
# own boot chain (firmware, boot loader, kernel) is in the PCRs.
#
# Copy this file to write your own. REMITS evaluates `data.remits.attestation.result` once per
# attestation, after the evidence's signature and certificate chain were verified, and expects
#
#   {"vector": {AR4SI claim: int}, "notes": [string], "reject": string?, "detail": string?}
#
# What the policy reads:
#   input.tee             "az-tdx-vtpm"
#   input.claims          the platform's claims, a flat object with dotted keys: "tdx.*" (the TD
#                         quote and its collateral: "tdx.tcb_status", ...), "tpm.*"
#                         ("tpm.pcr.sha256.0" .. "tpm.pcr.sha256.23", "tpm.nonce", "tpm.ak.sha256")
#                         and "azure.*" ("azure.secure_boot", "azure.vm_unique_id", ...)
#   input.platform_vector the AR4SI vector the platform computed; warning tiers such as
#                         executables 33 (neither the hardware measurement nor any PCR has
#                         reference values), hardware 32 (TCB status not UpToDate, see
#                         input.claims) or configuration 32 (the VM's secure boot is off,
#                         "azure.secure_boot") are already in it
#   input.violations      [{"field", "got", "want"}]: the platform's checks against reference values
#   input.reference       {name: {"status": "matched"|"absent"|"expired"|"different"|"configured",
#                         "record": "<key>@<revision>"}}
#   input.revocations     [{"kind", "value", "reason"}]: the revocations that match this evidence
#   input.notes           the platform's notes
#
# Claim values: 2..31 affirming, 32..95 warning, 96 and up contraindicated. REMITS derives the
# overall status (the worst tier in the vector); `reject` refuses the attestation outright.
#
# Performance: REMITS only hands the policy the parts of the input it names (`input.claims` as a
# whole, or single claims such as `input.claims["tdx.tcb_status"]`), so prefer literal paths to
# iterating over the whole input document.
package remits.attestation

import rego.v1

# The TEE this policy judges: evidence from any other TEE is refused, not judged by the wrong rules.
tee := "az-tdx-vtpm"

# Failed checks on these fields mean "this is not an approved image": MRTD (by its claim name or
# its reference-value name), the PCR values (reference names pcr0 .. pcr23) and the kernel of a
# replayed event log. Other failed checks (rtmr<N>, xfam, secure_boot, ...) are "policy.<field>".
measurement_fields := {
	"tdx.quote.body.mr_td", "mr_td", "kernel_digest",
	"pcr0", "pcr1", "pcr2", "pcr3", "pcr4", "pcr5", "pcr6", "pcr7",
	"pcr8", "pcr9", "pcr10", "pcr11", "pcr12", "pcr13", "pcr14", "pcr15",
	"pcr16", "pcr17", "pcr18", "pcr19", "pcr20", "pcr21", "pcr22", "pcr23",
}

# The claim a revocation discredits: a revoked image taints what runs, a revoked chip or
# platform family (FMSPC) taints the hardware. Other kinds are noted but change no claim.
revoked_claim := {
	"measurement": "executables",
	"chip_id": "hardware",
	"fmspc": "hardware",
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
