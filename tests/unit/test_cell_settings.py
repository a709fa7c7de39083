"""The cell service's settings share the cores (CELL_CORES, default the machine's) and the admission limit
among its worker processes (CELL_WORKERS)."""

from services.cell_classifier.settings import CellServiceSettings


def test_settings_share_the_cores_and_the_admission_limit(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    one = CellServiceSettings()
    assert (one.workers, one.decode_workers, one.threads_per_batch(), one.worker_max_queue()) == (1, 8, 4, 768)
    monkeypatch.setenv("CELL_WORKERS", "4")
    four = CellServiceSettings()
    assert (four.workers, four.decode_workers, four.threads_per_batch(), four.worker_max_queue()) == (4, 2, 1, 192)
    monkeypatch.setenv("CELL_DECODE_WORKERS", "3")
    monkeypatch.setenv("CELL_MAX_QUEUE", "10")
    assert (CellServiceSettings().decode_workers, CellServiceSettings().worker_max_queue()) == (3, 3)
    monkeypatch.setenv("CELL_CORES", "4")
    monkeypatch.delenv("CELL_DECODE_WORKERS")
    assert (CellServiceSettings().decode_workers, CellServiceSettings().threads_per_batch()) == (1, 1)
    monkeypatch.setenv("CELL_WORKERS", "1")
    assert (CellServiceSettings().decode_workers, CellServiceSettings().threads_per_batch()) == (4, 2)
