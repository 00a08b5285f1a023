"""Object identifiers of the two aTLS certificate extensions.

Both sit under the ``2.25`` arc (ITU-T X.667 / RFC 4122 §C): the decimal value of a UUID, version 4,
drawn once at random for REMITS, so they are unique without registering a private enterprise
number. They never change: a new wire format gets a new ``"v"`` inside the payload, not a new OID.

``EVIDENCE``: a DER OCTET STRING holding the canonical JSON (RFC 8785)
``{"v":1,"tee":<str>,"nonce":<standard base64>,"evidence":<KBS primary_evidence JSON value>}``,
whose report_data binds the certificate's key (see ``cert.evidence_binding``).

``TOKEN``: a DER OCTET STRING holding the ASCII of a REMITS EAR (compact JWT) whose
``tee-pubkey`` is the certificate's key.

Both extensions are non-critical: OpenSSL refuses certificates with critical extensions it does
not know, and these are read by aTLS after the handshake, not by OpenSSL.
"""

from __future__ import annotations

from typing import Final

from cryptography.x509 import ObjectIdentifier

# UUIDs 6c287d61-a5c7-4f82-a538-8bc64582ac94 and a1c4d6b3-be9e-4dec-979a-4cbe0d25c237.
EVIDENCE: Final = ObjectIdentifier("2.25.143766858456750506056755665471828831380")
TOKEN: Final = ObjectIdentifier("2.25.215027752182134083395621652992541180471")
