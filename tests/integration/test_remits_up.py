"""`remits up` as a user runs it: embedded NATS and Redis, the stack in two processes sharing the
gateway port, a guest enrolled by hand and with the CLI, attestations and a secret, a clean SIGTERM,
and a restart on the same data directory that still knows the reference value and the secret."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import re
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

import pytest

from services.demo.client import GuestClient, sample_evidence
from shared.embedded import free_port, pid_alive
from shared.platforms.sample.pki import SimulatedDevice, VendorPKI
from shared.resp import RedisError, RespClient

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


async def start_up(
    tmp_path: Path, port: int, env: dict[str, str], log: IO[bytes]
) -> tuple[asyncio.subprocess.Process, str]:
    """`remits up` on ``tmp_path/data``, logging at debug level to ``log``; returns the process
    and its details line."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.cli", "up", "--http", f"127.0.0.1:{port}", "--processes", "2",
        "--replicas", "identity=1",
        "--data-dir", str(tmp_path / "data"),
        cwd=ROOT, env={**env, "REMITS_LOG_LEVEL": "debug"}, stdout=asyncio.subprocess.PIPE, stderr=log,
    )
    assert proc.stdout is not None
    ready = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
    assert ready.strip() == f"REMITS gateway ready at http://127.0.0.1:{port}"
    details = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode()
    return proc, details


async def stop_up(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), 30) == 0


async def remits(env: dict[str, str], *args: str) -> str:
    """An operator's `remits ...` command; its stdout (it must succeed)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.cli", *args, cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def attest_and_fetch(port: int, device: SimulatedDevice, times: int) -> None:
    for _ in range(times):  # several connections: both processes answer on the one port
        client = GuestClient.new(f"http://127.0.0.1:{port}")
        nonce = (await client.auth()).body["nonce"]
        result = await client.attest(client.attestation_body(nonce, sample_evidence(device, nonce, client.tee_pubkey)))
        assert result.status == 200, result.body
        fetched = await client.resource("prod/key/db")
        assert fetched.status == 200 and client.decrypt(fetched.body) == b"s3cret"
        await client.close()


async def test_remits_up_with_two_processes_serves_restarts_and_stops_cleanly(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("REMITS_")}
    data = tmp_path / "data"
    log = open(tmp_path / "up.log", "wb")
    proc, details = await start_up(tmp_path, port, env, log)
    try:
        redis_url = re.search(r"redis=(\S+)", details).group(1)  # type: ignore[union-attr]
        assert "processes=2" in details and "replicas=identity+1" in details
        # The extra identity replica is a process of its own, bound to the same durable consumer.
        replica_pids = [int(p) for p in os.listdir("/proc") if p.isdigit() and "worker identity" in _cmdline(int(p))
                        and str(tmp_path) in _cmdline(int(p))]
        assert len(replica_pids) == 1

        # Enrol one guest the way an operator would: its certificate at the sample key server,
        # its image as a reference value, one secret (the last two with the CLI, as the operator).
        pki = VendorPKI.load(data / "sample-pki")
        image = hashlib.sha384(b"image").digest()
        device = SimulatedDevice.create(image)
        enrolled = data / "sample-kds"
        enrolled.mkdir(parents=True, exist_ok=True)
        (enrolled / f"{device.device_id.hex()}.der").write_bytes(
            pki.issue_device_cert(device.device_id, device.public_key, datetime.now(UTC))
        )
        creds_dir = Path(re.search(r"credentials=(\S+)", details).group(1))  # type: ignore[union-attr]
        assert creds_dir == data / "credentials"
        with pytest.raises(RedisError, match="NOAUTH"):
            await RespClient.from_url(redis_url).execute("GET", "remits:session:x")  # anonymous: refused
        local = ("--local", "--data-dir", str(data))
        await remits(env, "refval", "add", "sample", "measurement", image.hex(), *local)
        secret_file = tmp_path / "secret.bin"
        secret_file.write_bytes(b"s3cret")
        await remits(env, "resource", "put", "prod/key/db", "--file", str(secret_file), "--allow-sample", *local)
        await attest_and_fetch(port, device, 6)
        # At rest the secret is sealed: its plaintext is nowhere in the data directory.
        assert not any(b"s3cret" in f.read_bytes() for f in data.rglob("*") if f.is_file() and f != secret_file)
    finally:
        await stop_up(proc)

    # A restart on the same data directory keeps the reference value and the secret.
    proc, _ = await start_up(tmp_path, port, env, log)
    try:
        await attest_and_fetch(port, device, 2)
        listed = await remits(env, "refval", "list", "--tee", "sample", *local)
        assert image.hex() in listed
    finally:
        await stop_up(proc)
    log.close()
    # The secret was released, and logged as such, but its value never reached a log line.
    logged = (tmp_path / "up.log").read_bytes()
    assert b"resource.released" in logged
    assert b"s3cret" not in logged and base64.b64encode(b"s3cret") not in logged
    # The children and the embedded servers are gone with it.
    await asyncio.sleep(0.5)
    leftovers = [int(p) for p in os.listdir("/proc") if p.isdigit() and _cmdline(int(p)).find(str(tmp_path)) >= 0]
    assert [p for p in leftovers if pid_alive(p)] == []


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""
