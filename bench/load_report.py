"""`make load`: locust scenarios at 1, 8, 32 and 64 users against a stack it starts on loopback;
writes docs/load_report.md and docs/load_report.png.

    python -m bench.load_report [--duration 20] [--users 1,8,32,64] [--out docs]

Scenarios: the cell endpoint with 1 and with 64 images per request, and patient
classification (32 new images each) through the gateway. Each run is headless and bounded.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import SHED_SUFFIX, PeakRss
from tests.helpers.keys import CLASSIFY_KEY
from tests.helpers.processes import REPO_ROOT, start_cell_service, start_gateway, start_subtype_service

LOCUSTFILE = REPO_ROOT / "tests" / "load" / "locustfile.py"
SCENARIOS = (
    ("cell, 1 image/request", "CellClient", "cell", {"CELLS_PER_REQUEST": "1"}),
    ("cell, 64 images/request", "CellClient", "cell", {"CELLS_PER_REQUEST": "64"}),
    ("gateway, 32-image patient", "GatewayPatient", "gateway", {"PATIENT_IMAGES": "32"}),
)


def run_locust(host: str, user_class: str, users: int, duration_s: float, env: dict, workdir: Path) -> dict:
    prefix = workdir / f"{user_class}-{users}"
    command = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), user_class, "--headless", "--host", host,
               "-u", str(users), "-r", str(max(users, 1)), "-t", f"{int(duration_s)}s", "--only-summary",
               "--csv", str(prefix), "--exit-code-on-error", "0", "--stop-timeout", "10"]
    subprocess.run(command, cwd=REPO_ROOT, env={**os.environ, **env}, capture_output=True, text=True,
                   timeout=duration_s + 120, check=True)
    with open(f"{prefix}_stats.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    total = next(r for r in rows if r["Name"] == "Aggregated")
    accepted = [r for r in rows if r["Name"] != "Aggregated" and not r["Name"].endswith(SHED_SUFFIX)]
    shed = sum(int(r["Request Count"]) for r in rows if r["Name"].endswith(SHED_SUFFIX))
    requests = int(total["Request Count"])
    served = accepted[0] if accepted else None
    errors = int(served["Failure Count"]) if served else 0
    return {"users": users, "requests": requests, "rps": float(total["Requests/s"]),
            "accepted_rps": float(served["Requests/s"]) if served else 0.0,
            "p50": float(served["50%"]) if served else float("nan"),
            "p95": float(served["95%"]) if served else float("nan"),
            "p99": float(served["99%"]) if served else float("nan"),
            "shed_rate": shed / requests if requests else 0.0,
            "error_rate": errors / requests if requests else 0.0}


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for name, rows in results.items():
        users = [r["users"] for r in rows]
        left.plot(users, [r["accepted_rps"] for r in rows], marker="o", label=name)
        right.plot(users, [r["p99"] for r in rows], marker="o", label=name)  # accepted requests
    for ax, title in ((left, "accepted requests/s"), (right, "p99 latency of accepted requests, ms")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent users")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    left.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per run")
    parser.add_argument("--users", default="1,8,32,64")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs")
    args = parser.parse_args(argv)
    user_counts = [int(u) for u in args.users.split(",")]
    results: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        cell = start_cell_service(workdir, CELL_PROVIDER="auto")
        subtype = start_subtype_service(workdir)
        gateway = start_gateway(workdir, cell.url, subtype.url, ready_path="/readyz",
                                RATE_LIMIT_PER_MINUTE="1000000", RATE_LIMIT_BURST="100000")
        try:
            with PeakRss(cell.pid) as cell_rss:
                for name, user_class, target, env in SCENARIOS:
                    host = cell.url if target == "cell" else gateway.url
                    env = {**env, "AML_API_KEY": CLASSIFY_KEY}
                    results[name] = []
                    for users in user_counts:
                        row = run_locust(host, user_class, users, args.duration, env, workdir)
                        results[name].append(row)
                        print(f"{name:28s} {users:3d} users: {row['accepted_rps']:7.1f} req/s accepted, "
                              f"p50 {row['p50']:.0f} ms, p99 {row['p99']:.0f} ms, shed {row['shed_rate']:.1%}, "
                              f"errors {row['error_rate']:.1%}", flush=True)
        finally:
            for process in (gateway, subtype, cell):
                process.stop()
    args.out.mkdir(parents=True, exist_ok=True)
    plot(results, args.out / "load_report.png")
    lines = ["# Load report", "", "Generated by `make load` (`bench/load_report.py`): locust, headless, loopback, "
             f"{args.duration:.0f} s per run, on {os.cpu_count()} CPU cores (client and servers share them).", "",
             "Latencies are those of accepted requests; *shed* are fast 503 + Retry-After answers when the "
             "cell service's bounded queue (`MAX_QUEUE`) is full; *errors* are every other failure.", "",
             "| scenario | users | requests | accepted req/s | p50 ms | p95 ms | p99 ms | shed | errors |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, rows in results.items():
        for r in rows:
            lines.append(f"| {name} | {r['users']} | {r['requests']} | {r['accepted_rps']:.1f} | {r['p50']:.0f} | "
                         f"{r['p95']:.0f} | {r['p99']:.0f} | {r['shed_rate']:.1%} | {r['error_rate']:.1%} |")
    lines += ["", f"Cell service peak RSS during the runs: {cell_rss.peak / 2**20:.0f} MiB.", "",
              "![load](load_report.png)", ""]
    (args.out / "load_report.md").write_text("\n".join(lines))
    return results


if __name__ == "__main__":
    main()
