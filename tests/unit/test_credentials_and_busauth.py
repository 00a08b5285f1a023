"""Credentials and message tags, as pure code: who may do what, what the files hold, and what a
tag proves."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from shared import credentials, schemas
from shared.busauth import MAC_HEADER, BusAuth, Unauthenticated


def test_permissions_are_the_narrowest_each_component_needs() -> None:
    perms = {c: credentials.nats_permissions(c) for c in credentials.COMPONENTS}
    publishers_of = {
        subject: {c for c, p in perms.items() if subject in p["publish"]["allow"] or p["publish"]["allow"] == [">"]}
        for subject in (schemas.APPRAISAL_SUBJECT, "remits.decision.>", schemas.stage_subject("intake"))
    }
    assert publishers_of[schemas.APPRAISAL_SUBJECT] == {"measure", "admin"}
    assert publishers_of["remits.decision.>"] == {"decide", "admin"}
    # The two front doors: KBS guests through the gateway, cluster nodes through the join service.
    assert publishers_of[schemas.stage_subject("intake")] == {"gateway", "join", "admin"}
    for component in credentials.COMPONENTS:
        if component == "admin":
            continue
        rules = perms[component]
        # Its own inbox space only, and no JetStream right beyond using its own consumer.
        assert [s for s in rules["subscribe"]["allow"] if s.startswith("_INBOX")] == [f"_INBOX_{component}.>"]
        js = [s for s in rules["publish"]["allow"] if s.startswith("$JS.API") and ".KV_remits_" not in s]
        assert all(".CONSUMER.INFO." in s or ".CONSUMER.MSG.NEXT." in s or ".STREAM.MSG.GET." in s for s in js), js
    # The trust configuration: read by the stages that apply it, written by provision alone.
    readers = {
        bucket: {c for c, p in perms.items() if f"$JS.API.DIRECT.GET.KV_{bucket}" in p["publish"]["allow"]}
        for bucket in ("remits_policies", "remits_refvals", "remits_resources", "remits_revocations", "remits_admin_keys")
    }
    assert readers == {
        "remits_policies": {"measure", "release", "provision"},
        "remits_refvals": {"identity", "measure", "provision"},  # identity: a SEV workload's policy
        "remits_resources": {"release", "provision"},
        "remits_revocations": {"measure", "release", "provision", "join"},
        "remits_admin_keys": {"provision"},
    }
    writers = {c for c, p in perms.items() for s in p["publish"]["allow"] if s.startswith("$KV.")}
    assert writers == {"provision", "join"}
    # The join service writes its membership bucket and nothing of the trust configuration.
    assert [s for s in perms["join"]["publish"]["allow"] if s.startswith("$KV.")] == ["$KV.remits_clusters.>"]
    assert {c for c, p in perms.items() if "$JS.API.DIRECT.GET.KV_remits_clusters" in p["publish"]["allow"]} == {"join"}
    assert perms["join"]["publish"]["allow"].count("remits.cluster.*.evicted") == 1
    assert {c for c, p in perms.items() if schemas.ADMIN_REQUEST_SUBJECT in p["publish"]["allow"]} == {"gateway"}
    assert perms["provision"]["subscribe"]["allow"].count(schemas.ADMIN_REQUEST_SUBJECT) == 1
    with pytest.raises(ValueError):
        credentials.nats_permissions("nobody")


def test_keys_go_to_exactly_the_accepted_senders() -> None:
    assert credentials.ACCEPTS["decide"] == {"intake", "endorse", "identity", "measure", "decide"}
    assert credentials.EXPECTS["decide"]["appraised_evidence"] == {"measure"}
    assert credentials.ACCEPTS["intake"] == {"gateway", "join"} and credentials.ACCEPTS["admin"] == frozenset()
    # The join service takes release's answers and the gateway's statement requests, nothing else.
    assert credentials.ACCEPTS["join"] == {"release", "gateway"}
    assert credentials.EXPECTS["release"]["resource_request"] == {"gateway", "join"}


def test_redis_rules() -> None:
    release = credentials.redis_acl_line("release", "pw")
    # Secrets are no longer in Redis at all: release reaches sessions and outcomes only.
    assert "resource" not in release and "refval" not in release and " +set " not in release
    # Measure reads only the sealed state of SEV launch sessions.
    assert credentials.redis_acl_line("measure", "pw").endswith("-@all ~remits:sev-session:* +get +role +ping")
    assert credentials.redis_acl_line("provision", "pw").endswith("-@all +role +ping")
    assert credentials.redis_acl_line("admin", "pw").startswith("user default on #")
    assert "pw" not in release  # only the password's hash is in the ACL file
    assert "-@all" in credentials.redis_acl_line("identity", "pw")


def test_generated_files(tmp_path: Path) -> None:
    directory = tmp_path / "creds"
    credentials.ensure_credentials(directory)
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
    for component in credentials.COMPONENTS:
        for name in (f"{component}.nk", f"{component}.json"):
            assert stat.S_IMODE(os.stat(directory / name).st_mode) == 0o600, name
    for name in ("nats-authorization.conf", "redis-users.acl"):  # public keys and hashes only
        assert stat.S_IMODE(os.stat(directory / name).st_mode) == 0o644
    split = tmp_path / "split"
    credentials.export_per_component(directory, split)
    assert sorted(p.name for p in (split / "measure").iterdir()) == ["measure.json", "measure.nk", "sev-session-key.hex"]
    assert sorted(p.name for p in (split / "endorse").iterdir()) == ["endorse.json", "endorse.nk"]
    # The SE key (it derives and checks every SE measurement key) is identity's alone.
    assert sorted(p.name for p in (split / "identity").iterdir()) == [
        "identity.json", "identity.nk", "se-session-key.hex", "sev-session-key.hex"
    ]
    assert credentials.load(directory, "identity").se_key_path is not None
    assert all(credentials.load(directory, c).se_key_path is None for c in credentials.COMPONENTS if c != "identity")
    alone, whole = credentials.load(split / "measure", "measure"), credentials.load(directory, "measure")
    assert (alone.bus_key, alone.peer_bus_keys, alone.redis_password, alone.nats_public_key) == (
        whole.bus_key, whole.peer_bus_keys, whole.redis_password, whole.nats_public_key
    )
    assert sorted(p.name for p in (split / "servers").iterdir()) == ["nats-authorization.conf", "redis-users.acl"]
    first = {p.name: p.read_bytes() for p in directory.iterdir()}
    credentials.ensure_credentials(directory)  # a second run keeps every identity
    assert {p.name: p.read_bytes() for p in directory.iterdir() if p.suffix == ".nk"} == {
        k: v for k, v in first.items() if k.endswith(".nk")
    }
    measure = json.loads((directory / "measure.json").read_text())
    # A component's file holds its peers' message keys, never their Redis passwords.
    assert set(measure["peer_bus_keys"]) == {"identity"}
    others = {json.loads((directory / f"{c}.json").read_text())["redis_password"] for c in credentials.COMPONENTS if c != "measure"}
    assert not any(password in (directory / "measure.json").read_text() for password in others)
    loaded = credentials.load(directory, "measure")
    assert loaded.peer_bus_keys == {"identity": bytes.fromhex(json.loads((directory / "identity.json").read_text())["bus_key"])}
    assert loaded.redis_url("redis://10.0.0.5:6379/0") == f"redis://measure:{loaded.redis_password}@10.0.0.5:6379/0"
    conf = (directory / "nats-authorization.conf").read_text()
    assert conf.count('"nkey"') == len(credentials.COMPONENTS) and loaded.nats_public_key in conf
    assert len((directory / "redis-users.acl").read_text().splitlines()) == len(credentials.COMPONENTS)


def test_tags_prove_sender_subject_id_and_payload() -> None:
    measure = BusAuth("measure", b"m" * 32)
    decide = BusAuth("decide", b"d" * 32, {"measure": b"m" * 32, "intake": b"i" * 32})
    subject, payload, msg_id = schemas.APPRAISAL_SUBJECT, b"appraisal bytes", "req:measure"
    headers = {MAC_HEADER: measure.sign(subject, payload, msg_id), "Nats-Msg-Id": msg_id}
    assert decide.verify(subject, payload, headers) == "measure"
    assert decide.verify(subject, payload, headers, accept=frozenset({"measure"})) == "measure"
    for bad_subject, bad_payload, bad_headers in (
        (subject, payload + b"!", headers),  # altered payload
        (schemas.REJECTION_SUBJECT, payload, headers),  # replayed onto another subject
        (subject, payload, {**headers, "Nats-Msg-Id": "other:measure"}),  # another request's id
        (subject, payload, {"Nats-Msg-Id": msg_id}),  # no tag
        (subject, payload, {**headers, MAC_HEADER: "intake:" + headers[MAC_HEADER].split(":")[1]}),  # claims another sender
        (subject, payload, {**headers, MAC_HEADER: "gateway:00"}),  # a sender decide holds no key for
    ):
        with pytest.raises(Unauthenticated):
            decide.verify(bad_subject, bad_payload, bad_headers)
    with pytest.raises(Unauthenticated):
        decide.verify(subject, payload, headers, accept=frozenset({"intake"}))  # right tag, wrong sender
