"""Offline training: scikit-learn on the point-in-time training set, converted for onnxruntime.

`train` rebuilds the training set from the store (`export.training_set`: the features each event
had at its event time), trains a scikit-learn model on the first part in event time and measures it
on the rest, refits on everything, converts it with skl2onnx and checks that onnxruntime gives
scikit-learn's scores on the training rows. The result is an `OnnxModel`
(`appliance.learning.onnx_model`), which the engine serves like a River model that does not learn.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import orjson

from appliance.errors import ConfigError
from appliance.learning.onnx_model import META_FEATURES, META_TASK, OnnxModel

KINDS = {
    "classification": ("logistic", "gbdt", "forest"),
    "regression": ("linear", "gbdt", "forest"),
}
PARITY_TOLERANCE = 1e-4  # largest |onnxruntime - scikit-learn| score accepted (float32 inference)


def _estimator(kind: str, task: str, seed: int) -> Any:
    from sklearn.ensemble import (
        HistGradientBoostingClassifier,
        HistGradientBoostingRegressor,
        RandomForestClassifier,
        RandomForestRegressor,
    )
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if kind not in KINDS[task]:
        raise ConfigError(f"--model {kind} is not offered for {task}; choose one of {', '.join(KINDS[task])}")
    # gbdt is histogram gradient boosting: features binned to 256 levels once, so its time and memory grow
    # with rows x features, not with the sorted thresholds of exact boosting (13 GB at 1,021 hash buckets)
    if task == "classification":
        return {"logistic": lambda: make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)),
                "gbdt": lambda: HistGradientBoostingClassifier(random_state=seed),
                "forest": lambda: RandomForestClassifier(n_estimators=100, max_depth=12, random_state=seed,
                                                         n_jobs=1)}[kind]()
    return {"linear": lambda: make_pipeline(StandardScaler(), Ridge()),
            "gbdt": lambda: HistGradientBoostingRegressor(random_state=seed),
            "forest": lambda: RandomForestRegressor(n_estimators=100, max_depth=12, random_state=seed, n_jobs=1)}[kind]()


SPARSE_KINDS = ("forest",)  # fitted on the CSR matrix as it is; the others need dense columns


def feature_matrix(data: list[dict], features: list[str]) -> Any:
    """A float32 CSR matrix of `data` x `features`, built row by row from the present values only.

    Hashed one-hots and missing aggregates are absent from a row's dict, so a wide feature space
    (thousands of hash buckets) costs what its non-zero values cost, never a dense Python list."""
    from array import array

    import numpy as np
    from scipy import sparse

    column = {name: i for i, name in enumerate(features)}
    indptr, indices, values = array("q", [0]), array("i"), array("f")
    for row in data:
        for name, value in row.items():
            at = column.get(name)
            if at is not None and value:  # None, 0 and 0.0 are the dense matrix's 0.0
                indices.append(at)
                values.append(float(value))
        indptr.append(len(indices))
    matrix = sparse.csr_matrix((np.frombuffer(values, dtype=np.float32), np.frombuffer(indices, dtype=np.int32),
                                np.frombuffer(indptr, dtype=np.int64)), shape=(len(data), len(features)))
    matrix.sort_indices()
    return matrix


def _fit_input(matrix: Any, kind: str) -> Any:
    """What the estimator is fitted on: the CSR matrix, or dense columns made from it once (float64
    for gbdt, which would copy float32 into float64 anyway; float32 for the scaled linear models)."""
    import numpy as np

    if kind in SPARSE_KINDS:
        return matrix
    return matrix.astype(np.float64).toarray() if kind == "gbdt" else matrix.toarray()


def _in_chunks(score: Any, matrix: Any, rows: int = 8192) -> Any:
    """Score a CSR matrix a slice at a time (a dense float32 slice each), concatenated."""
    import numpy as np

    return np.concatenate([score(matrix[i:i + rows].toarray()) for i in range(0, matrix.shape[0], rows)]
                          or [np.zeros(0)])


def _allow_onnx_ints() -> None:
    """skl2onnx 1.20 passes Python False for a leaf's missing-value flag of HistGradientBoosting trees,
    and onnx >= 1.20's make_attribute refuses a bool in an ints attribute; coerce it to 0/1 (once)."""
    from skl2onnx.common import tree_ensemble

    add_node = tree_ensemble.add_node
    if getattr(add_node, "_appliance_ints", False):
        return

    def coerced(*args: Any, nodes_missing_value_tracks_true: Any = 0, **kwargs: Any) -> Any:
        return add_node(*args, nodes_missing_value_tracks_true=int(nodes_missing_value_tracks_true), **kwargs)

    coerced._appliance_ints = True  # type: ignore[attr-defined]
    tree_ensemble.add_node = coerced


def _scores(estimator: Any, matrix: Any, task: str) -> Any:
    return estimator.predict_proba(matrix)[:, -1] if task == "classification" else estimator.predict(matrix)


def _quality(y: Any, scores: Any, task: str) -> dict[str, float | None]:
    from sklearn import metrics

    if task == "classification":
        defined = len(set(y.tolist())) > 1
        return {"roc_auc": float(metrics.roc_auc_score(y, scores)) if defined else None,
                "log_loss": float(metrics.log_loss(y, scores, labels=[0, 1])) if defined else None}
    return {"mae": float(metrics.mean_absolute_error(y, scores))}


def train(rows: Iterable[dict], features: list[str], task: str, kind: str, *, holdout: float = 0.2,
          seed: int = 0) -> tuple[OnnxModel, dict[str, Any]]:
    """Train `kind` on `rows` (time order), convert to ONNX, check parity; return the model and a report."""
    import numpy as np
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from threadpoolctl import threadpool_limits

    data = sorted(rows, key=lambda row: row["ts"])
    if len(data) < 50:
        raise ConfigError(f"only {len(data)} labelled events in the store; train-offline needs at least 50")
    sparse_matrix = feature_matrix(data, features)
    labels = np.array([row["label"] for row in data], dtype=np.int64 if task == "classification" else np.float64)
    if task == "classification" and len(set(labels.tolist())) < 2:
        raise ConfigError("the labelled events are all of one class; nothing to learn offline yet")
    cut = int(len(data) * (1 - holdout))
    report: dict[str, Any] = {"rows": len(data), "features": len(features), "kind": kind,
                              "nonzero": int(sparse_matrix.nnz), "from": data[0]["ts"], "to": data[-1]["ts"]}
    holdout_from = data[cut]["ts"] if 0 < cut < len(data) else None
    del data  # the rows' dicts are not needed past the matrix
    started = time.perf_counter()
    matrix = _fit_input(sparse_matrix, kind)
    # one OpenMP thread: on a shared machine, histogram boosting's spinning thread pool made a fit
    # 25x slower (67 s against 2.7 s for 1,200 rows x 301 features on 2 busy vCPUs)
    with threadpool_limits(limits=1):
        if 0 < cut < len(labels) and holdout > 0:
            trial = _estimator(kind, task, seed).fit(matrix[:cut], labels[:cut])
            report["holdout"] = {"rows": len(labels) - cut, "from": holdout_from,
                                 **_quality(labels[cut:], _scores(trial, matrix[cut:], task), task)}
            del trial
        estimator = _estimator(kind, task, seed).fit(matrix, labels)
    report["train_seconds"] = round(time.perf_counter() - started, 2)
    del matrix
    _allow_onnx_ints()
    options = {id(estimator): {"zipmap": False}} if task == "classification" else None
    proto = to_onnx(estimator, initial_types=[("features", FloatTensorType([None, len(features)]))],
                    options=options)
    for key, value in ((META_FEATURES, orjson.dumps(features).decode()), (META_TASK, task)):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    model = OnnxModel(proto.SerializeToString(), features, task, description=f"{kind} ({type(estimator).__name__})")
    with threadpool_limits(limits=1):
        expected = _in_chunks(lambda m: _scores(estimator, m, task), sparse_matrix)
    got = _in_chunks(model.score_many, sparse_matrix)
    report["parity_max_abs_diff"] = float(np.max(np.abs(expected - got)))
    if report["parity_max_abs_diff"] > PARITY_TOLERANCE:
        raise ConfigError(f"onnxruntime's scores differ from scikit-learn's by up to {report['parity_max_abs_diff']:.2g} "
                          f"(tolerance {PARITY_TOLERANCE}); not registered")
    report["estimator"] = repr(estimator)
    return model, report
