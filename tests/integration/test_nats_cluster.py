"""REMITS on a three-node JetStream cluster: every stream, consumer and trust bucket keeps three
replicas, and losing one node (the pipeline stream's leader) costs a few seconds of attestations
but no decision: each attestation still gets exactly one, and trust changes made while the node
is down reach every component. Also `remits up --nats-cluster 3` as a user runs it."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import signal
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from services.demo.client import GuestClient, sample_evidence
from shared import schemas
from shared.embedded import (
    CLUSTER_NAME,
    EmbeddedInfra,
    ManagedServer,
    free_port,
    pid_alive,
    start_embedded,
    wait_for_cluster,
)
from shared.platforms.sample.pki import SimulatedDevice, VendorPKI
from shared.trust import buckets
from tests.conftest import RunningStack, start_stack
from tests.integration.test_reliability import attest, decisions_by_session

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
STREAMS = (
    schemas.PIPELINE_STREAM, schemas.DECISION_STREAM, schemas.DLQ_STREAM, schemas.EVIDENCE_STREAM,
    schemas.AUDIT_STREAM,
)  # fmt: skip
RECOVERY_BOUND_S = 30.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedInfra]:
    servers = start_embedded(tmp_path_factory.mktemp("cluster"), nats_cluster_size=3)
    yield servers
    servers.stop()


def node_named(infra: EmbeddedInfra, server_name: str) -> ManagedServer:
    return next(
        n for n in infra.nats_nodes if server_name == f"{CLUSTER_NAME}-{n.name.removeprefix('nats-')}"
    )


async def attest_until_affirmed(
    rs: RunningStack, device: SimulatedDevice, bound_s: float
) -> list[tuple[str, int]]:
    """Attest ``device`` again and again until one attestation succeeds; every (session, status)."""
    tries: list[tuple[str, int]] = []
    deadline = time.monotonic() + bound_s
    while time.monotonic() < deadline:
        try:
            session, status, _ = await asyncio.wait_for(
                attest(rs, device), max(0.1, deadline - time.monotonic())
            )
        except (TimeoutError, OSError, AssertionError):  # no session: the gateway itself refused
            await asyncio.sleep(0.2)
            continue
        tries.append((session, status))
        if status == 200:
            return tries
        await asyncio.sleep(0.2)
    raise AssertionError(f"no attestation succeeded within {bound_s}s: {tries}")


async def every_stream_led(rs: RunningStack, lost: str, deadline: float) -> float:
    """Wait until every stream and trust bucket has a leader other than ``lost``; when (monotonic)."""
    assert rs.stack.nc is not None
    js = rs.stack.nc.jetstream(timeout=1)  # a stream without a leader does not answer at all
    waiting = [*STREAMS, *(b.stream for b in buckets.ALL)]
    while waiting:
        try:
            leader = (await js.stream_info(waiting[0])).cluster.leader
        except Exception:  # no leader yet: no answer, or an error
            leader = None
        if leader and leader != lost:
            waiting.pop(0)
            continue
        assert time.monotonic() < deadline, f"{waiting[0]} has no leader"
        await asyncio.sleep(0.1)
    return time.monotonic()


async def put_when_led(rs: RunningStack, value: str, bound_s: float = 15.0) -> None:
    """The operator's write of a reference value. While the bucket's stream (whose leader may
    have been on the lost node) has no leader yet, nothing answers and nothing is stored; the
    operator tries again (the same for the admin event on the decision stream)."""
    from nats.js.errors import NoStreamResponseError

    from shared.bus import PublishError

    assert rs.stack.trust_admin is not None
    deadline = time.monotonic() + bound_s
    while True:
        try:
            await rs.stack.trust_admin.put_reference_value("sample", "measurement", [value], "tests")
            return
        except (NoStreamResponseError, PublishError):  # the bucket's, or the admin event's, stream
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def test_three_replicas_survive_the_loss_of_the_pipeline_leader(
    cluster: EmbeddedInfra, tmp_path: Path
) -> None:
    rs = await start_stack(cluster, tmp_path / "data", replicas=3, request_timeout_s=8.0)
    killed: ManagedServer | None = None
    try:
        js = rs.stack.js
        for name in (*STREAMS, *(b.stream for b in buckets.ALL)):
            assert (await js.stream_info(name)).config.num_replicas == 3, name
        # Durable consumers follow their stream's replica count: the leader and two followers.
        deadline = time.monotonic() + 15
        while len((await js.consumer_info(schemas.PIPELINE_STREAM, "identity")).cluster.replicas or []) != 2:
            assert time.monotonic() < deadline, "the identity consumer has no two followers"
            await asyncio.sleep(0.2)
        before = await asyncio.gather(*(attest(rs, rs.enroll()) for _ in range(4)))
        assert [status for _, status, _ in before] == [200] * 4

        leader = (await js.stream_info(schemas.PIPELINE_STREAM)).cluster.leader
        assert leader
        killed = node_named(cluster, leader)
        killed.kill()
        started = time.monotonic()
        tries = await attest_until_affirmed(rs, rs.enroll(), RECOVERY_BOUND_S)
        recovery_s = time.monotonic() - started
        print(f"first attestation after killing {leader} succeeded in {recovery_s:.2f}s ({len(tries)} tries)")
        after = await asyncio.gather(*(attest(rs, rs.enroll()) for _ in range(4)))
        assert [status for _, status, _ in after] == [200] * 4
        new_leader = (await js.stream_info(schemas.PIPELINE_STREAM)).cluster.leader
        assert new_leader and new_leader != leader

        # Every stream and bucket whose leader was on the lost node has elected another.
        all_led_s = await every_stream_led(rs, leader, started + RECOVERY_BOUND_S) - started
        print(f"every stream and bucket led again {all_led_s:.2f}s after the kill")

        # A trust change while the node is down reaches every component: a new image attests.
        image = hashlib.sha384(b"an image provisioned during the outage").digest()
        assert rs.stack.trust_admin is not None
        await put_when_led(rs, image.hex())
        await asyncio.wait_for(rs.stack.trust_synced(), 15)
        _, status, body = await attest(rs, rs.enroll(image))
        assert status == 200, body

        # The node comes back on the same ports and store, and catches up.
        killed.start()
        await asyncio.to_thread(wait_for_cluster, cluster.nats_nodes)
        killed = None
        back = await asyncio.gather(*(attest(rs, rs.enroll()) for _ in range(2)))
        assert [status for _, status, _ in back] == [200] * 2

        # Exactly one decision for every attestation answered; at most one for those that were not.
        by_session = await decisions_by_session(rs)
        for session, status, _ in [*before, *after, *back]:
            assert status == 200 and len(by_session.get(session, [])) == 1, session
        for session, status in tries:
            assert (
                len(by_session.get(session, [])) == 1
                if status == 200
                else len(by_session.get(session, [])) <= 1
            )
    finally:
        if killed is not None:
            killed.start()
            await asyncio.to_thread(wait_for_cluster, cluster.nats_nodes)
        await rs.stack.stop()
        await rs.kds.stop()


async def remits_setup(infra: EmbeddedInfra, replicas: int) -> None:
    """`remits setup` as the operator, on the cluster's seed list, with REMITS_REPLICAS."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REMITS_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.cli", "setup", "--nats", infra.nats_url,
        "--credentials-dir", str(infra.credentials_dir),
        cwd=ROOT, env={**env, "REMITS_REPLICAS": str(replicas)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()


async def test_setup_changes_the_replica_count_of_existing_streams_and_buckets(
    cluster: EmbeddedInfra,
) -> None:
    nc, js = await cluster.connect()
    try:
        await remits_setup(cluster, 3)
        kv = await js.key_value(buckets.POLICIES.name)
        revision = await kv.put("scaling-test", b"kept")
        for replicas in (1, 3):
            await remits_setup(cluster, replicas)
            for name in (*STREAMS, *(b.stream for b in buckets.ALL)):
                assert (await js.stream_info(name)).config.num_replicas == replicas, name
            # The contents stay: a bucket is a stream, scaled in place.
            assert (await kv.get("scaling-test")).revision == revision
    finally:
        await js.purge_stream(buckets.POLICIES.stream)
        await nc.close()


async def test_remits_up_with_a_nats_cluster_serves_and_stops_cleanly(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("REMITS_")}
    data = tmp_path / "data"
    with open(tmp_path / "up.log", "wb") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.cli", "up", "--http", f"127.0.0.1:{port}", "--processes", "1",
            "--nats-cluster", "3", "--data-dir", str(data),
            cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=log,
        )  # fmt: skip
    try:
        assert proc.stdout is not None
        ready = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        # On failure, what `remits up` logged says why (CI shows only the assertion).
        assert ready.strip() == f"REMITS gateway ready at http://127.0.0.1:{port}", _tail(tmp_path / "up.log")
        details = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode()
        urls = re.search(r"nats=(\S+)", details).group(1).split(",")  # type: ignore[union-attr]
        assert len(urls) == 3 and all(re.fullmatch(r"nats://127\.0\.0\.1:\d+", u) for u in urls), details

        pki = VendorPKI.load(data / "sample-pki")
        image = hashlib.sha384(b"image").digest()
        device = SimulatedDevice.create(image)
        (data / "sample-kds").mkdir(parents=True, exist_ok=True)
        (data / "sample-kds" / f"{device.device_id.hex()}.der").write_bytes(
            pki.issue_device_cert(device.device_id, device.public_key, datetime.now(UTC))
        )
        # The operator's CLI finds the running cluster through its seed list.
        cli = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.cli", "refval", "add", "sample", "measurement", image.hex(),
            "--local", "--data-dir", str(data),
            cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, err = await asyncio.wait_for(cli.communicate(), 30)
        assert cli.returncode == 0, err.decode()

        client = GuestClient.new(f"http://127.0.0.1:{port}")
        try:
            nonce = (await client.auth()).body["nonce"]
            body = client.attestation_body(nonce, sample_evidence(device, nonce, client.tee_pubkey))
            result = await client.attest(body)
            assert result.status == 200, result.body
        finally:
            await client.close()
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0, _tail(tmp_path / "up.log")
    await asyncio.sleep(0.5)
    leftovers = [int(p) for p in os.listdir("/proc") if p.isdigit() and str(tmp_path) in _cmdline(int(p))]
    assert [p for p in leftovers if pid_alive(p)] == []


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def test_a_seed_list_and_the_replica_count_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.config import Settings, nats_urls

    monkeypatch.setenv("REMITS_NATS_URL", "nats://a:4222, nats://b:4222,nats://c:4222")
    monkeypatch.setenv("REMITS_REPLICAS", "3")
    settings = Settings.from_env()
    assert nats_urls(settings.nats_url) == ["nats://a:4222", "nats://b:4222", "nats://c:4222"]
    assert settings.replicas == 3
    assert nats_urls("nats://one:4222") == ["nats://one:4222"]


def test_a_route_without_the_cluster_password_is_refused(cluster: EmbeddedInfra, tmp_path: Path) -> None:
    """The nodes' routes authenticate: a nats-server that finds a route port cannot join the
    cluster (and so cannot read every subject), while the three nodes stay routed to each other."""
    import json
    import urllib.request

    from shared.embedded import nats_server_binary

    node = cluster.nats_nodes[0]
    conf = Path(node.argv[node.argv.index("-c") + 1]).read_text()
    assert (Path(node.argv[node.argv.index("-c") + 1]).stat().st_mode & 0o777) == 0o600
    route_port = int(re.search(r"cluster \{\s*name: \"[\w-]+\"\s*listen: 127\.0\.0\.1:(\d+)", conf).group(1))  # type: ignore[union-attr]
    monitor, client_port = free_port(), free_port()
    rogue_conf = tmp_path / "rogue.conf"
    rogue_conf.write_text(
        f'server_name: "rogue"\nlisten: 127.0.0.1:{client_port}\nhttp: 127.0.0.1:{monitor}\n'
        f'cluster {{\n  name: "{CLUSTER_NAME}"\n  listen: 127.0.0.1:{free_port()}\n'
        f"  routes: [nats-route://127.0.0.1:{route_port}]\n}}\n"
    )
    rogue = ManagedServer(
        "rogue", [node.argv[0], "-c", str(rogue_conf)], client_port, tmp_path / "rogue.log", monitor_port=monitor
    )
    assert Path(nats_server_binary()) == Path(node.argv[0])
    rogue.start()
    try:
        time.sleep(3)
        with urllib.request.urlopen(f"http://127.0.0.1:{monitor}/routez", timeout=2) as answer:
            assert json.load(answer)["num_routes"] == 0
        with urllib.request.urlopen(f"http://127.0.0.1:{node.monitor_port}/routez", timeout=2) as answer:
            peers = {r.get("remote_name") for r in json.load(answer)["routes"]}
        assert "rogue" not in peers and len(peers - {None}) == 2, peers
        assert "authentication error" in node.log_path.read_text().lower()
    finally:
        rogue.stop()
