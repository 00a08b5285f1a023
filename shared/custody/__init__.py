"""Custody of signing keys and KEKs: in software, or in an HSM reached through PKCS#11.

``shared.custody.pkcs11`` needs python-pkcs11; the other modules import it only when a PKCS#11-backed
key is opened, so the software backends work without it."""

from shared.custody.errors import CustodyError

__all__ = ["CustodyError"]
