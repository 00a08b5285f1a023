"""Every message that travels on the REMITS bus, in one place.

Stage messages form one tagged union (tag field ``kind``) so a worker decodes with a single
decoder built at import and an unexpected message fails with a clear path instead of being
misread. Bus messages are msgpack maps (not array_like) so fields can be added later with
defaults; unknown fields are tolerated on the bus (external input is validated at the gateway).
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

import msgspec

# Subjects. Stage work flows on remits.stage.<stage>; decisions are kept for audit on
# remits.decision.<tenant>.<tee>.<status>; dead letters on remits.dlq.<stage>.
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


def decision_subject(tenant: str, tee: str, status: str) -> str:
    """Per tenant first, so that a team's audit reader may be allowed remits.decision.<tenant>.>
    and nothing else."""
    return f"remits.decision.{tenant}.{tee}.{status}"


def admin_subject(tenant: str, bucket: str) -> str:
    """Admin changes share the decision stream, so that one audit consumer chains both."""
    return f"remits.admin.{tenant}.{bucket}"


def tenant_audit_subjects(tenant: str) -> list[str]:
    """Everything of ``tenant``'s on the decision stream: its decisions and its admin changes."""
    return [f"remits.decision.{tenant}.>", f"remits.admin.{tenant}.>"]


EVIDENCE_STREAM = "REMITS_EVIDENCE"
AUDIT_STREAM = "REMITS_AUDIT"
AUDIT_SUBJECT = "remits.audit.records"


def evidence_subject(request_id: str) -> str:
    return f"remits.evidence.{request_id}"


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
T = TypeVar("T")


class RequestMeta(msgspec.Struct, omit_defaults=True):
    """What every stage needs to know about the request it is working on."""

    request_id: str
    tee: str
    reply_to: str  # core-NATS subject of the gateway instance waiting for the outcome
    submitted_at: float  # unix seconds, for end-to-end latency
    session_id: str = ""
    nonce: str = ""  # the challenge nonce the client claims to answer
    # Why the evidence is appraised: "" a KBS attestation, "join" a node joining a cluster.
    purpose: str = ""
    # How the evidence binds the challenge: "" the KBS runtime data (nonce, tee-pubkey), "atls" an
    # attested-TLS certificate (SHA-384 of its SubjectPublicKeyInfo and the nonce, shared.atls).
    binding: str = ""
    # The namespace whose policies, reference values and keys judge the request (shared.tenants).
    tenant: str = "default"


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


class Appraised(msgspec.Struct, omit_defaults=True):
    """What an appraisal rested on: enough to reproduce it later (`remits audit replay`)."""

    evidence_digest: str = ""  # SHA-256 hex of the platform's raw evidence
    policy_id: str = ""  # e.g. "attestation.snp"
    policy_digest: str = ""  # SHA-256 hex of the Rego source
    policy_revision: int = 0  # the policy's revision in its KV bucket
    reference_revisions: dict[str, str] = {}  # reference name -> "<record key>@<revision>" that matched
    # Per compared reference name, what the check found: {"status": "matched" | "expired" |
    # "different" | "absent" | "configured", "record": "<record key>@<revision>"} (why none matched).
    references: dict[str, dict[str, str]] = {}
    # Each trust bucket's last revision the appraisal saw: replay rebuilds the buckets as they were.
    bucket_revisions: dict[str, int] = {}
    revocations: list[str] = []  # "<kind>:<value>" revocations that matched
    verifier: str = ""  # REMITS build that decided


class AppraisedEvidence(StageMessage, tag="appraised_evidence"):
    """measure -> decide: claims plus the AR4SI claim values the attestation policy set, and what
    the appraisal rested on (recorded in the decision for audit and replay)."""

    runtime_data_claims: dict[str, Any]
    claims: dict[str, Any]
    vector: dict[str, int]
    notes: list[str] = []
    provenance: Appraised | None = None


class Rejection(StageMessage, tag="rejection"):
    """any stage -> decide: the evidence cannot be trusted; ``reason`` is a stable dotted name."""

    stage: str
    reason: str
    detail: str = ""
    provenance: Appraised | None = None  # set when the measure stage's policy refused


class Decision(StageMessage, tag="decision"):
    """decide -> release, and the audit record on remits.decision.<tenant>.<tee>.<status>."""

    status: Status
    decided_at: float
    reason: str = ""
    detail: str = ""
    token: str = ""  # signed EAR JWT; empty when rejected
    vector: dict[str, int] = {}
    claims: dict[str, Any] = {}
    token_id: str = ""  # the EAR's jti (what `remits revoke --token-id` names)
    provenance: Appraised | None = None  # evidence digest, policy and reference revisions used


class ResourceRequest(StageMessage, tag="resource_request"):
    """gateway -> release (request/reply on RESOURCE_SUBJECT): a resource fetch presenting the
    guest's session (its token is read with the resource) and/or a bearer token."""

    token: str
    resource_path: str  # "<repository>/<type>/<tag>"


class AdminEvent(StageMessage, tag="admin_event"):
    """An operator's change to the trust configuration, for the audit trail
    (remits.admin.<tenant>.<kind>; the tenant in ``meta``): who, what, and the revisions before
    and after. ``key`` is the key within the tenant."""

    actor: str  # the admin credential's subject and key id
    action: str  # "put" | "delete"
    bucket: str  # "policies" | "reference-values" | "resources" | "revocations" | "admin-keys"
    key: str
    previous_revision: int = 0
    revision: int = 0
    at: float = 0.0
    summary: dict[str, Any] = {}  # what changed, never a secret's value


class SevLaunchRequest(StageMessage, tag="sev_launch"):
    """gateway -> intake -> endorse -> identity: a SEV/SEV-ES host's request to launch a workload
    (kbs-types SevRequest): the firmware's version and the platform chain in AMD's binary format.
    Identity answers the gateway with the launch challenge (an Outcome with status "challenge");
    a chain that fails is a rejection through decide, like any other TEE's evidence."""

    workload_id: str
    api_major: int
    api_minor: int
    build: int
    certificates: dict[str, bytes]  # ark, ask, cek, oca, pek, pdh
    chip_id: bytes = b""  # when given, endorse takes the CEK from AMD's KDS for this chip


CLUSTER_STATEMENT_SUBJECT = "remits.join.statement"


class ClusterMember(msgspec.Struct, omit_defaults=True):
    """A node of a confidential cluster as the join service keeps it (KV bucket remits_clusters,
    key <cluster>.<node>): what it runs on and when it last proved it."""

    cluster: str
    node: str
    tee: str
    status: str  # "member" | "evicted"
    joined_at: float
    last_attested: float
    ear: str  # the EAR of its last affirming attestation
    ear_sha256: str
    key_sha256: str  # SHA-256 of the node key's SubjectPublicKeyInfo (its attested-TLS key)
    tcb: dict[str, Any] = {}  # the TCB/SVN claims of that attestation
    reason: str = ""  # why it was evicted
    evicted_at: float = 0.0


class ClusterEvent(msgspec.Struct, omit_defaults=True):
    """remits.cluster.<name>.evicted: a node the control plane must stop trusting, and why."""

    cluster: str
    node: str
    event: str  # "evicted"
    reason: str
    at: float
    detail: str = ""


def cluster_subject(cluster: str, event: str) -> str:
    """``remits.cluster.<name>.<event>``: e.g. a node evicted from a confidential cluster."""
    return f"remits.cluster.{cluster}.{event}"


class SeChallengeRequest(StageMessage, tag="se_challenge"):
    """gateway -> intake -> endorse -> identity: a KBS ``/auth`` for IBM Secure Execution. Identity
    builds the attestation request (ARCB) for the operator's verified host key documents, keeps its
    measurement key and nonce sealed in Redis under the session, and answers the gateway with the
    challenge (an Outcome with status "challenge" whose detail is the challenge's extra-params).
    The meta carries the session and its KBS nonce, which the guest binds in its user data."""


StageUnion = (
    AttestRequest
    | SevLaunchRequest
    | SeChallengeRequest
    | ParsedEvidence
    | EndorsedEvidence
    | VerifiedEvidence
    | AppraisedEvidence
    | Rejection
    | Decision
    | ResourceRequest
    | AdminEvent
)


class EvidenceRecord(msgspec.Struct, omit_defaults=True):
    """What the measure stage kept of one appraisal (stream REMITS_EVIDENCE, remits.evidence.<request
    id>), so that `remits audit replay` can run it again against the policy and reference-value
    revisions of that time, or today's."""

    request_id: str
    tee: str
    appraised_at: float
    evidence: bytes
    claims: dict[str, Any]
    runtime_data_claims: dict[str, Any]
    provenance: Appraised
    vector: dict[str, int] = {}
    reject: str = ""  # the rejection reason when the policy rejected
    tenant: str = "default"  # whose configuration appraised it


# -- the trust configuration, kept in JetStream key-value buckets (every change a revision) -----


class PolicyRecord(msgspec.Struct, omit_defaults=True):
    """Bucket remits_policies, key "attestation.<tee>" or "resource"."""

    id: str
    kind: Literal["attestation", "resource"]
    rego: str
    digest: str  # SHA-256 hex of rego
    updated_by: str = ""
    updated_at: float = 0.0


class Provenance(msgspec.Struct, omit_defaults=True):
    source: str  # "cli", "admin-api", "manifest:<name>", "sev-snp-measure 0.0.13", ...
    added_by: str
    added_at: float
    signature: str = ""  # the signed manifest's JWS signer (key id) when imported from one
    inputs: dict[str, Any] = {}  # e.g. the SHA-256 of each file a launch digest was computed from


class ReferenceValueRecord(msgspec.Struct, omit_defaults=True):
    """Bucket remits_refvals, key "<tee>.<name>.<record id>"."""

    tee: str
    name: str
    values: list[str]
    provenance: Provenance
    expires_at: float | None = None  # unix seconds; an expired value never matches


class ResourceRecord(msgspec.Struct, omit_defaults=True):
    """Bucket remits_resources, key "<repository>/<type>/<tag>": the secret sealed under a data key
    wrapped by the key-encryption key (shared.sealing), and what a token must meet to get it."""

    sealed: dict[str, Any]
    binding: dict[str, Any] = {}  # e.g. {"tees": ["snp"], "measurements": ["<hex>"]}
    updated_by: str = ""
    updated_at: float = 0.0


class RevocationRecord(msgspec.Struct, omit_defaults=True):
    """Bucket remits_revocations, key "<kind>.<value>"."""

    kind: Literal["measurement", "chip_id", "fmspc", "token_id"]
    value: str
    reason: str
    revoked_at: float
    revoked_by: str = ""


class TenantRecord(msgspec.Struct, omit_defaults=True):
    """Bucket remits_tenants, key = the tenant's name: a namespace and its quotas (0: none)."""

    name: str
    created_by: str = ""
    created_at: float = 0.0
    attestations_per_s: int = 0  # attestation requests admitted per second, fleet-wide
    max_resources: int = 0  # resources the tenant may store


class AdminKeyRecord(msgspec.Struct, omit_defaults=True):
    """Bucket remits_admin_keys, key = the key id: a public key allowed to sign admin requests
    (role "admin") or reference-value manifests (role "provisioner")."""

    kid: str
    alg: Literal["EdDSA", "ES256"]
    pem: str
    role: Literal["admin", "provisioner"] = "admin"
    added_by: str = ""
    added_at: float = 0.0


# -- the admin API, relayed by the gateway to the provision component ------------------------
ADMIN_REQUEST_SUBJECT = "remits.admin-api.request"
ADMIN_REQUEST_QUEUE = "remits-provision"


class AdminRequest(msgspec.Struct, omit_defaults=True):
    """gateway -> provision (core request/reply): one admin HTTP request, relayed as received.
    The gateway holds no right to change the trust configuration: provision checks the admin
    credential itself. ``sealed_body`` is the request body encrypted to provision's relay key
    (a JWE), so that a secret being provisioned never crosses the bus in clear."""

    method: str
    path: str  # below /admin/v1/ (or "kbs-resource/<repo>/<type>/<tag>" for the KBS upload)
    authorization: str
    sealed_body: str = ""
    content_type: str = ""
    query: dict[str, str] = {}
    tenant: str = "default"  # /t/<tenant>/admin/v1/... (the unprefixed paths: default)


class AdminReply(msgspec.Struct, omit_defaults=True):
    status: int
    body: bytes = b""  # JSON
    content_type: str = "application/json"


class Outcome(msgspec.Struct, omit_defaults=True):
    """release -> the waiting gateway (core NATS and a Redis copy): what the client receives."""

    request_id: str
    # affirming | warning | contraindicated | rejected | released | denied | challenge (SEV launch)
    status: str
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
    """The event the audit consumer chains per decision: what was decided, and on what (the
    evidence's digest, the policy and its digest, the reference-value revisions, the verifier).
    The token is kept whole: it is bound to the TEE's key, so it releases nothing to whoever
    reads the trail."""

    request_id: str
    tee: str
    status: str
    reason: str
    decided_at: float
    session_id: str = ""
    token: str = ""
    vector: dict[str, int] = {}
    stream_seq: int = 0
    detail: str = ""
    token_id: str = ""
    evidence_digest: str = ""
    policy_id: str = ""
    policy_digest: str = ""
    policy_revision: int = 0
    references: dict[str, dict[str, str]] = {}
    reference_revisions: dict[str, str] = {}
    bucket_revisions: dict[str, int] = {}
    revocations: list[str] = []
    verifier: str = ""
    tenant: str = "default"


_stage_encoder = msgspec.msgpack.Encoder()
_json_encoder = msgspec.json.Encoder()


def encode_json(record: msgspec.Struct) -> bytes:
    """Records kept in the KV buckets are JSON, so an operator can read them with any NATS tool."""
    return _json_encoder.encode(record)


def decode_json(data: bytes, kind: type[T]) -> T:
    return msgspec.json.decode(data, type=kind)


_evidence_decoder = msgspec.msgpack.Decoder(EvidenceRecord)


def decode_evidence_record(data: bytes) -> EvidenceRecord:
    return _evidence_decoder.decode(data)


_stage_decoder = msgspec.msgpack.Decoder(StageUnion)
_outcome_decoder = msgspec.msgpack.Decoder(Outcome)
_admin_request_decoder = msgspec.msgpack.Decoder(AdminRequest)
_admin_reply_decoder = msgspec.msgpack.Decoder(AdminReply)
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


def decode_admin_request(data: bytes) -> AdminRequest:
    return _admin_request_decoder.decode(data)


def decode_admin_reply(data: bytes) -> AdminReply:
    return _admin_reply_decoder.decode(data)
