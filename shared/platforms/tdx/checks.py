"""Stable names of every TDX/SGX DCAP verification check (``VerificationError.check``).

Where ``shared/vectors/tdx`` names a check (``negative/expected.json`` ``check_names`` and the
``steps``/``collateral_checks`` of each quote's ``expected.json``), the name here is that name with a
``tdx.`` prefix, so vectors, audit logs and metrics speak the same language. Two vector names are
not verification checks: ``parse`` surfaces as a ``ParseError`` (``parse.quote.*``) and
``tcb_info_signature_by_its_own_chain`` is ``TCB_INFO_SIGNATURE`` (the signature is always checked
under the TCB Signing certificate shipped with the collateral; that certificate's link to the
pinned root is ``TCB_SIGNING_CERT_SIGNED_BY_PINNED_ROOT``). SGX quotes use the same names.

Listed in the order ``verify_quote`` reports the first failure.
"""

from __future__ import annotations

QE_VENDOR_IS_INTEL = "tdx.qe_vendor_is_intel"
PCK_CHAIN_PARSES = "tdx.pck_chain_parses"  # leaf, intermediate, root from the quote (or the caller)
ROOT_IS_PINNED_INTEL_ROOT = "tdx.root_is_pinned_intel_root"  # whole certificate, byte for byte
ROOT_SELF_SIGNED = "tdx.root_self_signed"
INTERMEDIATE_SIGNED_BY_PINNED_ROOT = "tdx.intermediate_signed_by_pinned_root"
INTERMEDIATE_SIGNED_BY_ROOT = "tdx.intermediate_signed_by_root"  # the chain's own root
PCK_LEAF_SIGNED_BY_INTERMEDIATE = "tdx.pck_leaf_signed_by_intermediate"
PCK_CHAIN_PROFILE = "tdx.pck_chain_profile"  # CA flags, P-256 keys, PCK CN, a readable SGX extension
PCK_CHAIN_VALID_AT_TIME = "tdx.pck_chain_valid_at_time"
ROOT_CRL_SIGNATURE = "tdx.root_crl_signature"
INTERMEDIATE_NOT_REVOKED = "tdx.intermediate_not_revoked"
PCK_CRL_SIGNATURE = "tdx.pck_crl_signature"  # also: the CRL is the one of the PCK's issuing CA
PCK_NOT_REVOKED = "tdx.pck_not_revoked"
TCB_SIGNING_CERT_SIGNED_BY_PINNED_ROOT = "tdx.tcb_signing_cert_signed_by_pinned_root"
TCB_SIGNING_CERT_SIGNED_BY_ROOT = "tdx.tcb_signing_cert_signed_by_root"  # the chain's own root
TCB_SIGNING_CERT_NOT_REVOKED = "tdx.tcb_signing_cert_not_revoked"
TCB_SIGNING_CERT_VALID_AT_TIME = "tdx.tcb_signing_cert_valid_at_time"
TCB_INFO_SIGNATURE = "tdx.tcb_info_signature"
QE_IDENTITY_SIGNATURE = "tdx.qe_identity_signature"
TCB_INFO_ID_MATCHES_TEE = "tdx.tcb_info_id_matches_tee"
FMSPC_MATCHES = "tdx.fmspc_matches"
PCEID_MATCHES = "tdx.pceid_matches"
MODULE_MRSIGNER_MATCHES = "tdx.module_mrsigner_matches"  # incl. a TDX_%02X identity existing
SEAM_ATTRIBUTES_ZERO = "tdx.seam_attributes_zero"
QE_REPORT_SIGNATURE = "tdx.qe_report_signature"
QE_REPORT_DATA_BINDING = "tdx.qe_report_data_binding"
QE_IDENTITY_MATCHES = "tdx.qe_identity_matches"  # id, MRSIGNER, ISVPRODID, masked MISCSELECT/ATTRIBUTES
QUOTE_SIGNATURE = "tdx.quote_signature"
COLLATERAL_FRESH_AT_TIME = "tdx.collateral_fresh_at_time"  # TCB Info, QE Identity, CRL windows

# Not part of quote verification: checking a CCEL event log against the quote's RTMRs.
RTMR_REPLAY = "tdx.rtmr_replay"

ORDER = (
    QE_VENDOR_IS_INTEL,
    PCK_CHAIN_PARSES,
    ROOT_IS_PINNED_INTEL_ROOT,
    ROOT_SELF_SIGNED,
    INTERMEDIATE_SIGNED_BY_PINNED_ROOT,
    INTERMEDIATE_SIGNED_BY_ROOT,
    PCK_LEAF_SIGNED_BY_INTERMEDIATE,
    PCK_CHAIN_PROFILE,
    PCK_CHAIN_VALID_AT_TIME,
    ROOT_CRL_SIGNATURE,
    INTERMEDIATE_NOT_REVOKED,
    PCK_CRL_SIGNATURE,
    PCK_NOT_REVOKED,
    TCB_SIGNING_CERT_SIGNED_BY_PINNED_ROOT,
    TCB_SIGNING_CERT_SIGNED_BY_ROOT,
    TCB_SIGNING_CERT_NOT_REVOKED,
    TCB_SIGNING_CERT_VALID_AT_TIME,
    TCB_INFO_SIGNATURE,
    QE_IDENTITY_SIGNATURE,
    TCB_INFO_ID_MATCHES_TEE,
    FMSPC_MATCHES,
    PCEID_MATCHES,
    MODULE_MRSIGNER_MATCHES,
    SEAM_ATTRIBUTES_ZERO,
    QE_REPORT_SIGNATURE,
    QE_REPORT_DATA_BINDING,
    QE_IDENTITY_MATCHES,
    QUOTE_SIGNATURE,
    COLLATERAL_FRESH_AT_TIME,
)

ALL = (*ORDER, RTMR_REPLAY)
