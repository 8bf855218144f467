"""Choosing the config for a command: a file, a River dataset, the working directory, or the sample."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from appliance.config.file import Config, EventSchema, FeatureConfig, ModelConfig, load_config
from appliance.errors import ConfigError, SourceError
from appliance.ingest.readers import RIVER_PREFIX, river_dataset

LOCAL_CONFIG = "appliance.toml"


def resolve_config(config_path: str | None, source: str | None, **overrides: Any) -> Config:
    """Return the config a command runs with, then apply command-line overrides.

    An explicit `--config` wins; a `river:NAME` source gets a config derived from the dataset;
    otherwise `./appliance.toml` if present, else the bundled sample's config.
    """
    if config_path:
        config = load_config(config_path)
    elif source and source.startswith(RIVER_PREFIX):
        config = river_config(source)
    elif Path(LOCAL_CONFIG).exists():
        config = load_config(LOCAL_CONFIG)
    elif source in (None, "sample"):
        import sample_data

        config = load_config(sample_data.CONFIG)
    else:
        raise ConfigError(f'source "{source}" needs a config that names its fields; '
                          f'write one with "appliance init {source}" or pass --config')
    return config.with_overrides(source=source, **overrides)


def river_config(source: str) -> Config:
    """Derive a config from a River dataset: its fields become features, labels come inline."""
    dataset = river_dataset(source[len(RIVER_PREFIX):])
    task = _river_task(dataset, source)
    x, _ = next(iter(dataset))
    numeric = tuple(k for k, v in x.items() if isinstance(v, (int, float)) and not isinstance(v, bool))
    categorical = tuple(k for k, v in x.items() if isinstance(v, str))
    event = EventSchema(id_field="event_id", time_field="ts", type_field=None, label_field="label",
                        numeric=numeric, categorical=categorical, optional=numeric + categorical,
                        allowed_lateness=float("inf"))
    features = FeatureConfig(numeric=numeric, categorical=categorical)
    return Config(source=source, event=event, features=features, model=ModelConfig(task=task))


def _river_task(dataset: Any, source: str) -> str:
    task = str(getattr(dataset, "task", "")).lower()
    if "binary" in task:
        return "classification"
    if task == "regression":
        return "regression"
    raise SourceError(f'"{source}" is a {task or "unknown"} dataset; the appliance does binary '
                      "classification and regression")
