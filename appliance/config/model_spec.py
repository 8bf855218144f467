"""River model specifications: a short Python-like expression, parsed safely, built into a model.

A spec names River classes by module path and calls them with literal arguments, and chains
them with `|` into a pipeline:

    preprocessing.StandardScaler() | linear_model.LogisticRegression(optimizer=optim.SGD(0.02))

The string is parsed with `ast` and walked by hand: nothing is `eval`-ed, only attributes of the
`river` package's public modules can be reached, and arguments may only be literals, other
allowed calls, lists/tuples/dicts of those, or unary minus. A spec that names a regressor for a
classification task (or the reverse) is refused before anything runs.

>>> model = build_model("preprocessing.StandardScaler() | linear_model.LinearRegression()", "regression")
>>> type(model).__name__
'Pipeline'
>>> build_model("os.system('rm -rf /')", "regression")
Traceback (most recent call last):
...
appliance.errors.ModelSpecError: os.system: 'os' is not a River module; allowed: anomaly, cluster, compose, ...
"""

from __future__ import annotations

import ast
import importlib
from typing import Any

from appliance.errors import ModelSpecError

__all__ = ["ALLOWED_MODULES", "DEFAULT_MODELS", "EXTENSIONS", "build_model", "check_task", "parse_model",
           "zeroing_warning"]

ALLOWED_MODULES = (
    "anomaly", "cluster", "compose", "drift", "ensemble", "feature_extraction", "feature_selection",
    "forest", "imblearn", "linear_model", "metrics", "multiclass", "naive_bayes", "neighbors",
    "neural_net", "optim", "preprocessing", "rules", "stats", "tree", "utils",
)

# The appliance's own River transformers, named in a spec as `appliance.<name>` (see scaling.py).
EXTENSIONS = {"appliance": "appliance.learning.scaling"}

# ScaleNumeric, not StandardScaler: River's StandardScaler maps hashed one-hots (always 1.0) to 0, and
# ScaleNumeric clips what it standardises (unbounded counts made LinearRegression diverge). The target
# is standardised too: the intercept need not walk to the labels' mean at its learning rate, and a
# label's origin and unit (minutes, ratings, grams) change nothing but the unit of the error. The loss
# is Huber's, quadratic within 1.35 standard deviations of the label (his classic choice), linear
# beyond: a flight 20 deviations late moves the weights like one 1.35 late, not 15 times more.
# Its step shrinks as it learns, 0.01 / t^0.25 at its t-th label (0.001 at the 10,000th): the first
# labels move it as fast as River's default, and a long noisy stream does not keep it jumping to its
# last labels (flight_delays in bench learning: served MAE 32.79 with a constant 0.01, 25.39 with
# this; TrumpApproval's 1,001 labels: 0.438 -> 0.501, the River script's 1.315; docs/lifecycle.md).
DEFAULT_MODELS = {
    "classification": "appliance.ScaleNumeric() | linear_model.LogisticRegression()",
    "regression": "appliance.ScaleNumeric() | preprocessing.TargetStandardScaler("
                  "regressor=linear_model.LinearRegression(loss=optim.losses.Huber(epsilon=1.35), "
                  "optimizer=optim.SGD(optim.schedulers.InverseScaling(0.01, power=0.25))))",
}
# Scalers that map a feature of variance 0 (a hashed one-hot) to 0.
ZEROING_SCALERS = ("StandardScaler", "AdaptiveStandardScaler")

_MAX_SPEC = 4000


def parse_model(spec: str) -> Any:
    """Build the River estimator a spec describes; raise `ModelSpecError` saying what is wrong."""
    if not isinstance(spec, str) or not spec.strip():
        raise ModelSpecError("the model spec is empty")
    if len(spec) > _MAX_SPEC:
        raise ModelSpecError(f"the model spec is longer than {_MAX_SPEC} characters")
    try:
        tree = ast.parse(spec.strip(), mode="eval")
    except SyntaxError as exc:
        raise ModelSpecError(f"cannot parse model spec {spec!r}: {exc.msg}") from None
    return _build(tree.body)


def check_task(model: Any, task: str) -> None:
    """Refuse a model that cannot do `task` ("classification" or "regression")."""
    from river import base

    final = model
    while hasattr(final, "steps"):  # a Pipeline: the last step decides the task
        final = list(final.steps.values())[-1]
    if task == "classification":
        if not isinstance(final, base.Classifier):
            raise ModelSpecError(f"{type(final).__name__} is not a classifier; the task is classification")
    elif task == "regression":
        if not isinstance(final, base.Regressor):
            raise ModelSpecError(f"{type(final).__name__} is not a regressor; the task is regression")
    else:
        raise ModelSpecError(f"unknown task {task!r}; expected classification or regression")


def build_model(spec: str | None, task: str) -> Any:
    """Return a fresh model for `spec` (the task's default when None), checked against `task`."""
    model = parse_model(spec if spec is not None else DEFAULT_MODELS[task])
    check_task(model, task)
    return model


def zeroing_warning(spec: str, task: str, what: str = "[model] spec") -> str | None:
    """Say why `spec` will ignore hashed one-hot features, or return None.

    A River `StandardScaler` applied to the raw features (a top-level pipeline step) maps every
    hashed one-hot, always 1.0 when present, to 0: their weights never move.

    >>> zeroing_warning("preprocessing.StandardScaler() | linear_model.LogisticRegression()", "classification")[:60]
    '[model] spec "preprocessing.StandardScaler() | linear_model.'
    >>> zeroing_warning(DEFAULT_MODELS["classification"], "classification") is None
    True
    """
    model = build_model(spec, task)
    steps = list(model.steps.values()) if hasattr(model, "steps") else [model]
    for step in steps[:-1]:
        name = type(step).__name__
        if name in ZEROING_SCALERS and type(step).__module__.startswith("river."):
            return (f'{what} "{spec}": River\'s {name} maps hashed categorical features (always 1.0) '
                    f'to 0, so they are ignored; use "appliance.ScaleNumeric()" instead, which scales '
                    f"numbers and passes one-hots through")
        if name not in ("ScaleNumeric",) and not name.endswith("Scaler"):
            return None  # a step that changes the features (a Select, a union): not judged
    return None


def _build(node: ast.AST) -> Any:
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _build(node.left) | _build(node.right)
    if isinstance(node, ast.Call):
        return _call(node)
    if isinstance(node, (ast.Attribute, ast.Name)):
        raise ModelSpecError(f"{_dotted(node)} must be called, e.g. {_dotted(node)}()")
    raise ModelSpecError(f"unexpected {_describe(node)} in model spec; write calls like linear_model.LogisticRegression()")


def _call(node: ast.Call) -> Any:
    target = _resolve(node.func)
    if any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords):
        raise ModelSpecError("* and ** arguments are not allowed in a model spec")
    args = [_value(a) for a in node.args]
    kwargs = {k.arg: _value(k.value) for k in node.keywords}
    try:
        return target(*args, **kwargs)
    except Exception as exc:  # River's own argument checks
        raise ModelSpecError(f"{_dotted(node.func)}(...) failed: {exc}") from None


def _value(node: ast.AST) -> Any:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str, bool, type(None))):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        value = _value(node.operand)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return -value
    if isinstance(node, (ast.List, ast.Tuple)):
        items = [_value(e) for e in node.elts]
        return items if isinstance(node, ast.List) else tuple(items)
    if isinstance(node, ast.Dict) and None not in node.keys:
        return {_value(k): _value(v) for k, v in zip(node.keys, node.values)}
    if isinstance(node, (ast.Call, ast.BinOp)):
        return _build(node)
    if isinstance(node, ast.Attribute):  # a class passed uncalled, e.g. model=tree.HoeffdingTreeClassifier
        return _resolve(node)
    raise ModelSpecError(f"unexpected {_describe(node)} as an argument; only literals and River calls are allowed")


def _resolve(node: ast.AST) -> Any:
    parts = _dotted(node).split(".")
    if len(parts) == 2 and parts[0] in EXTENSIONS:
        module = importlib.import_module(EXTENSIONS[parts[0]])
        if parts[1] not in module.__all__:
            raise ModelSpecError(f"{'.'.join(parts)} does not exist; the appliance's own: "
                                 f"{', '.join(parts[0] + '.' + n for n in module.__all__)}")
        return getattr(module, parts[1])
    if len(parts) < 2 or parts[0] not in ALLOWED_MODULES:
        allowed = ", ".join(ALLOWED_MODULES[:3]) + ", ..."
        raise ModelSpecError(f"{'.'.join(parts)}: {parts[0]!r} is not a River module; allowed: {allowed}")
    if any(p.startswith("_") for p in parts):
        raise ModelSpecError(f"{'.'.join(parts)}: private names are not allowed")
    try:
        obj: Any = importlib.import_module(f"river.{parts[0]}")
    except ImportError as exc:
        raise ModelSpecError(f"cannot import river.{parts[0]}: {exc}") from None
    for i, part in enumerate(parts[1:], start=1):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ModelSpecError(f"river.{'.'.join(parts[: i + 1])} does not exist") from None
    if not callable(obj):
        raise ModelSpecError(f"river.{'.'.join(parts)} is not a class or function")
    return obj


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    raise ModelSpecError(f"unexpected {_describe(node)} where a River name was expected")


def _describe(node: ast.AST) -> str:
    return type(node).__name__.lower()
