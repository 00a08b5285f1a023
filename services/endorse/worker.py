"""Root endorsement fetch: find the endorsement the evidence needs in Redis, else fetch it from the
vendor over HTTP, once per key across every replica (a Redis lock), and cache it."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from services.common import StageContext, next_stage, reject
from shared import schemas
from shared.bus import Publish
from shared.errors import EndorsementError, RemitsError
from shared.platforms.base import EndorsementRequest, Platform

STAGE = "endorse"
_LOCK_TTL_S = 30.0
_WAIT_STEP_S = 0.02


async def obtain_document(ctx: StageContext, tee: str, request: EndorsementRequest) -> tuple[bytes, str]:
    """Cache, else one fetch per key fleet-wide. Returns (document, "cache" | "fetch")."""
    waited = 0.0
    while True:
        cached = await ctx.store.get_endorsement(tee, request.cache_key)
        if cached is not None:
            if not cached:  # a cached "vendor does not know this key"
                raise EndorsementError("endorsement.not_found", request.url)
            return cached[0], "cache"
        token = await ctx.store.acquire_lock(f"fetch:{tee}:{request.cache_key}", _LOCK_TTL_S)
        if token is not None:
            break
        # Another replica is fetching this very document: wait for its result instead of
        # asking the vendor again.
        await asyncio.sleep(_WAIT_STEP_S)
        waited += _WAIT_STEP_S
        if waited > _LOCK_TTL_S + 5:
            raise EndorsementError("endorsement.unavailable", f"timed out waiting for {request.url}")
    try:
        try:
            document = await ctx.fetcher.get(request.url)
        except EndorsementError as err:
            if err.reason == "endorsement.not_found":
                # Negative cache, short: a fleet of unknown devices must not hammer the vendor.
                await ctx.store.put_endorsement(tee, request.cache_key, [], 60)
            raise
        await ctx.store.put_endorsement(
            tee, request.cache_key, [document], ctx.settings.endorsement_cache_ttl_s
        )
        return document, "fetch"
    finally:
        await ctx.store.release_lock(f"fetch:{tee}:{request.cache_key}", token)


async def obtain_endorsement(ctx: StageContext, platform: Platform, key: str) -> tuple[list[bytes], str]:
    requests = platform.endorsement_requests(key)
    results = await asyncio.gather(*(obtain_document(ctx, platform.tee, r) for r in requests))
    documents = [doc for doc, _ in results]
    source = "fetch" if any(src == "fetch" for _, src in results) else "cache"
    return platform.assemble_endorsement(documents), source


def make_handler(ctx: StageContext):
    async def handle(message: schemas.StageUnion) -> Sequence[Publish]:
        if not isinstance(message, schemas.ParsedEvidence):
            return [reject(message.meta, STAGE, "bus.unexpected_message", type(message).__name__)]
        platform = ctx.platforms.get(message.meta.tee)
        if platform is None:
            return [reject(message.meta, STAGE, "tee.unsupported", message.meta.tee)]
        try:
            chain, source = await obtain_endorsement(ctx, platform, message.endorsement_key)
        except RemitsError as err:
            return [reject(message.meta, STAGE, err)]
        endorsed = schemas.EndorsedEvidence(
            meta=message.meta,
            runtime_data_claims=message.runtime_data_claims,
            evidence=message.evidence,
            endorsement_key=message.endorsement_key,
            endorsement=chain,
            endorsement_source=source,
        )
        return [next_stage("identity", endorsed, STAGE)]

    return handle
