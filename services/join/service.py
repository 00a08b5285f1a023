"""The join service: an attested-TLS front and a worker on the bus, like the gateway is for KBS.

One JSON line in, one JSON line out, per connection:

- ``{"op": "challenge", "cluster", "tee"}`` → ``{"session", "nonce"}``: a single-use nonce (the
  same sessions and nonces as KBS, in Redis);
- ``{"op": "join" | "reattest", "cluster", "node", "session"}``, over attested TLS with an
  evidence certificate (shared.atls) whose evidence binds the certificate key and that nonce →
  the pipeline appraises it (purpose "join", binding "atls": the same stages, exactly one
  decision) → for an affirming decision ``{"status": "joined", "token", "credential", "secrets"}``
  (the cluster's secrets as JWEs wrapped to the node key, released by the release stage under the
  node's token) and the membership recorded; otherwise ``{"status": "rejected", "reason"}`` and,
  for a member that fails to re-attest under its own key (not for want of a pipeline decision),
  an eviction on ``remits.cluster.<name>.evicted``. A member's name is bound to its key: a join
  under another key is refused (``join.name_taken``) and changes nothing;
- ``{"op": "check", "cluster", "credential"}`` → whether a node credential is that of a current
  member (an evicted node's credential is refused from then on).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import ssl
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import msgspec
import nats
import structlog
from cryptography.hazmat.primitives.asymmetric import ec

from services.common import StageContext, signed
from services.gateway.waiter import OutcomeWaiter
from services.join import membership, signing
from services.join.config import Cluster, load_clusters
from services.join.statement import statement_claims
from shared import schemas
from shared.atls import cert as atls_cert
from shared.atls import tls as atls_tls
from shared.bus import Publish
from shared.busauth import MAC_HEADER, Unauthenticated
from shared.ear import (
    EarSigner,
    jwk_thumbprint,
    load_or_create_signing_key,
)
from shared.errors import ParseError, RemitsError, VerificationError
from shared.telemetry import get_logger
from shared.trust.appraisal import token_revocations

log = get_logger("remits.join")
MAX_LINE = 64 * 1024
CREDENTIAL_LIFETIME_S = 3600
_AFFIRMED = ("affirming",)
# Reasons that say the pipeline could not decide (publish failed, no decision in time): they say
# nothing about the node, so they never evict it.
_PIPELINE_REASONS = "pipeline."


class Refused(Exception):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


def _service_identity() -> atls_tls.AttestedIdentity:
    """The front's own TLS certificate: a fresh key per start. Nodes need not trust it: what they
    receive is signed by the join key (JWKS) and wrapped to their own key."""
    key = ec.generate_private_key(ec.SECP256R1())
    pem = atls_cert.make_service_certificate(key, now=datetime.now(UTC), lifetime_s=30 * 86400, common_name="remits-join")
    return atls_tls.AttestedIdentity(cert_pem=pem, key=key)


class JoinService:
    def __init__(self, ctx: StageContext) -> None:
        self.ctx = ctx
        self.settings = ctx.settings
        self.clusters: dict[str, Cluster] = load_clusters(ctx.settings.join_clusters_path)
        self.store = membership.MembershipStore(ctx.js)
        signing_key = load_or_create_signing_key(ctx.settings.data_dir / "join-signing-key.pem")
        self.signer = EarSigner(signing_key)
        self._public_key = signing_key.public_key()
        self.waiter = OutcomeWaiter(ctx.nc, ctx.store, f"join-{uuid.uuid4().hex[:12]}", auth=ctx.auth)
        self.server: asyncio.AbstractServer | None = None
        self.port = 0
        self._sweeper: asyncio.Task[None] | None = None
        self._revocation_check: asyncio.Task[list[str]] | None = None
        # Set by every trust change: a running revocation check took its snapshot before that
        # change, so it goes round again (with a fresh snapshot) while this is set.
        self._revocations_dirty = False
        self._statement_sub: Any = None
        self.identity = _service_identity()

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        await self.waiter.start()
        ctx = atls_tls.server_context(self.identity, require_client_cert=True)
        # A challenge comes before the node has its evidence certificate: certificates are asked
        # for, not required, and the join op refuses a connection without one.
        ctx.verify_mode = ssl.CERT_OPTIONAL
        # The stream limit is the line limit: a longer line makes readline raise (see _connection).
        self.server = await asyncio.start_server(
            self._serve, self.settings.join_host, self.settings.join_port, ssl=ctx, limit=MAX_LINE
        )
        self.port = self.server.sockets[0].getsockname()[1]
        self._statement_sub = await self.ctx.nc.subscribe(schemas.CLUSTER_STATEMENT_SUBJECT, cb=self._on_statement_request)
        self._sweeper = asyncio.create_task(self._sweep_forever())
        if self.ctx.trust is not None:
            self.ctx.trust.on_change(self._on_trust_change)
            self._on_trust_change()  # the revocations already known at start
        if self.settings.join_reattest_s >= self.settings.token_lifetime_s:
            # Members' last EARs would expire before they must attest again: the cluster statement
            # would then list expired tokens, which a user's check refuses.
            log.warning(
                "join.reattest_exceeds_token_lifetime",
                reattest_s=self.settings.join_reattest_s, token_lifetime_s=self.settings.token_lifetime_s,
            )  # fmt: skip
        log.info("join.ready", port=self.port, clusters=sorted(self.clusters))

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._revocation_check is not None:
            self._revocation_check.cancel()
        if self._statement_sub is not None:
            await self._statement_sub.unsubscribe()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        await self.waiter.stop()

    def public_jwk(self) -> dict[str, str]:
        return self.signer.public_jwk()

    # -- the line protocol ----------------------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ssl_object = writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        try:
            attestation = atls_cert.read_attestation(der) if der else None
        except RemitsError as err:
            writer.write(json.dumps({"status": "rejected", "reason": err.reason, "detail": err.detail}).encode() + b"\n")
            writer.close()
            return
        await self._connection(reader, writer, attestation)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: Any) -> None:
        try:
            try:
                line = await asyncio.wait_for(reader.readline(), timeout=30)
            except ValueError:  # readline's LimitOverrunError: the line outgrew the stream limit
                raise Refused("join.bad_request", f"request longer than {MAX_LINE} bytes") from None
            if len(line) > MAX_LINE:
                raise Refused("join.bad_request", "request too long")
            try:
                request = json.loads(line)
            except ValueError:
                raise Refused("join.bad_request", "not one JSON line") from None
            if not isinstance(request, dict):
                raise Refused("join.bad_request", "not a JSON object")
            answer = await self.handle(request, peer)
        except Refused as refused:
            answer = {"status": "rejected", "reason": refused.reason, "detail": refused.detail}
        except RemitsError as err:
            answer = {"status": "rejected", "reason": err.reason, "detail": err.detail}
        except (TimeoutError, ConnectionError):
            writer.close()
            return
        except Exception as exc:  # fail closed, keep serving
            log.error("join.internal_error", error=repr(exc), exc_info=True)
            answer = {"status": "rejected", "reason": "join.internal_error"}
        try:
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def handle(self, request: dict[str, Any], peer: Any) -> dict[str, Any]:
        op = request.get("op")
        cluster_name = request.get("cluster")
        if not isinstance(cluster_name, str) or cluster_name not in self.clusters:
            raise Refused("join.unknown_cluster", f"{cluster_name!r} is not a cluster of this service")
        cluster = self.clusters[cluster_name]
        if op == "challenge":
            return await self._challenge(cluster, request)
        if op in ("join", "reattest"):
            if peer is None:
                raise Refused("atls.no_evidence", "join over attested TLS, with an evidence certificate")
            return await self._join(cluster_name, cluster, request, peer, reattest=op == "reattest")
        if op == "check":
            return await self._check(cluster_name, request)
        raise Refused("join.bad_request", f"unknown op {op!r}")

    async def _challenge(self, cluster: Cluster, request: dict[str, Any]) -> dict[str, Any]:
        tee = request.get("tee")
        if not isinstance(tee, str) or (cluster.tees and tee not in cluster.tees):
            raise Refused("join.tee_not_allowed", f"TEE {tee!r} may not join this cluster")
        session = await self.ctx.store.create_session(tee, self.settings.nonce_ttl_s)
        return {"session": session.session_id, "nonce": session.nonce}

    async def _join(
        self, cluster_name: str, cluster: Cluster, request: dict[str, Any], attestation: Any, *, reattest: bool
    ) -> dict[str, Any]:
        node = membership.check_name(request.get("node", ""), "node")
        session_id = request.get("session")
        if not isinstance(session_id, str):
            raise Refused("join.bad_request", "no session")
        if attestation.kind != "evidence":
            raise Refused("atls.no_evidence", "a node joins with its platform evidence, not a token")
        if cluster.tees and attestation.tee not in cluster.tees:
            raise Refused("join.tee_not_allowed", f"TEE {attestation.tee!r} may not join this cluster")
        found = await self.store.entry(cluster_name, node)
        previous, previous_revision = found if found is not None else (None, 0)
        held = previous is not None and previous.status == membership.MEMBER
        if reattest and not held:
            raise Refused("join.not_a_member", f"{node} is not a member of {cluster_name}")
        # The TLS handshake proved possession of this key: it, not the name, says who is asking.
        key_sha256 = hashlib.sha256(attestation.spki).hexdigest()
        if held and previous is not None and previous.key_sha256 != key_sha256:
            # Another key may neither take over a member's name nor, by failing, evict it.
            raise Refused("join.name_taken", f"{node} is a member of {cluster_name} under another key")
        tee_pubkey = atls_cert.tee_pubkey_jwk(attestation.public_key)
        outcome = await self._appraise(attestation, tee_pubkey, session_id)
        now = time.time()
        if outcome.status not in _AFFIRMED or not outcome.token:
            reason = outcome.reason or f"status.{outcome.status}"
            # Only the member's own key failing its attestation evicts it; a pipeline that could
            # not decide says nothing about the node.
            if (
                held and previous is not None and previous.key_sha256 == key_sha256
                and not reason.startswith(_PIPELINE_REASONS)
            ):  # fmt: skip
                await self._evict(previous, previous_revision, reason, outcome.detail)
            return {"status": "rejected", "reason": reason, "detail": outcome.detail}
        claims = _unverified_claims(outcome.token)
        tee_claims = claims["submods"]["cpu0"]["ear.veraison.annotated-evidence"].get(attestation.tee, {})
        member = membership.joined(
            previous, cluster=cluster_name, node=node, tee=attestation.tee, ear=outcome.token,
            tee_claims=tee_claims, key_sha256=key_sha256, now=now,
        )  # fmt: skip
        # Compare-and-set over the record read above: a sweep or revocation that evicted the node
        # (or another join) while this one was decided is not overwritten.
        revision = await self.store.write(member, previous_revision)
        if revision is None:
            raise await self._write_conflict(cluster_name, node)
        # Secrets only once the membership is recorded; when they cannot be had, the record goes
        # back to what it was, so the node's current credential is not superseded for nothing.
        try:
            secrets = await self._secrets(cluster, outcome.token)
        except Exception:  # refused or not, the node leaves with nothing: undo the write
            if not await self.store.restore(previous, cluster_name, node, revision):
                log.warning("join.restore_skipped", cluster=cluster_name, node=node)
            raise
        credential = self.signer.sign({
                "iss": "remits-join", "sub": node, "cluster": cluster_name, "iat": int(now),
                "exp": int(now) + CREDENTIAL_LIFETIME_S, "jti": uuid.uuid4().hex,
                "cnf": {"jkt": jwk_thumbprint(tee_pubkey)}, "ear_sha256": member.ear_sha256,
            },
        )  # fmt: skip
        log.info("join.joined", cluster=cluster_name, node=node, tee=attestation.tee, reattest=reattest)
        return {"status": "joined", "token": outcome.token, "credential": credential, "secrets": secrets}

    async def _write_conflict(self, cluster_name: str, node: str) -> Refused:
        """Why a join lost its compare-and-set: the node was evicted meanwhile, or its record
        changed otherwise (another join of the same name)."""
        now_found = await self.store.get(cluster_name, node)
        if now_found is not None and now_found.status == membership.EVICTED:
            return Refused("credential.evicted", f"{node} was evicted while joining ({now_found.reason})")
        return Refused("join.conflict", f"the record of {node} changed while joining: try again")

    async def _appraise(self, attestation: Any, tee_pubkey: dict[str, str], session_id: str) -> schemas.Outcome:
        """The node's evidence through the pipeline, exactly as a KBS attestation goes."""
        request_id = uuid.uuid4().hex
        meta = schemas.RequestMeta(
            request_id=request_id, tee=attestation.tee, reply_to=self.waiter.subject, submitted_at=time.time(),
            session_id=session_id, nonce=base64.b64encode(attestation.nonce).decode(), purpose="join", binding="atls",
        )  # fmt: skip
        message = schemas.AttestRequest(meta=meta, tee_pubkey=tee_pubkey, primary_evidence=attestation.evidence)
        future = self.waiter.expect(request_id)
        with structlog.contextvars.bound_contextvars(request_id=request_id, stage="join"):
            try:
                await self.ctx.publisher.send(
                    Publish(schemas.stage_subject("intake"), message, f"{request_id}:join"), request_id
                )
            except Exception as exc:
                self.waiter.forget(request_id)
                return schemas.Outcome(request_id, "rejected", "pipeline.unavailable", repr(exc))
            return await self.waiter.wait(request_id, future, self.settings.request_timeout_s)

    async def _secrets(self, cluster: Cluster, token: str) -> dict[str, Any]:
        """Each cluster secret from release, under the node's own token: wrapped to its key."""
        out: dict[str, Any] = {}
        for path in cluster.secrets:
            rid = uuid.uuid4().hex
            request = schemas.ResourceRequest(
                meta=schemas.RequestMeta(rid, "", "", time.time(), purpose="join"), token=token, resource_path=path
            )
            data = schemas.encode(request)
            headers = signed(self.ctx, schemas.RESOURCE_SUBJECT, data) or {}
            try:
                reply = await self.ctx.nc.request(
                    schemas.RESOURCE_SUBJECT, data, timeout=self.settings.request_timeout_s, headers=headers
                )
                if self.ctx.auth is not None:
                    self.ctx.auth.verify(reply.subject, reply.data, reply.headers, accept=frozenset({"release"}))
                outcome = schemas.decode_outcome(reply.data)
            except (Unauthenticated, nats.errors.Error, TimeoutError, msgspec.DecodeError) as exc:
                raise Refused("join.secret_unavailable", f"{path}: {exc!r}") from None
            if outcome.status != "released":
                raise Refused("join.secret_denied", f"{path}: {outcome.reason} {outcome.detail}".strip())
            out[path] = json.loads(outcome.jwe)
        return out

    async def _check(self, cluster_name: str, request: dict[str, Any]) -> dict[str, Any]:
        credential = request.get("credential")
        if not isinstance(credential, str):
            raise Refused("join.bad_request", "no credential")
        if signing.header_kid(credential, "credential") != self.signer.kid:
            raise VerificationError("credential.unknown_kid", "not signed by this join service")
        claims = signing.verify(credential, self._public_key, int(time.time()), "credential")
        if claims.get("cluster") != cluster_name:
            raise VerificationError("credential.cluster", f"issued for {claims.get('cluster')!r}")
        member = await self.store.get(cluster_name, str(claims.get("sub", "")))
        if member is None or member.status != membership.MEMBER:
            reason = member.reason if member is not None else "unknown"
            raise VerificationError("credential.evicted", f"{claims.get('sub')} is not a member ({reason})")
        if member.ear_sha256 != claims.get("ear_sha256"):
            raise VerificationError("credential.superseded", "the node attested again since: use its new credential")
        return {"status": "valid", "node": member.node, "tee": member.tee, "last_attested": member.last_attested}

    # -- eviction --------------------------------------------------------------------------------
    async def _evict(self, member: schemas.ClusterMember, revision: int, reason: str, detail: str = "") -> bool:
        """Evict ``member`` as read at ``revision`` and announce it, once: False (and nothing
        published) when the record changed since, e.g. another replica evicted it first or the
        node attested again."""
        now = time.time()
        if not await self.store.replace(membership.evicted(member, reason, now), revision):
            log.info("join.evict_skipped", cluster=member.cluster, node=member.node, reason=reason)
            return False
        event = schemas.ClusterEvent(cluster=member.cluster, node=member.node, event="evicted", reason=reason, at=now, detail=detail)
        subject = schemas.cluster_subject(member.cluster, "evicted")
        data = msgspec.json.encode(event)
        await self.ctx.nc.publish(subject, data, headers=signed(self.ctx, subject, data))
        log.warning("join.evicted", cluster=member.cluster, node=member.node, reason=reason)
        return True

    def _on_trust_change(self) -> None:
        # Called by the mirror for every change it receives. One check runs at a time; a change
        # that arrives while it runs marks it dirty, so it goes round again with a new snapshot
        # rather than the change waiting for the next one.
        self._revocations_dirty = True
        if self._revocation_check is None or self._revocation_check.done():
            self._revocation_check = asyncio.create_task(self._evict_revoked_until_clean())

    async def _evict_revoked_until_clean(self) -> list[str]:
        out: list[str] = []
        while self._revocations_dirty:
            self._revocations_dirty = False
            try:
                out += await self.evict_revoked()
            except Exception as exc:  # the next trust change tries again
                log.warning("join.revocation_check_failed", error=repr(exc))
                break
        return out

    async def evict_revoked(self) -> list[str]:
        """Evict, at once, every member whose last attestation a revocation now names: its
        token, its chip, its measurement (shared.trust.appraisal.token_revocations)."""
        if self.ctx.trust is None:
            return []
        snapshot = self.ctx.trust.snapshot()
        if not snapshot.revocations:
            return []
        out = []
        for name in self.clusters:
            for member, revision in await self.store.entries(name):
                if member.status != membership.MEMBER:
                    continue
                claims = _unverified_claims(member.ear)
                tee_claims = claims.get("submods", {}).get("cpu0", {}).get("ear.veraison.annotated-evidence", {}).get(member.tee, {})
                found = token_revocations(snapshot, str(claims.get("jti", "")), member.tee, tee_claims)
                if found:
                    record = found[0].record
                    if await self._evict(member, revision, f"revoked.{record.kind}", record.reason):
                        out.append(member.node)
        return out

    async def sweep(self, now: float | None = None) -> list[str]:
        """Evict every member that missed its re-attestation; the nodes evicted."""
        now = time.time() if now is None else now
        out = []
        for name in self.clusters:
            for member, revision in await self.store.entries(name):
                if membership.overdue(member, now, self.settings.join_reattest_s):
                    detail = f"last attested {int(now - member.last_attested)} s ago"
                    if await self._evict(member, revision, "reattest.missed", detail):
                        out.append(member.node)
        return out

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(max(1.0, self.settings.join_reattest_s / 2))
            try:
                await self.sweep()
            except Exception as exc:  # the next round tries again
                log.warning("join.sweep_failed", error=repr(exc))

    # -- the user-facing statement ---------------------------------------------------------------
    async def statement(self, cluster_name: str) -> str:
        if cluster_name not in self.clusters:
            raise ParseError("cluster", f"{cluster_name!r} is not a cluster of this service", prefix="join")
        cluster = self.clusters[cluster_name]
        members = await self.store.members(cluster_name)
        policy_id = cluster.policy_id or ",".join(f"attestation.{t}" for t in cluster.tees) or "attestation"
        return self.signer.sign(statement_claims(cluster_name, members, policy_id, int(time.time())))

    async def _on_statement_request(self, msg: Any) -> None:
        try:
            if self.ctx.auth is not None:
                self.ctx.auth.verify(msg.subject, msg.data, msg.headers, accept=frozenset({"gateway"}))
            request = json.loads(msg.data)
            cluster = request.get("cluster") if isinstance(request, dict) else None
            if not isinstance(cluster, str):
                # e.g. a list, which would fail unhashable in the lookup and leave no reply at all
                raise ParseError("cluster", f"{cluster!r} is not a cluster name", prefix="join")
            body = {"statement": await self.statement(cluster)}
        except Unauthenticated:
            return
        except (RemitsError, ValueError, AttributeError) as exc:
            body = {"error": getattr(exc, "reason", "join.bad_request"), "detail": str(exc)}
        data = json.dumps(body).encode()
        headers = {MAC_HEADER: self.ctx.auth.sign(msg.reply, data)} if self.ctx.auth is not None else None
        await msg.respond(data) if headers is None else await self.ctx.nc.publish(msg.reply, data, headers=headers)


def _unverified_claims(token: str) -> dict[str, Any]:
    # The token came from release over an authenticated answer: read, not re-verified.
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
