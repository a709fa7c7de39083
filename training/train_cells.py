"""Train the cell CNN on PBC, calibrate it, evaluate it and export it to ONNX.

    python -m training.train_cells [--epochs 30] [--out services/cell_classifier/model]
    python -m training.train_cells --from-network DIR/cell_cnn.keras   (finish an already fitted network)

Steps: fit (Keras progress shown; progressive resizing: the first epochs see images scaled down
to ``--small-size``, which is ~1.4x cheaper, the last ``--full-size-epochs`` the full 112 px),
re-estimate the batch-norm statistics on clean training images, fit the temperature and the
``unclassified`` threshold on the validation split, evaluate on the test split, export to ONNX
and check it against Keras, write the card.
``--from-network`` skips the fit and takes its record (epochs, history, time) from the
``model_card.json`` beside the network; the card's total time is then the sum of both runs.

Writes into ``--out``: ``cell_cnn.onnx`` (served), ``cell_cnn.keras`` (the network, for
the Keras/ONNX agreement test), ``model_card.json``, ``MODEL_CARD.md`` and
``confusion_matrix.png``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "services" / "cell_classifier" / "model"
MAX_UNCLASSIFIED_FRACTION = 0.005  # of validation cells; the requirement is at most 1 %


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=None, help="PBC folder (default ../shared/data/pbc)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--full-size-epochs", type=int, default=12,
                        help="the last N epochs train at full size; the ones before at --small-size")
    parser.add_argument("--zoom-range", type=float, nargs=2, default=(0.8, 1.25), metavar=("MIN", "MAX"),
                        help="scale jitter: zoom drawn log-uniformly from this range")
    parser.add_argument("--small-size", type=int, default=96, help="image side in the early epochs")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--per-class-limit", type=int, default=None, help="use only N images per class (smoke runs)")
    parser.add_argument("--cache-dir", default=str(REPO_ROOT / ".cache"), help="decoded-array cache; '' for none")
    parser.add_argument("--version", default="1.0.0")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--verbose", type=int, default=1, help="Keras progress: 1 bar, 2 line per epoch")
    parser.add_argument("--test-time-views", type=int, default=1,
                        help="average the logits over this many flipped views of each image (1 to 4), in "
                             "evaluation and in the exported model")
    parser.add_argument("--from-network", type=Path, default=None,
                        help="a fitted cell_cnn.keras with its model_card.json beside it: skip the fit")
    parser.add_argument("--time-budget-min", type=float, default=57.0,
                        help="stop after the epoch that would leave too little time to finish within this")
    return parser.parse_args(argv)


FIT_RECORD_KEYS = ("epochs", "epoch_image_sizes", "zoom_range", "batch_size", "peak_learning_rate", "seed",
                   "class_weight", "fit_seconds", "epoch_seconds", "epochs_run", "stopped_by_time_budget", "history")


def fit(args: argparse.Namespace, train, val, started: float):
    """Train a new network on ``train``; returns it and the record of its fit for the card."""
    import keras

    from shared.preprocessing import IMAGE_SIZE
    from shared.vocabulary import CELL_TYPES
    from training import cnn

    counts = np.bincount(train.labels, minlength=len(CELL_TYPES))
    class_weight = {i: float(len(train.labels) / (len(CELL_TYPES) * c)) for i, c in enumerate(counts)}
    network = cnn.build_network()
    training_model, augmentation = cnn.build_training_model(network, tuple(args.zoom_range))
    sizes = [args.small_size if epoch < args.epochs - args.full_size_epochs else IMAGE_SIZE
             for epoch in range(args.epochs)]
    steps_per_epoch = int(np.ceil(len(train.labels) / args.batch_size))
    total_steps = steps_per_epoch * args.epochs
    warmup = min(2 * steps_per_epoch, total_steps // 5)
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=args.learning_rate / 20, decay_steps=max(total_steps - warmup, 1),
        warmup_target=args.learning_rate, warmup_steps=warmup, alpha=0.01,
    )
    optimizer = keras.optimizers.AdamW(learning_rate=schedule, weight_decay=0.05)
    training_model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    print(f"network: {network.count_params():,} parameters, input {IMAGE_SIZE}x{IMAGE_SIZE} uint8", flush=True)
    fit_started = time.perf_counter()
    budget = cnn.EpochClock(started, args.time_budget_min * 60.0)
    history = training_model.fit(
        train.images, train.labels, batch_size=args.batch_size, epochs=args.epochs,
        validation_data=(val.images, val.labels), class_weight=class_weight, shuffle=True, verbose=args.verbose,
        callbacks=[budget, cnn.ProgressiveResize(augmentation, sizes)],
    )
    fit_seconds = time.perf_counter() - fit_started

    return network, {
        "epochs": args.epochs,
        "epoch_image_sizes": sizes,
        "zoom_range": list(args.zoom_range),
        "batch_size": args.batch_size,
        "peak_learning_rate": args.learning_rate,
        "seed": args.seed,
        "class_weight": {CELL_TYPES[i]: round(w, 4) for i, w in class_weight.items()},
        "fit_seconds": round(fit_seconds, 1),
        "epoch_seconds": [round(t, 1) for t in budget.epoch_seconds],
        "epochs_run": len(budget.epoch_seconds),
        "stopped_by_time_budget": budget.stopped,
        "history": {k: [round(float(v), 4) for v in vals] for k, vals in history.history.items()},
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    started = time.perf_counter()

    import keras
    import tensorflow as tf

    from shared.vocabulary import CELL_TYPES
    from training import cnn, export_onnx, model_card, pbc_dataset
    from training.metrics import (apply_unclassified_rule, classification_report, confidence_threshold,
                                  fit_temperature, softmax)

    keras.utils.set_random_seed(args.seed)
    data_dir = args.data_dir or pbc_dataset.data_dir()
    cache_dir = Path(args.cache_dir) if args.cache_dir else None
    print(f"loading images from {data_dir} ...", flush=True)
    train, val, test = pbc_dataset.split_dataset(data_dir, cache_dir, args.per_class_limit)
    print(f"train {len(train.labels)}, validation {len(val.labels)}, test {len(test.labels)} images", flush=True)

    if args.from_network:
        network = keras.models.load_model(args.from_network, compile=False)
        fit_record = json.loads((args.from_network.parent / model_card.CARD_JSON).read_text())["training"]
        fit_record = {k: fit_record[k] for k in FIT_RECORD_KEYS if k in fit_record} | {
            "fitted_in_earlier_run": {"network": args.from_network.name, "total_seconds": fit_record["total_seconds"]}}
        print(f"fit skipped: network from {args.from_network}", flush=True)
    else:
        network, fit_record = fit(args, train, val, started)
    earlier_seconds = fit_record.get("fitted_in_earlier_run", {}).get("total_seconds", 0.0)
    names = list(CELL_TYPES)

    recalibrated = cnn.recalibrate_batch_norm(network, train.images)
    print(f"batch-norm statistics re-estimated on {recalibrated} clean training images", flush=True)

    def logits_of(images: np.ndarray) -> np.ndarray:
        return cnn.view_averaged_logits(network, images, args.test_time_views)

    val_logits, test_logits = logits_of(val.images), logits_of(test.images)
    temperature = fit_temperature(val_logits, val.labels)
    val_probabilities = softmax(val_logits, temperature)
    threshold = confidence_threshold(val_probabilities.max(axis=1), MAX_UNCLASSIFIED_FRACTION)

    def predict_with_rule(probabilities: np.ndarray) -> np.ndarray:
        return apply_unclassified_rule(probabilities, threshold, len(CELL_TYPES))

    test_probabilities = softmax(test_logits, temperature)
    metrics = {
        "validation": classification_report(val.labels, predict_with_rule(val_probabilities), names),
        "test": classification_report(test.labels, predict_with_rule(test_probabilities), names),
        "test_without_unclassified_rule": classification_report(test.labels, test_probabilities.argmax(axis=1), names),
    }

    args.out.mkdir(parents=True, exist_ok=True)
    onnx_path = args.out / model_card.ONNX_FILE
    serving = cnn.build_serving_model(network, temperature, args.test_time_views)
    output_name = export_onnx.export(serving, onnx_path)
    agreement = export_onnx.max_abs_difference(serving, onnx_path, val.images[:256])
    network.save(args.out / model_card.KERAS_FILE)
    seconds = time.perf_counter() - started + earlier_seconds

    card = model_card.build_card(
        version=args.version,
        onnx_path=onnx_path,
        output_name=output_name,
        temperature=temperature,
        threshold=threshold,
        max_unclassified_fraction=MAX_UNCLASSIFIED_FRACTION,
        test_time_views=cnn.view_names(args.test_time_views),
        metrics=metrics,
        training={
            **fit_record,
            "split_seed": pbc_dataset.SPLIT_SEED,
            "n_train": int(len(train.labels)),
            "n_validation": int(len(val.labels)),
            "n_test": int(len(test.labels)),
            "per_class_limit": args.per_class_limit,
            "parameters": int(network.count_params()),
            "batch_norm_recalibration_images": recalibrated,
            "total_seconds": round(seconds, 1),
            "machine": f"{platform.machine()}, {__import__('os').cpu_count()} CPU cores, tensorflow {tf.__version__}",
            "onnx_keras_max_abs_difference": agreement,
        },
    )
    model_card.write(card, args.out)
    summary = {k: {m: metrics[k][m] for m in ("accuracy", "macro_f1", "unclassified_fraction")} for k in metrics}
    print(json.dumps({"total_seconds": round(seconds, 1), "temperature": temperature, "threshold": threshold,
                      "onnx_keras_max_abs_difference": agreement, **summary}, indent=2), flush=True)
    return card


if __name__ == "__main__":
    main()
