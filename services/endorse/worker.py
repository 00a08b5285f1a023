"""Root endorsement fetch: the endorsements the evidence needs come from what the guest carried,
else the Redis cache, else an offline directory, else the vendor over HTTP — fetched once per key
across every replica (a Redis lock) and cached for as long as the document stays valid."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import msgspec

from services.common import StageContext, next_stage, reject
from services.sevlaunch import TEE as SEV
from services.sevlaunch import chain_verifier, endorse_sev
from shared import observability, schemas
from shared.bus import Publish
from shared.errors import EndorsementError, RemitsError
from shared.platforms.base import EndorsementRequest, Platform, encode_document
from shared.platforms.sev import kds as sev_kds

STAGE = "endorse"
_LOCK_TTL_S = 30.0
_WAIT_STEP_S = 0.02
_NEGATIVE_TTL_S = 60
_UNSAFE = re.compile(r"[^A-Za-z0-9_.=-]")


def offline_path(directory: Path, tee: str, cache_key: str) -> Path:
    """``<dir>/<tee>/<cache key with unsafe characters as '_'>``: one file per document."""
    return directory / tee / _UNSAFE.sub("_", cache_key)


def read_offline(directory: Path, tee: str, request: EndorsementRequest) -> bytes | None:
    """The document from an offline directory, in the same form a fetch would have stored it."""
    if not request.offline_parts:
        path = offline_path(directory, tee, request.cache_key)
        return path.read_bytes() if path.is_file() else None
    parts: dict[str, bytes] = {}
    for part, relative in request.offline_parts:
        path = directory / relative
        if not path.is_file():
            if part == "body":
                return None
            continue  # an optional header part (e.g. a chain the body's chain stands in for)
        parts[part] = path.read_bytes()
    body = parts.pop("body")
    if not request.headers:
        return body
    return encode_document(body, {name: value.decode() for name, value in parts.items()})


async def _read_offline(ctx: StageContext, tee: str, request: EndorsementRequest) -> bytes | None:
    directory = ctx.settings.offline_endorsements_dir
    if directory is None:
        return None
    return await asyncio.to_thread(read_offline, directory, tee, request)


async def obtain_document(ctx: StageContext, platform: Platform, request: EndorsementRequest) -> tuple[bytes, str]:
    """Cache, offline directory, else one vendor fetch per key fleet-wide: (document, source)."""
    tee = platform.tee
    local_key = (tee, request.cache_key)
    local = ctx.endorsements.get(local_key)
    if local is not None:
        return _cached(local, request)
    waited = 0.0
    while True:
        cached, ttl_s = await ctx.store.get_endorsement(tee, request.cache_key)
        if cached is not None:
            ctx.endorsements.put(local_key, cached, ttl_s)
            return _cached(cached, request)
        offline = await _read_offline(ctx, tee, request)
        if offline is not None:
            observability.endorsement_cache(hit=False)
            return offline, "offline"
        if not request.url:
            observability.endorsement_cache(hit=False)
            raise EndorsementError(
                "endorsement.not_found",
                f"{request.cache_key} is not served by the vendor: send it with the evidence or provision it offline",
            )
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
        # The holder before us may have stored the document between our cache miss and our lock:
        # look again before asking the vendor, or a chip would be fetched twice.
        cached, ttl_s = await ctx.store.get_endorsement(tee, request.cache_key)
        if cached is not None:
            ctx.endorsements.put(local_key, cached, ttl_s)
            return _cached(cached, request)
        observability.endorsement_cache(hit=False)
        try:
            document = await _fetch_first_known(ctx, request)
        except EndorsementError as err:
            if err.reason == "endorsement.not_found":
                # Negative cache, short: a fleet of unknown chips must not hammer the vendor.
                await ctx.store.put_endorsement(tee, request.cache_key, [], _NEGATIVE_TTL_S)
                ctx.endorsements.put(local_key, [], _NEGATIVE_TTL_S)
            raise
        now = datetime.fromtimestamp(ctx.clock(), tz=UTC)
        ttl = platform.document_ttl(request, document, now)
        default = ctx.settings.endorsement_cache_ttl_s
        ttl = default if ttl is None else max(1, min(ttl, default))
        await ctx.store.put_endorsement(tee, request.cache_key, [document], ttl)
        ctx.endorsements.put(local_key, [document], ttl)
        return document, "fetch"
    finally:
        await ctx.store.release_lock(f"fetch:{tee}:{request.cache_key}", token)


def _cached(documents: list[bytes], request: EndorsementRequest) -> tuple[bytes, str]:
    observability.endorsement_cache(hit=True)
    if not documents:  # a cached "the vendor does not know this key"
        raise EndorsementError("endorsement.not_found", request.url)
    return documents[0], "cache"


async def _fetch_first_known(ctx: StageContext, request: EndorsementRequest) -> bytes:
    """The first URL the vendor knows; with the response headers that belong to the document."""
    urls = (request.url, *request.fallback_urls)
    for index, url in enumerate(urls):
        try:
            body, headers = await ctx.fetcher.get_with_headers(url, request.headers)
        except EndorsementError as err:
            if err.reason != "endorsement.not_found" or index == len(urls) - 1:
                raise
            continue
        return encode_document(body, headers) if request.headers else body
    raise EndorsementError("endorsement.not_found", request.cache_key)


async def _obtain_or_none(ctx: StageContext, platform: Platform, request: EndorsementRequest) -> tuple[bytes | None, str]:
    try:
        return await obtain_document(ctx, platform, request)
    except EndorsementError:
        if request.optional:
            return None, "unavailable"
        raise


async def obtain_endorsement(
    ctx: StageContext, platform: Platform, evidence: bytes, carried: tuple[bytes, ...]
) -> tuple[list[bytes], str]:
    requests = platform.endorsement_requests(evidence, carried)
    results = await asyncio.gather(*(_obtain_or_none(ctx, platform, r) for r in requests))
    documents = [doc for doc, _ in results]
    sources = {src for _, src in results} or {"evidence"}
    source = next((s for s in ("fetch", "offline", "cache") if s in sources), "evidence")
    return platform.assemble_endorsement(documents, carried), source


async def _kds_cek(ctx: StageContext, message: schemas.SevLaunchRequest) -> schemas.SevLaunchRequest:
    """The chip's CEK as AMD's KDS serves it (fetched once fleet-wide, cached like a VCEK), in
    place of the host's: a host that names another chip then fails the PEK's CEK signature."""
    url = sev_kds.cek_url(message.chip_id, ctx.settings.snp_kds_url)
    request = EndorsementRequest(cache_key=f"cek-{message.chip_id.hex()}", url=url)
    document, _ = await obtain_document(ctx, ctx.platforms[SEV], request)
    sev_kds.parse_cek(document)
    return msgspec.structs.replace(message, certificates={**message.certificates, "cek": document})


def make_handler(ctx: StageContext):
    async def handle(message: schemas.StageUnion) -> Sequence[Publish]:
        if isinstance(message, schemas.SevLaunchRequest):
            try:  # AMD's part of the chain: the pinned ARK and ASK of the generation, the CEK under the ASK
                if message.chip_id:
                    message = await _kds_cek(ctx, message)
                await ctx.run_crypto(endorse_sev, chain_verifier(ctx).roots, message.certificates)
            except RemitsError as err:
                return [reject(message.meta, STAGE, err)]
            return [next_stage("identity", message, STAGE)]
        if isinstance(message, schemas.SeChallengeRequest):
            # The host key documents are the operator's, checked where the request is built.
            return [next_stage("identity", message, STAGE)]
        if not isinstance(message, schemas.ParsedEvidence):
            return [reject(message.meta, STAGE, "bus.unexpected_message", type(message).__name__)]
        platform = ctx.platforms.get(message.meta.tee)
        if platform is None:
            return [reject(message.meta, STAGE, "tee.unsupported", message.meta.tee)]
        try:
            chain, source = await obtain_endorsement(
                ctx, platform, message.evidence, tuple(message.carried_endorsement)
            )
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
