"""The ensemble members of each stage (scikit-learn estimator conventions) and their ONNX export."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from catboost import CatBoostClassifier
from sklearn.ensemble import RandomForestClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from xgboost import XGBClassifier

MEMBERS: tuple[str, ...] = ("xgboost", "catboost", "random_forest", "neural_net", "logistic_regression")
ONNX_OPSET = 15  # the newest onnxmltools supports for XGBoost


def make_member(name: str, seed: int):
    """A fresh, unfitted member. Hyper-parameters are fixed a priori (no tuning, so no nesting needed)."""
    if name == "xgboost":
        return XGBClassifier(n_estimators=200, max_depth=3, learning_rate=0.05, subsample=0.8,
                             colsample_bytree=0.8, min_child_weight=2, reg_lambda=1.0, random_state=seed,
                             n_jobs=2, tree_method="hist")
    if name == "catboost":
        return CatBoostClassifier(iterations=300, depth=4, learning_rate=0.05, l2_leaf_reg=3, random_seed=seed,
                                  verbose=0, thread_count=2, allow_writing_files=False)
    if name == "random_forest":
        return RandomForestClassifier(n_estimators=300, min_samples_leaf=2, max_features="sqrt",
                                      class_weight="balanced", random_state=seed, n_jobs=2)
    if name == "neural_net":
        return Pipeline([("scale", StandardScaler()),
                         ("mlp", MLPClassifier(hidden_layer_sizes=(32, 16), alpha=1e-2, max_iter=800, solver="lbfgs",
                                               early_stopping=False, random_state=seed))])
    if name == "logistic_regression":
        return Pipeline([("scale", StandardScaler()),
                         ("logreg", LogisticRegression(C=0.3, class_weight="balanced", max_iter=5000))])
    raise ValueError(f"unknown member {name}")


def to_onnx(name: str, model, n_features: int, path: Path) -> None:
    """Write ``model`` as ONNX: float32 input 'features' (n, n_features) -> class probabilities."""
    if name == "catboost":
        model.save_model(str(path), format="onnx",
                         export_parameters={"onnx_domain": "ai.catboost", "onnx_model_version": 1})
        return
    if name == "xgboost":
        import onnxmltools
        from onnxmltools.convert.common.data_types import FloatTensorType as XgbFloat

        proto = onnxmltools.convert_xgboost(model, initial_types=[("features", XgbFloat([None, n_features]))],
                                            target_opset=ONNX_OPSET)
    else:
        from skl2onnx import convert_sklearn
        from skl2onnx.common.data_types import FloatTensorType

        classifier = model.steps[-1][1] if isinstance(model, Pipeline) else model
        proto = convert_sklearn(model, initial_types=[("features", FloatTensorType([None, n_features]))],
                                options={id(classifier): {"zipmap": False}}, target_opset=ONNX_OPSET)
    proto.graph.name = f"subtype_{name}"  # converters may name the graph with a random uuid: same model, other bytes
    path.write_bytes(proto.SerializeToString())


def fit_member(name: str, seed: int, x: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None = None):
    """Fit a fresh member; ``sample_weight`` (one per row, optional) goes to the final estimator."""
    model = make_member(name, seed)
    fit_args = {}
    if sample_weight is not None:
        key = f"{model.steps[-1][0]}__sample_weight" if isinstance(model, Pipeline) else "sample_weight"
        fit_args[key] = sample_weight
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # lbfgs at max_iter is the intended regularisation
        model.fit(x, y, **fit_args)
    return model
