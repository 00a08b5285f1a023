"""Pure DCAP quote verification (TDX v4/v5 and SGX v3): the trust root, the collateral and the
time are parameters; nothing here fetches or caches.

``evaluate_quote`` runs every check it can and records each outcome (pass, fail, or not evaluated
because an input or a prerequisite is missing), so tests and diagnostics can see *all* that is
wrong with a quote. ``verify_quote`` is the gate: it raises ``VerificationError`` naming the first
failed check in ``checks.ORDER`` and otherwise returns a ``VerifiedQuote`` carrying the TCB status
computed by Intel's rule (``tcb.evaluate_tcb``). A TCB status such as ``TcbNotSupported`` or
``OutOfDate`` is a result, not a verification failure: acceptance is policy (``validate``).

Why not dcap-qvl: its ``verify`` is one opaque pass/fail that also applies its own TCB rule and
policy; it errors out (instead of reporting a status) on TcbNotSupported platforms, debug TDs and
TDs without SEPT_VE_DISABLE, requires both CRLs and cannot say which check failed. It stays in the
test-suite as an independent oracle.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509
from cryptography.x509.oid import NameOID

from shared.errors import ParseError, VerificationError
from shared.platforms.tdx import checks, crypto
from shared.platforms.tdx.abi import (
    INTEL_QE_VENDOR_ID,
    CertificationDataType,
    EnclaveReport,
    Quote,
    TdReport,
    parse_quote,
)
from shared.platforms.tdx.certs import der, load_certificates, order_chain, subject
from shared.platforms.tdx.collateral import Collateral
from shared.platforms.tdx.pck import PckExtension, pck_extension
from shared.platforms.tdx.tcb import TcbEvaluation, evaluate_tcb, find_module_identity

_PCK_CN_PHRASE = "SGX PCK Certificate"
_PCK_CA_NAMES = ("Intel SGX PCK Platform CA", "Intel SGX PCK Processor CA")
_TCB_SIGNING_CN = "Intel SGX TCB Signing"
_TDX_ONLY = frozenset({checks.MODULE_MRSIGNER_MATCHES, checks.SEAM_ATTRIBUTES_ZERO})
_CRL_DEPENDENT = frozenset(
    {
        checks.ROOT_CRL_SIGNATURE,
        checks.INTERMEDIATE_NOT_REVOKED,
        checks.TCB_SIGNING_CERT_NOT_REVOKED,
        checks.PCK_CRL_SIGNATURE,
        checks.PCK_NOT_REVOKED,
    }
)


@dataclass(frozen=True, slots=True)
class CheckOutcome:
    name: str
    passed: bool | None  # None: not evaluated (input absent, not applicable, or a prerequisite failed)
    detail: str = ""


@dataclass(frozen=True)
class Evaluation:
    quote: Quote
    outcomes: Mapping[str, CheckOutcome]  # in ``checks.ORDER``
    pck: PckExtension | None
    tcb: TcbEvaluation | None  # None unless the PCK extension and the collateral could be read
    valid_window: tuple[datetime, datetime] | None

    def passed(self, name: str) -> bool | None:
        return self.outcomes[name].passed

    @property
    def failures(self) -> list[CheckOutcome]:
        return [o for o in self.outcomes.values() if o.passed is False]


@dataclass(frozen=True)
class VerifiedQuote:
    quote: Quote
    tee: str  # "tdx" or "sgx"
    tcb: TcbEvaluation
    pck: PckExtension
    tcb_evaluation_data_number: int
    valid_window: tuple[datetime, datetime]  # when this verdict holds: a cache TTL for callers
    outcomes: tuple[CheckOutcome, ...]

    @property
    def tcb_status(self) -> str:
        return self.tcb.status.value

    @property
    def advisory_ids(self) -> tuple[str, ...]:
        return self.tcb.advisory_ids


class _Recorder:
    """Runs checks in order; a check whose prerequisites did not all pass is not evaluated."""

    def __init__(self) -> None:
        self.outcomes: dict[str, CheckOutcome] = {}

    def ok(self, *names: str) -> bool:
        return all(name in self.outcomes and self.outcomes[name].passed for name in names)

    def run(self, name: str, check: Callable[[], str | None], *requires: str) -> bool:
        missing = [r for r in requires if not self.ok(r)]
        if missing:
            self.skip(name, f"not evaluated: {', '.join(missing)} did not pass")
            return False
        problem = check()
        self.outcomes[name] = CheckOutcome(name, problem is None, problem or "")
        return problem is None

    def skip(self, name: str, detail: str) -> None:
        self.outcomes[name] = CheckOutcome(name, None, detail)

    def fail(self, name: str, detail: str) -> None:
        self.outcomes[name] = CheckOutcome(name, False, detail)

    def ordered(self) -> dict[str, CheckOutcome]:
        return {
            name: self.outcomes.get(name, CheckOutcome(name, None, "not evaluated")) for name in checks.ORDER
        }


def _utc(now: datetime) -> datetime:
    # Naive datetimes are taken as UTC: comparing naive with aware bounds would raise TypeError.
    return now if now.tzinfo is not None else now.replace(tzinfo=UTC)


def _first(problems: Iterable[str | None]) -> str | None:
    return next((p for p in problems if p is not None), None)


@dataclass(frozen=True, slots=True)
class PckChain:
    leaf: x509.Certificate
    intermediate: x509.Certificate
    root: x509.Certificate


def _pck_chain(quote: Quote, supplied: bytes | str | None) -> PckChain | str:
    """The PCK chain from the quote (type 5), else from the caller; a reason when there is none."""
    cert = quote.qe.certification
    if cert.cert_type == CertificationDataType.PCK_CHAIN:
        source: bytes | str = cert.data
    elif supplied is not None:
        source = supplied
    else:
        return f"certification data type {cert.cert_type} carries no PCK chain and none was supplied"
    try:
        certs = load_certificates(source, "pck_chain")
    except ParseError as exc:
        return exc.detail
    ordered = order_chain(certs)
    if ordered is None or len(ordered) != 3:
        return f"expected a leaf -> intermediate -> root chain, got {len(certs)} certificates that do not form one"
    return PckChain(*ordered)


def _profile_problem(leaf: x509.Certificate, intermediate: x509.Certificate) -> str | None:
    names = [a.value for a in leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if not any(isinstance(n, str) and _PCK_CN_PHRASE in n for n in names):
        return f"leaf {subject(leaf)} is not an SGX PCK certificate"
    ca_names = [a.value for a in intermediate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if not any(n in _PCK_CA_NAMES for n in ca_names):
        return f"intermediate {subject(intermediate)} is not a PCK Platform/Processor CA"
    bc = crypto.basic_constraints(leaf)
    if bc is not None and bc.ca:
        return "the PCK leaf claims to be a CA"
    for cert in (leaf, intermediate):
        if crypto.p256_key(cert) is None:
            return f"{subject(cert)} has no EC P-256 key"
    return crypto.ca_problem(intermediate)


def _masked_equal(value: bytes, mask: bytes, want: bytes) -> bool:
    return len(value) == len(mask) == len(want) and all(
        v & m == w for v, m, w in zip(value, mask, want, strict=True)
    )


def _qe_identity_problem(quote: Quote, collateral: Collateral) -> str | None:
    identity = collateral.qe_identity
    report: EnclaveReport = quote.qe.report
    want_id = "TD_QE" if quote.is_tdx else "QE"
    if identity.id != want_id:
        return f"QE Identity is for {identity.id}, the quote needs {want_id}"
    misc = report.misc_select.to_bytes(4, "little")  # identity hex is in report byte order
    if not _masked_equal(misc, identity.miscselect_mask, identity.miscselect):
        return f"MISCSELECT {misc.hex()} does not match {identity.miscselect.hex()} under the mask"
    if not _masked_equal(report.attributes, identity.attributes_mask, identity.attributes):
        return f"ATTRIBUTES {report.attributes.hex()} do not match {identity.attributes.hex()} under the mask"
    if report.mr_signer != identity.mrsigner:
        return f"MRSIGNER {report.mr_signer.hex()} is not {identity.mrsigner.hex()}"
    if report.isv_prod_id != identity.isv_prod_id:
        return f"ISVPRODID {report.isv_prod_id} is not {identity.isv_prod_id}"
    return None


def _tcb_info_id_problem(quote: Quote, collateral: Collateral) -> str | None:
    info = collateral.tcb_info
    if quote.is_tdx:
        if info.version < 3 or info.id != "TDX":
            return f"TCB Info {info.id or 'SGX'} v{info.version} cannot judge a TDX quote"
    elif info.id not in (None, "SGX"):
        return f"TCB Info {info.id} cannot judge an SGX quote"
    return None


def _module_expectation(td: TdReport, collateral: Collateral) -> tuple[bytes, bytes] | str:
    """(mrsigner, attributes) the TDX module must have, from the module identity when versioned."""
    info = collateral.tcb_info
    if info.tdx_module is None:
        return "TCB Info has no tdxModule"
    major = td.tee_tcb_svn[1]
    if major == 0:
        return info.tdx_module.mrsigner, info.tdx_module.attributes
    identity = find_module_identity(info, major)
    if identity is None:
        return f"TCB Info has no TDX_{major:02X} module identity (Intel: TdxModuleMismatch)"
    return identity.module.mrsigner, identity.module.attributes


def _signers(collateral: Collateral) -> list[x509.Certificate]:
    out = [collateral.tcb_info_issuer_chain[0]]
    if der(collateral.qe_identity_issuer_chain[0]) != der(out[0]):
        out.append(collateral.qe_identity_issuer_chain[0])
    return out


def _shipped_roots(
    collateral: Collateral, pinned: x509.Certificate
) -> list[tuple[x509.Certificate, x509.Certificate]]:
    """(signer, the root shipped in its own chain -- the pinned one if the chain has none)."""
    chains = (collateral.tcb_info_issuer_chain, collateral.qe_identity_issuer_chain)
    return [(chain[0], chain[-1] if len(chain) > 1 else pinned) for chain in chains]


_CHAIN_CHECKS = (
    checks.ROOT_IS_PINNED_INTEL_ROOT,
    checks.ROOT_SELF_SIGNED,
    checks.INTERMEDIATE_SIGNED_BY_PINNED_ROOT,
    checks.INTERMEDIATE_SIGNED_BY_ROOT,
    checks.PCK_LEAF_SIGNED_BY_INTERMEDIATE,
    checks.PCK_CHAIN_PROFILE,
    checks.PCK_CHAIN_VALID_AT_TIME,
)


def _check_pck_chain(
    rec: _Recorder, chain: PckChain, pinned: x509.Certificate, at: datetime
) -> PckExtension | None:
    c = checks
    rec.run(
        c.ROOT_IS_PINNED_INTEL_ROOT,
        lambda: None if der(chain.root) == der(pinned) else f"{subject(chain.root)} is not the pinned root",
    )
    rec.run(c.ROOT_SELF_SIGNED, lambda: crypto.issued_by(chain.root, chain.root))
    rec.run(c.INTERMEDIATE_SIGNED_BY_PINNED_ROOT, lambda: crypto.issued_by(chain.intermediate, pinned))
    rec.run(c.INTERMEDIATE_SIGNED_BY_ROOT, lambda: crypto.issued_by(chain.intermediate, chain.root))
    rec.run(c.PCK_LEAF_SIGNED_BY_INTERMEDIATE, lambda: crypto.issued_by(chain.leaf, chain.intermediate))
    found: list[PckExtension] = []

    def profile() -> str | None:
        problem = _profile_problem(chain.leaf, chain.intermediate)
        if problem is not None:
            return problem
        try:
            found.append(pck_extension(chain.leaf))
        except ParseError as exc:
            return exc.detail
        return None

    rec.run(c.PCK_CHAIN_PROFILE, profile)
    certs = (chain.leaf, chain.intermediate, chain.root, pinned)
    rec.run(c.PCK_CHAIN_VALID_AT_TIME, lambda: _first(crypto.validity_problem(cert, at) for cert in certs))
    return found[0] if found else None


def _check_crls(
    rec: _Recorder,
    collateral: Collateral,
    chain: PckChain | None,
    pinned: x509.Certificate,
    require_crls: bool,
) -> None:
    c = checks
    absent = rec.fail if require_crls else rec.skip
    root_crl, pck_crl = collateral.root_ca_crl, collateral.pck_crl
    if root_crl is None:
        absent(c.ROOT_CRL_SIGNATURE, "the collateral has no Root CA CRL")
    else:
        rec.run(c.ROOT_CRL_SIGNATURE, lambda: crypto.crl_problem(root_crl, pinned))
        signers = _signers(collateral)
        rec.run(
            c.TCB_SIGNING_CERT_NOT_REVOKED,
            lambda: _first(crypto.revoked_problem(root_crl, s) for s in signers),
            c.ROOT_CRL_SIGNATURE,
        )
    if pck_crl is None:
        absent(c.PCK_CRL_SIGNATURE, "the collateral has no PCK CRL")
    if chain is None:
        return
    if root_crl is not None:
        rec.run(
            c.INTERMEDIATE_NOT_REVOKED,
            lambda: crypto.revoked_problem(root_crl, chain.intermediate),
            c.ROOT_CRL_SIGNATURE,
        )
    if pck_crl is not None:
        # Only an intermediate that chains to the pinned root may vouch for a CRL; the CRL must be
        # the one of the CA that issued this PCK (platform vs processor).
        rec.run(
            c.PCK_CRL_SIGNATURE,
            lambda: crypto.crl_problem(pck_crl, chain.intermediate),
            c.INTERMEDIATE_SIGNED_BY_PINNED_ROOT,
        )
        rec.run(c.PCK_NOT_REVOKED, lambda: crypto.revoked_problem(pck_crl, chain.leaf), c.PCK_CRL_SIGNATURE)


def _document_signature(signer: x509.Certificate, body: bytes, signature: bytes) -> str | None:
    return crypto.cert_signature_problem(signer, bytes(signature), bytes(body))


def _check_collateral_signatures(
    rec: _Recorder, collateral: Collateral, pinned: x509.Certificate, at: datetime
) -> None:
    c = checks
    signers = _signers(collateral)

    def signed_by_pinned_root() -> str | None:
        # The root also signs the PCK CAs: only its TCB Signing certificate may vouch for collateral.
        for signer in signers:
            names = [a.value for a in signer.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
            if _TCB_SIGNING_CN not in names:
                return f"{subject(signer)} is not an {_TCB_SIGNING_CN} certificate"
        return _first(crypto.issued_by(s, pinned) for s in signers)

    rec.run(c.TCB_SIGNING_CERT_SIGNED_BY_PINNED_ROOT, signed_by_pinned_root)
    rec.run(
        c.TCB_SIGNING_CERT_SIGNED_BY_ROOT,
        lambda: _first(crypto.issued_by(s, r) for s, r in _shipped_roots(collateral, pinned)),
    )
    rec.run(c.TCB_SIGNING_CERT_VALID_AT_TIME, lambda: _first(crypto.validity_problem(s, at) for s in signers))
    info, identity = collateral.tcb_info, collateral.qe_identity
    rec.run(
        c.TCB_INFO_SIGNATURE,
        lambda: _document_signature(collateral.tcb_info_issuer_chain[0], info.signed_body, info.signature),
    )
    rec.run(
        c.QE_IDENTITY_SIGNATURE,
        lambda: _document_signature(
            collateral.qe_identity_issuer_chain[0], identity.signed_body, identity.signature
        ),
    )


def _check_applicability(
    rec: _Recorder, quote: Quote, collateral: Collateral, pck: PckExtension | None
) -> None:
    """The collateral is for this TEE, this platform (FMSPC, PCE ID) and this TDX module."""
    c = checks
    info = collateral.tcb_info
    rec.run(c.TCB_INFO_ID_MATCHES_TEE, lambda: _tcb_info_id_problem(quote, collateral))
    if pck is None:
        rec.skip(c.FMSPC_MATCHES, "not evaluated: the PCK certificate could not be read")
        rec.skip(c.PCEID_MATCHES, "not evaluated: the PCK certificate could not be read")
    else:
        rec.run(
            c.FMSPC_MATCHES,
            lambda: (
                None
                if pck.fmspc == info.fmspc
                else f"PCK FMSPC {pck.fmspc.hex()} is not TCB Info's {info.fmspc.hex()}"
            ),
        )
        rec.run(
            c.PCEID_MATCHES,
            lambda: (
                None
                if pck.pce_id == info.pce_id
                else f"PCK PCE ID {pck.pce_id.hex()} is not TCB Info's {info.pce_id.hex()}"
            ),
        )
    if not (isinstance(quote.body, TdReport) and info.is_tdx):
        rec.skip(c.MODULE_MRSIGNER_MATCHES, "not a TDX quote with TDX TCB Info")
        rec.skip(c.SEAM_ATTRIBUTES_ZERO, "not a TDX quote with TDX TCB Info")
        return
    td = quote.body
    expected = _module_expectation(td, collateral)
    if isinstance(expected, str):
        rec.fail(c.MODULE_MRSIGNER_MATCHES, expected)
        rec.fail(c.SEAM_ATTRIBUTES_ZERO, expected)
        return
    mrsigner, attributes = expected
    rec.run(
        c.MODULE_MRSIGNER_MATCHES,
        lambda: (
            None
            if td.mr_signer_seam == mrsigner
            else f"MRSIGNERSEAM {td.mr_signer_seam.hex()} is not {mrsigner.hex()}"
        ),
    )
    # Intel requires both the quoted and the expected SEAM attributes to be zero.
    rec.run(
        c.SEAM_ATTRIBUTES_ZERO,
        lambda: (
            None
            if td.seam_attributes == bytes(8) and attributes == bytes(8)
            else f"SEAM attributes {td.seam_attributes.hex()} (expected {attributes.hex()}) are not zero"
        ),
    )


def _check_vendor(rec: _Recorder, quote: Quote) -> None:
    rec.run(
        checks.QE_VENDOR_IS_INTEL,
        lambda: (
            None
            if quote.header.qe_vendor_id == INTEL_QE_VENDOR_ID
            else f"QE vendor {quote.header.qe_vendor_id.hex()} is not Intel"
        ),
    )


def _check_quote(rec: _Recorder, quote: Quote, chain: PckChain | None, collateral: Collateral) -> None:
    c = checks
    if chain is None:
        rec.skip(c.QE_REPORT_SIGNATURE, "not evaluated: no PCK certificate")
    else:
        leaf = chain.leaf
        rec.run(
            c.QE_REPORT_SIGNATURE,
            lambda: crypto.cert_signature_problem(leaf, bytes(quote.qe.report_signature), bytes(quote.qe.report.raw)),
        )
    digest = hashlib.sha256(quote.attestation_key + quote.qe.auth_data).digest()
    rec.run(
        c.QE_REPORT_DATA_BINDING,
        # Intel's verifier binds the first 32 bytes only; the rest is zero in practice.
        lambda: (
            None
            if quote.qe.report.report_data[:32] == digest
            else "QE report_data[0:32] is not SHA-256(attestation key || QE auth data)"
        ),
    )
    rec.run(c.QE_IDENTITY_MATCHES, lambda: _qe_identity_problem(quote, collateral))
    attestation_key = crypto.p256_key_from_raw(quote.attestation_key)
    rec.run(
        c.QUOTE_SIGNATURE,
        lambda: (
            "the attestation key is not a P-256 point"
            if attestation_key is None
            else crypto.verify_raw_signature(attestation_key, quote.signature, quote.signed_data)
        ),
    )


def _check_freshness(rec: _Recorder, collateral: Collateral, at: datetime) -> None:
    info, identity = collateral.tcb_info, collateral.qe_identity
    problems = [
        _window_problem("TCB Info", info.issue_date, info.next_update, at),
        _window_problem("QE Identity", identity.issue_date, identity.next_update, at),
    ]
    if collateral.pck_crl is not None:
        problems.append(crypto.crl_window_problem(collateral.pck_crl, at, "PCK CRL"))
    if collateral.root_ca_crl is not None:
        problems.append(crypto.crl_window_problem(collateral.root_ca_crl, at, "Root CA CRL"))
    rec.run(checks.COLLATERAL_FRESH_AT_TIME, lambda: _first(problems))


def _tcb(quote: Quote, collateral: Collateral, pck: PckExtension) -> TcbEvaluation:
    td = quote.body if isinstance(quote.body, TdReport) and collateral.tcb_info.is_tdx else None
    return evaluate_tcb(
        collateral.tcb_info,
        collateral.qe_identity,
        pck.tcb_components,
        pck.pce_svn,
        quote.qe.report.isv_svn,
        tee_tcb_svn=td.tee_tcb_svn if td is not None else None,
        tee_tcb_svn_2=td.tee_tcb_svn_2 if td is not None else None,
    )


def evaluate_quote(
    raw: bytes,
    collateral: Collateral,
    root_ca_der: bytes,
    now: datetime,
    *,
    pck_chain: bytes | str | None = None,
    require_crls: bool = True,
) -> Evaluation:
    """Every check on ``raw`` at ``now``. Raises only ``ParseError`` (unreadable quote or root).

    ``pck_chain`` (PEM or DER: leaf, intermediate, root) is used only when the quote carries no
    PCK chain of its own (certification data types 1-4). With ``require_crls=False`` missing CRLs
    leave their checks not evaluated instead of failed -- for collateral published without CRLs.
    """
    at = _utc(now)
    quote = parse_quote(raw)
    pinned = load_certificates(root_ca_der, "root_ca")[0]
    rec = _Recorder()
    _check_vendor(rec, quote)
    found = _pck_chain(quote, pck_chain)
    chain: PckChain | None = None
    pck: PckExtension | None = None
    if isinstance(found, str):
        rec.fail(checks.PCK_CHAIN_PARSES, found)
        for name in _CHAIN_CHECKS:
            rec.skip(name, "not evaluated: no PCK chain")
    else:
        chain = found
        rec.run(checks.PCK_CHAIN_PARSES, lambda: None)
        pck = _check_pck_chain(rec, chain, pinned, at)
    _check_crls(rec, collateral, chain, pinned, require_crls)
    _check_collateral_signatures(rec, collateral, pinned, at)
    _check_applicability(rec, quote, collateral, pck)
    _check_quote(rec, quote, chain, collateral)
    _check_freshness(rec, collateral, at)
    tcb = _tcb(quote, collateral, pck) if pck is not None else None
    window = None
    if chain is not None:
        certs = [chain.leaf, chain.intermediate, chain.root, pinned, *_signers(collateral)]
        window = _window(collateral, certs)
    return Evaluation(quote, rec.ordered(), pck, tcb, window)


def _window_problem(name: str, start: datetime, end: datetime, at: datetime) -> str | None:
    if at < start:
        return f"{name} not valid before {start.isoformat()}"
    if at > end:
        return f"{name} stale since {end.isoformat()}"
    return None


def _window(collateral: Collateral, certs: list[x509.Certificate]) -> tuple[datetime, datetime]:
    """The interval in which every time-bound input is valid."""
    starts = [collateral.tcb_info.issue_date, collateral.qe_identity.issue_date]
    ends = [collateral.tcb_info.next_update, collateral.qe_identity.next_update]
    for crl in (collateral.pck_crl, collateral.root_ca_crl):
        if crl is not None:
            starts.append(crl.last_update_utc)
            if crl.next_update_utc is not None:
                ends.append(crl.next_update_utc)
    starts += [c.not_valid_before_utc for c in certs]
    ends += [c.not_valid_after_utc for c in certs]
    return max(starts), min(ends)


def verify_quote(
    raw: bytes,
    collateral: Collateral,
    root_ca_der: bytes,
    now: datetime,
    *,
    pck_chain: bytes | str | None = None,
    require_crls: bool = True,
) -> VerifiedQuote:
    """Verify ``raw`` against ``collateral`` and the pinned Intel SGX Root CA at ``now``.

    Raises ``ParseError`` for an unreadable quote and ``VerificationError`` (``check`` from
    ``checks``) for the first failed check; the returned TCB status follows Intel's rule.
    """
    evaluation = evaluate_quote(
        raw, collateral, root_ca_der, now, pck_chain=pck_chain, require_crls=require_crls
    )
    failures = evaluation.failures
    if failures:
        first = failures[0]
        raise VerificationError(first.name, first.detail)
    quote = evaluation.quote
    # Fail closed: a check that was silently not evaluated is a failure unless it cannot apply.
    optional = (set() if isinstance(quote.body, TdReport) else _TDX_ONLY) | (
        set() if require_crls else _CRL_DEPENDENT
    )
    for outcome in evaluation.outcomes.values():
        if outcome.passed is None and outcome.name not in optional:
            raise VerificationError(outcome.name, outcome.detail or "not evaluated")
    if evaluation.pck is None or evaluation.tcb is None or evaluation.valid_window is None:
        raise VerificationError(checks.PCK_CHAIN_PROFILE, "the PCK certificate could not be read")
    return VerifiedQuote(
        quote=quote,
        tee="tdx" if quote.is_tdx else "sgx",
        tcb=evaluation.tcb,
        pck=evaluation.pck,
        tcb_evaluation_data_number=collateral.tcb_info.tcb_evaluation_data_number,
        valid_window=evaluation.valid_window,
        outcomes=tuple(evaluation.outcomes.values()),
    )


@dataclass(frozen=True)
class _ChainVerdict:
    chain: PckChain
    pck: PckExtension
    window: tuple[datetime, datetime]


class QuoteVerifier:
    """``verify_quote`` over one collateral set, remembering each PCK chain's verdict.

    The first quote of a platform runs every check. Later quotes from the same PCK chain, while
    inside the window in which that verdict holds (collateral freshness, CRL windows and every
    certificate's validity), run only what depends on the quote itself: the QE vendor, the
    applicability of the collateral to this TD, the QE report signature and binding, the QE
    identity, the quote signature and the TCB status. Outside the window, or for a new chain, the
    full verification runs again, so a failure is still reported by its own check.
    """

    _MAX_CHAINS = 65536

    def __init__(self, collateral: Collateral, root_ca_der: bytes, *, require_crls: bool = True) -> None:
        self.collateral = collateral
        self.root_ca_der = root_ca_der
        self.require_crls = require_crls
        self._chains: dict[bytes, _ChainVerdict] = {}

    def verify(self, raw: bytes, now: datetime) -> VerifiedQuote:
        at = _utc(now)
        quote = parse_quote(raw)
        key = bytes(quote.qe.certification.data)
        verdict = self._chains.get(key)
        if verdict is None or not verdict.window[0] <= at <= verdict.window[1]:
            return self._full(raw, at, key)
        return self._per_quote(quote, verdict)

    def _full(self, raw: bytes, at: datetime, key: bytes) -> VerifiedQuote:
        verified = verify_quote(raw, self.collateral, self.root_ca_der, at, require_crls=self.require_crls)
        chain = _pck_chain(verified.quote, None)
        if isinstance(chain, PckChain):
            if len(self._chains) >= self._MAX_CHAINS:
                self._chains.clear()
            self._chains[key] = _ChainVerdict(chain, verified.pck, verified.valid_window)
        return verified

    def _per_quote(self, quote: Quote, verdict: _ChainVerdict) -> VerifiedQuote:
        rec = _Recorder()
        _check_vendor(rec, quote)
        _check_applicability(rec, quote, self.collateral, verdict.pck)
        _check_quote(rec, quote, verdict.chain, self.collateral)
        failed = [o for o in rec.outcomes.values() if o.passed is False]
        if failed:
            raise VerificationError(failed[0].name, failed[0].detail)
        return VerifiedQuote(
            quote=quote,
            tee="tdx" if quote.is_tdx else "sgx",
            tcb=_tcb(quote, self.collateral, verdict.pck),
            pck=verdict.pck,
            tcb_evaluation_data_number=self.collateral.tcb_info.tcb_evaluation_data_number,
            valid_window=verdict.window,
            outcomes=tuple(rec.outcomes.values()),
        )
