"""River transformers of the appliance's own, for specs: `appliance.ScaleNumeric()`.

River's `StandardScaler` maps a feature with variance 0 to 0. A hashed one-hot (`field#NN`, see
`features.FeatureSpace.hashed_name`) arrives only when its bucket is hit and is then always 1.0, so
its variance is 0 and a `StandardScaler | LogisticRegression` never moves its weight: every
categorical is ignored. `ScaleNumeric` standard-scales the other features and passes the one-hots
through as they are (1.0, already on the scale of a standardised number).

It also clips each standardised value to +-`clip` (3 by default: three standard deviations). The
counts and times-since that `appliance init` writes per entity are unbounded and spiky: a count
that is 0 for most events and 40 in a burst standardises to 100 or more, a dozen such counts of the
same entities spike together, and one gradient step of a linear model on that vector overshoots by
more than it corrects (`LinearRegression` diverged to an MAE of 3.5e10 on movielens). Clipped, a
step is bounded whatever the stream; a number within three deviations of its mean is unchanged.

>>> scaler = ScaleNumeric()
>>> for i in range(4):
...     scaler.learn_one({"amount": float(i), "city#3": 1.0})
>>> scaler.transform_one({"amount": 3.0, "city#3": 1.0})
{'amount': 1.3416407864998738, 'city#3': 1.0}
>>> scaler.transform_one({"amount": 300.0})
{'amount': 3.0}
"""

from __future__ import annotations

from typing import Any

from river import base, preprocessing

__all__ = ["ScaleNumeric"]

HASHED = "#"  # what marks a hashed one-hot feature's name (features.FeatureSpace.hashed_name)


class ScaleNumeric(base.Transformer):
    """Standard-scale numeric features, clipped to +-`clip`; pass hashed one-hots (names with `marker`) through.

    Args:
        marker: the substring that marks a one-hot feature's name.
        clip: the bound of a standardised value, in standard deviations; None leaves it unbounded.
    """

    def __init__(self, marker: str = HASHED, clip: float | None = 3.0) -> None:
        self.marker = marker
        self.clip = clip
        self.scaler = preprocessing.StandardScaler()
        self._scales: dict[Any, tuple[float, float] | None] = {}

    # The scale of each feature seen, kept beside River's state and refreshed by `learn_one` for the
    # features it moved: `transform_one` (three times per event in the engine, once per request in a
    # serving process) reads one entry per feature instead of two of River's maps, a power and the
    # one-hot test; None marks a one-hot. The same floats as River's formulas, in the same order, so
    # the result is the same to the last bit. Not stored: a copy or a stored model starts without it.
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_scales"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._scales = {}

    # One pass over x each, with River's StandardScaler's own state and formulas (it would need a
    # filtered copy of x first: twice the work on the predict path).
    def learn_one(self, x: dict) -> None:
        marker, scaler, scales = self.marker, self.scaler, self._scales
        counts, means, vars_ = scaler.counts, scaler.means, scaler.vars
        for i, xi in x.items():
            if i.__class__ is str and marker in i:
                continue
            n = counts[i] = counts[i] + 1
            old_mean, old_var = means[i], vars_[i]
            mean = means[i] = old_mean + (xi - old_mean) / n
            var = vars_[i] = old_var + ((xi - old_mean) * (xi - mean) - old_var) / n
            scales[i] = (mean, var**0.5 if var else 0.0)

    def transform_one(self, x: dict) -> dict:
        scales = self._scales
        high = self.clip if self.clip is not None else float("inf")
        low = -high
        out = {}
        for i, xi in x.items():
            scale = scales.get(i, _UNSEEN)
            if scale is _UNSEEN:
                scale = scales[i] = self._scale(i)
            if scale is None:
                out[i] = xi
            else:
                mean, std = scale
                z = (xi - mean) / std if std else 0.0
                out[i] = high if z > high else low if z < low else z  # noqa: FURB136 - half the time of max(min())
        return out

    def _scale(self, i: Any) -> tuple[float, float] | None:
        """A feature's scale from River's state (None for a one-hot); an unseen one is entered in it
        as River's `transform_one` does (mean and variance 0)."""
        if i.__class__ is str and self.marker in i:
            return None
        var = self.scaler.vars[i]
        return (self.scaler.means[i], var**0.5) if var else (0.0, 0.0)


_UNSEEN = object()
