"""The cell benchmark on the CUDA provider: the same table as ``make bench-cells``.

    make bench-gpu          (bash bench/gpu_env.sh, then python -m bench.bench_gpu [--duration 20] ...)

Runs in the GPU environment that ``bench/gpu_env.sh`` prepares (onnxruntime-gpu, never beside the
CPU onnxruntime; no TensorFlow). The in-process steps and the service use CELL_PROVIDER=cuda and the
float model (int8 QDQ is a CPU speed-up; ``auto`` chooses float on CUDA too), with one decode worker
per core this process may use. It refuses to run, rather than print CPU numbers, when onnxruntime
offers no CUDA provider or a session falls back to the CPU (missing CUDA/cuDNN libraries).

CUDA and cuDNN libraries installed as pip packages (``nvidia-*``, e.g. beside PyTorch) are put on
LD_LIBRARY_PATH for this process and the service (the process restarts itself once to apply it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

REEXEC_MARK = "AML_BENCH_GPU_LIBS"


def nvidia_library_dirs() -> list[str]:
    """``.../site-packages/nvidia/*/lib`` folders of every site-packages on the path."""
    roots = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], *sys.path}
    found = []
    for root in roots:
        base = Path(root) / "nvidia"
        if base.is_dir():
            found += sorted(str(lib) for lib in base.glob("*/lib") if lib.is_dir())
    return list(dict.fromkeys(found))


def ensure_library_path() -> None:
    if os.environ.get(REEXEC_MARK):
        return
    dirs = nvidia_library_dirs()
    current = [d for d in os.environ.get("LD_LIBRARY_PATH", "").split(":") if d]
    missing = [d for d in dirs if d not in current]
    if missing:
        env = {**os.environ, REEXEC_MARK: "1", "LD_LIBRARY_PATH": ":".join(missing + current)}
        os.execve(sys.executable, [sys.executable, "-m", "bench.bench_gpu", *sys.argv[1:]], env)


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def main() -> None:
    ensure_library_path()
    import onnxruntime as ort

    from bench import bench_cells
    from services.cell_classifier.inference import CellModel
    from services.cell_classifier.settings import CellServiceSettings

    parser = bench_cells.parser(__doc__)
    parser.add_argument("--max-batch", type=int, default=64, help="the service's MAX_BATCH")
    args = parser.parse_args()
    available = ort.get_available_providers()
    if "CUDAExecutionProvider" not in available:
        sys.exit(f"onnxruntime {ort.__version__} at {Path(ort.__file__).parent} offers {available}, no "
                 "CUDAExecutionProvider: run `make bench-gpu` (bash bench/gpu_env.sh makes the environment)")
    probe = CellModel(CellServiceSettings().model_dir, "cuda", 0, "float")
    if probe.provider != "CUDAExecutionProvider":
        sys.exit(f"the session fell back to {probe.provider}: CUDA/cuDNN libraries missing? "
                 f"LD_LIBRARY_PATH={os.environ.get('LD_LIBRARY_PATH', '')}")
    del probe
    if shutil.which("nvidia-smi"):
        print(subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout.strip(), flush=True)
    print(f"onnxruntime {ort.__version__}, providers {available}", flush=True)
    n = cores()
    opts = bench_cells.Options(provider="cuda", decode_workers=n, inference_threads=0,
                               service_env={"CELL_MODEL_VARIANT": "float", "MAX_BATCH": str(args.max_batch)})
    bench_cells.run(args, opts)


if __name__ == "__main__":
    main()
