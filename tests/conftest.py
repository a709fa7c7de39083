import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.helpers.images import FULLSIZE_DIR  # noqa: E402


def pytest_configure(config):
    if not FULLSIZE_DIR.is_dir():
        raise pytest.UsageError(f"test data missing: {FULLSIZE_DIR} (see README, 'Data')")


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
