"""Azure confidential VMs with a paravisor (HCL): the pure parsing and binding core.

On these VMs the guest never sees the hardware report directly. The paravisor (HCL) asks the
hardware for a report whose REPORT_DATA[0:32] is SHA-256 of a JSON "variable data" document that
holds the vTPM attestation key (``HCLAkPub``); the verifier's nonce then travels through the vTPM
quote signed by that key. So the chain is: hardware report -> var data -> AK -> TPM quote -> nonce.

* ``hcl`` -- the HCL report (``HCLA`` header, hardware report, IGVM request data, var data) and the
  var-data JSON, plus the var-data binding check;
* ``evidence`` -- the KBS evidence documents of ``az-snp-vtpm`` / ``az-tdx-vtpm`` (shapes v0, v1,
  v2) and the bindings between their parts.

Verifying the SNP report / TD quote signatures and the TPM quote signature is left to the SNP, TDX
and TPM cores. Nothing is re-exported here so importing one module does not load the others.
"""
