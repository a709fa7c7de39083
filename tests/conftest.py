import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.helpers.images import FULLSIZE_DIR  # noqa: E402

try:
    import hypothesis
    import hypothesis.configuration
except ImportError:  # hypothesis is a test extra; the suites that use it import it themselves
    hypothesis = None
if hypothesis is not None:
    # no example database: hypothesis would otherwise save examples in .hypothesis/ under the working directory
    # (the repository); a failing example is printed in the failure report instead of replayed from there
    hypothesis.settings.register_profile("aml-tests", database=None)
    hypothesis.settings.load_profile("aml-tests")

_HYPOTHESIS_HOME: str | None = None


def pytest_configure(config):
    global _HYPOTHESIS_HOME
    if not FULLSIZE_DIR.is_dir():
        raise pytest.UsageError(f"test data missing: {FULLSIZE_DIR} (see README, 'Data')")
    if hypothesis is not None and hasattr(hypothesis.configuration, "set_hypothesis_home_dir"):
        # without a database hypothesis still caches the constants of the modules under test in
        # .hypothesis/constants: in a temporary directory, not in the repository
        _HYPOTHESIS_HOME = tempfile.mkdtemp(prefix="aml-tests-hypothesis-")
        hypothesis.configuration.set_hypothesis_home_dir(_HYPOTHESIS_HOME)


def pytest_unconfigure(config):
    if _HYPOTHESIS_HOME is not None:
        shutil.rmtree(_HYPOTHESIS_HOME, ignore_errors=True)


def require_training_stack():
    """Skip without TensorFlow, unless REQUIRE_TRAIN_TESTS=1 (CI), where its absence is a failure."""
    if os.environ.get("REQUIRE_TRAIN_TESTS") == "1":
        import catboost, imblearn, onnxmltools, skl2onnx, sklearn, tensorflow, tf2onnx, xgboost  # noqa: F401, E401
        return
    for module in ("tensorflow", "tf2onnx", "sklearn", "xgboost", "catboost", "imblearn", "skl2onnx", "onnxmltools"):
        pytest.importorskip(module)


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request, tmp_path):
    """An empty report-store database (not migrated): SQLite, or a fresh PostgreSQL schema."""
    from tests.helpers.database import open_database

    db, cleanup = open_database(request.param, tmp_path)
    yield db
    cleanup()
