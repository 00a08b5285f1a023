"""Which keys this process signs results and seals secrets with: files in the data directory, or
keys held in an HSM through PKCS#11 (settings.pkcs11_*), which never leave it. The public side
of every signing key still honoured is kept in ``<data dir>/signing-keys.json`` (durable), so a
key rotated out stays in the JWKS, and verifies, until the last token it signed has expired."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from shared import tenants
from shared.config import Settings
from shared.custody.rotation import SigningKeySet
from shared.ear import EarVerifier, UnverifiedToken, jwk_thumbprint, load_or_create_signing_key
from shared.errors import VerificationError

KEYSET_FILE = "signing-keys.json"
TENANT_KEYS_DIR = "tenant-keys"  # each tenant's durable key set, beside the default's


def pkcs11_config(settings: Settings) -> Any:
    if not settings.pkcs11_module:
        return None
    from shared.custody.pkcs11 import CustodyError, Pkcs11Config

    pin = settings.pkcs11_pin
    if settings.pkcs11_pin_file is not None:
        if pin:
            raise CustodyError("custody.pin", "REMITS_PKCS11_PIN and REMITS_PKCS11_PIN_FILE are both set: give one")
        try:  # one line; a secret mounted from a file usually ends with a newline
            pin = settings.pkcs11_pin_file.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise CustodyError("custody.pin", f"cannot read the PIN file {settings.pkcs11_pin_file}: {exc.strerror}") from None
    return Pkcs11Config(
        module=settings.pkcs11_module, token_label=settings.pkcs11_token, pin=pin, slot=settings.pkcs11_slot
    )


def signing_backend(settings: Settings) -> Any:
    """The EAR signing key: an HSM key (signs inside the token) or the key file."""
    config = pkcs11_config(settings)
    if config is not None and settings.pkcs11_signing_key:
        from shared.custody.signer import Pkcs11Es256Key

        return Pkcs11Es256Key(config, settings.pkcs11_signing_key)
    return load_or_create_signing_key(settings.signing_key_path)


_TENANT_KEY_SALT = b"remits/tenant-ear-signing-key/v1"


def derive_tenant_key(root: ec.EllipticCurvePrivateKey, tenant: str) -> ec.EllipticCurvePrivateKey:
    """Pure: ``tenant``'s P-256 signing key, derived from the service's (HKDF-SHA256, 48 bytes
    reduced into [1, n-1], so the bias is below 2^-128). Every replica holding the service key
    (decide signs; release and the gateway need the public half) has it without sharing a file,
    which separate pods cannot."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    secret = root.private_numbers().private_value.to_bytes(32, "big")
    okm = HKDF(hashes.SHA256(), 48, _TENANT_KEY_SALT, f"tenant:{tenants.check_name(tenant)}".encode()).derive(secret)
    order = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
    return ec.derive_private_key(int.from_bytes(okm, "big") % (order - 1) + 1, ec.SECP256R1())


def tenant_signing_backend(settings: Settings, tenant: str, root: Any = None) -> Any:
    """``tenant``'s own EAR signing key. In an HSM: the key labelled ``<signing key label>.<tenant>``,
    which the operator creates there (it never leaves the token). Else derived from the service's
    key file (``root`` when the caller holds it already). The default tenant's is the service's."""
    if tenant == tenants.DEFAULT:
        return root if root is not None else signing_backend(settings)
    config = pkcs11_config(settings)
    if config is not None and settings.pkcs11_signing_key:
        from shared.custody.signer import Pkcs11Es256Key

        return Pkcs11Es256Key(config, f"{settings.pkcs11_signing_key}.{tenants.check_name(tenant)}")
    if not isinstance(root, ec.EllipticCurvePrivateKey):
        root = load_or_create_signing_key(settings.signing_key_path)
    return derive_tenant_key(root, tenant)


def tenant_public_key(settings: Settings, tenant: str, root: Any = None) -> ec.EllipticCurvePublicKey:
    """``tenant``'s current signing key's public half, recorded in this process's durable key set
    for it (so a key rotated out stays honoured, with overlap, as the default key's does)."""
    backend = tenant_signing_backend(settings, tenant, root)
    try:
        public = backend.public_key()
    finally:
        # An HSM key opened here only for its public half: its session is not kept open.
        if backend is not root and hasattr(backend, "close"):
            backend.close()
    record_signing_key(settings, public, tenant=tenant)
    return public


def hsm_kek(settings: Settings) -> Any:
    """The HSM-held KEK secrets are sealed under, if one is configured."""
    config = pkcs11_config(settings)
    if config is None or not settings.pkcs11_kek:
        return None
    from shared.custody.kek import Pkcs11Kek

    return Pkcs11Kek(config, settings.pkcs11_kek)


def _keyset_path(settings: Settings, tenant: str = tenants.DEFAULT) -> Path:
    if tenant == tenants.DEFAULT:
        return settings.data_dir / KEYSET_FILE
    return settings.data_dir / TENANT_KEYS_DIR / f"{tenants.check_name(tenant)}.keys.json"


def record_signing_key(
    settings: Settings,
    public_key: ec.EllipticCurvePublicKey,
    now: float | None = None,
    tenant: str = tenants.DEFAULT,
) -> SigningKeySet:
    """Make ``public_key`` the current signing key of ``tenant``'s durable key set (rotating the
    previous one out, with overlap) and drop keys whose tokens have all expired. Idempotent."""
    now = time.time() if now is None else now
    path = _keyset_path(settings, tenant)
    path.parent.mkdir(parents=True, exist_ok=True)
    keyset = SigningKeySet.from_json(path.read_bytes()) if path.exists() else SigningKeySet.start(public_key, now)
    if keyset.current.kid != _kid(public_key):
        keyset = keyset.rotate(public_key, now)
    keyset = keyset.prune(now, settings.token_lifetime_s)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(keyset.to_json())
    os.replace(tmp, path)
    return keyset


# Key set files as last parsed, by path: (file version, key set). The JWKS endpoint
# serves them on every request; what is published still depends on the time asked about.
_published_keysets: dict[Path, tuple[tuple[int, int, int], SigningKeySet]] = {}


def published_keys(
    settings: Settings, now: float | None = None, tenant: str = tenants.DEFAULT
) -> list[dict[str, str]]:
    """The JWKS entries of every signing key of ``tenant`` whose tokens may still be valid."""
    path = _keyset_path(settings, tenant)
    try:
        stat = path.stat()
    except OSError:
        return []
    # Each write replaces the file (a new inode), so this changes even within one clock tick.
    version = (stat.st_mtime_ns, stat.st_ino, stat.st_size)
    kept = _published_keysets.get(path)
    if kept is None or kept[0] != version:  # parsed again only when the file changed
        kept = _published_keysets[path] = (version, SigningKeySet.from_json(path.read_bytes()))
    keyset = kept[1]
    return keyset.jwks(time.time() if now is None else now, settings.token_lifetime_s)["keys"]


def _kid(public_key: ec.EllipticCurvePublicKey) -> str:
    from shared.custody.signer import p256_public_jwk

    return jwk_thumbprint(p256_public_jwk(public_key))


class KeySetVerifier:
    """Verifies EARs by their ``kid`` against every key of one tenant still honoured: the current
    one and those rotated out less than a token lifetime ago. The key set is read again when its
    file changes. With no ``current`` key given, every key comes from the key set file."""

    def __init__(
        self, settings: Settings, current: ec.EllipticCurvePublicKey | None, tenant: str = tenants.DEFAULT
    ) -> None:
        self._settings = settings
        self._tenant = tenant
        self._current = EarVerifier(current) if current is not None else None
        self._current_kid = _kid(current) if current is not None else ""
        self._lock = threading.Lock()
        self._mtime = -1.0
        self._others: dict[str, EarVerifier] = {}

    def _refresh(self) -> None:
        path = _keyset_path(self._settings, self._tenant)
        try:
            mtime = path.stat().st_mtime
        except OSError:
            return
        with self._lock:
            if mtime == self._mtime:
                return
            keyset = SigningKeySet.from_json(path.read_bytes())
            self._others = {
                entry.kid: EarVerifier(entry.public_jwk)
                for entry in (keyset.current, *keyset.retired)
                if entry.kid != self._current_kid
            }
            self._retired_at = {entry.kid: entry.retired_at for entry in keyset.retired}
            self._mtime = mtime

    def verify(self, token: str, now: int, leeway_s: int = 0, **options: Any) -> dict[str, Any]:
        return self.verify_parsed(UnverifiedToken.parse(token), now, leeway_s, **options)

    def verify_parsed(self, token: UnverifiedToken, now: int, leeway_s: int = 0, **options: Any) -> dict[str, Any]:
        kid = token.kid
        if self._current is not None and kid == self._current_kid:
            return self._current.verify_parsed(token, now, leeway_s, **options)
        self._refresh()
        verifier = self._others.get(kid)
        retired_at = getattr(self, "_retired_at", {}).get(kid)
        if verifier is None or (retired_at is not None and now >= retired_at + self._settings.token_lifetime_s):
            raise VerificationError("token.unknown_kid", f"no signing key {kid[:64]!r} is honoured any more")
        return verifier.verify_parsed(token, now, leeway_s, **options)
