"""Intel TDX and SGX DCAP: the pure core of quote verification (no network, cache or clock).

* ``abi`` -- quote bytes -> ``Quote`` (SGX v3, TDX v4, typed-body v5 with TD 1.0/1.5 bodies);
* ``certs`` -- certificate, chain and CRL loading in the encodings quotes and PCS use;
* ``pck`` -- the SGX extension of PCK certificates (FMSPC, PCE ID, TCB component SVNs);
* ``collateral`` -- TCB Info / QE Identity / CRLs / issuer chains -> a cacheable ``Collateral``;
* ``pcs`` -- Intel PCS / PCCS URLs from a configurable base and the issuer-chain headers;
* ``crypto`` -- raw P-256 ECDSA, certificate links and CRL primitives;
* ``tcb`` -- TCB level selection and status by Intel's reference rule;
* ``checks`` -- the stable names of every verification check;
* ``verify`` -- ``evaluate_quote`` (every check's outcome) and ``verify_quote`` (the gate);
* ``validate`` -- policy over verified fields (``TdxPolicy``/``SgxPolicy``) and the claims;
* ``eventlog`` -- the CCEL table and event log, and RTMR replay against a quote.

The trust root, the collateral and the time are always parameters; fetching and caching are the
caller's job. ``pinned_root()`` loads the Intel SGX Root CA shipped in ``roots/``. Nothing else
is re-exported so importing one module does not load the others.
"""

from __future__ import annotations

import hashlib
from functools import cache
from importlib import resources

from cryptography import x509
from cryptography.hazmat.primitives import serialization

# SHA-256 of the DER of the Intel SGX Root CA (CN=Intel SGX Root CA, serial 22650cd6...06ac,
# 2018-05-21 .. 2049-12-31); a damaged or swapped roots/ file must not load silently.
INTEL_SGX_ROOT_CA_SHA256 = "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3"


@cache
def pinned_root_der() -> bytes:
    """DER of the Intel SGX Root CA shipped with the package, checked against its fingerprint."""
    pem = resources.files(__package__).joinpath("roots/intel_sgx_root_ca.pem").read_bytes()
    der = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
    if hashlib.sha256(der).hexdigest() != INTEL_SGX_ROOT_CA_SHA256:
        raise RuntimeError("roots/intel_sgx_root_ca.pem is not the Intel SGX Root CA")
    return der


def pinned_root() -> x509.Certificate:
    """The pinned Intel SGX Root CA."""
    return x509.load_der_x509_certificate(pinned_root_der())
