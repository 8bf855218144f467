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

    # One pass over x each, with River's StandardScaler's own state and formulas (it would need a
    # filtered copy of x first: twice the work on the predict path).
    def learn_one(self, x: dict) -> None:
        marker, scaler = self.marker, self.scaler
        counts, means, vars_ = scaler.counts, scaler.means, scaler.vars
        for i, xi in x.items():
            if i.__class__ is str and marker in i:
                continue
            counts[i] += 1
            old_mean = means[i]
            means[i] += (xi - old_mean) / counts[i]
            vars_[i] += ((xi - old_mean) * (xi - means[i]) - vars_[i]) / counts[i]

    def transform_one(self, x: dict) -> dict:
        marker, means, vars_ = self.marker, self.scaler.means, self.scaler.vars
        high = self.clip if self.clip is not None else float("inf")
        low = -high
        out = {}
        for i, xi in x.items():
            if i.__class__ is str and marker in i:
                out[i] = xi
            else:
                v = vars_[i]
                z = (xi - means[i]) / v**0.5 if v else 0.0
                out[i] = high if z > high else low if z < low else z  # noqa: FURB136 - half the time of max(min())
        return out
