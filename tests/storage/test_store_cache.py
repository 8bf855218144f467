"""The store writer's page cache (`[serve] store_cache`): the bound its connection takes, from the
config through the real writer thread; what it buys is measured in docs/benchmarks.md."""

from __future__ import annotations

import pytest

from appliance.config.file import STORE_CACHE, config_from_dict
from appliance.errors import ConfigError
from appliance.storage.writer import StoreWriter
from tests.conftest import SMALL_CONFIG

SQLITE_DEFAULT = 2000 * 1024  # SQLite's own cache_size: -2000 (KiB)


@pytest.mark.parametrize(("cache_bytes", "expected"), [(64 << 20, 64 << 20), (0, SQLITE_DEFAULT)])
def test_the_writer_connection_takes_the_configured_cache_bound(tmp_path, cache_bytes, expected):
    writer = StoreWriter(tmp_path / "s.db", cache_bytes=cache_bytes).start()
    try:
        writer.put_rows({"labels": [{"seq": 1, "ts": 1.0, "label": 1.0, "status": 1}]})
        assert writer.flush()
        assert writer.stats()["cache_limit"] == expected
    finally:
        writer.close()


def test_store_cache_is_a_size_with_a_default():
    assert config_from_dict(SMALL_CONFIG).store_cache == STORE_CACHE == 256 << 20
    assert config_from_dict(dict(SMALL_CONFIG, serve={"store_cache": "64 MiB"})).store_cache == 64 << 20
    assert config_from_dict(dict(SMALL_CONFIG, serve={"store_cache": 0})).store_cache == 0
    for bad in (-1, "lots", "auto"):
        with pytest.raises(ConfigError, match="store_cache"):
            config_from_dict(dict(SMALL_CONFIG, serve={"store_cache": bad}))
