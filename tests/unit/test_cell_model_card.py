"""The committed cell model: file matches card, card holds what the model card must hold."""

import json

import pytest

from services.cell_classifier.inference import CellModel, ModelIntegrityError, rules_sha256
from shared.hashing import file_sha256
from services.cell_classifier.settings import DEFAULT_MODEL_DIR
from shared.vocabulary import CELL_TYPES
from tests.helpers.apl_artifacts import copy_apl_head


@pytest.fixture(scope="module")
def card() -> dict:
    return json.loads((DEFAULT_MODEL_DIR / "model_card.json").read_text())


def test_onnx_file_matches_card(card):
    assert file_sha256(DEFAULT_MODEL_DIR / card["file"]) == card["sha256"]


def test_card_is_complete(card):
    for key in ("name", "version", "sha256", "input", "class_order", "unclassified_rule", "data", "training",
                "metrics"):
        assert key in card
    assert card["class_order"] == list(CELL_TYPES)
    assert card["input"]["dtype"] == "uint8"
    assert "CC BY 4.0" in card["data"]["licence"]
    assert "research use" in card["data"]["licence"], "trained on DeepAPL: the card says research use only"
    assert any("Johns Hopkins" in a for a in card["data"]["attribution"])
    assert card["training"]["total_seconds"] <= 90 * 60, "one make train-cells run stays within 90 minutes"
    for split in ("validation", "test_pbc", "test_deepapl"):
        metrics = card["metrics"][split]
        assert set(metrics["per_class"]) == set(CELL_TYPES)
        assert {"accuracy", "macro_f1", "confusion_matrix"} <= set(metrics)
    for split in ("test_pbc", "test_deepapl"):
        assert {"blast_recall", "blast_flagged", "normal_called_blast", "accuracy_9"} <= set(
            card["metrics"][split]["leukaemia"])
    assert card["metrics"]["validation"]["unclassified_fraction"] <= 0.03
    appearance = card["appearance"]
    assert set(appearance["reference"]) == {"pbc", "deepapl"}
    assert 0 < appearance["patient_threshold"] < appearance["image_threshold"]
    assert card["metrics"]["held_out_classes"]["Plasma cells"]["n"] > 0
    split = card["training"]["deepapl_patients"]
    assert not (set(split["train"]) & set(split["test"]) or set(split["train"]) & set(split["validation"])
                or set(split["validation"]) & set(split["test"])), "no patient in two splits"
    for name in ("MODEL_CARD.md", "confusion_matrix.png", "cell_cnn.keras"):
        assert (DEFAULT_MODEL_DIR / name).is_file()


def test_model_card_text_is_what_the_card_renderer_makes_of_the_json(card, tmp_path):
    """MODEL_CARD.md is generated from model_card.json: a renderer change must be followed by regenerating
    the committed text (``training.model_card.write_card_text``), or the card says something the JSON does not."""
    pytest.importorskip("tensorflow")  # training.model_card imports the training stack
    from training import model_card

    model_card.write_card_text(card, tmp_path)
    assert (DEFAULT_MODEL_DIR / "MODEL_CARD.md").read_text() == (tmp_path / "MODEL_CARD.md").read_text()


def test_tampered_model_is_refused(tmp_path, card):
    for name in ("model_card.json", card["file"]):
        (tmp_path / name).write_bytes((DEFAULT_MODEL_DIR / name).read_bytes())
    with open(tmp_path / card["file"], "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ModelIntegrityError, match="sha256"):
        CellModel(tmp_path, "cpu", variant="float")  # the float file is the one tampered with


def test_class_minimum_in_the_card_turns_a_doubtful_blast_into_unclassified(tmp_path, card):
    import numpy as np

    from shared.vocabulary import UNCLASSIFIED

    changed = json.loads(json.dumps(card))
    changed["unclassified_rule"]["threshold"] = 0.3
    changed["unclassified_rule"]["class_minimum"] = {"blast": 0.8}
    (tmp_path / "model_card.json").write_text(json.dumps(changed))
    (tmp_path / card["file"]).write_bytes((DEFAULT_MODEL_DIR / card["file"]).read_bytes())
    copy_apl_head(card, tmp_path)
    model = CellModel(tmp_path, "cpu", variant="float")  # only the float file (and the APL head) is copied
    probabilities = np.zeros(len(CELL_TYPES))
    blast, lymphocyte = CELL_TYPES.index("blast"), CELL_TYPES.index("lymphocyte")
    probabilities[[blast, lymphocyte]] = 0.7, 0.3
    assert model.label(probabilities).label == UNCLASSIFIED  # 0.7 < the blast minimum 0.8
    probabilities[[blast, lymphocyte]] = 0.3, 0.7
    assert model.label(probabilities).label == "lymphocyte"  # other classes: the plain threshold
    probabilities[[blast, lymphocyte]] = 0.85, 0.15
    assert model.label(probabilities).label == "blast"


def test_rules_hash_follows_what_decides_a_label_and_nothing_else(card):
    """A cache keyed by the file's sha256 and this hash never serves labels made under another rule."""
    import copy

    base = rules_sha256(card)

    def changed(edit) -> str:
        edited = copy.deepcopy(card)
        edit(edited)
        return rules_sha256(edited)

    threshold = card["unclassified_rule"]["threshold"]
    assert changed(lambda c: c["unclassified_rule"].update(threshold=threshold + 0.01)) != base
    assert changed(lambda c: c["unclassified_rule"].update(class_minimum={"blast": 0.9})) != base
    assert changed(lambda c: c["appearance"]["reference"].pop("deepapl")) != base
    assert changed(lambda c: c["input"].update(shape=[None, 128, 128, 3])) != base
    # the card's prose and metrics do not change labels
    assert changed(lambda c: c["unclassified_rule"].update(chosen_so_that="reworded")) == base
    assert changed(lambda c: c.update(metrics={})) == base
