"""The operator's commands (`remits policy|refval|resource|revoke|kek|admin`) against a running
stack: over HTTP with a signed admin token, and with --local straight to the store. Each change
is checked by its effect on a guest, not only by the command's exit status."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from services.cli import build_parser
from shared.adminauth import generate_admin_keypair
from shared.embedded import start_embedded
from tests.conftest import RESOURCE, SECRET, RunningStack, start_stack
from tests.integration.test_trust_config import BLOCK_ALL, attest, status_of

pytestmark = pytest.mark.integration
DATA = Path(__file__).resolve().parents[1] / "data"
OTHER_IMAGE = hashlib.sha384(b"another image").digest()


@pytest.fixture
async def operated(tmp_path: Path) -> AsyncIterator[tuple[RunningStack, Path, Path]]:
    """A stack on servers of its own (the KEK file is rotated here), with an admin key and a
    provisioner key configured; yields (stack, admin private key file, provisioner private key file)."""
    own = start_embedded(tmp_path / "infra")
    keys = {}
    for role in ("admin", "provisioner"):
        private, public = generate_admin_keypair("EdDSA")
        (tmp_path / f"{role}.pem").write_bytes(private)
        (tmp_path / f"{role}.pub.pem").write_bytes(public)
        keys[role] = tmp_path / f"{role}.pub.pem"
    rs = await start_stack(
        own, tmp_path / "data", admin_keys=(keys["admin"],), provisioner_keys=(keys["provisioner"],)
    )
    try:
        yield rs, tmp_path / "admin.pem", tmp_path / "provisioner.pem"
    finally:
        await rs.stack.stop()
        await rs.kds.stop()
        own.stop()


async def remits(monkeypatch: pytest.MonkeyPatch, capsys: Any, *argv: str) -> tuple[int, str, str]:
    """Run one `remits ...` command inside this event loop; (exit status, stdout, stderr)."""
    capsys.readouterr()
    args = build_parser().parse_args(list(argv))
    with monkeypatch.context() as patch:
        patch.setattr(asyncio, "run", lambda coroutine: coroutine)  # the command's coroutine, awaited here
        result = args.run(args)
    code = await result if inspect.isawaitable(result) else result
    out, err = capsys.readouterr()
    return int(code), out, err


def http(rs: RunningStack, key: Path) -> tuple[str, ...]:
    return ("--url", rs.url, "--key", str(key), "--subject", "alice")


def local(rs: RunningStack) -> tuple[str, ...]:
    return ("--local", "--nats", rs.infra.nats_url, "--credentials-dir", str(rs.infra.credentials_dir),
            "--data-dir", str(rs.settings.data_dir))  # fmt: skip


async def test_policy_commands_change_what_guests_get(operated, monkeypatch, capsys, tmp_path) -> None:  # type: ignore[no-untyped-def]
    rs, key, _ = operated
    policy_file = tmp_path / "block.rego"
    policy_file.write_text(BLOCK_ALL)
    code, out, _ = await remits(monkeypatch, capsys, "policy", "set", "attestation.sample", str(policy_file), *http(rs, key))
    assert code == 0 and json.loads(out)["revision"] > 0
    await rs.stack.trust_synced()
    client, result = await attest(rs)
    assert result.status == 401 and result.reason == "policy.blocked_by_test"
    await client.close()
    code, out, _ = await remits(monkeypatch, capsys, "policy", "get", "attestation.sample", *http(rs, key))
    assert code == 0 and out.strip() == BLOCK_ALL.strip()
    code, out, _ = await remits(monkeypatch, capsys, "policy", "list", *http(rs, key))
    listed = {p["id"]: p for p in json.loads(out)}
    assert listed["attestation.sample"]["source"] != "default" and listed["resource"]["source"] == "default"
    # A policy that does not compile is refused, and the stored one stays.
    broken = tmp_path / "broken.rego"
    broken.write_text("package remits.attestation\nresult := {\n")
    code, _, err = await remits(monkeypatch, capsys, "policy", "set", "attestation.sample", str(broken), *http(rs, key))
    assert code == 1 and "policy." in err
    code, _, _ = await remits(monkeypatch, capsys, "policy", "delete", "attestation.sample", *http(rs, key))
    assert code == 0
    await rs.stack.trust_synced()
    client, result = await attest(rs)
    assert result.status == 200
    await client.close()
    # `policy test` explains a decision offline, without a stack.
    claims = tmp_path / "claims.json"
    claims.write_text('{"sample.measurement": "aa"}')
    code, out, _ = await remits(monkeypatch, capsys, "policy", "test", str(policy_file), "--input", str(claims))
    assert code == 0 and "policy.blocked_by_test" in out


async def test_refval_resource_and_revoke_commands(operated, monkeypatch, capsys, tmp_path) -> None:  # type: ignore[no-untyped-def]
    rs, key, _ = operated
    device = rs.enroll(OTHER_IMAGE)
    client, result = await attest(rs, OTHER_IMAGE, device)
    assert result.status == 401 and result.reason == "measurement.not_in_reference_values"
    await client.close()
    code, _, _ = await remits(
        monkeypatch, capsys, "refval", "add", "sample", "measurement", OTHER_IMAGE.hex().upper(),
        "--expires", "+1d", "--id", "other-image", *http(rs, key),
    )  # fmt: skip
    assert code == 0
    code, out, _ = await remits(monkeypatch, capsys, "refval", "list", "--tee", "sample", *http(rs, key))
    records = {r["key"]: r for r in json.loads(out)}
    mine = records["sample.measurement.other-image"]
    assert mine["values"] == [OTHER_IMAGE.hex()]  # lower-cased
    assert mine["provenance"]["added_by"].startswith("alice") and mine["expired"] is False
    assert abs(mine["expires_at"] - (time.time() + 86400)) < 60
    await rs.stack.trust_synced()
    client, result = await attest(rs, OTHER_IMAGE, device)
    assert result.status == 200, result.body
    await client.close()

    secret_file = tmp_path / "secret.bin"
    secret_file.write_bytes(b"cli secret \x00\xff")
    code, _, _ = await remits(
        monkeypatch, capsys, "resource", "put", "team/key/cli", "--file", str(secret_file), "--tee", "sample",
        "--measurement", OTHER_IMAGE.hex(), "--allow-sample", *http(rs, key),
    )  # fmt: skip
    assert code == 0
    code, out, _ = await remits(monkeypatch, capsys, "resource", "get", "team/key/cli", *http(rs, key))
    assert code == 0 and "cli secret" not in out and "sealed" not in out
    assert json.loads(out)["binding"]["measurements"] == [OTHER_IMAGE.hex()]
    await rs.stack.trust_synced()
    client, result = await attest(rs, OTHER_IMAGE, device)
    fetched = await client.resource("team/key/cli")
    assert fetched.status == 200 and client.decrypt(fetched.body) == b"cli secret \x00\xff"
    await client.close()
    # Bound to the other image: the good image's guest is refused it.
    client, result = await attest(rs)
    denied = await client.resource("team/key/cli")
    assert denied.status == 401 and "resource.measurement_not_bound" in denied.body["detail"]
    await client.close()

    code, _, _ = await remits(
        monkeypatch, capsys, "revoke", "--measurement", OTHER_IMAGE.hex(), "--reason", "CVE-2026-0001", *http(rs, key)
    )
    assert code == 0
    await rs.stack.trust_synced()
    client, result = await attest(rs, OTHER_IMAGE, device)
    assert result.status == 200  # attested, but contraindicated: no secret
    assert status_of(rs, result.body["token"])[0] == "contraindicated"
    assert (await client.resource("team/key/cli")).status == 401
    await client.close()
    code, out, _ = await remits(monkeypatch, capsys, "revoke", "--list", *http(rs, key))
    assert [r["reason"] for r in json.loads(out)] == ["CVE-2026-0001"]
    code, _, _ = await remits(monkeypatch, capsys, "revoke", "--measurement", OTHER_IMAGE.hex(), "--undo", *http(rs, key))
    assert code == 0
    code, _, err = await remits(monkeypatch, capsys, "refval", "delete", "sample.measurement.other-image", *http(rs, key))
    assert code == 0, err
    code, _, _ = await remits(monkeypatch, capsys, "resource", "delete", "team/key/cli", *http(rs, key))
    assert code == 0
    await rs.stack.trust_synced()
    client, result = await attest(rs, OTHER_IMAGE, device)
    assert result.status == 401 and result.reason == "measurement.not_in_reference_values"
    await client.close()
    # A key the service does not trust changes nothing.
    stranger = tmp_path / "stranger.pem"
    stranger.write_bytes(generate_admin_keypair("EdDSA")[0])
    code, _, err = await remits(monkeypatch, capsys, "refval", "add", "sample", "measurement", "ab" * 48, *http(rs, stranger))
    assert code == 1 and "401" in err


async def test_signed_manifest_import_and_snp_measure(operated, monkeypatch, capsys, tmp_path) -> None:  # type: ignore[no-untyped-def]
    rs, key, provisioner = operated
    payload = tmp_path / "manifest.json"
    payload.write_text(json.dumps({
        "iss": "ci@example", "iat": int(time.time()),
        "reference_values": [{"tee": "sample", "name": "measurement", "values": [OTHER_IMAGE.hex()]}],
    }))  # fmt: skip
    code, jws, _ = await remits(monkeypatch, capsys, "refval", "sign-manifest", str(payload), "--key", str(provisioner))
    assert code == 0 and jws.count(".") == 2
    signed = tmp_path / "manifest.jws"
    signed.write_text(jws)
    code, out, _ = await remits(monkeypatch, capsys, "refval", "import", str(signed), *http(rs, key))
    assert code == 0, out
    code, out, _ = await remits(monkeypatch, capsys, "refval", "list", "--tee", "sample", *http(rs, key))
    imported = [r for r in json.loads(out) if r["provenance"]["source"] == "manifest:ci@example"]
    assert [r["values"] for r in imported] == [[OTHER_IMAGE.hex()]]
    await rs.stack.trust_synced()
    client, result = await attest(rs, OTHER_IMAGE)
    assert result.status == 200
    await client.close()
    # Signed by the admin key, which is not a provisioner key: refused.
    code, forged, _ = await remits(monkeypatch, capsys, "refval", "sign-manifest", str(payload), "--key", str(key))
    signed.write_text(forged)
    code, _, err = await remits(monkeypatch, capsys, "refval", "import", str(signed), *http(rs, key))
    assert code == 1 and "manifest" in err

    # The expected launch digest of an SNP image, from the firmware (Debian's OVMF, checked in).
    ovmf = DATA / "snp" / "launch" / "OVMF.fd"
    code, out, _ = await remits(
        monkeypatch, capsys, "refval", "snp-measure", "--ovmf", str(ovmf), "--vcpus", "4", "--vcpu-type", "EPYC-v4",
        "--name", "debian-ovmf", "--dry-run",
    )  # fmt: skip
    assert code == 0
    digest = json.loads(out)
    assert digest["measurement"] == (
        "32ac9d7a17d28f7cd4404a4516d2f00519668c40ada2062351c36767e908eb3f090d66c33ab10f80150e00a4385b6d0f"
    )
    code, _, _ = await remits(
        monkeypatch, capsys, "refval", "snp-measure", "--ovmf", str(ovmf), "--vcpus", "4", "--vcpu-type", "EPYC-v4",
        "--name", "debian-ovmf", *http(rs, key),
    )  # fmt: skip
    assert code == 0
    code, out, _ = await remits(monkeypatch, capsys, "refval", "list", "--tee", "snp", *http(rs, key))
    (record,) = json.loads(out)
    assert record["key"] == "snp.measurement.debian-ovmf"
    assert record["values"] == [digest["measurement"]]
    assert record["provenance"]["inputs"]["ovmf.sha256"] == digest["inputs"]["ovmf.sha256"]


async def test_kek_rotation_keeps_every_secret_released(operated, monkeypatch, capsys, tmp_path) -> None:  # type: ignore[no-untyped-def]
    rs, key, _ = operated
    kek_file = rs.infra.credentials_dir / "kek.json"
    before = json.loads(kek_file.read_text())
    code, out, _ = await remits(monkeypatch, capsys, "kek", "rotate", *local(rs)[1:])
    assert code == 0, out
    rotated = json.loads(out)
    assert rotated["rewrapped"] == 1 and rotated["kek"] not in json.dumps(before)
    await rs.stack.trust_synced()
    # The existing secret opens under the new KEK (release reads the new key file)...
    client, _ = await attest(rs)
    fetched = await client.resource(RESOURCE)
    assert fetched.status == 200 and client.decrypt(fetched.body) == SECRET
    # ...and a secret stored after the rotation is sealed under it and released too.
    secret_file = tmp_path / "after.bin"
    secret_file.write_bytes(b"after rotation")
    code, _, _ = await remits(monkeypatch, capsys, "resource", "put", "team/key/after", "--file", str(secret_file),
                              "--allow-sample", *http(rs, key))  # fmt: skip
    assert code == 0
    await rs.stack.trust_synced()
    entry = rs.stack.contexts["release"].trust.snapshot().resources["team/key/after"]  # type: ignore[union-attr]
    assert entry.record.sealed["kid"] == rotated["kek"]
    fetched = await client.resource("team/key/after")
    assert fetched.status == 200 and client.decrypt(fetched.body) == b"after rotation"
    await client.close()
    # --local changes the store as the operator without an admin key, e.g. to list what is there.
    code, out, _ = await remits(monkeypatch, capsys, "resource", "list", *local(rs))
    assert code == 0 and sorted(json.loads(out)) == sorted([RESOURCE, "team/key/after"])


async def test_tenant_commands_and_the_tenant_flag(operated, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    """`remits tenant create|list|get|delete` and `--tenant` on the trust commands, over HTTP as
    the operator and with --local; each tenant's records stay its own."""
    rs, admin_key, _ = operated
    http = ("--url", rs.url, "--key", str(admin_key))
    code, out, err = await remits(monkeypatch, capsys, "tenant", "create", "team-c", "--attestations-per-s", "50", *http)
    assert code == 0, err
    assert json.loads(out)["name"] == "team-c"
    code, out, _ = await remits(monkeypatch, capsys, "tenant", "list", *http)
    listed = {t["name"]: t for t in json.loads(out)}
    assert set(listed) == {"default", "team-c"} and listed["team-c"]["attestations_per_s"] == 50
    secret = rs.settings.data_dir / "c.secret"
    secret.write_bytes(b"team c's secret")
    code, _, err = await remits(
        monkeypatch, capsys, "resource", "put", "c/key/one", "--file", str(secret), "--allow-sample",
        "--init-data", "ab" * 32, "--tenant", "team-c", *http,
    )  # fmt: skip
    assert code == 0, err
    code, out, _ = await remits(monkeypatch, capsys, "resource", "list", "--tenant", "team-c", *http)
    assert json.loads(out) == ["c/key/one"]
    code, out, _ = await remits(monkeypatch, capsys, "resource", "list", *http)  # the default tenant's
    assert "c/key/one" not in json.loads(out)
    code, out, _ = await remits(monkeypatch, capsys, "resource", "get", "c/key/one", "--tenant", "team-c", *http)
    assert json.loads(out)["binding"]["init_data"] == ["ab" * 32]
    # --local reaches the same tenant's records as the operator.
    local = ("--local", "--data-dir", str(rs.settings.data_dir), "--nats", rs.infra.nats_url,
             "--credentials-dir", str(rs.infra.credentials_dir))  # fmt: skip
    code, out, err = await remits(monkeypatch, capsys, "resource", "list", "--tenant", "team-c", *local)
    assert code == 0 and json.loads(out) == ["c/key/one"], err
    code, _, err = await remits(monkeypatch, capsys, "resource", "list", "--tenant", "team-z", *http)
    assert code == 1 and "tenant.unknown" in err
    code, out, err = await remits(monkeypatch, capsys, "tenant", "delete", "team-c", *http)
    assert code == 0 and json.loads(out)["records_removed"] == 1, err
    code, _, err = await remits(monkeypatch, capsys, "tenant", "get", "team-c", *http)
    assert code == 1 and "tenant.unknown" in err
