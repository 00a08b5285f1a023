"""The policy core: Rego attestation and resource policies, compiled once per version (rego-cpp via
``regopy``) and evaluated per request. Pure: no I/O beyond reading the packaged defaults."""

from shared.policy.engine import (
    ATTESTATION,
    EVALUATION_FAILED,
    INVALID,
    KINDS,
    PACKAGES,
    REQUIRED_INPUT,
    RESOURCE,
    CompiledPolicy,
    PolicyCache,
    PolicyError,
    check_result,
    compile_policy,
    default_policy,
    default_policy_source,
    explain,
    kind_of,
)

__all__ = [
    "ATTESTATION",
    "EVALUATION_FAILED",
    "INVALID",
    "KINDS",
    "PACKAGES",
    "REQUIRED_INPUT",
    "RESOURCE",
    "CompiledPolicy",
    "PolicyCache",
    "PolicyError",
    "check_result",
    "compile_policy",
    "default_policy",
    "default_policy_source",
    "explain",
    "kind_of",
]
