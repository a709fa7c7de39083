"""Do the stored copies look like full-size originals read through the service's decoding?

The training and test images here are copies (PBC 224x224, DeepAPL 144x144: Lanczos from the 360x363
CellaVision originals, JPEG q90); the hidden sets are measured as full-size originals, which the service
decodes at a reduced scale (``shared.preprocessing.preprocess_file``). No DeepAPL original is here, so the
copies' chain is replayed on the 64 PBC originals (``pbc_fullsize/``, the same size) and compared with the
service's path: focus (``shared.appearance.sharpness``) and grey levels, as made and after a Gaussian blur of
the copy. Then the served network reads the DeepAPL patients' copies as stored and blurred by the radii that
bring the copies to the originals' softness:

    python -m training.input_path [--model-dir services/cell_classifier/model] [--radii 0.3 0.5]

docs/cell_model_experiments.md ("The copies and the originals") records what it printed for 2.3.0.
"""

from __future__ import annotations

import argparse
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from shared.appearance import sharpness
from shared.preprocessing import preprocess, preprocess_file

REPO_ROOT = Path(__file__).resolve().parents[1]
COPY_SIDES = {"DeepAPL": 144, "PBC": 224}
COPY_QUALITY = 90


def stored_copy(path: Path, side: int, quality: int = COPY_QUALITY) -> Image.Image:
    """The copy the data folder would hold of this original: Lanczos to ``side`` x ``side``, JPEG."""
    with Image.open(path) as image:
        resized = image.convert("RGB").resize((side, side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    resized.save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def network_input(copy: Image.Image, blur_radius: float = 0.0) -> np.ndarray:
    """The array the network gets from a copy, after an optional Gaussian blur of the copy."""
    return preprocess(copy.filter(ImageFilter.GaussianBlur(blur_radius)) if blur_radius > 0 else copy)


def service_arrays(originals: Sequence[Path]) -> np.ndarray:
    """The arrays the service makes of the originals (its decoding and preprocessing)."""
    return np.stack([preprocess_file(path) for path in originals])


def compare_chains(originals: Sequence[Path], side: int, radii: Sequence[float],
                   served: np.ndarray | None = None) -> dict:
    """The service's path (``served``: ``service_arrays(originals)``, made here when not given) against the copies'
    chain (as made and blurred by each radius) on the same originals: median sharpness of each and the mean
    absolute grey-level difference from the service's arrays."""
    served = service_arrays(originals) if served is None else served
    copies = [stored_copy(path, side) for path in originals]
    rows = {}
    for radius in (0.0, *radii):
        arrays = np.stack([network_input(copy, radius) for copy in copies])
        rows[radius] = {"sharpness": float(np.median([sharpness(a) for a in arrays])),
                        "mean_abs_difference": float(np.abs(arrays.astype(np.float64) - served).mean())}
    return {"service_sharpness": float(np.median([sharpness(a) for a in served])), "copies": rows}


def fullsize_dir() -> Path:
    """``pbc_fullsize/`` beside the PBC folder ($PBC_DIR or ../shared/data/pbc)."""
    from training import pbc_dataset

    return pbc_dataset.data_dir().parent / "pbc_fullsize"


def originals(directory: Path) -> list[Path]:
    paths = sorted(directory.glob("*/*.jpg"))
    if not paths:
        raise FileNotFoundError(f"no full-size originals under {directory} (README, 'Data')")
    return paths


def read_deepapl(model_dir: Path, radii: Sequence[float], cache_dir: Path | None) -> None:
    """The served network's leukaemia summary on the DeepAPL validation and test patients' copies, as stored
    and blurred by each radius (``training.robustness.evaluate`` with these variants)."""
    from services.cell_classifier.inference import CellModel
    from training import deepapl_dataset, robustness

    model = CellModel(model_dir, "cpu")
    variants = {"blur 0 px": lambda image: image, **{f"blur {radius:g} px": robustness.blurred(radius)
                                                     for radius in radii}}
    splits = deepapl_dataset.split_dataset(deepapl_dataset.data_dir(), cache_dir)
    print(f"{model.card['name']} {model.card['version']} ({model.variant}): right / blasts flagged / "
          "normal called blast, in cells", flush=True)
    for name, split in (("validation", splits[1]), ("test", splits[2])):
        for variant, result in robustness.evaluate(model, split.paths, split.labels, variants).items():
            summary = result["leukaemia"]
            print(f"  {name}, {variant}: {round(summary['accuracy_9'] * summary['n_counted'])} of "
                  f"{summary['n_counted']}, {round(summary['blast_flagged'] * summary['n_blasts'])} of "
                  f"{summary['n_blasts']}, {round(summary['normal_called_blast'] * summary['n_normal'])} of "
                  f"{summary['n_normal']}", flush=True)


def main(argv: list[str] | None = None) -> None:
    from services.cell_classifier.settings import DEFAULT_MODEL_DIR

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--originals", type=Path, default=None,
                        help="full-size originals as DIR/<class>/*.jpg (default: pbc_fullsize/ beside $PBC_DIR)")
    parser.add_argument("--radii", type=float, nargs="+", default=[0.3, 0.5],
                        help="Gaussian blur radii of the copy, in pixels of the copy")
    parser.add_argument("--cache-dir", default=str(REPO_ROOT / ".cache"), help="decoded-array cache; '' for none")
    args = parser.parse_args(argv)

    paths = originals(args.originals or fullsize_dir())
    served = service_arrays(paths)
    for source, side in COPY_SIDES.items():
        result = compare_chains(paths, side, args.radii, served)
        print(f"{source} copies ({side} px) of the {len(paths)} originals; the service's path: sharpness "
              f"{result['service_sharpness']:.3f}", flush=True)
        for radius, row in result["copies"].items():
            print(f"  copy blurred {radius:g} px: sharpness {row['sharpness']:.3f}, mean difference "
                  f"{row['mean_abs_difference']:.2f} grey levels", flush=True)
    read_deepapl(args.model_dir, args.radii, Path(args.cache_dir) if args.cache_dir else None)


if __name__ == "__main__":
    main()
