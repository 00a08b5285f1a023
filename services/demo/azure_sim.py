"""Simulated Azure confidential VMs (SEV-SNP or TDX with a paravisor vTPM), for the tests and demos.

Real cryptography in the real formats, so the real verification path runs. Both kinds share the
paravisor part: an HCL report (``HCLA`` header, the hardware report, IGVM request data, var-data
JSON holding the ``HCLAkPub`` JWK of a software RSA-2048 attestation key and ``user-data``) and a
TPM2_Quote (TPMS_ATTEST over the 24 SHA-256 PCRs) signed by the AK with RSASSA-PKCS1-v1_5/SHA-256,
the bare signature as Azure's attester ships it. They differ in the hardware layer:

* SNP (``SimulatedAzureCvm``): the HCL holds an SNP report carrying SHA-256(var data) in
  REPORT_DATA[0:32], signed by a simulated chip's VCEK (``services.demo.snp_sim``), and the VCEK
  travels with the evidence;
* TDX (``SimulatedAzureTdxCvm``): the HCL holds the TD's TDREPORT (REPORTMACSTRUCT, TEE_TCB_INFO,
  TDINFO, with a MAC only this simulated CPU could check) and the evidence carries a DCAP TD quote
  of the same TD report from a simulated Intel platform (``services.demo.tdx_sim``), whose
  report_data is SHA-256(var data) followed by 32 zero bytes.

Only the trust anchors differ from Azure: the test AMD ARK or Intel root the service must be told
to trust (and, for TDX, a local PCS serving the simulated Intel's collateral).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from services.demo.snp_sim import SimulatedAmd, SimulatedSnpGuest
from services.demo.tdx_sim import (
    DEFAULT_FMSPC,
    LATEST_TCB,
    PlatformTcb,
    SimulatedIntel,
    SimulatedTdxPlatform,
)
from shared.kbs.binding import runtime_data_digest
from shared.platforms.tpm.abi import TPM_ALG_SHA256, PcrSelection, marshal_attest

__all__ = [
    "HCL_BUFFER_SIZE",
    "SimulatedAzureCvm",
    "SimulatedAzureTdxCvm",
    "az_snp_vtpm_evidence",
    "az_tdx_vtpm_evidence",
]

HCL_BUFFER_SIZE = 2600  # the vTPM NV index holding the report is this size, zero-padded
REPORT_TYPE_SNP = 2
REPORT_TYPE_TDX = 4
_HCL_REQUEST_TYPE = 2  # what the paravisor records for the AK-binding report request
_HW_REPORT_AREA = 0x4A0  # the hardware-report area of the HCL report (an SNP report's size)
_IGVM_SIZE = 20
_VAR_DATA_OFFSET = 0x4D4
# A TPM's qualifiedSigner is the AK's Name; any bytes do here (the verifier does not read it).
_QUALIFIED_SIGNER = b"\x00\x0b" + bytes(32)

# TDREPORT (1024 bytes): REPORTMACSTRUCT at 0, TEE_TCB_INFO at 256, TDINFO at 512.
_TDREPORT_SIZE = 1024
_TDREPORT_TYPE = bytes([0x81, 0, 0, 0])  # TYPE TDX, SUBTYPE 0, VERSION 0, reserved
_TEE_TCB_INFO_SIZE = 239  # what TEE_TCB_INFO_HASH covers (the struct is padded to 256)
# TEE_TCB_INFO.VALID: which of its fields hold a value (TEE_TCB_SVN, MRSEAM, MRSIGNERSEAM,
# ATTRIBUTES and, TDX 1.5, TEE_TCB_SVN2), one bit per 8-byte unit of the structure.
_TEE_TCB_INFO_VALID = bytes.fromhex("ff01030000000000")
# Offsets in the 584-byte TD quote body (TDX 1.0 layout) of the parts a TDREPORT repeats.
_BODY_TEE_TCB = slice(0, 120)  # TEE_TCB_SVN, MRSEAM, MRSIGNERSEAM, SEAM ATTRIBUTES
_BODY_TD_INFO = slice(120, 520)  # ATTRIBUTES, XFAM, MRTD, MRCONFIGID, MROWNER(CONFIG), RTMR0-3
_BODY_REPORT_DATA = slice(520, 584)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _default_pcrs() -> list[bytes]:
    # Like a booted Azure CVM: measured PCRs, unused ones zero, the locality-reset ones all-ones.
    pcrs = [hashlib.sha256(f"simulated boot pcr{i}".encode()).digest() for i in range(16)]
    pcrs += [b"\xff" * 32] * 7 + [bytes(32)]
    return pcrs


def _default_vm_configuration() -> dict[str, Any]:
    return {
        "console-enabled": True,
        "secure-boot": True,
        "tpm-enabled": True,
        "vmUniqueId": "5EB1F2A4-0C7B-4D4F-9E2B-3A1C2D3E4F50",
    }


def _hcl_buffer(version: int, report_type: int, hardware_report: bytes, var_data: bytes) -> bytes:
    """The HCL report as the vTPM NV index holds it: header, hardware report area, IGVM request
    data, var data, zero padding up to ``HCL_BUFFER_SIZE``."""
    if len(hardware_report) > _HW_REPORT_AREA:
        raise ValueError("hardware report does not fit the HCL report's area")
    size = _VAR_DATA_OFFSET + len(var_data)
    header = struct.pack("<4sIIII12s", b"HCLA", version, size, _HCL_REQUEST_TYPE, 0, bytes(12))
    igvm = struct.pack("<IIIII", _IGVM_SIZE + len(var_data), 1, report_type, 1, len(var_data))
    raw = header + hardware_report.ljust(_HW_REPORT_AREA, b"\x00") + igvm + var_data
    return raw.ljust(HCL_BUFFER_SIZE, b"\x00")


class _ParavisorVtpm:
    """What both CVM kinds share: the HCL's var data and the vTPM signing quotes with the AK."""

    ak_key: rsa.RSAPrivateKey
    pcrs: list[bytes]
    vm_configuration: dict[str, Any]
    clock: int

    def ak_jwk(self) -> dict[str, Any]:
        numbers = self.ak_key.public_key().public_numbers()
        n = numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")
        e = numbers.e.to_bytes((numbers.e.bit_length() + 7) // 8, "big")
        return {"kid": "HCLAkPub", "key_ops": ["sign"], "kty": "RSA", "e": _b64url(e), "n": _b64url(n)}

    def var_data(self, user_data: bytes = bytes(64)) -> bytes:
        doc = {
            "keys": [self.ak_jwk()],
            "vm-configuration": self.vm_configuration,
            "user-data": user_data.hex().upper(),
        }
        return json.dumps(doc, separators=(",", ":")).encode()

    def quote(self, extra_data: bytes) -> tuple[bytes, bytes]:
        """(TPMS_ATTEST, bare RSASSA-PKCS1-v1_5/SHA-256 signature) over PCR0-23 of SHA-256."""
        self.clock += 1000
        message = marshal_attest(
            extra_data=extra_data,
            pcr_selections=(PcrSelection(TPM_ALG_SHA256, tuple(range(24))),),
            pcr_digest=hashlib.sha256(b"".join(self.pcrs)).digest(),
            qualified_signer=_QUALIFIED_SIGNER,
            clock=self.clock,
            reset_count=2,
            firmware_version=0x2020_0000_0000_0003,
        )
        signature = self.ak_key.sign(message, padding.PKCS1v15(), hashes.SHA256())
        return message, signature

    def _tpm_quote(self, extra_data: bytes, reported_pcrs: list[bytes] | None) -> dict[str, Any]:
        message, signature = self.quote(extra_data)
        return {
            "signature": signature.hex(),
            "message": message.hex(),
            "pcrs": [p.hex() for p in (reported_pcrs or self.pcrs)],
        }


@dataclass
class SimulatedAzureCvm(_ParavisorVtpm):
    """One Azure SNP CVM: a simulated chip and guest (SNP measurement = the paravisor image), a
    VCEK for it, the vTPM's attestation key and its PCR values."""

    guest: SimulatedSnpGuest
    vcek_der: bytes
    ak_key: rsa.RSAPrivateKey
    pcrs: list[bytes] = field(default_factory=_default_pcrs)
    vm_configuration: dict[str, Any] = field(default_factory=_default_vm_configuration)
    hcl_version: int = 1
    clock: int = 1_000_000

    @classmethod
    def create(cls, amd: SimulatedAmd, measurement: bytes, pcr0: bytes | None = None) -> SimulatedAzureCvm:
        guest = SimulatedSnpGuest.create(measurement, product=amd.product)
        vcek = amd.issue_vcek(guest.chip_id, guest.tcb, guest.vcek_key.public_key())
        cvm = cls(guest, vcek, rsa.generate_private_key(public_exponent=65537, key_size=2048))
        if pcr0 is not None:
            cvm.pcrs[0] = pcr0
        return cvm

    def hcl_report(self, var_data: bytes, bound_to: bytes | None = None) -> bytes:
        """The HCL buffer; its SNP report commits to SHA-256(``bound_to``, default ``var_data``)."""
        report_data = hashlib.sha256(var_data if bound_to is None else bound_to).digest() + bytes(32)
        snp_report = self.guest.make_report(report_data)
        return _hcl_buffer(self.hcl_version, REPORT_TYPE_SNP, snp_report, var_data)

    def evidence(
        self,
        extra_data: bytes,
        *,
        version: int = 1,
        user_data: bytes | None = None,
        bound_to: bytes | None = None,
        reported_pcrs: list[bytes] | None = None,
    ) -> dict[str, Any]:
        """KBS primary evidence in the v1 (or v2) JSON shape. ``reported_pcrs`` replaces the PCR
        values sent along (the quote still covers the real ones); ``bound_to`` makes the SNP
        report commit to other var data than the one sent."""
        if user_data is None:
            user_data = extra_data.ljust(64, b"\x00") if version >= 2 else bytes(64)
        var_data = self.var_data(user_data)
        return {
            "version": version,
            "tpm_quote": self._tpm_quote(extra_data, reported_pcrs),
            "hcl_report": _b64url(self.hcl_report(var_data, bound_to)),
            "vcek": _b64url(self.vcek_der),
        }


def _default_rtmrs() -> list[bytes]:
    # The paravisor's firmware and boot chain extend RTMR0-2; RTMR3 is left to the guest.
    return [hashlib.sha384(f"simulated azure rtmr{i}".encode()).digest() for i in range(3)] + [bytes(48)]


@dataclass
class SimulatedAzureTdxCvm(_ParavisorVtpm):
    """One Azure TDX CVM: a simulated TDX machine (PCK at its TCB, TD quoting enclave), the TD's
    MRTD (the paravisor image) and RTMRs, the vTPM's attestation key and its PCR values.

    ``hcl_report`` builds the TDREPORT the TDX module would hand the paravisor; ``td_quote`` is
    what the quoting enclave makes of that same TD report. ``report_key`` stands for the CPU's
    key MACing the TDREPORT: the verifier cannot check that MAC (nobody outside the CPU can)."""

    machine: SimulatedTdxPlatform
    mr_td: bytes
    ak_key: rsa.RSAPrivateKey
    rtmrs: list[bytes] = field(default_factory=_default_rtmrs)
    pcrs: list[bytes] = field(default_factory=_default_pcrs)
    vm_configuration: dict[str, Any] = field(default_factory=_default_vm_configuration)
    hcl_version: int = 2
    clock: int = 1_000_000
    report_key: bytes = field(default_factory=lambda: os.urandom(32))

    @classmethod
    def create(
        cls,
        intel: SimulatedIntel,
        mr_td: bytes,
        pcr0: bytes | None = None,
        *,
        tcb: PlatformTcb = LATEST_TCB,
        fmspc: bytes = DEFAULT_FMSPC,
        machine: SimulatedTdxPlatform | None = None,
    ) -> SimulatedAzureTdxCvm:
        """A CVM on ``machine`` (default: a new machine of ``intel`` at ``tcb``, whose TCB Info
        from the simulated PCS rates the default ``LATEST_TCB`` UpToDate)."""
        if len(mr_td) != 48:
            raise ValueError("mr_td is 48 bytes")
        machine = machine or SimulatedTdxPlatform.create(intel, fmspc=fmspc, tcb=tcb)
        cvm = cls(machine, mr_td, rsa.generate_private_key(public_exponent=65537, key_size=2048))
        if pcr0 is not None:
            cvm.pcrs[0] = pcr0
        return cvm

    # -- the TDX module and quoting enclave --------------------------------------------------
    def _body(self, report_data: bytes, mr_td: bytes | None = None) -> bytes:
        return self.machine.td_report_body(report_data, mr_td=mr_td or self.mr_td, rtmrs=self.rtmrs)

    def td_report(self, report_data: bytes, *, mr_td: bytes | None = None) -> bytes:
        """The 1024-byte TDREPORT of this TD over ``report_data`` (zero-padded to 64 bytes):
        the same TEE_TCB_SVN, MRSEAM, attributes, XFAM, MRTD, RTMRs... as its TD quote body.
        ``mr_td`` overrides the TD's MRTD (a report of another TD)."""
        body = self._body(report_data, mr_td)
        tcb_svn = self.machine.tcb.tee_tcb_svn
        # TEE_TCB_INFO: VALID, the body's SEAM part, then TDX 1.5's TEE_TCB_SVN2 (no TD-preserving
        # update: the current SVN), reserved.
        tee_tcb_info = (_TEE_TCB_INFO_VALID + body[_BODY_TEE_TCB] + tcb_svn).ljust(256, b"\x00")
        # TDINFO: the body's TD part, SERVTD_HASH (no service TD bound), reserved.
        td_info = (body[_BODY_TD_INFO] + bytes(48)).ljust(512, b"\x00")
        mac_struct = (
            _TDREPORT_TYPE
            + bytes(12)
            + self.machine.tcb.cpu_svn
            + hashlib.sha384(tee_tcb_info[:_TEE_TCB_INFO_SIZE]).digest()
            + hashlib.sha384(td_info).digest()
            + body[_BODY_REPORT_DATA]
            + bytes(32)
        )
        mac = hmac.new(self.report_key, mac_struct, hashlib.sha256).digest()
        report = mac_struct + mac + tee_tcb_info + td_info
        assert len(report) == _TDREPORT_SIZE
        return report

    def td_quote(self, report_data: bytes) -> bytes:
        """A DCAP v4 TD quote of this TD over ``report_data`` (zero-padded to 64 bytes)."""
        return self.machine.make_quote(report_data, mr_td=self.mr_td, rtmrs=self.rtmrs)

    # -- the paravisor ---------------------------------------------------------------------
    def hcl_report(
        self, var_data: bytes, bound_to: bytes | None = None, *, td_report: bytes | None = None
    ) -> bytes:
        """The HCL buffer holding this TD's TDREPORT over SHA-256(``bound_to``, default
        ``var_data``) || zeros; ``td_report`` replaces that TDREPORT."""
        if td_report is None:
            td_report = self.td_report(_report_data(var_data if bound_to is None else bound_to))
        return _hcl_buffer(self.hcl_version, REPORT_TYPE_TDX, td_report, var_data)

    def evidence(
        self,
        extra_data: bytes,
        *,
        version: int = 1,
        user_data: bytes | None = None,
        bound_to: bytes | None = None,
        reported_pcrs: list[bytes] | None = None,
        td_report_mr_td: bytes | None = None,
    ) -> dict[str, Any]:
        """KBS primary evidence in the v1 (or v2) JSON shape: ``{version, tpm_quote, hcl_report,
        td_quote}``. ``bound_to`` makes the TDREPORT and the TD quote commit to other var data
        than the one sent; ``td_report_mr_td`` puts a TDREPORT of a TD with that MRTD in the HCL
        (the quote stays this TD's); ``reported_pcrs`` as for the SNP CVM."""
        if user_data is None:
            user_data = extra_data.ljust(64, b"\x00") if version >= 2 else bytes(64)
        var_data = self.var_data(user_data)
        report_data = _report_data(var_data if bound_to is None else bound_to)
        td_report = self.td_report(report_data, mr_td=td_report_mr_td)
        return {
            "version": version,
            "tpm_quote": self._tpm_quote(extra_data, reported_pcrs),
            "hcl_report": _b64url(self.hcl_report(var_data, td_report=td_report)),
            "td_quote": _b64url(self.td_quote(report_data)),
        }


def _report_data(var_data: bytes) -> bytes:
    """The hardware REPORT_DATA the paravisor asks for: SHA-256(var data), then 32 zero bytes."""
    return hashlib.sha256(var_data).digest() + bytes(32)


def _flip_quote_signature(evidence: dict[str, Any]) -> None:
    signature = bytearray(bytes.fromhex(evidence["tpm_quote"]["signature"]))
    signature[-1] ^= 0x01
    evidence["tpm_quote"]["signature"] = signature.hex()


def _zero_pcr0(pcrs: Sequence[bytes]) -> list[bytes]:
    return [bytes(32), *pcrs[1:]]


def az_snp_vtpm_evidence(
    sim: SimulatedAzureCvm, nonce: str, tee_pubkey: dict[str, Any], *, tamper: str = ""
) -> dict[str, Any]:
    """The evidence a simulated Azure SNP CVM sends for a KBS challenge: the quote's extraData is
    the KBS runtime-data digest (SHA-384 of nonce, tee-pubkey and no additional evidence).

    ``tamper``: "" (honest), "unbound" (the SNP report commits to other var data), "pcr0" (a PCR0
    value that the quote does not cover), "quote_signature" (one bit of the AK signature)."""
    digest = runtime_data_digest(nonce, tee_pubkey)
    if tamper == "unbound":
        return sim.evidence(digest, bound_to=b'{"keys":[]}')
    if tamper == "pcr0":
        return sim.evidence(digest, reported_pcrs=_zero_pcr0(sim.pcrs))
    evidence = sim.evidence(digest)
    if tamper == "quote_signature":
        _flip_quote_signature(evidence)
    elif tamper:
        raise ValueError(f"unknown tamper {tamper!r}")
    return evidence


def az_tdx_vtpm_evidence(
    sim: SimulatedAzureTdxCvm, nonce: str, tee_pubkey: dict[str, Any], *, tamper: str = ""
) -> dict[str, Any]:
    """The evidence a simulated Azure TDX CVM sends for a KBS challenge (v1 shape): the quote's
    extraData is the KBS runtime-data digest, the TD quote's report_data SHA-256(var data).

    ``tamper``: "" (honest), "unbound" (TDREPORT and TD quote commit to other var data),
    "td_report" (the HCL's TDREPORT is of another TD than the quote's: another MRTD), "pcr0" (a
    PCR0 value that the quote does not cover), "quote_signature" (one bit of the AK signature)."""
    digest = runtime_data_digest(nonce, tee_pubkey)
    if tamper == "unbound":
        return sim.evidence(digest, bound_to=b'{"keys":[]}')
    if tamper == "td_report":
        other = hashlib.sha384(b"another TD:" + sim.mr_td).digest()
        return sim.evidence(digest, td_report_mr_td=other)
    if tamper == "pcr0":
        return sim.evidence(digest, reported_pcrs=_zero_pcr0(sim.pcrs))
    evidence = sim.evidence(digest)
    if tamper == "quote_signature":
        _flip_quote_signature(evidence)
    elif tamper:
        raise ValueError(f"unknown tamper {tamper!r}")
    return evidence
