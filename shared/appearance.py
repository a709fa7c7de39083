"""How far an image's appearance (stain, background, magnification, focus) is from the training data.

A few cheap colour, density and sharpness statistics of the preprocessed network input (the
same ``uint8`` array the network sees) are compared, by Mahalanobis distance, with their
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
    "p10_r", "p10_g", "p10_b", "p90_r", "p90_g", "p90_b", "dark_fraction", "sharpness",
)
_STRIDE = 2  # every second pixel in each direction: a quarter of the pixels, same statistics
_OFFSETS = np.array([0, 256, 512], np.uint16)  # one histogram of 3 x 256 bins for the three channels
_VALUES = np.arange(256, dtype=np.float64)
_QUANTILES = np.array([0.10, 0.90])
_LUMA = (299, 587, 114)  # x 1/1000: the same weights as 0.299, 0.587, 0.114


def appearance_features(image: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB -> ``len(FEATURE_NAMES)`` float64 statistics (pixel values in [0, 1]).

    Computed from the exact integer histograms of the 8-bit channels and integer luminance (about
    3.5x faster than float arrays and ``np.percentile``, which the decode workers felt): means,
    population standard deviations, the 10th and 90th percentiles with numpy's default linear
    interpolation, the share of pixels darker than 0.75 x the 90th luminance percentile (the earlier
    float32 version gave the same values to within 2e-5, tests/unit/test_appearance.py), and the
    ``sharpness`` (``sharpness``)."""
    pixels = image[::_STRIDE, ::_STRIDE].reshape(-1, 3)
    n = len(pixels)
    counts = np.bincount((pixels + _OFFSETS).ravel(), minlength=768).reshape(3, 256)
    mean = counts @ _VALUES / n
    std = np.sqrt(np.maximum(counts @ (_VALUES * _VALUES) / n - mean * mean, 0.0))
    # order statistic k of a channel = the first value whose cumulative count exceeds k
    position = (n - 1) * _QUANTILES
    below = np.floor(position).astype(np.int64)
    fraction = position - below
    above = np.minimum(below + 1, n - 1)
    ranks = np.concatenate([below, above])
    order = (np.cumsum(counts, axis=1)[:, :, None] <= ranks).sum(axis=1).astype(np.float64)  # (3 channels, 4)
    low = order[:, 0] + fraction[0] * (order[:, 2] - order[:, 0])
    high = order[:, 1] + fraction[1] * (order[:, 3] - order[:, 1])
    wide = pixels.astype(np.int32)
    luminance = wide[:, 0] * _LUMA[0] + wide[:, 1] * _LUMA[1] + wide[:, 2] * _LUMA[2]  # x 255 000
    k, k1 = int(below[1]), int(above[1])
    part = np.partition(luminance, (k, k1))
    background = part[k] + fraction[1] * (part[k1] - part[k])
    dark = np.count_nonzero(luminance < 0.75 * background) / n  # stained cell area: grows with magnification
    return np.concatenate([mean / 255.0, std / 255.0, low / 255.0, high / 255.0, [dark, sharpness(image)]])


def sharpness(image: np.ndarray) -> float:
    """Focus of ``(H, W, 3)`` uint8 RGB: log of the mean absolute Laplacian of the luminance over its mean
    absolute gradient, in the image's central half (the cell; a quarter of the pixels, about 40 us), both
    in integer luminance units, +1 each, so a flat image gives 0. Blur takes the fine detail (the
    Laplacian) faster than the edges (the gradient), so the ratio falls with defocus whatever the contrast
    or stain: on DeepAPL test cells about 0.04 +- 0.08 as stored, -0.38 after a 1 px Gaussian blur of the
    stored copy, -0.70 after 1.5 px (PBC: -0.01, -0.22, -0.42). The 64 full-size PBC originals through the
    served decoding and their 224 px training copies agree to 0.004 on average: the copies are as sharp."""
    h, w = image.shape[:2]
    wide = image[h // 4: h - h // 4, w // 4: w - w // 4].astype(np.int32)  # the centre, where the cell is
    luminance = wide[:, :, 0] * _LUMA[0] + wide[:, :, 1] * _LUMA[1] + wide[:, :, 2] * _LUMA[2]
    inner = luminance[1:-1, 1:-1]
    laplacian = np.abs(4 * inner - luminance[:-2, 1:-1] - luminance[2:, 1:-1]
                       - luminance[1:-1, :-2] - luminance[1:-1, 2:])
    across, down = np.abs(np.diff(luminance, axis=1)), np.abs(np.diff(luminance, axis=0))
    gradient = across.sum() / max(across.size, 1) + down.sum() / max(down.size, 1)
    return float(np.log((laplacian.sum() / max(laplacian.size, 1) + 1.0) / (gradient + 1.0)))


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
