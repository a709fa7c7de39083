"""The services run from the installed wheel, outside the source tree, as in the Docker images.

deploy/Dockerfile builds a wheel from the build context that .dockerignore lets in and installs it;
no Docker engine runs here, so this builds the same wheel from the same files, installs it into a
directory of its own, and starts the cell service, the subtype service and the gateway from
there with an interpreter that sees the test environment's dependencies but not its editable
install of this project (the source tree is nowhere on its path). A module, model file, page or
migration that the wheel leaves out, or code that reads a file relative to the tree, fails here.
"""

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import httpx
import pytest

from tests.helpers.docker_context import build_context
from tests.helpers.images import fullsize_images
from tests.helpers.keys import API_KEYS_JSON, AUTH
from tests.helpers.processes import REPO_ROOT, ServiceProcess, free_port
from tests.helpers.uploads import classified

pytestmark = pytest.mark.integration


def docker_build_context(target: Path) -> Path:
    """Copy what .dockerignore lets in (its `!` lines), without what it leaves out again."""
    context = build_context()
    assert context.starts_with_everything_left_out
    for entry in context.let_in:
        source, destination = REPO_ROOT / entry, target / entry
        destination.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, destination, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(source, destination)
    for entry in context.left_out_again:
        shutil.rmtree(target / entry, ignore_errors=True)
    return target


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("installed")
    context = docker_build_context(root / "context")
    wheels, site = root / "wheels", root / "site"
    def pip(*args: str) -> None:
        result = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, timeout=300,
                                cwd=root)
        assert result.returncode == 0, result.stderr[-3000:]

    pip("wheel", "-q", "--no-deps", "--wheel-dir", str(wheels), str(context))
    (wheel,) = wheels.glob("aml_classifier-*-py3-none-any.whl")
    pip("install", "-q", "--no-deps", "--target", str(site), str(wheel))
    return site


@pytest.fixture(scope="module")
def python(tmp_path_factory) -> str:
    """A venv whose only packages are the test environment's, added as a plain path: the .pth that
    maps this project's packages to the source tree (the editable install) is not run."""
    venv = tmp_path_factory.mktemp("without-editable") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    interpreter = venv / "bin" / "python"
    purelib = subprocess.run([str(interpreter), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    dependencies = sysconfig.get_paths()["purelib"]
    (Path(purelib) / "test_dependencies.pth").write_text(dependencies + "\n")
    return str(interpreter)


def start(module: str, prefix: str, python: str, site: Path, workdir: Path, **env: str) -> ServiceProcess:
    port = free_port()
    settings = {"PYTHONPATH": str(site), f"{prefix}_HOST": "127.0.0.1", f"{prefix}_PORT": str(port), **env}
    name = module.rsplit(".", 1)[-1]
    return ServiceProcess(module, settings, port, workdir / f"{name}.log", cwd=workdir, python=python).start()


def test_the_packages_come_from_the_wheel_and_the_tree_is_out_of_reach(installed, python, tmp_path):
    probe = ("import gateway, services.cell_classifier, services.subtype, shared, fastapi, onnxruntime; "
             "print('\\n'.join(m.__file__ for m in (gateway, services.cell_classifier, services.subtype, shared)))")
    result = subprocess.run([python, "-c", probe], cwd=tmp_path, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(installed)}, timeout=60)
    assert result.returncode == 0, result.stderr
    for path in result.stdout.split():
        assert Path(path).is_relative_to(installed), f"{path} is not the installed copy"
    unreachable = subprocess.run([python, "-c", "import training.train_cells"], cwd=tmp_path, capture_output=True,
                                 text=True, env={**os.environ, "PYTHONPATH": str(installed)}, timeout=60)
    assert "ModuleNotFoundError" in unreachable.stderr, "training code (never in an image) must be out of reach"


def test_services_and_gateway_run_from_the_installed_wheel(installed, python, tmp_path):
    workdir = tmp_path / "home"
    workdir.mkdir()
    services = []
    try:
        cell = start("services.cell_classifier", "CELL", python, installed, workdir, CELL_PROVIDER="cpu",
                     INTERNAL_TOKEN="t0ken")
        services.append(cell)
        subtype = start("services.subtype", "SUBTYPE", python, installed, workdir, INTERNAL_TOKEN="t0ken")
        services.append(subtype)
        gateway = start("gateway", "GATEWAY", python, installed, workdir, CELL_URL=cell.url, SUBTYPE_URL=subtype.url,
                        REDIS_URL="", API_KEYS=API_KEYS_JSON, INTERNAL_TOKEN="t0ken", DATA_DIR=str(workdir / "data"))
        services.append(gateway)

        model = httpx.get(cell.url + "/readyz", timeout=10).json()["checks"]["model"]
        assert model["name"] == "aml-cell-resnet" and model["apl_head"] is not None, "model and APL head packaged"
        page = httpx.get(gateway.url + "/", timeout=10)
        assert page.status_code == 200 and "<html" in page.text.lower(), "the page is packaged"
        images = fullsize_images()[:6]
        report = classified(gateway.url, "INSTALLED-1", [(path.name, path.read_bytes()) for _, path in images])
        assert report["n_images"] == len(images) and sum(report["cell_counts"].values()) == len(images)
        assert report["models"]["cell"]["version"] == model["version"]
        stored = httpx.get(f"{gateway.url}/patients/INSTALLED-1/reports", headers=AUTH, timeout=10)
        assert stored.status_code == 200, stored.text
        assert [r["id"] for r in stored.json()["reports"]] == [report["report_id"]], "migrations packaged"
        assert (workdir / "data" / "reports.db").exists()
    finally:
        for service in reversed(services):
            service.stop()
