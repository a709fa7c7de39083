"""python -m services.cell_classifier  (CELL_HOST / CELL_PORT, default 127.0.0.1:8001)."""

from services.cell_classifier.app import create_app
from services.cell_classifier.settings import CellServiceSettings
from shared.serving import run

if __name__ == "__main__":
    settings = CellServiceSettings()
    run(create_app, settings, access_log=settings.access_log)
