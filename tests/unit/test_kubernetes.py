"""The Kubernetes manifests (deploy/k8s): rendered per overlay, validated offline against the
Kubernetes API schemas (kubernetes-validate), and checked for what ops rely on. No cluster runs here.

The overlays use only kustomize's ``resources`` and JSON-6902 ``patches``, which ``render`` below
implements; where ``kubectl`` is installed its own kustomize rendering is compared with ours."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess

import pytest
import yaml
from kubernetes_validate import utils as kv

from gateway.settings import GatewaySettings
from services.cell_classifier.metrics import MULTIPROCESS_DIR_ENV
from services.cell_classifier.settings import CellServiceSettings
from services.subtype.settings import SubtypeServiceSettings
from shared.json_logging import LOG_FORMATS
from tests.helpers.processes import REPO_ROOT

K8S = REPO_ROOT / "deploy" / "k8s"
OVERLAYS = ("cpu", "gpu")
# an older Kubernetes that many data centres still run, and the newest the package ships schemas for
VERSIONS = ("1.29.0", kv.latest_version())
NAMESPACE = "aml-classifier"
SECRET = "aml-classifier-secrets"


# --- a tiny kustomize: resources + JSON-6902 patches -------------------------------------------

def _pointer(path: str) -> list[str]:
    assert path.startswith("/"), path
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def _apply_op(doc: dict, op: dict) -> None:
    *parents, last = _pointer(op["path"])
    node = doc
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    kind = op["op"]
    if kind == "test":
        actual = node[int(last)] if isinstance(node, list) else node[last]
        assert actual == op["value"], f"patch test failed at {op['path']}: {actual!r} != {op['value']!r}"
    elif kind == "add":
        if isinstance(node, list):
            node.append(op["value"]) if last == "-" else node.insert(int(last), op["value"])
        else:
            node[last] = op["value"]
    elif kind == "replace":
        if isinstance(node, list):
            node[int(last)] = op["value"]
        else:
            assert last in node, f"replace of a missing {op['path']}"
            node[last] = op["value"]
    elif kind == "remove":
        del node[int(last) if isinstance(node, list) else last]
    else:
        raise AssertionError(f"patch op {kind} not supported by this renderer")


def _matches(doc: dict, target: dict) -> bool:
    group, _, version = doc["apiVersion"].rpartition("/")
    return (target.get("kind", doc["kind"]) == doc["kind"] and target.get("name", doc["metadata"]["name"])
            == doc["metadata"]["name"] and target.get("group", group) == group
            and target.get("version", version) == version)


def render(directory) -> list[dict]:
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unsupported = set(kustomization) - {"apiVersion", "kind", "resources", "patches"}
    assert not unsupported, f"{directory}: the test renderer does not implement {unsupported}"
    docs: list[dict] = []
    for entry in kustomization["resources"]:
        path = (directory / entry).resolve()
        docs += render(path) if path.is_dir() else [d for d in yaml.safe_load_all(path.read_text()) if d]
    for patch in kustomization.get("patches", []):
        matched = [doc for doc in docs if _matches(doc, patch["target"])]
        assert len(matched) == 1, f"patch target {patch['target']} matched {len(matched)} resources"
        for op in yaml.safe_load(patch["patch"]):
            _apply_op(matched[0], op)
    keys = [(d["kind"], d["metadata"]["name"]) for d in docs]
    assert len(keys) == len(set(keys)), "a resource is defined twice"
    return copy.deepcopy(docs)


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request) -> tuple[str, list[dict]]:
    return request.param, render(K8S / "overlays" / request.param)


def by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def workloads(docs: list[dict]) -> dict[str, dict]:
    return {**by_kind(docs, "Deployment"), **by_kind(docs, "StatefulSet")}


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def examples() -> list[dict]:
    return [d for path in sorted((K8S / "examples").glob("*.yaml")) for d in yaml.safe_load_all(path.read_text()) if d]


# --- schemas ----------------------------------------------------------------------------------

@pytest.mark.parametrize("version", VERSIONS)
def test_every_rendered_document_validates(rendered, version):
    _, docs = rendered
    assert len(docs) >= 25
    for doc in docs:
        try:
            kv.validate(doc, version, strict=True)
        except kv.ValidationError as exc:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} invalid for Kubernetes {version}: {exc.message}")


@pytest.mark.parametrize("version", VERSIONS)
def test_examples_validate(version):
    docs = examples()
    assert {d["kind"] for d in docs} == {"Secret", "NetworkPolicy"}
    for doc in docs:
        kv.validate(doc, version, strict=True)


def _kubectl_kustomize() -> str | None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return None
    probe = subprocess.run([kubectl, "kustomize", "--help"], capture_output=True)
    return kubectl if probe.returncode == 0 else None


@pytest.mark.skipif(_kubectl_kustomize() is None, reason="kubectl (with kustomize) not installed")
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kubectl_kustomize_renders_the_same(overlay):
    result = subprocess.run([_kubectl_kustomize(), "kustomize", str(K8S / "overlays" / overlay)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    theirs = sorted((json.dumps(d, sort_keys=True) for d in yaml.safe_load_all(result.stdout) if d))
    ours = sorted(json.dumps(d, sort_keys=True) for d in render(K8S / "overlays" / overlay))
    assert theirs == ours


# --- what ops rely on -------------------------------------------------------------------------

def test_components_and_namespace(rendered):
    _, docs = rendered
    assert set(workloads(docs)) == {"gateway", "cell-classifier", "subtype", "redis", "postgres"}
    assert by_kind(docs, "StatefulSet")["postgres"]["spec"]["volumeClaimTemplates"]
    namespaces = by_kind(docs, "Namespace")
    assert namespaces[NAMESPACE]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert all(d["metadata"].get("namespace") == NAMESPACE for d in docs if d["kind"] != "Namespace")
    assert not [d for d in docs if d["kind"] == "Secret"], "secrets are created out of band, never rendered"


def test_probes_resources_and_hardening(rendered):
    _, docs = rendered
    for name, workload in workloads(docs).items():
        pod = workload["spec"]["template"]["spec"]
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert workload["spec"]["selector"]["matchLabels"].items() <= labels.items(), name
        assert pod["automountServiceAccountToken"] is False, name
        assert pod["enableServiceLinks"] is False, f"{name}: Service env links would clash with *_PORT settings"
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        for container in pod["containers"]:
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][kind]), f"{name}: {kind}"
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False and context["capabilities"]["drop"] == ["ALL"], name
            assert context["readOnlyRootFilesystem"] is True, name
            assert "readinessProbe" in container and "livenessProbe" in container, name
            if name in ("gateway", "cell-classifier", "subtype"):
                assert container["readinessProbe"]["httpGet"]["path"] == "/readyz", name
                assert container["livenessProbe"]["httpGet"]["path"] == "/healthz", name
                assert container["startupProbe"]["httpGet"]["path"] == "/healthz", name
                port_names = {p["name"] for p in container["ports"]}
                assert container["readinessProbe"]["httpGet"]["port"] in port_names, name


def test_cell_service_gpu_and_cpu(rendered):
    overlay, docs = rendered
    container = workloads(docs)["cell-classifier"]["spec"]["template"]["spec"]["containers"][0]
    env = env_of(container)
    hpa = by_kind(docs, "HorizontalPodAutoscaler")["cell-classifier"]["spec"]
    if overlay == "gpu":
        assert container["image"].startswith("aml-classifier/cell-gpu:")
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert env["CELL_PROVIDER"]["value"] == "cuda"
        assert hpa["minReplicas"] >= 1
    else:
        assert container["image"].startswith("aml-classifier/cell-cpu:")
        assert "nvidia.com/gpu" not in container["resources"]["limits"]
        assert env["CELL_PROVIDER"]["value"] == "cpu"
        assert hpa["minReplicas"] >= 2
    # the threads follow the CPU limit (CELL_CORES, shared out among the worker processes), not the node's cores
    assert env["CELL_CORES"]["valueFrom"]["resourceFieldRef"]["resource"] == "limits.cpu"
    assert int(env["CELL_WORKERS"]["value"]) >= 2
    assert env["PROMETHEUS_MULTIPROC_DIR"]["value"].startswith("/tmp/"), "the writable emptyDir"


def test_autoscalers_and_disruption_budgets(rendered):
    _, docs = rendered
    deployments = by_kind(docs, "Deployment")
    hpas = by_kind(docs, "HorizontalPodAutoscaler")
    assert set(hpas) == {"gateway", "cell-classifier", "subtype"}
    for name, hpa in hpas.items():
        target = hpa["spec"]["scaleTargetRef"]
        assert target["kind"] == "Deployment" and target["name"] in deployments
        assert 1 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
        assert "replicas" not in deployments[target["name"]]["spec"], f"{name}: the HPA owns the replica count"
    assert hpas["gateway"]["spec"]["minReplicas"] >= 2
    assert set(by_kind(docs, "PodDisruptionBudget")) == set(hpas)


def _pods_selected(selector: dict, docs: list[dict]) -> set[str]:
    return {name for name, w in workloads(docs).items()
            if selector.items() <= w["spec"]["template"]["metadata"]["labels"].items()}


def test_only_the_gateway_is_reachable_from_outside(rendered):
    _, docs = rendered
    for service in by_kind(docs, "Service").values():
        assert service["spec"].get("type", "ClusterIP") == "ClusterIP", service["metadata"]["name"]
        assert _pods_selected(service["spec"]["selector"], docs), service["metadata"]["name"]
    ingresses = by_kind(docs, "Ingress")
    backends = {path["backend"]["service"]["name"] for ing in ingresses.values()
                for rule in ing["spec"]["rules"] for path in rule["http"]["paths"]}
    assert backends == {"gateway"}
    policies = by_kind(docs, "NetworkPolicy")
    deny = policies["default-deny"]["spec"]
    assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"} and not deny.get("ingress")
    open_to_all: set[str] = set()
    for name, policy in policies.items():
        targets = _pods_selected(policy["spec"]["podSelector"].get("matchLabels", {}), docs)
        assert targets, f"policy {name} selects no pods"
        for rule in policy["spec"].get("ingress", []):
            sources = rule.get("from")
            if not sources:
                open_to_all |= targets
            else:
                for source in sources:
                    assert set(source) == {"podSelector"}, f"{name}: ingress only from pods in the namespace"
                    assert _pods_selected(source["podSelector"]["matchLabels"], docs) == {"gateway"}, name
    assert open_to_all == {"gateway"}


def test_secrets_env_and_the_settings_they_feed(rendered):
    _, docs = rendered
    secret_keys = set(next(d for d in examples() if d["kind"] == "Secret")["stringData"])
    known = {
        "gateway": {"REDIS_PASSWORD", "DATABASE_URL"} | _aliases(GatewaySettings),
        "cell-classifier": {"CUDA_CACHE_PATH", MULTIPROCESS_DIR_ENV} | _aliases(CellServiceSettings),
        "subtype": _aliases(SubtypeServiceSettings),
    }
    config = by_kind(docs, "ConfigMap")["aml-classifier-config"]["data"]
    assert config["LOG_FORMAT"] in LOG_FORMATS
    used: set[str] = set()
    for name, workload in workloads(docs).items():
        pod = workload["spec"]["template"]["spec"]
        for container in pod["containers"]:
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] == SECRET and ref["key"] in secret_keys, f"{name}: {ref}"
                    used.add(ref["key"])
                if name in known:
                    assert env["name"] in known[name], f"{name}: {env['name']} is not a setting it reads"
            if name in known:
                assert set(config) <= known[name] | {"LOG_FORMAT"}
        for volume in pod.get("volumes", []):
            if "secret" in volume:
                assert volume["secret"]["secretName"] == SECRET
                used |= {item["key"] for item in volume["secret"]["items"]}
    assert used == secret_keys, "every key of the Secret is used, and only those"
    gateway = env_of(workloads(docs)["gateway"]["spec"]["template"]["spec"]["containers"][0])
    for name in ("INTERNAL_TOKEN", "AUDIT_HMAC_KEY", "DATABASE_URL", "REDIS_PASSWORD"):
        assert "secretKeyRef" in gateway[name]["valueFrom"], name
    assert gateway["API_KEYS_FILE"]["value"].startswith("/etc/aml-classifier/")
    assert "$(REDIS_PASSWORD)" in gateway["REDIS_URL"]["value"]
    # chunks spread over every ready replica: headless Services, resolved again and again
    services = by_kind(docs, "Service")
    for variable, service in (("CELL_URL", "cell-classifier-pods"), ("SUBTYPE_URL", "subtype-pods")):
        assert f"//{service}:" in gateway[variable]["value"]
        assert services[service]["spec"]["clusterIP"] == "None"
    assert float(gateway["UPSTREAM_RESOLVE_S"]["value"]) > 0
    for name in ("cell-classifier", "subtype"):
        container = workloads(docs)[name]["spec"]["template"]["spec"]["containers"][0]
        assert "secretKeyRef" in env_of(container)["INTERNAL_TOKEN"]["valueFrom"], name


def _aliases(settings_class) -> set[str]:
    names: set[str] = set()
    for field in settings_class.model_fields.values():
        alias = field.validation_alias
        names |= set(getattr(alias, "choices", [alias] if alias else []))
    return names


def test_images_match_the_dockerfile_targets(rendered):
    _, docs = rendered
    dockerfile = (REPO_ROOT / "deploy" / "Dockerfile").read_text()
    for name, workload in workloads(docs).items():
        image = workload["spec"]["template"]["spec"]["containers"][0]["image"]
        if image.startswith("aml-classifier/"):
            target = image.split("/", 1)[1].split(":", 1)[0]
            assert f" AS {target}\n" in dockerfile, f"{name}: no Dockerfile target {target}"
