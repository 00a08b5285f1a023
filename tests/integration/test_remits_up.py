"""`remits up` as a user runs it: embedded NATS and Redis, the stack in two processes sharing the
gateway port, a guest enrolled by hand, one attestation and one secret, then a clean SIGTERM."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from services.demo.client import GuestClient, sample_evidence
from shared import credentials
from shared.cache import Store
from shared.embedded import free_port, pid_alive
from shared.platforms.sample.pki import SimulatedDevice, VendorPKI
from shared.resp import RedisError

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


async def test_remits_up_with_two_processes_serves_and_stops_cleanly(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("REMITS_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.cli", "up", "--http", f"127.0.0.1:{port}", "--processes", "2",
        "--replicas", "identity=1",
        "--data-dir", str(tmp_path / "data"),
        cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    try:
        ready = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        assert ready.strip() == f"REMITS gateway ready at http://127.0.0.1:{port}"
        details = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode()
        redis_url = re.search(r"redis=(\S+)", details).group(1)  # type: ignore[union-attr]
        assert "processes=2" in details and "replicas=identity+1" in details
        # The extra identity replica is a process of its own, bound to the same durable consumer.
        replica_pids = [int(p) for p in os.listdir("/proc") if p.isdigit() and "worker identity" in _cmdline(int(p))
                        and str(tmp_path) in _cmdline(int(p))]
        assert len(replica_pids) == 1

        # Enrol one guest the way an operator would: its certificate at the sample key server,
        # its image as a reference value, one secret.
        pki = VendorPKI.load(tmp_path / "data" / "sample-pki")
        image = hashlib.sha384(b"image").digest()
        device = SimulatedDevice.create(image)
        enrolled = tmp_path / "data" / "sample-kds"
        enrolled.mkdir(parents=True, exist_ok=True)
        (enrolled / f"{device.device_id.hex()}.der").write_bytes(
            pki.issue_device_cert(device.device_id, device.public_key, datetime.now(UTC))
        )
        # As the operator: the credentials `remits up` generated in its data directory.
        creds_dir = Path(re.search(r"credentials=(\S+)", details).group(1))  # type: ignore[union-attr]
        assert creds_dir == tmp_path / "data" / "credentials"
        with pytest.raises(RedisError, match="NOAUTH"):
            await Store.from_url(redis_url).get_resource("prod/key/db")  # anonymous: refused
        store = Store.from_url(credentials.load(creds_dir, "admin").redis_url(redis_url))
        await store.add_reference_values("sample", "measurement", [image.hex()])
        await store.put_resource("prod/key/db", b"s3cret")
        await store.close()

        for _ in range(6):  # several connections: both processes answer on the one port
            client = GuestClient.new(f"http://127.0.0.1:{port}")
            nonce = (await client.auth()).body["nonce"]
            result = await client.attest(client.attestation_body(nonce, sample_evidence(device, nonce, client.tee_pubkey)))
            assert result.status == 200, result.body
            fetched = await client.resource("prod/key/db")
            assert fetched.status == 200 and client.decrypt(fetched.body) == b"s3cret"
            await client.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 30)
    assert code == 0
    # The children and the embedded servers are gone with it.
    await asyncio.sleep(0.5)
    leftovers = [int(p) for p in os.listdir("/proc") if p.isdigit() and _cmdline(int(p)).find(str(tmp_path)) >= 0]
    assert [p for p in leftovers if pid_alive(p)] == []


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""
