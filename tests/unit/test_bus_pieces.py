"""Small pure pieces of the bus and cache layers: ACK subjects, the TTL cache, trace sampling."""

from __future__ import annotations

import pytest

from shared import telemetry
from shared.bus import ack_fields
from shared.cache import TtlCache


def test_ack_fields_in_both_subject_forms() -> None:
    # $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<ns>.<pending>
    assert ack_fields("$JS.ACK.REMITS_PIPELINE.identity.2.1234.99.1700000000000000000.7") == (2, 1234, 1700000000000000000)
    # With a domain and an account hash (and a trailing token), as newer servers send them.
    v2 = "$JS.ACK.hub.ACCHASH.REMITS_PIPELINE.identity.3.55.9.1700000000000000001.0.xyz"
    assert ack_fields(v2) == (3, 55, 1700000000000000001)
    for bad in ("_INBOX.abc", "$JS.ACK.a.b.c", ""):
        with pytest.raises(ValueError):
            ack_fields(bad)


def test_ttl_cache_expires_and_evicts_least_recent(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    cache: TtlCache[str, int] = TtlCache(max_entries=2)
    monkeypatch.setattr(cache, "_now", lambda: now[0])
    cache.put("a", 1, ttl_s=10)
    cache.put("b", 2, ttl_s=1)
    cache.put("never", 0, ttl_s=0)  # nothing to keep
    assert cache.get("a") == 1 and cache.get("b") == 2 and cache.get("never") is None
    now[0] = 101.5
    assert cache.get("b") is None and cache.get("a") == 1
    cache.put("c", 3, ttl_s=10)
    cache.get("a")  # "a" is now the most recent
    cache.put("d", 4, ttl_s=10)
    assert cache.get("c") is None and cache.get("a") == 1 and cache.get("d") == 4 and len(cache) == 2


def test_sampled_flag_is_read_from_traceparent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(telemetry, "_exporting", True)
    trace_id, span_id = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    assert telemetry.is_sampled({"traceparent": f"00-{trace_id}-{span_id}-01"})
    assert telemetry.is_sampled({"traceparent": f"00-{trace_id}-{span_id}-03"})  # sampled + random
    assert not telemetry.is_sampled({"traceparent": f"00-{trace_id}-{span_id}-00"})
    assert not telemetry.is_sampled({"traceparent": f"00-{trace_id}-{span_id}-zz"})
    assert not telemetry.is_sampled({}) and not telemetry.is_sampled(None)
    monkeypatch.setattr(telemetry, "_exporting", False)
    assert not telemetry.is_sampled({"traceparent": f"00-{trace_id}-{span_id}-01"})


def test_route_header_round_trip() -> None:
    from shared.bus import ROUTE_HEADER, parse_route, route_header

    assert parse_route({ROUTE_HEADER: route_header("abc123", "snp", "remits.outcome.gw1")}) == ("abc123", "snp", "remits.outcome.gw1")
    assert parse_route({ROUTE_HEADER: route_header("abc123")}) == ("abc123", "", "")
    assert parse_route({}) == ("", "", "") and parse_route(None) == ("", "", "")
