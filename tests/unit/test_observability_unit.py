"""The metrics module, its HTTP surface, the metrics settings, and OTLP trace export (to a local
HTTP server standing in for a collector)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from prometheus_client import REGISTRY as DEFAULT_REGISTRY

from shared import observability, schemas
from shared.bus import _is_rejection
from shared.config import Settings

ROOT = Path(__file__).resolve().parents[2]
META = schemas.RequestMeta(request_id="r1", tee="sample", reply_to="", submitted_at=1.0, session_id="s")


def sample(name: str, **labels: str) -> float:
    value = observability.REGISTRY.get_sample_value(name, labels)
    return value or 0.0


def test_rejection_reasons_are_bounded() -> None:
    assert observability.reason_label("endorsement.not_found") == "endorsement.not_found"
    assert (
        observability.reason_label("pipeline.max_deliveries_exceeded") == "pipeline.max_deliveries_exceeded"
    )
    for odd in ("", "nodots", "Has.Upper", "bus.undecodable: garbage follows", "x." + "a" * 80):
        assert observability.reason_label(odd) == "other"
    before = sample("remits_rejections_total", reason="other")
    observability.decision("sample", "rejected", "free text from somewhere")
    assert sample("remits_rejections_total", reason="other") == before + 1


def test_decisions_count_rejections_only_for_rejected() -> None:
    affirming = sample("remits_decisions_total", tee="sample", status="affirming")
    rejections = sample("remits_rejections_total", reason="nonce.replayed")
    observability.decision("sample", "affirming", "")
    observability.decision("sample", "rejected", "nonce.replayed")
    assert sample("remits_decisions_total", tee="sample", status="affirming") == affirming + 1
    assert sample("remits_rejections_total", reason="nonce.replayed") == rejections + 1


def test_vendor_answers_are_grouped() -> None:
    expected = {200: "200", 404: "404", 429: "429", 403: "4xx", 503: "5xx", None: "error"}
    for status, label in expected.items():
        before = sample("remits_vendor_fetches_total", status=label)
        observability.vendor_fetch(status)
        assert sample("remits_vendor_fetches_total", status=label) == before + 1


def test_metrics_stay_out_of_the_default_registry() -> None:
    observability.stage_done("intake", "ok", 0.01)
    assert (
        DEFAULT_REGISTRY.get_sample_value("remits_stage_messages_total", {"stage": "intake", "outcome": "ok"})
        is None
    )
    assert sample("remits_stage_messages_total", stage="intake", outcome="ok") >= 1
    assert sample("remits_stage_seconds_count", stage="intake") >= 1


def test_stage_outputs_that_reject() -> None:
    assert _is_rejection(schemas.Rejection(meta=META, stage="intake", reason="nonce.replayed"))
    assert _is_rejection(schemas.Decision(meta=META, status="rejected", decided_at=1.0))
    assert not _is_rejection(schemas.Decision(meta=META, status="affirming", decided_at=1.0, token="t"))
    assert not _is_rejection(
        schemas.VerifiedEvidence(meta=META, runtime_data_claims={}, claims={}, evidence=b"x")
    )


def test_metrics_settings_from_the_environment(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    assert (Settings().metrics_host, Settings().metrics_port) == ("127.0.0.1", 0)
    monkeypatch.setenv("REMITS_METRICS_PORT", "9464")
    monkeypatch.setenv("REMITS_METRICS_HOST", "0.0.0.0")
    settings = Settings.from_env()
    assert (settings.metrics_host, settings.metrics_port) == ("0.0.0.0", 9464)
    assert Settings.from_env(metrics_port=9000).metrics_port == 9000


async def test_probe_routes_answer() -> None:
    failing: list[str] = []

    async def readiness() -> list[str]:
        return list(failing)

    app = web.Application()
    app.add_routes(observability.routes(readiness))
    async with TestClient(TestServer(app)) as client:
        resp = await client.get("/metrics")
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain")
        assert "remits_stage_messages_total" in await resp.text()
        resp = await client.get("/healthz")
        assert (resp.status, await resp.json()) == (200, {"status": "alive"})
        resp = await client.get("/readyz")
        assert (resp.status, await resp.json()) == (200, {"status": "ready"})
        failing.extend(["nats", "redis"])
        resp = await client.get("/readyz")
        assert (resp.status, await resp.json()) == (
            503,
            {"status": "not_ready", "failing": ["nats", "redis"]},
        )


async def test_metrics_server_binds_and_stops() -> None:
    async def ready() -> list[str]:
        return []

    server = observability.MetricsServer(ready)
    await server.start("127.0.0.1", 0)
    try:
        assert server.port > 0
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = await reader.read()
        writer.close()
        assert answer.startswith(b"HTTP/1.1 200") and b'"alive"' in answer
    finally:
        await server.stop()


async def test_answers_within_times_out() -> None:
    async def slow() -> None:
        await asyncio.sleep(5)

    async def fails() -> None:
        raise ConnectionError("down")

    async def fine() -> str:
        return "PONG"

    assert not await observability.answers_within(slow, 0.05)
    assert not await observability.answers_within(fails, 1)
    assert await observability.answers_within(fine, 1)


_TRACE_SCRIPT = """
from shared.telemetry import configure_tracing, tracer, tracing_enabled
provider = configure_tracing("remits-otlp-test", sample_ratio=1.0)
print("exporting" if tracing_enabled() else "off", flush=True)
with tracer().start_as_current_span("remits.test.span"):
    pass
provider.shutdown()
"""


async def _run_tracing(env: dict[str, str]) -> str:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("REMITS_", "OTEL_"))}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _TRACE_SCRIPT, cwd=ROOT, env={**base, **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    return out.decode().strip()


async def test_otlp_export_when_the_endpoint_is_set() -> None:
    received: list[tuple[str, str, bytes]] = []

    async def collect(request: web.Request) -> web.Response:
        received.append((request.path, request.content_type, await request.read()))
        return web.Response(body=b"", content_type="application/x-protobuf")

    app = web.Application()
    app.add_routes([web.post("/v1/traces", collect)])
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        assert await _run_tracing({"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}"}) == "exporting"
    finally:
        await runner.cleanup()
    assert len(received) == 1
    path, content_type, body = received[0]
    assert (path, content_type) == ("/v1/traces", "application/x-protobuf")
    request = ExportTraceServiceRequest.FromString(body)
    spans = [span for rs in request.resource_spans for ss in rs.scope_spans for span in ss.spans]
    assert [span.name for span in spans] == ["remits.test.span"]
    service = {a.key: a.value.string_value for rs in request.resource_spans for a in rs.resource.attributes}[
        "service.name"
    ]
    assert service == "remits-otlp-test"


async def test_no_exporter_without_the_endpoint() -> None:
    assert await _run_tracing({}) == "off"
