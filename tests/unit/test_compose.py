"""The container deployment (docker-compose.yml, Dockerfile, deploy/remits.env) is checked here
against the real CLI, settings and component list, since Docker itself is not run by the tests."""

from __future__ import annotations

import json
import os
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from services import cli
from services.join.config import load_clusters
from services.runtime import COMPONENTS
from shared import credentials
from shared.config import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
CONFIG_SOURCES = (ROOT / "shared" / "config.py", ROOT / "shared" / "telemetry.py")
INFRA = ("nats", "redis")
# The join service of confidential clusters runs only with the compose profile `clusters`
# (`docker compose --profile clusters up`); everything else runs on a plain `docker compose up`.
JOIN = credentials.JOIN
CLUSTERS_PROFILE = "clusters"
DEPLOYED = (*COMPONENTS, JOIN)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(doc, dict) and isinstance(doc.get("services"), dict)
    return doc


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


# -- normalisers for the several syntaxes the Compose spec allows ------------------------------


def _command(svc: dict[str, Any]) -> list[str]:
    cmd = svc.get("command")
    assert cmd is not None, "service has no command"
    return shlex.split(cmd) if isinstance(cmd, str) else [str(part) for part in cmd]


def _build(svc: dict[str, Any]) -> tuple[Path, str]:
    build = svc.get("build")
    assert build is not None, "service is not built from the repo"
    if isinstance(build, str):
        build = {"context": build}
    return (COMPOSE_FILE.parent / build.get("context", ".")).resolve(), build.get("dockerfile", "Dockerfile")


def _env_file_paths(svc: dict[str, Any]) -> list[Path]:
    files = svc.get("env_file") or []
    if isinstance(files, (str, dict)):
        files = [files]
    return [COMPOSE_FILE.parent / (f["path"] if isinstance(f, dict) else f) for f in files]


def _parse_env_file(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"{path.name}: not KEY=VALUE: {line!r}"
            env[key.strip()] = value.strip()
    return env


def _environment(svc: dict[str, Any]) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def _effective_env(svc: dict[str, Any]) -> dict[str, str]:
    """What the container sees: env_file entries, overridden by `environment` (Compose precedence)."""
    env: dict[str, str] = {}
    for path in _env_file_paths(svc):
        env.update(_parse_env_file(path))
    env.update(_environment(svc))
    return env


def _volume_mounts(svc: dict[str, Any]) -> dict[str, str]:
    """target path -> named volume (bind mounts are reported with their host path)."""
    mounts: dict[str, str] = {}
    for vol in svc.get("volumes") or []:
        if isinstance(vol, dict):
            mounts[vol["target"]] = vol.get("source", "")
        else:
            source, _, rest = vol.partition(":")
            mounts[rest.split(":")[0]] = source
    return mounts


def _depends_on(svc: dict[str, Any]) -> dict[str, str]:
    deps = svc.get("depends_on") or {}
    if isinstance(deps, list):
        return {name: "service_started" for name in deps}
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def _ports(svc: dict[str, Any]) -> list[tuple[int, int]]:
    """(published, target) pairs."""
    pairs = []
    for port in svc.get("ports") or []:
        if isinstance(port, dict):
            pairs.append((int(port["published"]), int(port["target"])))
        else:
            parts = str(port).split("/")[0].split(":")
            assert len(parts) >= 2, f"port {port!r} is not published on a fixed host port"
            pairs.append((int(parts[-2]), int(parts[-1])))
    return pairs


def _container_settings(svc: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Settings]:
    """Parse the service command with the real CLI parser and build the Settings the process would
    use, from the container's environment only (the test process's REMITS_* are removed)."""
    args = cli.build_parser().parse_args(_command(svc))
    with monkeypatch.context() as m:
        for name in [n for n in os.environ if n.startswith("REMITS_")]:
            m.delenv(name)
        for name, value in _effective_env(svc).items():
            m.setenv(name, value)
        settings = cli._settings(args)
    return args, settings


# -- services --------------------------------------------------------------------------------


def test_no_obsolete_version_key(compose: dict[str, Any]) -> None:
    assert "version" not in compose


def test_stage_services_are_exactly_the_components(services: dict[str, dict[str, Any]]) -> None:
    workers = {name for name, svc in services.items() if svc.get("command") and _command(svc)[0] == "worker"}
    assert workers == set(DEPLOYED)
    stages = {cli.build_parser().parse_args(_command(services[name])).stage for name in workers}
    assert stages == set(DEPLOYED), "every component must run exactly once, under its own service name"
    assert set(credentials.COMPONENTS) == {*DEPLOYED, credentials.ADMIN}


@pytest.mark.parametrize("stage", DEPLOYED)
def test_component_runs_its_own_worker(services: dict[str, dict[str, Any]], stage: str) -> None:
    args = cli.build_parser().parse_args(_command(services[stage]))
    assert args.command == "worker"
    assert args.stage == stage
    # The real parser accepts the bare form too (what `docker compose run <svc> worker <stage>` sends).
    assert cli.build_parser().parse_args(["worker", stage]).stage == stage


def test_all_remits_services_share_one_image_build(services: dict[str, dict[str, Any]]) -> None:
    builds = {name: _build(services[name]) for name in (*DEPLOYED, "setup")}
    assert len(set(builds.values())) == 1, builds
    context, dockerfile = next(iter(builds.values()))
    assert context == ROOT
    assert (context / dockerfile).resolve() == DOCKERFILE
    images = {services[name].get("image") for name in builds}
    assert len(images) == 1, f"services built from the same context should share one image tag: {images}"


@pytest.mark.parametrize("name", (*DEPLOYED, "setup"))
def test_env_points_at_the_nats_and_redis_services(
    services: dict[str, dict[str, Any]], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = _effective_env(services[name])
    nats = urlsplit(env["REMITS_NATS_URL"])
    assert (nats.scheme, nats.hostname, nats.port) == ("nats", "nats", 4222)
    redis = urlsplit(env["REMITS_REDIS_URL"])
    assert (redis.scheme, redis.hostname, redis.port) == ("redis", "redis", 6379)
    assert set(INFRA) <= set(services)
    # And that is what the process really uses once the CLI has merged flags and environment.
    _, settings = _container_settings(services[name], monkeypatch)
    assert settings.nats_url == env["REMITS_NATS_URL"]
    if name != "setup":
        assert settings.redis_url == env["REMITS_REDIS_URL"]


def test_every_remits_service_sees_the_same_wiring(services: dict[str, dict[str, Any]]) -> None:
    keys = ("REMITS_NATS_URL", "REMITS_REDIS_URL", "REMITS_DATA_DIR")
    wiring = {
        name: tuple(_effective_env(services[name]).get(k) for k in keys) for name in (*DEPLOYED, "setup")
    }
    assert len(set(wiring.values())) == 1, wiring


def test_components_share_one_data_volume(
    compose: dict[str, Any], services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: set[tuple[str, str]] = set()
    for stage in DEPLOYED:
        svc = services[stage]
        _, settings = _container_settings(svc, monkeypatch)
        data_dir = str(settings.data_dir)
        assert data_dir == _effective_env(svc)["REMITS_DATA_DIR"]
        mounts = _volume_mounts(svc)
        assert data_dir in mounts, f"{stage} does not mount a volume at its data dir {data_dir}"
        seen.add((mounts[data_dir], data_dir))
    assert len(seen) == 1, seen
    volume, data_dir = seen.pop()
    assert data_dir == "/var/lib/remits"
    assert volume in (compose.get("volumes") or {}), f"{volume} is not a declared named volume"
    # The image sets the same default, and owns the directory so a fresh volume is writable.
    assert re.search(rf"^ENV\b.*REMITS_DATA_DIR={re.escape(data_dir)}\b", _dockerfile_text(), re.MULTILINE)
    assert re.search(rf"\bchown\b.*{re.escape(data_dir)}", _dockerfile_text())


@pytest.mark.parametrize("stage", DEPLOYED)
def test_component_waits_for_infra_and_setup(services: dict[str, dict[str, Any]], stage: str) -> None:
    deps = _depends_on(services[stage])
    assert {"nats", "redis", "setup"} <= set(deps)
    assert deps["setup"] == "service_completed_successfully"
    assert services[stage].get("restart") == "unless-stopped"


def test_setup_job_creates_the_topology(services: dict[str, dict[str, Any]]) -> None:
    setup = services["setup"]
    assert cli.build_parser().parse_args(_command(setup)).command == "setup"
    assert "nats" in _depends_on(setup)
    # A one-shot job: restarting it would keep the workers waiting forever.
    assert setup.get("restart", "no") == "no"


def test_nats_enables_jetstream_with_storage(services: dict[str, dict[str, Any]]) -> None:
    nats = services["nats"]
    assert str(nats["image"]).startswith("nats:")
    cmd = _command(nats)
    assert "-js" in cmd or "--jetstream" in cmd
    store = cmd[cmd.index("-sd") + 1] if "-sd" in cmd else None
    assert store and store in _volume_mounts(nats), "JetStream store dir should be on a volume"


def test_redis_service(services: dict[str, dict[str, Any]]) -> None:
    assert str(services["redis"]["image"]).startswith("redis:")


def test_gateway_publishes_its_listen_port(
    services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    gateway = services["gateway"]
    _, settings = _container_settings(gateway, monkeypatch)
    assert settings.http_host == "0.0.0.0", "the gateway must listen on all interfaces inside the container"
    ports = _ports(gateway)
    assert (8080, settings.http_port) in ports
    assert settings.http_port == 8080
    # Only the gateway (and the join service, below) is reachable from outside.
    for name, svc in services.items():
        if name not in ("gateway", JOIN):
            assert not svc.get("ports"), f"{name} should not publish ports"


def test_single_instance_services_are_not_replicated(services: dict[str, dict[str, Any]]) -> None:
    # audit appends to one file; the gateway publishes a fixed host port.
    # join: every replica would sweep the members, and it publishes a fixed host port.
    for name in ("audit", "gateway", JOIN):
        assert (services[name].get("deploy") or {}).get("replicas", 1) == 1


def test_env_files_exist(services: dict[str, dict[str, Any]]) -> None:
    for svc in services.values():
        for path in _env_file_paths(svc):
            assert path.is_file(), path


# -- Dockerfile ------------------------------------------------------------------------------


def _dockerfile_text() -> str:
    return DOCKERFILE.read_text()


def _instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", _dockerfile_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def test_dockerfile_installs_the_package_with_remits_entrypoint() -> None:
    instructions = _instructions()
    base = next(rest for op, rest in instructions if op == "FROM")
    assert base.startswith("python:3.11")
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert requires == ">=3.11"
    assert any(op == "COPY" and rest.split()[0] == "." for op, rest in instructions)
    assert any(
        op == "RUN" and re.search(r"\bpip install\b[^&;]*\s\.(\s|$)", rest) for op, rest in instructions
    )
    entrypoints = [json.loads(rest) for op, rest in instructions if op == "ENTRYPOINT"]
    assert entrypoints[-1] == ["remits"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["remits"] == "services.cli:main"
    user = [rest for op, rest in instructions if op == "USER"]
    assert user and user[-1] not in ("root", "0"), "the image must not run as root"


def test_dockerignore_keeps_what_pip_install_needs() -> None:
    ignored = {line.strip().strip("/") for line in DOCKERIGNORE.read_text().splitlines()}
    for needed in ("pyproject.toml", "README.md", "shared", "services", "*", "**"):
        assert needed not in ignored


# -- environment variable names --------------------------------------------------------------


def _env_names_in_deployment(services: dict[str, dict[str, Any]]) -> set[str]:
    names: set[str] = set()
    for svc in services.values():
        if svc.get("build") is None:
            continue  # third-party images (nats, redis)
        names |= set(_environment(svc))
        for path in _env_file_paths(svc):
            # Commented-out examples (`# REMITS_X=...`) are documentation of real settings too.
            names |= set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", path.read_text(), re.MULTILINE))
    return names


def test_every_env_var_in_the_deployment_is_read_by_the_code(services: dict[str, dict[str, Any]]) -> None:
    sources = "\n".join(path.read_text() for path in CONFIG_SOURCES)
    names = _env_names_in_deployment(services)
    assert {"REMITS_NATS_URL", "REMITS_REDIS_URL", "REMITS_DATA_DIR"} <= names
    unread = []
    for name in sorted(names):
        assert name.startswith("REMITS_"), name
        suffix = name.removeprefix("REMITS_")
        # Settings.from_env reads `_env("NATS_URL", ...)`, i.e. REMITS_ + the name.
        if name not in sources and f'_env("{suffix}"' not in sources:
            unread.append(name)
    assert not unread, (
        f"set in the deployment but never read by shared/config.py or shared/telemetry.py: {unread}"
    )


# -- credentials: every component mounts only its own ---------------------------------------------


def _credential_subpaths(svc: dict[str, Any]) -> list[str]:
    return [
        v["volume"]["subpath"]
        for v in svc.get("volumes") or []
        if isinstance(v, dict) and v.get("source") == "remits-credentials" and v.get("read_only")
    ]


@pytest.mark.parametrize("component", DEPLOYED)
def test_each_component_mounts_only_its_own_credentials(
    services: dict[str, dict[str, Any]], component: str
) -> None:
    assert _credential_subpaths(services[component]) == [component]
    assert services[component]["environment"]["REMITS_CREDENTIALS_DIR"] == "/credentials"


def test_servers_load_the_users_and_the_operator_sets_up(services: dict[str, dict[str, Any]]) -> None:
    creds_job = services["creds"]
    assert _command(creds_job)[:1] == ["creds"] and "--per-component" in _command(creds_job)
    args = cli.build_parser().parse_args(_command(creds_job))
    assert str(args.out) == "/credentials" and args.per_component
    assert _credential_subpaths(services["nats"]) == ["servers"]
    assert _command(services["nats"])[-2:] == ["-c", "/credentials/nats-authorization.conf"]
    assert _credential_subpaths(services["redis"]) == ["servers"]
    assert "/credentials/redis-users.acl" in _command(services["redis"])
    assert _credential_subpaths(services["setup"]) == ["admin"]
    for server in ("nats", "redis"):
        assert services[server]["depends_on"]["creds"]["condition"] == "service_completed_successfully"


# -- the join service (profile `clusters`) and identity's IBM Secure Execution directory ---------


def _profiles(svc: dict[str, Any]) -> list[str]:
    return [str(p) for p in svc.get("profiles") or []]


def test_join_runs_only_with_the_clusters_profile(services: dict[str, dict[str, Any]]) -> None:
    assert _profiles(services[JOIN]) == [CLUSTERS_PROFILE]
    # A plain `docker compose up` is unchanged: every other service is in no profile.
    for name, svc in services.items():
        if name != JOIN:
            assert not _profiles(svc), f"{name} should run without a profile"
    # Nothing in the default set depends on it (Compose would refuse, or start it anyway).
    for name, svc in services.items():
        assert JOIN not in _depends_on(svc), name


def test_join_listens_on_its_published_port_with_its_clusters(
    services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    join = services[JOIN]
    _, settings = _container_settings(join, monkeypatch)
    assert settings.join_host == "0.0.0.0", "the join service must listen on all interfaces in the container"
    assert settings.join_port == Settings().join_port == 8443
    assert _ports(join) == [(settings.join_port, settings.join_port)]
    # The clusters file (REMITS_JOIN_CLUSTERS), bind-mounted read-only from the repo, parses.
    clusters = settings.join_clusters_path
    assert clusters is not None and _effective_env(join)["REMITS_JOIN_CLUSTERS"] == str(clusters)
    binds = {target: source for target, source in _volume_mounts(join).items() if source.startswith("./")}
    source = binds[str(clusters.parent)]
    spec = next(v for v in join["volumes"] if isinstance(v, str) and v.split(":")[1] == str(clusters.parent))
    assert spec.endswith(":ro")
    host_file = COMPOSE_FILE.parent / source / clusters.name
    assert host_file.is_file()
    assert load_clusters(host_file) == {}  # as shipped: no cluster, every join refused
    # The join key lands in the shared data volume, where the gateway's JWKS finds it.
    assert (
        _volume_mounts(join)[str(settings.data_dir)]
        == _volume_mounts(services["gateway"])[str(settings.data_dir)]
    )


def test_identity_mounts_the_se_directory(
    services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    identity = services["identity"]
    _, settings = _container_settings(identity, monkeypatch)
    assert settings.se_dir is not None and str(settings.se_dir) == "/etc/remits/se"
    spec = next(
        v for v in identity["volumes"] if isinstance(v, str) and v.split(":")[1] == str(settings.se_dir)
    )
    source, _, mode = spec.split(":")
    assert mode == "ro"
    assert (COMPOSE_FILE.parent / source).is_dir(), "Docker would create a missing bind source as root"
    # The same wiring as every other component (the anchor is merged, not replaced).
    assert {k: v for k, v in _environment(identity).items() if k != "REMITS_SE_DIR"} == _environment(
        services["intake"]
    )
    # Its SE session key comes with its own credentials (shared/credentials.py), nobody else's.
    assert credentials.SE_KEY_HOLDERS == ("identity",)
    for name in DEPLOYED:
        if name != "identity":
            assert "REMITS_SE_DIR" not in _environment(services[name]), name
