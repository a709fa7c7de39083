"""constraints.txt pins every dependency, every install path uses it, and this environment holds what it pins.

A clinical system has to be rebuilt the same way next month: `make setup`, `make setup-train` and the
images install the versions the test suite passed with, not whatever PyPI serves that day.
"""

import importlib.metadata
import os
import re
import subprocess
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.helpers.docker_context import build_context
from tests.helpers.processes import REPO_ROOT

PROJECT = "aml-classifier"


def pins() -> dict[str, Version]:
    pinned: dict[str, Version] = {}
    for number, line in enumerate((REPO_ROOT / "constraints.txt").read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        requirement = Requirement(line)
        (specifier,) = requirement.specifier  # exactly one: name==version
        assert specifier.operator == "==", f"constraints.txt line {number} is not an exact pin: {line}"
        name = canonicalize_name(requirement.name)
        assert name not in pinned, f"constraints.txt line {number} pins {name} twice"
        pinned[name] = Version(specifier.version)
    return pinned


def declared_requirements() -> list[Requirement]:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    lines = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        lines += extra
    return [Requirement(line) for line in lines]


def test_every_declared_dependency_is_pinned_within_its_range():
    pinned = pins()
    assert canonicalize_name(PROJECT) not in pinned, "the project itself is installed from the tree, not pinned"
    for requirement in declared_requirements():
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"{requirement.name} (pyproject.toml) has no pin in constraints.txt: run make lock"
        assert requirement.specifier.contains(pinned[name], prereleases=True), (
            f"constraints.txt pins {name}=={pinned[name]} outside pyproject.toml's {requirement}")


def test_installed_packages_are_the_pinned_versions():
    """make setup / setup-train installed with the constraints, so what is installed is what is pinned."""
    pinned = pins()
    drift = []
    for distribution in importlib.metadata.distributions():
        name = canonicalize_name(distribution.metadata["Name"])
        if name in pinned and Version(distribution.version) != pinned[name]:
            drift.append(f"{name} {distribution.version} installed, {pinned[name]} pinned")
    assert not drift, "; ".join(drift) + " (make setup-train installs the pins; make lock renews them)"
    for requirement in declared_requirements():  # the lock is not vacuous here: the serving stack is installed
        if requirement.name in {"fastapi", "onnxruntime", "numpy", "pydantic"}:
            assert importlib.metadata.version(requirement.name) == str(pinned[canonicalize_name(requirement.name)])


def test_every_install_path_uses_the_constraints():
    makefile = (REPO_ROOT / "Makefile").read_text()
    installs = [line for line in makefile.splitlines() if re.search(r"pip install .*-e '\.\[", line)
                or "$(PIP_INSTALL)" in line]
    assert installs, "the Makefile's setup targets were not found"
    assert "PIP_INSTALL := $(BIN)/pip install -q -c constraints.txt" in makefile
    for line in installs:
        assert "$(PIP_INSTALL)" in line or "-c constraints.txt" in line, line

    dockerfile = (REPO_ROOT / "deploy" / "Dockerfile").read_text()
    pip_commands = re.findall(r"pip (?:install|wheel) [^&\n]*", dockerfile)
    for command in pip_commands:
        assert "--constraint" in command or command.startswith("pip install --no-cache-dir /wheels/*.whl"), command
    # the runtime images install the wheels the constrained wheel stage built; the GPU image pins its build
    assert re.search(r"ARG ONNXRUNTIME_GPU_VERSION=\d+\.\d+\.\d+\n", dockerfile)
    assert '"onnxruntime-gpu==${ONNXRUNTIME_GPU_VERSION}"' in dockerfile


def test_gpu_benchmark_environment_installs_the_gpu_images_onnxruntime():
    version = re.search(r"^ARG ONNXRUNTIME_GPU_VERSION=(\S+)$", (REPO_ROOT / "deploy" / "Dockerfile").read_text(),
                        re.MULTILINE).group(1)
    script = REPO_ROOT / "bench" / "gpu_env.sh"
    env = {k: v for k, v in os.environ.items() if k != "ONNXRUNTIME_GPU_VERSION"}
    printed = subprocess.run(["bash", str(script), "--requirement"], capture_output=True, text=True, env=env, check=True)
    assert printed.stdout.strip() == f"onnxruntime-gpu=={version}"
    overridden = subprocess.run(["bash", str(script), "--requirement"], capture_output=True, text=True,
                                env=env | {"ONNXRUNTIME_GPU_VERSION": "9.9.9"}, check=True)
    assert overridden.stdout.strip() == "onnxruntime-gpu==9.9.9"
    assert '"$ORT_GPU_REQUIREMENT"' in script.read_text(), "the install must use the pinned requirement"


def test_docker_build_context_lets_in_only_what_the_images_copy():
    context = build_context()
    assert context.starts_with_everything_left_out, "everything is left out unless let in"
    let_in = set(context.let_in)
    dockerfile = (REPO_ROOT / "deploy" / "Dockerfile").read_text()
    copied = set()
    for line in dockerfile.splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            copied.update(part.rstrip("/") for part in line.split()[1:-1])
    assert copied, "no COPY from the build context found"
    assert copied <= let_in, f"copied but not let in by .dockerignore: {sorted(copied - let_in)}"
    for secret_or_bulky in (".venv", ".cache", "data", "tests", "training"):
        assert secret_or_bulky not in let_in
