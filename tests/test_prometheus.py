"""Prometheus export: `appliance stats --prometheus` and `--metrics-port`, parsed by the official parser."""

from __future__ import annotations

import copy
import socket
import urllib.error
import urllib.request

import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from appliance.cli import main
from appliance.client import Client
from appliance.config import config_from_dict
from appliance.runtime import Appliance, RunOptions

from .conftest import SMALL_CONFIG, make_stream, serving
from .test_registry import feed


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def running(short_dir):
    data = copy.deepcopy(SMALL_CONFIG)
    data["model"]["challenger"] = [{"name": "tree", "spec": "tree.HoeffdingTreeClassifier()"}]
    data["serve"] = {"db": str(short_dir / "a.db"), "socket": str(short_dir / "a.sock")}
    config = config_from_dict(data)
    port = free_port()
    with serving(config, metrics_port=port):
        yield config, port


def samples(text):
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_endpoint_and_stats_prometheus_agree_with_stats(running):
    config, port = running
    with Client(config.socket) as client:
        stats = feed(client, make_stream(600))
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    scraped = samples(body)
    assert scraped[("appliance_events_total", ())] >= stats["counts"]["events"] == 600
    assert ("appliance_pending_labels", ()) in scraped
    candidates = {dict(labels)["candidate"] for name, labels in scraped if name == "appliance_candidate_labels_scored"}
    assert candidates == {"main", "tree"}
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/other", timeout=10)
    assert missing.value.code == 404

    result = CliRunner().invoke(main, ["stats", "--prometheus", "--socket", config.socket])
    assert result.exit_code == 0, result.output
    printed = samples(result.output)
    assert printed[("appliance_events_total", ())] == 600
    served = [value for (name, labels), value in printed.items()
              if name == "appliance_model_metric" and dict(labels) == {"model": "served", "metric": "log_loss"}]
    assert len(served) == 1 and 0 < served[0] < 10


def test_a_taken_metrics_port_is_a_clear_error(short_dir):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        data = copy.deepcopy(SMALL_CONFIG)
        data["serve"] = {"db": str(short_dir / "b.db"), "socket": str(short_dir / "b.sock")}
        appliance = Appliance(config_from_dict(data), RunOptions(serve=True, read_source=False, metrics_port=port))
        with pytest.raises(Exception, match=f"cannot serve metrics on 127.0.0.1:{port}"):
            appliance.run()
