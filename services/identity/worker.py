"""Identity verification: endorsement chain to the pinned vendor root and the evidence signature."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from services import seattest, sevlaunch
from services.common import StageContext, next_stage, reject, signed
from shared import schemas
from shared.bus import Publish
from shared.errors import RemitsError, VerificationError
from shared.platforms.sev import broker
from shared.platforms.tpm.validate import CLOCK_REGRESSED, RESET_COUNT_REGRESSED, RESTART_COUNT_REGRESSED

STAGE = "identity"


async def _sev_launch(ctx: StageContext, message: schemas.SevLaunchRequest) -> Sequence[Publish]:
    """The whole platform chain (OCA → PEK, CEK → PEK, PEK → PDH; a host's verdict is kept), then
    the launch session for the workload's registered policy, answered straight to the gateway as
    the challenge. Its sealed state waits in Redis for the measurement and the secret."""
    meta = message.meta
    try:
        if not ctx.sev_key:
            raise VerificationError("sev.unavailable", "identity holds no SEV session key")
        assert ctx.trust is not None
        policy = sevlaunch.workload_policy(ctx.trust.snapshot(message.meta.tenant), message.workload_id, ctx.clock())
        launch = await ctx.run_crypto(
            lambda: broker.open_launch(
                sevlaunch.request_of(message), policy=policy, roots=sevlaunch.chain_verifier(ctx),
                key=ctx.sev_key, request_id=meta.request_id, session_id=meta.session_id,
            )
        )
    except RemitsError as err:
        return [reject(meta, STAGE, err)]
    await sevlaunch.store_state(ctx, meta.session_id, launch.sealed_state)
    outcome = schemas.Outcome(meta.request_id, "challenge", detail=launch.challenge_params)
    data = schemas.encode(outcome)
    if meta.reply_to:
        await ctx.nc.publish(meta.reply_to, data, headers=signed(ctx, meta.reply_to, data))
    return []


async def _sev_claims(ctx: StageContext, message: schemas.EndorsedEvidence) -> dict[str, Any]:
    """A launch measurement's claims: what its session established (the session's TIK stays
    sealed; measure checks the measurement with it)."""
    state = await sevlaunch.load_state(ctx, message.meta.session_id)
    return {
        "sev.workload_id": state.workload_id,
        "sev.generation": state.generation,
        "sev.api_version": f"{state.api_major}.{state.api_minor}",
        "sev.build": state.build,
        "sev.policy": state.policy,
        "sev.pdh_sha256": state.pdh_sha256,
    }


async def _se_challenge(ctx: StageContext, message: schemas.SeChallengeRequest) -> Sequence[Publish]:
    """The IBM SE attestation request for this session, answered straight to the gateway."""
    meta = message.meta
    try:
        params = await seattest.open_challenge(ctx, meta.session_id, meta.request_id)
    except RemitsError as err:
        return [reject(meta, STAGE, err)]
    data = schemas.encode(schemas.Outcome(meta.request_id, "challenge", detail=params))
    if meta.reply_to:
        await ctx.nc.publish(meta.reply_to, data, headers=signed(ctx, meta.reply_to, data))
    return []


def make_handler(ctx: StageContext):
    async def handle(message: schemas.StageUnion) -> Sequence[Publish]:
        if isinstance(message, schemas.SevLaunchRequest):
            return await _sev_launch(ctx, message)
        if isinstance(message, schemas.SeChallengeRequest):
            return await _se_challenge(ctx, message)
        if not isinstance(message, schemas.EndorsedEvidence):
            return [reject(message.meta, STAGE, "bus.unexpected_message", type(message).__name__)]
        platform = ctx.platforms.get(message.meta.tee)
        if platform is None:
            return [reject(message.meta, STAGE, "tee.unsupported", message.meta.tee)]
        now = datetime.fromtimestamp(ctx.clock(), tz=UTC)
        try:
            if message.meta.tee == seattest.TEE:
                # A MAC, not a signature: only the request's own key checks it.
                claims = await seattest.verify_answer(ctx, message.meta.session_id, message.evidence, message.meta.tenant)
            else:
                claims = await ctx.run_crypto(platform.verify_identity, message.evidence, message.endorsement, now)
            if message.meta.tee == sevlaunch.TEE:
                claims.update(await _sev_claims(ctx, message))
        except RemitsError as err:
            return [reject(message.meta, STAGE, err)]
        regressed = await _tpm_clock_regression(ctx, claims)
        if regressed is not None:
            return [reject(message.meta, STAGE, regressed)]
        verified = schemas.VerifiedEvidence(
            meta=message.meta,
            runtime_data_claims=message.runtime_data_claims,
            claims=claims,
            evidence=message.evidence,
        )
        return [next_stage("measure", verified, STAGE)]

    return handle


# How long a TPM's last clock state is remembered: a key quiet for longer starts afresh.
TPM_CLOCK_MEMORY_S = 30 * 86400.0
_CLOCK_CHECKS = {1: RESET_COUNT_REGRESSED, 2: RESTART_COUNT_REGRESSED, 3: CLOCK_REGRESSED}


async def _tpm_clock_regression(ctx: StageContext, claims: dict[str, Any]) -> VerificationError | None:
    """For evidence signed by a TPM: its clock, reset and restart counts must not go back from
    the last verified quote of the same attestation key (a replayed or rolled-back TPM state)."""
    ak = claims.get("tpm.ak.sha256")
    if not isinstance(ak, str) or "tpm.clock" not in claims:
        return None
    state = (claims["tpm.reset_count"], claims["tpm.restart_count"], claims["tpm.clock"])
    code = await ctx.store.advance_tpm_clock(ak, *state, ttl_s=TPM_CLOCK_MEMORY_S)
    if code == 0:
        return None
    return VerificationError(
        _CLOCK_CHECKS.get(code, CLOCK_REGRESSED),
        f"(reset, restart, clock) {state} is behind the last verified quote of this key",
    )

