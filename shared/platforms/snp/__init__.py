"""AMD SEV-SNP: the pure core of attestation-report verification (no network, cache or clock).

* ``fields`` -- value types inside a report: ``Product``, ``TcbVersion``, policy, platform info,
  signer info;
* ``abi`` -- the 1184-byte ATTESTATION_REPORT -> ``SnpReport`` (versions 2-5), strictly checked;
* ``der`` -- the few DER primitives AMD's certificate extensions need, read by hand;
* ``certs`` -- certificate loading, VCEK/VLEK extensions, the pinned ARK/ASK/ASVK (``roots/``);
* ``kds`` -- AMD Key Distribution Service URLs (VCEK, cert_chain, CRL) from a configurable base;
* ``chain`` -- ARK -> ASK/ASVK -> VEK checked link by link (cacheable ``VerifiedVek``);
* ``verify`` -- per-report bindings and the ECDSA P-384 signature (``verify_report``);
* ``validate`` -- policy over verified fields (``SnpPolicy``) and the claims a report produces;
* ``checks`` -- the stable names of every verification check.

Trust roots and time are always parameters; fetching VEKs, chains and CRLs is the caller's job.
Nothing is re-exported here so importing one module does not load the others.
"""
