"""python -m services.cell_classifier  (CELL_HOST / CELL_PORT, default 127.0.0.1:8001)."""

import logging

import uvicorn

from services.cell_classifier.app import create_app
from services.cell_classifier.settings import CellServiceSettings


def main() -> None:
    settings = CellServiceSettings()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level,
                timeout_graceful_shutdown=10)


if __name__ == "__main__":
    main()
