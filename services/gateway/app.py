"""HTTP gateway speaking the Confidential Containers KBS protocol v0 (see docs in README).

It validates and shapes requests, hands evidence to the pipeline and answers with the outcome;
it verifies nothing itself, so every decision comes from the stages."""

from __future__ import annotations

import contextlib
import os
import re
import time
from typing import Any

import msgspec
import nats
import structlog
from aiohttp import web
from joserfc import jwe
from joserfc.jwk import ECKey
from nats.aio.client import Client as NATS

from services.custody import published_keys, tenant_public_key
from services.gateway.dashboard.feed import DashboardFeed
from services.gateway.waiter import CHALLENGE, OutcomeWaiter
from services.sevlaunch import WORKLOAD as SEV_WORKLOAD
from services.sevlaunch import resource_path as sev_resource_path
from shared import schemas, tenants
from shared.bus import ROUTE_HEADER, JetStreamPublisher, Publish, route_header
from shared.busauth import MAC_HEADER, BusAuth, Unauthenticated
from shared.cache import Store
from shared.config import Settings
from shared.ear import EarSigner, load_or_create_signing_key
from shared.errors import ParseError, ProtocolError
from shared.kbs.wire import (
    SUPPORTED_TEES,
    decode_attestation,
    decode_request,
    error_body,
    validate_tee_pubkey,
)
from shared.platforms.sev import wire as sev_wire
from shared.resp import RedisConnectionError
from shared.telemetry import get_logger, inject_headers, tracer, tracing_enabled
from shared.trust.mirror import TrustMirror
from shared.trust.snapshot import TrustSnapshot

log = get_logger("remits.gateway")
COOKIE = "kbs-session-id"
_SESSION_ID = re.compile(r"[0-9a-f]{32}")  # what Store.create_session issues, nothing else
_UNAVAILABLE = frozenset({"pipeline.timeout", "pipeline.unavailable"})
SE = "se"  # IBM Secure Execution: its challenge is built by identity (services.seattest)


_json = msgspec.json.Encoder()


def _json_response(value: object, session_id: str = "") -> web.Response:
    """A JSON answer, with the session cookie when given. Built directly: aiohttp's json_response
    and its Morsel-based set_cookie cost about a third of the gateway's time per request."""
    headers = None
    if session_id:
        # No Max-Age: the server enforces expiry, so a late guest is told "nonce.expired" rather
        # than meeting a silently dropped cookie.
        headers = {"Set-Cookie": f"{COOKIE}={session_id}; HttpOnly; Path=/; SameSite=Strict"}
    return web.Response(body=_json.encode(value), content_type="application/json", headers=headers)


def _error(status: int, variant: str, detail: str) -> web.Response:
    return web.Response(status=status, body=error_body(variant, detail), content_type="application/json")


# Seconds a guest is asked to wait before retrying while a dependency is away.
RETRY_AFTER_S = 2


def _unavailable(detail: str) -> web.Response:
    """503 with Retry-After: nothing was decided, and the guest should come back shortly."""
    response = _error(503, "ServiceUnavailable", detail)
    response.headers["Retry-After"] = str(RETRY_AFTER_S)
    return response


def _require_json(request: web.Request) -> web.Response | None:
    if request.content_type != "application/json":
        return _error(
            415, "InvalidRequest", f"content type must be application/json, got {request.content_type!r}"
        )
    return None


async def _read_body(request: web.Request, limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length)
    return await request.read()  # aiohttp enforces client_max_size while reading


def _request_id() -> str:
    return os.urandom(16).hex()


def _root_span(name: str, request_id: str) -> contextlib.AbstractContextManager[Any]:
    """The trace's root span, only when spans go anywhere (the sampler then picks the traces)."""
    if not tracing_enabled():
        return contextlib.nullcontext()
    return tracer().start_as_current_span(name, attributes={"remits.request_id": request_id})


SEV = "sev"
SEV_VERSIONS = frozenset({"0.0.0", "0.4.0"})  # libkrun sends kbs-types' "0.0.0"


class _TeeOnly(msgspec.Struct):
    tee: str = ""


class _SevAuth(msgspec.Struct, forbid_unknown_fields=True, rename="kebab"):
    version: str
    tee: str
    extra_params: Any
    workload_id: str = ""  # kbs-types' test request repeats it here; extra-params is what counts


class _SevAttestation(msgspec.Struct, forbid_unknown_fields=True, rename="kebab"):
    """``/attest`` as libkrun sends it (kbs-types 0.x): an (empty) RSA key, and the firmware's
    measurement as a JSON string."""

    tee_evidence: Any
    tee_pubkey: Any = None


def _tee_of(raw: bytes) -> str:
    try:
        return msgspec.json.decode(raw, type=_TeeOnly).tee
    except (msgspec.DecodeError, msgspec.ValidationError):
        return ""  # the full decoder names what is wrong


def _path_tenant(request: web.Request) -> str | None:
    """The tenant a /t/<tenant>/... path names (None on the unprefixed paths)."""
    return request.match_info.get("tenant")


def _too_many(detail: str, retry_after_s: float) -> web.Response:
    """429 with Retry-After (whole seconds, at least 1): the tenant is over its quota."""
    response = _error(429, "TooManyRequests", detail)
    response.headers["Retry-After"] = str(max(1, int(retry_after_s + 0.999)))
    return response


def _sev_attestation(raw: bytes, session: Any, request_id: str, reply_to: str) -> schemas.AttestRequest:
    try:
        body = msgspec.json.decode(raw, type=_SevAttestation)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ProtocolError("kbs.bad_request", f"SEV attestation: {exc}") from exc
    evidence = body.tee_evidence if isinstance(body.tee_evidence, str) else msgspec.json.encode(body.tee_evidence).decode()
    meta = schemas.RequestMeta(
        request_id=request_id, tee=SEV, reply_to=reply_to, submitted_at=time.time(),
        session_id=session.session_id, nonce=session.nonce,  # the launch session's own challenge
        tenant=session.tenant,
    )  # fmt: skip
    return schemas.AttestRequest(meta=meta, tee_pubkey={}, primary_evidence=evidence.encode())


class Gateway:
    def __init__(
        self,
        settings: Settings,
        nc: NATS,
        publisher: JetStreamPublisher,
        store: Store,
        waiter: OutcomeWaiter,
        auth: BusAuth | None = None,
        relay_public_pem: str = "",
        trust: TrustMirror | None = None,
    ) -> None:
        self.settings = settings
        # The tenants and their quotas (without a mirror, only the default tenant exists).
        self.trust = trust
        self.nc = nc
        self.bus_auth = auth  # signs resource requests, checks release's answers
        # Admin requests are relayed to the provision component, their bodies encrypted to its
        # relay key; without that key the admin API is off here.
        self.relay_key = ECKey.import_key(relay_public_pem) if relay_public_pem else None
        self.publisher = publisher
        self.store = store
        self.waiter = waiter
        # The signing key's public half: from the durable key set (every key still honoured), else
        # the key file (a gateway started before any signer recorded its key).
        self._file_jwk: dict[str, str] | None = None
        self._join_jwk: dict[str, str] | None = None
        self._tenant_keys_recorded: set[str] = set()
        self.dashboard = DashboardFeed(nc, auth, self.authorize_admin)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.settings.max_body_bytes, middlewares=[self._errors])
        # Every tenant-scoped endpoint twice: unprefixed (the default tenant; for /kbs/v0 also a
        # tenant named in /auth's extra-params) and under /t/<tenant>/.
        scoped = []
        for prefix in ("", "/t/{tenant}"):
            scoped += [
                web.post(f"{prefix}/kbs/v0/auth", self.auth),
                web.post(f"{prefix}/kbs/v0/attest", self.attest),
                web.get(prefix + "/kbs/v0/resource/{repository}/{type}/{tag}", self.get_resource),
                # A SEV launch's secret (the libkrun/reference-KBS path): the workload's LAUNCH_SECRET.
                web.get(prefix + "/kbs/v0/key/{workload_id}", self.get_sev_key),
                web.post(prefix + "/kbs/v0/resource/{repository}/{type}/{tag}", self.put_resource),
                web.route("*", prefix + "/admin/v1/{tail:.*}", self.admin),
                web.get(f"{prefix}/.well-known/jwks.json", self.jwks),
            ]
        app.add_routes(
            [
                *scoped,
                web.get("/healthz", self.healthz),
                # A confidential cluster's members and their last tokens, signed by the join service.
                web.get("/cluster/{name}/attestation", self.cluster_attestation),
                *self.dashboard.routes(),
            ]
        )
        app.on_shutdown.append(self.dashboard.close)
        return app

    @web.middleware
    async def _errors(self, request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPRequestEntityTooLarge:
            return _error(413, "InvalidRequest", f"body larger than {self.settings.max_body_bytes} bytes")
        except web.HTTPNotFound:
            return _error(404, "InvalidRequestPath", f"no such endpoint: {request.path}")
        except web.HTTPMethodNotAllowed:
            return _error(405, "InvalidRequestPath", f"{request.method} not allowed on {request.path}")
        except ProtocolError as err:
            return _error(400, "InvalidRequest", f"{err.reason}: {err.detail}")
        except RedisConnectionError as exc:
            # Sessions and nonces are unreachable: nothing was decided, the guest may retry.
            log.warning("gateway.store_unavailable", error=repr(exc))
            return _unavailable("store.unavailable: sessions cannot be read or written")
        except Exception as exc:  # fail closed, with a reason, and keep serving
            log.error("gateway.internal_error", error=repr(exc), exc_info=True)
            return _error(500, "InternalError", "internal error")

    async def healthz(self, request: web.Request) -> web.Response:
        return _json_response({"status": "alive"})  # liveness only; readiness is /readyz

    def tenant_snapshot(self, tenant: str) -> TrustSnapshot | None:
        """``tenant``'s configuration as this gateway sees it; None when no such tenant exists."""
        if self.trust is None:
            return TrustSnapshot() if tenant == tenants.DEFAULT else None
        snapshot = self.trust.snapshot(tenant)
        return snapshot if snapshot.known else None

    async def jwks(self, request: web.Request) -> web.Response:
        """The EAR signing key, for relying parties that verify tokens themselves, and the join
        service's key (its cluster statements and node credentials) when it runs here. Under
        /t/<tenant>/, that tenant's keys only."""
        tenant = _path_tenant(request)
        if tenant is not None and tenant != tenants.DEFAULT:
            if self.tenant_snapshot(tenant) is None:
                return _error(404, "InvalidRequestPath", f"tenant.unknown: {tenant}")
            if tenant not in self._tenant_keys_recorded:
                # Once per process, as for the default key: the tenant's current key enters this
                # data directory's key set (before any token of it, whichever replica signs).
                try:
                    tenant_public_key(self.settings, tenant)
                except Exception as exc:
                    log.error("gateway.tenant_key_unavailable", tenant=tenant, error=repr(exc))
                    return _unavailable(f"custody.key_unavailable: tenant {tenant!r} has no signing key")
                self._tenant_keys_recorded.add(tenant)
            return _json_response({"keys": published_keys(self.settings, tenant=tenant)})
        keys = published_keys(self.settings)
        if not keys:
            if self._file_jwk is None:
                self._file_jwk = EarSigner(load_or_create_signing_key(self.settings.signing_key_path)).public_jwk()
            keys = [self._file_jwk]
        if self._join_jwk is None:
            join_key = self.settings.data_dir / "join-signing-key.pem"
            if join_key.exists():  # read once: the join service keeps its key for its life
                self._join_jwk = EarSigner(load_or_create_signing_key(join_key)).public_jwk()
        if self._join_jwk is not None:
            keys.append(self._join_jwk)
        return _json_response({"keys": keys})

    async def cluster_attestation(self, request: web.Request) -> web.Response:
        """``GET /cluster/<name>/attestation``: asked of the join service (request/reply, both ends
        authenticated), answered as it signed it; users check it with `remits cluster verify`."""
        data = _json.encode({"cluster": request.match_info["name"]})
        headers = {MAC_HEADER: self.bus_auth.sign(schemas.CLUSTER_STATEMENT_SUBJECT, data)} if self.bus_auth else None
        try:
            reply = await self.nc.request(
                schemas.CLUSTER_STATEMENT_SUBJECT, data, timeout=self.settings.request_timeout_s, headers=headers
            )
            if self.bus_auth is not None:
                self.bus_auth.verify(reply.subject, reply.data, reply.headers, accept=frozenset({"join"}))
            body = msgspec.json.decode(reply.data)
        except nats.errors.NoRespondersError:
            return _unavailable("join.unavailable: no join service is running")
        except (TimeoutError, nats.errors.TimeoutError):
            return _unavailable("join.unavailable: the join service did not answer in time")
        except (Unauthenticated, msgspec.DecodeError) as exc:
            log.warning("gateway.statement_refused", error=repr(exc))
            return _error(502, "InternalError", "the cluster statement was not authentic")
        if not isinstance(body, dict) or "statement" not in body:
            return _error(404, "InvalidRequestPath", f"{body.get('error', 'join.error')}: {body.get('detail', '')}")
        return _json_response({"statement": body["statement"]})

    async def auth(self, request: web.Request) -> web.Response:
        if (bad := _require_json(request)) is not None:
            return bad
        raw = await _read_body(request, self.settings.max_body_bytes)
        # Only a body that names the TEE "sev" is decoded twice: the others pay a substring test.
        if b'"sev"' in raw and _tee_of(raw) == SEV:
            # A SEV launch request's extra-params are the launch's: only the path names a tenant.
            try:
                sev_tenant = tenants.tenant_of_auth(_path_tenant(request), None)
            except tenants.BadTenant as exc:
                return _error(400, "InvalidRequest", f"tenant.invalid: {exc}")
            return await self._sev_auth(raw, sev_tenant)
        body = decode_request(raw)
        if body.tee not in SUPPORTED_TEES:
            return _error(
                400,
                "UnsupportedTee",
                f"TEE {body.tee!r} is not supported; supported: {sorted(SUPPORTED_TEES)}",
            )
        try:
            tenant = tenants.tenant_of_auth(_path_tenant(request), body.extra_params)
        except tenants.BadTenant as exc:
            return _error(400, "InvalidRequest", f"tenant.invalid: {exc}")
        if not self.nc.is_connected:
            # A nonce the pipeline cannot check is not issued: the attestation could not proceed.
            return _unavailable("bus.unavailable: the pipeline cannot be reached")
        refused = await self._admit(tenant)
        if refused is not None:
            return refused
        session = await self.store.create_session(body.tee, self.settings.nonce_ttl_s, tenant=tenant)
        if body.tee == SE:
            return await self._se_challenge(session)
        return _json_response({"nonce": session.nonce, "extra-params": ""}, session.session_id)

    async def _admit(self, tenant: str) -> web.Response | None:
        """None when ``tenant`` exists and is within its attestations-per-second quota (counted
        per challenge issued: every attestation starts with one); else the refusal."""
        snapshot = self.tenant_snapshot(tenant)
        if snapshot is None:
            return _error(404, "InvalidRequest", f"tenant.unknown: no tenant {tenant!r}")
        record = snapshot.tenant_record
        if record is not None and record.attestations_per_s > 0:
            wait_s = await self.store.admit(tenant, record.attestations_per_s)
            if wait_s > 0:
                return _too_many(
                    f"quota.attestations: tenant {tenant!r} is over {record.attestations_per_s} attestations/s", wait_s
                )
        return None

    async def _se_challenge(self, session: Any) -> web.Response:
        """IBM SE: the challenge carries an attestation request (ARCB) that only the operator's
        machines can open; identity builds it and keeps its measurement key (the gateway never
        sees it)."""
        request_id = _request_id()
        meta = schemas.RequestMeta(
            request_id=request_id, tee=SE, reply_to=self.waiter.subject, submitted_at=time.time(),
            session_id=session.session_id, nonce=session.nonce, tenant=session.tenant,
        )  # fmt: skip
        with (
            structlog.contextvars.bound_contextvars(request_id=request_id, stage="gateway"),
            _root_span("remits.gateway.se_challenge", request_id),
        ):
            outcome = await self._submit(
                Publish(schemas.stage_subject("intake"), schemas.SeChallengeRequest(meta=meta), f"{request_id}:gateway"),
                meta,
            )
        if outcome.status == CHALLENGE:
            return _json_response({"nonce": session.nonce, "extra-params": outcome.detail}, session.session_id)
        if outcome.reason in _UNAVAILABLE:
            return _unavailable(f"{outcome.reason}: {outcome.detail}")
        return _error(401, "AttestationError", f"{outcome.reason}: {outcome.detail}" if outcome.detail else outcome.reason)

    async def _sev_auth(self, raw: bytes, tenant: str) -> web.Response:
        """A SEV host's launch request (kbs-types; version 0.0.0 as libkrun sends it): the chain
        goes through intake, endorse and identity, which answers with the launch challenge."""
        try:
            body = msgspec.json.decode(raw, type=_SevAuth)
            launch = sev_wire.decode_sev_request(body.extra_params)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return _error(400, "InvalidRequest", f"kbs.bad_request: {exc}")
        except ParseError as exc:
            return _error(400, "InvalidRequest", f"{exc.reason}: {exc.detail}")
        if body.version not in SEV_VERSIONS:
            return _error(400, "InvalidRequest", f"kbs.bad_request: version {body.version!r}, expected one of {sorted(SEV_VERSIONS)}")
        if not self.nc.is_connected:
            return _unavailable("bus.unavailable: the pipeline cannot be reached")
        refused = await self._admit(tenant)
        if refused is not None:
            return refused
        session = await self.store.create_session(SEV, self.settings.nonce_ttl_s, tenant=tenant)
        request_id = _request_id()
        meta = schemas.RequestMeta(
            request_id=request_id, tee=SEV, reply_to=self.waiter.subject, submitted_at=time.time(),
            session_id=session.session_id, nonce=session.nonce, tenant=tenant,
        )  # fmt: skip
        build = launch.build
        message = schemas.SevLaunchRequest(
            meta=meta, workload_id=launch.workload_id, api_major=build.version.major,
            api_minor=build.version.minor, build=build.build, certificates=launch.chain.certificates(),
            chip_id=bytes.fromhex(launch.chip_id),
        )  # fmt: skip
        with (
            structlog.contextvars.bound_contextvars(request_id=request_id, stage="gateway"),
            _root_span("remits.gateway.sev_launch", request_id),
        ):
            outcome = await self._submit(
                Publish(schemas.stage_subject("intake"), message, f"{request_id}:gateway"), meta
            )
        if outcome.status == CHALLENGE:
            return _json_response({"nonce": session.nonce, "extra-params": outcome.detail}, session.session_id)
        if outcome.reason in _UNAVAILABLE:
            return _unavailable(f"{outcome.reason}: {outcome.detail}")
        return _error(401, "AttestationError", f"{outcome.reason}: {outcome.detail}" if outcome.detail else outcome.reason)

    async def _session(self, request: web.Request):  # type: ignore[no-untyped-def]
        session_id = request.cookies.get(COOKIE, "")
        if not _SESSION_ID.fullmatch(session_id):
            return None
        return await self.store.get_session(session_id)

    async def attest(self, request: web.Request) -> web.Response:
        if (bad := _require_json(request)) is not None:
            return bad
        if not self.nc.is_connected:
            # Nothing is read or consumed: the same session and nonce work once the bus is back.
            return _unavailable("bus.unavailable: the pipeline cannot be reached")
        session = await self._session(request)
        if session is None:
            return _error(401, "InvalidSession", "no session: POST /kbs/v0/auth first")
        path_tenant = _path_tenant(request)
        if path_tenant is not None and path_tenant != session.tenant:
            return _error(401, "InvalidSession", f"tenant.mismatch: the session is tenant {session.tenant!r}'s")
        raw = await _read_body(request, self.settings.max_body_bytes)
        request_id = _request_id()
        if session.tee == SEV:
            message = _sev_attestation(raw, session, request_id, self.waiter.subject)
            meta = message.meta
        else:
            body = decode_attestation(raw)
            tee_pubkey = validate_tee_pubkey(body.runtime_data.tee_pubkey)
            meta = schemas.RequestMeta(
                request_id=request_id,
                tee=session.tee,
                reply_to=self.waiter.subject,
                submitted_at=time.time(),
                session_id=session.session_id,
                nonce=body.runtime_data.nonce,
                tenant=session.tenant,
            )
            message = schemas.AttestRequest(
                meta=meta,
                tee_pubkey=tee_pubkey,
                primary_evidence=msgspec.json.encode(body.tee_evidence.primary_evidence),
                additional_evidence=body.tee_evidence.additional_evidence,
                init_data=None
                if body.init_data is None
                else {"format": body.init_data.format, "body": body.init_data.body},
            )
        with (
            structlog.contextvars.bound_contextvars(request_id=request_id, stage="gateway"),
            _root_span("remits.gateway.attest", request_id),
        ):
            outcome = await self._submit(
                Publish(schemas.stage_subject("intake"), message, f"{request_id}:gateway"), meta
            )
            log.debug("attest.answered", tee=session.tee, status=outcome.status, reason=outcome.reason)
        if outcome.reason in _UNAVAILABLE:
            # The pipeline did not decide (yet): tell the guest to retry, not that it failed.
            return _unavailable(f"{outcome.reason}: {outcome.detail}")
        if outcome.status == "rejected":
            return _error(
                401,
                "AttestationError",
                f"{outcome.reason}: {outcome.detail}" if outcome.detail else outcome.reason,
            )
        return _json_response({"token": outcome.token}, session.session_id)

    async def _submit(self, item: Publish, meta: schemas.RequestMeta) -> schemas.Outcome:
        future = self.waiter.expect(meta.request_id)
        try:
            await self.publisher.send(item, meta.request_id)
        except Exception as exc:
            self.waiter.forget(meta.request_id)
            log.error("gateway.publish_failed", error=repr(exc))
            return schemas.Outcome(
                meta.request_id, "rejected", "pipeline.unavailable", "could not queue the request"
            )
        return await self.waiter.wait(meta.request_id, future, self.settings.request_timeout_s)

    async def get_resource(self, request: web.Request) -> web.Response:
        """The release stage reads the session (for its token) together with the resource, so the
        gateway only passes on what the guest presented: its cookie and/or a bearer token."""
        path = "/".join(request.match_info[k] for k in ("repository", "type", "tag"))
        return await self._resource(request, path)

    async def get_sev_key(self, request: web.Request) -> web.Response:
        """``GET /kbs/v0/key/<workload_id>``: the LAUNCH_SECRET of the session's own SEV launch."""
        workload_id = request.match_info["workload_id"]
        if not SEV_WORKLOAD.fullmatch(workload_id):
            return _error(404, "ResourceNotFound", f"no such workload: {workload_id!r}")
        return await self._resource(request, sev_resource_path(workload_id))

    async def _resource(self, request: web.Request, path: str) -> web.Response:
        session_id = request.cookies.get(COOKIE, "")
        if not _SESSION_ID.fullmatch(session_id):
            session_id = ""
        auth = request.headers.get("Authorization", "")
        token = auth[len("Bearer ") :].strip() if auth.startswith("Bearer ") else ""
        if not token and not session_id:
            return _error(401, "TokenNotFound", "attest first, or send Authorization: Bearer <token>")
        if not self.nc.is_connected:
            return _unavailable("bus.unavailable: the release stage cannot be reached")
        request_id = _request_id()
        meta = schemas.RequestMeta(
            request_id=request_id,
            tee="resource",
            reply_to="",
            submitted_at=time.time(),
            session_id=session_id,
            # A tenant's path opens its resources to its own tokens; "" (unprefixed): the token's.
            tenant=_path_tenant(request) or "",
        )
        message = schemas.ResourceRequest(meta=meta, token=token, resource_path=path)
        with (
            structlog.contextvars.bound_contextvars(request_id=request_id, stage="gateway"),
            _root_span("remits.gateway.resource", request_id),
        ):
            outcome = await self._fetch_resource(message)
            log.debug("resource.answered", resource=path, status=outcome.status, reason=outcome.reason)
        if outcome.status == "released":
            return web.Response(body=outcome.jwe, content_type="application/json")
        if outcome.reason in _UNAVAILABLE:
            return _unavailable(f"{outcome.reason}: {outcome.detail}")
        if outcome.status == "not_found":
            return _error(404, "ResourceNotFound", f"{outcome.reason}: {outcome.detail}")
        if outcome.reason == "token.not_found":
            return _error(401, "TokenNotFound", outcome.detail)
        variant = "TokenVerifierError" if outcome.reason.startswith("token.") else "PolicyDeny"
        return _error(
            401, variant, f"{outcome.reason}: {outcome.detail}" if outcome.detail else outcome.reason
        )

    async def _fetch_resource(self, message: schemas.ResourceRequest) -> schemas.Outcome:
        """Ask a release replica (request/reply): a lost request is a 503 the guest retries."""
        rid = message.meta.request_id
        data = schemas.encode(message)
        headers = inject_headers({ROUTE_HEADER: route_header(rid)})
        if self.bus_auth is not None:
            headers[MAC_HEADER] = self.bus_auth.sign(schemas.RESOURCE_SUBJECT, data)
        try:
            reply = await self.nc.request(
                schemas.RESOURCE_SUBJECT, data, timeout=self.settings.request_timeout_s, headers=headers
            )
            if self.bus_auth is not None:
                self.bus_auth.verify(reply.subject, reply.data, reply.headers, accept=frozenset({"release"}))
            return schemas.decode_outcome(reply.data)
        except Unauthenticated as exc:
            log.warning("gateway.resource_answer_unauthenticated", detail=exc.detail)
            return schemas.Outcome(rid, "denied", exc.reason, exc.detail)
        except nats.errors.NoRespondersError:
            return schemas.Outcome(rid, "denied", "pipeline.unavailable", "no release stage is running")
        except (TimeoutError, nats.errors.TimeoutError):
            return schemas.Outcome(
                rid, "denied", "pipeline.timeout", f"no answer within {self.settings.request_timeout_s:.0f}s"
            )
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return schemas.Outcome(rid, "denied", "pipeline.unavailable", f"unreadable answer: {exc}")
        except nats.errors.Error as exc:
            return schemas.Outcome(rid, "denied", "pipeline.unavailable", repr(exc))

    async def put_resource(self, request: web.Request) -> web.Response:
        """KBS resource upload (raw bytes): an admin request like any other, relayed to provision."""
        path = "/".join(request.match_info[k] for k in ("repository", "type", "tag"))
        return await self._relay(request, "POST", f"kbs-resource/{path}", _path_tenant(request))

    async def admin(self, request: web.Request) -> web.Response:
        """/admin/v1/...: relayed to the provision component, which checks the admin credential."""
        if request.method not in ("GET", "PUT", "POST", "DELETE"):
            return _error(405, "InvalidRequestPath", f"{request.method} not allowed on {request.path}")
        return await self._relay(request, request.method, request.match_info["tail"], _path_tenant(request))

    async def _relay(
        self, request: web.Request, method: str, path: str, tenant: str | None
    ) -> web.Response:
        body = await _read_body(request, self.settings.max_body_bytes)
        return await self.relay_admin(
            method,
            path,
            request.headers.get("Authorization", ""),
            body,
            content_type=request.content_type,
            query=dict(request.query),
            tenant=tenant or tenants.DEFAULT,
        )

    async def authorize_admin(self, authorization: str) -> tuple[int, bytes]:
        """Who an admin credential names, as provision (the only holder of admin keys) says:
        (200, {"actor": ...}) or the refusal's status and body."""
        answer = await self.relay_admin("GET", "whoami", authorization, b"")
        return answer.status, bytes(answer.body)  # type: ignore[arg-type]

    async def relay_admin(
        self,
        method: str,
        path: str,
        authorization: str,
        body: bytes,
        content_type: str = "",
        query: dict[str, str] | None = None,
        tenant: str = tenants.DEFAULT,
    ) -> web.Response:
        if self.relay_key is None:
            return _admin_error(404, "admin.disabled", "this gateway has no relay key for the admin API")
        sealed = (
            jwe.encrypt_compact({"alg": "ECDH-ES", "enc": "A256GCM"}, body, self.relay_key) if body else ""
        )
        message = schemas.AdminRequest(
            method=method,
            path=path,
            authorization=authorization,
            sealed_body=sealed,
            content_type=content_type,
            query=query or {},
            tenant=tenant,
        )
        data = schemas.encode(message)
        headers = (
            {MAC_HEADER: self.bus_auth.sign(schemas.ADMIN_REQUEST_SUBJECT, data)} if self.bus_auth else None
        )
        try:
            reply_msg = await self.nc.request(
                schemas.ADMIN_REQUEST_SUBJECT, data, timeout=self.settings.request_timeout_s, headers=headers
            )
            if self.bus_auth is not None:
                self.bus_auth.verify(
                    reply_msg.subject, reply_msg.data, reply_msg.headers, accept=frozenset({"provision"})
                )
            reply = schemas.decode_admin_reply(reply_msg.data)
        except nats.errors.NoRespondersError:
            return _admin_error(503, "admin.unavailable", "no provision component is running")
        except (TimeoutError, nats.errors.TimeoutError):
            return _admin_error(503, "admin.unavailable", "provision did not answer in time")
        except (Unauthenticated, msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("gateway.admin_answer_refused", error=repr(exc))
            return _admin_error(502, "admin.bad_answer", "the answer to the admin request was not authentic")
        response = web.Response(
            status=reply.status, body=reply.body, content_type=reply.content_type or "application/json"
        )
        if reply.status == 429:  # a tenant's quota (stored resources): nothing was changed
            response.headers["Retry-After"] = str(RETRY_AFTER_S)
        return response


def _admin_error(status: int, reason: str, detail: str) -> web.Response:
    return web.Response(
        status=status, body=_json.encode({"error": reason, "detail": detail}), content_type="application/json"
    )
