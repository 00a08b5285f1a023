"""Intel PCS (v4 API) and PCCS endpoints, and the response headers that carry issuer chains.

A PCCS serves the same paths as Intel's PCS, so one configurable base URL covers both. The one
exception is the Root CA CRL: Intel publishes it on a separate host, while a PCCS serves it at
``/sgx/certification/v4/rootcacrl``. FMSPCs appear in lowercase hex only, so caches keyed by URL
never hold one document twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from typing import TypeVar
from urllib.parse import unquote, urlencode

from shared.errors import ParseError
from shared.platforms.tdx.certs import load_certificates, to_pem

DEFAULT_BASE_URL = "https://api.trustedservices.intel.com"
INTEL_ROOT_CA_CRL_URL = "https://certificates.trustedservices.intel.com/IntelSGXRootCA.der"

TCB_INFO_ISSUER_CHAIN = "TCB-Info-Issuer-Chain"
# PCS v3 named the TCB Info header with an SGX- prefix; accepted so older PCCS deployments work.
TCB_INFO_ISSUER_CHAIN_V3 = "SGX-TCB-Info-Issuer-Chain"
ENCLAVE_IDENTITY_ISSUER_CHAIN = "SGX-Enclave-Identity-Issuer-Chain"
PCK_CRL_ISSUER_CHAIN = "SGX-PCK-CRL-Issuer-Chain"

_FMSPC_SIZE = 6


class Tee(str, Enum):
    SGX = "sgx"
    TDX = "tdx"


class PckCa(str, Enum):
    PROCESSOR = "processor"
    PLATFORM = "platform"


class UpdateType(str, Enum):
    EARLY = "early"
    STANDARD = "standard"


_E = TypeVar("_E", bound=Enum)


def _enum(cls: type[_E], value: _E | str, field: str) -> _E:
    try:
        return cls(value)
    except ValueError:
        raise ParseError(f"pcs.{field}", f"unknown {field} {value!r}") from None


def _base(base_url: str) -> str:
    return base_url.rstrip("/")


def _fmspc_hex(fmspc: bytes | str) -> str:
    if isinstance(fmspc, str):
        try:
            fmspc = bytes.fromhex(fmspc)
        except ValueError:
            raise ParseError("pcs.fmspc", "not hex") from None
    if not isinstance(fmspc, bytes) or len(fmspc) != _FMSPC_SIZE:
        raise ParseError("pcs.fmspc", f"FMSPC must be {_FMSPC_SIZE} bytes")
    return fmspc.hex()


def _query(params: dict[str, str | int | None]) -> str:
    present = {k: str(v) for k, v in params.items() if v is not None}
    return f"?{urlencode(present)}" if present else ""


def _evaluation_params(
    update: UpdateType | str | None, tcb_evaluation_data_number: int | None
) -> dict[str, str | int | None]:
    # PCS accepts one or the other, not both.
    if update is not None and tcb_evaluation_data_number is not None:
        raise ParseError("pcs.query", "update and tcbEvaluationDataNumber are mutually exclusive")
    return {
        "update": _enum(UpdateType, update, "update").value if update is not None else None,
        "tcbEvaluationDataNumber": tcb_evaluation_data_number,
    }


def tcb_info_url(
    fmspc: bytes | str,
    tee: Tee | str,
    *,
    base_url: str = DEFAULT_BASE_URL,
    update: UpdateType | str | None = None,
    tcb_evaluation_data_number: int | None = None,
) -> str:
    """``GET {base}/{sgx|tdx}/certification/v4/tcb?fmspc=...`` (header ``TCB-Info-Issuer-Chain``)."""
    params: dict[str, str | int | None] = {"fmspc": _fmspc_hex(fmspc)}
    params.update(_evaluation_params(update, tcb_evaluation_data_number))
    tee_path = _enum(Tee, tee, "tee").value
    return f"{_base(base_url)}/{tee_path}/certification/v4/tcb{_query(params)}"


def qe_identity_url(
    tee: Tee | str,
    *,
    base_url: str = DEFAULT_BASE_URL,
    update: UpdateType | str | None = None,
    tcb_evaluation_data_number: int | None = None,
) -> str:
    """The TD QE (tdx) or SGX QE (sgx) identity (header ``SGX-Enclave-Identity-Issuer-Chain``)."""
    query = _query(_evaluation_params(update, tcb_evaluation_data_number))
    tee_path = _enum(Tee, tee, "tee").value
    return f"{_base(base_url)}/{tee_path}/certification/v4/qe/identity{query}"


def pck_crl_url(ca: PckCa | str, *, base_url: str = DEFAULT_BASE_URL) -> str:
    """The DER PCK CRL of the Platform or Processor CA (header ``SGX-PCK-CRL-Issuer-Chain``)."""
    query = _query({"ca": _enum(PckCa, ca, "ca").value, "encoding": "der"})
    return f"{_base(base_url)}/sgx/certification/v4/pckcrl{query}"


def root_ca_crl_url(*, base_url: str | None = None) -> str:
    """Intel's published Root CA CRL, or a PCCS's copy when ``base_url`` names a PCCS."""
    if base_url is None:
        return INTEL_ROOT_CA_CRL_URL
    return f"{_base(base_url)}/sgx/certification/v4/rootcacrl"


def pck_ca_of_issuer(issuer_common_name: str) -> PckCa:
    """Which PCK CRL applies to a PCK certificate, from its issuer's CN."""
    if issuer_common_name == "Intel SGX PCK Platform CA":
        return PckCa.PLATFORM
    if issuer_common_name == "Intel SGX PCK Processor CA":
        return PckCa.PROCESSOR
    raise ParseError("pcs.pck_issuer", f"not a PCK CA: {issuer_common_name!r}")


def issuer_chain_pem(header_value: str) -> bytes:
    """The PEM chain in a percent-encoded issuer-chain header value, normalised and checked to
    hold at least one certificate (ordering and trust are ``verify``'s business)."""
    if not isinstance(header_value, str):
        raise ParseError("pcs.issuer_chain", f"expected str, got {type(header_value).__name__}")
    return to_pem(load_certificates(unquote(header_value), "pcs.issuer_chain"))


def issuer_chain_from_headers(headers: Mapping[str, str], *names: str) -> bytes:
    """The first of ``names`` present in ``headers`` (case-insensitive), decoded to PEM."""
    lowered = {k.lower(): v for k, v in headers.items()}
    for name in names:
        value = lowered.get(name.lower())
        if value is not None:
            return issuer_chain_pem(value)
    raise ParseError("pcs.issuer_chain", f"none of the headers {', '.join(names)} is present")


def tcb_info_issuer_chain(headers: Mapping[str, str]) -> bytes:
    return issuer_chain_from_headers(headers, TCB_INFO_ISSUER_CHAIN, TCB_INFO_ISSUER_CHAIN_V3)


def qe_identity_issuer_chain(headers: Mapping[str, str]) -> bytes:
    return issuer_chain_from_headers(headers, ENCLAVE_IDENTITY_ISSUER_CHAIN)


def pck_crl_issuer_chain(headers: Mapping[str, str]) -> bytes:
    return issuer_chain_from_headers(headers, PCK_CRL_ISSUER_CHAIN)
