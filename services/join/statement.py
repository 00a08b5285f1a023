"""The user-facing statement of a confidential cluster: every member with its last EAR, signed by
the join service; and its check from the user's side, each member's token included."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from services.join import signing
from services.join.membership import MEMBER
from shared import schemas
from shared.errors import RemitsError, VerificationError
from shared.passport import JwksSource, RelyingPartyPolicy, verify_passport

STATEMENT_LIFETIME_S = 300
ISSUER = "remits-join"


def statement_claims(
    cluster: str, members: Sequence[schemas.ClusterMember], policy_id: str, now: int
) -> dict[str, Any]:
    """Current members only: an evicted node is not part of the cluster a user is shown."""
    return {
        "iss": ISSUER,
        "sub": cluster,
        "iat": now,
        "exp": now + STATEMENT_LIFETIME_S,
        "policy_id": policy_id,
        "members": [
            {
                "node": m.node,
                "tee": m.tee,
                "tcb": m.tcb,
                "last_attested": int(m.last_attested),
                "ear_sha256": m.ear_sha256,
                "ear": m.ear,
            }
            for m in members
            if m.status == MEMBER
        ],
    }


@dataclass
class MemberVerdict:
    node: str
    verified: bool
    check: str = ""
    detail: str = ""
    status: str = ""


@dataclass
class ClusterVerdict:
    cluster: str
    policy_id: str
    verified: bool
    members: list[MemberVerdict] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "verified": self.verified,
            "cluster": self.cluster,
            "policy_id": self.policy_id,
            "members": [m.__dict__ for m in self.members],
        }


def verify_cluster(
    statement: str, jwks: JwksSource, *, now: int, policy: RelyingPartyPolicy | None = None,
    expected_cluster: str | None = None,
) -> ClusterVerdict:  # fmt: skip
    """The statement's signature and freshness (a failure raises), then every member's token: its
    digest must be the one the statement lists and it must verify as a passport on its own.

    ``expected_cluster``, when given, is the cluster the user means to check: a statement the join
    service signed for any other cluster is refused (``cluster.wrong_cluster``), as otherwise a
    valid statement for ``dev`` would pass a check meant for ``prod``."""
    claims = signing.verify(statement, jwks.key(signing.header_kid(statement, "statement")), now, "statement")
    members = claims.get("members")
    if claims.get("iss") != ISSUER or not isinstance(members, list) or not isinstance(claims.get("sub"), str):
        raise VerificationError("statement.malformed", "not a cluster statement")
    if expected_cluster is not None and claims["sub"] != expected_cluster:
        raise VerificationError(
            "cluster.wrong_cluster", f"the statement is for cluster {claims['sub']!r}, not {expected_cluster!r}"
        )
    verdicts = []
    for entry in members:
        node = str(entry.get("node", "")) if isinstance(entry, dict) else ""
        ear = entry.get("ear") if isinstance(entry, dict) else None
        if not isinstance(ear, str) or hashlib.sha256(ear.encode()).hexdigest() != entry.get("ear_sha256"):
            verdicts.append(MemberVerdict(node, False, "member.ear_digest", "the token is not the one the statement lists"))
            continue
        try:
            passport = verify_passport(ear, jwks, now=now, policy=policy)
        except RemitsError as err:
            verdicts.append(MemberVerdict(node, False, err.reason, err.detail))
            continue
        if passport.tee != entry.get("tee"):
            verdicts.append(MemberVerdict(node, False, "member.tee", f"token is for {passport.tee}"))
            continue
        verdicts.append(MemberVerdict(node, True, status=passport.status))
    return ClusterVerdict(
        cluster=claims["sub"],
        policy_id=str(claims.get("policy_id", "")),
        verified=bool(verdicts) and all(v.verified for v in verdicts),
        members=verdicts,
    )
