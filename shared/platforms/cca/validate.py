"""Claims of a verified CCA token, and its appraisal against provisioned reference values.

Reference values are RVPS-style named sets of lowercase hex strings:
``rim``, ``rem0``..``rem3``, ``rpv``, ``platform_config`` (any member matches) and
``sw_component``: every platform software component must match one entry, either a bare
measurement or ``<type>:<measurement>`` pinning the component type too. An empty set means the
value is not provisioned and is not checked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shared.errors import ParseError
from shared.platforms.base import Violation
from shared.platforms.cca.abi import CcaToken, SwComponent
from shared.platforms.cca.verify import lifecycle_secured

REFERENCE_NAMES = ("rim", "rem0", "rem1", "rem2", "rem3", "rpv", "sw_component", "platform_config")


@dataclass(frozen=True)
class CcaReferences:
    rim: frozenset[bytes] = frozenset()
    rems: tuple[frozenset[bytes], ...] = (frozenset(),) * 4
    rpv: frozenset[bytes] = frozenset()
    # (component type or None for any type, measurement)
    sw_components: frozenset[tuple[str | None, bytes]] = frozenset()
    platform_config: frozenset[bytes] = frozenset()


def _hex(value: str, name: str) -> bytes:
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise ParseError(f"reference_values.{name}", f"{value!r} is not hex", prefix="config") from None


def _set(references: dict[str, frozenset[str]], name: str) -> frozenset[bytes]:
    return frozenset(_hex(v, name) for v in references.get(name, frozenset()))


def _sw_reference(value: str) -> tuple[str | None, bytes]:
    # Measurements are hex, so a colon can only separate a type; types may contain colons.
    kind, sep, measurement = value.rpartition(":")
    return (kind if sep else None), _hex(measurement, "sw_component")


def references_from_named(references: dict[str, frozenset[str]]) -> CcaReferences:
    return CcaReferences(
        rim=_set(references, "rim"),
        rems=tuple(_set(references, f"rem{i}") for i in range(4)),
        rpv=_set(references, "rpv"),
        sw_components=frozenset(_sw_reference(v) for v in references.get("sw_component", frozenset())),
        platform_config=_set(references, "platform_config"),
    )


def _component(sw: SwComponent) -> dict[str, Any]:
    return {
        "type": sw.type,
        "measurement": sw.measurement.hex(),
        "version": sw.version,
        "signer_id": sw.signer_id.hex(),
        "hash_alg": sw.hash_alg,
    }


def claims(token: CcaToken) -> dict[str, Any]:
    """Flat claim names for policy and the attestation result; bytes as lowercase hex."""
    realm, platform = token.realm_claims, token.platform_claims
    out: dict[str, Any] = {
        "cca.form": token.form,
        "cca.realm.profile": realm.profile,
        "cca.realm.challenge": realm.challenge.hex(),
        "cca.realm.rim": realm.rim.hex(),
        **{f"cca.realm.rem{i}": rem.hex() for i, rem in enumerate(realm.rems)},
        "cca.realm.rpv": realm.personalization_value.hex(),
        "cca.realm.hash_alg": realm.measurement_alg,
        "cca.realm.rak_hash_alg": realm.rak_hash_alg,
        "cca.platform.profile": platform.profile,
        "cca.platform.implementation_id": platform.implementation_id.hex(),
        "cca.platform.instance_id": platform.instance_id.hex(),
        "cca.platform.config": platform.config.hex(),
        "cca.platform.lifecycle": platform.lifecycle,
        "cca.platform.lifecycle_secured": lifecycle_secured(platform.lifecycle),
        "cca.platform.hash_alg": platform.hash_alg,
        "cca.platform.sw_components": [_component(sw) for sw in platform.sw_components],
    }
    return out


def cli_json(token: CcaToken) -> dict[str, Any]:
    realm, platform = token.realm_claims, token.platform_claims
    return {
        "form": token.form,
        "realm": {
            "profile": realm.profile,
            "challenge": realm.challenge.hex(),
            "rim": realm.rim.hex(),
            "rems": [rem.hex() for rem in realm.rems],
            "rpv": realm.personalization_value.hex(),
            "hash_alg": realm.measurement_alg,
            "rak_hash_alg": realm.rak_hash_alg,
        },
        "platform": {
            "profile": platform.profile,
            "implementation_id": platform.implementation_id.hex(),
            "instance_id": platform.instance_id.hex(),
            "config": platform.config.hex(),
            "lifecycle": platform.lifecycle,
            "lifecycle_secured": lifecycle_secured(platform.lifecycle),
            "hash_alg": platform.hash_alg,
            "verification_service": platform.verification_service,
            "sw_components": [_component(sw) for sw in platform.sw_components],
        },
    }


def _want(allowed: frozenset[bytes]) -> str:
    return "one of: " + ", ".join(sorted(v.hex() for v in allowed))


def _member(out: list[Violation], name: str, got: bytes, allowed: frozenset[bytes]) -> None:
    if allowed and got not in allowed:
        out.append(Violation(name, got.hex(), _want(allowed)))


def _sw_matches(sw: SwComponent, references: frozenset[tuple[str | None, bytes]]) -> bool:
    return any(m == sw.measurement and (kind is None or kind == sw.type) for kind, m in references)


def validate(token: CcaToken, refs: CcaReferences) -> list[Violation]:
    """Every violation, not just the first: operators fix them all at once."""
    realm, platform = token.realm_claims, token.platform_claims
    out: list[Violation] = []
    _member(out, "cca.realm.rim", realm.rim, refs.rim)
    for i, (rem, allowed) in enumerate(zip(realm.rems, refs.rems, strict=True)):
        _member(out, f"cca.realm.rem{i}", rem, allowed)
    _member(out, "cca.realm.rpv", realm.personalization_value, refs.rpv)
    _member(out, "cca.platform.config", platform.config, refs.platform_config)
    if refs.sw_components:
        for i, sw in enumerate(platform.sw_components):
            if not _sw_matches(sw, refs.sw_components):
                out.append(
                    Violation(
                        f"cca.platform.sw_components[{i}]",
                        f"{sw.type or ''}:{sw.measurement.hex()}",
                        "a provisioned sw_component",
                    )
                )
    return out
