"""The default regression pipeline: numbers standardised and clipped, the target standardised.

Seeded streams shaped like what `appliance init` writes per entity key (bursty counts of the same
entity over several windows, times since the last event in seconds): the old default,
`ScaleNumeric | LinearRegression` with unbounded standardised values, diverged on them.
"""

from __future__ import annotations

import math
import random

from river import metrics, optim, preprocessing, stats

from appliance.config.model_spec import DEFAULT_MODELS, build_model, parse_model
from appliance.learning.scaling import ScaleNumeric

OLD_DEFAULT = "appliance.ScaleNumeric(clip=None) | linear_model.LinearRegression()"


def entity_stream(seed: int = 7, n: int = 4000, unit: float = 1.0, origin: float = 0.0) -> list[tuple[dict, float]]:
    """Events with four correlated bursty counts, four times-since and one informative number."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        burst = int(rng.expovariate(1 / 30)) if rng.random() < 0.03 else 0
        x = {f"key_events_{w}": float(burst * (j + 1)) for j, w in enumerate(("5m", "1h", "6h", "1d"))}
        x.update({f"key{j}_since_last": rng.expovariate(1 / 86400) for j in range(4)})
        x["amount"] = rng.gauss(0, 1)
        rows.append((x, origin + unit * (3.0 + x["amount"] + rng.gauss(0, 0.5))))
    return rows


def progressive_mae(model, rows) -> tuple[float, float]:
    """The model's progressive MAE and that of the running mean of the labels, on the same rows.

    The first prediction, made before any label (0 by either), is not scored.
    """
    mae, mean_mae, mean = metrics.MAE(), metrics.MAE(), stats.Mean()
    for n, (x, y) in enumerate(rows):
        if n:
            mae.update(y, model.predict_one(x))
            mean_mae.update(y, mean.get())
        mean.update(y)
        model.learn_one(x, y)
    return mae.get(), mean_mae.get()


def test_default_regression_stays_finite_on_bursty_counts_and_beats_the_mean():
    rows = entity_stream()
    default, mean = progressive_mae(build_model(None, "regression"), rows)
    assert math.isfinite(default) and default < 0.6 * mean
    old, _ = progressive_mae(parse_model(OLD_DEFAULT), rows)
    assert old > 100 * mean  # what the clip is for: unbounded standardised counts diverged


def test_default_regression_does_not_depend_on_the_origin_or_unit_of_the_target():
    """A label measured from another origin in another unit (kelvin, not celsius) is learned alike."""
    celsius, _ = progressive_mae(build_model(None, "regression"), entity_stream())
    kelvin_tenths, _ = progressive_mae(build_model(None, "regression"), entity_stream(unit=10.0, origin=2731.5))
    assert math.isclose(kelvin_tenths, 10 * celsius, rel_tol=1e-6)
    no_target_scaling = "appliance.ScaleNumeric() | linear_model.LinearRegression()"
    old_celsius, _ = progressive_mae(parse_model(no_target_scaling), entity_stream())
    old_kelvin_tenths, _ = progressive_mae(parse_model(no_target_scaling), entity_stream(unit=10.0, origin=2731.5))
    assert old_kelvin_tenths > 2 * 10 * old_celsius  # the intercept's slow walk to the labels' mean


def test_scale_numeric_clips_standardised_values_and_leaves_one_hots_alone():
    scaler, river_scaler = ScaleNumeric(), preprocessing.StandardScaler()
    for i in range(100):
        x = {"count": float(i % 2), "city#7": 1.0}
        scaler.learn_one(x)
        river_scaler.learn_one({"count": x["count"]})
    assert scaler.transform_one({"count": 1.0}) == river_scaler.transform_one({"count": 1.0})  # within 3: as River
    assert scaler.transform_one({"count": 40.0, "city#7": 1.0}) == {"count": 3.0, "city#7": 1.0}
    assert scaler.transform_one({"count": -40.0}) == {"count": -3.0}
    unclipped = ScaleNumeric(clip=None)
    unclipped.scaler = scaler.scaler
    assert unclipped.transform_one({"count": 40.0}) == river_scaler.transform_one({"count": 40.0})


def test_the_default_spec_is_river_s_own_target_scaler_around_a_linear_model():
    model = parse_model(DEFAULT_MODELS["regression"])
    scaler, target = model.steps.values()
    assert isinstance(scaler, ScaleNumeric) and scaler.clip == 3.0
    assert isinstance(target, preprocessing.TargetStandardScaler)
    assert isinstance(target.regressor.loss, optim.losses.Huber) and target.regressor.loss.epsilon == 1.35


def test_default_regression_is_not_thrown_by_a_heavy_tailed_label():
    """Most flights are on time, a few hours late: squared error chases the few, Huber's does not."""
    rows = [(x, y + (rng_y if rng_y > 0 else 0.0)) for (x, y), rng_y in zip(
        entity_stream(seed=11), heavy_tail(seed=12, n=4000), strict=True)]
    default, mean = progressive_mae(build_model(None, "regression"), rows)
    squared, _ = progressive_mae(parse_model(
        "appliance.ScaleNumeric() | preprocessing.TargetStandardScaler(regressor=linear_model.LinearRegression())"),
        rows)
    assert default < 0.9 * squared and default < mean


def heavy_tail(seed: int, n: int) -> list[float]:
    """Mostly nothing, now and then a delay from a Pareto tail (as flights' arrival delays)."""
    rng = random.Random(seed)
    return [60 * rng.paretovariate(1.5) if rng.random() < 0.1 else 0.0 for _ in range(n)]
