"""Attested TLS (aTLS): TLS 1.3 channels whose certificates are bound to attestation.

Two certificate flavours, one API:

* evidence-in-certificate (RA-TLS style): the certificate carries the node's platform evidence
  (``oids.EVIDENCE``), whose report_data is ``SHA-384(SPKI DER ‖ nonce)`` zero-padded to 64 bytes,
  so the evidence commits to the certificate key. Verified in-process (``offline``).
* token-in-certificate: the certificate carries a REMITS EAR (``oids.TOKEN``) whose ``tee-pubkey``
  is the certificate key. Verified against the EAR signing key.

Why a published "no-trust" issuer
---------------------------------
Certificates are made by the node itself, so they are self-issued. The stdlib ``ssl`` module
cannot accept such a certificate from a *client*: a server that asks for client certificates
(``CERT_OPTIONAL``/``CERT_REQUIRED``) always has OpenSSL verify the chain to a loaded CA and abort
the handshake otherwise, and Python exposes no verify callback to override that (only
``sni_callback`` and a private message-trace hook; ``VERIFY_X509_PARTIAL_CHAIN`` still needs the
certificate itself in the trust store, which cannot hold certificates not yet seen). A client can
skip verification (``CERT_NONE``), but a server cannot request a certificate without verifying it.

So every aTLS certificate is signed by one fixed issuer whose certificate *and private key* are
committed here (``issuer.pem``, ``issuer-key.pem``, P-256). The key is public on purpose: anyone
can mint a certificate under it, so a chain to it proves NOTHING. It exists only so that stdlib
``ssl`` completes the handshake. Every aTLS context trusts this issuer alone (never system CAs) and
does not check host names. Trust comes solely from the binding checked by a verifier
(``verify``) right after the handshake and before any application data is read or written; the
handshake itself proves the peer holds the private key of the certificate it presented.
Replacing the issuer key changes nothing about security, only compatibility between versions.
"""

from __future__ import annotations

from shared.atls.errors import AttestedTlsError

__all__ = ["AttestedTlsError"]
