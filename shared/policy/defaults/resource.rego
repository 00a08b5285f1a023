# REMITS default resource policy: may this attestation token receive this secret?
#
# Copy this file to write your own. REMITS evaluates `data.remits.resource.result` for every
# resource request and expects {"allow": bool, "reason": string}; only `allow: true` releases it.
#
# What the policy reads:
#   input.token        the verified token: status ("affirming"|"warning"|"contraindicated"), tee,
#                      iat, exp, jti, measurement (hex, or "" when the TEE has none), init_data
#                      (the digest of the guest's init-data, hex, or ""), tenant, and claims
#   input.resource     path ("repo/type/tag") and binding: tees, measurements, init_data,
#                      tenants, allow_sample
#   input.revocations  revocations that apply to this token: of the token itself, or of its
#                      measurement, chip or FMSPC, whenever they were made
#   input.now          the current time, whole seconds since the epoch
#
# Deny by default: each condition below is a rule that is false unless proven true, so missing or
# malformed input denies rather than skips a check.
#
# Performance: REMITS only hands the policy the parts of the input it names by literal path
# (`input.token.tee`, `input.resource`), so the token's claims stay out unless a rule reads them.
package remits.resource

import rego.v1

# The first failed condition names the denial, in this order.
result := deny("token.not_affirming") if {
	not affirming
} else := deny("token.expired") if {
	not unexpired
} else := deny("token.revoked") if {
	not unrevoked
} else := deny("resource.tee_not_bound") if {
	not tee_bound
} else := deny("resource.measurement_not_bound") if {
	not measurement_bound
} else := deny("resource.init_data_not_bound") if {
	not init_data_bound
} else := deny("resource.tenant_not_bound") if {
	not tenant_bound
} else := deny("resource.sample_tee_not_enabled") if {
	not sample_allowed
} else := {"allow": true, "reason": "ok"}

deny(reason) := {"allow": false, "reason": reason}

# Only a fully trusted platform gets secrets: a warning (e.g. out-of-date TCB) is not enough.
default affirming := false

affirming if input.token.status == "affirming"

# Both must be numbers: Rego also orders values of different types, so `now < null` can hold.
default unexpired := false

unexpired if {
	is_number(input.now)
	is_number(input.token.exp)
	input.now < input.token.exp
}

default unrevoked := false

unrevoked if count(input.revocations) == 0

# An unset (missing, null or empty) binding list places no constraint.
binding := object.get(input.resource, "binding", {})

bound_tees := object.get(binding, "tees", null)

bound_measurements := object.get(binding, "measurements", null)

default tee_bound := false

tee_bound if bound_tees in {null, []}

tee_bound if input.token.tee in bound_tees

default measurement_bound := false

measurement_bound if bound_measurements in {null, []}

measurement_bound if input.token.measurement in bound_measurements

bound_init_data := object.get(binding, "init_data", null)

default init_data_bound := false

init_data_bound if bound_init_data in {null, []}

# A token without init-data ("") never matches a digest.
init_data_bound if {
	input.token.init_data != ""
	input.token.init_data in bound_init_data
}

bound_tenants := object.get(binding, "tenants", null)

default tenant_bound := false

tenant_bound if bound_tenants in {null, []}

tenant_bound if input.token.tenant in bound_tenants

# The sample TEE is a software test double that proves nothing: a resource must opt in to it.
default sample_allowed := false

sample_allowed if input.token.tee != "sample"

sample_allowed if binding.allow_sample == true
