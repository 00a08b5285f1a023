"""Google Cloud vTPM evidence (``gcp-vtpm``): the pure core, no network, cache or clock.

* ``attestation`` -- go-tpm-tools ``attest.Attestation`` protobuf -> ``GcpAttestation`` (a small,
  bounds-checked wire-format reader; no protobuf dependency);
* ``akcert`` -- the AK certificate: chain to a pinned Google root (``roots/``), validity at a given
  time, the GCE instance-information extension and the claims it yields, and the AK key match.

Quote signatures, PCR digests and event-log replay are TPM-generic and live in ``shared.platforms.tpm``.
Nothing is re-exported here so importing one module does not load the others.
"""
