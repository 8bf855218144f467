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

    def _numeric(self, x: dict) -> dict:
        marker = self.marker
        return {k: v for k, v in x.items() if k.__class__ is not str or marker not in k}

    def learn_one(self, x: dict) -> None:
        self.scaler.learn_one(self._numeric(x))

    def transform_one(self, x: dict) -> dict:
        marker = self.marker
        out = self.scaler.transform_one(self._numeric(x))
        if len(out) != len(x):
            for k, v in x.items():
                if k.__class__ is str and marker in k:
                    out[k] = v
        return out
