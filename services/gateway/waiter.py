"""Waits for the pipeline's outcome of one request: a core-NATS notification addressed to this
gateway instance, with the Redis copy as the fallback so a missed notification is never a hang."""

from __future__ import annotations

import asyncio

import msgspec
from nats.aio.client import Client as NATS

from shared import schemas
from shared.busauth import MAC_HEADER, BusAuth, Unauthenticated
from shared.cache import Store
from shared.resp import RedisConnectionError, RedisError
from shared.telemetry import get_logger

log = get_logger("remits.gateway")


_FROM_RELEASE = frozenset({"release"})
_FROM_PIPELINE = frozenset({"release", "identity"})
CHALLENGE = "challenge"  # a SEV launch's or an SE request's challenge: identity's only outcome, never release's


class OutcomeWaiter:
    """Outcomes count only when the release stage tagged them (``auth``): anyone else who can
    reach NATS or Redis could otherwise hand a guest a token of their choosing."""

    def __init__(self, nc: NATS, store: Store, gateway_id: str, auth: BusAuth | None = None) -> None:
        self.nc = nc
        self.store = store
        self.auth = auth
        self.subject = schemas.outcome_subject(gateway_id)
        self._pending: dict[str, asyncio.Future[schemas.Outcome]] = {}
        self._sub = None

    async def start(self) -> None:
        self._sub = await self.nc.subscribe(self.subject, cb=self._on_outcome)

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()

    async def _on_outcome(self, msg) -> None:  # type: ignore[no-untyped-def]
        try:
            sender = "release"
            if self.auth is not None:
                sender = self.auth.verify(msg.subject, msg.data, msg.headers, accept=_FROM_PIPELINE)
            outcome = schemas.decode_outcome(msg.data)
            if (sender == "identity") != (outcome.status == CHALLENGE):
                # Identity answers a launch request with its challenge and nothing else: a token
                # (or a rejection) counts only from release.
                log.warning("gateway.outcome_refused", sender=sender, status=outcome.status)
                return
        except Unauthenticated as exc:
            log.warning("gateway.outcome_unauthenticated", detail=exc.detail)
            return
        except (msgspec.DecodeError, msgspec.ValidationError):
            return
        future = self._pending.get(outcome.request_id)
        if future is not None and not future.done():
            future.set_result(outcome)

    def expect(self, request_id: str) -> asyncio.Future[schemas.Outcome]:
        """Register before publishing, so an outcome that arrives fast is not missed."""
        future: asyncio.Future[schemas.Outcome] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        return future

    def forget(self, request_id: str) -> None:
        """The request never entered the pipeline: nothing will answer it."""
        self._pending.pop(request_id, None)

    async def wait(self, request_id: str, future: asyncio.Future[schemas.Outcome], timeout_s: float) -> schemas.Outcome:
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout_s)
        except TimeoutError:
            try:
                stored = await self.store.get_outcome(request_id)
            except (RedisConnectionError, RedisError):
                stored = None  # the fallback copy is unreachable or unreadable: still a timeout, not a crash
            if stored is not None:
                data, mac = stored
                try:
                    if self.auth is not None:
                        subject = schemas.outcome_copy_subject(request_id)
                        self.auth.verify(subject, data, {MAC_HEADER: mac}, accept=_FROM_RELEASE)
                    return schemas.decode_outcome(data)
                except (Unauthenticated, msgspec.DecodeError, msgspec.ValidationError) as exc:
                    log.warning("gateway.outcome_copy_refused", error=repr(exc))
            return schemas.Outcome(
                request_id, "rejected", "pipeline.timeout", f"no decision within {timeout_s:.0f}s"
            )
        finally:
            self._pending.pop(request_id, None)
