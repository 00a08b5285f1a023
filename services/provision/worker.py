"""The provision component: answers the admin API's requests, relayed by the gateway over core
NATS (request/reply on ADMIN_REQUEST_SUBJECT, a queue group shared by its replicas).

The gateway only relays: it holds no right to change the trust configuration, and the admin
credential is checked here. Request bodies arrive encrypted to this component's relay key, so
that a secret being provisioned never crosses the bus in clear."""

from __future__ import annotations

from collections.abc import Callable

import msgspec
from joserfc import jwe
from joserfc.jwk import ECKey
from nats.aio.msg import Msg

from services.common import StageContext, signed
from services.provision.routes import AdminApi, Reply
from shared import schemas
from shared.adminauth import load_admin_keys
from shared.bus import QueueResponder
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


class ProvisionService(QueueResponder):
    def __init__(
        self, ctx: StageContext, keyring: Callable[[], KeyRing] | None, relay_private_pem: str
    ) -> None:
        assert ctx.trust is not None
        super().__init__(ctx.nc, schemas.ADMIN_REQUEST_SUBJECT, schemas.ADMIN_REQUEST_QUEUE)
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

    async def start(self) -> None:
        await super().start()
        log.info("provision.ready", admin_keys=len(self.api.configured_keys))

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
                    request.method, request.path, request.authorization, body, request.query, request.tenant
                )
            except Exception as exc:  # NATS or KV trouble: nothing half-done is reported as done
                log.error("provision.failed", error=repr(exc), exc_info=True)
                reply = Reply(
                    503, {"error": "admin.unavailable", "detail": "the trust store could not be changed"}
                )
        if msg.reply:
            data = schemas.encode(reply.encode())
            await self.ctx.nc.publish(msg.reply, data, headers=signed(self.ctx, msg.reply, data))
