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
    """Write ``path`` (dynamic batch, uint8 NHWC input) and return the output tensor's name."""
    signature = (tf.TensorSpec([None, IMAGE_SIZE, IMAGE_SIZE, 3], tf.uint8, name=ONNX_INPUT_NAME),)
    model_proto, _ = tf2onnx.convert.from_keras(serving_model, input_signature=signature, opset=ONNX_OPSET)
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
