"""Train the cell CNN on PBC and the DeepAPL discovery cells, calibrate, evaluate per source, export to ONNX.

    python -m training.train_cells [--epochs 22] [--out services/cell_classifier/model]
    python -m training.train_cells --init-network services/cell_classifier/model/cell_cnn.keras
    python -m training.train_cells --from-network DIR/cell_cnn.keras   (finish an already fitted network)

Data: PBC (normal cells, Barcelona; stratified split by folder, the same split as the 1.x models)
and the verified single-class cells of the DeepAPL discovery cohort (leukaemic blood, Johns Hopkins;
split by patient: no patient in two splits). Labels follow vocabulary 2.0 (``shared.vocabulary``).

Steps: fit (progressive resizing: the first epochs see images scaled down to ``--small-size``, the
last ``--full-size-epochs`` the full 112 px; square-root class weights; wide scale jitter and stain
jitter so another scanner's magnification and stain look familiar), save the fitted network at once
(``fitted/`` under ``--out``, so a crash later loses nothing: ``--from-network`` finishes it),
re-estimate the batch-norm statistics on clean training images, fit the temperature and the
``unclassified`` threshold on the validation split, evaluate on each source's test split, fit the
appearance reference (``shared.appearance``), export to ONNX and check it against Keras, write the card.
``--init-network`` starts the fit from an earlier network (its card beside it gives its class order).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "services" / "cell_classifier" / "model"
FITTED_DIR = "fitted"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=None, help="PBC folder (default $PBC_DIR or ../shared/data/pbc)")
    parser.add_argument("--deepapl-dir", type=Path, default=None,
                        help="DeepAPL discovery folder (default $DEEPAPL_DIR or ../shared/data/deepapl_discovery)")
    parser.add_argument("--no-deepapl", action="store_true", help="train on PBC alone")
    parser.add_argument("--extra-labelled", type=Path, default=None, metavar="DIR",
                        help="extra labelled cells as DIR/<label>/*.jpg, e.g. a lab's reviewed cells from "
                             "aml-export-reviewed DIR (a source of its own: split, evaluated, appearance reference)")
    parser.add_argument("--exclude-cells", type=Path, default=None, metavar="FILE",
                        help="leave out the training cells listed in FILE, one path below the data folder per line "
                             "(e.g. cells whose label is in doubt; training.excluded_cells)")
    parser.add_argument("--second-reading", type=Path, default=None, metavar="CSV",
                        help="a worklist of training.second_reading with its second_reading column filled: re-read "
                             "training cells take the reader's label, cells read 'exclude' are left out")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--init-network", type=Path, default=None,
                        help="start the fit from this cell_cnn.keras (its model_card.json beside it)")
    parser.add_argument("--deepen", type=int, default=0, metavar="N",
                        help="with --init-network: insert N residual blocks after each of its blocks, initialised "
                             "to the identity (the fit starts from the same function with more capacity; "
                             "about twice the compute per epoch and per image for N=1)")
    parser.add_argument("--epochs", type=int, default=18)
    parser.add_argument("--full-size-epochs", type=int, default=9,
                        help="the last N epochs train at full size; the ones before at --small-size")
    parser.add_argument("--zoom-range", type=float, nargs=2, default=(0.8, 1.25), metavar=("MIN", "MAX"),
                        help="scale jitter at the home magnification: zoom drawn log-uniformly from this range")
    parser.add_argument("--wide-zoom-range", type=float, nargs=2, default=(0.7, 2.2), metavar=("MIN", "MAX"),
                        help="scale jitter for other scanners/magnifications (tighter crops look larger)")
    parser.add_argument("--wide-zoom-probability", type=float, default=0.5,
                        help="share of training images whose zoom comes from --wide-zoom-range")
    parser.add_argument("--stain-probability", type=float, default=0.8, help="share of images given stain (HED) jitter")
    parser.add_argument("--stain-scale", type=float, default=0.3, help="stain concentrations scaled by 1 +- this")
    parser.add_argument("--colour-strength", type=float, default=1.5,
                        help="multiplies the gain/brightness/contrast/saturation/hue jitter ranges")
    parser.add_argument("--blur-probability", type=float, default=0.25, help="share of images given blur")
    parser.add_argument("--blur-sigma-range", type=float, nargs=2, default=None, metavar=("MIN", "MAX"),
                        help="a true Gaussian blur, sigma (px at the network input) drawn across this range, "
                             "instead of the default blend with a 1.2 px blur (training.cnn.CellAugmentation)")
    parser.add_argument("--source-scale", type=int, default=1, choices=(1, 2),
                        help="2: the training images are decoded at twice the input side and the augmentation's "
                             "geometry samples them before an antialiased resize, so an enlarged cell stays as sharp "
                             "as its source (1: enlarged from the input-size array, soft); about 3 GB more memory")
    parser.add_argument("--sharp-fraction", type=float, default=1.0,
                        help="with --source-scale 2, the share of training images enlarged sharp from the larger "
                             "decode; the others are resized to the input side first and enlarged from there (soft)")
    parser.add_argument("--small-size", type=int, default=96, help="image side in the early epochs")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--deepapl-weight", type=float, default=1.0,
                        help="loss weight of a DeepAPL training cell relative to a PBC cell of the same class "
                             "(on top of the class weights; the average weight per training image stays 1)")
    parser.add_argument("--class-weights-per-source", action="store_true",
                        help="square-root class weights computed within each source (a DeepAPL class is weighted by "
                             "DeepAPL's counts, not outweighed by PBC's many cells of that class), each capped at "
                             "--max-class-weight; default: one set of weights over both sources, as for 2.2.0 "
                             "and 2.3.0")
    parser.add_argument("--max-class-weight", type=float, default=3.0,
                        help="cap on a per-source class weight (relative to the source's average image)")
    parser.add_argument("--label-smoothing", type=float, default=0.0,
                        help="cross-entropy against targets that keep 1 - e on the labelled class and spread e "
                             "over all classes (e.g. 0.1; for noisy expert labels); 0: off, as for 2.2.0 and 2.3.0")
    parser.add_argument("--distil-from", type=Path, default=None, metavar="KERAS",
                        help="self-distillation: each training target becomes (1 - w) x its label + w x this "
                             "network's calibrated probabilities on the clean image (training.distillation)")
    parser.add_argument("--distil-weight", type=float, default=0.5, help="w for --distil-from")
    parser.add_argument("--distil-views", type=int, default=4, choices=range(1, 9), metavar="1-8",
                        help="the teacher's probabilities averaged over this many flips")
    parser.add_argument("--mixup-alpha", type=float, default=0.0,
                        help="mixup: blend a share of each batch's augmented images and their targets with others "
                             "of the batch, lam ~ Beta(a, a) folded to >= 0.5 (training.mixup; e.g. 0.4); 0: off")
    parser.add_argument("--mixup-probability", type=float, default=0.5, help="share of images mixed (--mixup-alpha)")
    parser.add_argument("--ema-momentum", type=float, default=0.0,
                        help="exponential moving average of the weights (e.g. 0.998; the fitted network is the "
                             "average); 0: off, as for the committed 2.0.0. A fine-tune of 2.0.0 with 0.998 (6 "
                             "epochs in the time budget) did not beat 2.0.0 on validation (README)")
    parser.add_argument("--max-unclassified-fraction", type=float, default=0.02,
                        help="the threshold leaves at most this share of validation cells unclassified")
    parser.add_argument("--max-normal-called-blast", type=float, default=0.03,
                        help="blasts need a probability high enough that at most this share of the validation "
                             "split's normal cells (the 8 PBC types) are labelled blast; below it: unclassified")
    parser.add_argument("--deepapl-validation-in-training", action="store_true",
                        help="fit on the DeepAPL validation patients too (the recipe already chosen on them; the "
                             "test patients stay out); needs --calibration-from, as nothing held out is left to "
                             "fit the temperature and thresholds on")
    parser.add_argument("--calibration-from", type=Path, default=None, metavar="CARD",
                        help="take the temperature, unclassified threshold and blast minimum from this "
                             "model_card.json instead of fitting them on the validation split")
    parser.add_argument("--per-class-limit", type=int, default=None, help="use only N images per class (smoke runs)")
    parser.add_argument("--cache-dir", default=str(REPO_ROOT / ".cache"), help="decoded-array cache; '' for none")
    parser.add_argument("--version", default="2.3.0")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--verbose", type=int, default=1, help="Keras progress: 1 bar, 2 line per epoch")
    parser.add_argument("--test-time-views", type=int, default=1,
                        help="average the logits over this many flipped views of each image (1 to 4), in "
                             "evaluation and in the exported model")
    parser.add_argument("--from-network", type=Path, default=None,
                        help="a fitted cell_cnn.keras with its fit_record.json or model_card.json beside it: skip the fit")
    parser.add_argument("--soup-with", type=Path, nargs="+", default=None, metavar="KERAS",
                        help="after the fit, average the network's weights with these networks' (a uniform model "
                             "soup; each fine-tuned from a common network, with its model_card.json beside it)")
    parser.add_argument("--time-budget-min", type=float, default=88.0,
                        help="stop after the epoch that would leave too little time to finish within this")
    args = parser.parse_args(argv)
    if not 0.0 <= args.sharp_fraction <= 1.0:
        parser.error("--sharp-fraction is a share of the images, between 0 and 1")
    if args.distil_from is not None and not 0.0 < args.distil_weight <= 1.0:
        parser.error("--distil-weight is a share of the target, in (0, 1]")
    if args.mixup_alpha < 0 or not 0.0 < args.mixup_probability <= 1.0:
        parser.error("--mixup-alpha must be >= 0 (0: off) and --mixup-probability a share in (0, 1]")
    if args.sharp_fraction < 1.0 and args.source_scale == 1:
        parser.error("--sharp-fraction needs --source-scale 2 (with 1 every enlarged cell is soft)")
    return args


FIT_RECORD_KEYS = ("fit_preprocessing_version", "epochs", "epoch_image_sizes", "augmentation", "zoom_range",
                   "batch_size", "peak_learning_rate", "label_smoothing", "seed", "class_weight",
                   "class_weight_scope", "source_weight", "excluded_training_cells", "second_reading",
                   "initial_network", "distillation", "mixup", "fit_seconds", "epoch_seconds", "epochs_run",
                   "stopped_by_time_budget", "history")


def square_root_class_weights(labels: np.ndarray, n_classes: int) -> dict[int, float]:
    """w_c proportional to 1/sqrt(n_c), scaled so that the average weight per training image is 1."""
    counts = np.bincount(labels, minlength=n_classes).astype(float)
    raw = np.where(counts > 0, 1.0 / np.sqrt(np.maximum(counts, 1.0)), 0.0)
    raw *= len(labels) / float((raw * counts).sum())
    return {i: float(w) for i, w in enumerate(raw)}


def saved_network(path: Path):
    """A saved Keras network, its model card (beside it) and a record of it (file, name, version, sha256)."""
    import keras

    from shared.hashing import file_sha256
    from training import model_card

    card = json.loads((path.parent / model_card.CARD_JSON).read_text())
    record = {"file": str(path.resolve().relative_to(REPO_ROOT) if path.resolve().is_relative_to(REPO_ROOT) else path),
              "name": card.get("name"), "version": card.get("version"), "sha256": file_sha256(path)}
    return keras.models.load_model(path, compile=False), card, record


def initial_network(path: Path):
    """The network to start from and a record of it (name, version, sha256, classes) for the card."""
    from training import cnn

    earlier, card, record = saved_network(path)
    return cnn.network_from(earlier, card["class_order"]), record | {"class_order": card["class_order"]}


def saved_vocabulary_network(path: Path):
    """``saved_network``, refused (SystemExit) unless its outputs are the vocabulary's classes in order."""
    from shared.vocabulary import CELL_TYPES

    network, card, record = saved_network(path)
    if card["class_order"] != list(CELL_TYPES):
        raise SystemExit(f"{path}: its classes {card['class_order']} are not the vocabulary's")
    return network, card, record


def soup(network, paths: list[Path]):
    """``network`` averaged weight by weight with the networks in ``paths`` (``cnn.average_weights``),
    and a record of the ingredients for the card."""
    from training import cnn

    ingredients, records = [network], []
    for path in paths:
        other, _, record = saved_vocabulary_network(path)
        ingredients.append(other)
        records.append(record)
    return cnn.average_weights(ingredients), {
        "kind": "uniform model soup: every weight the mean of the fitted network's and these networks'",
        "with": records}


def square_root_class_weights_by_source(labels: np.ndarray, sources: np.ndarray, n_classes: int,
                                        max_weight: float) -> dict[str, dict[int, float]]:
    """Each source's own square-root class weights (over its images alone), each capped at ``max_weight``."""
    return {str(source): {c: min(w, max_weight) for c, w in
                          square_root_class_weights(labels[sources == source], n_classes).items()}
            for source in np.unique(sources)}


def sample_weights(labels: np.ndarray, sources: np.ndarray, class_weight_by_source: dict[str, dict[int, float]],
                   source_weight: dict[str, float]) -> np.ndarray:
    """Per-image loss weight: its source's weight of its class times its source's weight, scaled to average 1."""
    weights = np.array([class_weight_by_source[str(s)][int(c)] * source_weight.get(str(s), 1.0)
                        for c, s in zip(labels, sources)])
    return weights * (len(weights) / weights.sum())


def fit_loss(label_smoothing: float, soft_targets: bool = False):
    """Cross-entropy on logits; with smoothing or soft (distilled or mixed) targets, against rows of probabilities
    (Keras's sparse loss takes neither)."""
    import keras

    if label_smoothing <= 0.0 and not soft_targets:
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    return keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=label_smoothing)


def fit_targets(labels: np.ndarray, n_classes: int, label_smoothing: float, one_hot: bool = False) -> np.ndarray:
    """What ``fit_loss`` compares with: the class indices, or one-hot rows when the labels are smoothed or the
    loss takes rows of probabilities (``one_hot``: its other targets are distilled, or mixup blends them)."""
    return labels if label_smoothing <= 0.0 and not one_hot else np.eye(n_classes, dtype=np.float32)[labels]


def fit(args: argparse.Namespace, train, val, started: float, train_sources: np.ndarray):
    """Train the network on ``train`` (``train_sources``: each image's source name); returns it and the record
    of its fit for the card."""
    import keras

    from shared.preprocessing import IMAGE_SIZE, PREPROCESSING_VERSION
    from shared.vocabulary import CELL_TYPES
    from training import cnn

    class_weight = square_root_class_weights(train.labels, len(CELL_TYPES))
    if args.init_network:
        network, init_record = initial_network(args.init_network)
        print(f"starting from {init_record['file']} ({init_record['name']} {init_record['version']})", flush=True)
    else:
        network, init_record = cnn.build_network(), None
    if args.deepen:
        if init_record is None:
            raise SystemExit("--deepen adds blocks to a fitted network: give --init-network")
        before = network.count_params()
        network = cnn.deepen(network, args.deepen)
        init_record = init_record | {"deepened": {"extra_blocks_after_each_block": args.deepen,
                                                  "parameters_before": int(before),
                                                  "parameters_after": int(network.count_params())}}
        print(f"deepened: {before:,} -> {network.count_params():,} parameters (new blocks start as the identity)",
              flush=True)
    augmentation_options = {
        "wide_zoom_range": tuple(args.wide_zoom_range), "wide_zoom_probability": args.wide_zoom_probability,
        "stain_probability": args.stain_probability, "stain_scale": args.stain_scale,
        "colour_strength": args.colour_strength, "blur_probability": args.blur_probability,
        "blur_sigma_range": tuple(args.blur_sigma_range) if args.blur_sigma_range else None,
        "source_scale": args.source_scale, "sharp_fraction": args.sharp_fraction}
    if args.mixup_alpha > 0:  # its own training step around the same augmentation and network
        from training.mixup import MixupTraining

        augmentation = cnn.CellAugmentation(tuple(args.zoom_range), **augmentation_options)
        training_model = MixupTraining(augmentation, network, args.mixup_alpha, args.mixup_probability, args.seed)
    else:
        training_model, augmentation = cnn.build_training_model(network, tuple(args.zoom_range),
                                                                **augmentation_options)
    sizes = [args.small_size if epoch < args.epochs - args.full_size_epochs else IMAGE_SIZE
             for epoch in range(args.epochs)]
    steps_per_epoch = int(np.ceil(len(train.labels) / args.batch_size))
    total_steps = steps_per_epoch * args.epochs
    warmup = min(steps_per_epoch, total_steps // 5)
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=args.learning_rate / 20, decay_steps=max(total_steps - warmup, 1),
        warmup_target=args.learning_rate, warmup_steps=warmup, alpha=0.01,
    )
    optimizer = keras.optimizers.AdamW(learning_rate=schedule, weight_decay=0.05, use_ema=args.ema_momentum > 0,
                                       ema_momentum=args.ema_momentum or 0.99)
    soft_targets = args.distil_from is not None or args.mixup_alpha > 0
    val_targets = fit_targets(val.labels, len(CELL_TYPES), args.label_smoothing, one_hot=soft_targets)
    if args.distil_from is not None:
        train_targets, distillation = distil_targets(args, train)
    else:
        train_targets = fit_targets(train.labels, len(CELL_TYPES), args.label_smoothing, one_hot=soft_targets)
        distillation = None
    if args.source_scale > 1:
        train = training_images_at(train, IMAGE_SIZE * args.source_scale, args)
    training_model.compile(optimizer=optimizer, loss=fit_loss(args.label_smoothing, soft_targets),
                           metrics=["accuracy"])
    print(f"network: {network.count_params():,} parameters, input {IMAGE_SIZE}x{IMAGE_SIZE} uint8", flush=True)
    fit_started = time.perf_counter()
    budget = cnn.EpochClock(started, args.time_budget_min * 60.0)
    source_weight = {"deepapl": args.deepapl_weight}
    class_weight_by_source = (
        square_root_class_weights_by_source(train.labels, train_sources, len(CELL_TYPES), args.max_class_weight)
        if args.class_weights_per_source else {str(s): class_weight for s in np.unique(train_sources)})
    weighting = {"class_weight": class_weight}
    if args.class_weights_per_source or args.deepapl_weight != 1.0:
        weighting = {"sample_weight": sample_weights(train.labels, train_sources, class_weight_by_source,
                                                     source_weight)}
    history = training_model.fit(
        train.images, train_targets, batch_size=args.batch_size, epochs=args.epochs,
        validation_data=(val.images, val_targets), shuffle=True, verbose=args.verbose, **weighting,
        callbacks=[budget, cnn.ProgressiveResize(augmentation, sizes)],
    )
    fit_seconds = time.perf_counter() - fit_started

    return network, {
        "fit_preprocessing_version": PREPROCESSING_VERSION,
        "epochs": args.epochs,
        "epoch_image_sizes": sizes,
        "augmentation": {"zoom_range": list(args.zoom_range), **{k: list(v) if isinstance(v, tuple) else v
                                                                  for k, v in augmentation_options.items()}},
        "zoom_range": list(args.zoom_range),
        "batch_size": args.batch_size,
        "peak_learning_rate": args.learning_rate,
        "label_smoothing": args.label_smoothing or None,
        "weight_averaging": ({"kind": "exponential moving average of the weights (AdamW use_ema), written into "
                                      "the network when fitting ends", "momentum": args.ema_momentum}
                             if args.ema_momentum > 0 else None),
        "seed": args.seed,
        "class_weight": ({source: {CELL_TYPES[i]: round(w, 4) for i, w in weights.items()}
                          for source, weights in class_weight_by_source.items()} if args.class_weights_per_source
                         else {CELL_TYPES[i]: round(w, 4) for i, w in class_weight.items()}),
        "class_weight_scope": (f"per source, capped at {args.max_class_weight:g}" if args.class_weights_per_source
                               else "pooled over all sources"),
        "source_weight": source_weight if "sample_weight" in weighting else None,
        "initial_network": init_record,
        "distillation": distillation,
        "mixup": ({"alpha": args.mixup_alpha, "share_of_images": args.mixup_probability,
                   "kind": "augmented images, targets and sample weights blended with a permutation of the batch, "
                           "lam ~ Beta(alpha, alpha) folded to >= 0.5"} if args.mixup_alpha > 0 else None),
        "fit_seconds": round(fit_seconds, 1),
        "epoch_seconds": [round(t, 1) for t in budget.epoch_seconds],
        "epochs_run": len(budget.epoch_seconds),
        "stopped_by_time_budget": budget.stopped,
        "history": {k: [round(float(v), 4) for v in vals] for k, vals in history.history.items()},
    }


def distil_targets(args: argparse.Namespace, train):
    """Training targets mixed with ``--distil-from``'s probabilities on the clean 112 px images, and the record
    of the teacher for the card."""
    from training import distillation

    teacher, card, record = saved_vocabulary_network(args.distil_from)
    temperature = float(card["unclassified_rule"]["temperature"])
    print(f"teacher {record['file']}: probabilities on {len(train)} training images over {args.distil_views} "
          f"views ...", flush=True)
    soft = distillation.teacher_probabilities(teacher, temperature, train.images, args.distil_views)
    seen = distillation.agreement(train.labels, soft)
    print(f"teacher agrees with {seen['top_class_is_label']:.3f} of the training labels "
          f"(mean probability of the label {seen['mean_probability_of_label']:.3f})", flush=True)
    targets = distillation.distilled_targets(train.labels, soft, args.distil_weight)
    return targets, record | {
        "weight": args.distil_weight, "views": args.distil_views, "temperature": temperature,
        "teacher_on_training_labels": seen}


def training_images_at(train, size: int, args: argparse.Namespace):
    """``train`` (a concatenated split) with its images decoded again at ``size`` x ``size`` by the same
    preprocessing, for ``--source-scale`` (cached like the input-size arrays)."""
    from training import pbc_dataset

    cache_dir = Path(args.cache_dir) if args.cache_dir else None
    print(f"decoding the {len(train)} training images at {size}x{size} for --source-scale ...", flush=True)
    images = pbc_dataset.load_arrays([Path(p) for p in train.paths], cache_dir, name="train", size=size)
    return pbc_dataset.Split(images, train.labels, train.paths, train.source)


def load_data(args: argparse.Namespace):
    """Train, validation and test splits per source (``{"pbc": (train, val, test), "deepapl": (...)}``) and the
    records of what was changed in the training cells: ``{"excluded_training_cells": ..., "second_reading": ...}``
    (each None without its option, ``--exclude-cells`` and ``--second-reading``)."""
    from training import deepapl_dataset, pbc_dataset

    cache_dir = Path(args.cache_dir) if args.cache_dir else None
    pbc_dir = args.data_dir or pbc_dataset.data_dir()
    print(f"loading PBC images from {pbc_dir} ...", flush=True)
    sources = {"pbc": pbc_dataset.split_dataset(pbc_dir, cache_dir, args.per_class_limit)}
    if not args.no_deepapl:
        deepapl_dir = args.deepapl_dir or deepapl_dataset.data_dir()
        print(f"loading DeepAPL discovery cells from {deepapl_dir} ...", flush=True)
        sources["deepapl"] = deepapl_dataset.split_dataset(deepapl_dir, cache_dir, args.per_class_limit)
    if args.extra_labelled:
        from training import reviewed_dataset

        print(f"loading extra labelled cells from {args.extra_labelled} ...", flush=True)
        sources["reviewed"] = reviewed_dataset.split_dataset(args.extra_labelled, cache_dir, args.per_class_limit)
        n_train = len(sources["reviewed"][0].labels)
        if n_train < reviewed_dataset.MIN_TRAINING_CELLS:
            # checked before the fit: the appearance reference is fitted on each source's training cells after it,
            # and fewer than this gave an error at the end of the run (0 cells) or NaN thresholds (1 cell)
            raise SystemExit(f"--extra-labelled {args.extra_labelled}: {n_train} cells fall in its training split "
                             f"(whole reports go to one split), fewer than {reviewed_dataset.MIN_TRAINING_CELLS}: "
                             "export more reviewed reports first")
    edits = {"excluded_training_cells": None, "second_reading": None}
    if args.exclude_cells:
        from training import excluded_cells

        try:
            sources, edits["excluded_training_cells"] = excluded_cells.exclude(sources, args.exclude_cells)
        except ValueError as error:
            raise SystemExit(str(error)) from None
        excluded = edits["excluded_training_cells"]
        print(f"left out {excluded['cells']} listed training cells {excluded['by_source']}", flush=True)
    if args.second_reading:
        from training import second_reading

        try:
            sources, edits["second_reading"] = second_reading.apply(sources, args.second_reading)
        except (ValueError, OSError) as error:
            raise SystemExit(str(error)) from None
        print(second_reading.describe(edits["second_reading"]), flush=True)
    for name, (train, val, test) in sources.items():
        print(f"{name}: train {len(train)}, validation {len(val)}, test {len(test)} images", flush=True)
    return sources, edits


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    started = time.perf_counter()

    import keras
    import tensorflow as tf

    from shared.vocabulary import CELL_TYPES
    from training import cnn, deepapl_dataset, export_onnx, model_card, pbc_dataset
    from training.appearance_reference import fit_appearance
    from training.metrics import (NORMAL_TYPES, apply_unclassified_rule, card_class_minimum,
                                  class_minimum_for_false_positives, classification_report, confidence_threshold,
                                  fit_temperature, leukaemia_summary, patient_bootstrap_intervals, softmax)

    keras.utils.set_random_seed(args.seed)
    sources, training_cell_edits = load_data(args)
    train = pbc_dataset.concatenate([s[0] for s in sources.values()], "all")
    val = pbc_dataset.concatenate([s[1] for s in sources.values()], "all")
    train_sources = np.concatenate([[name] * len(s[0]) for name, s in sources.items()])
    if args.deepapl_validation_in_training:
        if "deepapl" not in sources or args.calibration_from is None:
            raise SystemExit("--deepapl-validation-in-training needs the DeepAPL cells and --calibration-from CARD")
        train = pbc_dataset.concatenate([train, sources["deepapl"][1]], "all")
        train_sources = np.concatenate([train_sources, ["deepapl"] * len(sources["deepapl"][1])])
        print(f"DeepAPL validation patients added to training: {len(train)} training images", flush=True)

    if args.from_network:
        network = keras.models.load_model(args.from_network, compile=False)
        beside = args.from_network.parent
        record_file = beside / "fit_record.json"
        fit_record = json.loads(record_file.read_text()) if record_file.exists() else \
            json.loads((beside / model_card.CARD_JSON).read_text())["training"]
        fit_record = {k: fit_record[k] for k in FIT_RECORD_KEYS if k in fit_record} | {
            "fitted_in_earlier_run": {"network": args.from_network.name,
                                      "total_seconds": fit_record.get("total_seconds", fit_record.get("fit_seconds"))}}
        print(f"fit skipped: network from {args.from_network}", flush=True)
        fit_record |= {key: record for key, record in training_cell_edits.items() if record is not None}
    else:
        network, fit_record = fit(args, train, val, started, train_sources)
        fit_record |= training_cell_edits
        fitted = args.out / FITTED_DIR
        fitted.mkdir(parents=True, exist_ok=True)
        network.save(fitted / model_card.KERAS_FILE)
        fit_record["total_seconds"] = round(time.perf_counter() - started, 1)
        (fitted / "fit_record.json").write_text(json.dumps(fit_record, indent=2) + "\n")
        print(f"fitted network saved in {fitted}", flush=True)
    if args.soup_with:
        network, fit_record["soup"] = soup(network, args.soup_with)
        print(f"weights averaged with {', '.join(str(p) for p in args.soup_with)}", flush=True)
    earlier_seconds = fit_record.get("fitted_in_earlier_run", {}).get("total_seconds", 0.0)
    names = list(CELL_TYPES)

    recalibrated = cnn.recalibrate_batch_norm(network, train.images)
    print(f"batch-norm statistics re-estimated on {recalibrated} clean training images", flush=True)

    def logits_of(images: np.ndarray) -> np.ndarray:
        return cnn.view_averaged_logits(network, images, args.test_time_views)

    val_logits = logits_of(val.images)
    blast = CELL_TYPES.index("blast")
    calibration_taken_from = None
    if args.calibration_from:
        calibration = json.loads(args.calibration_from.read_text())
        temperature = float(calibration["unclassified_rule"]["temperature"])
        threshold = float(calibration["unclassified_rule"]["threshold"])
        class_minimum = card_class_minimum(calibration)
        calibration_taken_from = f"{calibration['name']} {calibration['version']}"
        print(f"temperature and thresholds taken from {args.calibration_from} ({calibration_taken_from})", flush=True)
        val_probabilities = softmax(val_logits, temperature)
    else:
        temperature = fit_temperature(val_logits, val.labels)
        val_probabilities = softmax(val_logits, temperature)
        threshold = confidence_threshold(val_probabilities.max(axis=1), args.max_unclassified_fraction)
        class_minimum = {blast: class_minimum_for_false_positives(
            val_probabilities, val.labels, threshold, blast, np.array([CELL_TYPES.index(n) for n in NORMAL_TYPES]),
            args.max_normal_called_blast)}
    print(f"unclassified threshold {threshold:.4f}; blast minimum {class_minimum[blast]:.4f}", flush=True)

    def predict_with_rule(probabilities: np.ndarray) -> np.ndarray:
        return apply_unclassified_rule(probabilities, threshold, len(CELL_TYPES), class_minimum)

    metrics = {"validation": classification_report(val.labels, predict_with_rule(val_probabilities), names)}
    if args.deepapl_validation_in_training:
        metrics["validation"]["note"] = "the DeepAPL validation patients were trained on: not a held-out estimate"
    test_probabilities = {}
    for name, (_, _, test) in sources.items():
        if len(test):
            test_probabilities[name] = softmax(logits_of(test.images), temperature)
            predicted = predict_with_rule(test_probabilities[name])
            metrics[f"test_{name}"] = classification_report(test.labels, predicted, names) | {
                "leukaemia": leukaemia_summary(test.labels, predicted)}
            if name == "deepapl":
                metrics[f"test_{name}"]["leukaemia"]["patient_bootstrap_95"] = patient_bootstrap_intervals(
                    test.labels, predicted, np.array([deepapl_dataset.patient_of(p) for p in test.paths]))
            metrics[f"test_{name}_without_unclassified_rule"] = classification_report(
                test.labels, test_probabilities[name].argmax(axis=1), names)
    held_out = []
    if "deepapl" in sources:
        held_out = deepapl_dataset.held_out_cells(args.deepapl_dir or deepapl_dataset.data_dir())

    appearance = fit_appearance({name: split[0].images for name, split in sources.items()}, val.images)

    args.out.mkdir(parents=True, exist_ok=True)
    onnx_path = args.out / model_card.ONNX_FILE
    serving = cnn.build_serving_model(network, temperature, args.test_time_views)
    output_name = export_onnx.export(serving, onnx_path)
    agreement = export_onnx.max_abs_difference(serving, onnx_path, val.images[:256])
    network.save(args.out / model_card.KERAS_FILE)
    if held_out:
        from training.out_of_depth import held_out_class_report
        metrics["held_out_classes"] = held_out_class_report(onnx_path, held_out, threshold, class_minimum)
    seconds = time.perf_counter() - started + earlier_seconds

    card = model_card.build_card(
        version=args.version,
        onnx_path=onnx_path,
        output_name=output_name,
        temperature=temperature,
        threshold=threshold,
        max_unclassified_fraction=args.max_unclassified_fraction,
        class_minimum={CELL_TYPES[i]: v for i, v in class_minimum.items()},
        max_normal_called_blast=args.max_normal_called_blast,
        calibration_taken_from=calibration_taken_from,
        test_time_views=cnn.view_names(args.test_time_views),
        metrics=metrics,
        appearance=appearance,
        sources=list(sources),
        training={
            **fit_record,
            "split_seed": {"pbc": pbc_dataset.SPLIT_SEED, "deepapl": deepapl_dataset.SPLIT_SEED},
            "n_train": {name: int((train_sources == name).sum()) for name in sources},
            "n_validation": {name: int(len(s[1])) for name, s in sources.items()},
            "n_test": {name: int(len(s[2])) for name, s in sources.items()},
            "deepapl_patients": dict(zip(("train", "validation", "test"), deepapl_dataset.patient_split(
                deepapl_dataset.read_patients(args.deepapl_dir or deepapl_dataset.data_dir()))))
            if "deepapl" in sources else None,
            "deepapl_validation_in_training": bool(args.deepapl_validation_in_training),
            "per_class_limit": args.per_class_limit,
            "parameters": int(network.count_params()),
            "batch_norm_recalibration_images": recalibrated,
            "total_seconds": round(seconds, 1),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, tensorflow {tf.__version__}",
            "onnx_keras_max_abs_difference": agreement,
        },
    )
    model_card.write(card, args.out)
    summary = {k: {m: metrics[k][m] for m in ("accuracy", "macro_f1", "unclassified_fraction")}
               for k in metrics if "accuracy" in metrics[k]}
    print(json.dumps({"total_seconds": round(seconds, 1), "temperature": temperature, "threshold": threshold,
                      "onnx_keras_max_abs_difference": agreement, **summary,
                      **{f"{k}_leukaemia": v["leukaemia"] for k, v in metrics.items() if "leukaemia" in v}}, indent=2), flush=True)
    return card


if __name__ == "__main__":
    main()
