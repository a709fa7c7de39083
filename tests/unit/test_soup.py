"""docs/soup.md names every third-party package the services ship with, at the installed (pinned) version."""

import importlib.metadata
import importlib.util

from packaging.utils import canonicalize_name

from tests.helpers.processes import REPO_ROOT

spec = importlib.util.spec_from_file_location("soup", REPO_ROOT / "deploy" / "soup.py")
soup = importlib.util.module_from_spec(spec)
spec.loader.exec_module(soup)


def test_the_soup_list_matches_the_installed_packages(capsys):
    assert soup.main(["--check"]) == 0, capsys.readouterr().err


def test_the_closure_is_what_the_services_import_and_not_the_tools():
    closure = soup.runtime_closure()
    for needed in ("fastapi", "onnxruntime", "numpy", "uvicorn", "starlette", "pydantic-core", "sqlalchemy",
                   "asyncpg", "redis", "hl7apy", "uvloop"):  # uvloop: through uvicorn[standard]
        assert needed in closure, needed
    for tool in ("pytest", "tensorflow-cpu", "scikit-learn", "catboost", "playwright", "locust", "onnx"):
        assert canonicalize_name(tool) not in closure, f"{tool} is a test or training tool, not shipped"
    assert "this project" in soup.render().split(f"[fastapi](https://pypi.org/project/fastapi/"
                                                  f"{importlib.metadata.version('fastapi')}/)")[1].splitlines()[0]


def test_every_shipped_licence_is_reviewed_or_allowed():
    unreviewed = {name: soup.licence_of(importlib.metadata.distribution(name)) for name in soup.runtime_closure()}
    unreviewed = {name: licence for name, licence in unreviewed.items() if not soup.licence_allowed(licence)}
    assert not unreviewed, f"licences to review before shipping: {unreviewed}"


def test_licence_rules_with_known_answers():
    assert soup.licence_allowed("MIT") and soup.licence_allowed("Apache-2.0 OR BSD-2-Clause")
    assert soup.licence_allowed("BSD-3-Clause AND 0BSD AND MIT AND Zlib AND CC0-1.0")
    for refused in ("", "GPL-3.0-only", "MIT AND GPL-2.0-or-later", "LGPL-2.1-or-later", "AGPL-3.0", "Proprietary",
                    "SSPL-1.0"):
        assert not soup.licence_allowed(refused), refused
