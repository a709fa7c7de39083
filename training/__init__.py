"""Training code (TensorFlow/Keras, scikit-learn). Never imported by a serving process."""
