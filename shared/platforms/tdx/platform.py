"""Intel TDX and SGX (DCAP) as the pipeline sees them: guest evidence in, verified claims and an
appraisal out. The pinned Intel SGX Root CA and the PCS/PCCS base URL are bound at construction;
every method is pure over bytes, time is passed in.

Evidence (KBS primary_evidence): Confidential Containers' TDX attester JSON
``{"cc_eventlog": <base64 of the CCEL event log, or null>, "quote": <base64>}``, the SGX attester's
``{"quote": <base64>}``, or a bare base64 string of the raw quote (standard or URL-safe base64).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from threading import Lock
from typing import Any

import msgspec
from cryptography.x509.oid import NameOID

from shared.errors import ParseError, VerificationError
from shared.platforms.base import (
    Appraisal,
    EndorsementRequest,
    EvidenceInfo,
    Violation,
    decode_document,
)
from shared.platforms.tdx import pcs
from shared.platforms.tdx.abi import CertificationDataType, EnclaveReport, Quote, TdReport, parse_quote
from shared.platforms.tdx.certs import load_certificates, load_crl, order_chain
from shared.platforms.tdx.collateral import Collateral, load_collateral, parse_qe_identity, parse_tcb_info
from shared.platforms.tdx.eventlog import parse_event_log, verify_rtmrs
from shared.platforms.tdx.pck import pck_extension
from shared.platforms.tdx.validate import ACCEPTABLE, SgxPolicy, TdxPolicy, validate
from shared.platforms.tdx.validate import claims as quote_claims
from shared.platforms.tdx.verify import QuoteVerifier

_MAX_EVENTS_IN_CLAIMS = 256
MR_SIZE = 48
_PARSED_CACHE_SIZE = 1024


class _Evidence(msgspec.Struct):
    """The normalised evidence carried on the bus: the quote and, for TDX, the CCEL event log."""

    quote: bytes
    eventlog: bytes | None = None


_evidence_encoder = msgspec.msgpack.Encoder()
_evidence_decoder = msgspec.msgpack.Decoder(_Evidence)


def _b64(text: Any, field: str) -> bytes:
    if not isinstance(text, str):
        raise ParseError(field, "expected a base64 string")
    try:
        padded = text + "=" * (-len(text) % 4)
        if "-" in text or "_" in text:
            return base64.urlsafe_b64decode(padded)
        return base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ParseError(field, f"not base64: {exc}") from None


def decode_evidence(primary_evidence: bytes) -> tuple[bytes, bytes | None]:
    """(raw quote, event log or None). Raises only ParseError."""
    try:
        doc = json.loads(primary_evidence)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ParseError("evidence", f"not JSON: {exc}") from None
    if isinstance(doc, str):
        return _b64(doc, "evidence"), None
    if not isinstance(doc, dict) or "quote" not in doc:
        raise ParseError("evidence", 'expected {"quote": "<base64>", "cc_eventlog": ...} or a base64 string')
    log = doc.get("cc_eventlog")
    return _b64(doc["quote"], "evidence.quote"), (None if log is None else _b64(log, "evidence.cc_eventlog"))


def _unpack(evidence: bytes) -> _Evidence:
    try:
        return _evidence_decoder.decode(evidence)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ParseError("evidence", f"not normalised DCAP evidence: {exc}") from None


@dataclass(frozen=True)
class PlatformIdentity:
    """Which collateral a quote needs: its FMSPC and the CA that issued its PCK certificate."""

    fmspc: bytes
    ca: pcs.PckCa


def platform_identity(quote: Quote) -> PlatformIdentity:
    cert = quote.qe.certification
    if cert.cert_type != CertificationDataType.PCK_CHAIN:
        raise ParseError("quote.certification", f"type {cert.cert_type} carries no PCK chain")
    return _chain_identity(bytes(cert.data))


# A platform's PCK chain is the same in every quote it makes, and this is a pure function of its
# bytes: intake and endorse would otherwise parse the same three certificates on every quote.
@lru_cache(maxsize=8192)
def _chain_identity(chain: bytes) -> PlatformIdentity:
    ordered = order_chain(load_certificates(chain, "quote.pck_chain"))
    if not ordered:
        raise ParseError("quote.pck_chain", "the certificates do not form a chain")
    leaf = ordered[0]
    common_names = [a.value for a in leaf.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if not common_names:
        raise ParseError("quote.pck_chain", f"PCK issuer {leaf.issuer.rfc4514_string()} has no common name")
    return PlatformIdentity(fmspc=pck_extension(leaf).fmspc, ca=pcs.pck_ca_of_issuer(str(common_names[0])))


@dataclass(frozen=True)
class _ClaimVerdict:
    """A verification outcome rebuilt from verified claims, for policy (validate.TcbVerdict)."""

    quote: Quote
    tcb_status: str
    advisory_ids: tuple[str, ...]


def _refs(references: dict[str, frozenset[str]], name: str) -> frozenset[bytes] | None:
    values = references.get(name)
    if not values:
        return None
    try:
        return frozenset(bytes.fromhex(v) for v in values)
    except ValueError:
        raise ParseError(f"reference_values.{name}", "not hex", prefix="config") from None


def _ints(references: dict[str, frozenset[str]], name: str) -> list[int]:
    # A provisioning mistake is a typed rejection naming the set, not a crash to be redelivered.
    try:
        return sorted(int(v, 0) for v in references.get(name, ()))
    except ValueError:
        raise ParseError(f"reference_values.{name}", "not an integer", prefix="config") from None


def _accepted(references: dict[str, frozenset[str]]) -> frozenset[str]:
    # Only statuses a relying party may ever live with; Revoked and friends stay rejected.
    return (references.get("accepted_tcb_status") or frozenset({"UpToDate"})) & ACCEPTABLE


class DcapPlatform:
    """One instance per TEE name: ``tdx`` or ``sgx``."""

    def __init__(self, tee: str, root_ca_der: bytes, pcs_url: str = pcs.DEFAULT_BASE_URL, *, require_crls: bool = True) -> None:
        if tee not in ("tdx", "sgx"):
            raise ValueError(f"not a DCAP TEE: {tee}")
        self.tee = tee
        self.root_ca_der = root_ca_der
        self.pcs_url = pcs_url
        self.require_crls = require_crls
        self.reference_names = (
            ("mr_td", "rtmr0", "rtmr1", "rtmr2", "rtmr3", "xfam", "mr_seam", "accepted_tcb_status", "allow_debug")
            if tee == "tdx"
            else ("mr_enclave", "mr_signer", "isv_prod_id", "min_isv_svn", "accepted_tcb_status", "allow_debug")
        )
        # Collateral cache keys are per pinned root, so a test vendor sharing Redis never mixes in.
        self._root_id = hashlib.sha256(root_ca_der).hexdigest()[:16]
        self._parsed: OrderedDict[bytes, QuoteVerifier] = OrderedDict()
        self._lock = Lock()

    # -- intake ----------------------------------------------------------------------------
    def parse_evidence(self, primary_evidence: bytes) -> EvidenceInfo:
        raw, log = decode_evidence(primary_evidence)
        quote = parse_quote(raw)
        is_tdx = isinstance(quote.body, TdReport)
        if is_tdx != (self.tee == "tdx"):
            raise ParseError("quote.header.tee_type", f"a {'TDX' if is_tdx else 'SGX'} quote sent as {self.tee}")
        if log is not None and not is_tdx:
            raise ParseError("evidence.cc_eventlog", "an event log accompanies TDX quotes only")
        identity = platform_identity(quote)
        return EvidenceInfo(
            evidence=_evidence_encoder.encode(_Evidence(raw, log)),
            report_data=quote.body.report_data,
            endorsement_key=f"{self.tee}:{identity.fmspc.hex()}:{identity.ca.value}",
            init_data_binding=quote.body.mr_config_id if isinstance(quote.body, TdReport) else None,
        )

    # -- endorsement -----------------------------------------------------------------------
    def endorsement_requests(self, evidence: bytes, carried: tuple[bytes, ...]) -> list[EndorsementRequest]:
        quote = parse_quote(_unpack(evidence).quote)
        identity = platform_identity(quote)
        fmspc, ca, base, root = identity.fmspc.hex(), identity.ca.value, self.pcs_url, self._root_id
        # The offline layout is the one of Intel's collateral as kept per platform (FMSPC).
        folder = f"{self.tee}/{fmspc}"
        return [
            EndorsementRequest(
                f"tcbinfo:{self.tee}:{fmspc}:{root}",
                pcs.tcb_info_url(identity.fmspc, self.tee, base_url=base),
                headers=(pcs.TCB_INFO_ISSUER_CHAIN, pcs.TCB_INFO_ISSUER_CHAIN_V3),
                offline_parts=(("body", f"{folder}/tcb_info.json"), (pcs.TCB_INFO_ISSUER_CHAIN, f"{folder}/tcb_info_issuer_chain.pem")),
            ),
            EndorsementRequest(
                f"qeidentity:{self.tee}:{root}",
                pcs.qe_identity_url(self.tee, base_url=base),
                headers=(pcs.ENCLAVE_IDENTITY_ISSUER_CHAIN,),
                offline_parts=(
                    ("body", f"{folder}/qe_identity.json"),
                    (pcs.ENCLAVE_IDENTITY_ISSUER_CHAIN, f"{folder}/qe_identity_issuer_chain.pem"),
                ),
            ),
            EndorsementRequest(
                f"pckcrl:{ca}:{root}",
                pcs.pck_crl_url(identity.ca, base_url=base),
                optional=not self.require_crls,
                headers=(pcs.PCK_CRL_ISSUER_CHAIN,),
                offline_parts=(("body", f"{folder}/pck_crl.der"), (pcs.PCK_CRL_ISSUER_CHAIN, f"{folder}/pck_crl_issuer_chain.pem")),
            ),
            EndorsementRequest(
                f"rootcacrl:{root}",
                pcs.root_ca_crl_url(base_url=base if base != pcs.DEFAULT_BASE_URL else None),
                optional=not self.require_crls,
                offline_parts=(("body", f"{folder}/root_ca_crl.der"),),
            ),
        ]

    def assemble_endorsement(self, documents: list[bytes | None], carried: tuple[bytes, ...]) -> list[bytes]:
        """[TCB info doc, QE identity doc, PCK CRL doc or b"", root CA CRL or b""]."""
        tcb_info, qe_identity, pck_crl, root_crl = documents
        if tcb_info is None or qe_identity is None:
            raise VerificationError("endorsement.not_found", "TCB info and QE identity are required")
        return [tcb_info, qe_identity, pck_crl or b"", root_crl or b""]

    def document_ttl(self, request: EndorsementRequest, document: bytes, now: datetime) -> int | None:
        """Until the collateral's next update."""
        try:
            if request.cache_key.startswith(("tcbinfo:", "qeidentity:")):
                body, _ = decode_document(document)
                parsed = parse_tcb_info(body) if request.cache_key.startswith("tcbinfo:") else parse_qe_identity(body)
                return int((parsed.next_update - now).total_seconds())
            body = decode_document(document)[0] if request.headers else document
            next_update = load_crl(body, "crl").next_update_utc
            return None if next_update is None else int((next_update - now).total_seconds())
        except ParseError:
            return 60  # unreadable: keep briefly; identity verification rejects it anyway

    # -- identity --------------------------------------------------------------------------
    def _verifier(self, endorsement: list[bytes], require_crls: bool) -> QuoteVerifier:
        """One verifier per distinct set of collateral documents (they change at next update):
        parsed once, and remembering the verdict of each platform's PCK chain."""
        if len(endorsement) != 4:
            raise VerificationError("endorsement.chain_invalid", f"expected 4 collateral documents, got {len(endorsement)}")
        parts = [hashlib.sha256(d).digest() for d in endorsement] + [bytes([require_crls])]
        key = hashlib.sha256(b"".join(parts)).digest()
        with self._lock:
            cached = self._parsed.get(key)
        if cached is None:
            cached = QuoteVerifier(self._parse_collateral(endorsement), self.root_ca_der, require_crls=require_crls)
            with self._lock:
                self._parsed[key] = cached
                if len(self._parsed) > _PARSED_CACHE_SIZE:
                    self._parsed.popitem(last=False)
        return cached

    def _parse_collateral(self, endorsement: list[bytes]) -> Collateral:
        if len(endorsement) != 4:
            raise VerificationError("endorsement.chain_invalid", f"expected 4 collateral documents, got {len(endorsement)}")
        tcb_body, tcb_headers = decode_document(endorsement[0])
        qe_body, qe_headers = decode_document(endorsement[1])
        pck_crl = pck_chain = None
        if endorsement[2]:
            pck_crl, crl_headers = decode_document(endorsement[2])
            # Without the header the CRL issuer is the PCK CA from the quote's own chain.
            pck_chain = pcs.pck_crl_issuer_chain(crl_headers) if crl_headers else None
        qe_chain = pcs.qe_identity_issuer_chain(qe_headers) if qe_headers else None
        return load_collateral(
            tcb_info=tcb_body,
            tcb_info_issuer_chain=pcs.tcb_info_issuer_chain(tcb_headers),
            qe_identity=qe_body,
            qe_identity_issuer_chain=qe_chain,
            pck_crl=pck_crl,
            pck_crl_issuer_chain=pck_chain,
            root_ca_crl=endorsement[3] or None,
        )

    def verify_identity(self, evidence: bytes, endorsement: list[bytes], now: datetime) -> dict[str, Any]:
        unpacked = _unpack(evidence)
        verifier = self._verifier(endorsement, self.require_crls and bool(endorsement[2]))
        verified = verifier.verify(unpacked.quote, now)
        quote = verified.quote
        out: dict[str, Any] = dict(quote_claims(quote, verified))
        if unpacked.eventlog is not None and isinstance(quote.body, TdReport):
            log = parse_event_log(unpacked.eventlog)
            verify_rtmrs(log, quote.body.rtmrs)
            events = [
                {"rtmr": e.mr_index - 1, "type": e.event_type, "digest": (e.digest(0x000C) or b"").hex()}
                for e in log.events
            ]
            out["tdx.eventlog.replayed"] = True
            out["tdx.eventlog.event_count"] = len(events)
            out["tdx.uefi_event_logs"] = events[:_MAX_EVENTS_IN_CLAIMS]
        return json.loads(json.dumps(out, default=str))

    # -- measurement and policy ------------------------------------------------------------
    def appraise(self, evidence: bytes, claims: dict[str, Any], references: dict[str, frozenset[str]]) -> Appraisal:
        quote = parse_quote(_unpack(evidence).quote)
        prefix = self.tee
        status = str(claims.get(f"{prefix}.tcb_status", ""))
        advisories = tuple(claims.get(f"{prefix}.advisory_ids", ()) or ())
        verdict = _ClaimVerdict(quote, status, advisories)
        allow_debug = "true" in references.get("allow_debug", frozenset())
        notes: list[str] = []
        if isinstance(quote.body, TdReport):
            rtmrs = {i: v for i in range(4) if (v := _refs(references, f"rtmr{i}")) is not None}
            policy: TdxPolicy | SgxPolicy = TdxPolicy(
                accepted_tcb_statuses=_accepted(references),
                allow_debug=allow_debug,
                mr_td=_refs(references, "mr_td"),
                rtmrs=rtmrs,
                xfam=_refs(references, "xfam"),
                mr_seam=_refs(references, "mr_seam"),
            )
            measured = policy.mr_td is not None
        else:
            assert isinstance(quote.body, EnclaveReport)
            policy = SgxPolicy(
                accepted_tcb_statuses=_accepted(references),
                allow_debug=allow_debug,
                mr_enclave=_refs(references, "mr_enclave"),
                mr_signer=_refs(references, "mr_signer"),
                isv_prod_id=next(iter(_ints(references, "isv_prod_id")), None),
                min_isv_svn=max(_ints(references, "min_isv_svn"), default=0),
            )
            measured = policy.mr_enclave is not None or policy.mr_signer is not None
        found = validate(quote, verdict, policy)
        vector = {
            "instance-identity": 2,
            # Any accepted status short of UpToDate is a known-vulnerable platform: warning tier.
            "hardware": 2 if status == "UpToDate" else 32,
            "configuration": 2,
            "executables": 2 if measured else 33,
            "runtime-opaque": 2,
        }
        if not measured:
            notes.append("measurement.no_reference_values")
        if status != "UpToDate":
            notes.append(f"tcb_status.{status}")
        violations = [Violation(v.field, v.got, v.want) for v in found]
        return Appraisal(vector=vector, violations=violations, notes=notes)
