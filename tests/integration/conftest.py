import pytest

from tests.helpers.processes import start_cell_service, start_subtype_service
from tests.helpers.redis_server import RedisServer


@pytest.fixture(scope="session")
def cell_service(tmp_path_factory):
    process = start_cell_service(tmp_path_factory.mktemp("cell-shared"))
    yield process
    process.stop()


@pytest.fixture(scope="session")
def subtype_service(tmp_path_factory):
    process = start_subtype_service(tmp_path_factory.mktemp("subtype-shared"))
    yield process
    process.stop()


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def plain_gateway(tmp_path_factory, cell_service, subtype_service):
    """A gateway over the shared cell and subtype services, in-process cache, for one test module."""
    from tests.helpers.processes import start_gateway

    process = start_gateway(tmp_path_factory.mktemp("gateway"), cell_service.url, subtype_service.url)
    yield process
    process.stop()
