"""The compose file and Dockerfile hold what ops rely on (no Docker engine here to run them)."""

import os
import shutil
import subprocess

import pytest
import yaml

from tests.helpers.processes import REPO_ROOT


class _Loader(yaml.SafeLoader):
    pass


_Loader.add_constructor("!reset", lambda loader, node: None)


def load(path: str) -> dict:
    return yaml.load((REPO_ROOT / path).read_text(), Loader=_Loader)


def test_compose_services_and_exposure():
    document = load("docker-compose.yml")
    compose = document["services"]
    assert set(compose) == {"redis", "postgres", "cell-classifier", "subtype", "gateway"}
    published = {name for name, service in compose.items() if service.get("ports")}
    assert published == {"gateway"}, "only the gateway is reachable from outside"
    for name, service in compose.items():
        assert service.get("restart") == "unless-stopped", name
    assert "--requirepass" in compose["redis"]["command"]
    devices = compose["cell-classifier"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    assert compose["cell-classifier"]["build"]["target"] == "cell-gpu"
    assert compose["gateway"]["depends_on"]["cell-classifier"]["condition"] == "service_healthy"
    postgres = compose["postgres"]
    assert postgres["healthcheck"]["test"] and "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    volume = postgres["volumes"][0].split(":")
    assert volume[1] == "/var/lib/postgresql/data" and volume[0] in document["volumes"], "reports outlive the container"
    assert compose["gateway"]["environment"]["DATABASE_URL"].startswith("postgresql://")
    assert compose["gateway"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    cpu = load("deploy/compose.cpu.yml")["services"]["cell-classifier"]
    assert cpu["build"]["target"] == "cell-cpu" and cpu["deploy"] is None


def test_dockerfile_targets_are_slim_non_root_and_checked():
    text = (REPO_ROOT / "deploy" / "Dockerfile").read_text()
    for target in ("cell-gpu", "cell-cpu", "subtype", "gateway"):
        assert f" AS {target}" in text
    assert "nvidia/cuda:13" in text and "cudnn" in text and "onnxruntime-gpu" in text
    assert text.count("USER app") >= 2
    assert text.count("HEALTHCHECK") == 4


def _compose_available() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _compose_available(), reason="docker compose plugin not installed")
@pytest.mark.parametrize("files", [["docker-compose.yml"], ["docker-compose.yml", "deploy/compose.cpu.yml"]])
def test_docker_compose_config_validates(files):
    args = ["docker", "compose"] + [a for f in files for a in ("-f", f)] + ["config", "--quiet"]
    result = subprocess.run(args, cwd=REPO_ROOT, capture_output=True, text=True,
                            env={**os.environ, "REDIS_PASSWORD": "test-only", "POSTGRES_PASSWORD": "test-only"})
    assert result.returncode == 0, result.stderr
