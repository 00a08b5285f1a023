"""What a platform (TEE kind) provides to the pipeline. Every method is pure over bytes and values:
trust roots are bound at construction, time is passed in, I/O stays in the stage workers."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import msgspec

from shared.errors import ParseError


@dataclass(frozen=True)
class EvidenceInfo:
    """What intake learns from parsing: the raw evidence, its report_data and its endorsement key."""

    evidence: bytes
    report_data: bytes
    endorsement_key: str
    # Endorsements the guest sent along (e.g. the VCEK from the extended report's certificate
    # table); they are verified like fetched ones, never trusted for being there.
    carried_endorsement: tuple[bytes, ...] = ()
    # The evidence field init-data is bound to (SNP HOST_DATA, TDX MRCONFIGID), if the TEE has one.
    init_data_binding: bytes | None = None


@dataclass(frozen=True)
class Violation:
    field: str
    got: str
    want: str


@dataclass(frozen=True)
class Appraisal:
    """AR4SI claim values set by the measurement/policy check, and every violation found."""

    vector: dict[str, int]
    violations: list[Violation] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class EndorsementRequest:
    """One document the endorsement stage must obtain: a cache key and the vendor URL serving it."""

    cache_key: str
    url: str  # "" when the vendor does not serve it (e.g. a VLEK): offline directory only
    # An optional document (a CRL) may be unavailable; verification then proceeds without it.
    optional: bool = False
    # Tried in order when the vendor does not know ``url`` (404).
    fallback_urls: tuple[str, ...] = ()
    # Response headers that are part of the document (Intel sends issuer chains in headers). When
    # set, the stored document is ``encode_document(body, headers)``.
    headers: tuple[str, ...] = ()
    # Files of an offline directory that make up the document, as (part, relative path) pairs;
    # part "body" or a header name. Empty: one file named after the cache key.
    offline_parts: tuple[tuple[str, str], ...] = ()


def encode_document(body: bytes, headers: dict[str, str]) -> bytes:
    """A fetched body together with the response headers that belong to it, as one cacheable blob."""
    return msgspec.msgpack.encode({"body": body, "headers": headers})


def decode_document(document: bytes) -> tuple[bytes, dict[str, str]]:
    try:
        doc = msgspec.msgpack.decode(document, type=dict[str, bytes | dict[str, str]])
        body, headers = doc["body"], doc["headers"]
    except (msgspec.DecodeError, msgspec.ValidationError, KeyError) as exc:
        raise ParseError("endorsement.document", f"not a stored document: {exc}") from None
    if not isinstance(body, bytes) or not isinstance(headers, dict):
        raise ParseError("endorsement.document", "not a stored document")
    return body, headers


class Platform(Protocol):
    tee: str
    reference_names: tuple[str, ...]

    def parse_evidence(self, primary_evidence: bytes) -> EvidenceInfo: ...

    def endorsement_requests(self, evidence: bytes, carried: tuple[bytes, ...]) -> list[EndorsementRequest]: ...

    def assemble_endorsement(self, documents: list[bytes | None], carried: tuple[bytes, ...]) -> list[bytes]: ...

    def document_ttl(self, request: EndorsementRequest, document: bytes, now: datetime) -> int | None:
        """How long a fetched document may be cached (e.g. until a certificate expires or a CRL's
        next update); None for the configured default."""
        ...

    def verify_identity(self, evidence: bytes, endorsement: list[bytes], now: datetime) -> dict[str, Any]: ...

    def appraise(
        self, evidence: bytes, claims: dict[str, Any], references: dict[str, frozenset[str]]
    ) -> Appraisal: ...


class NoEndorsementToFetch:
    """The endorsement half of ``Platform`` for a TEE whose trust anchor is not a vendor document
    fetched per machine (an AK registry, a chain checked when a session was opened, a request
    only its creator can answer): nothing is fetched, assembled or cached."""

    def endorsement_requests(self, evidence: bytes, carried: tuple[bytes, ...]) -> list[EndorsementRequest]:
        return []

    def assemble_endorsement(self, documents: list[bytes | None], carried: tuple[bytes, ...]) -> list[bytes]:
        return []

    def document_ttl(self, request: EndorsementRequest, document: bytes, now: datetime) -> int | None:
        return None
