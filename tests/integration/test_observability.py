"""Metrics, probes and a worker's SIGTERM drain, against real NATS and Redis started here (an own
infrastructure per test, so that Redis can be stopped and started again)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.runtime import Stack
from shared import schemas
from shared.embedded import free_port, start_embedded
from tests.conftest import publisher_as, stack_settings, start_stack
from tests.integration.test_reliability import attest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(base_url: str) -> Samples:
    async with aiohttp.ClientSession() as http, http.get(f"{base_url}/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def delta(after: Samples, before: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


async def probe(base_url: str, path: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    async with aiohttp.ClientSession() as http, http.get(f"{base_url}{path}") as resp:
        return resp.status, await resp.json()


async def until(check, timeout_s: float, step_s: float = 0.1):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while True:
        result = await check()
        if result or time.monotonic() > deadline:
            return result
        await asyncio.sleep(step_s)


async def test_gateway_metrics_and_readiness_follow_attestations_and_redis(tmp_path: Path) -> None:
    infra = await asyncio.to_thread(start_embedded, tmp_path / "infra")
    rs = await start_stack(infra, tmp_path / "data")
    try:
        before = await scrape(rs.url)
        known, other, unknown = rs.enroll(), rs.enroll(), rs.enroll(register=False)
        statuses = [(await attest(rs, device))[1] for device in (known, known, other, unknown, unknown)]
        assert statuses == [200, 200, 200, 401, 401]
        after = await scrape(rs.url)

        assert delta(after, before, "remits_decisions_total", tee="sample", status="affirming") == 3
        assert delta(after, before, "remits_decisions_total", tee="sample", status="rejected") == 2
        assert delta(after, before, "remits_rejections_total", reason="endorsement.not_found") == 2
        for stage in schemas.STAGES:
            handled = sum(
                delta(after, before, "remits_stage_messages_total", stage=stage, outcome=outcome)
                for outcome in ("ok", "rejected", "error")
            )
            assert handled >= 3, stage
            assert delta(after, before, "remits_stage_seconds_count", stage=stage) == handled
        assert delta(after, before, "remits_stage_messages_total", stage="endorse", outcome="rejected") == 2
        assert delta(after, before, "remits_stage_messages_total", stage="intake", outcome="error") == 0
        # The second attestation of `known` (and of `unknown`: a cached "not found") hit the cache.
        assert delta(after, before, "remits_endorsement_cache_total", result="hit") >= 2
        assert delta(after, before, "remits_endorsement_cache_total", result="miss") >= 3
        assert delta(after, before, "remits_vendor_fetches_total", status="200") >= 2
        assert delta(after, before, "remits_vendor_fetches_total", status="404") >= 1
        # Every stage's lag gauges exist (read at start, then every few seconds).
        for stage in ("intake", "endorse", "identity", "measure", "decide"):
            labels = {"stream": schemas.PIPELINE_STREAM, "consumer": stage}
            assert ("remits_consumer_pending", frozenset(labels.items())) in after
            assert ("remits_consumer_ack_pending", frozenset(labels.items())) in after
        # The audit consumer too: its lag, and its decisions counted as a stage's messages.
        audit = frozenset({"stream": schemas.DECISION_STREAM, "consumer": "audit"}.items())
        assert ("remits_consumer_pending", audit) in after and ("remits_consumer_ack_pending", audit) in after
        assert await until(
            lambda: _audit_counted(rs.url, before), 10
        ), "the audit consumer's messages were not counted"
        assert rs.stack.audit_bound.is_set()
        # Stats over NATS (`remits bench`) still collected as before.
        assert rs.stack.runners["decide"]._times.processed >= 5

        assert await probe(rs.url, "/healthz") == (200, {"status": "alive"})
        assert await probe(rs.url, "/readyz") == (200, {"status": "ready"})

        await asyncio.to_thread(infra.redis.stop)
        status, body = await until(lambda: _not_ready(rs.url), 10)
        assert status == 503, body
        assert body["status"] == "not_ready" and "redis" in body["failing"] and "nats" not in body["failing"]
        assert await probe(rs.url, "/healthz") == (200, {"status": "alive"})
        errors = await scrape(rs.url)
        assert delta(errors, after, "remits_dependency_errors_total", dependency="redis") >= 1

        await asyncio.to_thread(infra.redis.start)
        assert await until(lambda: _ready(rs.url), 15), "not ready again after Redis came back"
    finally:
        await rs.stack.stop()
        await rs.kds.stop()
        infra.stop()


async def _not_ready(url: str) -> tuple[int, dict] | None:  # type: ignore[type-arg]
    status, body = await probe(url, "/readyz")
    return (status, body) if status == 503 else None


async def _ready(url: str) -> bool:
    return (await probe(url, "/readyz"))[0] == 200


async def _audit_counted(url: str, before: Samples) -> bool:
    now = await scrape(url)
    return delta(now, before, "remits_stage_messages_total", stage="audit", outcome="ok") >= 5


async def test_worker_serves_probes_and_drains_on_sigterm(tmp_path: Path) -> None:
    infra = await asyncio.to_thread(start_embedded, tmp_path / "infra")
    settings = stack_settings(infra, tmp_path / "data")
    admin = Stack(settings, components=())  # the operator: streams, consumers and trust buckets
    await admin.start()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REMITS_", "OTEL_"))}
    log = open(tmp_path / "worker.log", "wb")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.cli", "worker", "identity",
        "--nats", infra.nats_url, "--redis", infra.redis_base_url,
        "--credentials-dir", str(infra.credentials_dir), "--data-dir", str(settings.data_dir),
        "--metrics-port", str(port),
        cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=log,
    )  # fmt: skip
    nc, publisher = await publisher_as(infra, "endorse")
    try:
        assert proc.stdout is not None
        lines = []
        while not lines or not lines[-1].startswith("REMITS worker ready"):
            line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
            assert line, (tmp_path / "worker.log").read_text()
            lines.append(line)
        assert f"REMITS metrics at http://127.0.0.1:{port}/metrics\n" in lines
        base = f"http://127.0.0.1:{port}"
        assert await probe(base, "/healthz") == (200, {"status": "alive"})
        assert await probe(base, "/readyz") == (200, {"status": "ready"})
        samples = await scrape(base)
        labels = frozenset({"stream": schemas.PIPELINE_STREAM, "consumer": "identity"}.items())
        assert ("remits_consumer_pending", labels) in samples
        assert any(name == "process_cpu_seconds_total" for name, _ in samples)

        # A message the worker holds when SIGTERM arrives: it is finished, published and acked.
        meta = schemas.RequestMeta(
            request_id="drain-1", tee="sample", reply_to="", submitted_at=time.time(), session_id="s"
        )
        message = schemas.EndorsedEvidence(
            meta=meta, runtime_data_claims={}, evidence=b"not evidence", endorsement_key="ab",
            endorsement=[b"not a certificate"], endorsement_source="cache",
        )  # fmt: skip
        from shared.bus import Publish

        await publisher.send(
            Publish(schemas.stage_subject("identity"), message, "drain-1:endorse"), "drain-1"
        )
        js = admin.js

        async def delivered() -> bool:
            info = await js.consumer_info(schemas.PIPELINE_STREAM, "identity")
            return info.delivered.stream_seq >= 1

        assert await until(delivered, 10, 0.005)
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        assert await asyncio.wait_for(proc.wait(), 15) == 0
        assert time.monotonic() - started < 8

        info = await js.consumer_info(schemas.PIPELINE_STREAM, "identity")
        assert info.num_ack_pending == 0 and info.num_pending == 0 and info.num_redelivered == 0
        assert info.ack_floor.stream_seq == info.delivered.stream_seq
        # Exactly one output, from this one delivery (its de-duplication id names the request).
        out = await js.stream_info(schemas.PIPELINE_STREAM, subjects_filter="remits.stage.decide.>")
        assert sum((out.state.subjects or {}).values()) == 1
        stored = await js.get_last_msg(schemas.PIPELINE_STREAM, schemas.REJECTION_SUBJECT)
        assert (stored.headers or {}).get("Nats-Msg-Id") == "drain-1:identity"
        assert schemas.decode_stage(stored.data).meta.request_id == "drain-1"  # type: ignore[union-attr]
        log.flush()
        stopped = [
            line for line in (tmp_path / "worker.log").read_text().splitlines() if "stage.stopped" in line
        ]
        assert len(stopped) == 1 and '"processed": 1' in stopped[0], stopped
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        log.close()
        await publisher.stop()
        await nc.close()
        await admin.stop()
        infra.stop()
