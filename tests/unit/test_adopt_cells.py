"""training.adopt_cells: a trained candidate is checked as the service would check it before it replaces the
served model, and what was made from the old network goes with it."""

from __future__ import annotations

import json
import shutil

import pytest

from services.cell_classifier.inference import check_model
from services.cell_classifier.settings import DEFAULT_MODEL_DIR
from shared.hashing import file_sha256
from training.adopt_cells import CANDIDATE_FILES, AdoptionError, main, next_minor, run


def _with_version(folder, version: str) -> None:
    card = json.loads((folder / "model_card.json").read_text())
    card["version"] = version
    (folder / "model_card.json").write_text(json.dumps(card))


@pytest.fixture()
def served(tmp_path):
    folder = tmp_path / "served"
    shutil.copytree(DEFAULT_MODEL_DIR, folder)
    return folder


@pytest.fixture()
def candidate(tmp_path):
    """The served float network as a train-cells --out folder would hold it, with a newer version and no int8
    variant or APL head in its card (train_cells writes neither)."""
    folder = tmp_path / "candidate"
    folder.mkdir()
    for name in CANDIDATE_FILES:
        shutil.copy2(DEFAULT_MODEL_DIR / name, folder / name)
    card = json.loads((folder / "model_card.json").read_text())
    card.pop("serving_variants", None)
    card.pop("apl_cell_head", None)
    card["version"] = "99.0.0"
    (folder / "model_card.json").write_text(json.dumps(card))
    return folder


def _snapshot(folder):
    return {path.name: file_sha256(path) for path in sorted(folder.iterdir()) if path.is_file()}


def test_a_newer_candidate_replaces_the_served_model_and_what_was_made_from_it(candidate, served, capsys):
    made_from_old = ("cell_cnn.int8.onnx", "apl_cell_head.onnx")  # the served card lists both
    assert all((served / name).exists() for name in made_from_old)
    run(candidate, ("check", "copy"), served=served)
    for name in CANDIDATE_FILES:
        assert file_sha256(served / name) == file_sha256(candidate / name)
    assert not any((served / name).exists() for name in made_from_old)
    checked = check_model(served, "cpu", "auto")  # servable as it stands: float until quantize runs
    assert (checked.card["version"], checked.variant) == ("99.0.0", "float")
    out = capsys.readouterr().out
    assert "can be served" in out and "left to do by hand" in out and "bench-cells" in out


def test_a_candidate_that_is_not_newer_is_refused_and_nothing_is_touched(candidate, served):
    _with_version(candidate, json.loads((served / "model_card.json").read_text())["version"])
    before = _snapshot(served)
    with pytest.raises(AdoptionError, match="not above the served"):
        run(candidate, ("check", "copy"), served=served)
    assert _snapshot(served) == before


def test_a_network_file_that_does_not_match_its_card_is_refused(candidate, served):
    data = bytearray((candidate / "cell_cnn.onnx").read_bytes())
    data[-1] ^= 0xFF
    (candidate / "cell_cnn.onnx").write_bytes(bytes(data))
    before = _snapshot(served)
    with pytest.raises(AdoptionError, match="sha256"):
        run(candidate, ("copy",), served=served)  # resuming at copy still checks first
    assert _snapshot(served) == before


def test_an_incomplete_folder_is_refused_with_what_it_lacks(candidate, served):
    (candidate / "cell_cnn.keras").unlink()
    with pytest.raises(AdoptionError, match="lacks cell_cnn.keras"):
        run(candidate, ("check",), served=served)


def test_the_served_folder_is_not_its_own_candidate(served):
    before = _snapshot(served)
    with pytest.raises(AdoptionError, match="--steps quantize apl robustness"):
        run(served, ("check", "copy"), served=served)
    assert _snapshot(served) == before


def test_the_command_line_exits_2_with_the_reason(tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        main([str(tmp_path / "nowhere")])
    assert exited.value.code == 2
    assert "lacks cell_cnn.onnx" in capsys.readouterr().err
    with pytest.raises(AdoptionError, match="unknown steps"):
        run(tmp_path, ("deploy",))


def test_the_apl_alert_gets_the_next_minor_version():
    assert next_minor("1.2.0") == "1.3.0"
    assert next_minor("2.9.4") == "2.10.0"
    with pytest.raises(AdoptionError):
        next_minor("one")


def test_the_chain_runs_each_training_step_on_the_served_folder_in_order(candidate, served, tmp_path, monkeypatch):
    """The long steps are replaced by recorders (they take an hour); their arguments go through the real parsers."""
    pytest.importorskip("sklearn")  # training.quantize_cells and training.train_apl need the training extra
    from training import quantize_cells, robustness, train_apl

    subtype = tmp_path / "subtype"
    subtype.mkdir()
    (subtype / "apl_card.json").write_text(json.dumps({"version": "1.2.0"}))
    calls = []
    monkeypatch.setattr(quantize_cells, "main",
                        lambda argv: calls.append(("quantize", quantize_cells.parse_args(argv))))
    monkeypatch.setattr(train_apl, "main", lambda argv: calls.append(("apl", train_apl.parse_args(argv))))
    monkeypatch.setattr(robustness, "main", lambda argv: calls.append(("robustness", argv)))
    run(candidate, ("robustness", "apl", "quantize", "copy", "check"), served=served, subtype_dir=subtype)
    assert [name for name, _ in calls] == ["quantize", "apl", "robustness"]
    assert calls[0][1].model_dir == served
    apl = calls[1][1]
    assert (apl.cell_model_dir, apl.subtype_model_dir, apl.version) == (served, subtype, "1.3.0")
    assert calls[2][1] == ["--model-dir", str(served)]


@pytest.fixture()
def quantized_candidate(candidate):
    """The candidate after ``quantize_cells --model-dir``: its card lists an int8 file made from its float network
    (the served int8 file fits, as the candidate's float network is the served one)."""
    served_card = json.loads((DEFAULT_MODEL_DIR / "model_card.json").read_text())
    card = json.loads((candidate / "model_card.json").read_text())
    card["serving_variants"] = served_card["serving_variants"]
    (candidate / "model_card.json").write_text(json.dumps(card))
    int8 = served_card["serving_variants"]["files"]["int8"]["file"]
    shutil.copy2(DEFAULT_MODEL_DIR / int8, candidate / int8)
    return candidate, int8


def test_a_candidate_quantized_already_brings_its_int8_file_and_the_quantize_step_is_skipped(
        quantized_candidate, served, capsys):
    candidate, int8 = quantized_candidate
    run(candidate, ("check", "copy", "quantize"), served=served)
    assert file_sha256(served / int8) == file_sha256(candidate / int8)
    assert not (served / "apl_cell_head.onnx").exists()
    checked = check_model(served, "cpu", "auto")
    assert (checked.card["version"], checked.variant) == ("99.0.0", "int8")
    out = capsys.readouterr().out
    assert "[quantize] skipped" in out
    assert f"{int8} into" in out and "removed ['apl_cell_head.onnx']" in out  # int8 replaced, not removed


def test_a_candidate_whose_int8_file_does_not_match_its_card_is_refused(quantized_candidate, served):
    candidate, int8 = quantized_candidate
    data = bytearray((candidate / int8).read_bytes())
    data[-1] ^= 0xFF
    (candidate / int8).write_bytes(bytes(data))
    before = _snapshot(served)
    with pytest.raises(AdoptionError, match=r"\(int8\).*sha256"):
        run(candidate, ("check", "copy"), served=served)
    assert _snapshot(served) == before


def test_a_card_that_is_not_a_cell_model_card_is_refused(candidate, served):
    (candidate / "model_card.json").write_text("{}")
    with pytest.raises(AdoptionError, match="not a cell model card"):
        run(candidate, ("check",), served=served)
