"""Every message that travels on the REMITS bus, in one place.

Stage messages form one tagged union (tag field ``kind``) so a worker decodes with a single
decoder built at import and an unexpected message fails with a clear path instead of being
misread. Bus messages are msgpack maps (not array_like) so fields can be added later with
defaults; unknown fields are tolerated on the bus (external input is validated at the gateway).
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

# Subjects. Stage work flows on remits.stage.<stage>; decisions are kept for audit on
# remits.decision.<tee>.<status>; dead letters on remits.dlq.<stage>.
PIPELINE_STREAM = "REMITS_PIPELINE"
DECISION_STREAM = "REMITS_DECISIONS"
DLQ_STREAM = "REMITS_DLQ"

STAGES: tuple[str, ...] = ("intake", "endorse", "identity", "measure", "decide", "release")


def stage_subject(stage: str) -> str:
    return f"remits.stage.{stage}"


# The decide stage reads two subjects: appraisals, which only the measure stage may publish (NATS
# refuses anyone else), and rejections, which any stage before it may send.
APPRAISAL_SUBJECT = "remits.stage.decide.appraisal"
REJECTION_SUBJECT = "remits.stage.decide.rejection"


def consumer_subject(stage: str) -> str:
    """What a stage's durable consumer reads."""
    return "remits.stage.decide.>" if stage == "decide" else stage_subject(stage)


# Per-process counters and stage timings, asked of every process (see shared.stats).
STATS_COLLECT_SUBJECT = "remits.stats.collect"
STATS_RESET_SUBJECT = "remits.stats.reset"
STATS_SUBJECTS = "remits.stats.*"


def decision_subject(tee: str, status: str) -> str:
    return f"remits.decision.{tee}.{status}"


def dlq_subject(stage: str) -> str:
    return f"remits.dlq.{stage}"


def outcome_subject(gateway_id: str) -> str:
    return f"remits.outcome.{gateway_id}"


def outcome_copy_subject(request_id: str) -> str:
    """What the Redis copy of an outcome is authenticated as (it is no more trusted than the bus)."""
    return f"remits.outcome-copy.{request_id}"


def kind_of(message: msgspec.Struct) -> str:
    """The tag a stage message travels under (e.g. ``appraised_evidence``)."""
    return str(type(message).__struct_config__.tag)


# Resource fetches are reads, answered at once: core NATS request/reply to the release stage's
# queue group, outside every stream (a lost request is a 503 the guest retries). Evidence, which
# must get exactly one decision, travels on the JetStream stage subjects instead.
RESOURCE_SUBJECT = "remits.release.resource"
RESOURCE_QUEUE = "remits-release"


Status = Literal["affirming", "warning", "contraindicated", "rejected"]


class RequestMeta(msgspec.Struct, omit_defaults=True):
    """What every stage needs to know about the request it is working on."""

    request_id: str
    tee: str
    reply_to: str  # core-NATS subject of the gateway instance waiting for the outcome
    submitted_at: float  # unix seconds, for end-to-end latency
    session_id: str = ""
    nonce: str = ""  # the challenge nonce the client claims to answer


class StageMessage(msgspec.Struct, tag_field="kind", omit_defaults=True):
    meta: RequestMeta


class AttestRequest(StageMessage, tag="attest_request"):
    """gateway -> intake: the KBS Attestation body, already shape-checked by the gateway."""

    tee_pubkey: dict[str, Any]
    primary_evidence: bytes  # the raw JSON of tee-evidence.primary_evidence
    additional_evidence: str = ""
    init_data: dict[str, str] | None = None


class ParsedEvidence(StageMessage, tag="parsed_evidence"):
    """intake -> endorse: nonce consumed, evidence parsed and bound to the challenge."""

    runtime_data_claims: dict[str, Any]
    evidence: bytes  # the platform's raw evidence (e.g. the binary report)
    endorsement_key: str  # which endorsement the evidence needs (e.g. the device id in hex)
    carried_endorsement: list[bytes] = []  # certificates the guest sent with its evidence


class EndorsedEvidence(StageMessage, tag="endorsed_evidence"):
    """endorse -> identity: the endorsement chain (leaf first, DER) and where it came from."""

    runtime_data_claims: dict[str, Any]
    evidence: bytes
    endorsement_key: str
    endorsement: list[bytes]
    endorsement_source: str  # "cache" | "fetch" | "evidence"


class VerifiedEvidence(StageMessage, tag="verified_evidence"):
    """identity -> measure: signature and chain verified; claims decoded from the evidence."""

    runtime_data_claims: dict[str, Any]
    claims: dict[str, Any]
    evidence: bytes


class AppraisedEvidence(StageMessage, tag="appraised_evidence"):
    """measure -> decide: claims plus the AR4SI claim values the measurement check set."""

    runtime_data_claims: dict[str, Any]
    claims: dict[str, Any]
    vector: dict[str, int]
    notes: list[str] = []


class Rejection(StageMessage, tag="rejection"):
    """any stage -> decide: the evidence cannot be trusted; ``reason`` is a stable dotted name."""

    stage: str
    reason: str
    detail: str = ""


class Decision(StageMessage, tag="decision"):
    """decide -> release, and the audit record on remits.decision.<tee>.<status>."""

    status: Status
    decided_at: float
    reason: str = ""
    detail: str = ""
    token: str = ""  # signed EAR JWT; empty when rejected
    vector: dict[str, int] = {}
    claims: dict[str, Any] = {}


class ResourceRequest(StageMessage, tag="resource_request"):
    """gateway -> release (request/reply on RESOURCE_SUBJECT): a resource fetch presenting the
    guest's session (its token is read with the resource) and/or a bearer token."""

    token: str
    resource_path: str  # "<repository>/<type>/<tag>"


StageUnion = (
    AttestRequest
    | ParsedEvidence
    | EndorsedEvidence
    | VerifiedEvidence
    | AppraisedEvidence
    | Rejection
    | Decision
    | ResourceRequest
)


class Outcome(msgspec.Struct, omit_defaults=True):
    """release -> the waiting gateway (core NATS and a Redis copy): what the client receives."""

    request_id: str
    status: str  # affirming | warning | contraindicated | rejected | released | denied
    reason: str = ""
    detail: str = ""
    token: str = ""
    jwe: bytes = b""  # the JSON JWE of a released resource


class DeadLetter(msgspec.Struct, omit_defaults=True):
    """A message a stage could not process (undecodable, or out of deliveries)."""

    stage: str
    reason: str
    subject: str
    data: bytes
    request_id: str = ""
    deliveries: int = 0


class AuditRecord(msgspec.Struct, omit_defaults=True):
    """One JSON line the audit consumer appends per decision."""

    request_id: str
    tee: str
    status: str
    reason: str
    decided_at: float
    session_id: str = ""
    token: str = ""
    vector: dict[str, int] = {}
    stream_seq: int = 0


_stage_encoder = msgspec.msgpack.Encoder()
_stage_decoder = msgspec.msgpack.Decoder(StageUnion)
_outcome_decoder = msgspec.msgpack.Decoder(Outcome)
_dead_letter_decoder = msgspec.msgpack.Decoder(DeadLetter)


def encode(msg: msgspec.Struct) -> bytes:
    return _stage_encoder.encode(msg)


def decode_stage(data: bytes) -> StageUnion:
    """Raises msgspec.DecodeError / ValidationError naming the failing path."""
    return _stage_decoder.decode(data)


def decode_outcome(data: bytes) -> Outcome:
    return _outcome_decoder.decode(data)


def decode_dead_letter(data: bytes) -> DeadLetter:
    return _dead_letter_decoder.decode(data)


def decode_decision(data: bytes) -> Decision:
    msg = decode_stage(data)
    if not isinstance(msg, Decision):
        raise msgspec.ValidationError(f"expected a decision, got {type(msg).__name__}")
    return msg
