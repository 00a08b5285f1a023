"""Intel PCS collateral -> typed, cacheable structures: TCB Info (v2 SGX, v3 SGX/TDX), QE Identity
(v2), their issuer chains, the PCK CRL and the Root CA CRL.

The TCB Info and QE Identity signatures cover the exact bytes of the inner JSON object as served
(``{"tcbInfo": <signed bytes>, "signature": "<hex>"}``). Those bytes are located by scanning the
top-level object, kept verbatim in ``signed_body``, and the typed values are decoded from those same
bytes, so nothing that policy reads can come from outside the signature. Nothing here verifies
signatures or time: that is ``verify``'s job.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography import x509

from shared.errors import ParseError
from shared.platforms.tdx.certs import load_certificates, load_crl, order_chain

TCB_STATUSES = frozenset(
    {
        "UpToDate",
        "SWHardeningNeeded",
        "ConfigurationNeeded",
        "ConfigurationAndSWHardeningNeeded",
        "OutOfDate",
        "OutOfDateConfigurationNeeded",
        "Revoked",
    }
)
ENCLAVE_TCB_STATUSES = frozenset({"UpToDate", "OutOfDate", "Revoked"})
_COMPONENTS = 16


@dataclass(frozen=True, slots=True)
class TcbLevel:
    sgx_components: tuple[int, ...]  # 16 SVNs
    pce_svn: int
    tdx_components: tuple[int, ...] | None  # 16 SVNs, TDX TCB Info only
    tcb_date: datetime | None
    status: str
    advisory_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class EnclaveTcbLevel:
    isv_svn: int
    tcb_date: datetime | None
    status: str
    advisory_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TdxModule:
    mrsigner: bytes
    attributes: bytes
    attributes_mask: bytes


@dataclass(frozen=True, slots=True)
class TdxModuleIdentity:
    id: str
    module: TdxModule
    tcb_levels: tuple[EnclaveTcbLevel, ...]


@dataclass(frozen=True, slots=True)
class TcbInfo:
    id: str | None  # "TDX" or "SGX"; absent in v2 (SGX only)
    version: int
    issue_date: datetime
    next_update: datetime
    fmspc: bytes
    pce_id: bytes
    tcb_type: int
    tcb_evaluation_data_number: int
    tdx_module: TdxModule | None
    tdx_module_identities: tuple[TdxModuleIdentity, ...]
    tcb_levels: tuple[TcbLevel, ...]
    signed_body: bytes
    signature: bytes

    @property
    def is_tdx(self) -> bool:
        return self.id == "TDX"


@dataclass(frozen=True, slots=True)
class QeIdentity:
    id: str  # "TD_QE" or "QE"
    version: int
    issue_date: datetime
    next_update: datetime
    tcb_evaluation_data_number: int
    miscselect: bytes  # 4 bytes in report byte order (the hex string is the raw bytes)
    miscselect_mask: bytes
    attributes: bytes
    attributes_mask: bytes
    mrsigner: bytes
    isv_prod_id: int
    tcb_levels: tuple[EnclaveTcbLevel, ...]
    signed_body: bytes
    signature: bytes


@dataclass(frozen=True, slots=True)
class Collateral:
    """Everything a quote is verified against except the PCK chain. One per (TEE, FMSPC, CA), so
    callers can cache it; the CRLs are optional only so that collateral sets published without
    them can still be checked with ``require_crls=False``."""

    tcb_info: TcbInfo
    tcb_info_issuer_chain: tuple[x509.Certificate, ...]
    qe_identity: QeIdentity
    qe_identity_issuer_chain: tuple[x509.Certificate, ...]
    pck_crl: x509.CertificateRevocationList | None = None
    pck_crl_issuer_chain: tuple[x509.Certificate, ...] = ()
    root_ca_crl: x509.CertificateRevocationList | None = None


# -- JSON plumbing -----------------------------------------------------------------------------


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def split_signed_json(body: bytes | str, key: str, field: str) -> tuple[bytes, bytes]:
    """``(signed inner bytes, signature)`` from a PCS body ``{key: {...}, "signature": "<hex>"}``."""
    if isinstance(body, str):
        body = body.encode("utf-8")
    if not isinstance(body, (bytes, bytearray, memoryview)):
        raise ParseError(field, f"expected bytes, got {type(body).__name__}")
    try:
        text = bytes(body).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ParseError(field, f"not UTF-8: {exc}") from None
    decoder = json.JSONDecoder(object_pairs_hook=_no_duplicates)
    spans: dict[str, tuple[int, int, Any]] = {}
    try:
        pos = _skip_ws(text, 0)
        if text[pos : pos + 1] != "{":
            raise ValueError("not a JSON object")
        pos = _skip_ws(text, pos + 1)
        while text[pos : pos + 1] != "}":
            name, pos = decoder.raw_decode(text, pos)
            pos = _skip_ws(text, pos)
            if not isinstance(name, str) or text[pos : pos + 1] != ":":
                raise ValueError("malformed member")
            start = _skip_ws(text, pos + 1)
            value, end = decoder.raw_decode(text, start)
            if name in spans:
                raise ValueError(f"duplicate key {name!r}")
            spans[name] = (start, end, value)
            pos = _skip_ws(text, end)
            if text[pos : pos + 1] == ",":
                pos = _skip_ws(text, pos + 1)
            elif text[pos : pos + 1] != "}":
                raise ValueError("expected ',' or '}'")
        if _skip_ws(text, pos + 1) != len(text):
            raise ValueError("data after the JSON object")
    except (ValueError, IndexError) as exc:
        raise ParseError(field, f"malformed JSON: {exc}") from None
    if key not in spans or "signature" not in spans:
        raise ParseError(field, f"expected members {key!r} and 'signature'")
    start, end, _ = spans[key]
    signature = spans["signature"][2]
    if not isinstance(signature, str):
        raise ParseError(f"{field}.signature", "not a string")
    sig = _hex(signature, f"{field}.signature", 64)
    return text[start:end].encode("utf-8"), sig


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _load_object(signed: bytes, field: str) -> dict[str, Any]:
    try:
        value = json.loads(signed, object_pairs_hook=_no_duplicates)
    except ValueError as exc:
        raise ParseError(field, f"malformed JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ParseError(field, "not a JSON object")
    return value


def _get(obj: Mapping[str, Any], name: str, kind: type | tuple[type, ...], field: str) -> Any:
    if name not in obj:
        raise ParseError(f"{field}.{name}", "missing")
    value = obj[name]
    # bool is an int subclass: a JSON true must not pass for a number.
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _as_tuple(kind)):
        raise ParseError(f"{field}.{name}", f"unexpected JSON type {type(value).__name__}")
    return value


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _int(obj: Mapping[str, Any], name: str, field: str) -> int:
    value = _get(obj, name, int, field)
    if value < 0:
        raise ParseError(f"{field}.{name}", "negative")
    return int(value)


def _hex(value: str, field: str, size: int | None = None) -> bytes:
    try:
        out = bytes.fromhex(value)
    except ValueError:
        raise ParseError(field, "not hex") from None
    if size is not None and len(out) != size:
        raise ParseError(field, f"expected {size} bytes, got {len(out)}")
    return out


def _hex_field(obj: Mapping[str, Any], name: str, field: str, size: int | None = None) -> bytes:
    return _hex(_get(obj, name, str, field), f"{field}.{name}", size)


def _date(obj: Mapping[str, Any], name: str, field: str) -> datetime:
    value = _get(obj, name, str, field)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ParseError(f"{field}.{name}", f"not an ISO 8601 date: {value!r}") from None
    if parsed.tzinfo is None:
        raise ParseError(f"{field}.{name}", "date without a time zone")
    return parsed


def _status(obj: Mapping[str, Any], allowed: frozenset[str], field: str) -> str:
    status = _get(obj, "tcbStatus", str, field)
    if status not in allowed:
        raise ParseError(f"{field}.tcbStatus", f"unknown status {status!r}")
    return str(status)


def _advisories(obj: Mapping[str, Any], field: str) -> tuple[str, ...]:
    if "advisoryIDs" not in obj:
        return ()
    ids = _get(obj, "advisoryIDs", list, field)
    if not all(isinstance(i, str) for i in ids):
        raise ParseError(f"{field}.advisoryIDs", "not a list of strings")
    return tuple(ids)


def _list(obj: Mapping[str, Any], name: str, field: str, item: Callable[[Any, str], Any]) -> tuple[Any, ...]:
    values = _get(obj, name, list, field)
    out = []
    for i, value in enumerate(values):
        if not isinstance(value, dict):
            raise ParseError(f"{field}.{name}[{i}]", "not a JSON object")
        out.append(item(value, f"{field}.{name}[{i}]"))
    return tuple(out)


# -- TCB Info ----------------------------------------------------------------------------------


def _components(tcb: Mapping[str, Any], name: str, field: str) -> tuple[int, ...]:
    items = _get(tcb, name, list, field)
    if len(items) != _COMPONENTS:
        raise ParseError(f"{field}.{name}", f"expected {_COMPONENTS} components, got {len(items)}")
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise ParseError(f"{field}.{name}[{i}]", "not a JSON object")
        out.append(_int(item, "svn", f"{field}.{name}[{i}]"))
    return tuple(out)


def _tcb_level(version: int, is_tdx: bool) -> Callable[[Mapping[str, Any], str], TcbLevel]:
    def parse(level: Mapping[str, Any], field: str) -> TcbLevel:
        tcb = _get(level, "tcb", dict, field)
        tcb_field = f"{field}.tcb"
        if version >= 3:
            sgx = _components(tcb, "sgxtcbcomponents", tcb_field)
        else:
            sgx = tuple(_int(tcb, f"sgxtcbcomp{i:02d}svn", tcb_field) for i in range(1, _COMPONENTS + 1))
        return TcbLevel(
            sgx_components=sgx,
            pce_svn=_int(tcb, "pcesvn", tcb_field),
            tdx_components=_components(tcb, "tdxtcbcomponents", tcb_field) if is_tdx else None,
            tcb_date=_date(level, "tcbDate", field) if "tcbDate" in level else None,
            status=_status(level, TCB_STATUSES, field),
            advisory_ids=_advisories(level, field),
        )

    return parse


def _enclave_tcb_level(level: Mapping[str, Any], field: str) -> EnclaveTcbLevel:
    tcb = _get(level, "tcb", dict, field)
    return EnclaveTcbLevel(
        isv_svn=_int(tcb, "isvsvn", f"{field}.tcb"),
        tcb_date=_date(level, "tcbDate", field) if "tcbDate" in level else None,
        status=_status(level, ENCLAVE_TCB_STATUSES, field),
        advisory_ids=_advisories(level, field),
    )


def _tdx_module(obj: Mapping[str, Any], field: str) -> TdxModule:
    return TdxModule(
        mrsigner=_hex_field(obj, "mrsigner", field, 48),
        attributes=_hex_field(obj, "attributes", field, 8),
        attributes_mask=_hex_field(obj, "attributesMask", field, 8),
    )


def _module_identity(obj: Mapping[str, Any], field: str) -> TdxModuleIdentity:
    return TdxModuleIdentity(
        id=str(_get(obj, "id", str, field)),
        module=_tdx_module(obj, field),
        tcb_levels=_list(obj, "tcbLevels", field, _enclave_tcb_level),
    )


def parse_tcb_info(body: bytes | str) -> TcbInfo:
    """A PCS ``/tcb`` response body (``{"tcbInfo": ..., "signature": ...}``)."""
    field = "tcb_info"
    signed, signature = split_signed_json(body, "tcbInfo", field)
    obj = _load_object(signed, field)
    version = _int(obj, "version", field)
    if version not in (2, 3):
        raise ParseError(f"{field}.version", f"unsupported TCB Info version {version}")
    tcb_id = str(_get(obj, "id", str, field)) if version >= 3 else None
    if tcb_id not in (None, "SGX", "TDX"):
        raise ParseError(f"{field}.id", f"unknown TCB Info id {tcb_id!r}")
    is_tdx = tcb_id == "TDX"
    return TcbInfo(
        id=tcb_id,
        version=version,
        issue_date=_date(obj, "issueDate", field),
        next_update=_date(obj, "nextUpdate", field),
        fmspc=_hex_field(obj, "fmspc", field, 6),
        pce_id=_hex_field(obj, "pceId", field, 2),
        tcb_type=_int(obj, "tcbType", field),
        tcb_evaluation_data_number=_int(obj, "tcbEvaluationDataNumber", field),
        tdx_module=_tdx_module(_get(obj, "tdxModule", dict, field), f"{field}.tdxModule") if is_tdx else None,
        tdx_module_identities=(
            _list(obj, "tdxModuleIdentities", field, _module_identity)
            if is_tdx and "tdxModuleIdentities" in obj
            else ()
        ),
        tcb_levels=_list(obj, "tcbLevels", field, _tcb_level(version, is_tdx)),
        signed_body=signed,
        signature=signature,
    )


# -- QE Identity -------------------------------------------------------------------------------


def parse_qe_identity(body: bytes | str) -> QeIdentity:
    """A PCS ``/qe/identity`` response body (``{"enclaveIdentity": ..., "signature": ...}``)."""
    field = "qe_identity"
    signed, signature = split_signed_json(body, "enclaveIdentity", field)
    obj = _load_object(signed, field)
    version = _int(obj, "version", field)
    if version != 2:
        raise ParseError(f"{field}.version", f"unsupported QE Identity version {version}")
    qe_id = str(_get(obj, "id", str, field))
    if qe_id not in ("QE", "TD_QE", "QVE"):
        raise ParseError(f"{field}.id", f"unknown enclave identity id {qe_id!r}")
    return QeIdentity(
        id=qe_id,
        version=version,
        issue_date=_date(obj, "issueDate", field),
        next_update=_date(obj, "nextUpdate", field),
        tcb_evaluation_data_number=_int(obj, "tcbEvaluationDataNumber", field),
        miscselect=_hex_field(obj, "miscselect", field, 4),
        miscselect_mask=_hex_field(obj, "miscselectMask", field, 4),
        attributes=_hex_field(obj, "attributes", field, 16),
        attributes_mask=_hex_field(obj, "attributesMask", field, 16),
        mrsigner=_hex_field(obj, "mrsigner", field, 32),
        isv_prod_id=_int(obj, "isvprodid", field),
        tcb_levels=_list(obj, "tcbLevels", field, _enclave_tcb_level),
        signed_body=signed,
        signature=signature,
    )


# -- bundle ------------------------------------------------------------------------------------


def load_issuer_chain(pem: bytes | str, field: str) -> tuple[x509.Certificate, ...]:
    """An issuer chain, signer first (whatever order it was served in)."""
    ordered = order_chain(load_certificates(pem, field))
    if ordered is None:
        raise ParseError(field, "the certificates do not form a single chain")
    return ordered


def load_collateral(
    *,
    tcb_info: bytes | str,
    tcb_info_issuer_chain: bytes | str,
    qe_identity: bytes | str,
    qe_identity_issuer_chain: bytes | str | None = None,
    pck_crl: bytes | str | None = None,
    pck_crl_issuer_chain: bytes | str | None = None,
    root_ca_crl: bytes | str | None = None,
) -> Collateral:
    """Parse PCS bodies, issuer chains (PEM, e.g. from ``pcs.issuer_chain_pem``) and CRLs (DER,
    PEM or hex). The QE Identity is signed by the same TCB Signing certificate as the TCB Info,
    so its chain defaults to the TCB Info's."""
    tcb_chain = load_issuer_chain(tcb_info_issuer_chain, "collateral.tcb_info_issuer_chain")
    qe_chain = (
        load_issuer_chain(qe_identity_issuer_chain, "collateral.qe_identity_issuer_chain")
        if qe_identity_issuer_chain is not None
        else tcb_chain
    )
    return Collateral(
        tcb_info=parse_tcb_info(tcb_info),
        tcb_info_issuer_chain=tcb_chain,
        qe_identity=parse_qe_identity(qe_identity),
        qe_identity_issuer_chain=qe_chain,
        pck_crl=load_crl(pck_crl, "collateral.pck_crl") if pck_crl is not None else None,
        pck_crl_issuer_chain=(
            load_issuer_chain(pck_crl_issuer_chain, "collateral.pck_crl_issuer_chain")
            if pck_crl_issuer_chain is not None
            else ()
        ),
        root_ca_crl=load_crl(root_ca_crl, "collateral.root_ca_crl") if root_ca_crl is not None else None,
    )
