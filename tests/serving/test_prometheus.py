"""Prometheus export: `appliance stats --prometheus` and `--metrics-port`, parsed by the official parser."""

from __future__ import annotations

import copy
import re
import socket
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner
from prometheus_client import generate_latest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from appliance.cli.main import main
from appliance.config.file import config_from_dict
from appliance.runtime.app import Appliance, RunOptions
from appliance.serving import prometheus
from appliance.serving.client import Client
from tests.conftest import SMALL_CONFIG, feed, make_stream, serving, wait_for


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


def scrape(port, path="/metrics", accept=None):
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(request, timeout=10) as reply:
        return reply.headers["Content-Type"], reply.read().decode()


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
    assert scraped[("appliance_store_max_bytes", ())] == stats["store"]["max_bytes"] >= 256 << 20  # "auto"
    assert scraped[("appliance_store_bytes", ())] > 0 and scraped[("appliance_disk_free_bytes", ())] > 0
    assert ("appliance_store_growth_bytes_per_second", ()) in scraped
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


def test_the_library_s_negotiation_and_name_filter_work_on_our_endpoint(running):
    config, port = running
    with Client(config.socket) as client:
        feed(client, make_stream(200))
    content_type, body = scrape(port, accept="application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    families = {family.name: family for family in openmetrics_families(body)}
    assert families["appliance_events"].type == "counter"  # OpenMetrics names a counter without `_total`
    assert [s.value for s in families["appliance_events"].samples if s.name == "appliance_events_total"] == [200]
    assert families["appliance_pending_labels"].type == "gauge"

    _, only = scrape(port, "/metrics?name[]=appliance_events_total&name[]=appliance_pending_labels")
    assert {name for name, _ in samples(only)} == {"appliance_events_total", "appliance_pending_labels"}


def test_one_snapshot_per_scrape_in_a_registry_of_its_own():
    calls = []

    def snapshot():
        calls.append(1)
        return {"counts": {"events": len(calls)}, "pending_labels": 3}

    registry = prometheus.registry_for(snapshot)
    assert calls == []  # registering does not scrape
    first = samples(generate_latest(registry).decode())
    second = samples(generate_latest(registry).decode())
    assert len(calls) == 2
    assert first[("appliance_events_total", ())] == 1 and second[("appliance_events_total", ())] == 2
    # only our figures: the library's default process and GC collectors are not in this registry
    names = {name for name, _ in second}
    assert {"appliance_events_total", "appliance_pending_labels"} <= names
    assert all(name.startswith("appliance_") for name in names), names


def test_types_undefined_values_and_awkward_label_values():
    stats = {
        "counts": {"events": 5, "dead-letters": 1},
        "label_join_rate": float("nan"),  # undefined: left out, not 0
        "uptime_seconds": "inf",
        "pending_labels": True,
        "entities": {"user": 4, "card": 2},
        "model": {"served_version": "v3", "served": {"log_loss": 0.25, "roc_auc": None},
                  "leaderboard": [{"name": 'odd "name"\\with\nbreak', "role": "challenger",
                                   "metrics": {"log_loss": 0.5}, "labels_scored": 7}]},
        "server": {"requests": 9, "draining": False, "name": "not a number"},
    }
    text = prometheus.render(stats)
    types = {family.name: family.type for family in text_string_to_metric_families(text)}
    got = samples(text)
    assert types["appliance_events"] == "counter" and got[("appliance_events_total", ())] == 5
    assert got[("appliance_dead_letters_total", ())] == 1  # a name Prometheus cannot take is cleaned
    assert "appliance_label_join_rate" not in types and "appliance_uptime_seconds" not in types
    assert types["appliance_pending_labels"] == "gauge" and got[("appliance_pending_labels", ())] == 1
    assert got[("appliance_entities", (("key", "card"),))] == 2
    assert got[("appliance_model_served_version", ())] == 3
    assert got[("appliance_model_metric", (("metric", "log_loss"), ("model", "served")))] == 0.25
    assert ("appliance_model_metric", (("metric", "roc_auc"), ("model", "served"))) not in got
    odd = stats["model"]["leaderboard"][0]["name"]
    assert got[("appliance_candidate_labels_scored", (("candidate", odd), ("role", "challenger")))] == 7
    assert got[("appliance_server_requests", ())] == 9
    assert "appliance_server_draining" not in types and "appliance_server_name" not in types


def test_every_metric_the_protocol_doc_names_is_exposed(running):
    config, port = running
    with Client(config.socket) as client:
        feed(client, make_stream(200))
        # the store's growth needs two readings of the disk (the main loop's ticks) before it has a value
        wait_for(lambda: client.request("stats")["disk"]["growth_bytes_per_s"] is not None)
    section = Path(__file__).parents[2].joinpath("docs", "protocol.md").read_text().split("### Prometheus")[1]
    documented = set(re.findall(r"appliance_[a-z_]+", section.split("\n### ")[0]))
    assert len(documented) >= 10
    exposed = {name for name, _ in samples(scrape(port)[1])}
    assert documented <= exposed, documented - exposed


def test_the_metrics_server_listens_on_loopback_only():
    server = prometheus.serve(free_port(), lambda: {"counts": {"events": 1}})
    try:
        assert server.server_address[0] == "127.0.0.1"
        _, body = scrape(server.server_address[1])
        assert samples(body)[("appliance_events_total", ())] == 1
    finally:
        server.shutdown()
        server.server_close()
