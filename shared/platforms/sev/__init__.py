"""AMD SEV / SEV-ES (legacy, pre-attestation): the pure core, no network, cache or clock.

* ``abi`` -- the legacy AMD certificate formats: CA certificate (ARK, ASK) and SEV certificate
  (OCA, PEK, PDH, CEK, guest owner's GODH), parse/encode byte for byte;
* ``verify`` -- ARK -> ASK -> CEK -> PEK (<- OCA) -> PDH, roots passed in; ``pinned_roots()`` loads
  the Naples/Rome/Milan ARK/ASK shipped in ``roots/``;
* ``kds`` -- AMD KDS CEK URL by chip id, and the ASK/ARK bundle URLs;
* ``session``, ``measure``, ``secret`` -- LAUNCH_START session, LAUNCH_MEASURE, LAUNCH_SECRET.

Nothing is re-exported here so importing one module does not load the others.
"""
