"""Evidence intake: consume the single-use nonce, parse the evidence, check its challenge binding."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence

from services.common import StageContext, next_stage, reject
from services.sevlaunch import CERTIFICATES, check_workload_id
from services.sevlaunch import TEE as SEV
from shared import schemas
from shared.bus import Publish
from shared.cache import NonceState
from shared.errors import ParseError, RemitsError
from shared.kbs.binding import expected_report_data, report_data_matches
from shared.kbs.initdata import binding_matches, parse_init_data
from shared.platforms.sev import abi

STAGE = "intake"
# IBM SE guests bind SHA-512 of the runtime data (all 64 bytes of the user data's first part); the
# others SHA-384, zero-padded to 64.
_REPORT_DATA_HASH = {"se": "sha512"}
ATLS_BINDING = "atls"

_NONCE_REASONS = {
    NonceState.REPLAYED: ("nonce.replayed", "the challenge nonce was already used"),
    NonceState.EXPIRED: ("nonce.expired", "the challenge nonce has expired"),
    NonceState.UNKNOWN: ("nonce.unknown", "no such challenge nonce (never issued, or long expired)"),
    NonceState.WRONG_SESSION: ("nonce.wrong_session", "the nonce was issued to another session"),
}


def atls_expected_report_data(nonce: str, tee_pubkey: dict[str, object]) -> bytes:
    """An attested-TLS certificate's evidence: SHA-384 of the certificate key's SubjectPublicKeyInfo
    and the challenge nonce's bytes (the key is the tee-pubkey the join front read from it)."""
    from shared.atls.cert import evidence_binding, spki_der
    from shared.kbs.wire import tee_public_key

    try:
        nonce_bytes = base64.b64decode(nonce, validate=True)
    except (ValueError, binascii.Error):
        raise ParseError("nonce", "not standard base64", prefix="atls") from None
    return evidence_binding(spki_der(tee_public_key(tee_pubkey)), nonce_bytes)


def _sev_launch(message: schemas.SevLaunchRequest) -> Publish:
    """A SEV host's launch request: every certificate must parse before anything is verified."""
    try:
        check_workload_id(message.workload_id)
        for name in CERTIFICATES:
            data = message.certificates.get(name)
            if data is None:
                raise ParseError("chain", f"no {name} certificate", prefix="sev")
            parse = abi.parse_ca_cert if name in ("ark", "ask") else abi.parse_sev_cert
            parse(data, f"sev.{name}")
    except RemitsError as err:
        return reject(message.meta, STAGE, err)
    return next_stage("endorse", message, STAGE)


def make_handler(ctx: StageContext):
    async def handle(message: schemas.StageUnion) -> Sequence[Publish]:
        if isinstance(message, schemas.SevLaunchRequest):
            return [_sev_launch(message)]
        if isinstance(message, schemas.SeChallengeRequest):
            # Nothing to parse yet: the attestation request is built by identity, which holds the key.
            return [next_stage("endorse", message, STAGE)]
        if not isinstance(message, schemas.AttestRequest):
            return [reject(message.meta, STAGE, "bus.unexpected_message", type(message).__name__)]
        meta = message.meta
        state = await ctx.store.consume_nonce(meta.nonce, meta.session_id, meta.request_id, ctx.clock())
        if state is not NonceState.OK:
            reason, detail = _NONCE_REASONS[state]
            return [reject(meta, STAGE, reason, detail)]
        platform = ctx.platforms.get(meta.tee)
        if platform is None:
            return [reject(meta, STAGE, "tee.unsupported", f"no verifier for TEE {meta.tee!r}")]
        try:
            info = platform.parse_evidence(message.primary_evidence)
            # A SEV launch measurement has no report_data: the session's TIK binds it (measure).
            if meta.tee == SEV:
                expected = b""
            elif meta.binding == ATLS_BINDING:
                expected = atls_expected_report_data(meta.nonce, message.tee_pubkey)
            else:
                expected = expected_report_data(
                    meta.nonce, message.tee_pubkey, message.additional_evidence, _REPORT_DATA_HASH.get(meta.tee, "sha384")
                )
        except RemitsError as err:
            return [reject(meta, STAGE, err)]
        init_data_claims = None
        digest = b""
        if message.init_data is not None:
            try:
                init_data_claims, digest = parse_init_data(message.init_data["format"], message.init_data["body"])
            except RemitsError as err:
                return [reject(meta, STAGE, err)]
            if info.init_data_binding is None:
                return [reject(meta, STAGE, "init_data.unsupported", f"{meta.tee} evidence has no init-data field")]
            if not binding_matches(info.init_data_binding, digest):
                return [
                    reject(
                        meta,
                        STAGE,
                        "evidence.init_data_mismatch",
                        f"launch field {info.init_data_binding.hex()} does not bind the init-data digest {digest.hex()}",
                    )
                ]
        if meta.tee != SEV and not report_data_matches(info.report_data, expected):
            return [
                reject(
                    meta,
                    STAGE,
                    "evidence.report_data_mismatch",
                    f"report_data {info.report_data.hex()} does not bind nonce and tee-pubkey",
                )
            ]
        runtime_data_claims: dict[str, object] = {"nonce": meta.nonce, "tee-pubkey": message.tee_pubkey}
        if init_data_claims is not None:
            # TOML dates become strings: the claims end up in a JSON token.
            runtime_data_claims["init_data_claims"] = json.loads(json.dumps(init_data_claims.get("data", {}), default=str))
            # The workload's identity: what a resource's binding.init_data names (hex, lower case).
            runtime_data_claims["init_data_digest"] = digest.hex()
        parsed = schemas.ParsedEvidence(
            meta=meta,
            runtime_data_claims=runtime_data_claims,
            evidence=info.evidence,
            endorsement_key=info.endorsement_key,
            carried_endorsement=list(info.carried_endorsement),
        )
        return [next_stage("endorse", parsed, STAGE)]

    return handle
