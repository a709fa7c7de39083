"""Export the serving model to ONNX with tf2onnx and check it against Keras."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
import tf2onnx

from shared.preprocessing import IMAGE_SIZE

ONNX_INPUT_NAME = "image"
ONNX_OPSET = 17


def export(serving_model: keras.Model, path: Path) -> str:
    """Write ``path`` (dynamic batch, uint8 NHWC input; outputs: the probabilities, then the
    penultimate ``embedding``, see ``add_embedding_output``) and return the probabilities' name."""
    signature = (tf.TensorSpec([None, IMAGE_SIZE, IMAGE_SIZE, 3], tf.uint8, name=ONNX_INPUT_NAME),)
    model_proto, _ = tf2onnx.convert.from_keras(serving_model, input_signature=signature, opset=ONNX_OPSET)
    add_embedding_output(model_proto)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model_proto.SerializeToString())
    return model_proto.graph.output[0].name


def max_abs_difference(serving_model: keras.Model, onnx_path: Path, images: np.ndarray) -> float:
    """Largest |p_keras - p_onnx| over ``images`` (uint8 NHWC)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    onnx_probabilities = session.run(None, {ONNX_INPUT_NAME: images})[0]
    keras_probabilities = serving_model.predict(images, verbose=0)
    return float(np.abs(onnx_probabilities - keras_probabilities).max())


EMBEDDING_OUTPUT = "embedding"


def add_embedding_output(model_proto, name: str = EMBEDDING_OUTPUT):
    """Expose the network's penultimate features (the global-average-pooled vector that enters the
    ``logits`` layer) as a second graph output ``name`` (float32, [batch, width]), in place.

    The per-cell APL head (``training.train_apl``) reads it, so the cell service gets class
    probabilities and APL evidence from one run over the images. Works on the float model and on
    its int8 QDQ copy (the pooled vector stays float there). Idempotent. Returns ``model_proto``."""
    import onnx
    from onnx import TensorProto, helper

    graph = model_proto.graph
    if any(output.name == name for output in graph.output):
        return model_proto
    heads = [node for node in graph.node if node.op_type in ("MatMul", "Gemm") and "logits" in node.name]
    if len(heads) != 1:
        raise ValueError(f"expected one logits MatMul/Gemm node, found {[n.name for n in heads]}")
    features, weights = heads[0].input[0], heads[0].input[1]
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    if weights not in initializers:
        raise ValueError(f"the logits weights {weights!r} are not an initializer")
    width = int(initializers[weights].dims[0])
    graph.node.append(helper.make_node("Identity", [features], [name], name=f"{name}_output"))
    batch = graph.output[0].type.tensor_type.shape.dim[0].dim_param or "batch"
    graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [batch, width]))
    onnx.checker.check_model(model_proto)
    return model_proto
