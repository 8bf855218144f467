"""River transformers of the appliance's own, for specs: `appliance.ScaleNumeric()`.

River's `StandardScaler` maps a feature with variance 0 to 0. A hashed one-hot (`field#NN`, see
`features.FeatureSpace.hashed_name`) arrives only when its bucket is hit and is then always 1.0, so
its variance is 0 and a `StandardScaler | LogisticRegression` never moves its weight: every
categorical is ignored. `ScaleNumeric` standard-scales the other features and passes the one-hots
through as they are (1.0, already on the scale of a standardised number).

>>> scaler = ScaleNumeric()
>>> for i in range(4):
...     scaler.learn_one({"amount": float(i), "city#3": 1.0})
>>> scaler.transform_one({"amount": 3.0, "city#3": 1.0})
{'amount': 1.3416407864998738, 'city#3': 1.0}
"""

from __future__ import annotations

from river import base, preprocessing

__all__ = ["ScaleNumeric"]

HASHED = "#"  # what marks a hashed one-hot feature's name (features.FeatureSpace.hashed_name)


class ScaleNumeric(base.Transformer):
    """Standard-scale numeric features; pass hashed one-hots (names with `marker`) through.

    Args:
        marker: the substring that marks a one-hot feature's name.
    """

    def __init__(self, marker: str = HASHED) -> None:
        self.marker = marker
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
        out = {}
        for i, xi in x.items():
            if i.__class__ is str and marker in i:
                out[i] = xi
            else:
                v = vars_[i]
                out[i] = (xi - means[i]) / v**0.5 if v else 0.0
        return out
