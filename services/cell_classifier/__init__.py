"""Cell-classifier service: labels single-cell images with the ONNX CNN, dynamically batched."""
