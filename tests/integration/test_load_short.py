"""The load scenarios in a short form: every scenario runs, and at low load nothing fails or is shed."""

import pytest

from bench.load_report import main as load_report

pytestmark = pytest.mark.integration


def test_load_scenarios_short(tmp_path):
    results = load_report(["--duration", "3", "--users", "1,4", "--out", str(tmp_path)])
    assert set(results) == {"cell, 1 image/request", "cell, 64 images/request", "gateway, 32-image patient"}
    for rows in results.values():
        for row in rows:
            assert row["requests"] > 0 and row["error_rate"] == 0 and row["shed_rate"] == 0, row
            assert row["accepted_rps"] > 0 and row["p99"] > 0, row
    assert (tmp_path / "load_report.md").is_file() and (tmp_path / "load_report.png").stat().st_size > 1000
