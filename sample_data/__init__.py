"""The bundled sample: a ride-hailing payments stream with fraud, chargebacks and a drift.

`EVENTS` is the committed stream (regenerate with `python -m sample_data.generate`), `DRIVERS` the drivers' attributes table, `CONFIG` the
appliance config that describes it; `appliance up` with no arguments runs the two together.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
EVENTS = HERE / "payments.jsonl.gz"
CONFIG = HERE / "appliance.toml"
DRIVERS = HERE / "drivers.csv"
