"""The clusters a join service admits nodes to: operator configuration, a JSON file (durable)::

    {"clusters": {"<name>": {"secrets": ["<repo>/<type>/<tag>", ...], "tees": ["snp", ...],
                             "policy_id": "attestation.snp"}}}

``secrets`` are KBS resources (provisioned like any other, their binding deciding who may have
them) released to every node that joins; ``tees`` the TEEs a node may run on (default any);
``policy_id`` names the appraisal policy the cluster's statement points users to."""

from __future__ import annotations

from pathlib import Path

import msgspec

from services.join.membership import check_name
from shared.errors import ParseError


class Cluster(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    secrets: list[str] = []
    tees: list[str] = []
    policy_id: str = ""


class Clusters(msgspec.Struct, forbid_unknown_fields=True):
    clusters: dict[str, Cluster]


def load_clusters(path: Path | None) -> dict[str, Cluster]:
    if path is None:
        return {}
    try:
        clusters = msgspec.json.decode(path.read_bytes(), type=Clusters).clusters
    except OSError as exc:
        raise ParseError("join_clusters", f"{path}: {exc}", prefix="config") from None
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ParseError("join_clusters", f"{path}: {exc}", prefix="config") from None
    for name, cluster in clusters.items():
        check_name(name, "cluster")
        for secret in cluster.secrets:
            if secret.count("/") != 2:
                raise ParseError("join_clusters", f"{name}: {secret!r} is not <repo>/<type>/<tag>", prefix="config")
    return clusters
