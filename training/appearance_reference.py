"""The cell model card's appearance section: the per-source reference of ``shared.appearance`` features
over the training split and the thresholds from the validation split's distances.

``make train-cells`` fits it with the network (``fit_appearance``). When the features change (e.g.
``sharpness`` was added to the colour and density statistics) the committed model's section is refitted on
its own split, with no change to the network, its files or its other metrics::

    python -m training.appearance_reference   # rewrites model_card.json and MODEL_CARD.md

The service refuses a card whose reference was fitted on other features (``feature_names``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from shared.appearance import FEATURE_NAMES, AppearanceReference, appearance_features

IMAGE_QUANTILE = 0.99  # an image beyond it is out of domain
PATIENT_QUANTILE = 0.90  # a patient whose median cell is beyond it gets the warning


def features_of(images: np.ndarray) -> np.ndarray:
    return np.stack([appearance_features(image) for image in images])


def fit_appearance(train_by_source: dict[str, np.ndarray], validation: np.ndarray) -> dict:
    """Preprocessed training images per source and the validation images -> the card's ``appearance``."""
    reference = AppearanceReference.fit({name: features_of(images) for name, images in train_by_source.items()})
    distances = reference.distances(features_of(validation))
    quantiles = {q: float(np.quantile(distances, q)) for q in (0.5, PATIENT_QUANTILE, IMAGE_QUANTILE)}
    return {
        "features": "shared.appearance.FEATURE_NAMES over the preprocessed input",
        "feature_names": list(FEATURE_NAMES),
        "reference": reference.to_dict(),
        "image_threshold": quantiles[IMAGE_QUANTILE],
        "patient_threshold": quantiles[PATIENT_QUANTILE],
        "validation_distance_quantiles": {f"{q:g}": value for q, value in quantiles.items()},
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from services.cell_classifier.settings import DEFAULT_MODEL_DIR

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--data-dir", type=Path, default=None, help="PBC folder (default $PBC_DIR)")
    parser.add_argument("--deepapl-dir", type=Path, default=None, help="DeepAPL folder (default $DEEPAPL_DIR)")
    parser.add_argument("--cache-dir", default=str(Path(__file__).resolve().parents[1] / ".cache"))
    parser.add_argument("--per-class-limit", type=int, default=None, help="use only N images per class (smoke runs)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    from training import deepapl_dataset, model_card, pbc_dataset

    args = parse_args(argv)
    card_path = args.model_dir / model_card.CARD_JSON
    card = json.loads(card_path.read_text())
    cache = Path(args.cache_dir) if args.cache_dir else None
    limit = args.per_class_limit
    loaders = {"pbc": lambda: pbc_dataset.split_dataset(args.data_dir or pbc_dataset.data_dir(), cache, limit),
               "deepapl": lambda: deepapl_dataset.split_dataset(args.deepapl_dir or deepapl_dataset.data_dir(), cache,
                                                                limit)}
    sources = list((card.get("appearance") or {}).get("reference") or ["pbc"])
    unknown = set(sources) - set(loaders)
    if unknown:
        raise SystemExit(f"cannot refit sources {sorted(unknown)} here: run make train-cells")
    splits = {name: loaders[name]() for name in sources}
    card["appearance"] = fit_appearance({name: s[0].images for name, s in splits.items()},
                                        np.concatenate([s[1].images for s in splits.values()]))
    card["appearance"]["refitted"] = ("python -m training.appearance_reference, after the network was trained "
                                      "(its files and other metrics unchanged)")
    model_card.write_card_text(card, args.model_dir)
    summary = {k: card["appearance"][k] for k in ("image_threshold", "patient_threshold")}
    print(json.dumps({"feature_names": list(FEATURE_NAMES), **summary}), flush=True)
    return card


if __name__ == "__main__":
    main()
