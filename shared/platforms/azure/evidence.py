"""KBS evidence of ``az-snp-vtpm`` / ``az-tdx-vtpm`` -> ``AzureEvidence``, and its bindings.

Shapes (the JSON the attester sends as primary evidence):

* v0 (no ``version``): byte strings as JSON int lists. SNP: ``{quote{signature, message, pcrs},
  report, vcek (PEM)}``; TDX: ``{tpm_quote{...}, hcl_report, td_quote}``.
* v1 (``version: 1``): ``tpm_quote{signature hex, message hex, pcrs [hex]}``, ``hcl_report``
  base64url, then ``vcek`` base64url DER (SNP) or ``td_quote`` base64url (TDX).
* v2 (``version: 2``): v1 plus a rule: the var data's ``user-data`` must start with the expected
  nonce (the KBS report data), so the nonce reaches the hardware report too, not only the quote.

TPM quote signatures: in every vector, of every version, ``signature`` is the bare 256-byte
RSASSA-PKCS1-v1_5/SHA-256 signature, not a marshalled TPMT_SIGNATURE. Both forms are accepted;
``quote_signature`` keeps what was sent, ``quote_signature_is_raw`` says which form it is, and
``rsa_signature`` / ``tpmt_signature`` give either form.

What this module does not do: verify the TPM quote under the AK and its nonce/PCR digest (TPM
core), the SNP report signature and VCEK chain (SNP core), the TD quote signature and collateral
(TDX core). It checks the bindings between the pieces: hardware report -> var data -> AK.
"""

from __future__ import annotations

import base64
import re
import struct
import warnings
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.utils import CryptographyDeprecationWarning

from shared.errors import ParseError, VerificationError
from shared.platforms.azure.hcl import (
    PREFIX,
    REPORT_TYPE_SNP,
    REPORT_TYPE_TDX,
    TDREPORT_SIZE,
    HclReport,
    VarData,
    check_binding,
    parse_hcl_report,
    parse_var_data,
    strict_json,
)
from shared.platforms.snp.abi import SnpReport, parse_report
from shared.platforms.snp.certs import product_of_issuer
from shared.platforms.snp.fields import Product
from shared.platforms.tdx.abi import Quote, TdReport, parse_quote

__all__ = [
    "TEE_SNP",
    "TEE_TDX",
    "AzureEvidence",
    "ak_public_key",
    "check_evidence_bindings",
    "check_report_type",
    "check_td_report_binding",
    "check_user_data",
    "hardware_report_data",
    "hcl_snp_report",
    "parse_azure_evidence",
    "parse_td_quote",
]

TEE_SNP = "az-snp-vtpm"
TEE_TDX = "az-tdx-vtpm"
_REPORT_TYPE_OF_TEE = {TEE_SNP: REPORT_TYPE_SNP, TEE_TDX: REPORT_TYPE_TDX}

PCR_COUNT = 24
PCR_SIZE = 32  # SHA-256 bank

TPM_ALG_RSASSA = 0x0014
TPM_ALG_RSAPSS = 0x0016
TPM_ALG_SHA256 = 0x000B

_B64URL = re.compile(r"[A-Za-z0-9_-]*={0,2}")
_HEX = re.compile(r"(?:[0-9a-fA-F]{2})*")
_U16 = struct.Struct(">H")


def _error(field: str, detail: str) -> ParseError:
    return ParseError(field, detail, prefix=PREFIX)


@dataclass(frozen=True, slots=True)
class AzureEvidence:
    tee: str
    version: int
    quote_message: bytes  # TPMS_ATTEST, as signed
    quote_signature: bytes  # as sent: bare RSA signature or marshalled TPMT_SIGNATURE
    quote_signature_is_raw: bool
    pcrs: tuple[bytes, ...]  # 24 SHA-256 PCR values, PCR0 first
    hcl: HclReport
    var_data: VarData
    vcek_der: bytes | None  # SNP only
    td_quote: bytes | None  # TDX only

    @property
    def pcr_banks(self) -> dict[str, dict[int, bytes]]:
        """The PCR values keyed by bank name and index, the shape the TPM core takes."""
        return {"sha256": dict(enumerate(self.pcrs))}

    @property
    def rsa_signature(self) -> bytes:
        """The bare RSA signature bytes, whatever form was sent."""
        return self.quote_signature if self.quote_signature_is_raw else self.quote_signature[6:]

    @property
    def tpmt_signature(self) -> bytes:
        """A marshalled TPMT_SIGNATURE. A bare signature is wrapped as RSASSA/SHA-256: the only
        scheme an Azure HCLAkPub signs with, and the one every bare vector signature verifies as."""
        if not self.quote_signature_is_raw:
            return self.quote_signature
        sig = self.quote_signature
        return struct.pack(">HHH", TPM_ALG_RSASSA, TPM_ALG_SHA256, len(sig)) + sig


# --- JSON field decoders ------------------------------------------------------------------------


def _member(doc: dict[str, Any], name: str, field: str) -> Any:
    if name not in doc:
        raise _error(field, "missing")
    return doc[name]


def _only(doc: dict[str, Any], allowed: frozenset[str], where: str) -> None:
    extra = sorted(set(doc) - allowed)
    if extra:
        raise _error(f"{where}.{extra[0]}" if where else extra[0], "unexpected member")


def _object(value: Any, field: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _error(field, f"expected an object, got {type(value).__name__}")
    return value


def _int_list(value: Any, field: str) -> bytes:
    if not isinstance(value, list):
        raise _error(field, f"expected a list of bytes, got {type(value).__name__}")
    # bool is an int subclass: true/false in a byte list is a malformed document, not 1/0.
    if not all(type(b) is int and 0 <= b <= 255 for b in value):
        raise _error(field, "expected integers 0..255")
    return bytes(value)


def _hex(value: Any, field: str) -> bytes:
    if not isinstance(value, str) or not _HEX.fullmatch(value):
        raise _error(field, "expected an even-length hex string")
    return bytes.fromhex(value)


def _b64url(value: Any, field: str) -> bytes:
    # Padding is optional (the v1/v2 vectors carry it); the alphabet is strictly base64url.
    if not isinstance(value, str) or not _B64URL.fullmatch(value):
        raise _error(field, "expected base64url")
    body = value.rstrip("=")
    if len(body) % 4 == 1 or (len(value) != len(body) and len(value) % 4 != 0):
        raise _error(field, "bad base64url length or padding")
    try:
        return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except ValueError as exc:
        raise _error(field, f"bad base64url: {exc}") from None


def _certificate(blob: bytes, pem: bool, field: str) -> x509.Certificate:
    # Real VCEKs have serial number 0, which cryptography loads with a deprecation warning that
    # carries no information here (see shared.platforms.snp.certs.load_certificate).
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CryptographyDeprecationWarning)
            if pem:
                return x509.load_pem_x509_certificate(blob)
            return x509.load_der_x509_certificate(blob)
    except ValueError as exc:
        raise _error(field, f"unreadable certificate: {exc}") from None


def _signature_is_raw(sig: bytes) -> bool:
    """A TPMT_SIGNATURE for an RSA scheme is alg u16, hash u16, size u16, then exactly ``size``
    bytes; anything else is taken as a bare signature (length is checked against the AK later)."""
    if len(sig) < 6:
        return True
    alg, hash_alg, size = struct.unpack_from(">HHH", sig, 0)
    return not (
        alg in (TPM_ALG_RSASSA, TPM_ALG_RSAPSS) and hash_alg == TPM_ALG_SHA256 and size == len(sig) - 6
    )


# --- parsing ------------------------------------------------------------------------------------

_QUOTE_MEMBERS = frozenset({"signature", "message", "pcrs"})


def _tpm_quote(value: Any, field: str, legacy: bool) -> tuple[bytes, bytes, tuple[bytes, ...]]:
    quote = _object(value, field)
    _only(quote, _QUOTE_MEMBERS, field)
    decode = _int_list if legacy else _hex
    signature = decode(_member(quote, "signature", f"{field}.signature"), f"{field}.signature")
    message = decode(_member(quote, "message", f"{field}.message"), f"{field}.message")
    if not signature:
        raise _error(f"{field}.signature", "empty")
    if not message:
        raise _error(f"{field}.message", "empty")
    pcr_list = _member(quote, "pcrs", f"{field}.pcrs")
    if not isinstance(pcr_list, list) or len(pcr_list) != PCR_COUNT:
        raise _error(f"{field}.pcrs", f"expected a list of {PCR_COUNT} PCR values")
    pcrs = tuple(decode(p, f"{field}.pcrs.{i}") for i, p in enumerate(pcr_list))
    for i, pcr in enumerate(pcrs):
        if len(pcr) != PCR_SIZE:
            raise _error(f"{field}.pcrs.{i}", f"expected {PCR_SIZE} bytes, got {len(pcr)}")
    return signature, message, pcrs


def _version(doc: dict[str, Any]) -> int:
    if "version" not in doc:
        return 0
    version = doc["version"]
    if type(version) is not int or version not in (1, 2):
        raise _error("evidence.version", f"unsupported evidence version {version!r}")
    return version


def parse_azure_evidence(tee: str, data: bytes) -> AzureEvidence:
    """Parse one evidence document. ``ParseError`` names the malformed field.

    One ``VerificationError`` can come out too: ``azure.report_type``, when the HCL report holds
    the other TEE's hardware report. That is checked as soon as the HCL is parsed, because the
    rest of the shape (VCEK or TD quote) depends on it; a v0 TDX document read as SNP does not get
    that far (v0 names its members differently per TEE) and fails as a ParseError.
    """
    if tee not in _REPORT_TYPE_OF_TEE:
        raise _error("evidence.tee", f"not an Azure vTPM TEE: {tee!r}")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise _error("evidence.type", f"expected bytes, got {type(data).__name__}")
    doc = _object(strict_json(bytes(data), "evidence"), "evidence")
    version = _version(doc)
    legacy = version == 0
    snp = tee == TEE_SNP
    quote_key, hcl_key = ("quote", "report") if legacy and snp else ("tpm_quote", "hcl_report")
    hw_key = "vcek" if snp else "td_quote"

    signature, message, pcrs = _tpm_quote(
        _member(doc, quote_key, f"evidence.{quote_key}"), f"evidence.{quote_key}", legacy
    )
    hcl_value = _member(doc, hcl_key, f"evidence.{hcl_key}")
    hcl_bytes = (
        _int_list(hcl_value, f"evidence.{hcl_key}") if legacy else _b64url(hcl_value, f"evidence.{hcl_key}")
    )
    hcl = parse_hcl_report(hcl_bytes)
    check_report_type(tee, hcl)
    var_data = parse_var_data(hcl.variable_data)

    allowed = {quote_key, hcl_key, hw_key} | ({"version"} if not legacy else set())
    _only(doc, frozenset(allowed), "evidence")
    hw_value = _member(doc, hw_key, f"evidence.{hw_key}")
    vcek_der: bytes | None = None
    td_quote: bytes | None = None
    if snp:
        if legacy:
            if not isinstance(hw_value, str):
                raise _error("evidence.vcek", "expected a PEM string")
            # A PEM bundle may carry the chain after the VCEK; the VCEK comes first.
            cert = _certificate(hw_value.encode("utf-8", "surrogatepass"), True, "evidence.vcek")
        else:
            cert = _certificate(_b64url(hw_value, "evidence.vcek"), False, "evidence.vcek")
        vcek_der = cert.public_bytes(Encoding.DER)
    else:
        td_quote = (
            _int_list(hw_value, "evidence.td_quote") if legacy else _b64url(hw_value, "evidence.td_quote")
        )
        if not td_quote:
            raise _error("evidence.td_quote", "empty")

    return AzureEvidence(
        tee=tee,
        version=version,
        quote_message=message,
        quote_signature=signature,
        quote_signature_is_raw=_signature_is_raw(signature),
        pcrs=pcrs,
        hcl=hcl,
        var_data=var_data,
        vcek_der=vcek_der,
        td_quote=td_quote,
    )


# --- bindings -----------------------------------------------------------------------------------


def check_report_type(tee: str, hcl: HclReport) -> None:
    expected = _REPORT_TYPE_OF_TEE.get(tee)
    if expected is None or hcl.report_type != expected:
        raise VerificationError(
            "azure.report_type", f"HCL report type {hcl.report_type} does not match TEE {tee!r}"
        )


def hcl_snp_report(hcl: HclReport, product: Product | None = None) -> SnpReport:
    """The SNP report inside an HCL report, parsed by the SNP core (``parse.report.*`` errors).
    ``product`` is only needed for v2 SNP reports, which carry no CPUID."""
    if hcl.report_type != REPORT_TYPE_SNP:
        raise VerificationError("azure.report_type", f"HCL report type {hcl.report_type} is not SNP")
    return parse_report(hcl.hardware_report, product)


def parse_td_quote(data: bytes) -> Quote:
    quote = parse_quote(data)
    if not quote.is_tdx:
        raise _error("evidence.td_quote", "an SGX quote, not a TD quote")
    return quote


def _snp_product(ev: AzureEvidence, product: Product | None) -> Product | None:
    if product is not None or ev.vcek_der is None:
        return product
    # Only a hint for v2 reports; the VCEK chain check (SNP core) is what makes it true.
    return product_of_issuer(_certificate(ev.vcek_der, False, "evidence.vcek"))


def hardware_report_data(ev: AzureEvidence, product: Product | None = None) -> bytes:
    """REPORT_DATA (64 bytes) of the signed hardware report: the SNP report inside the HCL, or the
    TD quote (not the TDREPORT in the HCL, which no one outside the CPU can authenticate)."""
    check_report_type(ev.tee, ev.hcl)
    if ev.tee == TEE_SNP:
        return hcl_snp_report(ev.hcl, _snp_product(ev, product)).report_data
    if ev.td_quote is None:
        raise _error("evidence.td_quote", "missing")
    return parse_td_quote(ev.td_quote).td_report.report_data


# TDREPORT offsets (REPORTMACSTRUCT at 0, TEE_TCB_INFO at 256, TDINFO at 512) of the fields a TD
# quote body copies. The TDREPORT's MAC can only be checked by the CPU, so this comparison adds no
# authenticity: it shows the HCL report was produced for the same TD as the quote. What is bound
# cryptographically is only the quote body (QE signature) and, through its report_data, the var
# data. The TDX 1.5 extras (TEE_TCB_SVN2, SERVTD_HASH) are not compared.
_TDREPORT_FIELDS: tuple[tuple[str, int, int], ...] = (
    ("report_data", 128, 64),
    ("tee_tcb_svn", 264, 16),
    ("mr_seam", 280, 48),
    ("mr_signer_seam", 328, 48),
    ("seam_attributes", 376, 8),
    ("td_attributes", 512, 8),
    ("xfam", 520, 8),
    ("mr_td", 528, 48),
    ("mr_config_id", 576, 48),
    ("mr_owner", 624, 48),
    ("mr_owner_config", 672, 48),
    ("rtmr0", 720, 48),
    ("rtmr1", 768, 48),
    ("rtmr2", 816, 48),
    ("rtmr3", 864, 48),
)


def _quote_field(body: TdReport, name: str) -> bytes:
    if name.startswith("rtmr"):
        return body.rtmrs[int(name[4:])]
    return bytes(getattr(body, name))


def check_td_report_binding(hcl: HclReport, quote: Quote) -> None:
    """The TDREPORT in the HCL report carries the same values as the TD quote body."""
    check_report_type(TEE_TDX, hcl)
    tdreport = hcl.hardware_report
    if len(tdreport) != TDREPORT_SIZE or not quote.is_tdx:
        raise VerificationError("azure.td_report_binding", "not a TDREPORT / TD quote pair")
    body = quote.td_report
    for name, offset, size in _TDREPORT_FIELDS:
        if tdreport[offset : offset + size] != _quote_field(body, name):
            raise VerificationError(
                "azure.td_report_binding", f"{name} differs between TDREPORT and TD quote"
            )


def ak_public_key(var_data: VarData) -> rsa.RSAPublicKey:
    """HCLAkPub as an RSA public key (JWK ``n``/``e``, base64url without padding)."""
    jwk = var_data.ak_jwk
    if jwk is None:
        raise VerificationError("azure.ak_missing", "no HCLAkPub key in the var data")
    if jwk.get("kty") != "RSA":
        raise _error("var_data.keys.HCLAkPub.kty", f"expected RSA, got {jwk.get('kty')!r}")
    numbers: list[int] = []
    for name in ("n", "e"):
        value = jwk.get(name)
        if not isinstance(value, str) or "=" in value:
            raise _error(f"var_data.keys.HCLAkPub.{name}", "expected unpadded base64url")
        raw = _b64url(value, f"var_data.keys.HCLAkPub.{name}")
        if not raw:
            raise _error(f"var_data.keys.HCLAkPub.{name}", "empty")
        numbers.append(int.from_bytes(raw, "big"))
    n, e = numbers
    try:
        return rsa.RSAPublicNumbers(e, n).public_key()
    except ValueError as exc:
        raise _error("var_data.keys.HCLAkPub", f"not a valid RSA key: {exc}") from None


def check_user_data(var_data: VarData, expected_nonce: bytes | None) -> None:
    """v2 rule: the var data's user-data starts with the expected nonce. Without an expected
    nonce the rule cannot hold, so it fails rather than being skipped."""
    if not expected_nonce:
        raise VerificationError("azure.user_data_mismatch", "v2 evidence needs a non-empty expected nonce")
    user_data = var_data.user_data
    if user_data is None:
        raise VerificationError("azure.user_data_mismatch", "var data has no user-data")
    if not user_data.startswith(bytes(expected_nonce)):
        raise VerificationError(
            "azure.user_data_mismatch", "user-data does not start with the expected nonce"
        )


def check_evidence_bindings(
    ev: AzureEvidence, expected_nonce: bytes | None, product: Product | None = None
) -> None:
    """Hardware report -> var data -> AK, plus the v2 user-data rule. The TPM quote (signature
    under the AK, extraData == nonce, PCR digest) is the TPM core's to verify."""
    check_report_type(ev.tee, ev.hcl)
    if ev.tee == TEE_TDX:
        if ev.td_quote is None:
            raise _error("evidence.td_quote", "missing")
        quote = parse_td_quote(ev.td_quote)
        check_td_report_binding(ev.hcl, quote)
        check_binding(ev.hcl, quote.td_report.report_data)
    else:
        check_binding(ev.hcl, hardware_report_data(ev, product))
    ak_public_key(ev.var_data)
    if ev.version >= 2:
        check_user_data(ev.var_data, expected_nonce)
