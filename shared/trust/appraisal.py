"""Pure: which provisioned reference values and revocations apply to one piece of evidence.

Reference values are records ``{tee, name, values, expires_at}``. For a name the evidence is
compared against (a measurement), the report says which record matched, or why none did:

    matched    the claim's value is in an unexpired record
    expired    it is only in expired records, or every record for the name has expired
    different  unexpired records exist and none holds the value
    absent     nothing is provisioned for the name

Names that are parameters of the platform's checks (a minimum SVN, "allow_debug") are
"configured" when an unexpired record exists. An expired value is never handed to the platform's
checks, so it can never match.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shared import schemas
from shared.trust.snapshot import Entry, TrustSnapshot

_TPM_COMPARED: Mapping[str, str] = {
    **{f"pcr{i}": f"tpm.pcr.sha256.{i}" for i in range(24)},
    "kernel_digest": "eventlog.kernel_digest",
    "secure_boot": "eventlog.secure_boot",
}

# Reference names compared with a claim of the evidence, per TEE: name -> claim.
COMPARED_CLAIMS: Mapping[str, Mapping[str, str]] = {
    "sample": {"measurement": "sample.measurement"},
    "snp": {"measurement": "snp.measurement", "host_data": "snp.host_data"},
    "tdx": {
        "mr_td": "tdx.quote.body.mr_td",
        **{f"rtmr{i}": f"tdx.quote.body.rtmr_{i}" for i in range(4)},
        "xfam": "tdx.quote.body.xfam",
        "mr_seam": "tdx.quote.body.mr_seam",
    },
    "sgx": {"mr_enclave": "sgx.quote.body.mr_enclave", "mr_signer": "sgx.quote.body.mr_signer"},
    # TPM-based TEEs: PCRs of the SHA-256 bank and what a replayed measured-boot log says. For a
    # plain TPM, "ak" is the registry: the SHA-256 of each registered AK's SubjectPublicKeyInfo
    # (record id = the node's name); a quote by any other AK is refused.
    "tpm": {"ak": "tpm.ak.sha256", **_TPM_COMPARED},
    "az-snp-vtpm": {"measurement": "snp.measurement", "host_data": "snp.host_data", **_TPM_COMPARED},
    "az-tdx-vtpm": {"mr_td": "tdx.quote.body.mr_td", **_TPM_COMPARED},
    "gcp-vtpm": {"project_id": "gcp.project_id", **_TPM_COMPARED},
    "cca": {
        "rim": "cca.realm.rim",
        **{f"rem{i}": f"cca.realm.rem{i}" for i in range(4)},
        "rpv": "cca.realm.rpv",
        "platform_config": "cca.platform.config",
    },
    # The image is matched when its measurement is recomputed (only approved images are tried).
    "se": {"host_key_hash": "se.attestation_phkh"},
}

# Claims a revocation of each kind is matched against, per TEE.
REVOCATION_CLAIMS: Mapping[str, Mapping[str, str]] = {
    "sample": {"measurement": "sample.measurement", "chip_id": "sample.device_id"},
    "snp": {"measurement": "snp.measurement", "chip_id": "snp.chip_id"},
    "tdx": {"measurement": "tdx.quote.body.mr_td", "fmspc": "tdx.fmspc"},
    "sgx": {"measurement": "sgx.quote.body.mr_enclave", "fmspc": "sgx.fmspc"},
    # A TPM's identity is its attestation key: revoking "chip_id" <AK SHA-256> revokes the node.
    "tpm": {"chip_id": "tpm.ak.sha256"},
    "az-snp-vtpm": {"measurement": "snp.measurement", "chip_id": "snp.chip_id"},
    "az-tdx-vtpm": {"measurement": "tdx.quote.body.mr_td", "fmspc": "tdx.fmspc"},
    "gcp-vtpm": {"chip_id": "tpm.ak.sha256"},
    "cca": {"measurement": "cca.realm.rim", "chip_id": "cca.platform.instance_id"},
    "se": {"measurement": "se.tag", "chip_id": "se.attestation_phkh"},
}


@dataclass(frozen=True)
class ReferenceCheck:
    # What the platform's own checks receive: only unexpired values.
    effective: dict[str, frozenset[str]]
    # name -> {"status": ..., "record": "<key>@<revision>"} for the policy and the appraisal
    report: dict[str, dict[str, str]]
    # name -> record the appraisal rested on (matched, or configured parameter)
    used: dict[str, str]


def _live(entry: Entry[schemas.ReferenceValueRecord], now: float) -> bool:
    expires = entry.record.expires_at
    return expires is None or now < expires


def check_references(
    snapshot: TrustSnapshot, tee: str, names: tuple[str, ...], claims: Mapping[str, Any], now: float
) -> ReferenceCheck:
    compared = COMPARED_CLAIMS.get(tee, {})
    effective: dict[str, frozenset[str]] = {}
    report: dict[str, dict[str, str]] = {}
    used: dict[str, str] = {}
    for name in dict.fromkeys((*names, *compared)):
        entries = snapshot.refvals.get((tee, name), ())
        live = [e for e in entries if _live(e, now)]
        # Digests compare case-blind; parameters ("UpToDate", "true") are the platform's words.
        fold = str.lower if name in compared else str
        values = frozenset(fold(v) for e in live for v in e.record.values)
        if values:
            effective[name] = values
        if not entries:
            report[name] = {"status": "absent"}
            continue
        claim = compared.get(name)
        if claim is None:
            if live:
                report[name] = {"status": "configured", "record": live[0].ref}
                used[name] = ",".join(e.ref for e in live)
            else:
                report[name] = {"status": "expired", "record": entries[0].ref}
            continue
        got = str(claims.get(claim, "")).lower()
        hit = next((e for e in live if got in (v.lower() for v in e.record.values)), None)
        stale = next(
            (e for e in entries if not _live(e, now) and got in (v.lower() for v in e.record.values)), None
        )
        if hit is not None:
            report[name] = {"status": "matched", "record": hit.ref}
            used[name] = hit.ref
        elif stale is not None or not live:
            report[name] = {"status": "expired", "record": (stale or entries[0]).ref}
        else:
            report[name] = {"status": "different"}
    return ReferenceCheck(effective=effective, report=report, used=used)


def _matching(
    revocations: Mapping[tuple[str, str], Entry[schemas.RevocationRecord]], tee: str, claims: Mapping[str, Any]
) -> list[Entry[schemas.RevocationRecord]]:
    found = []
    for kind, claim in REVOCATION_CLAIMS.get(tee, {}).items():
        value = claims.get(claim)
        if isinstance(value, str) and value:
            entry = revocations.get((kind, value.lower()))
            if entry is not None:
                found.append(entry)
    return found


def matching_revocations(
    snapshot: TrustSnapshot, tee: str, claims: Mapping[str, Any]
) -> list[Entry[schemas.RevocationRecord]]:
    """Revocations (other than of tokens) that name this evidence's measurement, chip or FMSPC."""
    return _matching(snapshot.revocations, tee, claims)


def platform_revocations(
    snapshot: TrustSnapshot, tee: str, claims: Mapping[str, Any]
) -> list[Entry[schemas.RevocationRecord]]:
    """The platform team's revocations of this evidence's chip or FMSPC that the snapshot's tenant
    inherits (TrustSnapshot.platform_revocations): enforced whatever the tenant's policies say."""
    return _matching(snapshot.platform_revocations, tee, claims)


def revocation_input(entries: list[Entry[schemas.RevocationRecord]]) -> list[dict[str, Any]]:
    return [
        {
            "kind": e.record.kind,
            "value": e.record.value,
            "reason": e.record.reason,
            "revoked_at": int(e.record.revoked_at),  # whole seconds: see Release._judge
        }
        for e in entries
    ]


def token_revocations(
    snapshot: TrustSnapshot, jti: str, tee: str, claims: Mapping[str, Any]
) -> list[Entry[schemas.RevocationRecord]]:
    """Revocations that void a token: of the token itself, or of its workload's measurement, chip
    or FMSPC. Not filtered by time: a token issued after a revocation came from an appraisal that
    already saw it (and is not affirming), and comparing the decide and provision hosts' clocks
    would only open a window for skew."""
    found = []
    entry = snapshot.revocations.get(("token_id", jti)) if jti else None
    if entry is not None:
        found.append(entry)
    found.extend(matching_revocations(snapshot, tee, claims))
    return found
