"""The Kubernetes manifests (deploy/kubernetes/) are checked here against the real CLI, settings,
component list and JetStream topology. No cluster is involved: the kustomizations are rendered by
a small subset of kustomize written below (resources, namespace, images, patches), every manifest
is parsed, and the wiring between the objects, and between them and the code, is cross-checked."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from nats.js.errors import NotFoundError

from services import cli
from services.runtime import COMPONENTS
from shared import credentials, schemas
from shared.bus import RELEASE_DECISIONS_DURABLE, ensure_topology
from shared.config import Settings

ROOT = Path(__file__).resolve().parents[2]
KUBE = ROOT / "deploy" / "kubernetes"
BASE = KUBE / "base"
PRODUCTION = KUBE / "overlays" / "production"
MAKE_SECRETS = KUBE / "make-secrets.sh"
CONFIG_SOURCES = (ROOT / "shared" / "config.py", ROOT / "shared" / "telemetry.py")
# Being added to shared/config.py while these manifests are written; allowed only until they land.
PENDING_SETTINGS = {"REMITS_METRICS_PORT", "REMITS_METRICS_HOST", "REMITS_REPLICAS"}
NAMESPACE = "remits"
# Every component with a Deployment: the pipeline's (what `remits up` always runs) and the join
# service of confidential clusters (`remits worker join`, run when clusters are configured).
JOIN = credentials.JOIN
DEPLOYED = (*COMPONENTS, JOIN)
WORKERS = tuple(c for c in DEPLOYED if c != "gateway")
# The join service's front door (shared/config.py join_port) and its clusters file.
JOIN_PORT = Settings().join_port
# IBM Secure Execution: identity's REMITS_SE_DIR and the subdirectories shared/seattest.py reads.
SE_SUBDIRS = ("hkds", "ca", "roots", "crls")
# Target rates the CPU requests are sized for (see the comments in the manifests).
BASE_RATE, PRODUCTION_RATE = 300.0, 1000.0
PLANNED_UTILISATION = 0.7
CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PersistentVolume",
}
WORKLOADS = {"Deployment", "StatefulSet", "Job", "DaemonSet"}

Doc = dict[str, Any]


# -- a small kustomize ------------------------------------------------------------------------


def _load(path: Path) -> list[Doc]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    for doc in docs:
        assert isinstance(doc, dict) and doc.get("kind") and doc.get("metadata", {}).get("name"), path
    return docs


def _merge(target: Any, patch: Any) -> Any:
    """Strategic merge as far as these patches need it: maps merge, lists of named maps (containers,
    env, ports, volumes) merge by name, anything else is replaced; null deletes."""
    if isinstance(target, dict) and isinstance(patch, dict):
        out = dict(target)
        for key, value in patch.items():
            if value is None:
                out.pop(key, None)
            elif key in out:
                out[key] = _merge(out[key], value)
            else:
                out[key] = value
        return out
    named = lambda items: isinstance(items, list) and all(isinstance(i, dict) and "name" in i for i in items)  # noqa: E731
    if named(target) and named(patch):
        out_list = [dict(i) for i in target]
        for item in patch:
            match = next((n for n, i in enumerate(out_list) if i["name"] == item["name"]), None)
            if match is None:
                out_list.append(item)
            else:
                out_list[match] = _merge(out_list[match], item)
        return out_list
    return patch


def _group(doc: Doc) -> str:
    api = doc.get("apiVersion", "")
    return api.split("/")[0] if "/" in api else ""


def _selected_by(target: dict[str, Any], doc: Doc) -> bool:
    if "group" in target and target["group"] != _group(doc):
        return False
    if "kind" in target and target["kind"] != doc["kind"]:
        return False
    if "name" in target and not re.fullmatch(target["name"], doc["metadata"]["name"]):
        return False
    if "labelSelector" in target:
        wanted = dict(part.split("=", 1) for part in target["labelSelector"].split(","))
        if not _labels_match(wanted, doc["metadata"].get("labels") or {}):
            return False
    return True


def _apply_patch(docs: list[Doc], entry: dict[str, Any], directory: Path) -> None:
    assert set(entry) <= {"path", "patch", "target"}, f"unsupported patch fields: {entry}"
    patches = (
        _load(directory / entry["path"]) if "path" in entry else list(yaml.safe_load_all(entry["patch"]))
    )
    for patch in patches:
        target = entry.get("target")
        if target is None:
            target = {"kind": patch["kind"], "name": re.escape(patch["metadata"]["name"])}
            if _group(patch):
                target["group"] = _group(patch)
        else:
            assert set(target) <= {"group", "kind", "name", "labelSelector"}, target
            patch = {k: v for k, v in patch.items() if k not in ("metadata", "apiVersion", "kind")}
        hits = [n for n, doc in enumerate(docs) if _selected_by(target, doc)]
        assert hits, f"patch {entry} matches nothing"
        for n in hits:
            docs[n] = _merge(docs[n], patch)


def _split_image(image: str) -> tuple[str, str]:
    name, _, tag = image.rpartition(":")
    if not name or "/" in tag:
        return image, ""
    return name, tag


def _apply_images(docs: list[Doc], images: list[dict[str, str]]) -> None:
    for entry in images:
        assert set(entry) <= {"name", "newName", "newTag"}, entry
        for doc in docs:
            for container in _containers(doc, init=True):
                name, tag = _split_image(container["image"])
                if name == entry["name"]:
                    name = entry.get("newName", name)
                    tag = entry.get("newTag", tag)
                    container["image"] = f"{name}:{tag}" if tag else name


def render(directory: Path) -> list[Doc]:
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    known = {"apiVersion", "kind", "namespace", "resources", "images", "patches"}
    assert set(kustomization) <= known, f"beyond the subset this test renders: {set(kustomization) - known}"
    docs: list[Doc] = []
    for resource in kustomization.get("resources", []):
        path = (directory / resource).resolve()
        docs += render(path) if path.is_dir() else _load(path)
    for entry in kustomization.get("patches", []):
        _apply_patch(docs, entry, directory)
    _apply_images(docs, kustomization.get("images", []))
    if "namespace" in kustomization:
        for doc in docs:
            if doc["kind"] not in CLUSTER_SCOPED:
                doc["metadata"]["namespace"] = kustomization["namespace"]
    return docs


# -- helpers ---------------------------------------------------------------------------------


def _labels_match(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A Service selector (a plain map) or a LabelSelector (matchLabels/matchExpressions)."""
    if "matchLabels" in selector or "matchExpressions" in selector:
        plain = selector.get("matchLabels") or {}
        for expr in selector.get("matchExpressions") or []:
            key, op, values = expr["key"], expr["operator"], expr.get("values") or []
            ok = {
                "In": key in labels and labels[key] in values,
                "NotIn": labels.get(key) not in values,
                "Exists": key in labels,
                "DoesNotExist": key not in labels,
            }[op]
            if not ok:
                return False
    else:
        plain = selector
    return all(labels.get(k) == str(v) for k, v in plain.items())


def _pod_spec(doc: Doc) -> Doc:
    return doc["spec"]["template"]["spec"]


def _pod_labels(doc: Doc) -> dict[str, str]:
    return doc["spec"]["template"]["metadata"]["labels"]


def _containers(doc: Doc, init: bool = False) -> Iterator[Doc]:
    if doc["kind"] not in WORKLOADS:
        return
    spec = _pod_spec(doc)
    yield from spec.get("containers", [])
    if init:
        yield from spec.get("initContainers", []) or []


def _find(docs: list[Doc], kind: str, name: str) -> Doc:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def _pods(docs: list[Doc]) -> list[tuple[Doc, dict[str, str]]]:
    return [(d, _pod_labels(d)) for d in docs if d["kind"] in WORKLOADS]


def _selected_workloads(docs: list[Doc], selector: dict[str, Any]) -> set[str]:
    return {
        f"{d['kind']}/{d['metadata']['name']}" for d, labels in _pods(docs) if _labels_match(selector, labels)
    }


def _config(docs: list[Doc]) -> dict[str, str]:
    return {k: str(v) for k, v in _find(docs, "ConfigMap", "remits-config")["data"].items()}


def _env(docs: list[Doc], container: Doc) -> dict[str, str]:
    """The container's environment: its envFrom ConfigMaps, overridden by its env."""
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        ref = source["configMapRef"]["name"]
        env.update({k: str(v) for k, v in _find(docs, "ConfigMap", ref)["data"].items()})
    for item in container.get("env") or []:
        if "value" in item:
            env[item["name"]] = str(item["value"])
    return env


def _declared_ports(container: Doc) -> dict[str, int]:
    return {
        p.get("name", str(p["containerPort"])): int(p["containerPort"]) for p in container.get("ports") or []
    }


def _resolve_port(container: Doc, port: int | str) -> int:
    ports = _declared_ports(container)
    if isinstance(port, str):
        assert port in ports, f"{container['name']}: port {port!r} is not declared ({ports})"
        return ports[port]
    assert port in ports.values(), f"{container['name']}: port {port} is not declared ({ports})"
    return port


def _millicores(value: str | int | float) -> float:
    text = str(value)
    return float(text[:-1]) if text.endswith("m") else float(text) * 1000


def _component_container(docs: list[Doc], component: str) -> Doc:
    deployment = _find(docs, "Deployment", component)
    containers = list(_containers(deployment))
    assert len(containers) == 1, f"{component}: one container expected"
    return containers[0]


@pytest.fixture(scope="module")
def base() -> list[Doc]:
    return render(BASE)


@pytest.fixture(scope="module")
def production() -> list[Doc]:
    return render(PRODUCTION)


@pytest.fixture(scope="module", params=["base", "production"])
def rendered(request: pytest.FixtureRequest) -> list[Doc]:
    return render(BASE if request.param == "base" else PRODUCTION)


# -- objects ---------------------------------------------------------------------------------


def test_every_object_is_unique_and_in_the_namespace(rendered: list[Doc]) -> None:
    keys = [(d["kind"], d["metadata"]["name"]) for d in rendered]
    assert len(keys) == len(set(keys)), "duplicate objects"
    assert _find(rendered, "Namespace", NAMESPACE)
    for doc in rendered:
        if doc["kind"] not in CLUSTER_SCOPED:
            assert doc["metadata"]["namespace"] == NAMESPACE, doc["metadata"]["name"]


def test_workload_selectors_match_their_own_pods(rendered: list[Doc]) -> None:
    for doc in rendered:
        if doc["kind"] in ("Deployment", "StatefulSet"):
            assert _labels_match(doc["spec"]["selector"], _pod_labels(doc)), doc["metadata"]["name"]
            others = _selected_workloads(rendered, doc["spec"]["selector"]) - {
                f"{doc['kind']}/{doc['metadata']['name']}"
            }
            assert not others, f"{doc['metadata']['name']} selects other pods too: {others}"


@pytest.mark.parametrize("component", DEPLOYED)
def test_component_runs_its_worker_from_the_common_image(rendered: list[Doc], component: str) -> None:
    container = _component_container(rendered, component)
    assert "command" not in container, "the image's entrypoint (remits) must stay"
    assert container["args"] == ["worker", component]
    args = cli.build_parser().parse_args(container["args"])
    assert (args.command, args.stage) == ("worker", component)
    images = {
        c["image"] for d in rendered for c in _containers(d) if _split_image(c["image"])[0].endswith("remits")
    }
    assert len(images) == 1, f"every REMITS container should run the same image: {images}"
    assert container["image"] in images


def test_deployments_are_exactly_the_components(rendered: list[Doc]) -> None:
    deployments = {d["metadata"]["name"] for d in rendered if d["kind"] == "Deployment"}
    assert deployments == set(DEPLOYED)
    # Every component with credentials of its own has a Deployment (admin: the setup Job).
    assert set(credentials.COMPONENTS) == {*DEPLOYED, credentials.ADMIN}


def test_image_tag_is_the_package_version(base: list[Doc], production: list[Doc]) -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert _component_container(base, "intake")["image"] == f"remits:{version}"
    assert _component_container(production, "intake")["image"] == f"registry.example.com/remits:{version}"
    # Third-party images are pinned to a release line, never `latest`.
    for doc in base:
        for container in _containers(doc, init=True):
            assert ":" in container["image"] and not container["image"].endswith(":latest"), container[
                "image"
            ]


def test_setup_job_creates_the_topology_as_the_operator(rendered: list[Doc]) -> None:
    job = _find(rendered, "Job", "remits-setup")
    (container,) = _containers(job)
    assert cli.build_parser().parse_args(container["args"]).command == "setup"
    assert container["image"] == _component_container(rendered, "gateway")["image"]
    assert _pod_spec(job)["restartPolicy"] in ("OnFailure", "Never")
    secret = _secret_mounted_at(job, container, "/credentials")
    assert secret == f"remits-creds-{credentials.ADMIN}"


# -- environment -----------------------------------------------------------------------------


def _remits_containers(docs: list[Doc]) -> Iterator[tuple[Doc, Doc]]:
    for doc in docs:
        for container in _containers(doc):
            if _split_image(container["image"])[0].endswith("remits"):
                yield doc, container


def test_every_env_var_is_read_by_the_code(rendered: list[Doc]) -> None:
    sources = "\n".join(path.read_text() for path in CONFIG_SOURCES)
    names = set(_config(rendered))
    for _, container in _remits_containers(rendered):
        names |= set(_env(rendered, container))
    assert {"REMITS_NATS_URL", "REMITS_REDIS_URL", "REMITS_DATA_DIR", "REMITS_CREDENTIALS_DIR"} <= names
    unread = []
    for name in sorted(names):
        assert name.startswith("REMITS_"), name
        suffix = name.removeprefix("REMITS_")
        if name not in sources and f'_env("{suffix}"' not in sources and name not in PENDING_SETTINGS:
            unread.append(name)
    assert not unread, (
        f"set in the manifests but never read by shared/config.py or shared/telemetry.py: {unread}"
    )


def _settings(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    with monkeypatch.context() as m:
        for name in [n for n in os.environ if n.startswith("REMITS_")]:
            m.delenv(name)
        for name, value in env.items():
            m.setenv(name, value)
        return Settings.from_env()


def _secret_mounted_at(doc: Doc, container: Doc, path: str) -> str:
    mount = next(m for m in container.get("volumeMounts") or [] if m["mountPath"] == path)
    volume = next(v for v in _pod_spec(doc)["volumes"] if v["name"] == mount["name"])
    return volume["secret"]["secretName"]


@pytest.mark.parametrize("component", DEPLOYED)
def test_component_settings_and_mounts(
    rendered: list[Doc], component: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    deployment = _find(rendered, "Deployment", component)
    container = _component_container(rendered, component)
    settings = _settings(_env(rendered, container), monkeypatch)
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in _pod_spec(deployment)["volumes"]}
    for mount in mounts.values():
        assert mount["name"] in volumes, f"{component}: mount of an undeclared volume {mount['name']}"
    # Its own credentials only, where REMITS_CREDENTIALS_DIR points.
    assert str(settings.credentials_dir) == "/credentials"
    assert _secret_mounted_at(deployment, container, "/credentials") == f"remits-creds-{component}"
    assert mounts["/credentials"].get("readOnly") is True
    # A writable data directory (the root filesystem is read-only).
    assert str(settings.data_dir) in mounts and not mounts[str(settings.data_dir)].get("readOnly")
    assert "/tmp" in mounts
    # The EAR signing key: shared by those that sign or check tokens, and only by them.
    key_path = str(settings.signing_key_path)
    if component in ("gateway", "decide", "release"):
        assert key_path in mounts and mounts[key_path]["subPath"] == settings.signing_key_path.name
        assert volumes[mounts[key_path]["name"]]["secret"]["secretName"] == "remits-ear-key"
    else:
        assert key_path not in mounts
    # The join key: the join service signs with it, the gateway publishes it (JWKS); one Secret,
    # so that every replica and restart signs with the key the gateway publishes.
    join_key = str(settings.data_dir / "join-signing-key.pem")
    if component in ("gateway", JOIN):
        assert mounts[join_key]["subPath"] == "join-signing-key.pem" and mounts[join_key]["readOnly"] is True
        assert volumes[mounts[join_key]["name"]]["secret"]["secretName"] == "remits-join-key"
    else:
        assert join_key not in mounts
    # The SE directory: identity's alone.
    if component == "identity":
        assert settings.se_dir is not None
    else:
        assert settings.se_dir is None and not any(p.startswith("/etc/remits/se") for p in mounts)
    if component == JOIN:
        assert settings.join_clusters_path is not None
    else:
        assert settings.join_clusters_path is None
    if component == "provision":
        assert settings.admin_keys, "provision needs REMITS_ADMIN_KEYS"
        for key in settings.admin_keys:
            mount = mounts[str(key.parent)]
            cm = volumes[mount["name"]]["configMap"]["name"]
            assert cm == "remits-admin-keys"
    else:
        assert not settings.admin_keys


def test_gateway_listens_on_its_declared_port(rendered: list[Doc], monkeypatch: pytest.MonkeyPatch) -> None:
    container = _component_container(rendered, "gateway")
    settings = _settings(_env(rendered, container), monkeypatch)
    assert settings.http_host == "0.0.0.0"
    assert _declared_ports(container) == {"http": settings.http_port} == {"http": 8080}
    service = _find(rendered, "Service", "gateway")
    assert service["spec"]["type"] == "ClusterIP"
    assert _selected_workloads(rendered, service["spec"]["selector"]) == {"Deployment/gateway"}


def test_join_listens_on_its_declared_port_behind_a_service(
    rendered: list[Doc], monkeypatch: pytest.MonkeyPatch
) -> None:
    deployment = _find(rendered, "Deployment", JOIN)
    container = _component_container(rendered, JOIN)
    settings = _settings(_env(rendered, container), monkeypatch)
    # All interfaces inside the pod, on its own port (the default), declared by the container.
    assert settings.join_host == "0.0.0.0"
    assert settings.join_port == JOIN_PORT == 8443
    assert _declared_ports(container) == {
        "join": JOIN_PORT,
        "metrics": int(_config(rendered)["REMITS_METRICS_PORT"]),
    }
    service = _find(rendered, "Service", JOIN)
    assert service["spec"]["type"] == "ClusterIP"
    assert _selected_workloads(rendered, service["spec"]["selector"]) == {"Deployment/join"}
    (port,) = service["spec"]["ports"]
    assert _resolve_port(container, port["targetPort"]) == JOIN_PORT and port["protocol"] == "TCP"
    # Not scraped through it (its metrics go through remits-metrics like every worker's).
    assert service["metadata"]["labels"].get("remits.io/scrape") != "true"
    # Its clusters file, from the ConfigMap make-secrets.sh creates, mounted read-only.
    clusters = settings.join_clusters_path
    assert clusters is not None
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == str(clusters.parent))
    assert mount["readOnly"] is True
    volume = next(v for v in _pod_spec(deployment)["volumes"] if v["name"] == mount["name"])
    assert volume["configMap"]["name"] == "remits-join-clusters"
    assert "--from-file=clusters.json=" in MAKE_SECRETS.read_text()
    assert clusters.name == "clusters.json"
    # One replica (every replica sweeps the members): no KEDA, no budget.
    assert deployment["spec"]["replicas"] == 1
    assert not [
        d for d in rendered if d["kind"] == "ScaledObject" and d["spec"]["scaleTargetRef"]["name"] == JOIN
    ]


def test_join_runs_with_the_same_hardening_as_the_others(rendered: list[Doc]) -> None:
    join = _find(rendered, "Deployment", JOIN)
    provision = _find(rendered, "Deployment", "provision")
    for key in ("securityContext", "automountServiceAccountToken", "enableServiceLinks"):
        assert _pod_spec(join)[key] == _pod_spec(provision)[key], key
    mine, theirs = _component_container(rendered, JOIN), _component_container(rendered, "provision")
    assert mine["securityContext"] == theirs["securityContext"]
    assert mine["image"] == theirs["image"] and mine["envFrom"] == theirs["envFrom"]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert mine[probe] == theirs[probe], probe
    assert mine["resources"]["limits"]["cpu"] == theirs["resources"]["limits"]["cpu"]
    assert {k: v for k, v in _pod_labels(join).items() if k != "app.kubernetes.io/component"} == {
        k: v for k, v in _pod_labels(provision).items() if k != "app.kubernetes.io/component"
    }


def test_identity_mounts_the_optional_se_directory(
    rendered: list[Doc], monkeypatch: pytest.MonkeyPatch
) -> None:
    deployment = _find(rendered, "Deployment", "identity")
    container = _component_container(rendered, "identity")
    se_dir = _settings(_env(rendered, container), monkeypatch).se_dir
    assert se_dir is not None and str(se_dir) == "/etc/remits/se"
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in _pod_spec(deployment)["volumes"]}
    script = MAKE_SECRETS.read_text()
    loop = re.search(r"for sub in ([\w ]+); do", script)
    assert loop and tuple(loop.group(1).split()) == SE_SUBDIRS
    assert 'create configmap "remits-se-$sub"' in script
    for sub in SE_SUBDIRS:
        mount = mounts[str(se_dir / sub)]
        assert mount["readOnly"] is True and "subPath" not in mount
        source = volumes[mount["name"]]["configMap"]
        # Optional: a cluster without IBM Secure Execution starts identity all the same.
        assert source == {"name": f"remits-se-{sub}", "optional": True}
    # What shared/seattest.py reads under REMITS_SE_DIR, and nothing else mounted there.
    assert {p for p in mounts if p.startswith(str(se_dir))} == {str(se_dir / sub) for sub in SE_SUBDIRS}
    seattest = (ROOT / "services" / "seattest.py").read_text()
    assert re.search(r'for sub in \("hkds", "ca", "roots", "crls"\)', seattest)


def test_nats_url_lists_the_cluster_nodes(rendered: list[Doc], monkeypatch: pytest.MonkeyPatch) -> None:
    config = _config(rendered)
    sts = _find(rendered, "StatefulSet", "nats")
    (container,) = _containers(sts)
    ports = _declared_ports(container)
    headless = _find(rendered, "Service", sts["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    assert _selected_workloads(rendered, headless["spec"]["selector"]) == {"StatefulSet/nats"}
    nodes = [
        f"{sts['metadata']['name']}-{i}.{headless['metadata']['name']}"
        for i in range(sts["spec"]["replicas"])
    ]
    seeds = [urlsplit(u.strip()) for u in config["REMITS_NATS_URL"].split(",")]
    assert [(u.scheme, u.hostname, u.port) for u in seeds] == [("nats", n, ports["client"]) for n in nodes]
    assert _settings(config, monkeypatch).nats_url == config["REMITS_NATS_URL"]
    # Three copies of every stream on three nodes.
    assert int(config["REMITS_REPLICAS"]) == sts["spec"]["replicas"] == 3
    conf = _find(rendered, "ConfigMap", "nats-config")["data"]["nats.conf"]
    # The routes, with their credentials, are what make-secrets.sh writes (one per node).
    assert not re.search(r"^\s*routes\s*[:=\[]", conf, re.MULTILINE)  # none in the ConfigMap
    script = MAKE_SECRETS.read_text()
    loop = re.search(
        r"for node in ([\d ]+); do echo \"  nats://route:\$route_password@([\w$-]+)\.(\w+):(\d+)\"", script
    )
    assert loop, "make-secrets.sh writes no routes"
    written = [f"{loop.group(2).replace('$node', i)}.{loop.group(3)}" for i in loop.group(1).split()]
    assert written == nodes and loop.group(4) == str(ports["cluster"])
    assert re.search(r'authorization \{ user: route, password: \\"\$route_password\\" \}', script)
    assert re.search(rf"^\s*http:\s*0\.0\.0\.0:{ports['monitor']}\s*$", conf, re.MULTILINE)
    assert re.search(r"^\s*server_name:\s*\$POD_NAME\s*$", conf, re.MULTILINE)
    assert re.search(r"^\s*jetstream\s*\{[^}]*store_dir:\s*/data", conf, re.MULTILINE)
    # The users block from the servers Secret is where the include expects it.
    includes = re.findall(r'^\s*include\s+"([^"]+)"', conf, re.MULTILINE)
    assert sorted(includes) == ["auth/cluster-routes.conf", "auth/nats-authorization.conf"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in _pod_spec(sts)["volumes"]}
    config_dir = next(p for p, name in mounts.items() if "configMap" in volumes[name])
    for include in includes:
        include_dir, include_file = str(Path(config_dir) / include).rsplit("/", 1)
        secret = volumes[mounts[include_dir]]["secret"]
        assert secret["secretName"] == "remits-servers"
        (key,) = [item["key"] for item in secret["items"] if item["path"] == include_file]
        assert f"--from-file={key}=" in script, key  # the Secret holds that key
    assert "/data" in mounts and mounts["/data"] in {
        t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]
    }
    assert container["args"] == ["-c", str(Path(config_dir) / "nats.conf")]


def test_redis_url_goes_through_sentinel(rendered: list[Doc]) -> None:
    url = urlsplit(_config(rendered)["REMITS_REDIS_URL"])
    assert url.scheme == "redis+sentinel" and not url.username and not url.password
    service = _find(rendered, "Service", url.hostname or "")
    (port,) = [p for p in service["spec"]["ports"] if p["port"] == url.port]
    sts = _find(rendered, "StatefulSet", "redis")
    assert _selected_workloads(rendered, service["spec"]["selector"]) == {"StatefulSet/redis"}
    sentinel = next(c for c in _containers(sts) if c["name"] == "sentinel")
    assert _resolve_port(sentinel, port["targetPort"]) == url.port == 26379
    master, db = url.path.strip("/").split("/")
    script = _find(rendered, "ConfigMap", "redis-config")["data"]["configure.sh"]
    assert re.search(rf"sentinel monitor {master} \S+ 6379 2", script)
    assert int(db) == 0 and sts["spec"]["replicas"] == 3
    # The ACL file from the servers Secret, where redis.conf says.
    (acl,) = re.findall(r"aclfile ([^\s\"]+)", script)
    redis = next(c for c in _containers(sts) if c["name"] == "redis")
    acl_dir, acl_file = acl.rsplit("/", 1)
    mount = next(m for m in redis["volumeMounts"] if m["mountPath"] == acl_dir)
    volume = next(v for v in _pod_spec(sts)["volumes"] if v["name"] == mount["name"])
    assert volume["secret"]["secretName"] == "remits-servers"
    assert acl_file in {item["path"] for item in volume["secret"]["items"]}
    assert _resolve_port(redis, "redis") == 6379


# -- probes, resources, security -------------------------------------------------------------


@pytest.mark.parametrize("component", DEPLOYED)
def test_probes_hit_healthz_and_readyz_on_the_declared_port(rendered: list[Doc], component: str) -> None:
    container = _component_container(rendered, component)
    env = _env(rendered, container)
    expected = int(env["REMITS_HTTP_PORT"]) if component == "gateway" else int(env["REMITS_METRICS_PORT"])
    if component != "gateway":
        assert env["REMITS_METRICS_HOST"] == "0.0.0.0"
    probes = (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"))
    for probe, path in probes:
        get = container[probe]["httpGet"]
        assert get["path"] == path
        assert _resolve_port(container, get["port"]) == expected


def test_every_container_has_requests_and_a_memory_limit(rendered: list[Doc]) -> None:
    for doc in rendered:
        for container in _containers(doc, init=True):
            resources = container.get("resources") or {}
            where = f"{doc['metadata']['name']}/{container['name']}"
            assert {"cpu", "memory"} <= set(resources.get("requests") or {}), where
            assert "memory" in (resources.get("limits") or {}), where
            if "cpu" in resources["limits"]:
                assert _millicores(resources["limits"]["cpu"]) >= _millicores(resources["requests"]["cpu"]), (
                    where
                )


def test_every_pod_is_locked_down(rendered: list[Doc]) -> None:
    for doc in rendered:
        if doc["kind"] not in WORKLOADS:
            continue
        spec = _pod_spec(doc)
        assert spec["securityContext"]["runAsNonRoot"] is True, doc["metadata"]["name"]
        assert spec["securityContext"]["runAsUser"] != 0
        assert spec.get("automountServiceAccountToken") is False
        for container in _containers(doc, init=True):
            ctx = container["securityContext"]
            assert ctx["readOnlyRootFilesystem"] is True, container["name"]
            assert ctx["allowPrivilegeEscalation"] is False, container["name"]
            assert ctx["capabilities"]["drop"] == ["ALL"], container["name"]
            assert "add" not in ctx["capabilities"]
    # The REMITS image's own unprivileged user (Dockerfile).
    assert re.search(r"--uid 10001\b", (ROOT / "Dockerfile").read_text())
    for doc, _ in _remits_containers(rendered):
        assert _pod_spec(doc)["securityContext"]["runAsUser"] == 10001


def _capacity_ms_per_attestation() -> dict[str, float]:
    """The larger of re-attest and boot storm CPU ms per attestation, from docs/capacity.md."""
    text = (ROOT / "docs" / "capacity.md").read_text()
    table = text.split("CPU milliseconds per attestation", 1)[1]
    rows = re.findall(r"^\| (\S+) \| ([\d.]+) \| ([\d.]+) \|", table, re.MULTILINE)
    return {name: max(float(a), float(b)) for name, a, b in rows}


@pytest.mark.parametrize(("overlay", "rate"), [("base", BASE_RATE), ("production", PRODUCTION_RATE)])
def test_cpu_requests_cover_the_capacity_model(overlay: str, rate: float) -> None:
    docs = render(BASE if overlay == "base" else PRODUCTION)
    costs = _capacity_ms_per_attestation()
    assert {"gateway", "identity", "nats-server", "redis-server"} <= set(costs)
    for component in COMPONENTS:
        if component not in costs:
            continue  # provision: admin traffic only, not in the model
        deployment = _find(docs, "Deployment", component)
        scaled = [
            d
            for d in docs
            if d["kind"] == "ScaledObject" and d["spec"]["scaleTargetRef"]["name"] == component
        ]
        replicas = scaled[0]["spec"]["minReplicaCount"] if scaled else deployment["spec"]["replicas"]
        need = costs[component] * rate / replicas / PLANNED_UTILISATION
        have = _millicores(_component_container(docs, component)["resources"]["requests"]["cpu"])
        assert have >= need, f"{overlay} {component}: {have}m requested, {need:.0f}m needed at {rate} att/s"
    nats = _find(docs, "StatefulSet", "nats")
    copies = int(_config(docs)["REMITS_REPLICAS"])
    need = costs["nats-server"] * rate * copies / nats["spec"]["replicas"] / PLANNED_UTILISATION
    (container,) = _containers(nats)
    assert _millicores(container["resources"]["requests"]["cpu"]) >= need
    redis = next(c for c in _containers(_find(docs, "StatefulSet", "redis")) if c["name"] == "redis")
    assert (
        _millicores(redis["resources"]["requests"]["cpu"])
        >= costs["redis-server"] * rate / PLANNED_UTILISATION
    )


# -- audit: one writer -----------------------------------------------------------------------


def test_audit_has_one_writer_and_a_volume(rendered: list[Doc], monkeypatch: pytest.MonkeyPatch) -> None:
    audit = _find(rendered, "Deployment", "audit")
    assert audit["spec"]["replicas"] == 1
    assert audit["spec"]["strategy"]["type"] == "Recreate"
    assert not [
        d for d in rendered if d["kind"] == "ScaledObject" and d["spec"]["scaleTargetRef"]["name"] == "audit"
    ]
    assert not [d for d in rendered if d["kind"] == "HorizontalPodAutoscaler"]
    container = _component_container(rendered, "audit")
    data_dir = str(_settings(_env(rendered, container), monkeypatch).data_dir)
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == data_dir)
    volume = next(v for v in _pod_spec(audit)["volumes"] if v["name"] == mount["name"])
    claim = _find(rendered, "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]


# -- KEDA: each stage scales on the consumer the code creates for it -------------------------


class _RecordingJetStream:
    """Stands in for a JetStream context: records the consumers ensure_topology creates."""

    def __init__(self) -> None:
        self.consumers: set[tuple[str, str]] = set()

    async def stream_info(self, name: str, *args: Any, **kwargs: Any) -> Any:
        raise NotFoundError

    async def add_consumer(self, stream: str, config: Any = None, **kwargs: Any) -> None:
        self.consumers.add((stream, config.durable_name))

    def __getattr__(self, name: str) -> Any:
        async def ignore(*args: Any, **kwargs: Any) -> None:
            return None

        return ignore


@pytest.fixture(scope="module")
def durable_consumers() -> set[tuple[str, str]]:
    js = _RecordingJetStream()
    asyncio.run(ensure_topology(js, Settings()))  # type: ignore[arg-type]
    assert js.consumers
    return js.consumers


def _stage_consumer(stage: str) -> tuple[str, str]:
    """What the stage's StageRunner binds to (shared/bus.py, services/runtime.py)."""
    if stage == "release":
        return schemas.DECISION_STREAM, RELEASE_DECISIONS_DURABLE
    return schemas.PIPELINE_STREAM, stage


def test_every_stage_and_only_the_stages_are_scaled_by_keda(rendered: list[Doc]) -> None:
    scaled = [d for d in rendered if d["kind"] == "ScaledObject"]
    targets = [d["spec"]["scaleTargetRef"]["name"] for d in scaled]
    assert sorted(targets) == sorted(schemas.STAGES)
    for doc in scaled:
        ref = doc["spec"]["scaleTargetRef"]
        assert (ref.get("apiVersion", "apps/v1"), ref.get("kind", "Deployment")) == ("apps/v1", "Deployment")
        _find(rendered, "Deployment", ref["name"])


@pytest.mark.parametrize("stage", schemas.STAGES)
def test_scaled_object_watches_the_stage_consumer(
    rendered: list[Doc], durable_consumers: set[tuple[str, str]], stage: str
) -> None:
    (doc,) = [
        d for d in rendered if d["kind"] == "ScaledObject" and d["spec"]["scaleTargetRef"]["name"] == stage
    ]
    spec = doc["spec"]
    assert 2 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "nats-jetstream"
    meta = trigger["metadata"]
    assert (meta["stream"], meta["consumer"]) == _stage_consumer(stage)
    assert (meta["stream"], meta["consumer"]) in durable_consumers, "setup does not create that consumer"
    assert meta["account"] == "$G"  # no NATS accounts: the nkey users live in the global account
    assert int(meta["lagThreshold"]) > 0
    # The monitoring port of the headless NATS Service, by its cluster DNS name (KEDA runs elsewhere).
    host, port = meta["natsServerMonitoringEndpoint"].rsplit(":", 1)
    service, namespace = host.split(".")[:2]
    assert host == f"{service}.{namespace}.svc.cluster.local" and namespace == NAMESPACE
    svc = _find(rendered, "Service", service)
    assert svc["spec"]["clusterIP"] == "None"
    (monitor,) = [p for p in svc["spec"]["ports"] if p["port"] == int(port)]
    (nats,) = _containers(_find(rendered, "StatefulSet", "nats"))
    assert _resolve_port(nats, monitor["targetPort"]) == int(port)
    # The replica count starts where KEDA keeps it.
    assert _find(rendered, "Deployment", stage)["spec"]["replicas"] <= spec["minReplicaCount"]


def test_audit_consumer_exists_but_is_not_scaled(durable_consumers: set[tuple[str, str]]) -> None:
    assert (schemas.DECISION_STREAM, "audit") in durable_consumers


# -- selectors: Services, PDBs, ServiceMonitor, NetworkPolicies ------------------------------


def test_services_select_pods_that_declare_their_target_ports(rendered: list[Doc]) -> None:
    for svc in (d for d in rendered if d["kind"] == "Service"):
        selected = [d for d, labels in _pods(rendered) if _labels_match(svc["spec"]["selector"], labels)]
        assert selected, f"Service {svc['metadata']['name']} selects no pods"
        for port in svc["spec"]["ports"]:
            for doc in selected:
                declared = [p for c in _containers(doc) for p in _declared_ports(c).items()]
                target = port.get("targetPort", port["port"])
                assert any(target in (name, number) for name, number in declared), (
                    f"{svc['metadata']['name']}: {doc['metadata']['name']} has no port {target}"
                )


def test_metrics_service_covers_every_worker(rendered: list[Doc]) -> None:
    svc = _find(rendered, "Service", "remits-metrics")
    assert _selected_workloads(rendered, svc["spec"]["selector"]) == {f"Deployment/{c}" for c in WORKERS}


def test_pod_disruption_budgets(rendered: list[Doc]) -> None:
    pdbs = {d["metadata"]["name"]: d for d in rendered if d["kind"] == "PodDisruptionBudget"}
    for doc in rendered:
        if doc["kind"] not in ("Deployment", "StatefulSet"):
            continue
        name = doc["metadata"]["name"]
        if name in ("audit", JOIN):
            assert doc["spec"]["replicas"] == 1
            assert name not in pdbs  # one replica: a budget would block every node drain
            continue
        assert _selected_workloads(rendered, pdbs[name]["spec"]["selector"]) == {f"{doc['kind']}/{name}"}
        assert pdbs[name]["spec"].get("maxUnavailable") == 1
    assert set(pdbs) <= {
        d["metadata"]["name"] for d in rendered if d["kind"] in ("Deployment", "StatefulSet")
    }


def test_service_monitor_scrapes_every_component(rendered: list[Doc]) -> None:
    monitor = _find(rendered, "ServiceMonitor", "remits")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    services = [
        d
        for d in rendered
        if d["kind"] == "Service" and _labels_match(monitor["spec"]["selector"], d["metadata"]["labels"])
    ]
    assert {s["metadata"]["name"] for s in services} == {"gateway", "remits-metrics"}
    scraped: set[str] = set()
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["path"] == "/metrics"
        for svc in services:
            if any(p["name"] == endpoint["port"] for p in svc["spec"]["ports"]):
                scraped |= _selected_workloads(rendered, svc["spec"]["selector"])
    assert scraped == {f"Deployment/{c}" for c in DEPLOYED}


def _policies(docs: list[Doc]) -> list[Doc]:
    return [d for d in docs if d["kind"] == "NetworkPolicy"]


def _peer_kind(docs: list[Doc], peer: Doc) -> str:
    if "ipBlock" in peer:
        return f"internet:{peer['ipBlock']['cidr']}"
    if "namespaceSelector" in peer:
        return "ns:" + peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
    targets = _selected_workloads(docs, peer["podSelector"])
    assert targets, f"peer {peer} selects no pod"
    return ",".join(sorted(targets))


def _egress(docs: list[Doc], labels: dict[str, str]) -> set[tuple[str, int]]:
    allowed = set()
    for policy in _policies(docs):
        if not _labels_match(policy["spec"]["podSelector"], labels):
            continue
        for rule in policy["spec"].get("egress") or []:
            for peer in rule["to"]:
                for port in rule["ports"]:
                    allowed.add((_peer_kind(docs, peer), int(port["port"])))
    return allowed


def test_default_deny_and_every_policy_selects_pods(rendered: list[Doc]) -> None:
    deny = _find(rendered, "NetworkPolicy", "default-deny")["spec"]
    assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in deny and "egress" not in deny
    for policy in _policies(rendered):
        assert _selected_workloads(rendered, policy["spec"]["podSelector"]), policy["metadata"]["name"]
        for rule in (policy["spec"].get("ingress") or []) + (policy["spec"].get("egress") or []):
            for peer in rule.get("from", []) + rule.get("to", []):
                _peer_kind(rendered, peer)


@pytest.mark.parametrize("component", (*DEPLOYED, "setup"))
def test_remits_pods_reach_only_nats_redis_dns(rendered: list[Doc], component: str) -> None:
    doc = (
        _find(rendered, "Job", "remits-setup")
        if component == "setup"
        else _find(rendered, "Deployment", component)
    )
    nats = _declared_ports(next(_containers(_find(rendered, "StatefulSet", "nats"))))
    redis = {
        p for c in _containers(_find(rendered, "StatefulSet", "redis")) for p in _declared_ports(c).values()
    }
    expected = {("ns:kube-system", 53), ("StatefulSet/nats", nats["client"])}
    expected |= {("StatefulSet/redis", port) for port in redis}
    if component == "endorse":  # the vendors' key servers (AMD KDS, Intel PCS)
        expected.add(("internet:0.0.0.0/0", 443))
    assert _egress(rendered, _pod_labels(doc)) == expected


def _ingress_ports(docs: list[Doc], labels: dict[str, str]) -> dict[int, set[str]]:
    allowed: dict[int, set[str]] = {}
    for policy in _policies(docs):
        if not _labels_match(policy["spec"]["podSelector"], labels):
            continue
        for rule in policy["spec"].get("ingress") or []:
            sources = {_peer_kind(docs, p) for p in rule.get("from", [])} or {"anywhere"}
            for port in rule["ports"]:
                allowed.setdefault(int(port["port"]), set()).update(sources)
    return allowed


def test_ingress(rendered: list[Doc]) -> None:
    config = _config(rendered)
    assert _ingress_ports(rendered, _pod_labels(_find(rendered, "Deployment", "gateway"))) == {
        8080: {"anywhere"}
    }
    for component in WORKERS:
        labels = _pod_labels(_find(rendered, "Deployment", component))
        expected = {int(config["REMITS_METRICS_PORT"]): {"ns:monitoring"}}
        if component == JOIN:  # the nodes' front door, from anywhere
            expected[JOIN_PORT] = {"anywhere"}
        assert _ingress_ports(rendered, labels) == expected
    nats = _declared_ports(next(_containers(_find(rendered, "StatefulSet", "nats"))))
    ingress = _ingress_ports(rendered, _pod_labels(_find(rendered, "StatefulSet", "nats")))
    assert ingress[nats["cluster"]] == {"StatefulSet/nats"}
    assert ingress[nats["monitor"]] == {"ns:keda", "ns:monitoring"}
    clients = ingress[nats["client"]]
    assert len(clients) == 1
    assert clients.pop().split(",") == sorted([f"Deployment/{c}" for c in DEPLOYED] + ["Job/remits-setup"])


# -- Secrets and ConfigMaps made outside kustomize -------------------------------------------


def _referenced(docs: list[Doc], kind: str) -> set[str]:
    names = set()
    for doc in docs:
        if doc["kind"] not in WORKLOADS:
            continue
        for volume in _pod_spec(doc).get("volumes") or []:
            if kind == "Secret" and "secret" in volume:
                names.add(volume["secret"]["secretName"])
            if kind == "ConfigMap" and "configMap" in volume:
                names.add(volume["configMap"]["name"])
        for container in _containers(doc, init=True):
            for item in container.get("env") or []:
                ref = (item.get("valueFrom") or {}).get(
                    "secretKeyRef" if kind == "Secret" else "configMapKeyRef"
                )
                if ref:
                    names.add(ref["name"])
            for source in container.get("envFrom") or []:
                ref = source.get("secretRef" if kind == "Secret" else "configMapRef")
                if ref:
                    names.add(ref["name"])
    return names


def test_make_secrets_creates_what_the_manifests_mount(rendered: list[Doc]) -> None:
    script = MAKE_SECRETS.read_text()
    assert os.access(MAKE_SECRETS, os.X_OK)
    subprocess.run(["sh", "-n", str(MAKE_SECRETS)], check=True, timeout=30)
    loop = re.search(r"for component in ([\w ]+); do", script)
    assert loop and set(loop.group(1).split()) == {*DEPLOYED, credentials.ADMIN} == set(
        credentials.COMPONENTS
    )
    created = {f"remits-creds-{c}" for c in loop.group(1).split()}
    created |= set(re.findall(r"create secret generic ([\w-]+) ", script))
    assert _referenced(rendered, "Secret") == created
    in_manifests = {d["metadata"]["name"] for d in rendered if d["kind"] == "ConfigMap"}
    made = set(re.findall(r"create configmap ([\w-]+) ", script))
    se_loop = re.search(r"for sub in ([\w ]+); do", script)
    assert se_loop and 'create configmap "remits-se-$sub"' in script
    made |= {f"remits-se-{sub}" for sub in se_loop.group(1).split()}
    assert _referenced(rendered, "ConfigMap") == in_manifests | made
    # What the Redis pods read from remits-redis-ha is what the script puts there.
    keys = {
        item["valueFrom"]["secretKeyRef"]["key"]
        for doc in rendered
        for c in _containers(doc, init=True)
        for item in c.get("env") or []
        if (item.get("valueFrom") or {}).get("secretKeyRef", {}).get("name") == "remits-redis-ha"
    }
    assert keys == set(re.findall(r"--from-file=([\w-]+-password)=", script))


def test_credentials_directories_are_flat(tmp_path: Path) -> None:
    """`kubectl create secret --from-file=DIR` takes a directory's files, not its subdirectories."""
    subprocess.run(
        [sys.executable, "-m", "services.cli", "creds", "--out", str(tmp_path), "--per-component"],
        cwd=ROOT, check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    for component in (*DEPLOYED, credentials.ADMIN):
        entries = list((tmp_path / component).iterdir())
        assert entries and all(e.is_file() for e in entries), component
    # Identity's SE session key travels in its own Secret (remits-creds-identity), no one else's.
    holders = {c for c in (*DEPLOYED, credentials.ADMIN) if (tmp_path / c / credentials.SE_KEY_FILE).exists()}
    assert holders == {"identity"}
    assert {p.name for p in (tmp_path / JOIN).iterdir()} == {f"{JOIN}.nk", f"{JOIN}.json"}
    assert {p.name for p in (tmp_path / "servers").iterdir()} == {
        "nats-authorization.conf",
        "redis-users.acl",
    }


# -- the production overlay ------------------------------------------------------------------


def test_production_overlay_changes_what_it_says(base: list[Doc], production: list[Doc]) -> None:
    keys = lambda docs: sorted((d["kind"], d["metadata"]["name"]) for d in docs)  # noqa: E731
    assert keys(production) == keys(base), "the overlay patches, it adds or drops nothing"
    assert _find(base, "Deployment", "gateway")["spec"]["replicas"] == 2
    assert _find(production, "Deployment", "gateway")["spec"]["replicas"] == 3
    assert _find(production, "Deployment", "provision")["spec"]["replicas"] == 3
    for doc in (d for d in production if d["kind"] == "ScaledObject"):
        assert (doc["spec"]["minReplicaCount"], doc["spec"]["maxReplicaCount"]) == (3, 24)
        assert (
            doc["spec"]["triggers"]
            == _find(base, "ScaledObject", doc["metadata"]["name"])["spec"]["triggers"]
        )
    for doc in production:
        for container in _containers(doc, init=True):
            before = next(c for c in _containers(_find(base, doc["kind"], doc["metadata"]["name"]), init=True)
                          if c["name"] == container["name"])  # fmt: skip
            for kind in ("requests", "limits"):
                for resource in ("cpu", "memory"):
                    if resource in before["resources"].get(kind, {}):
                        assert resource in container["resources"][kind]
            assert _millicores(container["resources"]["requests"]["cpu"]) >= _millicores(
                before["resources"]["requests"]["cpu"]
            )
            # Everything but resources (and the image) is the base's.
            strip = lambda c: {k: v for k, v in c.items() if k not in ("resources", "image")}  # noqa: E731
            assert strip(container) == strip(before)
    identity = _component_container(production, "identity")["resources"]["requests"]["cpu"]
    assert _millicores(identity) > _millicores(
        _component_container(base, "identity")["resources"]["requests"]["cpu"]
    )
    assert (
        _find(production, "PersistentVolumeClaim", "audit-trail")["spec"]["resources"]["requests"]["storage"]
        == "100Gi"
    )


def test_make_secrets_runs_and_carries_tenant_audit_readers_to_the_setup_job(
    tmp_path: Path, rendered: list[Doc]
) -> None:
    """The whole script, with a kubectl that records what it is given instead of a cluster: every
    reader made with --tenant-audit (this run's and an earlier run's) lands in the ConfigMap the
    setup Job reads its feeds from, and each team's seed in a directory of its own."""
    bin_dir, log = tmp_path / "bin", tmp_path / "kubectl.log"
    bin_dir.mkdir()
    (bin_dir / "kubectl").write_text(
        '#!/bin/sh\n'
        f'if [ "$3" = apply ]; then cat >> "{log}"; else printf -- "- %s\\n" "$*" ; fi\n'
    )  # fmt: skip
    (bin_dir / "remits").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m services.cli "$@"\n')
    for tool in ("kubectl", "remits"):
        (bin_dir / tool).chmod(0o755)
    admin_pub = tmp_path / "operator.pub.pem"
    admin_pub.write_text("-----BEGIN PUBLIC KEY-----\n-----END PUBLIC KEY-----\n")
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": str(ROOT)}
    out = tmp_path / "k8s"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["sh", str(MAKE_SECRETS), "--admin-key", str(admin_pub), "--out", str(out), *args],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180, check=False,
        )  # fmt: skip

    first = run("--tenant-audit", "team-a")
    assert first.returncode == 0, first.stderr
    second = run("--tenant-audit", "team-b")
    assert second.returncode == 0, second.stderr
    assert "tenant audit readers: team-a,team-b" in second.stdout
    applied = log.read_text()
    assert "create configmap remits-tenant-audit --from-literal=tenants=team-a,team-b" in applied
    for tenant in ("team-a", "team-b"):
        assert (out / f"audit-tenant-{tenant}" / f"audit-tenant-{tenant}.nk").is_file()
    refused = run("--tenant-audit", "Not.A.Tenant")
    assert refused.returncode != 0 and "no tenant name" in refused.stderr

    (job,) = [d for d in rendered if d["kind"] == "Job"]
    (container,) = _containers(job)
    assert {"name": "REMITS_TENANT_AUDIT_FEEDS", "valueFrom": {"configMapKeyRef": {
        "name": "remits-tenant-audit", "key": "tenants", "optional": True}}} in container["env"]  # fmt: skip
