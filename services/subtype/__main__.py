"""python -m services.subtype  (SUBTYPE_HOST / SUBTYPE_PORT, default 127.0.0.1:8002)."""

from services.subtype.app import create_app
from services.subtype.settings import SubtypeServiceSettings
from shared.serving import run

if __name__ == "__main__":
    run(create_app, SubtypeServiceSettings())
