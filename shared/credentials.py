"""Who each REMITS component is on the bus and in Redis, and what it may do there.

Every component has its own NATS identity (an nkey), its own Redis ACL user, and its own key for
authenticating the messages it sends (``shared.busauth``). The permission tables below are the
first wall: NATS and Redis refuse anything outside them. They are also what `remits creds` and
`remits up` render into the servers' configuration, so the code and the servers cannot disagree.

Layout of a credentials directory (files holding secrets are mode 0600):

    <component>.nk              the component's NATS nkey seed (`--nats-creds`)
    <component>.json            its Redis user and password, its message key, its peers' keys
    audit-tenant-<tenant>.nk    a tenant audit reader's nkey seed (``add_tenant_audit_reader``)
    nats-authorization.conf     the users block for nats-server (include it, or `-c` it)
    redis-users.acl             the users for redis-server (`--aclfile`)

The two server files hold public keys and password hashes only (mode 0644, so a server running as
another user can read them). ``export_per_component`` also lays the set out one directory per
component, so that a deployment can give each component only its own two files.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared import schemas, tenant_feeds, tenants

STAGE_COMPONENTS = schemas.STAGES
COMPONENTS: tuple[str, ...] = ("gateway", *STAGE_COMPONENTS, "audit", "provision", "join", "admin")
JOIN = "join"  # the node-join service of confidential clusters (services/join): a second front door
PROVISION = "provision"  # the only writer of the trust configuration (behind the admin API)
ADMIN = "admin"  # the operator: topology, provisioning, tools (`remits setup`, `refval`, `bench`)

_BEFORE_DECIDE = frozenset({"intake", "endorse", "identity", "measure", "decide"})

# Which kinds of stage message each consumer takes, and from whom. A message of another kind, or
# from another sender, is dropped as unauthenticated: the decide stage signs an EAR only for an
# appraisal the measure stage sent.
EXPECTS: Mapping[str, Mapping[str, frozenset[str]]] = {
    "intake": {
        "attest_request": frozenset({"gateway", JOIN}),
        "sev_launch": frozenset({"gateway"}),
        "se_challenge": frozenset({"gateway"}),
    },
    "endorse": {
        "parsed_evidence": frozenset({"intake"}),
        "sev_launch": frozenset({"intake"}),
        "se_challenge": frozenset({"intake"}),
    },
    "identity": {
        "endorsed_evidence": frozenset({"endorse"}),
        "sev_launch": frozenset({"endorse"}),
        "se_challenge": frozenset({"endorse"}),
    },
    "measure": {"verified_evidence": frozenset({"identity"})},
    "decide": {"appraised_evidence": frozenset({"measure"}), "rejection": _BEFORE_DECIDE},
    "release": {"decision": frozenset({"decide"}), "resource_request": frozenset({"gateway", JOIN})},
    "audit": {"decision": frozenset({"decide"}), "admin_event": frozenset({PROVISION, ADMIN})},
    # Decisions too: the fleet dashboard follows them (read only).
    # Outcomes from identity too: the challenge of a SEV launch or of an SE attestation.
    "gateway": {
        "outcome": frozenset({"release", "identity"}),
        "admin_reply": frozenset({PROVISION}),
        "decision": frozenset({"decide"}),
        # The signed statement of a cluster's membership (GET /cluster/<name>/attestation).
        "cluster_statement": frozenset({JOIN}),
    },
    # A node's decision comes back as release's outcome; statements are asked for by the gateway.
    JOIN: {"outcome": frozenset({"release"}), "statement_request": frozenset({"gateway"})},
    PROVISION: {"admin_request": frozenset({"gateway"})},
}

# Whose messages each component accepts (and therefore whose keys it holds).
ACCEPTS: Mapping[str, frozenset[str]] = {
    component: frozenset().union(*EXPECTS.get(component, {}).values()) for component in (
        "gateway", *STAGE_COMPONENTS, "audit", PROVISION, JOIN, "admin"
    )
}  # fmt: skip

# The stage a stage hands its work to (rejections always go to decide).
NEXT_SUBJECT: Mapping[str, str] = {
    "gateway": schemas.stage_subject("intake"),
    JOIN: schemas.stage_subject("intake"),
    "intake": schemas.stage_subject("endorse"),
    "endorse": schemas.stage_subject("identity"),
    "identity": schemas.stage_subject("measure"),
    "measure": schemas.APPRAISAL_SUBJECT,
    "decide": "remits.decision.>",
}


def inbox_prefix(component: str) -> str:
    """Each component's private inbox space: replies to it cannot be read by another."""
    return f"_INBOX_{component}"


def _consumer_rights(stream: str, durable: str) -> tuple[list[str], list[str]]:
    """Bind and use one durable consumer: no right to create, alter or delete anything."""
    publish = [
        f"$JS.API.CONSUMER.INFO.{stream}.{durable}",
        f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}",
        f"$JS.ACK.{stream}.{durable}.>",
        f"$JS.API.STREAM.MSG.GET.{stream}",  # reads an exhausted message for its dead letter
    ]
    subscribe = [f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.{durable}"]
    return publish, subscribe


def nats_permissions(component: str) -> dict[str, Any]:
    """The subjects ``component`` may publish and subscribe to (nats-server permission block)."""
    from shared.trust import buckets

    if component == ADMIN:
        return {"publish": {"allow": [">"]}, "subscribe": {"allow": [">"]}}
    publish: list[str] = []
    subscribe = [f"{inbox_prefix(component)}.>", schemas.STATS_SUBJECTS]
    # The trust buckets it reads (to mirror them) and, for provision alone, writes.
    for bucket in buckets.READERS.get(component, ()):
        publish += buckets.read_rights(bucket)
        if component in buckets.WRITERS:
            publish += buckets.write_rights(bucket)
    if component == "gateway":
        publish += [
            schemas.stage_subject("intake"), schemas.RESOURCE_SUBJECT, schemas.ADMIN_REQUEST_SUBJECT,
            schemas.CLUSTER_STATEMENT_SUBJECT,
        ]  # fmt: skip
        # The fleet dashboard: decisions as they are published, and every process's statistics.
        publish.append(schemas.STATS_COLLECT_SUBJECT)
        subscribe += ["remits.outcome.*", "remits.decision.>"]
    elif component in ("intake", "endorse", "identity", "measure", "decide"):
        pub, sub = _consumer_rights(schemas.PIPELINE_STREAM, component)
        publish += [*pub, NEXT_SUBJECT[component], schemas.REJECTION_SUBJECT, schemas.dlq_subject(component)]
        if component == "measure":
            publish.append(schemas.evidence_subject("*"))  # what replay needs, kept for a while
        if component == "identity":
            publish.append("remits.outcome.*")  # a SEV launch's challenge, to the waiting gateway
        subscribe += sub
    elif component == "release":
        pub, sub = _consumer_rights(schemas.DECISION_STREAM, "release")
        publish += [*pub, "remits.outcome.*", schemas.dlq_subject("release")]
        subscribe += [*sub, schemas.RESOURCE_SUBJECT]
    elif component == "audit":
        pub, sub = _consumer_rights(schemas.DECISION_STREAM, "audit")
        # Its own stream's last record: where to resume publishing after a restart.
        publish += [*pub, schemas.AUDIT_SUBJECT, f"$JS.API.STREAM.MSG.GET.{schemas.AUDIT_STREAM}"]
        subscribe += sub
    elif component == PROVISION:
        publish.append(schemas.admin_subject("*", "*"))
        subscribe.append(schemas.ADMIN_REQUEST_SUBJECT)
    elif component == JOIN:
        # Nodes' evidence into the pipeline, their cluster secrets from release, evictions out;
        # its own membership bucket (read and write), statements on request.
        publish += [
            schemas.stage_subject("intake"), schemas.RESOURCE_SUBJECT, schemas.cluster_subject("*", "evicted"),
            *buckets.read_rights(buckets.CLUSTERS), *buckets.write_rights(buckets.CLUSTERS),
        ]  # fmt: skip
        subscribe += ["remits.outcome.*", schemas.CLUSTER_STATEMENT_SUBJECT]
    else:
        raise ValueError(f"unknown component {component!r}")
    # Answers to requests it received (stats collection; release's resource answers), once each.
    return {"publish": {"allow": publish}, "subscribe": {"allow": subscribe}, "allow_responses": {"max": 1}}


# Tenant audit readers: one NATS user per tenant whose team may follow that tenant's audit events
# (its decisions and its admin changes) and nothing else. Not components: no Redis user, no message
# key (so no .json file); only an nkey seed, whose presence in the directory is what makes the user.
AUDIT_READER_PREFIX = tenant_feeds.PREFIX


def tenant_audit_user(tenant: str) -> str:
    """The reader's name (its seed file's stem and its inbox's; its feed's consumer is named the
    same): refuses a name that is no tenant's, since the name becomes a subject token and a file
    name."""
    return tenant_feeds.durable(tenant)


def tenant_audit_seed(directory: Path, tenant: str) -> Path:
    return directory / f"{tenant_audit_user(tenant)}.nk"


def tenant_audit_permissions(tenant: str) -> dict[str, Any]:
    """What ``tenant``'s audit reader may do on the bus: subscribe to its tenant's audit subjects
    (live), to its tenant's audit feed (the history, see ``tenant_feeds``) and to its own inbox;
    publish nothing.

    No JetStream API rights, deliberately: they cannot be scoped to a tenant's subjects safely. A
    consumer's filter travels in the request body (only some clients use the create-subject form
    that names it), message gets ($JS.API.STREAM.MSG.GET, $JS.API.DIRECT.GET) read any sequence,
    whoever's, and the server answers a request (or an ack) on whatever reply subject it names,
    another tenant's included. The feed is a push consumer the operator creates: the reader only
    listens."""
    user = tenant_audit_user(tenant)  # refuses a bad name before it reaches a subject
    subscribe = [*schemas.tenant_audit_subjects(tenant), tenant_feeds.subject(tenant), f"{inbox_prefix(user)}.>"]
    # "deny everything", not an empty allow list: nats-server reads an empty allow list as no
    # restriction at all. A subscriber publishes nothing (PING/PONG are protocol, not subjects).
    return {"publish": {"deny": [">"]}, "subscribe": {"allow": subscribe}}


def tenant_audit_readers(directory: Path) -> list[str]:
    """The tenants with an audit reader in ``directory`` (sorted). A seed file whose name holds no
    valid tenant is ignored: it never becomes a user (fail closed)."""
    stems = (p.stem for p in directory.glob(f"{AUDIT_READER_PREFIX}*.nk"))
    return sorted(t for t in (s[len(AUDIT_READER_PREFIX) :] for s in stems) if tenants.is_name(t))


def add_tenant_audit_reader(directory: Path, tenant: str) -> Path:
    """Create ``tenant``'s audit reader unless it exists (its key is kept, like a component's) and
    render the servers' configuration again, so that nats-server knows it once reloaded. Returns
    the seed's path (what the team connects with: ``--nats-creds`` / nats-py's ``nkeys_seed``)."""
    seed = tenant_audit_seed(directory, tenant)  # checks the name before anything is written
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    if not seed.exists():
        _write_secret(seed, _new_seed() + b"\n")
    render_server_config(directory)
    return seed


def remove_tenant_audit_reader(directory: Path, tenant: str) -> bool:
    """Delete ``tenant``'s audit reader and render the configuration without it (it is refused
    once nats-server reloads it). Whether there was one to remove."""
    seed = tenant_audit_seed(directory, tenant)
    existed = seed.exists()
    seed.unlink(missing_ok=True)
    render_server_config(directory)
    return existed


def _nkey_public(seed_path: Path) -> str:
    import nkeys

    return str(nkeys.from_seed(seed_path.read_bytes().strip()).public_key.decode())


# Redis 6.2 grants commands over all of a user's key patterns together, so each user's patterns and
# commands are chosen so that no combination is more than the component needs: release reads
# resources with GET but writes only hashes (HSET), so it cannot overwrite a secret. Every user may
# ask ROLE: behind Sentinel, a client checks that the server it was sent to is the master.
REDIS_RULES: Mapping[str, str] = {
    # ...and the per-tenant state of the attestation quotas (a script: TIME, GET, SET).
    "gateway": (
        "~remits:session:* ~remits:nonce:* ~remits:outcome:* ~remits:quota:* +hset +pexpire +set +hgetall +hget "
        "+evalsha +eval +get +time +role +ping"
    ),
    # The join service issues challenges and waits for outcomes exactly like the gateway.
    JOIN: "~remits:session:* ~remits:nonce:* ~remits:outcome:* +hset +pexpire +set +hgetall +hget +role +ping",
    "intake": "~remits:nonce:* ~remits:nonce-used:* +evalsha +eval +get +del +set +wait +role +ping",
    "endorse": "~remits:endorsement:* ~remits:lock:* +get +set +pttl +del +evalsha +eval +role +ping",
    # The last clock state of each TPM attestation key (clock monotonicity), nothing else.
    # ...and the sealed state of the SEV launch sessions it opens (SET with an expiry), and of
    # the SE attestation requests it builds.
    "identity": (
        "~remits:tpm-clock:* ~remits:sev-session:* ~remits:se-session:* +get +set +evalsha +eval +role +ping"
    ),
    "measure": "~remits:sev-session:* +get +role +ping",
    "decide": "~remits:decision:* +set +get +role +ping",
    "release": (
        "~remits:session:* ~remits:outcome:* ~remits:sev-session:* +hset +hget +hgetall +get +pexpire +evalsha +eval "
        "+role +ping"
    ),
    "audit": "+role +ping",
    PROVISION: "+role +ping",
}


def redis_acl_line(component: str, password: str) -> str:
    password_hash = hashlib.sha256(password.encode()).hexdigest()
    if component == ADMIN:
        return f"user default on #{password_hash} ~* &* +@all"
    return f"user {component} on #{password_hash} resetkeys resetchannels -@all {REDIS_RULES[component]}"


def redis_user(component: str) -> str:
    return "default" if component == ADMIN else component


@dataclass(frozen=True)
class ComponentCredentials:
    component: str
    nats_seed_path: Path
    redis_user: str
    redis_password: str
    bus_key: bytes
    peer_bus_keys: dict[str, bytes]
    relay_private_pem: str = ""  # provision only
    relay_public_pem: str = ""  # gateway only: provision's relay key
    kek_path: Path | None = None  # provision and release: the key-encryption key file
    sev_key_path: Path | None = None  # identity, measure, release: seals SEV launch sessions
    se_key_path: Path | None = None  # identity: derives and seals SE attestation requests

    @property
    def nats_public_key(self) -> str:
        import nkeys

        return str(nkeys.from_seed(self.nats_seed_path.read_bytes().strip()).public_key.decode())

    def redis_url(self, base_url: str) -> str:
        """``base_url`` with this component's Redis user and password in it."""
        scheme, _, rest = base_url.partition("://")
        hostpart = rest.rsplit("@", 1)[-1]
        return f"{scheme}://{self.redis_user}:{self.redis_password}@{hostpart}"


def _write_secret(path: Path, data: bytes) -> None:
    # Created 0600 from the start: no window in which another user could read it.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def _new_seed() -> bytes:
    import nkeys

    return bytes(nkeys.encode_seed(secrets.token_bytes(32), nkeys.PREFIX_BYTE_USER))


def ensure_credentials(directory: Path, components: Iterable[str] = COMPONENTS) -> None:
    """Create whatever is missing (a second call changes nothing), then render the servers'
    configuration from the whole set."""
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    for component in components:
        seed = directory / f"{component}.nk"
        if not seed.exists():
            _write_secret(seed, _new_seed() + b"\n")
        secret = directory / f"{component}.json"
        if not secret.exists():
            own = {"component": component, "redis_user": redis_user(component),
                   "redis_password": secrets.token_urlsafe(24), "bus_key": secrets.token_hex(32)}  # fmt: skip
            if component == PROVISION:
                own["relay_private_pem"] = _new_relay_key()
            _write_secret(secret, json.dumps(own).encode())
    for key_file, holders in SESSION_KEYS.items():
        if any(c in holders for c in components) and not (directory / key_file).exists():
            _write_secret(directory / key_file, secrets.token_hex(32).encode())
    if PROVISION in components and not (directory / KEK_FILE).exists():
        from shared.sealing import KeyRing

        KeyRing.load_or_create(directory / KEK_FILE)
    render_server_config(directory)


# The key-encryption key of secrets at rest (shared.sealing): only provision and release get it.
KEK_FILE = "kek.json"
KEK_HOLDERS = (PROVISION, "release", ADMIN)
# The key that seals a SEV launch session's TEK and TIK wherever they are kept between the
# challenge and the secret (shared.platforms.sev.broker): only the stages that open them.
SEV_KEY_FILE = "sev-session-key.hex"
SEV_KEY_HOLDERS = ("identity", "measure", "release")
# The key an IBM Secure Execution attestation request's measurement key and nonce are derived from
# and sealed with between the challenge and the response: identity builds the request and checks
# the response, so no other component can compute (or forge) a measurement.
SE_KEY_FILE = "se-session-key.hex"
SE_KEY_HOLDERS = ("identity",)
SESSION_KEYS: Mapping[str, tuple[str, ...]] = {SEV_KEY_FILE: SEV_KEY_HOLDERS, SE_KEY_FILE: SE_KEY_HOLDERS}


def _new_relay_key() -> str:
    """Provision's key for admin requests relayed by the gateway: a secret being provisioned
    crosses the bus encrypted to it, never in clear."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def _relay_public(private_pem: str) -> str:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(private_pem.encode(), None)
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def _own(directory: Path, component: str) -> dict[str, Any]:
    value: dict[str, Any] = json.loads((directory / f"{component}.json").read_text())
    return value


def load(directory: Path, component: str) -> ComponentCredentials:
    """One component's credentials, read from its own two files only: its peers' message keys
    were copied into its file when the set was rendered, so no component needs another's file
    (which holds that component's Redis password too)."""
    own = _own(directory, component)
    peers = {peer: bytes.fromhex(key) for peer, key in own.get("peer_bus_keys", {}).items()}
    return ComponentCredentials(
        component=component,
        nats_seed_path=directory / f"{component}.nk",
        redis_user=str(own["redis_user"]),
        redis_password=str(own["redis_password"]),
        bus_key=bytes.fromhex(own["bus_key"]),
        peer_bus_keys=peers,
        relay_private_pem=str(own.get("relay_private_pem", "")),
        relay_public_pem=str(own.get("provision_relay_public_pem", "")),
        kek_path=directory / KEK_FILE
        if component in KEK_HOLDERS and (directory / KEK_FILE).exists()
        else None,
        sev_key_path=directory / SEV_KEY_FILE
        if component in SEV_KEY_HOLDERS and (directory / SEV_KEY_FILE).exists()
        else None,
        se_key_path=directory / SE_KEY_FILE
        if component in SE_KEY_HOLDERS and (directory / SE_KEY_FILE).exists()
        else None,
    )


def render_server_config(directory: Path) -> None:
    """Copy each component's accepted peers' message keys into its file, and write
    nats-authorization.conf and redis-users.acl for every component in ``directory``."""
    present = [c for c in COMPONENTS if (directory / f"{c}.json").exists()]
    keys = {c: _own(directory, c)["bus_key"] for c in present}
    relay = _own(directory, PROVISION).get("relay_private_pem", "") if PROVISION in present else ""
    users = []
    acl = []
    for component in present:
        own = _own(directory, component)
        own["peer_bus_keys"] = {peer: keys[peer] for peer in sorted(ACCEPTS[component]) if peer in keys}
        if component == "gateway" and relay:
            own["provision_relay_public_pem"] = _relay_public(relay)
        _write_secret(directory / f"{component}.json", json.dumps(own).encode())
        creds = load(directory, component)
        users.append({"nkey": creds.nats_public_key, "permissions": nats_permissions(component)})
        acl.append(redis_acl_line(component, creds.redis_password))
    # Tenant audit readers: NATS users only (they have nothing to do in Redis).
    for tenant in tenant_audit_readers(directory):
        seed = tenant_audit_seed(directory, tenant)
        users.append({"nkey": _nkey_public(seed), "permissions": tenant_audit_permissions(tenant)})
    # nats-server's configuration format reads JSON values; anonymous clients match no user.
    body = ",\n    ".join(json.dumps(user) for user in users)
    conf = f"# Generated by REMITS: one nkey user per component.\nauthorization {{\n  users = [\n    {body}\n  ]\n}}\n"
    _write_public(directory / "nats-authorization.conf", conf.encode())
    _write_public(directory / "redis-users.acl", ("\n".join(acl) + "\n").encode())


def _write_public(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    os.chmod(path, 0o644)


SERVERS_DIR = "servers"


def export_per_component(directory: Path, out: Path) -> None:
    """``out/<component>/`` with only that component's two files (mode 0700), and
    ``out/servers/`` with the two server files: what per-component mounts are made of."""
    for component in COMPONENTS:
        target = out / component
        target.mkdir(parents=True, exist_ok=True)
        os.chmod(target, 0o700)
        names = [f"{component}.nk", f"{component}.json"]
        if component in KEK_HOLDERS and (directory / KEK_FILE).exists():
            names.append(KEK_FILE)
        for key_file, holders in SESSION_KEYS.items():
            if component in holders and (directory / key_file).exists():
                names.append(key_file)
        for name in names:
            _write_secret(target / name, (directory / name).read_bytes())
    # Each tenant audit reader likewise, alone in its own directory: what its team is handed.
    for tenant in tenant_audit_readers(directory):
        seed = tenant_audit_seed(directory, tenant)
        target = out / seed.stem
        target.mkdir(parents=True, exist_ok=True)
        os.chmod(target, 0o700)
        _write_secret(target / seed.name, seed.read_bytes())
    servers = out / SERVERS_DIR
    servers.mkdir(parents=True, exist_ok=True)
    os.chmod(servers, 0o755)
    for name in ("nats-authorization.conf", "redis-users.acl"):
        _write_public(servers / name, (directory / name).read_bytes())
