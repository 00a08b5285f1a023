"""The provision component: answers the admin API's requests, relayed by the gateway over core
NATS (request/reply on ADMIN_REQUEST_SUBJECT, a queue group shared by its replicas).

The gateway only relays: it holds no right to change the trust configuration, and the admin
credential is checked here. Request bodies arrive encrypted to this component's relay key, so
that a secret being provisioned never crosses the bus in clear."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import msgspec
from joserfc import jwe
from joserfc.jwk import ECKey
from nats.aio.msg import Msg

from services.common import StageContext, signed
from services.provision.routes import AdminApi, Reply
from shared import schemas
from shared.adminauth import load_admin_keys
from shared.busauth import Unauthenticated
from shared.sealing import KeyRing
from shared.telemetry import get_logger
from shared.trust.admin import TrustAdmin

log = get_logger("remits.provision")
_FROM_GATEWAY = frozenset({"gateway"})


def open_relayed_body(sealed: str, relay_key: ECKey | None) -> bytes:
    if not sealed:
        return b""
    if relay_key is None:
        raise ValueError("no relay key")
    return bytes(jwe.decrypt_compact(sealed, relay_key).plaintext or b"")


class ProvisionService:
    def __init__(
        self, ctx: StageContext, keyring: Callable[[], KeyRing] | None, relay_private_pem: str
    ) -> None:
        assert ctx.trust is not None
        self.ctx = ctx
        settings = ctx.settings
        self.admin = TrustAdmin(ctx.js, ctx.publisher, keyring=keyring, clock=lambda: ctx.clock())
        self.api = AdminApi(
            self.admin,
            ctx.trust.snapshot,
            load_admin_keys(list(settings.admin_keys)),
            load_admin_keys(list(settings.provisioner_keys)),
            clock=lambda: ctx.clock(),
        )
        self._relay_key = ECKey.import_key(relay_private_pem) if relay_private_pem else None
        self._sub: Any = None
        self._in_progress: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._sub = await self.ctx.nc.subscribe(
            schemas.ADMIN_REQUEST_SUBJECT, queue=schemas.ADMIN_REQUEST_QUEUE, cb=self._on_request
        )
        log.info("provision.ready", admin_keys=len(self.api.configured_keys))

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
        if self._in_progress:
            await asyncio.wait(self._in_progress, timeout=5)

    async def _on_request(self, msg: Msg) -> None:
        task = asyncio.create_task(self._answer(msg))
        self._in_progress.add(task)
        task.add_done_callback(self._in_progress.discard)

    async def _answer(self, msg: Msg) -> None:
        try:
            if self.ctx.auth is not None:
                self.ctx.auth.verify(msg.subject, msg.data, msg.headers, accept=_FROM_GATEWAY)
            request = schemas.decode_admin_request(msg.data)
            body = open_relayed_body(request.sealed_body, self._relay_key)
        except Unauthenticated as exc:
            log.warning("provision.unauthenticated", detail=exc.detail)
            reply = Reply(401, {"error": exc.reason, "detail": "the relay is not authenticated"})
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError, Exception) as exc:
            log.warning("provision.unreadable", error=repr(exc))
            reply = Reply(400, {"error": "admin.unreadable_request", "detail": type(exc).__name__})
        else:
            try:
                reply = await self.api.handle(
                    request.method, request.path, request.authorization, body, request.query
                )
            except Exception as exc:  # NATS or KV trouble: nothing half-done is reported as done
                log.error("provision.failed", error=repr(exc), exc_info=True)
                reply = Reply(
                    503, {"error": "admin.unavailable", "detail": "the trust store could not be changed"}
                )
        if msg.reply:
            data = schemas.encode(reply.encode())
            await self.ctx.nc.publish(msg.reply, data, headers=signed(self.ctx, msg.reply, data))
