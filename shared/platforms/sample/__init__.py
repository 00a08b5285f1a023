"""The simulated "sample" TEE platform: a demo/test platform built from real cryptography.

Split like google/go-sev-guest so each concern stays pure and testable on its own:

* ``abi`` -- binary report layout, bytes <-> ``SampleReport``;
* ``kds`` -- endorsement URLs of the sample vendor's key server;
* ``pki`` -- test vendor PKI (root, intermediate, device certs) and simulated devices;
* ``verify`` -- certificate chain and report signature checks (trust root and time passed in);
* ``validate`` -- policy over report fields and the claims they produce;
* ``endorsement_server`` -- a small local aiohttp key server for the demo and tests.

Nothing is re-exported here so importing one module does not pull in aiohttp or the PKI code.
"""
