"""Arm CCA attestation tokens: a platform token signed by the CPAK and a realm token signed by the
per-realm RAK, bound together by the platform challenge (see docs of ``verify``)."""
