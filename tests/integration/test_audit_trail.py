"""The audit trail end to end: every decision and admin change chained and signed by the audit
consumer, kept on disk and on the audit stream; `remits audit export/verify/replay` as an operator
runs them; a secret's plaintext nowhere but in the answer to its attested guest."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from services.audit.verify import request_id_of
from services.cli import build_parser
from services.cli.audit import cmd_audit_export, cmd_audit_replay, cmd_audit_verify
from shared import credentials
from shared.embedded import EmbeddedInfra, start_embedded
from shared.resp import RespClient
from tests.conftest import GOOD_MEASUREMENT, RESOURCE, SECRET, RunningStack, start_stack
from tests.integration.test_trust_config import BLOCK_ALL, attest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def audited(tmp_path: Path) -> AsyncIterator[RunningStack]:
    """A stack on servers of its own: the audit stream then holds this trail alone."""
    own: EmbeddedInfra = start_embedded(tmp_path / "infra")
    rs = await start_stack(own, tmp_path / "data")
    try:
        yield rs
    finally:
        await rs.stack.stop()
        await rs.kds.stop()
        own.stop()


def cli_args(rs: RunningStack, *argv: str) -> Any:
    connection = ["--nats", rs.infra.nats_url, "--credentials-dir", str(rs.infra.credentials_dir)]
    return build_parser().parse_args([*argv, *connection, "--data-dir", str(rs.settings.data_dir)])


def trail(rs: RunningStack) -> list[dict[str, Any]]:
    path = rs.settings.audit_log_path
    return [json.loads(line) for line in path.read_bytes().splitlines()] if path.exists() else []


async def wait_for_records(rs: RunningStack, predicate: Any, timeout_s: float = 20.0) -> list[dict[str, Any]]:
    for _ in range(int(timeout_s / 0.05)):
        records = trail(rs)
        if predicate(records):
            return records
        await asyncio.sleep(0.05)
    raise AssertionError(f"audit trail never got there: {[r.get('kind') for r in trail(rs)]}")


async def attested_request_id(rs: RunningStack, measurement: bytes = GOOD_MEASUREMENT) -> tuple[str, int]:
    """Attest once; the request id the trail gives the decision, and the HTTP status."""
    before = {request_id_of(r) for r in trail(rs)}
    client, result = await attest(rs, measurement)
    await client.close()
    records = await wait_for_records(rs, lambda rs_: any(request_id_of(r) not in before for r in rs_))
    new = [request_id_of(r) for r in records if request_id_of(r) not in before]
    assert len(new) == 1
    return str(new[0]), result.status


async def test_trail_export_and_verify_detect_every_tampering(audited: RunningStack, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    rs = audited
    admin = rs.stack.trust_admin
    assert admin is not None
    for _ in range(3):
        _, status = await attested_request_id(rs)
        assert status == 200
    await admin.revoke("measurement", "ab" * 48, "test revocation", "tests")
    records = await wait_for_records(rs, lambda rs_: sum(r["kind"] == "admin" for r in rs_) >= 3)
    # The sample provisioning (reference value, resource) and the revocation, each by its actor.
    admin_events = [r["event"] for r in records if r["kind"] == "admin"]
    assert [e["action"] for e in admin_events][-1] == "put" and admin_events[-1]["collection"] == "revocations"
    assert {e["actor"] for e in admin_events} == {"tests"}
    assert sum(r["kind"] == "decision" for r in records) == 3
    assert [r["i"] for r in records] == list(range(1, len(records) + 1))

    exported = tmp_path / "export.jsonl"
    assert await cmd_audit_export(cli_args(rs, "audit", "export", str(exported))) == 0
    for _ in range(100):  # the stream gets each batch right after the file does
        await cmd_audit_export(cli_args(rs, "audit", "export", str(exported)))
        if len(exported.read_bytes().splitlines()) == len(trail(rs)):
            break
        await asyncio.sleep(0.05)
    assert exported.read_bytes() == rs.settings.audit_log_path.read_bytes()[: len(exported.read_bytes())]
    assert exported.read_bytes().splitlines() == rs.settings.audit_log_path.read_bytes().splitlines()

    assert await cmd_audit_verify(cli_args(rs, "audit", "verify", str(exported))) == 0
    assert "intact" in capsys.readouterr().out.lower()
    assert await cmd_audit_verify(cli_args(rs, "audit", "verify", "--stream")) == 0

    lines = exported.read_bytes().splitlines(keepends=True)
    altered = json.loads(lines[2])
    altered["event"]["status"] = "affirming" if altered["event"].get("status") != "affirming" else "warning"
    tampered = {
        "removed": [*lines[:2], *lines[3:]],
        "reordered": [lines[0], lines[2], lines[1], *lines[3:]],
        "altered": [*lines[:2], json.dumps(altered).encode() + b"\n", *lines[3:]],
    }
    reasons = {}
    for name, content in tampered.items():
        path = tmp_path / f"{name}.jsonl"
        path.write_bytes(b"".join(content))
        capsys.readouterr()
        assert await cmd_audit_verify(cli_args(rs, "audit", "verify", str(path))) == 1, name
        reasons[name] = capsys.readouterr().out
    assert "audit.gap" in reasons["removed"]
    assert "audit.reordered" in reasons["reordered"]
    assert "audit.hash_mismatch" in reasons["altered"] or "audit.bad_signature" in reasons["altered"]

    # The real command line, for its exit status: 1 for a tampered trail, 0 for the real one.
    env = {k: v for k, v in os.environ.items() if not k.startswith("REMITS_")}
    key = rs.settings.audit_key_path.with_name(rs.settings.audit_key_path.stem + ".pub.pem")
    for path, code in ((tmp_path / "removed.jsonl", 1), (exported, 0)):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.cli", "audit", "verify", str(path), "--key", str(key),
            cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == code, path


async def test_a_restart_resumes_the_chain_on_file_and_stream(tmp_path: Path) -> None:
    own = start_embedded(tmp_path / "infra")
    try:
        rs = await start_stack(own, tmp_path / "data")
        try:
            _, status = await attested_request_id(rs)
            assert status == 200
        finally:
            await rs.stack.stop()
            await rs.kds.stop()
        first = trail(rs)
        assert first[-1]["kind"] == "checkpoint"  # a clean stop seals the end
        again = await start_stack(own, tmp_path / "data", fresh=False)
        try:
            _, status = await attested_request_id(again)
            assert status == 200
            assert trail(again)[: len(first)] == first
            assert await cmd_audit_verify(cli_args(again, "audit", "verify", str(again.settings.audit_log_path))) == 0
            for _ in range(100):
                if await cmd_audit_verify(cli_args(again, "audit", "verify", "--stream")) == 0:
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("the audit stream's chain does not verify")
        finally:
            await again.stack.stop()
            await again.kds.stop()
    finally:
        own.stop()


async def test_replay_gives_the_same_decision_then_shows_a_policy_change(audited: RunningStack, capsys) -> None:  # type: ignore[no-untyped-def]
    rs = audited
    request_id, status = await attested_request_id(rs)
    assert status == 200
    capsys.readouterr()
    assert await cmd_audit_replay(cli_args(rs, "audit", "replay", request_id)) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["result"] == "same" and report["recorded"]["status"] == "affirming"
    assert report["policy"]["id"] == "attestation.sample" and report["policy"]["revision"] == 0
    # Which reference record the measurement matched is part of the decision's record.
    matched = report["recorded"]["provenance"]["references"]["measurement"]
    assert matched["status"] == "matched" and matched["record"].startswith("sample.measurement.")
    assert report["replayed"]["reference"]["measurement"] == matched

    admin = rs.stack.trust_admin
    assert admin is not None
    await admin.put_policy("attestation.sample", BLOCK_ALL, "tests")
    await rs.stack.trust_synced()
    # Against the configuration of its time, the decision stands; against today's, it would not.
    assert await cmd_audit_replay(cli_args(rs, "audit", "replay", request_id)) == 0
    assert json.loads(capsys.readouterr().out)["result"] == "same"
    assert await cmd_audit_replay(cli_args(rs, "audit", "replay", request_id, "--current")) == 1
    current = json.loads(capsys.readouterr().out)
    assert current["result"] == "different" and current["against"] == "current"
    assert current["replayed"] == {**current["replayed"], "status": "rejected", "reason": "policy.blocked_by_test"}
    assert current["policy"]["revision"] > 0

    # A rejection made under the new policy replays as that rejection.
    rejected_id, status = await attested_request_id(rs)
    assert status == 401
    assert await cmd_audit_replay(cli_args(rs, "audit", "replay", rejected_id)) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["recorded"] == {**again["recorded"], "status": "rejected", "reason": "policy.blocked_by_test"}
    assert await cmd_audit_replay(cli_args(rs, "audit", "replay", "no-such-request")) == 2


async def test_secret_plaintext_is_never_in_redis_streams_or_files(audited: RunningStack) -> None:
    rs = audited
    client, result = await attest(rs)
    assert result.status == 200
    fetched = await client.resource(RESOURCE)
    assert fetched.status == 200 and client.decrypt(fetched.body) == SECRET
    await client.close()
    await wait_for_records(rs, lambda records: any(r["kind"] == "decision" for r in records))
    forms = [SECRET, base64.b64encode(SECRET), base64.urlsafe_b64encode(SECRET).rstrip(b"="), SECRET.hex().encode()]

    def leaks(blob: bytes) -> bool:
        return any(form in blob for form in forms)

    # Redis, every key, as the operator.
    admin_creds = credentials.load(rs.infra.credentials_dir, credentials.ADMIN)
    redis = RespClient.from_url(admin_creds.redis_url(rs.infra.redis_base_url))
    keys = await redis.execute("KEYS", "*")
    assert keys, "the stack keeps sessions in Redis"
    for key in keys:
        dumped = await redis.execute("DUMP", key)
        assert not leaks(dumped or b""), key
    # Every message of every stream, the trust buckets' included.
    nc, js = await rs.infra.connect()
    try:
        streams = [info.config.name for info in await js.streams_info()]
        assert "KV_remits_resources" in streams
        for stream in streams:
            info = await js.stream_info(stream)
            for seq in range(info.state.first_seq, info.state.last_seq + 1):
                try:
                    msg = await js.get_msg(stream, seq)
                except Exception:  # deleted or purged: nothing to leak
                    continue
                assert not leaks(msg.data or b""), (stream, seq)
    finally:
        await nc.close()
    # The data directory: audit trail, keys, the embedded servers' files. (The logs are checked in
    # test_remits_up, where a real `remits up` logs at debug level.)
    for path in [*rs.settings.data_dir.rglob("*"), *(rs.infra.credentials_dir.parent).rglob("*")]:
        if path.is_file():
            assert not leaks(path.read_bytes()), path


async def test_demo_leaves_a_trail_that_export_and_verify_read_after_it_stopped(tmp_path: Path) -> None:
    """`remits demo --data-dir` keeps its trail; on the stopped stack's data directory, `audit
    export` starts the embedded NATS on its store and `audit verify` checks file and stream."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REMITS_")}
    data = tmp_path / "demo"

    async def remits(*argv: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.cli", *argv, cwd=ROOT, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(proc.communicate(), 120)
        return int(proc.returncode or 0), out.decode()

    code, out = await remits("demo", "--fleet", "12", "--bad", "3", "--data-dir", str(data))
    assert code == 0, out
    records = [json.loads(line) for line in (data / "audit.jsonl").read_bytes().splitlines()]
    assert sum(r["kind"] == "decision" for r in records) == 12 and records[-1]["kind"] == "checkpoint"
    exported = tmp_path / "export.jsonl"
    code, out = await remits("audit", "export", str(exported), "--data-dir", str(data))
    assert code == 0, out
    assert exported.read_bytes() == (data / "audit.jsonl").read_bytes()
    for source in (str(exported), "--stream"):
        code, out = await remits("audit", "verify", source, "--data-dir", str(data))
        assert code == 0 and "intact" in out, out
