"""`remits demo --cluster N --bad K [--tee sample|snp|tdx] [--json]`: a confidential cluster of N
simulated nodes (K deliberately bad) joining over attested TLS, the mesh of mutual attested-TLS
connections between its members, and a user's check of the whole cluster (services.demo.cluster)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from services.cli.common import embedded_infrastructure, settings_from_args
from services.demo.fleet import provision
from services.runtime import COMPONENTS, Stack, init_data_dir
from shared.trust.operator import operator_trust

TEES = ("sample", "snp", "tdx")


async def cmd_cluster_demo(args: argparse.Namespace) -> int:
    from services.cli.demo import simulated_vendor
    from services.demo.cluster import CLUSTER, evidence_for, run_cluster

    if args.tee not in TEES:
        print(f"remits demo --cluster: --tee must be one of {', '.join(TEES)}", file=sys.stderr)
        return 2
    if args.cluster < 1 or not 0 <= args.bad <= args.cluster:
        print("remits demo: need --cluster >= 1 and 0 <= --bad <= --cluster", file=sys.stderr)
        return 2
    secrets = {f"cluster-{CLUSTER}/disk/key": os.urandom(32), f"cluster-{CLUSTER}/join/token": os.urandom(24).hex().encode()}
    with contextlib.ExitStack() as cleanup:
        workdir = Path(args.data_dir) if args.data_dir else Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="remits-cluster-")))
        args.nats = args.redis = None
        data_dir = workdir / "data"
        async with embedded_infrastructure(args, workdir, data_dir / "credentials") as urls:
            clusters = workdir / "clusters.json"
            clusters.write_text(json.dumps({"clusters": {CLUSTER: {"secrets": sorted(secrets), "tees": [args.tee]}}}))
            base: dict[str, Any] = {**urls, "data_dir": data_dir, "http_port": 0, "join_port": 0, "join_clusters_path": clusters}
            settings = settings_from_args(args, **base)
            init_data_dir(settings)
            fleet, vendor, extra = await simulated_vendor(args, settings)
            settings = settings_from_args(args, **base, **extra)
            async with operator_trust(settings) as admin:
                await provision(admin, fleet, os.urandom(32))
                binding: dict[str, Any] = {"tees": [args.tee], **({"allow_sample": True} if args.tee == "sample" else {})}
                for path, value in secrets.items():
                    await admin.put_resource(path, value, "remits demo", binding)
            stack = Stack(settings, components=(*COMPONENTS, "join"))
            await stack.start()
            try:
                summary = await run_cluster(
                    stack.gateway_url, "127.0.0.1", stack.join.port, evidence_for(fleet), args.cluster, args.bad, secrets
                )
            finally:
                await stack.stop()
                await vendor.stop()
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"REMITS cluster demo: {summary['nodes']} simulated {args.tee} nodes ({args.bad} deliberately bad)")
        print(f"  joined {summary['joined']}, rejected {summary['rejected']}; cluster secrets released to {summary['secrets_released']}")
        for reason, count in summary["rejection_reasons"].items():
            print(f"  rejected {count:>4}  {reason}")
        print(
            f"  attested TLS between members: {summary['peer_connections_ok']} ok, "
            f"{summary['peer_connections_refused']} refused (outsiders)"
        )
        print(f"  user-side check of the cluster: {'verified' if summary['cluster_verified'] else 'NOT verified'}")
    return 0 if summary["cluster_verified"] and summary["bad_joined"] == 0 else 1
