"""Runtime settings, read once from the environment (``REMITS_*``) and overridable by the CLI."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path


def _env(name: str, default: str) -> str:
    return os.environ.get(f"REMITS_{name}", default)


def _optional_path(value: str) -> Path | None:
    return Path(value) if value else None


def default_data_dir() -> Path:
    """$XDG_DATA_HOME/remits, i.e. ~/.local/share/remits unless XDG_DATA_HOME says otherwise."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "remits"


def _paths(value: str) -> tuple[Path, ...]:
    """A comma-separated list of paths (REMITS_ADMIN_KEYS)."""
    return tuple(Path(p.strip()) for p in value.split(",") if p.strip())


def nats_urls(value: str) -> list[str]:
    """The servers of a NATS URL setting: one URL, or several comma-separated (the seed servers
    of a cluster; the client reconnects to whichever answers)."""
    return [u.strip() for u in value.split(",") if u.strip()]


@dataclass(frozen=True)
class Settings:
    # One URL, or a cluster's seed servers comma-separated (nats://a:4222,nats://b:4222).
    nats_url: str = "nats://127.0.0.1:4222"
    # Copies JetStream keeps of every stream, durable consumer and trust bucket: 1 on a single
    # server, 3 on a three-node cluster (a stream then survives the loss of one node).
    replicas: int = 1
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Where the service keeps its signing key, the sample vendor PKI, the audit trail and (for
    # the embedded NATS) the JetStream data: streams and the trust configuration's buckets.
    data_dir: Path = field(default_factory=lambda: default_data_dir())
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    http_reuse_port: bool = False  # several gateway processes on one port (SO_REUSEPORT)
    # A worker's /metrics, /healthz and /readyz (0: none; the gateway serves them on its own port).
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 0
    # Sessions and nonces: single use, expire after this many seconds (KBS default: 5 minutes).
    nonce_ttl_s: float = 300.0
    token_lifetime_s: int = 300
    # How long the gateway waits for the pipeline before answering with a rejection.
    request_timeout_s: float = 30.0
    # How long a request may wait on Redis or NATS before the gateway answers 503 (with
    # Retry-After): a frozen or dead dependency never turns into a hang or a 500.
    dependency_timeout_s: float = 1.5
    # TDX guests send the whole CCEL area (256 KiB on common firmware) base64-encoded; the bus
    # message must still fit NATS's default 1 MiB payload.
    max_body_bytes: int = 900 * 1024
    # JetStream consumer settings shared by every stage.
    max_deliver: int = 5
    ack_wait_s: float = 30.0
    max_ack_pending: int = 2000
    # How long one pull request stays open on the server. Messages are delivered the moment they
    # arrive whatever this is; a short life only costs idle workers and nats-server a new request
    # (and an expiry notice) per consumer each time. The server drops a request at once when its
    # worker unsubscribes or disconnects, so a stopped replica strands nothing.
    fetch_timeout_s: float = 30.0
    stage_concurrency: int = 128
    # Compiled policies each worker keeps (least recently used goes first). A compiled policy
    # holds ~1.6 MB (measured: the default SNP policy), so 64 is ~100 MB; tenants with the same
    # policy text share one entry. Raise it when more distinct policies are in daily use than
    # this, or each request past it compiles again (milliseconds).
    policy_cache_entries: int = 64
    # Threads for signature checks (they release the GIL, so they can overlap with the event
    # loop); 0 runs them inline. Measured with `remits bench`: inline costs less CPU per
    # attestation when every core already runs its own REMITS process, as `remits up` does.
    crypto_threads: int = 0
    # Endorsement server of the simulated "sample" vendor (AMD KDS / Intel PCS come later).
    sample_kds_url: str = "http://127.0.0.1:8099"
    endorsement_cache_ttl_s: int = 24 * 3600
    # Certificates provisioned by hand (<dir>/<tee>/<cache key>), consulted before any vendor fetch.
    offline_endorsements_dir: Path | None = None
    # AMD key distribution server (SEV-SNP VCEKs and CRLs).
    snp_kds_url: str = "https://kdsintf.amd.com"
    # Replaces the pinned AMD roots (<dir>/<milan|genoa|turin>/{ark,ask,asvk}.pem). For test
    # vendors (the SNP demo) only: never point this at roots a host or guest supplied.
    snp_roots_dir: Path | None = None
    # Replaces the pinned legacy AMD SEV ARK/ASK (<dir>/<naples|rome|milan>/{ark,ask}.cert). For
    # test vendors (the SEV demo and tests) only.
    sev_roots_dir: Path | None = None
    # Replaces Google's pinned EK/AK CA roots (a PEM file of certificates) for gcp-vtpm. For test
    # vendors (the GCP vTPM demo and tests) only.
    gcp_ak_roots_path: Path | None = None
    # Arm CCA trust anchors (CPAKs) served per platform as <url>/<implementation id hex>/<instance id
    # hex> (one trust-anchor-store entry, JSON); empty: only the offline directory (<dir>/cca/...).
    cca_ta_url: str = ""
    # IBM Secure Execution: the operator's host key documents and the chain they are checked
    # against (<dir>/{hkds,ca,roots,crls}/); none: `se` attestation requests are refused.
    se_dir: Path | None = None
    # The node-join service of confidential clusters (component "join", services/join): its attested
    # TLS port (0: any free port), the clusters it admits nodes to (JSON file), and how often a member
    # must re-attest before it is evicted: below the token lifetime, since the cluster statement
    # lists each member's last EAR and a user's check refuses an expired one.
    join_host: str = "127.0.0.1"
    join_port: int = 8443
    join_clusters_path: Path | None = None
    join_reattest_s: float = 120.0
    # Key custody in an HSM through PKCS#11 (e.g. SoftHSM2, a network HSM's client library): the
    # module, the token's label (and, optionally, the slot that must hold it) and its user PIN (or
    # a file holding it: a mounted secret rather than the environment), and the labels of the EAR
    # signing key (EC P-256) and of the key-encryption key of secrets (AES-256). Keys there never
    # leave the HSM.
    pkcs11_module: str = ""
    pkcs11_token: str = ""
    pkcs11_slot: int | None = None
    pkcs11_pin: str = field(default="", repr=False)
    pkcs11_pin_file: Path | None = None
    pkcs11_signing_key: str = ""
    pkcs11_kek: str = ""
    # Intel PCS, or a PCCS (same v4 API), for TDX/SGX collateral.
    dcap_pcs_url: str = "https://api.trustedservices.intel.com"
    # Replaces the pinned Intel SGX Root CA (PEM file). For test vendors (the TDX demo) only.
    dcap_root_ca_path: Path | None = None
    # Intel always publishes the PCK and root CA CRLs; verifying without them is an explicit choice.
    dcap_require_crls: bool = True
    # Public keys (PEM files) whose admin JWTs the admin API accepts; none: the admin API is off.
    admin_keys: tuple[Path, ...] = ()
    # Public keys (PEM files) trusted to sign reference-value manifests.
    provisioner_keys: tuple[Path, ...] = ()
    # The key-encryption key of secrets at rest: a base64 value, or a key file; by default the one
    # in the credentials directory (created there with the credentials).
    kek: str = ""
    kek_file: Path | None = None
    # How long the evidence of each appraisal is kept for `remits audit replay`, and at most how
    # much of it (the oldest goes first).
    evidence_retention_s: float = 30 * 86400.0
    evidence_max_bytes: int = 1 << 30
    # Each component's identity on NATS and Redis and its message key (`remits creds` writes the
    # directory; `remits up` creates one in the data directory for its embedded servers).
    credentials_dir: Path | None = None
    # A component's NATS credentials (an nkey seed or a NATS .creds file), instead of the one in
    # credentials_dir: for operators who manage NATS users themselves.
    nats_creds: Path | None = None
    # Without credentials a component refuses to start; this runs it on an open bus instead (never
    # in production: anyone who reaches NATS or Redis could then forge decisions).
    insecure_open_bus: bool = False
    # TLS to NATS and to Redis (a rediss:// URL): the CA that signed the server's certificate, and
    # a client certificate and key where the server asks for one.
    nats_tls_ca: Path | None = None
    nats_tls_cert: Path | None = None
    nats_tls_key: Path | None = None
    redis_tls_ca: Path | None = None
    redis_tls_cert: Path | None = None
    redis_tls_key: Path | None = None
    service_name: str = "remits"

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        base = cls(
            nats_url=_env("NATS_URL", cls.nats_url),
            replicas=int(_env("REPLICAS", str(cls.replicas))),
            redis_url=_env("REDIS_URL", cls.redis_url),
            data_dir=Path(_env("DATA_DIR", str(default_data_dir()))),
            http_host=_env("HTTP_HOST", cls.http_host),
            http_port=int(_env("HTTP_PORT", str(cls.http_port))),
            metrics_host=_env("METRICS_HOST", cls.metrics_host),
            metrics_port=int(_env("METRICS_PORT", str(cls.metrics_port))),
            nonce_ttl_s=float(_env("NONCE_TTL_S", str(cls.nonce_ttl_s))),
            token_lifetime_s=int(_env("TOKEN_LIFETIME_S", str(cls.token_lifetime_s))),
            request_timeout_s=float(_env("REQUEST_TIMEOUT_S", str(cls.request_timeout_s))),
            dependency_timeout_s=float(_env("DEPENDENCY_TIMEOUT_S", str(cls.dependency_timeout_s))),
            max_body_bytes=int(_env("MAX_BODY_BYTES", str(cls.max_body_bytes))),
            max_deliver=int(_env("MAX_DELIVER", str(cls.max_deliver))),
            ack_wait_s=float(_env("ACK_WAIT_S", str(cls.ack_wait_s))),
            fetch_timeout_s=float(_env("FETCH_TIMEOUT_S", str(cls.fetch_timeout_s))),
            crypto_threads=int(_env("CRYPTO_THREADS", str(cls.crypto_threads))),
            policy_cache_entries=int(_env("POLICY_CACHE_ENTRIES", str(cls.policy_cache_entries))),
            sample_kds_url=_env("SAMPLE_KDS_URL", cls.sample_kds_url),
            admin_keys=_paths(_env("ADMIN_KEYS", "")),
            provisioner_keys=_paths(_env("PROVISIONER_KEYS", "")),
            kek=_env("KEK", ""),
            kek_file=_optional_path(_env("KEK_FILE", "")),
            evidence_retention_s=float(_env("EVIDENCE_RETENTION_S", str(cls.evidence_retention_s))),
            evidence_max_bytes=int(_env("EVIDENCE_MAX_BYTES", str(cls.evidence_max_bytes))),
            offline_endorsements_dir=_optional_path(_env("OFFLINE_ENDORSEMENTS_DIR", "")),
            snp_kds_url=_env("SNP_KDS_URL", cls.snp_kds_url),
            snp_roots_dir=_optional_path(_env("SNP_ROOTS_DIR", "")),
            sev_roots_dir=_optional_path(_env("SEV_ROOTS_DIR", "")),
            gcp_ak_roots_path=_optional_path(_env("GCP_AK_ROOTS_PATH", "")),
            cca_ta_url=_env("CCA_TA_URL", ""),
            se_dir=_optional_path(_env("SE_DIR", "")),
            join_host=_env("JOIN_HOST", cls.join_host),
            join_port=int(_env("JOIN_PORT", str(cls.join_port))),
            join_clusters_path=_optional_path(_env("JOIN_CLUSTERS", "")),
            join_reattest_s=float(_env("JOIN_REATTEST_S", str(cls.join_reattest_s))),
            pkcs11_module=_env("PKCS11_MODULE", ""),
            pkcs11_token=_env("PKCS11_TOKEN", ""),
            pkcs11_slot=int(_env("PKCS11_SLOT", "")) if _env("PKCS11_SLOT", "") else None,
            pkcs11_pin=_env("PKCS11_PIN", ""),
            pkcs11_pin_file=_optional_path(_env("PKCS11_PIN_FILE", "")),
            pkcs11_signing_key=_env("PKCS11_SIGNING_KEY", ""),
            pkcs11_kek=_env("PKCS11_KEK", ""),
            dcap_pcs_url=_env("DCAP_PCS_URL", cls.dcap_pcs_url),
            dcap_root_ca_path=_optional_path(_env("DCAP_ROOT_CA_PATH", "")),
            dcap_require_crls=_env("DCAP_REQUIRE_CRLS", "true").lower() not in ("0", "false", "no"),
            credentials_dir=_optional_path(_env("CREDENTIALS_DIR", "")),
            nats_creds=_optional_path(_env("NATS_CREDS", "")),
            insecure_open_bus=_env("INSECURE_OPEN_BUS", "false").lower() in ("1", "true", "yes"),
            nats_tls_ca=_optional_path(_env("NATS_TLS_CA", "")),
            nats_tls_cert=_optional_path(_env("NATS_TLS_CERT", "")),
            nats_tls_key=_optional_path(_env("NATS_TLS_KEY", "")),
            redis_tls_ca=_optional_path(_env("REDIS_TLS_CA", "")),
            redis_tls_cert=_optional_path(_env("REDIS_TLS_CERT", "")),
            redis_tls_key=_optional_path(_env("REDIS_TLS_KEY", "")),
        )
        clean = {k: v for k, v in overrides.items() if v is not None}
        for name in (
            "data_dir", "offline_endorsements_dir", "snp_roots_dir", "sev_roots_dir", "dcap_root_ca_path", "gcp_ak_roots_path", "se_dir", "join_clusters_path", "credentials_dir",
            "nats_creds", "nats_tls_ca", "nats_tls_cert", "nats_tls_key", "redis_tls_ca", "redis_tls_cert",
            "redis_tls_key", "kek_file", "pkcs11_pin_file",
        ):  # fmt: skip
            if name in clean:
                clean[name] = Path(str(clean[name]))
        for name in ("admin_keys", "provisioner_keys"):
            if name in clean:
                clean[name] = tuple(Path(str(p)) for p in clean[name])  # type: ignore[union-attr]
        return dataclasses.replace(base, **clean)  # type: ignore[arg-type]

    @property
    def signing_key_path(self) -> Path:
        return self.data_dir / "ear-signing-key.pem"

    @property
    def sample_pki_dir(self) -> Path:
        return self.data_dir / "sample-pki"

    @property
    def audit_log_path(self) -> Path:
        return self.data_dir / "audit.jsonl"

    @property
    def audit_key_path(self) -> Path:
        """The audit consumer's Ed25519 key, signing every record of the trail (the public half
        sits next to it, for `remits audit verify`)."""
        return self.data_dir / "audit-signing-key.pem"

    @property
    def embedded_credentials_dir(self) -> Path:
        """Where `remits up` keeps the credentials of its embedded servers' users."""
        return self.data_dir / "credentials"
