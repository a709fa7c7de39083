"""The training path: Keras and ONNX agree, and a short training run still trains and exports."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from services.cell_classifier.inference import CellModel
from services.cell_classifier.settings import DEFAULT_MODEL_DIR
from shared.hashing import file_sha256 as card_sha
from shared.preprocessing import preprocess
from shared.vocabulary import CELL_TYPES
from tests.conftest import require_training_stack
from tests.helpers.images import fullsize_images
from tests.helpers.processes import REPO_ROOT

pytestmark = pytest.mark.train


def _originals() -> np.ndarray:
    arrays = []
    for _, path in fullsize_images():
        with Image.open(path) as image:
            arrays.append(preprocess(image))
    return np.stack(arrays)


def test_committed_onnx_matches_keras_on_real_images():
    require_training_stack()
    import keras

    from training.cnn import build_serving_model

    card = json.loads((DEFAULT_MODEL_DIR / "model_card.json").read_text())
    network = keras.models.load_model(DEFAULT_MODEL_DIR / "cell_cnn.keras")
    serving = build_serving_model(network, card["unclassified_rule"]["temperature"], len(card["test_time_views"]))
    images = _originals()
    keras_probabilities = serving.predict(images, verbose=0)
    onnx_probabilities = CellModel(DEFAULT_MODEL_DIR, "cpu", variant="float").predict(images)
    assert np.abs(keras_probabilities - onnx_probabilities).max() < 1e-4


def _train_cells(*arguments: str, succeed: bool = True) -> subprocess.CompletedProcess:
    """``python -m training.train_cells ARGUMENTS`` in the repository; by default it must succeed."""
    completed = subprocess.run([sys.executable, "-m", "training.train_cells", *arguments], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=600)
    if succeed:
        assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return completed


def test_smoke_training_run_exports_a_servable_model(tmp_path):
    require_training_stack()
    out = tmp_path / "model"
    _train_cells("--epochs", "2", "--full-size-epochs", "1", "--per-class-limit", "20",
                 "--init-network", str(DEFAULT_MODEL_DIR / "cell_cnn.keras"), "--cache-dir", "", "--out", str(out),
                 "--verbose", "2", "--version", "smoke", "--deepapl-weight", "2", "--source-scale", "2")
    card = json.loads((out / "model_card.json").read_text())
    assert card["version"] == "smoke"
    assert card["training"]["augmentation"]["source_scale"] == 2  # trained on images decoded at 224 px
    assert "decoded at 2x the input side" in (out / "MODEL_CARD.md").read_text()
    assert card["training"]["source_weight"] == {"deepapl": 2.0}  # the fit ran with per-image weights
    # a tiny slice of both sources, split by patient, evaluated per source
    assert card["training"]["n_train"]["pbc"] > 0 and card["training"]["n_train"]["deepapl"] > 0
    assert {"test_pbc", "test_deepapl"} <= set(card["metrics"])
    assert card["training"]["initial_network"]["sha256"] == card_sha(DEFAULT_MODEL_DIR / "cell_cnn.keras")
    assert set(card["appearance"]["reference"]) == {"pbc", "deepapl"}
    assert (out / "fitted" / "cell_cnn.keras").is_file(), "the fitted network is saved before anything can fail"
    assert card["training"]["epoch_image_sizes"] == [96, 112]  # progressive resizing, then full size
    assert card["test_time_views"] == ["identity"]
    assert card["training"]["onnx_keras_max_abs_difference"] < 1e-4
    assert (out / "confusion_matrix.png").stat().st_size > 1000
    model = CellModel(out, "cpu")
    probabilities = model.predict(_originals()[:4])
    assert probabilities.shape == (4, len(CELL_TYPES))
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)

    # the path that finished the committed model: an already fitted network, no second fit; one listed training
    # cell of each source left out
    from training.train_cells import load_data, parse_args

    slice_arguments = ("--per-class-limit", "40", "--cache-dir", "")
    before, _ = load_data(parse_args(list(slice_arguments)))
    listed = tmp_path / "doubtful.txt"
    ends = {"pbc": 3, "deepapl": 4}  # pbc/<class>/<file>, deepapl_discovery/images/<patient>/<file>
    listed.write_text("# labels in doubt\n" + "".join(
        "/".join(before[source][0].paths[0].split("/")[-parts:]) + "\n" for source, parts in ends.items()))
    # and a second reading (training.second_reading's worklist): one PBC training cell relabelled, one DeepAPL
    # training cell confirmed
    from training.second_reading import COLUMNS

    reread = {"pbc": (before["pbc"][0].paths[1], before["pbc"][0].labels[1], "smudge"),
              "deepapl": (before["deepapl"][0].paths[1], before["deepapl"][0].labels[1], None)}
    worklist = tmp_path / "worklist.csv"
    worklist.write_text(",".join(COLUMNS) + "\n" + "".join(
        "/".join(path.split("/")[-ends[source]:]) + f",{source},,{CELL_TYPES[label]},,,,,"
        + (reading or CELL_TYPES[label]) + "\n" for source, (path, label, reading) in reread.items()))
    finished = tmp_path / "finished"
    completed = _train_cells(*slice_arguments, "--from-network",
                             str(out / "fitted" / "cell_cnn.keras"), "--out", str(finished), "--version", "smoke-2",
                             "--test-time-views", "2", "--soup-with", str(DEFAULT_MODEL_DIR / "cell_cnn.keras"),
                             "--exclude-cells", str(listed), "--second-reading", str(worklist))
    assert "fit skipped" in completed.stdout
    assert "left out 2 listed training cells" in completed.stdout
    assert "2 cells re-read (worklist.csv" in completed.stdout and "1 confirmed, 1 relabelled" in completed.stdout
    second_card = json.loads((finished / "model_card.json").read_text())
    assert second_card["test_time_views"] == ["identity", "flip_left_right"]
    second = second_card["training"]
    assert [w["sha256"] for w in second["soup"]["with"]] == [card_sha(DEFAULT_MODEL_DIR / "cell_cnn.keras")]
    assert "model soup" in (finished / "MODEL_CARD.md").read_text()
    assert second["excluded_training_cells"]["by_source"] == {"pbc": 1, "deepapl": 1}
    assert {name: second["n_train"][name] + 1 for name in ("pbc", "deepapl")} == {
        name: len(before[name][0]) for name in ("pbc", "deepapl")}
    assert "2 listed training cells left out (doubtful.txt" in (finished / "MODEL_CARD.md").read_text()
    assert second["second_reading"]["relabelled_as"] == {f"{CELL_TYPES[reread['pbc'][1]]} -> smudge": 1}
    assert "a second reading of training cells: 2 cells re-read" in (finished / "MODEL_CARD.md").read_text()
    assert second["onnx_keras_max_abs_difference"] < 1e-4  # the two-view graph exports faithfully
    fit_record = json.loads((out / "fitted" / "fit_record.json").read_text())
    assert second["fitted_in_earlier_run"]["total_seconds"] == fit_record["total_seconds"]  # time to the saved fit
    assert second["total_seconds"] > fit_record["total_seconds"]
    assert second["history"] == card["training"]["history"] and second["batch_norm_recalibration_images"] > 0
    assert CellModel(finished, "cpu").predict(_originals()[:2]).shape == (2, len(CELL_TYPES))

    # the validation patients trained on: the calibration must come from a card that was fitted on them
    refit = tmp_path / "refit"
    arguments = ("--per-class-limit", "20", "--cache-dir", "", "--from-network", str(out / "fitted" / "cell_cnn.keras"),
                 "--out", str(refit), "--version", "smoke-3", "--deepapl-validation-in-training")
    refused = _train_cells(*arguments, succeed=False)
    assert refused.returncode != 0 and "--calibration-from" in refused.stderr
    _train_cells(*arguments, "--calibration-from", str(DEFAULT_MODEL_DIR / "model_card.json"))
    refit_card = json.loads((refit / "model_card.json").read_text())
    served_rule = json.loads((DEFAULT_MODEL_DIR / "model_card.json").read_text())["unclassified_rule"]
    rule = refit_card["unclassified_rule"]
    assert (rule["temperature"], rule["threshold"], rule["class_minimum"]) == (
        served_rule["temperature"], served_rule["threshold"], served_rule["class_minimum"])
    assert "taken from aml-cell-resnet" in rule["chosen_so_that"]
    assert refit_card["training"]["deepapl_validation_in_training"] is True
    assert refit_card["training"]["n_train"]["deepapl"] == (
        card["training"]["n_train"]["deepapl"] + refit_card["training"]["n_validation"]["deepapl"])
    assert "not a held-out estimate" in refit_card["metrics"]["validation"]["note"]


def test_augmentation_scales_training_images_and_leaves_served_ones_alone():
    require_training_stack()
    from training.cnn import CellAugmentation

    images = _originals()[:3]
    augmentation = CellAugmentation()
    augmentation.output_size.assign(96)
    trained_on = augmentation(images, training=True).numpy()
    assert trained_on.shape == (3, 96, 96, 3)
    assert 0.0 <= trained_on.min() and trained_on.max() <= 255.0
    served = augmentation(images, training=False).numpy()
    assert np.array_equal(served, images.astype(np.float32))


def test_view_averaged_evaluation_matches_the_exported_view_averaging():
    require_training_stack()
    import keras

    from training.cnn import build_network, build_serving_model, view_averaged_logits
    from training.metrics import softmax

    keras.utils.set_random_seed(0)
    network = build_network(widths=(8, 8, 8, 8))
    images = _originals()[:5]
    for views in (1, 4):
        expected = softmax(view_averaged_logits(network, images, views), 1.3)
        served = build_serving_model(network, 1.3, views).predict(images, verbose=0)
        assert np.abs(expected - served).max() < 1e-5
    flipped = softmax(view_averaged_logits(network, images[:, :, ::-1], 4), 1.3)
    assert np.abs(flipped - softmax(view_averaged_logits(network, images, 4), 1.3)).max() < 1e-4  # flip-invariant


def test_stain_jitter_of_zero_strength_changes_nothing():
    require_training_stack()
    from training.cnn import CellAugmentation

    images = _originals()[:4].astype(np.float32)
    still = CellAugmentation(stain_probability=1.0, stain_scale=0.0)._stain(images, 4).numpy()
    assert np.abs(still - images).max() < 0.05  # optical density there and back
    jittered = CellAugmentation(stain_probability=1.0, stain_scale=0.3)._stain(images, 4).numpy()
    assert np.abs(jittered - images).mean() > 1.0 and 0.0 <= jittered.min() and jittered.max() <= 255.0


def test_network_from_an_earlier_vocabulary_keeps_the_shared_classes():
    require_training_stack()
    import keras

    from training.cnn import build_network, network_from

    keras.utils.set_random_seed(1)
    earlier_classes = ["basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte", "neutrophil",
                       "platelet"]
    earlier = build_network(n_classes=len(earlier_classes))
    network = network_from(earlier, earlier_classes)
    images = _originals()[:3].astype(np.float32)
    old, new = earlier.predict(images, verbose=0), network.predict(images, verbose=0)
    assert new.shape == (3, len(CELL_TYPES))
    for i, name in enumerate(earlier_classes):
        assert np.allclose(new[:, CELL_TYPES.index(name)], old[:, i], atol=1e-4)


def test_deepening_keeps_the_networks_function_and_the_deeper_network_fine_tunes_and_soups():
    require_training_stack()
    import keras

    from training.cnn import average_weights, build_network, deepen, network_from

    keras.utils.set_random_seed(2)
    network = build_network(widths=(8, 16, 16, 32))
    images = _originals()[:3].astype(np.float32)
    before = network.predict(images, verbose=0)
    deeper = deepen(network)
    assert deeper.count_params() > 1.5 * network.count_params()
    assert sum(layer.name.endswith("_add") for layer in deeper.layers if layer.name.startswith("deep")) == 4
    assert np.abs(deeper.predict(images, verbose=0) - before).max() < 1e-5  # the identity at first
    for layer in deeper.layers:  # once trained, the new blocks change the function; the original stays as it was
        if layer.name.endswith("_bn_b"):
            gamma, *rest = layer.get_weights()
            layer.set_weights([gamma + 0.5, *rest])
    assert np.abs(deeper.predict(images, verbose=0) - before).max() > 1e-3
    assert np.array_equal(network.predict(images, verbose=0), before)
    deepest = deepen(deeper)  # names stay unique when deepened twice
    assert len({layer.name for layer in deepest.layers}) == len(deepest.layers)
    # the steps that follow a fit take any depth: a new vocabulary, a soup of two deep networks
    relabelled = network_from(deeper, list(CELL_TYPES))
    assert np.allclose(relabelled.predict(images, verbose=0), deeper.predict(images, verbose=0), atol=1e-5)
    soup = average_weights([deeper, relabelled])
    assert np.allclose(soup.predict(images, verbose=0), deeper.predict(images, verbose=0), atol=1e-5)


def test_a_deepened_fine_tune_exports_a_servable_model_and_records_its_depth(tmp_path):
    require_training_stack()
    out = tmp_path / "deep"
    arguments = ("--epochs", "1", "--full-size-epochs", "1", "--per-class-limit", "20", "--cache-dir", "",
                 "--out", str(out), "--verbose", "2", "--deepen", "1")
    refused = _train_cells(*arguments, succeed=False)
    assert refused.returncode != 0 and "--init-network" in refused.stderr
    _train_cells(*arguments, "--init-network", str(DEFAULT_MODEL_DIR / "cell_cnn.keras"))
    card = json.loads((out / "model_card.json").read_text())
    deepened = card["training"]["initial_network"]["deepened"]
    assert deepened["extra_blocks_after_each_block"] == 1
    assert card["training"]["parameters"] == deepened["parameters_after"] > 2 * deepened["parameters_before"]
    assert card["training"]["onnx_keras_max_abs_difference"] < 1e-4
    probabilities = CellModel(out, "cpu").predict(_originals()[:2])
    assert probabilities.shape == (2, len(CELL_TYPES)) and np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


def test_a_distilled_fine_tune_trains_on_the_teachers_probabilities_and_records_its_teacher(tmp_path):
    require_training_stack()
    out = tmp_path / "distilled"
    teacher = DEFAULT_MODEL_DIR / "cell_cnn.keras"
    arguments = ("--epochs", "1", "--full-size-epochs", "1", "--per-class-limit", "20", "--cache-dir", "",
                 "--out", str(out), "--verbose", "2", "--init-network", str(teacher), "--distil-from", str(teacher))
    refused = _train_cells(*arguments, "--distil-weight", "1.5", succeed=False)
    assert refused.returncode != 0 and "--distil-weight" in refused.stderr
    completed = _train_cells(*arguments, "--distil-weight", "0.4", "--distil-views", "2")
    assert "teacher agrees with" in completed.stdout
    card = json.loads((out / "model_card.json").read_text())
    record = card["training"]["distillation"]
    served = json.loads((DEFAULT_MODEL_DIR / "model_card.json").read_text())
    assert record["sha256"] == card_sha(teacher) and record["version"] == served["version"]
    assert (record["weight"], record["views"]) == (0.4, 2)
    assert record["temperature"] == served["unclassified_rule"]["temperature"]
    # the served network agrees with most of its own training labels on these clean cells (0.77 on this slice of
    # 20 per class, rare classes included; a network that had not learnt them would agree with about 1 in 11)
    assert record["teacher_on_training_labels"]["top_class_is_label"] > 0.6
    assert "0.6 x the label + 0.4 x its calibrated probabilities" in (out / "MODEL_CARD.md").read_text()
    assert CellModel(out, "cpu").predict(_originals()[:2]).shape == (2, len(CELL_TYPES))


def test_distilled_targets_mix_the_label_with_the_teachers_row():
    from training.distillation import agreement, distilled_targets

    labels = np.array([0, 2])
    teacher = np.array([[0.4, 0.6, 0.0], [0.8, 0.0, 0.2]], dtype=np.float32)
    targets = distilled_targets(labels, teacher, 0.5)
    assert np.allclose(targets, [[0.7, 0.3, 0.0], [0.4, 0.0, 0.6]])
    assert np.allclose(targets.sum(axis=1), 1.0)
    assert np.allclose(distilled_targets(labels, teacher, 1.0), teacher)
    with pytest.raises(ValueError):
        distilled_targets(labels, teacher, 0.0)
    with pytest.raises(ValueError):
        distilled_targets(labels[:1], teacher, 0.5)
    assert agreement(labels, teacher) == {"top_class_is_label": 0.0, "mean_probability_of_label": 0.3}


def test_distillation_options_are_checked_before_any_data_is_loaded():
    from training.train_cells import parse_args

    assert parse_args(["--distil-from", "teacher.keras"]).distil_views == 4
    for wrong in (["--distil-views", "9"], ["--distil-views", "0"], ["--distil-weight", "0"]):
        with pytest.raises(SystemExit):
            parse_args(["--distil-from", "teacher.keras", *wrong])


def test_source_weight_scales_a_sources_cells_against_the_class_weights_and_keeps_the_mean():
    from training.train_cells import sample_weights, square_root_class_weights

    labels = np.array([0, 0, 0, 1, 1, 2])
    sources = np.array(["pbc", "deepapl", "pbc", "deepapl", "pbc", "deepapl"])
    class_weight = square_root_class_weights(labels, 3)
    pooled = {"pbc": class_weight, "deepapl": class_weight}
    weights = sample_weights(labels, sources, pooled, {"deepapl": 2.0})
    assert weights.mean() == pytest.approx(1.0)
    assert weights[1] / weights[0] == pytest.approx(2.0)  # same class, DeepAPL twice PBC
    assert weights[3] / weights[4] == pytest.approx(2.0)
    assert weights[0] / weights[4] == pytest.approx(class_weight[0] / class_weight[1])
    unweighted = sample_weights(labels, sources, pooled, {})
    assert np.allclose(unweighted / unweighted.mean(), [class_weight[int(c)] for c in labels] / np.mean(
        [class_weight[int(c)] for c in labels]))


def test_class_weights_per_source_weigh_a_class_by_its_own_sources_counts_and_are_capped():
    from training.train_cells import sample_weights, square_root_class_weights_by_source

    # PBC: 8 of class 0, 8 of class 1; DeepAPL: 15 of class 0, 1 of class 1 (rare there, common in PBC)
    labels = np.array([0] * 8 + [1] * 8 + [0] * 15 + [1])
    sources = np.array(["pbc"] * 16 + ["deepapl"] * 16)
    by_source = square_root_class_weights_by_source(labels, sources, 3, max_weight=10.0)
    assert by_source["pbc"][0] == pytest.approx(by_source["pbc"][1])  # balanced within PBC
    assert by_source["deepapl"][1] / by_source["deepapl"][0] == pytest.approx(np.sqrt(15.0))
    assert by_source["pbc"][2] == 0.0  # a class the source lacks weighs nothing
    capped = square_root_class_weights_by_source(labels, sources, 3, max_weight=2.0)
    assert capped["deepapl"][1] == 2.0 and capped["deepapl"][0] == pytest.approx(by_source["deepapl"][0])
    weights = sample_weights(labels, sources, by_source, {"deepapl": 2.0})
    assert weights.mean() == pytest.approx(1.0)
    assert weights[-1] / weights[8] == pytest.approx(2.0 * by_source["deepapl"][1] / by_source["pbc"][1])


def test_label_smoothing_fits_one_hot_targets_whose_loss_spreads_the_smoothing_over_the_classes():
    require_training_stack()
    from training.train_cells import fit_loss, fit_targets

    labels = np.array([2, 0, 1])
    loss, targets = fit_loss(0.0), fit_targets(labels, 3, 0.0)
    assert targets is labels  # off: class indices and the sparse loss, as 2.2.0 was fitted
    loss, targets = fit_loss(0.3), fit_targets(labels, 3, 0.3)
    assert targets.shape == (3, 3) and targets.argmax(axis=1).tolist() == [2, 0, 1]
    logits = np.log(np.array([[0.1, 0.1, 0.8]], dtype=np.float32))
    # against (0.1, 0.1, 0.8) smoothed: -(0.1 log 0.1 + 0.1 log 0.1 + 0.8 log 0.8)
    expected = -(0.1 * np.log(0.1) * 2 + 0.8 * np.log(0.8))
    assert float(loss(targets[:1], logits)) == pytest.approx(expected, rel=1e-5)
    # beside distilled targets the loss takes rows, so the validation labels become one-hot without smoothing
    assert fit_loss(0.0, soft_targets=True).name == "categorical_crossentropy"
    assert np.array_equal(fit_targets(labels, 3, 0.0, one_hot=True), np.eye(3, dtype=np.float32)[labels])


def test_a_soup_holds_the_mean_of_its_ingredients_weights():
    require_training_stack()
    import keras

    from training.cnn import average_weights, build_network

    keras.utils.set_random_seed(3)
    first, second = build_network(), build_network()
    soup = average_weights([first, second])
    for a, b, mean in zip(first.get_weights(), second.get_weights(), soup.get_weights()):
        assert np.allclose(mean, (a + b) / 2, atol=1e-6)
    assert not np.allclose(first.get_weights()[0], second.get_weights()[0])  # the first kernels differed
    images = _originals()[:2].astype(np.float32)
    alone = average_weights([first, first])  # a soup of one network is that network
    assert np.allclose(alone.predict(images, verbose=0), first.predict(images, verbose=0), atol=1e-5)
    with pytest.raises(ValueError):
        average_weights([first])


def test_true_gaussian_blur_removes_the_fine_detail_a_blend_keeps():
    require_training_stack()
    import keras
    import tensorflow as tf

    from training.cnn import CellAugmentation

    def laplacian_energy(x: np.ndarray) -> float:
        gray = x.mean(axis=-1)
        return float(np.abs(4 * gray[:, 1:-1, 1:-1] - gray[:, :-2, 1:-1] - gray[:, 2:, 1:-1]
                            - gray[:, 1:-1, :-2] - gray[:, 1:-1, 2:]).mean())

    images = tf.constant(_originals()[:8].astype(np.float32))
    keras.utils.set_random_seed(0)
    sharp = laplacian_energy(images.numpy())
    true_blur = CellAugmentation(blur_probability=1.0, blur_sigma_range=(1.0, 1.0))
    assert len(true_blur._blur_kernels) == 5
    blurred = laplacian_energy(true_blur._blur(images, 8).numpy())
    blends = laplacian_energy(CellAugmentation(blur_probability=1.0)._blur(images, 8).numpy())
    # every image blurred at sigma 1 px: its finest detail much reduced; a blend of random strength with the
    # 1.2 px blur keeps more of it on average
    assert blurred < 0.7 * sharp and blurred < blends < sharp
    none = CellAugmentation(blur_probability=0.0, blur_sigma_range=(0.5, 1.5))._blur(images, 8).numpy()
    assert np.array_equal(none, images.numpy())


def test_source_scale_two_enlarges_cells_from_their_full_detail_and_keeps_the_home_scale_look():
    """--source-scale 2: training images at twice the input side, geometry on them, then an antialiased resize.
    A cell enlarged 2x keeps the detail of its source (sharper than enlarging the 112 px array); at the home
    scale the result is the 112 px array's, as the service sees it, to a grey level on average."""
    require_training_stack()
    import tensorflow as tf

    from shared.appearance import sharpness
    from shared.preprocessing import IMAGE_SIZE, preprocess_file

    from training.cnn import CellAugmentation

    paths = [path for _, path in fullsize_images()][::4]
    input_size = np.stack([preprocess_file(p) for p in paths])
    twice = np.stack([preprocess_file(p, 2 * IMAGE_SIZE) for p in paths])

    def augmented(zoom: float, scale: int, images: np.ndarray, sharp_fraction: float = 1.0) -> np.ndarray:
        layer = CellAugmentation((zoom, zoom), blur_probability=0.0, colour_strength=0.0, source_scale=scale,
                                 sharp_fraction=sharp_fraction)
        tf.random.set_seed(7)  # the same rotations, flips and shifts for both
        out = layer(tf.constant(images), training=True).numpy()
        assert out.shape == (len(images), IMAGE_SIZE, IMAGE_SIZE, 3)
        return out

    def mean_sharpness(images: np.ndarray) -> float:
        return float(np.mean([sharpness(np.clip(x, 0, 255).astype(np.uint8)) for x in images]))

    home_small, home_twice = augmented(1.0, 1, input_size), augmented(1.0, 2, twice)
    assert np.abs(home_small - home_twice).mean() < 1.5
    enlarged_small, enlarged_twice = augmented(2.0, 1, input_size), augmented(2.0, 2, twice)
    assert mean_sharpness(enlarged_twice) > mean_sharpness(enlarged_small) + 0.1
    # --sharp-fraction 0: every image resized to the input side first, then enlarged as from the 112 px array
    enlarged_soft = augmented(2.0, 2, twice, sharp_fraction=0.0)
    assert np.abs(enlarged_soft - enlarged_small).mean() < 3.0
    assert abs(mean_sharpness(enlarged_soft) - mean_sharpness(enlarged_small)) < 0.05
    assert mean_sharpness(enlarged_twice) > mean_sharpness(enlarged_soft) + 0.1
    # a share: each image is one of the two, and both kinds occur
    mixed = augmented(2.0, 2, twice, sharp_fraction=0.5)
    is_sharp = [np.allclose(m, s, atol=1e-3) for m, s in zip(mixed, enlarged_twice)]
    is_soft = [np.allclose(m, s, atol=1e-3) for m, s in zip(mixed, enlarged_soft)]
    assert all(a != b for a, b in zip(is_sharp, is_soft)) and any(is_sharp) and any(is_soft)
    served = CellAugmentation(source_scale=2)(tf.constant(input_size), training=False).numpy()
    assert np.array_equal(served, input_size.astype(np.float32))  # outside training nothing changes


def test_sharp_fraction_is_a_share_and_needs_the_larger_decode():
    """--sharp-fraction: a share in [0, 1], and only with --source-scale 2 (with 1 there is no sharp path)."""
    from training.train_cells import parse_args

    assert parse_args(["--source-scale", "2", "--sharp-fraction", "0.5"]).sharp_fraction == 0.5
    assert parse_args([]).sharp_fraction == 1.0  # every image sharp where the decode is larger, as before
    for arguments in (["--source-scale", "2", "--sharp-fraction", "1.5"],
                      ["--source-scale", "2", "--sharp-fraction", "-0.1"],
                      ["--sharp-fraction", "0.5"]):
        with pytest.raises(SystemExit):
            parse_args(arguments)


def test_mixup_blends_each_chosen_image_with_its_target_and_weight_by_the_same_share():
    require_training_stack()
    import keras

    from training.mixup import blend

    count = 64  # one class per image, so that a mixed target names both images and the share of each
    images = np.arange(count, dtype=np.float32).reshape(count, 1, 1, 1) * np.ones((1, 2, 2, 3), np.float32)
    targets = np.eye(count, dtype=np.float32)
    weights = np.linspace(1.0, 2.0, count).astype(np.float32)
    mixed, mixed_targets, mixed_weights = (np.asarray(a) for a in blend(
        images, targets, weights, alpha=0.4, probability=0.5, seed_generator=keras.random.SeedGenerator(3)))
    assert np.allclose(mixed_targets.sum(axis=1), 1.0)
    lam = np.diag(mixed_targets)
    assert (lam >= 0.5 - 1e-6).all(), "each image keeps its own cell as the larger part"
    untouched = np.isclose(lam, 1.0)
    assert 10 < untouched.sum() < count - 10, "about half the images are mixed"
    assert np.allclose(mixed[untouched], images[untouched]) and np.allclose(mixed_weights[untouched],
                                                                            weights[untouched])
    for i in np.flatnonzero(~untouched):  # lam x itself + (1 - lam) x its partner: image, target and weight alike
        others = mixed_targets[i].copy()
        others[i] = 0.0
        partner = int(others.argmax())
        assert np.isclose(others[partner], 1.0 - lam[i]) and partner != i
        assert np.allclose(mixed[i], lam[i] * images[i] + (1 - lam[i]) * images[partner], atol=1e-4)
        assert np.isclose(mixed_weights[i], lam[i] * weights[i] + (1 - lam[i]) * weights[partner], atol=1e-5)


def test_a_mixup_fine_tune_trains_and_records_its_mixup(tmp_path):
    require_training_stack()
    from training.train_cells import parse_args

    for wrong in (["--mixup-alpha", "-1"], ["--mixup-probability", "0"], ["--mixup-probability", "1.5"]):
        with pytest.raises(SystemExit):
            parse_args(wrong)
    out = tmp_path / "mixup"
    completed = _train_cells("--epochs", "1", "--full-size-epochs", "1", "--per-class-limit", "20", "--cache-dir", "",
                             "--out", str(out), "--verbose", "2", "--init-network",
                             str(DEFAULT_MODEL_DIR / "cell_cnn.keras"), "--mixup-alpha", "0.4")
    card = json.loads((out / "model_card.json").read_text())
    assert card["training"]["mixup"]["alpha"] == 0.4 and card["training"]["mixup"]["share_of_images"] == 0.5
    assert "mixup on 0.5 of the images" in (out / "MODEL_CARD.md").read_text()
    losses = card["training"]["history"]["loss"]  # the custom step updates the loss it reports
    assert np.isfinite(losses).all() and min(losses) > 0, completed.stdout[-2000:]
    assert CellModel(out, "cpu").predict(_originals()[:2]).shape == (2, len(CELL_TYPES))
