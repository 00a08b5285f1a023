"""IBM Secure Execution (s390x) attestation: the pure core, no network, cache or clock.

* ``abi`` -- UV request header, attestation flags, P-521 point encoding, SE image header tags;
* ``arcb`` -- build/parse the Attestation Request Control Block and the verifier's request state
  (``open_arcb`` is the Ultravisor's side, for the simulator);
* ``hkd`` -- host key document chain (HKD ← IBM Z signing key ← CA ← root) with CRLs;
* ``measurement`` -- the HMAC-SHA512 measurement, response check and claims;
* ``evidence`` -- evidence JSON (Trustee field names) and the pvattest exchange file.

The measurement is a MAC under a key only the request creator holds: verification needs the
request state kept since the ARCB was built, never anything the guest supplies.
"""
