"""How far an image's appearance (stain, background, magnification) is from the training data.

A few cheap colour and density statistics of the preprocessed network input (the same
``uint8`` array the network sees) are compared, by Mahalanobis distance, with their
distribution over the training images of each source (e.g. PBC and DeepAPL); an image's
distance is the one to its nearest source. The training run fits the reference and the
thresholds and stores them in the model card; the cell service reports each image's
distance and the gateway turns the distances of a patient's cells into a quality warning.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

FEATURE_NAMES: tuple[str, ...] = (
    "mean_r", "mean_g", "mean_b", "std_r", "std_g", "std_b",
    "p10_r", "p10_g", "p10_b", "p90_r", "p90_g", "p90_b", "dark_fraction",
)
_STRIDE = 2  # every second pixel in each direction: a quarter of the pixels, same statistics


def appearance_features(image: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB -> ``len(FEATURE_NAMES)`` float64 statistics (pixel values in [0, 1])."""
    pixels = image[::_STRIDE, ::_STRIDE].reshape(-1, 3).astype(np.float32) / 255.0
    low, high = np.percentile(pixels, [10, 90], axis=0)
    luminance = pixels @ np.array([0.299, 0.587, 0.114], np.float32)
    background = np.percentile(luminance, 90)
    dark = float(np.mean(luminance < 0.75 * background))  # stained cell area: grows with magnification
    return np.concatenate([pixels.mean(axis=0), pixels.std(axis=0), low, high, [dark]]).astype(np.float64)


class AppearanceReference:
    """Per-source Gaussian reference of the features; ``distance`` is to the nearest source."""

    def __init__(self, sources: Mapping[str, dict]):
        self.sources = {name: {"mean": np.asarray(s["mean"], float), "precision": np.asarray(s["precision"], float)}
                        for name, s in sources.items()}

    @classmethod
    def fit(cls, features_by_source: Mapping[str, np.ndarray], ridge: float = 1e-3) -> "AppearanceReference":
        sources = {}
        for name, features in features_by_source.items():
            covariance = np.cov(features, rowvar=False)
            covariance += ridge * np.mean(np.diag(covariance)) * np.eye(len(covariance))
            sources[name] = {"mean": features.mean(axis=0), "precision": np.linalg.inv(covariance)}
        return cls(sources)

    def distances(self, features: np.ndarray) -> np.ndarray:
        """``(n, n_features)`` -> ``(n,)`` Mahalanobis distance to the nearest source."""
        features = np.atleast_2d(features)
        per_source = []
        for source in self.sources.values():
            centred = features - source["mean"]
            per_source.append(np.sqrt(np.einsum("ij,jk,ik->i", centred, source["precision"], centred)))
        return np.min(per_source, axis=0)

    def to_dict(self) -> dict:
        return {name: {"mean": s["mean"].round(6).tolist(), "precision": s["precision"].tolist()}
                for name, s in self.sources.items()}
