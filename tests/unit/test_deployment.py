"""The compose file and Dockerfile hold what ops rely on (no Docker engine here to run them)."""

import json
import os
import re
import secrets
import shutil
import subprocess

import pytest
import yaml
from dotenv import dotenv_values

from gateway.security import KeyStore, new_key
from gateway.settings import GatewaySettings
from services.cell_classifier.settings import CellServiceSettings
from services.subtype.settings import SubtypeServiceSettings
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


REQUIRED = re.compile(r"\$\{(\w+):\?[^}]*\}")


def _filled_env_file(tmp_path) -> tuple[dict[str, str], str]:
    """deploy/env.example filled in as its comments tell an operator to, read as compose reads .env; and the API
    key whose entry went into it (what the client is given)."""
    key, entry = new_key("lab1", {"classify", "read"})
    values = {"API_KEYS": "'" + json.dumps([entry]) + "'"}
    lines = []
    for line in (REPO_ROOT / "deploy" / "env.example").read_text().splitlines():
        name = line.split("=", 1)[0]
        if line and not line.startswith("#") and line.endswith("="):
            line += values.get(name, secrets.token_hex(32))
        lines.append(line)
    env_file = tmp_path / ".env"
    env_file.write_text("\n".join(lines) + "\n")
    return {name: value for name, value in dotenv_values(env_file).items() if value is not None}, key


def _substitute(value, env: dict[str, str]):
    """Compose's interpolation: ${NAME:?message} (required) and ${NAME:-default}."""
    def one(match):
        name, kind, rest = match.groups()
        return env[name] if kind == "?" else env.get(name) or rest
    return re.sub(r"\$\{(\w+):([?-])([^}]*)\}", one, str(value))


def test_compose_requires_every_secret_and_the_services_read_them(tmp_path, monkeypatch):
    text = (REPO_ROOT / "docker-compose.yml").read_text()
    required = set(REQUIRED.findall(text))
    assert required == {"REDIS_PASSWORD", "POSTGRES_PASSWORD", "INTERNAL_TOKEN", "API_KEYS", "AUDIT_HMAC_KEY"}
    env, client_key = _filled_env_file(tmp_path)
    assert required <= set(env), f"deploy/env.example lacks {sorted(required - set(env))}"

    compose = load("docker-compose.yml")["services"]
    settings_of = {"gateway": GatewaySettings, "cell-classifier": CellServiceSettings,
                   "subtype": SubtypeServiceSettings}
    read = {}
    for service, settings_class in settings_of.items():
        environment = compose[service]["environment"]
        assert REQUIRED.fullmatch(environment["INTERNAL_TOKEN"]), f"{service}: INTERNAL_TOKEN must be required"
        with monkeypatch.context() as patch:
            for name, value in environment.items():
                patch.setenv(name, _substitute(value, env))
            read[service] = settings_class()
        assert read[service].internal_token == env["INTERNAL_TOKEN"], service

    gateway = read["gateway"]
    assert gateway.audit_hmac_key == env["AUDIT_HMAC_KEY"]
    assert gateway.database_url == f"postgresql://aml:{env['POSTGRES_PASSWORD']}@postgres:5432/aml"
    keys = KeyStore.from_config(gateway.api_keys, gateway.api_keys_file)
    admitted = keys.authenticate(client_key)
    assert len(keys) == 1 and admitted is not None and admitted.key_id == "lab1", "the key in .env admits its client"
    assert keys.authenticate(client_key[:-1]) is None


def _compose_available() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _compose_available(), reason="docker compose plugin not installed")
@pytest.mark.parametrize("files", [["docker-compose.yml"], ["docker-compose.yml", "deploy/compose.cpu.yml"]])
def test_docker_compose_config_validates(files):
    args = ["docker", "compose"] + [a for f in files for a in ("-f", f)] + ["config", "--quiet"]
    result = subprocess.run(args, cwd=REPO_ROOT, capture_output=True, text=True,
                            env={**os.environ, **{name: "test-only" for name in ("REDIS_PASSWORD", "POSTGRES_PASSWORD",
                                                                      "INTERNAL_TOKEN", "API_KEYS", "AUDIT_HMAC_KEY")}})
    assert result.returncode == 0, result.stderr
