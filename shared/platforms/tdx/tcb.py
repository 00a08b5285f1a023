"""TCB status by Intel's reference rule (the DCAP Quote Verification Library), as pure functions.

* Levels are ordered the way Intel's verifier orders them -- descending by (SGX component SVNs,
  PCESVN, and for TDX the TDX component SVNs), lexicographically, duplicates collapsed -- and the
  first match wins. PCS already serves them in that order; sorting makes the rule independent of
  the document order.
* SGX level: the first level whose 16 SGX components and PCESVN are all <= the PCK certificate's.
  TDX level: the first level that also has every TEE_TCB_SVN byte >= its TDX component, except that
  bytes 0 and 1 (module SVN and major version) are skipped when the major version is non-zero; the
  module is then judged through the ``TDX_%02X`` module identity instead.
* Module status, QE status and platform status are then converged as Intel converges them (an
  OutOfDate module or QE turns UpToDate/SWHardeningNeeded into OutOfDate and the Configuration*
  statuses into OutOfDateConfigurationNeeded; Revoked wins; a QE without a level is
  TcbNotSupported), including the TD 1.5 "relaunch advised" case.

dcap-qvl's rule has differed (at commit 9bffe30b it compared all 16 TEE_TCB_SVN bytes, merged
statuses by severity and treated "no level" as an error); ``tests/unit/test_tdx_tcb.py`` pins the
vectors where the rules part ways and checks the installed dcap-qvl against this one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import Enum

from shared.platforms.tdx.collateral import EnclaveTcbLevel, QeIdentity, TcbInfo, TcbLevel, TdxModuleIdentity


class TcbStatus(str, Enum):
    UP_TO_DATE = "UpToDate"
    SW_HARDENING_NEEDED = "SWHardeningNeeded"
    CONFIGURATION_NEEDED = "ConfigurationNeeded"
    CONFIGURATION_AND_SW_HARDENING_NEEDED = "ConfigurationAndSWHardeningNeeded"
    OUT_OF_DATE = "OutOfDate"
    OUT_OF_DATE_CONFIGURATION_NEEDED = "OutOfDateConfigurationNeeded"
    REVOKED = "Revoked"
    TCB_NOT_SUPPORTED = "TcbNotSupported"
    TDX_MODULE_MISMATCH = "TdxModuleMismatch"
    TD_RELAUNCH_ADVISED = "TDRelaunchAdvised"
    TD_RELAUNCH_ADVISED_CONFIGURATION_NEEDED = "TDRelaunchAdvisedConfigurationNeeded"


_CONFIGURATION = frozenset(
    {
        TcbStatus.CONFIGURATION_NEEDED,
        TcbStatus.CONFIGURATION_AND_SW_HARDENING_NEEDED,
        TcbStatus.OUT_OF_DATE_CONFIGURATION_NEEDED,
        TcbStatus.TD_RELAUNCH_ADVISED_CONFIGURATION_NEEDED,
    }
)


@dataclass(frozen=True, slots=True)
class TcbEvaluation:
    """The final status and how it was reached (each part ``None`` when not applicable/found)."""

    status: TcbStatus
    advisory_ids: tuple[str, ...]
    tcb_date: datetime | None
    sgx_level: TcbLevel | None
    tdx_level: TcbLevel | None
    module_status: TcbStatus | None
    qe_status: TcbStatus | None
    qe_level: EnclaveTcbLevel | None


def sorted_levels(tcb_info: TcbInfo) -> tuple[TcbLevel, ...]:
    """Intel's level order: descending, lexicographic, first of equal keys kept."""

    def key(level: TcbLevel) -> tuple[tuple[int, ...], int, tuple[int, ...]]:
        tdx = level.tdx_components if tcb_info.is_tdx and level.tdx_components is not None else ()
        return (level.sgx_components, level.pce_svn, tdx)

    seen: set[tuple[tuple[int, ...], int, tuple[int, ...]]] = set()
    out: list[TcbLevel] = []
    for level in sorted(tcb_info.tcb_levels, key=key, reverse=True):  # stable for equal keys
        if key(level) not in seen:
            seen.add(key(level))
            out.append(level)
    return tuple(out)


def _sgx_matches(level: TcbLevel, components: Sequence[int], pce_svn: int) -> bool:
    return all(c >= want for c, want in zip(components, level.sgx_components, strict=True)) and (
        pce_svn >= level.pce_svn
    )


def _tdx_matches(level: TcbLevel, tee_tcb_svn: bytes) -> bool:
    if level.tdx_components is None:
        return False
    start = 2 if tee_tcb_svn[1] > 0 else 0
    return all(tee_tcb_svn[i] >= level.tdx_components[i] for i in range(start, 16))


def match_levels(
    levels: Sequence[TcbLevel], components: Sequence[int], pce_svn: int, tee_tcb_svn: bytes | None
) -> tuple[TcbLevel | None, TcbLevel | None]:
    """``(sgx_level, tdx_level)``; for SGX quotes (``tee_tcb_svn`` None) only the first is looked for."""
    sgx_level: TcbLevel | None = None
    for level in levels:
        if not _sgx_matches(level, components, pce_svn):
            continue
        if tee_tcb_svn is None:
            return level, None
        if sgx_level is None:
            sgx_level = level
        if _tdx_matches(level, tee_tcb_svn):
            return sgx_level, level
    return sgx_level, None


def find_module_identity(tcb_info: TcbInfo, major_version: int) -> TdxModuleIdentity | None:
    wanted = f"TDX_{major_version:02X}"
    for identity in tcb_info.tdx_module_identities:
        if identity.id.upper() == wanted:
            return identity
    return None


def module_status(tcb_info: TcbInfo, tee_tcb_svn: bytes) -> TcbStatus:
    """Status of the TDX module: UpToDate for major version 0 (judged by the TCB level alone)."""
    if tee_tcb_svn[1] == 0:
        return TcbStatus.UP_TO_DATE
    identity = find_module_identity(tcb_info, tee_tcb_svn[1])
    if identity is None:
        return TcbStatus.TDX_MODULE_MISMATCH
    for level in identity.tcb_levels:  # Intel takes these in document order
        if tee_tcb_svn[0] >= level.isv_svn:
            return TcbStatus(level.status)
    return TcbStatus.TCB_NOT_SUPPORTED


def qe_level(qe_identity: QeIdentity, isv_svn: int) -> EnclaveTcbLevel | None:
    """The highest QE Identity level at or below the QE's ISVSVN."""
    for level in sorted(qe_identity.tcb_levels, key=lambda lv: lv.isv_svn, reverse=True):
        if isv_svn >= level.isv_svn:
            return level
    return None


def _converge_out_of_date(status: TcbStatus, other: TcbStatus) -> TcbStatus:
    """Fold a module or QE status (UpToDate/OutOfDate/Revoked) into the platform status."""
    if other is TcbStatus.OUT_OF_DATE:
        if status in (TcbStatus.UP_TO_DATE, TcbStatus.SW_HARDENING_NEEDED):
            return TcbStatus.OUT_OF_DATE
        if status in (TcbStatus.CONFIGURATION_NEEDED, TcbStatus.CONFIGURATION_AND_SW_HARDENING_NEEDED):
            return TcbStatus.OUT_OF_DATE_CONFIGURATION_NEEDED
    if other is TcbStatus.REVOKED:
        return TcbStatus.REVOKED
    return status


def _converge_qe(status: TcbStatus, qe_status: TcbStatus) -> TcbStatus:
    if qe_status is TcbStatus.TCB_NOT_SUPPORTED:
        return TcbStatus.TCB_NOT_SUPPORTED
    return _converge_out_of_date(status, qe_status)


def _relaunch(
    tee_tcb_svn_2: bytes,
    tcb_info: TcbInfo,
    levels: Sequence[TcbLevel],
    sgx_status: TcbStatus,
    tdx_status: TcbStatus,
    mod_status: TcbStatus,
    qe_status: TcbStatus,
) -> TcbStatus:
    """TD 1.5: a TD that is OutOfDate only because its module was updated in place (TEE_TCB_SVN_2
    already meets the newest level) is told to relaunch instead."""
    platform_ok = sgx_status in (
        TcbStatus.UP_TO_DATE,
        TcbStatus.SW_HARDENING_NEEDED,
        TcbStatus.CONFIGURATION_NEEDED,
        TcbStatus.CONFIGURATION_AND_SW_HARDENING_NEEDED,
    )
    if (
        qe_status in (TcbStatus.OUT_OF_DATE, TcbStatus.REVOKED, TcbStatus.TCB_NOT_SUPPORTED)
        or not platform_ok
        or tdx_status not in (TcbStatus.OUT_OF_DATE, TcbStatus.OUT_OF_DATE_CONFIGURATION_NEEDED)
        or mod_status is not TcbStatus.OUT_OF_DATE
    ):
        return tdx_status
    if not levels or levels[0].tdx_components is None:
        return TcbStatus.TCB_NOT_SUPPORTED
    latest = levels[0].tdx_components
    if tee_tcb_svn_2[1] == 0:
        module_ok = tee_tcb_svn_2[0] >= latest[0]
    else:
        identity = find_module_identity(tcb_info, tee_tcb_svn_2[1])
        if identity is None:
            return TcbStatus.TDX_MODULE_MISMATCH
        if not identity.tcb_levels:
            return TcbStatus.TCB_NOT_SUPPORTED
        module_ok = tee_tcb_svn_2[0] >= identity.tcb_levels[0].isv_svn
    if not (module_ok and tee_tcb_svn_2[2] >= latest[2]):
        return tdx_status
    if sgx_status in _CONFIGURATION or tdx_status in _CONFIGURATION:
        return TcbStatus.TD_RELAUNCH_ADVISED_CONFIGURATION_NEEDED
    return TcbStatus.TD_RELAUNCH_ADVISED


def _advisories(*groups: Sequence[str]) -> tuple[str, ...]:
    out: dict[str, None] = {}
    for group in groups:
        for advisory in group:
            out.setdefault(advisory, None)
    return tuple(out)


def evaluate_tcb(
    tcb_info: TcbInfo,
    qe_identity: QeIdentity,
    pck_components: Sequence[int],
    pck_pce_svn: int,
    qe_isv_svn: int,
    tee_tcb_svn: bytes | None = None,
    tee_tcb_svn_2: bytes | None = None,
) -> TcbEvaluation:
    """The TCB status of a platform by Intel's rule. ``tee_tcb_svn`` is given for TDX quotes only,
    ``tee_tcb_svn_2`` for TD 1.5 bodies only. Advisory IDs: those of the selected platform level
    and of the QE level, in that order, without duplicates."""
    levels = sorted_levels(tcb_info)
    qe = qe_level(qe_identity, qe_isv_svn)
    qe_status = TcbStatus(qe.status) if qe is not None else TcbStatus.TCB_NOT_SUPPORTED
    sgx_level, tdx_level = match_levels(levels, pck_components, pck_pce_svn, tee_tcb_svn)

    def result(status: TcbStatus, level: TcbLevel | None, mod: TcbStatus | None = None) -> TcbEvaluation:
        if level is None:  # no platform level: nothing to report but the status
            advisories: tuple[str, ...] = ()
        else:
            advisories = _advisories(level.advisory_ids, qe.advisory_ids if qe is not None else ())
        return TcbEvaluation(
            status=status,
            advisory_ids=advisories,
            tcb_date=level.tcb_date if level is not None else None,
            sgx_level=sgx_level,
            tdx_level=tdx_level,
            module_status=mod,
            qe_status=qe_status,
            qe_level=qe,
        )

    if sgx_level is None:
        return result(TcbStatus.TCB_NOT_SUPPORTED, None)
    sgx_status = TcbStatus(sgx_level.status)
    if tee_tcb_svn is None:  # SGX: the SGX level is the platform level
        return result(_converge_qe(sgx_status, qe_status), sgx_level)
    if tdx_level is None:
        return result(TcbStatus.TCB_NOT_SUPPORTED, None)
    mod = module_status(tcb_info, tee_tcb_svn)
    if mod in (TcbStatus.TCB_NOT_SUPPORTED, TcbStatus.TDX_MODULE_MISMATCH):
        return result(mod, tdx_level, mod)
    status = _converge_out_of_date(TcbStatus(tdx_level.status), mod)
    if status is TcbStatus.REVOKED:
        return result(status, tdx_level, mod)
    if tee_tcb_svn_2 is not None:
        status = _relaunch(tee_tcb_svn_2, tcb_info, levels, sgx_status, status, mod, qe_status)
    return result(_converge_qe(status, qe_status), tdx_level, mod)
