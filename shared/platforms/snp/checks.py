"""Stable names of every SNP verification check (``VerificationError.check``).

Where ``shared/vectors/snp/negative/expected.json`` defines a check, the name here is that name with
an ``snp.`` prefix, so vectors, audit logs and metrics speak the same language. Two vector checks are
parse failures rather than verification failures and surface as ``ParseError`` reasons instead:
``report_version`` -> ``parse.report.version`` and ``vek_parses`` -> ``parse.vek``.
"""

from __future__ import annotations

ARK_SELF_SIGNED = "snp.ark_self_signed"
ARK_NOT_PINNED = "snp.ark_not_pinned"
ASK_SIGNED_BY_ARK = "snp.ask_signed_by_ark"  # also the ASVK for VLEKs
VEK_SIGNED_BY_ASK = "snp.vek_signed_by_ask"  # ASVK for VLEKs
CERT_VALIDITY = "snp.cert_validity"  # ARK, ASK/ASVK or VEK outside its validity at ``now``
CA_CONSTRAINTS = "snp.ca_constraints"  # ARK/ASK not a CA, or a VEK that claims to be one
KEY_TYPE = "snp.key_type"  # ARK/ASK not RSA-4096, VEK not EC P-384
VEK_KIND = "snp.vek_kind"  # subject is neither SEV-VCEK nor SEV-VLEK
PRODUCT_UNKNOWN = "snp.product_unknown"  # no roots for the product the evidence names
PRODUCT_MISMATCH = "snp.product_mismatch"  # report CPUID, VEK issuer and roots disagree
CRL_SIGNATURE = "snp.crl_signature"  # CRL not issued/signed by the ARK
CRL_VALIDITY = "snp.crl_validity"  # CRL not current at ``now``
REVOKED = "snp.revoked"
SIGNING_KEY_MISMATCH = "snp.signing_key_mismatch"  # SIGNER_INFO vs VCEK/VLEK certificate
TCB_BINDING = "snp.tcb_binding"
CHIP_ID_BINDING = "snp.chip_id_binding"
REPORT_SIGNATURE = "snp.report_signature"

ALL = (
    ARK_SELF_SIGNED,
    ARK_NOT_PINNED,
    ASK_SIGNED_BY_ARK,
    VEK_SIGNED_BY_ASK,
    CERT_VALIDITY,
    CA_CONSTRAINTS,
    KEY_TYPE,
    VEK_KIND,
    PRODUCT_UNKNOWN,
    PRODUCT_MISMATCH,
    CRL_SIGNATURE,
    CRL_VALIDITY,
    REVOKED,
    SIGNING_KEY_MISMATCH,
    TCB_BINDING,
    CHIP_ID_BINDING,
    REPORT_SIGNATURE,
)
