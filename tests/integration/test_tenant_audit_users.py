"""Per-tenant audit readers: a team's NATS user follows its own tenant's decisions and admin events,
live and from its feed (the history it missed), and nothing else: a real nats-server, configured
from the rendered users, refuses it every other tenant's subjects and feed, and every publish."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import nats
import nats.errors
import pytest

from shared import credentials, schemas
from shared.embedded import ManagedServer, nats_server
from shared.tenants import BadTenant

REPO = Path(__file__).resolve().parents[2]
A_DECISION = "remits.decision.team-a.sample.affirming"
B_DECISION = "remits.decision.team-b.sample.affirming"
A_ADMIN = "remits.admin.team-a.policies"


def _users(directory: Path) -> list[dict[str, object]]:
    """The users of the rendered nats-authorization.conf (its values are JSON, one user a line)."""
    lines = (directory / "nats-authorization.conf").read_text().splitlines()
    return [json.loads(line.strip().rstrip(",")) for line in lines if line.strip().startswith("{")]


def _public(seed: Path) -> str:
    import nkeys

    return str(nkeys.from_seed(seed.read_bytes().strip()).public_key.decode())


# Unit: the permission block, names, the rendered configuration.


def test_permissions_allow_only_the_tenants_audit_subjects_and_no_publish() -> None:
    assert credentials.tenant_audit_permissions("team-a") == {
        "publish": {"deny": [">"]},
        "subscribe": {
            "allow": [
                "remits.decision.team-a.>", "remits.admin.team-a.>", "remits.audit-feed.team-a",
                "_INBOX_audit-tenant-team-a.>",
            ]
        },
    }  # fmt: skip
    allowed = credentials.tenant_audit_permissions("team-a")["subscribe"]["allow"]
    assert allowed[:2] == schemas.tenant_audit_subjects("team-a")
    # No response rights either: a reader answers nothing.
    assert "allow_responses" not in credentials.tenant_audit_permissions("team-a")


@pytest.mark.parametrize("bad", ["", "Team-A", "-a", "a.b", "a.>", "*", ">", "a b", "x" * 32, "../etc"])
def test_a_name_that_is_no_tenant_is_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(BadTenant):
        credentials.tenant_audit_permissions(bad)
    with pytest.raises(BadTenant):
        credentials.add_tenant_audit_reader(tmp_path / "creds", bad)
    with pytest.raises(BadTenant):
        credentials.remove_tenant_audit_reader(tmp_path / "creds", bad)
    assert not (tmp_path / "creds").exists()  # refused before anything was written


def test_readers_are_rendered_kept_and_removed_without_touching_the_components(tmp_path: Path) -> None:
    directory = tmp_path / "creds"
    credentials.ensure_credentials(directory)
    before = _users(directory)
    seed = credentials.add_tenant_audit_reader(directory, "team-a")
    assert seed == directory / "audit-tenant-team-a.nk"
    assert stat.S_IMODE(os.stat(seed).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(directory / "nats-authorization.conf").st_mode) == 0o644
    key = seed.read_bytes()
    again = credentials.add_tenant_audit_reader(directory, "team-a")
    assert again == seed and seed.read_bytes() == key  # the key is kept
    credentials.add_tenant_audit_reader(directory, "team-b")
    users = _users(directory)
    # Every component's user exactly as before (same keys, same rights), then the readers.
    assert users[: len(before)] == before and len(before) == len(credentials.COMPONENTS)
    assert users[len(before) :] == [
        {
            "nkey": _public(directory / f"audit-tenant-{t}.nk"),
            "permissions": credentials.tenant_audit_permissions(t),
        }
        for t in ("team-a", "team-b")
    ]
    # A reader is a NATS user only: no Redis user, no message key.
    assert len((directory / "redis-users.acl").read_text().splitlines()) == len(credentials.COMPONENTS)
    assert not list(directory.glob("audit-tenant-*.json"))
    # A component's full render (what `remits up` does) keeps the readers.
    credentials.ensure_credentials(directory)
    assert credentials.tenant_audit_readers(directory) == ["team-a", "team-b"]
    assert _users(directory) == users
    # A stray seed whose name is no tenant's never becomes a user.
    (directory / "audit-tenant-Not_A_Tenant.nk").write_bytes(key)
    credentials.render_server_config(directory)
    assert _users(directory) == users
    assert credentials.remove_tenant_audit_reader(directory, "team-a") is True
    assert credentials.remove_tenant_audit_reader(directory, "team-a") is False
    assert not seed.exists()
    assert _users(directory) == [*before, users[-1]]
    # Per-component export: each reader alone in its own directory, the servers' users with it.
    split = tmp_path / "split"
    credentials.export_per_component(directory, split)
    assert sorted(p.name for p in (split / "audit-tenant-team-b").iterdir()) == ["audit-tenant-team-b.nk"]
    assert stat.S_IMODE(os.stat(split / "audit-tenant-team-b" / "audit-tenant-team-b.nk").st_mode) == 0o600
    assert _users(split / "servers") == _users(directory)


# Integration: a real nats-server with the rendered users.


@pytest.fixture
def audit_server(tmp_path: Path) -> Iterator[tuple[ManagedServer, Path]]:
    directory = tmp_path / "creds"
    credentials.ensure_credentials(directory)
    for tenant in ("team-a", "team-b"):
        credentials.add_tenant_audit_reader(directory, tenant)
    server = nats_server(tmp_path, credentials_dir=directory)
    server.start()
    yield server, directory
    server.stop()


@dataclass
class Reader:
    nc: nats.NATS
    received: list[tuple[str, bytes]] = field(default_factory=list)
    errors: list[Exception] = field(default_factory=list)

    def denied(self, operation: str) -> list[str]:
        """The subjects the server refused this reader (nats-py reports them lower-cased)."""
        prefix = f"nats: permissions violation for {operation} to "
        return [str(e)[len(prefix) :].strip('"') for e in self.errors if str(e).lower().startswith(prefix)]

    async def subscribe(self, subject: str) -> None:
        async def on_message(msg: nats.aio.msg.Msg) -> None:
            self.received.append((msg.subject, msg.data))

        await self.nc.subscribe(subject, cb=on_message)


async def _connect_reader(server: ManagedServer, directory: Path, tenant: str) -> Reader:
    reader: Reader

    async def on_error(error: Exception) -> None:
        reader.errors.append(error)

    nc = await nats.connect(
        f"nats://127.0.0.1:{server.port}",
        nkeys_seed=str(credentials.tenant_audit_seed(directory, tenant)),
        inbox_prefix=credentials.inbox_prefix(credentials.tenant_audit_user(tenant)),
        error_cb=on_error, max_reconnect_attempts=0,
    )  # fmt: skip
    reader = Reader(nc)
    return reader


async def _wait_for(condition: Callable[[], object], timeout_s: float = 5.0) -> None:
    for _ in range(int(timeout_s / 0.05)):
        if condition():
            return
        await asyncio.sleep(0.05)


@pytest.mark.integration
async def test_each_team_reads_its_own_tenants_audit_events_only(
    audit_server: tuple[ManagedServer, Path],
) -> None:
    server, directory = audit_server
    a = await _connect_reader(server, directory, "team-a")
    b = await _connect_reader(server, directory, "team-b")
    admin = await nats.connect(
        f"nats://127.0.0.1:{server.port}", nkeys_seed=str(directory / "admin.nk"),
        inbox_prefix=credentials.inbox_prefix(credentials.ADMIN), max_reconnect_attempts=0,
    )  # fmt: skip
    try:
        for reader, tenant in ((a, "team-a"), (b, "team-b")):
            for subject in schemas.tenant_audit_subjects(tenant):
                await reader.subscribe(subject)
        # Another tenant's decisions, every tenant's, any tenant's by wildcard: all refused.
        refused = [
            "remits.decision.team-b.>",
            "remits.decision.>",
            "remits.decision.*.sample.affirming",
            "remits.>",
        ]
        for subject in refused:
            await a.subscribe(subject)
        # Nor may a reader publish, even on its own tenant's subjects (it cannot forge an event).
        await a.nc.publish(A_DECISION, b"forged by team-a")
        for reader in (a, b):
            await reader.nc.flush(timeout=5)
        await _wait_for(lambda: len(a.denied("subscription")) == len(refused) and a.denied("publish"))
        assert all(isinstance(e, nats.errors.Error) for e in a.errors)
        assert all("permissions violation" in str(e).lower() for e in a.errors), a.errors
        assert sorted(a.denied("subscription")) == sorted(s.lower() for s in refused)
        assert a.denied("publish") == [A_DECISION]
        assert b.errors == []

        # The operator (admin may publish anything) publishes as decide and provision would.
        await admin.publish(A_DECISION, b"decision a")
        await admin.publish(B_DECISION, b"decision b")
        await admin.publish(A_ADMIN, b"admin a")
        await admin.flush(timeout=5)
        await _wait_for(lambda: len(a.received) >= 2 and len(b.received) >= 1)
        await asyncio.sleep(0.3)  # anything that should not arrive has had its chance to
        assert sorted(a.received) == sorted([(A_DECISION, b"decision a"), (A_ADMIN, b"admin a")])
        assert b.received == [(B_DECISION, b"decision b")]
        assert a.nc.is_connected and b.nc.is_connected  # refusals do not cost the connection
    finally:
        for nc in (a.nc, b.nc, admin):
            await nc.close()


@pytest.mark.integration
async def test_a_removed_reader_is_refused_by_a_server_rendered_after(tmp_path: Path) -> None:
    directory = tmp_path / "creds"
    credentials.ensure_credentials(directory)
    seed = credentials.add_tenant_audit_reader(directory, "team-a")
    kept = tmp_path / "kept.nk"
    kept.write_bytes(seed.read_bytes())
    credentials.remove_tenant_audit_reader(directory, "team-a")
    server = nats_server(tmp_path, credentials_dir=directory)
    server.start()
    try:
        with pytest.raises(Exception, match=r"(?i)authorization"):
            await nats.connect(
                f"nats://127.0.0.1:{server.port}", nkeys_seed=str(kept), max_reconnect_attempts=0,
                allow_reconnect=False, connect_timeout=5,
            )  # fmt: skip
    finally:
        server.stop()


def _remits(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli", "creds", *args],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_remits_creds_tenant_audit(tmp_path: Path) -> None:
    out = tmp_path / "creds"
    run = _remits("--out", str(out), "--tenant-audit", "team-a")
    assert run.returncode == 0, run.stderr
    seed = out / "audit-tenant-team-a.nk"
    assert stat.S_IMODE(os.stat(seed).st_mode) == 0o600
    users = _users(out)
    assert {"nkey": _public(seed), "permissions": credentials.tenant_audit_permissions("team-a")} in users
    assert len(users) == len(credentials.COMPONENTS) + 1
    # The existing report first, unchanged; then where the seed is and what it may read.
    assert run.stdout.startswith(
        f"credentials in {out}\n  nats-server: include {out / 'nats-authorization.conf'}"
    )
    assert str(seed) in run.stdout
    assert "remits.decision.team-a.>, remits.admin.team-a.>" in run.stdout
    # Repeatable, and a second run keeps the first reader's key.
    key = seed.read_bytes()
    run = _remits("--out", str(out), "--tenant-audit", "team-a", "--tenant-audit", "team-b")
    assert run.returncode == 0, run.stderr
    assert seed.read_bytes() == key and credentials.tenant_audit_readers(out) == ["team-a", "team-b"]
    # A name that is no tenant's is refused before anything is written.
    bad = tmp_path / "bad"
    run = _remits("--out", str(bad), "--tenant-audit", "team-a", "--tenant-audit", "remits.decision.>")
    assert run.returncode == 2 and "no tenant name" in run.stderr
    assert not bad.exists()
    # Per component: the team's seed alone in its own directory, the user in servers/.
    split = tmp_path / "split"
    run = _remits("--out", str(split), "--per-component", "--tenant-audit", "team-a")
    assert run.returncode == 0, run.stderr
    handed = split / "audit-tenant-team-a" / "audit-tenant-team-a.nk"
    assert stat.S_IMODE(os.stat(handed).st_mode) == 0o600 and str(handed) in run.stdout
    assert any(u["nkey"] == _public(handed) for u in _users(split / "servers"))


@pytest.mark.integration
async def test_each_team_gets_the_history_it_missed_from_its_own_feed(
    audit_server: tuple[ManagedServer, Path],
) -> None:
    """The operator's topology creates one feed per reader in its credentials directory. A reader
    that connects late gets its tenant's events from the start of the stream, in order; after a
    disconnection, only what it missed. It cannot read another feed, ack, or create consumers: it
    publishes nothing, so no reply subject of its can have the server write anywhere."""
    from shared import tenant_feeds
    from shared.bus import ensure_topology
    from shared.config import Settings

    server, directory = audit_server
    admin = await nats.connect(
        f"nats://127.0.0.1:{server.port}", nkeys_seed=str(directory / "admin.nk"),
        inbox_prefix=credentials.inbox_prefix(credentials.ADMIN), max_reconnect_attempts=0,
    )  # fmt: skip
    js = admin.jetstream()
    readers: list[Reader] = []
    try:
        await ensure_topology(js, Settings(credentials_dir=directory))
        for tenant in ("team-a", "team-b"):
            info = await js.consumer_info(schemas.DECISION_STREAM, tenant_feeds.durable(tenant))
            assert info.config.deliver_subject == f"remits.audit-feed.{tenant}"
            assert info.config.filter_subjects == schemas.tenant_audit_subjects(tenant)
        for subject, data in ((A_DECISION, b"a1"), (B_DECISION, b"b1"), (A_ADMIN, b"a-admin")):
            await js.publish(subject, data)  # before any reader is connected

        a = await _connect_reader(server, directory, "team-a")
        b = await _connect_reader(server, directory, "team-b")
        readers += [a, b]
        await a.subscribe(tenant_feeds.subject("team-a"))
        await b.subscribe(tenant_feeds.subject("team-b"))
        await _wait_for(lambda: len(a.received) >= 2 and len(b.received) >= 1)
        assert a.received == [(A_DECISION, b"a1"), (A_ADMIN, b"a-admin")]  # stream order
        assert b.received == [(B_DECISION, b"b1")]

        # Away, then back: only what it missed. (Once the server has seen the reader go: an event
        # it sends while it still believes the reader there is not sent again, at most once.)
        await a.nc.close()

        async def unbound() -> bool:
            info = await js.consumer_info(schemas.DECISION_STREAM, tenant_feeds.durable("team-a"))
            return not info.push_bound

        for _ in range(100):
            if await unbound():
                break
            await asyncio.sleep(0.05)
        assert await unbound()
        await js.publish("remits.decision.team-a.sample.rejected", b"a2")
        await js.publish(B_DECISION, b"b2")
        a = await _connect_reader(server, directory, "team-a")
        readers.append(a)
        await a.subscribe(tenant_feeds.subject("team-a"))
        await _wait_for(lambda: len(a.received) >= 1 and len(b.received) >= 2)

        # Everything else refused: another feed, consumer creation, a pull, an ack with a reply
        # subject aimed at another tenant's decisions (the server would have answered it there).
        spied: list[bytes] = []

        async def spy(msg: nats.aio.msg.Msg) -> None:
            spied.append(msg.data)

        await admin.subscribe("remits.decision.team-b.>", cb=spy)
        await a.subscribe(tenant_feeds.subject("team-b"))
        forbidden = [
            f"$JS.API.CONSUMER.CREATE.{schemas.DECISION_STREAM}",
            f"$JS.API.CONSUMER.MSG.NEXT.{schemas.DECISION_STREAM}.{tenant_feeds.durable('team-b')}",
            f"$JS.ACK.{schemas.DECISION_STREAM}.{tenant_feeds.durable('team-a')}.1.1.1.1.0",
        ]
        for subject in forbidden:
            await a.nc.publish(subject, b"+ACK", reply=B_DECISION)
        await a.nc.flush(timeout=5)
        await _wait_for(lambda: len(a.denied("publish")) == len(forbidden) and a.denied("subscription"))
        await asyncio.sleep(0.3)
        assert a.received == [("remits.decision.team-a.sample.rejected", b"a2")]
        assert b.received == [(B_DECISION, b"b1"), (B_DECISION, b"b2")]
        assert sorted(a.denied("publish")) == sorted(s.lower() for s in forbidden)
        assert a.denied("subscription") == ["remits.audit-feed.team-b"]
        assert spied == []  # nothing reached team-b's subjects on team-a's behalf
        stream = await js.stream_info(schemas.DECISION_STREAM)
        assert stream.state.messages == 5

        # The operator drops a feed whose reader is gone.
        assert await tenant_feeds.drop(js, "team-b") is True
        assert await tenant_feeds.drop(js, "team-b") is False
    finally:
        for reader in readers:
            await reader.nc.close()
        await admin.close()


@pytest.mark.integration
async def test_remits_setup_creates_and_drops_a_tenants_feed(infra) -> None:  # type: ignore[no-untyped-def]
    from shared import tenant_feeds

    env = {k: v for k, v in os.environ.items() if not k.startswith("REMITS_")}

    def setup(*args: str, feeds: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "services.cli", "setup", "--nats", infra.nats_url,
             "--credentials-dir", str(infra.credentials_dir), *args],
            cwd=REPO, env={**env, "REMITS_TENANT_AUDIT_FEEDS": feeds}, capture_output=True, text=True,
            timeout=60, check=False,
        )  # fmt: skip

    run = await asyncio.to_thread(setup, "--tenant-audit", "team-z")
    assert run.returncode == 0, run.stderr
    assert "audit feed audit-tenant-team-z ready" in run.stdout
    nc, js = await infra.connect()
    try:
        info = await js.consumer_info(schemas.DECISION_STREAM, "audit-tenant-team-z")
        assert info.config.deliver_subject == tenant_feeds.subject("team-z")
        run = await asyncio.to_thread(setup, "--drop-tenant-audit", "team-z")
        assert run.returncode == 0 and "audit feed audit-tenant-team-z deleted" in run.stdout, run.stderr
        with pytest.raises(nats.js.errors.NotFoundError):
            await js.consumer_info(schemas.DECISION_STREAM, "audit-tenant-team-z")
    finally:
        await nc.close()
    run = await asyncio.to_thread(setup, "--tenant-audit", "remits.decision.>")
    assert run.returncode == 2 and "--tenant-audit" in run.stderr
    # The Kubernetes setup Job names them in REMITS_TENANT_AUDIT_FEEDS (from make-secrets.sh).
    run = await asyncio.to_thread(setup, feeds="team-y, team-w")
    assert run.returncode == 0, run.stderr
    assert "audit feed audit-tenant-team-y ready" in run.stdout and "audit-tenant-team-w ready" in run.stdout
    run = await asyncio.to_thread(setup, "--drop-tenant-audit", "team-y", "--drop-tenant-audit", "team-w")
    assert run.returncode == 0 and run.stdout.count("deleted") == 2, run.stdout
    run = await asyncio.to_thread(setup, feeds="team-y,Bad.Name")
    assert run.returncode == 2 and "REMITS_TENANT_AUDIT_FEEDS" in run.stderr


def test_feed_positions_and_gaps_come_from_the_reply_subject() -> None:
    from services.cli.audit import feed_lines
    from shared import tenant_feeds

    ack = f"$JS.ACK.{schemas.DECISION_STREAM}.audit-tenant-team-a"
    assert tenant_feeds.delivery(f"{ack}.1.7.3.1796103835817892996.4", "team-a") == tenant_feeds.Delivery(7, 3, 4)
    newer = f"$JS.ACK.hub.ACCHASH.{schemas.DECISION_STREAM}.audit-tenant-team-a.1.7.3.1796103835817892996.4.xyz"
    assert tenant_feeds.delivery(newer, "team-a") == tenant_feeds.Delivery(7, 3, 4)
    not_this_feed = (
        "", "_INBOX.x", f"{ack}.1.7.3.1", f"{ack}.1.x.3.1.4",
        f"$JS.ACK.{schemas.DECISION_STREAM}.audit-tenant-team-b.1.7.3.1.4",
        "$JS.ACK.OTHER_STREAM.audit-tenant-team-a.1.7.3.1.4",
    )  # fmt: skip
    assert [tenant_feeds.delivery(reply, "team-a") for reply in not_this_feed] == [None] * len(not_this_feed)

    lines, last = feed_lines("team-a", A_DECISION, f"{ack}.1.9.1.5.2", b'{"status": "affirming"}', 0)
    assert (lines, last) == ([{"subject": A_DECISION, "stream_seq": 9, "consumer_seq": 1, "event": {"status": "affirming"}}], 1)
    lines, last = feed_lines("team-a", A_ADMIN, f"{ack}.1.20.4.5.0", b"\x00not json", last)
    assert lines == [
        {"missed": 2, "after_consumer_seq": 1},
        {"subject": A_ADMIN, "stream_seq": 20, "consumer_seq": 4, "event": {"base64": "AG5vdCBqc29u"}},
    ]
    assert last == 4
    assert feed_lines("team-a", B_DECISION, "$JS.ACK.other", b"{}", 4) == ([{"ignored": B_DECISION}], 4)


@pytest.mark.integration
async def test_remits_audit_feed_prints_a_teams_history_as_json_lines(
    audit_server: tuple[ManagedServer, Path],
) -> None:
    from shared.bus import ensure_topology
    from shared.config import Settings

    server, directory = audit_server
    admin = await nats.connect(
        f"nats://127.0.0.1:{server.port}", nkeys_seed=str(directory / "admin.nk"),
        inbox_prefix=credentials.inbox_prefix(credentials.ADMIN), max_reconnect_attempts=0,
    )  # fmt: skip
    try:
        js = admin.jetstream()
        await ensure_topology(js, Settings(credentials_dir=directory))
        await js.publish(A_DECISION, b'{"request_id": "r1", "status": "affirming"}')
        await js.publish(B_DECISION, b'{"request_id": "b1"}')
        await js.publish(A_ADMIN, b'{"collection": "policies"}')
    finally:
        await admin.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("REMITS_")}
    run = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "services.cli", "audit", "feed", "team-a", "--nats", f"nats://127.0.0.1:{server.port}",
         "--seed", str(credentials.tenant_audit_seed(directory, "team-a")), "--idle-exit", "1"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    lines = [json.loads(line) for line in run.stdout.splitlines()]
    assert lines == [
        {"subject": A_DECISION, "stream_seq": 1, "consumer_seq": 1, "event": {"request_id": "r1", "status": "affirming"}},
        {"subject": A_ADMIN, "stream_seq": 3, "consumer_seq": 2, "event": {"collection": "policies"}},
    ]
