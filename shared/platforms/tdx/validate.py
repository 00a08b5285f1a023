"""Policy over verified TDX/SGX quote fields, and the claims a verified quote produces.

Pure: takes a ``Quote`` and the ``VerifiedQuote`` that ``verify.verify_quote`` returned for it.
Every violation is reported at once (``Violation(field, got, want)``, ``field`` = the claim name),
so operators can fix everything in one go. A reference left as ``None`` is not checked; an empty
set means "nothing is acceptable" (a provisioning gap must not read as "anything goes").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from shared.errors import ParseError, VerificationError
from shared.platforms.base import Violation
from shared.platforms.tdx.abi import EnclaveReport, Quote, TdReport
from shared.platforms.tdx.tcb import TcbStatus
from shared.platforms.tdx.verify import VerifiedQuote


class TcbVerdict(Protocol):
    """What policy needs of a verification: the quote it covered and its TCB outcome.
    ``VerifiedQuote`` is one; the pipeline rebuilds one from its verified claims."""

    @property
    def quote(self) -> Quote: ...

    @property
    def tcb_status(self) -> str: ...

    @property
    def advisory_ids(self) -> tuple[str, ...]: ...


DEFAULT_ACCEPTED = frozenset({TcbStatus.UP_TO_DATE.value})
# Statuses a relying party may choose to live with. Revoked, TcbNotSupported and
# TdxModuleMismatch are never acceptable, whatever the configuration says.
ACCEPTABLE = frozenset(
    s.value
    for s in (
        TcbStatus.UP_TO_DATE,
        TcbStatus.SW_HARDENING_NEEDED,
        TcbStatus.CONFIGURATION_NEEDED,
        TcbStatus.CONFIGURATION_AND_SW_HARDENING_NEEDED,
        TcbStatus.OUT_OF_DATE,
        TcbStatus.OUT_OF_DATE_CONFIGURATION_NEEDED,
        TcbStatus.TD_RELAUNCH_ADVISED,
        TcbStatus.TD_RELAUNCH_ADVISED_CONFIGURATION_NEEDED,
    )
)
MR_SIZE = 48
REPORT_DATA_SIZE = 64


def _check_statuses(statuses: frozenset[str]) -> None:
    bad = sorted(set(statuses) - ACCEPTABLE)
    if bad:
        raise ParseError(
            "tdx_policy.accepted_tcb_statuses", f"may not accept {', '.join(bad)}", prefix="config"
        )


def _check_sizes(name: str, values: frozenset[bytes] | None, size: int) -> None:
    if values is not None and any(len(v) != size for v in values):
        raise ParseError(f"tdx_policy.{name}", f"values must be {size} bytes", prefix="config")


@dataclass(frozen=True)
class TdxPolicy:
    accepted_tcb_statuses: frozenset[str] = DEFAULT_ACCEPTED
    rejected_advisory_ids: frozenset[str] = frozenset()
    allow_debug: bool = False
    require_sept_ve_disable: bool = False
    mr_td: frozenset[bytes] | None = None
    rtmrs: Mapping[int, frozenset[bytes]] = field(default_factory=dict)  # RTMR index -> accepted values
    mr_config_id: bytes | None = None  # the init-data binding: exactly these 48 bytes
    xfam: frozenset[bytes] | None = None
    report_data: bytes | None = None
    mr_seam: frozenset[bytes] | None = None

    def __post_init__(self) -> None:
        _check_statuses(self.accepted_tcb_statuses)
        _check_sizes("mr_td", self.mr_td, MR_SIZE)
        _check_sizes("mr_seam", self.mr_seam, MR_SIZE)
        _check_sizes("xfam", self.xfam, 8)
        for index, values in self.rtmrs.items():
            if index not in range(4):
                raise ParseError("tdx_policy.rtmrs", f"no RTMR {index}", prefix="config")
            _check_sizes(f"rtmrs.{index}", values, MR_SIZE)
        if self.mr_config_id is not None and len(self.mr_config_id) != MR_SIZE:
            raise ParseError("tdx_policy.mr_config_id", f"must be {MR_SIZE} bytes", prefix="config")
        if self.report_data is not None and len(self.report_data) != REPORT_DATA_SIZE:
            raise ParseError("tdx_policy.report_data", f"must be {REPORT_DATA_SIZE} bytes", prefix="config")


@dataclass(frozen=True)
class SgxPolicy:
    accepted_tcb_statuses: frozenset[str] = DEFAULT_ACCEPTED
    rejected_advisory_ids: frozenset[str] = frozenset()
    allow_debug: bool = False
    mr_enclave: frozenset[bytes] | None = None
    mr_signer: frozenset[bytes] | None = None
    isv_prod_id: int | None = None
    min_isv_svn: int = 0
    report_data: bytes | None = None

    def __post_init__(self) -> None:
        _check_statuses(self.accepted_tcb_statuses)
        _check_sizes("mr_enclave", self.mr_enclave, 32)
        _check_sizes("mr_signer", self.mr_signer, 32)
        if self.report_data is not None and len(self.report_data) != REPORT_DATA_SIZE:
            raise ParseError("sgx_policy.report_data", f"must be {REPORT_DATA_SIZE} bytes", prefix="config")


def _one_of(values: frozenset[bytes]) -> str:
    return "one of: " + ", ".join(sorted(v.hex() for v in values)) if values else "<none configured>"


def _member(name: str, got: bytes, allowed: frozenset[bytes] | None) -> Violation | None:
    if allowed is None or got in allowed:
        return None
    return Violation(name, got.hex(), _one_of(allowed))


def _exact(name: str, got: bytes, want: bytes | None) -> Violation | None:
    if want is None or got == want:
        return None
    return Violation(name, got.hex(), want.hex())


def _tcb_violations(
    prefix: str, verified: TcbVerdict, accepted: frozenset[str], rejected: frozenset[str]
) -> list[Violation]:
    out = []
    if verified.tcb_status not in accepted:
        out.append(
            Violation(f"{prefix}.tcb_status", verified.tcb_status, "one of: " + ", ".join(sorted(accepted)))
        )
    bad = sorted(set(verified.advisory_ids) & rejected)
    if bad:
        out.append(
            Violation(f"{prefix}.advisory_ids", ", ".join(bad), "none of: " + ", ".join(sorted(rejected)))
        )
    return out


def _same_quote(quote: Quote, verified: TcbVerdict) -> None:
    # Policy must read the very quote whose signature was checked.
    if quote.signed_data != verified.quote.signed_data:
        raise VerificationError("tdx.quote_mismatch", "the quote is not the one that was verified")


def validate_tdx(quote: Quote, verified: TcbVerdict, policy: TdxPolicy) -> list[Violation]:
    _same_quote(quote, verified)
    if not isinstance(quote.body, TdReport):
        return [Violation("tdx.quote.header.tee_type", f"{quote.header.tee_type:#x}", "0x81 (TDX)")]
    td = quote.body
    body = "tdx.quote.body"
    found = _tcb_violations("tdx", verified, policy.accepted_tcb_statuses, policy.rejected_advisory_ids)
    if td.debug and not policy.allow_debug:
        found.append(Violation("tdx.td_attributes.debug", "true", "false"))
    if policy.require_sept_ve_disable and not td.sept_ve_disable:
        found.append(Violation("tdx.td_attributes.sept_ve_disable", "false", "true"))
    candidates = [
        _member(f"{body}.mr_td", td.mr_td, policy.mr_td),
        _member(f"{body}.mr_seam", td.mr_seam, policy.mr_seam),
        *(_member(f"{body}.rtmr_{i}", td.rtmrs[i], values) for i, values in sorted(policy.rtmrs.items())),
        _exact(f"{body}.mr_config_id", td.mr_config_id, policy.mr_config_id),
        _member(f"{body}.xfam", td.xfam, policy.xfam),
        _exact(f"{body}.report_data", td.report_data, policy.report_data),
    ]
    found.extend(v for v in candidates if v is not None)
    return found


def validate_sgx(quote: Quote, verified: TcbVerdict, policy: SgxPolicy) -> list[Violation]:
    _same_quote(quote, verified)
    if not isinstance(quote.body, EnclaveReport):
        return [Violation("sgx.quote.header.tee_type", f"{quote.header.tee_type:#x}", "0x0 (SGX)")]
    report = quote.body
    body = "sgx.quote.body"
    found = _tcb_violations("sgx", verified, policy.accepted_tcb_statuses, policy.rejected_advisory_ids)
    if report.debug and not policy.allow_debug:
        found.append(Violation("sgx.attributes.debug", "true", "false"))
    candidates = [
        _member(f"{body}.mr_enclave", report.mr_enclave, policy.mr_enclave),
        _member(f"{body}.mr_signer", report.mr_signer, policy.mr_signer),
        _exact(f"{body}.report_data", report.report_data, policy.report_data),
    ]
    found.extend(v for v in candidates if v is not None)
    if policy.isv_prod_id is not None and report.isv_prod_id != policy.isv_prod_id:
        found.append(Violation(f"{body}.isv_prod_id", str(report.isv_prod_id), str(policy.isv_prod_id)))
    if report.isv_svn < policy.min_isv_svn:
        found.append(Violation(f"{body}.isv_svn", str(report.isv_svn), f">= {policy.min_isv_svn}"))
    return found


def validate(quote: Quote, verified: TcbVerdict, policy: TdxPolicy | SgxPolicy) -> list[Violation]:
    """All violations of ``policy`` (empty list = acceptable)."""
    if isinstance(policy, TdxPolicy):
        return validate_tdx(quote, verified, policy)
    return validate_sgx(quote, verified, policy)


def _header_claims(prefix: str, quote: Quote) -> dict[str, object]:
    h = quote.header
    return {
        f"{prefix}.quote.header.version": h.version,
        f"{prefix}.quote.header.att_key_type": h.att_key_type,
        f"{prefix}.quote.header.tee_type": h.tee_type,
        f"{prefix}.quote.header.qe_svn": h.qe_svn,
        f"{prefix}.quote.header.pce_svn": h.pce_svn,
        f"{prefix}.quote.header.qe_vendor_id": h.qe_vendor_id.hex(),
        f"{prefix}.quote.header.user_data": h.user_data.hex(),
    }


def _platform_claims(prefix: str, verified: VerifiedQuote) -> dict[str, object]:
    tcb = verified.tcb
    return {
        f"{prefix}.tcb_status": verified.tcb_status,
        f"{prefix}.advisory_ids": list(verified.advisory_ids),
        f"{prefix}.tcb_date": tcb.tcb_date.isoformat() if tcb.tcb_date else None,
        f"{prefix}.tcb_evaluation_data_number": verified.tcb_evaluation_data_number,
        f"{prefix}.fmspc": verified.pck.fmspc.hex(),
        f"{prefix}.pck.sgx_type": verified.pck.sgx_type,
        f"{prefix}.qe.isv_svn": verified.quote.qe.report.isv_svn,
    }


def _td_claims(td: TdReport) -> dict[str, object]:
    body = "tdx.quote.body"
    out: dict[str, object] = {
        f"{body}.tee_tcb_svn": td.tee_tcb_svn.hex(),
        f"{body}.mr_seam": td.mr_seam.hex(),
        f"{body}.mr_signer_seam": td.mr_signer_seam.hex(),
        f"{body}.seam_attributes": td.seam_attributes.hex(),
        f"{body}.td_attributes": td.td_attributes.hex(),
        f"{body}.xfam": td.xfam.hex(),
        f"{body}.mr_td": td.mr_td.hex(),
        f"{body}.mr_config_id": td.mr_config_id.hex(),
        f"{body}.mr_owner": td.mr_owner.hex(),
        f"{body}.mr_owner_config": td.mr_owner_config.hex(),
        **{f"{body}.rtmr_{i}": rtmr.hex() for i, rtmr in enumerate(td.rtmrs)},
        f"{body}.report_data": td.report_data.hex(),
        "tdx.td_attributes.debug": td.debug,
        "tdx.td_attributes.sept_ve_disable": td.sept_ve_disable,
    }
    if td.tee_tcb_svn_2 is not None and td.mr_service_td is not None:
        out[f"{body}.tee_tcb_svn_2"] = td.tee_tcb_svn_2.hex()
        out[f"{body}.mr_service_td"] = td.mr_service_td.hex()
    return out


def _enclave_claims(report: EnclaveReport) -> dict[str, object]:
    body = "sgx.quote.body"
    return {
        f"{body}.cpu_svn": report.cpu_svn.hex(),
        f"{body}.misc_select": report.misc_select,
        f"{body}.attributes": report.attributes.hex(),
        f"{body}.mr_enclave": report.mr_enclave.hex(),
        f"{body}.mr_signer": report.mr_signer.hex(),
        f"{body}.isv_prod_id": report.isv_prod_id,
        f"{body}.isv_svn": report.isv_svn,
        f"{body}.config_id": report.config_id.hex(),
        f"{body}.config_svn": report.config_svn,
        f"{body}.isv_ext_prod_id": report.isv_ext_prod_id.hex(),
        f"{body}.isv_family_id": report.isv_family_id.hex(),
        f"{body}.report_data": report.report_data.hex(),
        "sgx.attributes.debug": report.debug,
    }


def claims(quote: Quote, verified: VerifiedQuote) -> dict[str, object]:
    """Stable claim names for the attestation token (``tdx.*`` or ``sgx.*``); bytes as lowercase hex."""
    _same_quote(quote, verified)
    prefix = "tdx" if isinstance(quote.body, TdReport) else "sgx"
    out = {**_header_claims(prefix, quote), **_platform_claims(prefix, verified)}
    if isinstance(quote.body, TdReport):
        out.update(_td_claims(quote.body))
    else:
        out.update(_enclave_claims(quote.body))
    return out
