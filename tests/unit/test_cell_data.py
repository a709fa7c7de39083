"""Training data for vocabulary 2.0: labels of both sources, the patient split, the leukaemia metrics."""

from __future__ import annotations

import numpy as np
import pytest

from shared.vocabulary import CELL_TYPES, UNCLASSIFIED
from tests.conftest import require_training_stack
from tests.helpers.images import DEEPAPL_DIR

pytestmark = pytest.mark.train


def test_every_verified_deepapl_class_has_a_label_or_is_held_out():
    require_training_stack()
    from training.deepapl_dataset import held_out_cells, verified_cells

    cells = verified_cells(DEEPAPL_DIR)  # raises on a class the mapping does not know
    labels = {c.label for c in cells}
    assert labels - {None} <= set(CELL_TYPES)
    assert {"blast", "promyelocyte", "smudge"} <= labels
    assert all("|" not in c.expert_class for c in cells), "multi-label cells are not labelled data"
    by_class = {}
    for c in cells:
        by_class.setdefault(c.expert_class, c.label)
    assert by_class["Blast, no lineage spec"] == by_class["Promonocyte"] == "blast"
    assert by_class["Myelocyte"] == by_class["Metamyelocyte"] == "ig"
    assert by_class["Smudge cells"] == "smudge"
    assert {c.expert_class for c in held_out_cells(DEEPAPL_DIR)} == {"Plasma cells", "Prolymphocyte"}


def test_patient_split_keeps_every_patient_in_one_split_and_apl_in_each():
    require_training_stack()
    from training.deepapl_dataset import patient_split, read_patients

    patients = read_patients(DEEPAPL_DIR)
    train, val, test = patient_split(patients)
    assert not (set(train) & set(val) or set(train) & set(test) or set(val) & set(test))
    assert set(train) | set(val) | set(test) == set(patients)
    for group in (train, val, test):
        assert any(patients[p] for p in group) and not all(patients[p] for p in group)
    assert patient_split(patients) == (train, val, test), "the split is fixed by its seed"


def test_pbc_promyelocytes_get_their_own_label():
    require_training_stack()
    from training.pbc_dataset import label_of

    assert label_of("ig", "PMY_819354.jpg") == "promyelocyte"
    assert label_of("ig", "MY_718440.jpg") == label_of("ig", "MMY_166902.jpg") == "ig"
    assert label_of("neutrophil", "SNE_296573.jpg") == "neutrophil"


def test_leukaemia_summary_known_answer():
    require_training_stack()
    from training.metrics import leukaemia_counts, leukaemia_summary

    i = {name: k for k, name in enumerate(CELL_TYPES)}
    u = len(CELL_TYPES)
    labels = np.array([i["blast"]] * 4 + [i["lymphocyte"]] * 4 + [i["promyelocyte"]] * 2 + [i["ig"]]
                      + [i["smudge"]])
    predicted = np.array([i["blast"], i["blast"], u, i["lymphocyte"],  # blasts: 2 right, 1 flagged, 1 missed
                          i["lymphocyte"], i["lymphocyte"], i["lymphocyte"], i["blast"],  # 1 normal called blast
                          i["blast"], i["ig"],  # promyelocytes as blast or ig are right
                          i["promyelocyte"],  # an ig labelled promyelocyte is right (scored as ig)
                          i["lymphocyte"]])  # smudge: not counted
    summary = leukaemia_summary(labels, predicted)
    assert summary["n_counted"] == 11 and summary["n_blasts"] == 4 and summary["n_normal"] == 5
    assert summary["accuracy_9"] == pytest.approx(8 / 11)
    assert summary["blast_recall"] == pytest.approx(0.5)
    assert summary["blast_flagged"] == pytest.approx(0.75)
    assert summary["normal_called_blast"] == pytest.approx(1 / 5)
    assert leukaemia_counts(summary) == "8 of 11 right, 3 of 4 blasts flagged, 1 of 5 normal called blast"
    no_blasts = leukaemia_summary(labels[4:8], predicted[4:8])  # as on PBC: the blast figure is left out
    assert leukaemia_counts(no_blasts) == "3 of 4 right, 1 of 4 normal called blast"
    assert UNCLASSIFIED not in CELL_TYPES


def test_patient_bootstrap_intervals_resample_whole_patients():
    require_training_stack()
    from training.metrics import patient_bootstrap_intervals

    i = {name: k for k, name in enumerate(CELL_TYPES)}
    blast, lymph = i["blast"], i["lymphocyte"]
    # three patients, every cell right: any resample of patients gives 1.0 and 0.0
    labels = np.array([blast, lymph] * 6)
    patients = np.repeat(["a", "b", "c"], 4)
    same = patient_bootstrap_intervals(labels, labels.copy(), patients, repeats=200)
    assert same["patients"] == 3 and same["accuracy_9"] == [1.0, 1.0] and same["normal_called_blast"] == [0.0, 0.0]
    # patient "c" calls every lymphocyte a blast: the interval of normal_called_blast spans
    # resamples without "c" (0) and with "c" drawn every time (all of its 2 of 2 lymphocytes)
    predicted = labels.copy()
    predicted[(patients == "c") & (labels == lymph)] = blast
    spread = patient_bootstrap_intervals(labels, predicted, patients, repeats=2000)
    low, high = spread["normal_called_blast"]
    assert low == 0.0 and high == pytest.approx(1.0)
    assert spread["blast_flagged"] == [1.0, 1.0]
    # a patient without blasts in every draw: no rate for blasts, no crash
    only_lymph = patient_bootstrap_intervals(np.array([lymph] * 4), np.array([lymph] * 4), np.array(["a", "a", "b", "b"]))
    assert only_lymph["blast_flagged"] is None and only_lymph["accuracy_9"] == [1.0, 1.0]


def test_deepapl_patient_of_a_cell_is_its_folder():
    require_training_stack()
    from training.deepapl_dataset import patient_of, verified_cells

    cell = verified_cells(DEEPAPL_DIR)[0]
    assert patient_of(cell.path) == cell.patient_id


def test_square_root_class_weights():
    require_training_stack()
    from training.train_cells import square_root_class_weights

    labels = np.array([0] * 100 + [1] * 25)
    weights = square_root_class_weights(labels, 3)
    assert weights[1] / weights[0] == pytest.approx(2.0)  # 4x rarer -> 2x the weight
    assert (100 * weights[0] + 25 * weights[1]) / 125 == pytest.approx(1.0)
    assert weights[2] == 0.0


def test_class_minimum_caps_false_positives_on_validation_known_answer():
    require_training_stack()
    from training.metrics import apply_unclassified_rule, class_minimum_for_false_positives

    # class 1 = "blast"; rows 0-3 are normal cells (label 0), rows 4-5 blasts
    probabilities = np.array([[0.9, 0.1], [0.4, 0.6], [0.3, 0.7], [0.2, 0.8], [0.1, 0.9], [0.35, 0.65]])
    labels = np.array([0, 0, 0, 0, 1, 1])
    minimum = class_minimum_for_false_positives(probabilities, labels, 0.5, 1, np.array([0]), max_rate=0.25)
    assert 0.7 < minimum <= 0.8  # one of four normal cells may stay a blast: the one at 0.8
    predicted = apply_unclassified_rule(probabilities, 0.5, 2, {1: minimum})
    assert predicted.tolist() == [0, 2, 2, 1, 1, 2]  # below the blast minimum: unclassified, not another class
    assert class_minimum_for_false_positives(probabilities, labels, 0.5, 1, np.array([0]), max_rate=1.0) == 0.5


def test_macro_f1_averages_over_the_classes_the_split_has():
    import numpy as np

    from training.metrics import classification_report

    # classes a, b present; c (like blast on the PBC test split) has no cell: not an F1 of 0 in the mean
    report = classification_report(np.array([0, 0, 1, 1]), np.array([0, 0, 1, 3]), ["a", "b", "c"])
    assert report["macro_f1"] == (1.0 + 2 / 3) / 2
    assert report["per_class"]["c"]["support"] == 0 and report["accuracy"] == 0.75
