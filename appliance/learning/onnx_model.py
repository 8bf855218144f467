"""Offline-trained models served beside the online learners: an ONNX model over named features.

`OnnxModel` wraps the ONNX bytes and the feature list so the engine can treat it like a River model
that does not learn: champion, challenger, or the base model of a `[[features.model]]` score. Its
session is built on first use, never pickled. A user's own `.onnx` file is registered with its
feature list (`load_onnx_file`); either way its input must be one float tensor of
[batch, len(features)] and every feature must be one the appliance computes (`check_schema`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

import orjson

from appliance.errors import ConfigError

META_FEATURES = "appliance.features"  # ONNX metadata keys: part of the file format, not module paths
META_TASK = "appliance.task"


class OnnxModel:
    """An ONNX model over named features, with River's predict API; it does not learn."""

    frozen = True

    def __init__(self, onnx_bytes: bytes, features: list[str], task: str, description: str = "") -> None:
        self.onnx_bytes = onnx_bytes
        self.features = list(features)
        self.task = task
        self.description = description
        self.sha256 = hashlib.sha256(onnx_bytes).hexdigest()
        self._session: Any = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_session"] = None
        return state

    def __repr__(self) -> str:
        return f"OnnxModel({self.description or 'onnx'}, {len(self.features)} features, sha256 {self.sha256[:12]})"

    def session(self) -> Any:
        if self._session is None:
            import onnxruntime

            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = 1  # one row at a time: a thread pool only adds latency
            options.inter_op_num_threads = 1
            session = onnxruntime.InferenceSession(self.onnx_bytes, options, providers=["CPUExecutionProvider"])
            self._input = session.get_inputs()[0].name
            self._session = session
        return self._session

    def vector(self, x: dict) -> Any:
        import numpy as np

        get = x.get
        return np.array([[float(get(name) or 0.0) for name in self.features]], dtype=np.float32)

    def score_many(self, matrix: Any) -> Any:
        """Scores for a float32 matrix: P(positive) for classification, the value for regression."""
        outputs = self.session().run(None, {self._input: matrix})
        if self.task == "classification":
            probabilities = outputs[1] if len(outputs) > 1 else outputs[0]
            return probabilities[:, -1]
        return outputs[0].reshape(-1)

    def score_one(self, x: dict) -> float:
        return float(self.score_many(self.vector(x))[0])

    def predict_proba_one(self, x: dict) -> dict:
        p = self.score_one(x)
        return {False: 1.0 - p, True: p}

    def predict_one(self, x: dict) -> Any:
        if self.task == "classification":
            return self.score_one(x) >= 0.5
        return self.score_one(x)


def check_schema(model: OnnxModel, known: Iterable[str]) -> None:
    """Refuse a model whose input is not [batch, n features] or that needs features we do not compute."""
    import numpy as np

    known = set(known)
    missing = [name for name in model.features if name not in known]
    if missing:
        raise ConfigError(f"the model needs features the appliance does not compute: {', '.join(missing[:5])}"
                          + (" ..." if len(missing) > 5 else ""))
    if len(set(model.features)) != len(model.features):
        raise ConfigError("the model's feature list names a feature twice")
    try:
        inputs = model.session().get_inputs()
    except Exception as exc:  # onnxruntime's own message says what is wrong with the file
        raise ConfigError(f"onnxruntime cannot load the model: {exc}") from None
    if len(inputs) != 1:
        raise ConfigError(f"the model has {len(inputs)} inputs; one float tensor [batch, features] is supported")
    shape = inputs[0].shape
    if len(shape) != 2 or (isinstance(shape[1], int) and shape[1] != len(model.features)):
        raise ConfigError(f"the model's input has shape {shape}; expected [batch, {len(model.features)}] "
                          f"for {len(model.features)} features")
    if "float" not in inputs[0].type:
        raise ConfigError(f"the model's input is {inputs[0].type}; expected tensor(float)")
    try:
        model.score_many(np.zeros((1, len(model.features)), dtype=np.float32))
    except Exception as exc:
        raise ConfigError(f"the model does not run on a row of {len(model.features)} features: {exc}") from None


def load_onnx_file(path: str, features: list[str] | None, task: str | None) -> OnnxModel:
    """Read a `.onnx` file; its feature list comes from `features` or from its own metadata.

    `task` None takes the file's own (a base model's score feature); a classifier by default."""
    import onnx

    try:
        with open(path, "rb") as handle:
            data = handle.read()
        proto = onnx.load_from_string(data)
    except (OSError, Exception) as exc:  # onnx raises DecodeError and friends
        raise ConfigError(f'"{path}" is not a readable ONNX model: {exc}') from None
    meta = {prop.key: prop.value for prop in proto.metadata_props}
    if features is None:
        if META_FEATURES not in meta:
            raise ConfigError(f'"{path}" carries no feature list; give one with --features FILE '
                              "(one feature name per line, in the model's input order)")
        features = orjson.loads(meta[META_FEATURES])
    if task is None:
        task = meta.get(META_TASK, "classification")
    elif meta.get(META_TASK, task) != task:
        raise ConfigError(f'"{path}" was trained for {meta[META_TASK]}; the appliance does {task}')
    return OnnxModel(data, features, task, description=path.rsplit("/", 1)[-1])


def read_feature_list(path: str) -> list[str]:
    """One feature name per line (blank lines and # comments ignored), or a JSON list."""
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    if text.lstrip().startswith("["):
        return [str(name) for name in orjson.loads(text)]
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
