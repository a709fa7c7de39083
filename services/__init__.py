"""The back-end services: cell classifier (ONNX CNN) and subtype ensemble."""
