"""TPM 2.0 quotes, the pure core (no I/O, no clock, no trust decisions about the AK):

* ``abi`` -- TPMS_ATTEST, TPMT_SIGNATURE, TPMT_PUBLIC / TPM2B_PUBLIC parsing and marshalling;
* ``verify`` -- ``load_ak``, ``pcr_digest`` and ``verify_quote`` -> ``QuoteClaims``;
* ``validate`` -- ``check_clock``: reset / restart / clock counters never go backwards.

Nothing is re-exported so importing one module does not load the others.
"""
