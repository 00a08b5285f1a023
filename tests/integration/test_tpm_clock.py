"""TPM clock monotonicity as the identity stage keeps it: one Redis script per quote, with the same
rule as the pure check (shared.platforms.tpm.validate.check_clock), and only for the key's owner."""

from __future__ import annotations

import random

import pytest

from services.identity.worker import _CLOCK_CHECKS
from shared import credentials
from shared.cache import Store
from shared.embedded import EmbeddedInfra
from shared.errors import VerificationError
from shared.platforms.tpm.validate import ClockState, check_clock
from shared.resp import RedisError

pytestmark = pytest.mark.integration


async def test_the_redis_rule_is_the_pure_rule(infra: EmbeddedInfra) -> None:
    store = Store.from_url(credentials.load(infra.credentials_dir, "identity").redis_url(infra.redis_base_url))
    rng = random.Random(9009)
    try:
        for key in range(40):
            ak = f"{key:064x}"
            accepted: ClockState | None = None
            for _ in range(12):
                base = accepted or ClockState(clock=10_000, reset_count=3, restart_count=2)
                state = ClockState(
                    clock=max(0, base.clock + rng.choice((-5000, -1, 0, 1, 7000, 2**40))),
                    reset_count=max(0, base.reset_count + rng.choice((-1, 0, 0, 0, 1))),
                    restart_count=max(0, base.restart_count + rng.choice((-1, 0, 0, 1))),
                )
                try:
                    check_clock(accepted, state)
                    expected = None
                except VerificationError as err:
                    expected = err.check
                code = await store.advance_tpm_clock(ak, state.reset_count, state.restart_count, state.clock, 60)
                assert (_CLOCK_CHECKS.get(code) if code else None) == expected, (accepted, state, code)
                if expected is None:
                    accepted = state
        # The same state again (a redelivered message) is accepted.
        assert await store.advance_tpm_clock("aa" * 32, 1, 0, 500, 60) == 0
        assert await store.advance_tpm_clock("aa" * 32, 1, 0, 500, 60) == 0
        assert await store.advance_tpm_clock("aa" * 32, 1, 0, 499, 60) == 3
        # Another component's Redis user cannot touch these keys.
        other = Store.from_url(credentials.load(infra.credentials_dir, "measure").redis_url(infra.redis_base_url))
        with pytest.raises(RedisError, match="NOPERM"):
            await other.advance_tpm_clock("aa" * 32, 0, 0, 0, 60)
        await other.close()
    finally:
        await store.close()
