"""Which policy judges: the operator's, else the packaged default; a policy that cannot be had is
a PolicyUnavailable (a named refusal), never another exception out of a stage worker."""

from __future__ import annotations

import pytest

from shared.policy import PolicyCache
from shared.trust.evaluate import PolicyUnavailable, attestation_policy
from shared.trust.snapshot import TrustSnapshot


def test_default_policy_for_a_known_tee() -> None:
    policy = attestation_policy(TrustSnapshot(), "tpm", PolicyCache())
    assert policy.id == "attestation.tpm" and policy.revision == 0


def test_a_tee_without_a_default_is_unavailable_not_a_crash() -> None:
    with pytest.raises(PolicyUnavailable) as err:
        attestation_policy(TrustSnapshot(), "no-such-tee", PolicyCache())
    assert "attestation.no-such-tee" in str(err.value)
