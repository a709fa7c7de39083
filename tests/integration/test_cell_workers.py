"""CELL_WORKERS: several service processes on one port (shared/worker_processes.py), each with the model, its
share of the threads and of the admission limit, and a socket of its own; /metrics adds up every worker's counts
whichever worker answers; keep-alive connections opened at once are spread over the workers; a worker that dies is
replaced and its live gauges leave the sum; SIGTERM stops them all and removes their metric files; a port in use
or a model that cannot be served fails the start."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import pytest

from services.cell_classifier.settings import DEFAULT_MODEL_DIR
from tests.helpers.images import fullsize_images
from tests.helpers.processes import REPO_ROOT, start_cell_service
from tests.helpers.waiting import until_sync

pytestmark = pytest.mark.integration


def ok_requests(metrics: str) -> float:
    match = re.search(r'^cell_requests_total\{outcome="ok"\} ([0-9.e+]+)$', metrics, re.M)
    assert match, metrics[:2000]
    return float(match.group(1))


def ok_requests_of_worker(metrics_dir: Path, pid: int, scratch: Path) -> float:
    """One worker's own ``cell_requests_total{outcome="ok"}``, read from its counter file in the multiprocess
    directory (a copy, read as /metrics reads every worker's: prometheus_client's multiprocess collector)."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    source = metrics_dir / f"counter_{pid}.db"
    if not source.exists():  # nothing counted yet
        return 0.0
    alone = scratch / str(pid)
    shutil.rmtree(alone, ignore_errors=True)
    alone.mkdir(parents=True)
    shutil.copyfile(source, alone / source.name)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(alone))
    return registry.get_sample_value("cell_requests_total", {"outcome": "ok"}) or 0.0


def workers_of(pid: int) -> list[psutil.Process]:
    """The processes that serve: children running the app (spawned; a resource tracker may sit beside), not
    one that died and is not yet reaped."""
    def command(process: psutil.Process) -> str:
        try:
            return " ".join(process.cmdline())
        except (psutil.ZombieProcess, psutil.NoSuchProcess):
            return ""

    commands = {child: command(child) for child in psutil.Process(pid).children()}
    return [child for child, line in commands.items()
            if "multiprocessing.spawn" in line and "resource_tracker" not in line]


def test_two_worker_processes_share_the_port_and_the_metrics(tmp_path):
    service = start_cell_service(tmp_path, CELL_WORKERS="2")
    try:
        workers = workers_of(service.pid)
        assert len(workers) == 2
        metrics_dir = Path(workers[0].environ()["PROMETHEUS_MULTIPROC_DIR"])
        assert metrics_dir.is_dir()
        images = [(path.name, path.read_bytes()) for _, path in fullsize_images()[:24]]
        scratch = tmp_path / "one-worker"

        def one(item):  # a fresh connection per request: the kernel hands them to either worker
            name, data = item
            answer = httpx.post(f"{service.url}/v1/classify", files=[("images", (name, data, "image/jpeg"))],
                                timeout=60)
            return answer.status_code, answer.json()["results"][0]

        def served() -> list[float]:
            return [ok_requests_of_worker(metrics_dir, w.pid, scratch) for w in workers]

        assert served() == [0.0, 0.0]
        # rounds of 24 concurrent requests until each worker has answered some (which one accepts a connection
        # is the kernel's choice: usually both in the first round, but no number of rounds guarantees it)
        sent = 0
        with ThreadPoolExecutor(8) as pool:
            for _ in range(10):
                answers = list(pool.map(one, images))
                sent += len(images)
                assert [status for status, _ in answers] == [200] * len(images)
                assert [result["filename"] for _, result in answers] == [name for name, _ in images]
                assert all("label" in result for _, result in answers)
                if all(count > 0 for count in served()):
                    break
        per_worker = served()
        assert all(count > 0 for count in per_worker), f"one worker served all {sent} requests: {per_worker}"
        # a worker counts an answer just after sending it: wait for the last counts to land, then every worker's
        # count, whichever worker answers /metrics
        until_sync(lambda: sum(served()) == sent, what=f"{sent} requests counted in the workers' files")
        per_worker = served()
        totals = {ok_requests(httpx.get(f"{service.url}/metrics", timeout=10).text) for _ in range(6)}
        assert totals == {float(sent)} and sum(per_worker) == sent, (totals, per_worker)
    finally:
        service.stop()
    assert service.process.returncode == 0
    assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)
    assert not metrics_dir.exists(), "the workers' metric files are removed at exit"


def connections_per_worker(workers: list[psutil.Process], port: int) -> list[int]:
    return [sum(1 for c in w.net_connections(kind="tcp") if c.status == psutil.CONN_ESTABLISHED and c.laddr.port == port)
            for w in workers]


def test_keep_alive_connections_opened_at_once_are_spread_over_the_workers(tmp_path):
    """With one shared socket, whichever worker won each accept race kept the connection: 32 connections opened
    at once went 32/0 or 30/2 in a third of the starts measured, and the other worker idled. With a socket per
    worker the kernel spreads them by a hash of their addresses: fewer than 4 of 32 on one worker has odds of
    about 3 in a million."""
    service = start_cell_service(tmp_path, CELL_WORKERS="2")
    clients = []
    try:
        workers = workers_of(service.pid)
        clients = [socket.create_connection(("127.0.0.1", service.port), timeout=10) for _ in range(32)]
        until_sync(lambda: sum(connections_per_worker(workers, service.port)) == 32,
                   what="32 connections accepted by the workers")
        split = connections_per_worker(workers, service.port)
        assert min(split) >= 4, f"connections per worker: {split}"
    finally:
        for client in clients:
            client.close()
        service.stop()


def test_a_worker_that_dies_is_replaced_and_its_queue_depth_leaves_the_sum(tmp_path):
    service = start_cell_service(tmp_path, CELL_WORKERS="2")
    try:
        workers = workers_of(service.pid)
        metrics_dir = Path(workers[0].environ()["PROMETHEUS_MULTIPROC_DIR"])
        victim = workers[0]
        # every worker started (one dying before that is a failed start, and the service exits 3)
        until_sync(lambda: "2 worker processes serving" in service.log_tail(10 ** 6), what="both workers started")
        assert (metrics_dir / f"gauge_livesum_{victim.pid}.db").exists()
        victim.send_signal(signal.SIGKILL)

        def replaced() -> bool:
            pids = {w.pid for w in workers_of(service.pid)}
            return len(pids) == 2 and victim.pid not in pids

        until_sync(replaced, timeout_s=120, what="a new worker in place of the killed one")
        assert not (metrics_dir / f"gauge_livesum_{victim.pid}.db").exists(), "the dead worker's gauge left the sum"
        _, path = fullsize_images()[0]
        for _ in range(8):  # fresh connections, spread over both workers
            answer = httpx.post(f"{service.url}/v1/classify", files=[("images", (path.name, path.read_bytes()))],
                                timeout=60)
            assert answer.status_code == 200, answer.text
    finally:
        service.stop()
    assert service.process.returncode == 0


def test_a_port_in_use_stops_the_start_of_several_workers_with_a_failure_status(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, "CELL_HOST": "127.0.0.1", "CELL_PORT": str(port), "CELL_PROVIDER": "cpu",
               "CELL_WORKERS": "2"}
        done = subprocess.run([sys.executable, "-m", "services.cell_classifier"], cwd=REPO_ROOT, timeout=120,
                              env=env, capture_output=True, text=True)
    assert done.returncode == 3, done.stderr[-2000:]
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr, done.stderr[-2000:]


def test_a_given_metrics_dir_is_created_and_emptied_of_an_earlier_runs_files(tmp_path):
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    (metrics_dir / "counter_999999.db").write_bytes(b"stale")
    service = start_cell_service(tmp_path, CELL_WORKERS="2", PROMETHEUS_MULTIPROC_DIR=str(metrics_dir))
    try:
        _, path = fullsize_images()[0]
        answer = httpx.post(f"{service.url}/v1/classify", files=[("images", (path.name, path.read_bytes()))],
                            timeout=60)
        assert answer.status_code == 200
        assert ok_requests(httpx.get(f"{service.url}/metrics", timeout=10).text) == 1.0
        assert not (metrics_dir / "counter_999999.db").exists()
    finally:
        service.stop()
    assert metrics_dir.is_dir(), "a directory the operator gave is left in place"


def test_a_model_that_cannot_be_served_stops_the_start_with_a_failure_status(tmp_path):
    """uvicorn's process manager would stop with status 0 when its workers cannot start; the service checks
    the model first and exits 3 (uvicorn's startup failure), as one process does."""
    broken = tmp_path / "model"
    broken.mkdir()
    shutil.copyfile(DEFAULT_MODEL_DIR / "model_card.json", broken / "model_card.json")  # no network file
    env = {**os.environ, "CELL_MODEL_DIR": str(broken), "CELL_PORT": "0", "CELL_PROVIDER": "cpu"}
    for workers in ("1", "2"):
        done = subprocess.run([sys.executable, "-m", "services.cell_classifier"], cwd=REPO_ROOT, timeout=60,
                              env={**env, "CELL_WORKERS": workers}, capture_output=True, text=True)
        assert done.returncode == 3, (workers, done.stderr[-2000:])


def test_a_tampered_apl_head_stops_the_start_of_several_workers_too(tmp_path):
    """The check before the workers loads the model as they do: the CNN alone passed it, and a tampered APL head
    then failed every worker while the service exited 0."""
    model_dir = tmp_path / "model"
    shutil.copytree(DEFAULT_MODEL_DIR, model_dir, ignore=shutil.ignore_patterns("*.keras", "*.png", "*.md"))
    head = model_dir / "apl_cell_head.onnx"
    head.write_bytes(head.read_bytes()[:-1] + b"\x00")
    env = {**os.environ, "CELL_MODEL_DIR": str(model_dir), "CELL_PORT": "0", "CELL_PROVIDER": "cpu"}
    for workers in ("1", "2"):
        done = subprocess.run([sys.executable, "-m", "services.cell_classifier"], cwd=REPO_ROOT, timeout=60,
                              env={**env, "CELL_WORKERS": workers}, capture_output=True, text=True)
        assert done.returncode == 3, (workers, done.stderr[-2000:])
        assert "apl_cell_head.onnx has sha256" in done.stderr, (workers, done.stderr[-2000:])
