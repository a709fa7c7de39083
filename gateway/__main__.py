"""python -m gateway  (GATEWAY_HOST / GATEWAY_PORT, default 127.0.0.1:8000)."""

from gateway.app import create_app
from gateway.settings import GatewaySettings
from shared.serving import run

if __name__ == "__main__":
    # a patient's classification can take a minute or more (CELL_TIMEOUT_S per chunk): let it finish on SIGTERM
    run(create_app, GatewaySettings(), access_log=False, graceful_shutdown_s=120)
