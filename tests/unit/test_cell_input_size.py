"""The network's input side comes from its model card: the service preprocesses every image to the size
of the model it runs (a model of another input size, e.g. the 112 px 1.2.0 network in the benchmark,
runs through the same code), and a card that disagrees with its ONNX file is refused."""

import json

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from services.cell_classifier.decoding import decode_image
from services.cell_classifier.inference import CellModel, ModelIntegrityError
from services.cell_classifier.settings import DEFAULT_MODEL_DIR, CellServiceSettings
from shared.hashing import file_sha256
from shared.vocabulary import CELL_TYPES
from tests.helpers.images import fullsize_images
from tests.helpers.processes import start_cell_service

SIDE = 64


def write_mean_colour_model(path, side: int) -> str:
    """uint8 [batch, side, side, 3] -> softmax(mean colour @ W): a real ONNX network of a fixed input size."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = np.random.default_rng(0).normal(0, 0.05, (3, len(CELL_TYPES))).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Cast", ["image"], ["pixels"], to=TensorProto.FLOAT),
         helper.make_node("ReduceMean", ["pixels"], ["colour"], axes=[1, 2], keepdims=0),
         helper.make_node("MatMul", ["colour", "w"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1)],
        "mean_colour",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["batch", side, side, 3])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", len(CELL_TYPES)])],
        [numpy_helper.from_array(weights, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return file_sha256(path)


def model_dir(tmp_path, side: int, card_side: int | None = None):
    card = json.loads((DEFAULT_MODEL_DIR / "model_card.json").read_text())
    card = {k: v for k, v in card.items() if k not in ("serving_variants", "apl_cell_head")}
    card["file"] = "mean_colour.onnx"
    card["sha256"] = write_mean_colour_model(tmp_path / card["file"], side)
    card["input"] = {**card["input"], "shape": ["batch", card_side or side, card_side or side, 3]}
    (tmp_path / "model_card.json").write_text(json.dumps(card))
    return tmp_path


def test_model_reads_its_input_side_from_the_card(tmp_path):
    model = CellModel(model_dir(tmp_path, SIDE), "cpu", 1, "auto")
    assert model.input_size == SIDE
    assert CellModel(DEFAULT_MODEL_DIR, "cpu", 1, "float").input_size == \
        json.loads((DEFAULT_MODEL_DIR / "model_card.json").read_text())["input"]["shape"][1]


def test_card_that_disagrees_with_its_onnx_file_is_refused(tmp_path):
    with pytest.raises(ModelIntegrityError, match="takes"):
        CellModel(model_dir(tmp_path, SIDE, card_side=SIDE * 2), "cpu", 1, "auto")


@pytest.mark.parametrize("shape", [["batch", 64, 48, 3], ["batch", 64, 64, 1], ["batch", 8, 8, 3], ["batch", 64, 64]])
def test_card_with_an_unusable_input_shape_is_refused(tmp_path, shape):
    directory = model_dir(tmp_path, SIDE)
    card = json.loads((directory / "model_card.json").read_text())
    card["input"]["shape"] = shape
    (directory / "model_card.json").write_text(json.dumps(card))
    with pytest.raises(ModelIntegrityError, match="expected"):
        CellModel(directory, "cpu", 1, "auto")


@pytest.mark.integration
def test_service_preprocesses_to_the_running_models_side(tmp_path):
    """A 64 px model behind the real service answers a full-size original (a 112 px array would not fit its
    input), with the probabilities the model gives the 64 px array of the shared preprocessing."""
    (tmp_path / "model").mkdir()
    directory = model_dir(tmp_path / "model", SIDE)
    _, path = fullsize_images()[0]
    data = path.read_bytes()
    service = start_cell_service(tmp_path, CELL_MODEL_DIR=str(directory))
    try:
        answer = httpx.post(f"{service.url}/v1/classify", files=[("images", (path.name, data, "image/jpeg"))],
                            timeout=30)
    finally:
        service.stop()
    assert answer.status_code == 200, answer.text
    result = answer.json()["results"][0]
    array = decode_image(data, CellServiceSettings().max_pixels, size=SIDE)
    assert array.shape == (SIDE, SIDE, 3)
    expected = ort.InferenceSession(str(directory / "mean_colour.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"image": array[None]})[0][0]
    assert np.allclose([result["probabilities"][name] for name in CELL_TYPES], expected, atol=1e-5)
