"""Secret release (key broker): records attested sessions and releases resources, wrapped as JWE to
the TEE's key, only against a valid, unexpired, affirming token signed by this service.

It has two inputs: decisions, read from the decision stream (the record auditors read), and
resource fetches, core NATS requests from the gateway answered directly (``ResourceResponder``)."""

from __future__ import annotations

import contextlib
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from nats.aio.msg import Msg
from opentelemetry.trace import SpanKind

from services import sevlaunch
from services.common import StageContext, notify_outcome, outcome_mac, outcome_of, signed
from services.custody import KeySetVerifier, tenant_public_key
from shared import credentials, schemas, tenants
from shared.bus import Publish, QueueResponder
from shared.busauth import Unauthenticated
from shared.cache import TtlCache
from shared.connections import file_stamp, with_custody
from shared.ear import CPU_SUBMOD, K_EVIDENCE, UnverifiedToken, submod_status, tee_pubkey_from_claims
from shared.errors import RemitsError, VerificationError
from shared.jwe import wrap_secret
from shared.kbs.wire import ATTESTED_TEES
from shared.platforms.sev import broker
from shared.policy.engine import PolicyError
from shared.sealing import KeyRing, SealingError, unseal
from shared.stats import STATS
from shared.telemetry import extract_context, get_logger, is_sampled, tracer
from shared.trust.appraisal import (
    REVOCATION_CLAIMS,
    platform_revocations,
    revocation_input,
    token_revocations,
)
from shared.trust.evaluate import PLATFORM_REVOKED, PolicyUnavailable, resource_policy
from shared.trust.snapshot import Entry

STAGE = "release"
# Who may ask for a resource on a node's behalf: the KBS gateway and the clusters' join service.
_RESOURCE_ASKERS = credentials.EXPECTS["release"]["resource_request"]
log = get_logger("remits.release")

# Clocks of the decide and release replicas may differ by this much (NTP keeps real hosts far
# closer): a token issued "in the future" by up to this is accepted; its expiry is not extended.
CLOCK_SKEW_S = 60

RESOURCE_PATH = re.compile(r"^[A-Za-z0-9_.-]{1,128}/[A-Za-z0-9_.-]{1,128}/[A-Za-z0-9_.-]{1,128}$")


@dataclass(frozen=True)
class VerifiedToken:
    """What release needs from a token this service signed: its status, the TEE key secrets are
    wrapped to (or why it names none), the challenge it answers, and what the resource policy
    and revocations judge (the workload's TEE and claims, the token's id and validity)."""

    status: str
    tee_jwk: dict[str, Any] | VerificationError
    eat_nonce: str
    tee: str = ""
    claims: dict[str, Any] = field(default_factory=dict)
    jti: str = ""
    iat: int = 0
    exp: int = 0
    tenant: str = tenants.DEFAULT  # whose key signed it (its iss): whose resources it may open
    init_data: str = ""  # the digest of the init-data the TEE was launched with (hex), if it gave one

    def policy_input(self) -> dict[str, Any]:
        measurement_claim = REVOCATION_CLAIMS.get(self.tee, {}).get("measurement", "")
        return {
            "status": self.status,
            "tee": self.tee,
            "iat": self.iat,
            "exp": self.exp,
            "jti": self.jti,
            "measurement": str(self.claims.get(measurement_claim, "")),
            "claims": self.claims,
            "tenant": self.tenant,
            "init_data": self.init_data,
        }


def _init_data_digest(claims: dict[str, Any]) -> str:
    """The init-data digest intake bound to the evidence (runtime_data_claims), or ""."""
    annotated = claims.get("submods", {}).get(CPU_SUBMOD, {}).get(K_EVIDENCE, {})
    runtime = annotated.get("runtime_data_claims") if isinstance(annotated, dict) else None
    digest = runtime.get("init_data_digest") if isinstance(runtime, dict) else None
    return digest if isinstance(digest, str) else ""


def _workload(claims: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The TEE and its claims from a token's annotated evidence (where decide put them)."""
    annotated = claims.get("submods", {}).get(CPU_SUBMOD, {}).get(K_EVIDENCE, {})
    for tee in ATTESTED_TEES:
        if isinstance(annotated.get(tee), dict):
            return tee, annotated[tee]
    return "", {}


class Release:
    def __init__(
        self, ctx: StageContext, keyring: KeyRing | None = None, kek_path: Path | None = None
    ) -> None:
        self.ctx = ctx
        self._keyring = keyring
        self._kek_path = kek_path  # read again when a record names a KEK this replica does not hold
        self._kek_stamp = file_stamp(kek_path) if kek_path is not None else None  # ... and it changed
        # Tokens of a signing key rotated out stay valid until they expire (services.custody).
        # One key set per tenant: a token verifies only with the keys of the tenant it names.
        self._verifiers = {tenants.DEFAULT: KeySetVerifier(ctx.settings, ctx.signing_key.public_key())}
        # Tokens this replica verified, until they expire: the token a guest presents right after
        # attesting is byte for byte the one checked when its decision arrived.
        self._verified: TtlCache[str, VerifiedToken] = TtlCache(100_000)

    def verified_token(self, token: str) -> VerifiedToken:
        entry = self._verified.get(token)
        if entry is None:
            now = self.ctx.clock()
            unverified = UnverifiedToken.parse(token)  # read once: its iss and kid choose the key
            tenant = tenants.tenant_of_issuer(unverified.issuer)
            if not tenant:
                raise VerificationError("token.unknown_issuer", "the token was not issued by this service")
            # Before any key of it is looked up or recorded: an unverified iss must not make this
            # replica derive keys (and write key sets) for names that are no tenant's.
            if tenant != tenants.DEFAULT and self.ctx.trust is not None and not self.ctx.trust.snapshot(tenant).known:
                raise VerificationError("tenant.unknown", f"no tenant {tenant!r}")
            claims = self._verifier(tenant).verify_parsed(unverified, now=int(now), issued_skew_s=CLOCK_SKEW_S)
            tee_jwk: dict[str, Any] | VerificationError
            try:
                tee_jwk = tee_pubkey_from_claims(claims)
            except VerificationError as err:
                tee_jwk = err
            nonce = claims.get("eat_nonce")
            tee, tee_claims = _workload(claims)
            entry = VerifiedToken(
                submod_status(claims), tee_jwk, nonce if isinstance(nonce, str) else "",
                tee=tee, claims=tee_claims, jti=str(claims.get("jti", "")),
                iat=int(claims.get("iat", 0)), exp=int(claims["exp"]), tenant=tenant,
                init_data=_init_data_digest(claims),
            )  # fmt: skip
            self._verified.put(token, entry, float(claims["exp"]) - now)
        return entry

    def _verifier(self, tenant: str) -> KeySetVerifier:
        verifier = self._verifiers.get(tenant)
        if verifier is None:
            settings = self.ctx.settings
            try:
                current = tenant_public_key(settings, tenant, root=self.ctx.signing_key)
            except Exception as exc:  # an HSM key the operator has not created: nothing verifies
                log.error("release.tenant_key_unavailable", tenant=tenant, error=repr(exc))
                raise VerificationError("custody.key_unavailable", f"no signing key of tenant {tenant!r}") from None
            verifier = self._verifiers[tenant] = KeySetVerifier(settings, current, tenant)
        return verifier

    async def handle(self, message: schemas.StageUnion) -> Sequence[Publish]:
        """The stage handler for the decision stream."""
        if isinstance(message, schemas.Decision):
            await self.on_decision(message)
        else:  # only on an open bus: with keys, the runner lets decisions alone through
            outcome = schemas.Outcome(message.meta.request_id, "rejected", "bus.unexpected_message")
            await notify_outcome(self.ctx, message.meta.reply_to, outcome)
        return []

    async def on_decision(self, decision: schemas.Decision) -> None:
        ctx, meta = self.ctx, decision.meta
        if decision.status != "rejected":
            try:
                # Never mark a session attested on a token this service did not sign...
                verified = self.verified_token(decision.token)
                if meta.session_id:
                    # ...nor on one issued for another session's challenge.
                    outcome = outcome_of(decision)
                    data = schemas.encode(outcome)
                    bound = await ctx.store.mark_attested(
                        meta.session_id, decision.token, verified.eat_nonce, ctx.settings.token_lifetime_s,
                        (meta.request_id, data, outcome_mac(ctx, meta.request_id, data)),
                    )  # fmt: skip
                    if bound != "ok":
                        raise VerificationError(
                            f"token.{bound}", "the token does not answer this session's challenge"
                        )
                    await notify_outcome(ctx, meta.reply_to, outcome, stored=True)
                    return
            except RemitsError as err:
                log.warning("decision.token_refused", reason=err.reason, detail=err.detail)
                decision = schemas.Decision(
                    meta=meta, status="rejected", decided_at=ctx.clock(), reason=err.reason, detail=err.detail
                )
        await notify_outcome(ctx, meta.reply_to, outcome_of(decision))

    async def resource(self, request: schemas.ResourceRequest) -> schemas.Outcome:
        rid = request.meta.request_id
        if not RESOURCE_PATH.match(request.resource_path):
            return schemas.Outcome(rid, "denied", "resource.bad_path", request.resource_path)
        session = (
            await self.ctx.store.get_session(request.meta.session_id) if request.meta.session_id else None
        )
        # An attested session's own token first (the cookie), else the bearer token presented.
        token = session.token if session is not None and session.state == "attested" else request.token
        if not token:
            return schemas.Outcome(
                rid, "denied", "token.not_found", "attest first, or send Authorization: Bearer <token>"
            )
        try:
            verified = self.verified_token(token)
            # A tenant's path (/t/<tenant>/kbs/v0/resource/...) opens that tenant's resources to
            # its own tokens only; the unprefixed path, the token's own tenant's.
            if request.meta.tenant and request.meta.tenant != verified.tenant:
                return schemas.Outcome(
                    rid, "denied", "token.wrong_tenant",
                    f"a token of tenant {verified.tenant!r} opens none of tenant {request.meta.tenant!r}'s resources",
                )  # fmt: skip
            allowed, reason, entry = self._judge(verified, request.resource_path)
            if not allowed:
                return schemas.Outcome(rid, "denied", reason, f"resource policy: {reason}")
            if entry is None:
                return schemas.Outcome(rid, "not_found", "resource.not_found", request.resource_path)
            if verified.tee == sevlaunch.TEE:
                # A SEV launch: the secret goes to the firmware, sealed under the launch's TEK/TIK.
                own = session is not None and session.state == "attested" and session.token == token
                packet = await self._sev_secret(
                    request, verified, own, self._unseal(tenants.scoped_key(verified.tenant, entry.key), entry.record)
                )
                log.debug("resource.released", resource=request.resource_path)
                return schemas.Outcome(rid, "released", jwe=packet)
            tee_jwk = verified.tee_jwk
            if isinstance(tee_jwk, VerificationError):
                raise tee_jwk
            jwe = wrap_secret(self._unseal(tenants.scoped_key(verified.tenant, entry.key), entry.record), tee_jwk)
        except RemitsError as err:
            return schemas.Outcome(rid, "denied", err.reason, err.detail)
        log.debug("resource.released", resource=request.resource_path)  # never the value
        return schemas.Outcome(rid, "released", jwe=msgspec.json.encode(jwe))

    async def _sev_secret(
        self, request: schemas.ResourceRequest, verified: VerifiedToken, own: bool, plaintext: bytes
    ) -> bytes:
        """The LAUNCH_SECRET answer for the session's own launch: its workload's secret, bound to
        the measurement the token vouches for. Only the session that attested the launch gets it
        (a bearer token names no launch session's keys)."""
        if not own:
            raise VerificationError("sev.session_not_attested", "the secret goes to the launch's own attested session")
        workload = str(verified.claims.get("sev.workload_id", ""))
        if request.resource_path != sevlaunch.resource_path(workload):
            raise VerificationError("sev.workload_mismatch", f"this launch is workload {workload!r}")
        state = await sevlaunch.load_state(self.ctx, request.meta.session_id)
        if state.workload_id != workload:
            raise VerificationError("sev.workload_mismatch", "the session launched another workload")
        try:
            measured = bytes.fromhex(str(verified.claims.get("sev.measure", "")))
        except ValueError:
            measured = b""
        if len(measured) != 32:
            raise VerificationError("sev.measurement", "the token vouches for no launch measurement")
        return broker.secret_answer(state, measured, plaintext)

    def _judge(
        self, verified: VerifiedToken, path: str
    ) -> tuple[bool, str, Entry[schemas.ResourceRecord] | None]:
        """The resource policy over the token, the resource's binding and the revocations that
        void the token. A resource that does not exist is judged with no binding, so that a
        token the policy refuses learns nothing about which resources exist."""
        assert self.ctx.trust is not None and self.ctx.policies is not None
        snapshot = self.ctx.trust.snapshot(verified.tenant)
        if not snapshot.known:  # the tenant was deleted: its tokens open nothing any more
            return False, "tenant.unknown", None
        # The platform team's revocation of the token's chip or FMSPC, inherited by this tenant:
        # refused before the tenant's own resource policy, which may ignore input.revocations.
        inherited = platform_revocations(snapshot, verified.tee, verified.claims)
        if inherited:
            log.info(
                "resource.platform_revoked",
                revocations=[f"{e.record.kind}:{e.record.value}" for e in inherited],
            )
            return False, PLATFORM_REVOKED, None
        entry = snapshot.resources.get(path)
        try:
            policy = resource_policy(snapshot, self.ctx.policies)
        except PolicyUnavailable as exc:
            log.error("resource.policy_unavailable", detail=str(exc))
            return False, "policy.unavailable", None
        revoked = token_revocations(snapshot, verified.jti, verified.tee, verified.claims)
        try:
            result = policy.evaluate(
                {
                    "token": verified.policy_input(),
                    "resource": {"path": path, "binding": entry.record.binding if entry is not None else {}},
                    "revocations": revocation_input(revoked),
                    # Whole seconds, as the token's exp: an integer input takes rego-cpp's fast
                    # input builder (floats go through its parser), and now < exp is unchanged.
                    "now": math.floor(self.ctx.clock()),
                }
            )
        except PolicyError as exc:
            log.error("resource.policy_failed", detail=str(exc))
            return False, "policy.evaluation_failed", None
        allowed = result.get("allow") is True
        reason = result.get("reason")
        return (
            allowed,
            str(reason) if isinstance(reason, str) and reason else ("ok" if allowed else "policy.denied"),
            entry,
        )

    def _unseal(self, path: str, record: schemas.ResourceRecord) -> bytes:
        if self._keyring is None:
            raise VerificationError("resource.sealed", "this release replica holds no key-encryption key")
        if record.sealed.get("kid") not in self._keyring.kids and self._kek_path is not None:
            # `remits kek rotate` re-wrapped the data keys under a KEK written to the key file:
            # read it again once it changed, not for every request naming a KEK it does not hold.
            stamp = file_stamp(self._kek_path)
            if stamp != self._kek_stamp:
                with contextlib.suppress(SealingError, OSError):
                    self._keyring = with_custody(self.ctx.settings, KeyRing.load(self._kek_path))
                    self._kek_stamp = stamp
        try:
            return unseal(self._keyring, record.sealed, path.encode())
        except SealingError as exc:
            log.error("resource.unseal_failed", resource=path, error=str(exc))
            raise VerificationError(
                "resource.unsealable", "the stored resource does not open with this KEK"
            ) from None


class ResourceResponder(QueueResponder):
    """Answers resource fetches on RESOURCE_SUBJECT (a queue group shared by every release
    replica). Over ``limit`` fetches in progress, it answers "unavailable" (the guest retries)
    rather than queueing without bound."""

    def __init__(self, release: Release, limit: int) -> None:
        super().__init__(release.ctx.nc, schemas.RESOURCE_SUBJECT, schemas.RESOURCE_QUEUE)
        self._release = release
        self._limit = limit
        self._times = STATS.stage("release.resource")

    async def _answer(self, msg: Msg) -> None:
        started = time.monotonic()
        auth = self._release.ctx.auth
        try:
            if auth is not None:
                auth.verify(msg.subject, msg.data, msg.headers, accept=_RESOURCE_ASKERS)
            request = schemas.decode_stage(msg.data)
        except Unauthenticated as exc:
            log.warning("resource.unauthenticated", detail=exc.detail)
            await self._reply(msg, schemas.Outcome("", "denied", exc.reason, exc.detail))
            return
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            await self._reply(msg, schemas.Outcome("", "denied", "bus.undecodable", str(exc)))
            return
        if not isinstance(request, schemas.ResourceRequest):
            await self._reply(
                msg, schemas.Outcome(request.meta.request_id, "denied", "bus.unexpected_message")
            )
            return
        if len(self._in_progress) > self._limit:
            await self._reply(
                msg,
                schemas.Outcome(request.meta.request_id, "denied", "pipeline.unavailable", "release is busy"),
            )
            return
        try:
            if is_sampled(msg.headers):
                with tracer().start_as_current_span(
                    "remits.release",
                    context=extract_context(msg.headers),
                    kind=SpanKind.CONSUMER,
                    attributes={"remits.request_id": request.meta.request_id, "remits.stage": STAGE},
                ):
                    outcome = await self._release.resource(request)
            else:
                outcome = await self._release.resource(request)
        except Exception as exc:  # Redis unreachable and the like: the guest may retry
            log.error("resource.failed", error=repr(exc))
            outcome = schemas.Outcome(
                request.meta.request_id, "denied", "pipeline.unavailable", "release failed"
            )
        await self._reply(msg, outcome)
        self._times.processed += 1
        self._times.service.record((time.monotonic() - started) * 1000.0)

    async def _reply(self, msg: Msg, outcome: schemas.Outcome) -> None:
        if msg.reply:
            data = schemas.encode(outcome)
            await self._release.ctx.nc.publish(
                msg.reply, data, headers=signed(self._release.ctx, msg.reply, data)
            )
