"""EAR (EAT Attestation Results) tokens: building, signing and verifying them.

Claim names follow draft-ietf-rats-ear-02 (the dotted spelling Veraison and Trustee use), so KBS clients
and Trustee-style resource policies can read our tokens; ``eat_profile`` names our own profile because
the claim set (``exp``, ``iss``, annotated evidence) is ours to define.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from shared.errors import ParseError, VerificationError
from shared.kbs.binding import canonical_json
from shared.kbs.wire import b64url_decode, b64url_encode

EAT_PROFILE: Final = "tag:github.com,2025:remits/ear"
TRUSTEE_EAT_PROFILE: Final = "tag:github.com,2024:confidential-containers/Trustee"
VERIFIER_DEVELOPER: Final = "remits"
CPU_SUBMOD: Final = "cpu0"
SIGNING_ALG: Final = "ES256"

# AR4SI claims in the order of their CBOR keys 0..7.
TRUST_CLAIMS: Final = (
    "instance-identity",
    "configuration",
    "executables",
    "file-system",
    "hardware",
    "runtime-opaque",
    "storage-opaque",
    "sourced-data",
)

# Tiers ordered best to worst: a worse tier anywhere in the vector dominates.
TIERS: Final = ("none", "affirming", "warning", "contraindicated")
TIER_VALUES: Final = {"none": 0, "affirming": 2, "warning": 32, "contraindicated": 96}
_TIER_RANK: Final = {name: rank for rank, name in enumerate(TIERS)}

K_STATUS: Final = "ear.status"
K_VECTOR: Final = "ear.trustworthiness-vector"
K_POLICY: Final = "ear.appraisal-policy-id"
K_EVIDENCE: Final = "ear.veraison.annotated-evidence"
K_VERIFIER: Final = "ear.verifier-id"


# --- tiers --------------------------------------------------------------------------------------


def tier_of(value: int) -> str:
    """Tier of one trust-claim value (claims are signed 8-bit)."""
    if isinstance(value, bool) or not isinstance(value, int) or not -128 <= value <= 127:
        raise ParseError("trust_vector", f"claim value {value!r} is not an integer in -128..127")
    # The negative ranges are one wider than the positive ones (-32 is affirming, 32 is warning).
    if -1 <= value <= 1:
        return "none"
    if 2 <= value <= 31 or -32 <= value <= -2:
        return "affirming"
    if 32 <= value <= 95 or -96 <= value <= -33:
        return "warning"
    return "contraindicated"


def normalize_vector(vector: dict[str, int]) -> dict[str, int]:
    """All eight claims, missing ones as 0 ("no claim"); unknown names are refused, not dropped,
    so a misspelt policy claim cannot silently vanish from the result."""
    unknown = set(vector) - set(TRUST_CLAIMS)
    if unknown:
        raise ParseError("trust_vector", f"unknown trust claims {sorted(unknown)}")
    out = {name: vector.get(name, 0) for name in TRUST_CLAIMS}
    for value in out.values():
        tier_of(value)
    return out


def worst_tier(tiers: list[str]) -> str:
    return max(tiers, key=_TIER_RANK.__getitem__, default="none")


def status_of(vector: dict[str, int]) -> str:
    """Appraisal status = worst tier of any claim (as Trustee and the Veraison library set it)."""
    return worst_tier([tier_of(v) for v in normalize_vector(vector).values()])


def status_name(status: Any) -> str:
    """``ear.status`` may be written as the tier name or its integer; return the name."""
    if isinstance(status, str) and status in _TIER_RANK:
        return status
    if isinstance(status, int) and not isinstance(status, bool):
        for name, number in TIER_VALUES.items():
            if number == status:
                return name
    raise VerificationError("token.malformed", f"invalid {K_STATUS} {status!r}")


# --- building -----------------------------------------------------------------------------------


def build_ear_claims(
    *,
    tee: str,
    vector: dict[str, int],
    annotated_evidence: dict[str, Any],
    policy_id: str,
    issued_at: int,
    lifetime_s: int = 300,
    issuer: str = "remits",
    verifier_build: str,
    eat_nonce: str | None = None,
    token_id: str | None = None,
) -> dict[str, Any]:
    """Claims of the token returned by ``/attest`` for the CPU TEE ``tee``.

    ``annotated_evidence`` must hold the verifier's claims under the TEE's name (plus report_data,
    runtime_data_claims, ...): resource policies detect e.g. the insecure ``sample`` TEE by that key, so a
    missing key would let such evidence pass as hardware."""
    if not isinstance(annotated_evidence.get(tee), dict):
        raise ParseError("annotated_evidence", f"no claims object for TEE {tee!r}")
    if lifetime_s <= 0:
        raise ValueError("token lifetime must be positive")
    full_vector = normalize_vector(vector)
    claims: dict[str, Any] = {
        "eat_profile": EAT_PROFILE,
        "iat": issued_at,
        "exp": issued_at + lifetime_s,
        "iss": issuer,
        K_VERIFIER: {"developer": VERIFIER_DEVELOPER, "build": verifier_build},
        "submods": {
            CPU_SUBMOD: {
                K_STATUS: status_of(full_vector),
                K_VECTOR: full_vector,
                K_POLICY: policy_id,
                # Copied so later edits by the caller cannot change what was signed.
                K_EVIDENCE: copy.deepcopy(annotated_evidence),
            }
        },
    }
    if token_id is not None:
        claims["jti"] = token_id  # what `remits revoke --token-id` names
    if eat_nonce is not None:
        # The challenge this appraisal answers (EAT's eat_nonce): what ties a token to one session.
        claims["eat_nonce"] = eat_nonce
    return claims


# --- signing ------------------------------------------------------------------------------------


def p256_public_jwk(public_key: ec.EllipticCurvePublicKey) -> dict[str, str]:
    numbers = public_key.public_numbers()
    return {
        "kty": "EC",
        "crv": "P-256",
        "x": b64url_encode(numbers.x.to_bytes(32, "big")),
        "y": b64url_encode(numbers.y.to_bytes(32, "big")),
    }


def jwk_thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 thumbprint (SHA-256) of an EC key: the required members in JCS form."""
    required = {k: jwk[k] for k in ("crv", "kty", "x", "y")}
    return b64url_encode(hashlib.sha256(canonical_json(required)).digest())


def _require_p256(key: ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) -> None:
    if not isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) or not isinstance(
        key.curve, ec.SECP256R1
    ):
        raise TypeError("EAR tokens are signed with ES256, which needs a P-256 key")


# Tokens are compact JWS (RFC 7515) with one fixed header and one algorithm, signed and checked
# with ``cryptography`` directly: measured, joserfc's generic JOSE layer added ~75 µs to every
# signature and ~125 µs to every verification, on every attestation. joserfc stays in the tests as
# the interoperability oracle (it verifies our tokens and we verify its).
_ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())
_json_encoder = msgspec.json.Encoder()


class EarSigner:
    """Signs EAR claims as an ES256 JWT carrying the public key (``jwk``) and its thumbprint (``kid``)."""

    def __init__(self, private_key: ec.EllipticCurvePrivateKey | Any) -> None:
        # A private key held here, or a custody backend (an HSM through PKCS#11) that signs
        # without ever handing out the key: anything with public_key() and sign_digest_input().
        self._backend = None if isinstance(private_key, ec.EllipticCurvePrivateKey) else private_key
        _require_p256(private_key if self._backend is None else private_key.public_key())
        self._private_key = private_key
        base = p256_public_jwk(private_key.public_key())
        self._kid = jwk_thumbprint(base)
        self._public_jwk = {**base, "alg": SIGNING_ALG, "use": "sig", "kid": self._kid}
        header = {"alg": SIGNING_ALG, "typ": "JWT", "jwk": {**base, "alg": SIGNING_ALG}, "kid": self._kid}
        self._header_b64 = b64url_encode(_json_encoder.encode(header))

    @property
    def kid(self) -> str:
        return self._kid

    def public_jwk(self) -> dict[str, str]:
        """The verification key as published in the JWKS."""
        return dict(self._public_jwk)

    def sign(self, claims: dict[str, Any]) -> str:
        signing_input = f"{self._header_b64}.{b64url_encode(_json_encoder.encode(claims))}"
        if self._backend is not None:
            return f"{signing_input}.{b64url_encode(self._backend.sign_digest_input(signing_input.encode('ascii')))}"
        r, s = decode_dss_signature(self._private_key.sign(signing_input.encode("ascii"), _ECDSA_SHA256))
        return f"{signing_input}.{b64url_encode(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


# --- verifying ----------------------------------------------------------------------------------


def _trusted_key(key: ec.EllipticCurvePublicKey | dict[str, Any]) -> ec.EllipticCurvePublicKey:
    if isinstance(key, dict):
        try:
            if key.get("kty") != "EC" or key.get("crv") != "P-256":
                raise ValueError("not a P-256 EC JWK")
            x = int.from_bytes(b64url_decode(key["x"]), "big")
            y = int.from_bytes(b64url_decode(key["y"]), "big")
            imported = ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key()
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"trusted key is not an EC JWK: {exc}") from exc
        return imported
    _require_p256(key)
    return key


def _int_claim(claims: dict[str, Any], name: str, *, required: bool) -> int | None:
    value = claims.get(name)
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise VerificationError("token.malformed", f"{name} must be an integer NumericDate")
    return value


def _json_object(part: str, what: str, *, signed: bool = False) -> dict[str, Any]:
    try:
        # Text the signature already covered cannot be swapped for another spelling of itself,
        # so it skips the strict (and, for a 2 KB payload, costly) canonical-encoding check.
        raw = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)) if signed else b64url_decode(part)
        value = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise VerificationError("token.malformed", f"{what} is not base64url JSON") from exc
    if not isinstance(value, dict):
        raise VerificationError("token.malformed", f"{what} is not a JSON object")
    return value


@dataclass(frozen=True, slots=True)
class UnverifiedToken:
    """A compact JWS split and read once, nothing of it trusted yet: its ``kid`` and ``iss`` may
    only choose which trusted keys must have signed it (``EarVerifier.verify_parsed``)."""

    header_b64: str
    payload_b64: str
    signature_b64: str
    header: dict[str, Any]
    claims: dict[str, Any]

    @classmethod
    def parse(cls, token: Any) -> UnverifiedToken:
        if not isinstance(token, str) or token.count(".") != 2:
            raise VerificationError("token.malformed", "not a compact JWS")
        header_b64, payload_b64, signature_b64 = token.split(".")
        header = _json_object(header_b64, "header")
        # The lenient decoding: the signature check that must follow covers these very bytes.
        claims = _json_object(payload_b64, "payload", signed=True)
        return cls(header_b64, payload_b64, signature_b64, header, claims)

    @property
    def kid(self) -> str:
        kid = self.header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise VerificationError("token.malformed", "header has no kid")
        return kid

    @property
    def issuer(self) -> str:
        """The ``iss`` claim, "" when it names none."""
        iss = self.claims.get("iss")
        return iss if isinstance(iss, str) else ""


class EarVerifier:
    """Checks tokens against one trusted key (imported once, not per token)."""

    def __init__(self, trusted_public_key: ec.EllipticCurvePublicKey | dict[str, Any]) -> None:
        self._key = _trusted_key(trusted_public_key)

    def verify(
        self,
        token: str,
        now: int,
        leeway_s: int = 0,
        *,
        expected_profile: str = EAT_PROFILE,
        issued_skew_s: int = 0,
    ) -> dict[str, Any]:
        """Return the claims of ``token`` after checking signature, validity window and profile.

        Only the trusted key is used: the header ``jwk`` is attacker-chosen and proves nothing."""
        return self.verify_parsed(
            UnverifiedToken.parse(token), now, leeway_s, expected_profile=expected_profile, issued_skew_s=issued_skew_s
        )

    def verify_parsed(
        self,
        token: UnverifiedToken,
        now: int,
        leeway_s: int = 0,
        *,
        expected_profile: str = EAT_PROFILE,
        issued_skew_s: int = 0,
    ) -> dict[str, Any]:
        """As ``verify``, for a token already split and read (whose ``iss`` or ``kid`` chose this
        verifier): its claims are returned only once the signature over their bytes holds."""
        header, header_b64, payload_b64, signature_b64 = token.header, token.header_b64, token.payload_b64, token.signature_b64
        # One algorithm only: this stops alg confusion ("none", HS256 keyed with the public key).
        if header.get("alg") != SIGNING_ALG:
            raise VerificationError(
                "token.malformed", f"alg must be {SIGNING_ALG}, got {header.get('alg')!r}"
            )
        if "crit" in header:
            raise VerificationError("token.malformed", "critical header extensions are not understood")
        try:
            signature = b64url_decode(signature_b64)
        except ValueError as exc:
            raise VerificationError("token.malformed", "signature is not base64url") from exc
        if len(signature) != 64:
            raise VerificationError("token.signature_invalid", "an ES256 signature is 64 bytes")
        der = encode_dss_signature(
            int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
        )
        try:
            self._key.verify(der, f"{header_b64}.{payload_b64}".encode("ascii"), _ECDSA_SHA256)
        except (InvalidSignature, UnicodeEncodeError) as exc:
            raise VerificationError("token.signature_invalid", "ES256 signature does not verify") from exc
        claims = token.claims
        exp = _int_claim(claims, "exp", required=True)
        iat = _int_claim(claims, "iat", required=True)
        nbf = _int_claim(claims, "nbf", required=False)
        assert exp is not None and iat is not None
        if now >= exp + leeway_s:
            raise VerificationError("token.expired", f"expired at {exp}, now {now}")
        # ``issued_skew_s`` tolerates a signer whose clock runs ahead of ours (another replica)
        # for the start of validity only: it never lengthens a token's life.
        if iat > now + leeway_s + issued_skew_s:
            raise VerificationError("token.not_yet_valid", f"issued in the future ({iat}), now {now}")
        if nbf is not None and nbf > now + leeway_s + issued_skew_s:
            raise VerificationError("token.not_yet_valid", f"not before {nbf}, now {now}")
        if claims.get("eat_profile") != expected_profile:
            raise VerificationError("token.profile", f"eat_profile {claims.get('eat_profile')!r}")
        if not isinstance(claims.get("submods"), dict):
            raise VerificationError("token.malformed", "submods missing")
        return claims


def token_kid(token: Any, what: str = "token") -> str:
    """The ``kid`` of a compact JWS's header, read before anything is trusted: it only chooses
    which trusted key to verify with. Failures are ``<what>.malformed``."""
    if not isinstance(token, str) or token.count(".") != 2:
        raise VerificationError(f"{what}.malformed", "not a compact JWS")
    try:
        header = json.loads(b64url_decode(token.split(".", 1)[0]))
    except (ValueError, RecursionError) as exc:
        raise VerificationError(f"{what}.malformed", "header is not base64url JSON") from exc
    kid = header.get("kid") if isinstance(header, dict) else None
    if not isinstance(kid, str) or not kid:
        raise VerificationError(f"{what}.malformed", "header has no kid")
    return kid


def verify_ear(
    token: str,
    trusted_public_key: ec.EllipticCurvePublicKey | dict[str, Any],
    now: int,
    leeway_s: int = 0,
    *,
    expected_profile: str = EAT_PROFILE,
) -> dict[str, Any]:
    """``EarVerifier(trusted_public_key).verify(...)`` for one-off checks."""
    return EarVerifier(trusted_public_key).verify(token, now, leeway_s, expected_profile=expected_profile)


# --- reading claims -----------------------------------------------------------------------------


def _submod(claims: dict[str, Any], submod: str) -> dict[str, Any]:
    submods = claims.get("submods")
    appraisal = submods.get(submod) if isinstance(submods, dict) else None
    if not isinstance(appraisal, dict):
        raise VerificationError("token.malformed", f"no submod {submod!r}")
    return appraisal


def submod_status(claims: dict[str, Any], submod: str = CPU_SUBMOD) -> str:
    """Status of one appraisal, never better than its own trust vector.

    EAR requires the status to be no better than the worst claim; taking the worse of the two guards a
    relying party against an issuer that broke that rule."""
    appraisal = _submod(claims, submod)
    declared = status_name(appraisal.get(K_STATUS))
    vector = appraisal.get(K_VECTOR)
    if vector is None:
        return declared
    if not isinstance(vector, dict):
        raise VerificationError("token.malformed", f"{K_VECTOR} is not an object")
    try:
        derived = status_of(vector)
    except ParseError as exc:
        raise VerificationError("token.malformed", exc.detail) from exc
    return worst_tier([declared, derived])


def tee_pubkey_from_claims(claims: dict[str, Any]) -> dict[str, Any]:
    """The TEE's JWK the client bound into its evidence, as the verifier recorded it."""
    path = f"submods/{CPU_SUBMOD}/{K_EVIDENCE}/runtime_data_claims/tee-pubkey"
    node: Any = claims
    for part in path.split("/"):
        node = node.get(part) if isinstance(node, dict) else None
    if not isinstance(node, dict):
        raise VerificationError("token.malformed", f"no JWK at /{path}")
    return node


# --- key storage --------------------------------------------------------------------------------


def load_or_create_signing_key(path: str | os.PathLike[str]) -> ec.EllipticCurvePrivateKey:
    """Load the PEM P-256 signing key at ``path``, creating it (mode 0600) if absent.

    Creation writes a private temp file and hard-links it into place, so concurrent starters never see a
    half-written key and exactly one generated key wins."""
    target = Path(path)
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        # mkstemp creates the file 0600 from the start; no window where the key is world-readable.
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(pem)
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(tmp, target)
            except FileExistsError:
                pass  # another process won the race; use its key
        finally:
            os.unlink(tmp)
    loaded = serialization.load_pem_private_key(target.read_bytes(), password=None)
    if not isinstance(loaded, ec.EllipticCurvePrivateKey) or not isinstance(loaded.curve, ec.SECP256R1):
        raise TypeError(f"{target} does not hold a P-256 private key")
    return loaded
